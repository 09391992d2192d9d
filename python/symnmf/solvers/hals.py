"""SymHALS (Zhu, Li, Liu, Li, "Dropping Symmetry for Fast Symmetric Nonnegative
Matrix Factorization", NeurIPS 2018).

Minimises ||X - W V^T||_F^2 + lam ||W - V||_F^2 over W, V >= 0 by hierarchical
ALS: with B = V^T V + lam I and C = X V + lam V, each column of W in turn gets
its exact minimiser

    w_k <- max(0, w_k + (C_k - W B_k) / B_kk),

then V likewise with the roles swapped. A sweep over the r columns is
independent across rows, so it runs as one fused pass over the factor
(`symnmf_kernels.ops.hals.hals_sweep_`: Triton on CUDA). One iteration costs
two products with X and two sweeps.

Returned factor: the final W. The stopping rule uses the projected gradient of
the penalised objective in (W, V); the history's objective is ||X - W W^T||^2.

`hals_restarts` runs SymHALS from several starts on one X side by side (one
product with X per half-iteration for all of them), each stopping where it
would alone.
"""
from symnmf_kernels.ops.hals import hals_sweep_

from .base import default_check_every
from .penalised import alternate, alternate_restarts

DEFAULTS = {"max_iter": 500, "tol": 1e-3}


def hals(X, U0, *, lam="kuang", max_iter=None, tol=None, callback=None, verbose=False, check_every=None, backend=None):
    """SymHALS from W = V = U0 on a validated torch similarity X (dense or sparse CSR).

    lam: the penalty: a positive float, "kuang" (the default: max(X)^2, Kuang
    et al.'s ANLS default) or "zhu" (Zhu et al.'s sufficient value
    1/2 (||X||_2 + ||X - U0 U0^T||_F), which guarantees W = V in the limit
    but, being a worst-case bound, slows convergence several-fold on
    normalised graphs).
    max_iter: default 500 (Zhu et al.'s demo). tol: default 1e-3.
    check_every: iterations between stopping checks (default 1 on CPU, 10 on CUDA).
    backend: for `hals_sweep_` (None: Triton on CUDA, torch on CPU).
    """
    return alternate("hals", X, U0, _sweeper(backend), callback=callback, verbose=verbose,
                     **_settings(X, lam, max_iter, tol, check_every))


def hals_restarts(X, U0, *, lam="kuang", max_iter=None, tol=None, verbose=False, check_every=None, backend=None):
    """SymHALS from each of the R starts U0 (R, n, r) on one validated torch similarity X (dense n x n or
    sparse CSR), side by side: a list of R SolverResults, each the one `hals(X, U0[k], ...)` returns, up to
    the order of floating-point sums. lam: a positive float or "kuang" (the default); the rest as `hals`.
    """
    return alternate_restarts("hals", X, U0, _sweeper(backend), verbose=verbose,
                              **_settings(X, lam, max_iter, tol, check_every))


def _sweeper(backend):
    """The update of `alternate`: one sweep of F in place (of each factor of a batch; Triton: one launch)."""

    def update(F, B, XO, O, lam):
        hals_sweep_(F, XO, B, V=O, lam=lam, backend=backend)
        return F

    return update


def _settings(X, lam, max_iter, tol, check_every):
    return {
        "lam": "kuang" if lam is None else lam,
        "max_iter": DEFAULTS["max_iter"] if max_iter is None else max_iter,
        "tol": DEFAULTS["tol"] if tol is None else tol,
        "check_every": default_check_every(X.device, syncs_anyway=False) if check_every is None else check_every,
    }
