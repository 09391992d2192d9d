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
(x_F < 0 or y_G < 0) at once, falling back to exchanging the largest one when
the number of infeasible indices stops falling for three rounds. Rows are
solved together: one round is a batched Cholesky solve of all rows still
infeasible, each row's system padded to r x r with the identity outside F.
A warm start X0 gives the initial passive sets {X0 > 0}; between outer
iterations of SymANLS these barely change, so most rows are feasible after the
first solve. On the CPU the extension's kernel (symnmf_kernels' nnls_rows) runs
the same pivoting row by row in one call.
"""
import importlib

import torch

# the op's module (symnmf_kernels.ops exports a function of the same name): its test of the native kernel
_ops_nnls = importlib.import_module("symnmf_kernels.ops.nnls")

__all__ = ["nnls_gram"]

_NOT_PD = ("B is not positive definite: block principal pivoting needs B = A^T A with A of full column rank "
           "(for SymANLS, a penalty lam > 0)")

# Elements of the (rows, r, r) systems solved in one batch: ~32 MiB of float64 on
# the CPU (cache-friendly), ~256 MiB on a GPU (enough rows to fill it).
_SYSTEM_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}


def _masked_systems(B, C, F):
    Fd = F.to(B.dtype)
    M = B * (Fd[:, :, None] * Fd[:, None, :]) + torch.diag_embed(1 - Fd)
    return M, (C * Fd).unsqueeze(-1), Fd


def _solve_passive(B, C, F):
    """x with x_F = B_FF^{-1} c_F and x_G = 0, for every row (c, F) of (C, F)."""
    m, r = C.shape
    out = torch.empty_like(C)
    rows_per_batch = max(1, _SYSTEM_ELEMENTS.get(C.device.type, 1 << 22) // (r * r))
    for start in range(0, m, rows_per_batch):
        sl = slice(start, start + rows_per_batch)
        M, rhs, Fd = _masked_systems(B, C[sl], F[sl])
        L, info = torch.linalg.cholesky_ex(M)
        x = torch.cholesky_solve(rhs, L).squeeze(-1)
        if bool((info != 0).any()):
            raise ValueError(_NOT_PD)
        out[sl] = x * Fd
    return out


def _infeasible(B, C, F, X):
    Y = X @ B - C  # B symmetric: row i is (B x_i - c_i)^T
    return (F & (X < 0)) | (~F & (Y < 0))


def _nnls_gram_native(B, C, X0, max_rounds):
    """The same pivoting row by row in the extension (no tolerance: y < 0 is infeasible, as below)."""
    X = torch.ops.symnmf_kernels.nnls_rows(B[None], C[None], None if X0 is None else X0[None], max_rounds, 0.0,
                                           False)[0]
    # The kernel marks a failed factorisation with a NaN row; from finite B and C that can only be a B that
    # is not positive definite on a passive set.
    if bool(torch.isnan(X).any()) and bool(torch.isfinite(B).all()) and bool(torch.isfinite(C).all()):
        raise ValueError(_NOT_PD)
    return X


def nnls_gram(B, C, X0=None, *, max_rounds=None):
    """Solve min_{x >= 0} x^T B x - 2 c^T x for each row c of C; returns X (m x r).

    B: (r, r) symmetric positive definite (a ValueError says so when a
    Cholesky factorisation meets a non-positive pivot). C: (m, r). X0: optional (m, r) warm
    start whose positive entries give the initial passive sets. max_rounds caps
    the pivoting rounds (default 5 r + 20; block principal pivoting terminates
    in far fewer in practice), after which any row still infeasible is clipped
    at zero. Each round synchronises once with the host to drop finished rows.
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
    if _ops_nnls._native_runs(C):
        return _nnls_gram_native(B, C, X0, max_rounds)

    F = (X0 > 0) if X0 is not None else torch.zeros((m, r), dtype=torch.bool, device=C.device)
    X = _solve_passive(B, C, F)
    infeasible = _infeasible(B, C, F, X)
    # Kim & Park's safeguard: alpha full exchanges are allowed while the infeasible
    # count does not reach a new minimum beta; after that one index at a time.
    alpha = torch.full((m,), 3, dtype=torch.int64, device=C.device)
    beta = torch.full((m,), r + 1, dtype=torch.int64, device=C.device)
    cols = torch.arange(r, device=C.device)
    active = infeasible.any(1).nonzero().squeeze(1)
    rounds = 0
    while active.numel() > 0 and rounds < max_rounds:
        V = infeasible[active]
        count = V.sum(1)
        a, b = alpha[active], beta[active]
        fewer = count < b
        full_exchange = fewer | (a >= 1)
        beta[active] = torch.where(fewer, count, b)
        alpha[active] = torch.where(fewer, torch.full_like(a, 3), torch.where(a >= 1, a - 1, a))
        largest = torch.where(V, cols, -1).amax(1)
        single = cols[None, :] == largest[:, None]
        Fa = F[active] ^ torch.where(full_exchange[:, None], V, single)
        Ca = C[active]
        Xa = _solve_passive(B, Ca, Fa)
        Ia = _infeasible(B, Ca, Fa, Xa)
        F[active], X[active], infeasible[active] = Fa, Xa, Ia
        active = active[Ia.any(1)]
        rounds += 1
    return X.clamp_(min=0)
