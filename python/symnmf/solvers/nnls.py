"""Batched non-negative least squares with a shared Gram matrix, by block principal pivoting.

For every row c of C (m x r) and one symmetric positive definite B (r x r),

    x = argmin_{x >= 0}  x^T B x - 2 c^T x,

which is min_{x >= 0} ||A x - b||^2 for B = A^T A and c = A^T b (the normal
equations form: the SymANLS subproblems come as B = V^T V + lam I and
C = X V + lam V and never form A).

The method is the block principal pivoting of Kim & Park ("Fast nonnegative
matrix factorization: an active-set-like method and comparisons", SIAM J. Sci.
Comput. 2011): each row keeps a passive set F, solves B_FF x_F = c_F, sets
y = B x - c on the complement, and exchanges every infeasible index
(x_F < 0, or y_G < 0 beyond a tolerance) at once, falling back to exchanging
the largest one when the number of infeasible indices stops falling for three
rounds. A warm start X0 gives the initial passive sets {X0 > 0}; between outer
iterations of SymANLS these barely change, so most rows are feasible after the
first solve.

The pivoting is that of the op `symnmf_kernels.nnls` (symnmf_kernels/ops/nnls.py),
with its tolerance on y (a y_j that is zero in exact arithmetic would otherwise
keep a degenerate row exchanging j for hundreds of rounds): on the CPU the
extension's kernel, row by row in one call; on CUDA up to r = 32 its Triton
kernel, without a host synchronisation; beyond, its torch path, which solves
each row's system at the size of the row's passive set (10-25 of 64 columns in
SymANLS at r = 64).
"""
import importlib

import torch

# the op's module (symnmf_kernels.ops exports a function of the same name): the pivoting itself
_ops_nnls = importlib.import_module("symnmf_kernels.ops.nnls")
_launch = importlib.import_module("symnmf_kernels.ops._launch")

__all__ = ["nnls_gram"]

_NOT_PD = ("B is not positive definite: block principal pivoting needs B = A^T A with A of full column rank "
           "(for SymANLS, a penalty lam > 0)")


def nnls_gram(B, C, X0=None, *, max_rounds=None):
    """Solve min_{x >= 0} x^T B x - 2 c^T x for each row c of C; returns X (m x r).

    B: (r, r) symmetric positive definite (a ValueError says so when a
    Cholesky factorisation meets a non-positive pivot). C: (m, r). X0: optional
    (m, r) warm start whose positive entries give the initial passive sets.
    max_rounds caps the pivoting rounds (default 5 r + 20; block principal
    pivoting terminates in far fewer in practice), after which any row still
    infeasible is clipped at zero. The torch path synchronises once a round with
    the host to drop finished rows; the result is read back once, for the check.
    """
    if B.dim() != 2 or B.shape[0] != B.shape[1]:
        raise ValueError(f"B must be a square r x r matrix, got shape {tuple(B.shape)}")
    if C.dim() != 2 or C.shape[1] != B.shape[0]:
        raise ValueError(f"C must be m x r with r = {B.shape[0]} (the size of B), got shape {tuple(C.shape)}")
    if C.dtype != B.dtype or C.device != B.device:
        raise ValueError(f"B ({B.dtype}, {B.device}) and C ({C.dtype}, {C.device}) must share dtype and device")
    m, r = C.shape
    if X0 is not None and X0.shape != C.shape:
        raise ValueError(f"X0 must have C's shape {tuple(C.shape)}, got {tuple(X0.shape)}")
    if max_rounds is None:
        max_rounds = 5 * r + 20
    # One problem of the op's batched layout; nnls_torch runs the extension's kernel where it applies. Not
    # sk.nnls itself: under TRITON_INTERPRET=1 it prefers the Triton kernel to the extension's on the CPU (so
    # that the tests run the kernel), which would interpret every SymANLS solve.
    args = (B[None], C[None], None if X0 is None else X0[None], max_rounds)
    if not _ops_nnls._native_runs(C) and _ops_nnls._kernel_runs(C):
        X = _launch.nnls(*args, _ops_nnls.TOL_REL[C.dtype])[0]
    else:
        X = _ops_nnls.nnls_torch(*args)[0]
    # Every path marks a failed factorisation with a NaN row; from finite B and C that can only be a B that
    # is not positive definite on a passive set.
    if bool(torch.isnan(X).any()) and bool(torch.isfinite(B).all()) and bool(torch.isfinite(C).all()):
        raise ValueError(_NOT_PD)
    return X
