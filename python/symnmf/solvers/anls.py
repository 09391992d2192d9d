"""SymANLS (Zhu, Li, Liu, Li, NeurIPS 2018; the alternating scheme of Kuang, Yun, Park 2015).

Minimises ||X - W V^T||_F^2 + lam ||W - V||_F^2 over W, V >= 0 by exact
alternating non-negative least squares:

    W <- argmin_{W >= 0} ||X - W V^T||^2 + lam ||W - V||^2
       = NNLS with Gram B = V^T V + lam I and right-hand sides C = X V + lam V,

then V likewise. Each row of W is an independent NNLS sharing B, solved for all
rows at once by block principal pivoting (`symnmf.solvers.nnls.nnls_gram`),
warm-started from the previous factor's passive sets.

Returned factor: the final W. The stopping rule uses the projected gradient of
the penalised objective in (W, V); the history's objective is ||X - W W^T||^2.
"""
import torch

from .base import default_check_every
from .nnls import nnls_gram
from .penalised import alternate

DEFAULTS = {"max_iter": 500, "tol": 1e-3}


def anls(X, U0, *, lam="kuang", max_iter=None, tol=None, callback=None, verbose=False, check_every=None):
    """SymANLS from W = V = U0 on a validated torch similarity X (dense or sparse CSR).

    lam: the penalty: a positive float, "kuang" (the default: max(X)^2, Kuang
    et al.'s ANLS default) or "zhu" (Zhu et al.'s sufficient value
    1/2 (||X||_2 + ||X - U0 U0^T||_F), which guarantees W = V in the limit
    but, being a worst-case bound, slows convergence several-fold on
    normalised graphs).
    max_iter: default 500. tol: default 1e-3 (Kuang et al.'s ANLS).
    check_every: iterations between stopping checks (default 1: the pivoting
    synchronises every round anyway).
    """

    def update(F, B, XO, O, lam):
        try:
            return nnls_gram(B, XO + lam * O, X0=F)
        except ValueError as err:
            # B = O^T O + lam I: a lam below the rounding of O^T O's diagonal is lost, and B is singular where
            # O's columns are dependent (repeated nodes): say so, rather than ask for the lam > 0 that was given
            rounding = torch.finfo(B.dtype).eps * float(B.diagonal(dim1=-2, dim2=-1).abs().max())
            smallest = float(torch.as_tensor(lam).min())
            if 0 < smallest < 8 * rounding:
                raise ValueError(f"SymANLS's penalty lam = {smallest:.3g} is lost to rounding in V^T V + lam I "
                                 f"({B.dtype} resolves about {rounding:.2g} there), which is then singular: pass a "
                                 "larger lam, lam='kuang' (the default) or dtype=torch.float64") from err
            raise

    return alternate(
        "anls", X, U0, update,
        lam="kuang" if lam is None else lam,
        max_iter=DEFAULTS["max_iter"] if max_iter is None else max_iter,
        tol=DEFAULTS["tol"] if tol is None else tol,
        check_every=default_check_every(X.device, syncs_anyway=True) if check_every is None else check_every,
        callback=callback, verbose=verbose,
    )
