"""Classical SymNMF solvers on the symnmf_kernels ops: SymANLS, SymHALS, PGD, SymNewton, ADMM.

    from symnmf.solvers import solve
    result = solve(X, rank=10, solver="hals", random_state=0)
    result.U, result.history["rel_error"], result.n_iter, result.converged

X is a similarity matrix (numpy, scipy.sparse or torch; dense or sparse),
converted and checked once at the entry. Every solver starts from the same
Kuang et al. random factor for a given random_state, runs on X's device (or
`device`), and stops when its projected-gradient norm falls below tol times
the initial one, or after max_iter iterations.

SOLVERS maps each name to its function f(X, U0, *, lam, max_iter, tol,
callback, verbose, **options) on an already validated torch X; the options
each accepts are in its docstring.
"""
import numpy as np
import torch

from ..validation import array_as_tensor, as_similarity, check_rank, check_similarity, is_scipy_sparse
from .admm import admm
from .anls import anls
from .base import SolverResult, as_seed, init_factor, make_generator
from .hals import hals
from .newton import newton
from .pgd import pgd

__all__ = [
    "solve", "SolverResult", "SOLVERS", "init_factor", "make_generator", "as_seed",
    "anls", "hals", "pgd", "newton", "admm",
]

SOLVERS = {"anls": anls, "hals": hals, "pgd": pgd, "newton": newton, "admm": admm}


def _initial_factor(U0, X, rank):
    n = X.shape[-1]
    if isinstance(U0, torch.Tensor):
        U0 = U0.detach()
    elif is_scipy_sparse(U0):
        raise TypeError("U0 must be a dense tensor or array, got a scipy.sparse matrix (U0.toarray())")
    else:
        U0 = array_as_tensor(np.asarray(U0))
    if U0.layout != torch.strided:
        raise TypeError("U0 must be a dense tensor or array")
    if tuple(U0.shape) != (n, rank):
        raise ValueError(f"U0 must have shape (n, rank) = ({n}, {rank}), got {tuple(U0.shape)}")
    U0 = U0.to(device=X.device, dtype=X.dtype).clone()
    if not bool(torch.isfinite(U0).all()):
        raise ValueError("U0 has NaN or infinite entries")
    if bool((U0 < 0).any()):
        raise ValueError("U0 has negative entries; a SymNMF factor is non-negative (clip it at 0)")
    if not bool(U0.any()):
        raise ValueError("U0 is all zero: a saddle point of the objective, where every solver's gradient vanishes "
                         "(the fit would stop there at once); pass a start with positive entries")
    return U0


def solve(X, rank, solver="hals", *, lam=None, max_iter=None, tol=None, U0=None, random_state=None,
          device=None, dtype=None, callback=None, verbose=False, **options):
    """Factorise the similarity X ~ U U^T with U >= 0 of the given rank.

    solver: "anls", "hals", "pgd", "newton" or "admm".
    lam: ANLS/HALS: the penalty of ||X - W V^T||^2 + lam ||W - V||^2, a float,
      "kuang" (default, max(X)^2) or "zhu" (Zhu et al.'s sufficient value
      1/2 (||X||_2 + ||X - U0 U0^T||_F)); ADMM: the penalty rho (default
      ||X||_2 / 4); PGD and SymNewton take none.
    max_iter, tol: default per solver (ANLS/HALS: 500, 1e-3; PGD/SymNewton:
      10000, 1e-4; ADMM: 1000, 1e-4).
    U0: initial factor (n x rank, non-negative); default Kuang et al.'s random
      start from random_state (an int, a numpy RandomState / Generator, a
      torch.Generator, or None: a seed from numpy's global random state).
    device, dtype: where and in what precision to run (default: X's; float32
      for integer input).
    callback(iteration, U, history): called at every stopping check; returning
      True stops the solver.
    options: solver-specific settings, e.g. check_every (iterations between
      stopping checks), newton's method ("auto", "exact", "cg").
    Returns a SolverResult (U, history, n_iter, converged, params).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    # a similarity to factorise, not a function to differentiate: a graph recorded over every iteration would only
    # hold memory (and SymHALS, which updates in place, refuses inputs that require grad)
    X = check_similarity(as_similarity(X, device=device, dtype=dtype)).detach()
    if X.dim() != 2:
        raise ValueError(f"X must be one n x n similarity matrix, got shape {tuple(X.shape)}; solve each problem in turn")
    rank = check_rank(rank, X.shape[-1])
    if U0 is None:
        U0 = init_factor(X, rank, make_generator(random_state))
    else:
        U0 = _initial_factor(U0, X, rank)
    return SOLVERS[solver](X, U0, lam=lam, max_iter=max_iter, tol=tol, callback=callback, verbose=verbose, **options)
