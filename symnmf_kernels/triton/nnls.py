"""Batched NNLS with a shared Gram matrix by block principal pivoting, a tile of rows per program.

For every row c of C (m x k) and the symmetric positive definite G (k x k) of
its problem, the kernel solves

    x = argmin_{x >= 0}  1/2 x^T G x - c^T x,

that is min_{x >= 0} ||A x - b|| for G = A^T A and c = A^T b. Block principal
pivoting (Kim & Park, SIAM J. Sci. Comput. 2011) keeps a passive set F per
row, solves G_FF x_F = c_F with x = 0 off F, computes y = G x - c and
exchanges every infeasible index (x_j < 0 on F, y_j < 0 off F) at once; when
the number of infeasible indices fails to reach a new minimum three times in a
row, only the largest infeasible index is exchanged, which guarantees
termination.

Every row of the tile keeps its whole k x k system in registers, a
(BLOCK_M, BLOCK_K, BLOCK_K) tile: the masked matrix G * F F^T with the
identity off F, so the padding and the active set never disturb the solve.
It is solved by Gauss-Jordan elimination without pivoting, which is stable
for a symmetric positive definite matrix (every pivot is a Schur complement
of it). A pivot that is not positive (G not positive definite on F, or NaN)
makes that row's solution NaN.

With SOLVE_ONLY the kernel only solves on the passive sets given by X0 > 0,
without clipping: that is the backward's solve, Z_F = G_FF^{-1} D_F.
"""
import triton
import triton.language as tl


@triton.jit
def masked_solve(G, rhs, F, r, BLOCK_K: tl.constexpr):
    """x with x_F = G_FF^{-1} rhs_F and x = 0 off F, for each row of the (BLOCK_M, BLOCK_K) tiles rhs and F.

    G is the (BLOCK_K, BLOCK_K) tile of the problem (anything in its padding); F is 1.0 on the passive set.
    """
    idx = tl.arange(0, BLOCK_K)
    eye = (idx[:, None] == idx[None, :]).to(rhs.dtype)
    M = G[None, :, :] * F[:, :, None] * F[:, None, :] + eye[None, :, :] * (1.0 - F)[:, None, :]
    b = rhs * F
    bad = tl.zeros_like(rhs)
    for k in range(0, r):
        row_k = tl.sum(tl.where(idx[None, :, None] == k, M, 0.0), axis=1)  # M[:, k, :]
        col_k = tl.sum(tl.where(idx[None, None, :] == k, M, 0.0), axis=2)  # M[:, :, k]
        pivot = tl.sum(tl.where(idx[None, :] == k, col_k, 0.0), axis=1)
        b_k = tl.sum(tl.where(idx[None, :] == k, b, 0.0), axis=1)
        bad = tl.where((pivot > 0.0)[:, None], bad, float("nan"))  # also catches a NaN pivot
        factor = tl.where(idx[None, :] == k, 0.0, col_k / pivot[:, None])
        M = M - factor[:, :, None] * row_k[:, None, :]
        b = b - factor * b_k[:, None]
    diagonal = tl.sum(tl.where((idx[:, None] == idx[None, :])[None, :, :], M, 0.0), axis=2)
    return (b / diagonal) * F + bad


@triton.jit
def infeasible_set(G, C, X, F, valid, tol):
    """1 where x_j < 0 on the passive set or y_j = (G x - c)_j < -tol off it (padding excluded)."""
    Y = tl.sum(X[:, :, None] * G[None, :, :], axis=1) - C  # G symmetric: row i is (G x_i)^T - c_i
    bad = ((F > 0.0) & (X < 0.0)) | ((F == 0.0) & (Y < -tol[:, None]))
    return (bad & valid).to(tl.int32)


@triton.jit
def pivoting(Gt, Ct, F, valid, r, max_rounds, tol_rel, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The block principal pivoting loop over a tile of rows from the passive sets F; returns the solutions."""
    idx = tl.arange(0, BLOCK_K)
    # y_j = (G x - c)_j counts as negative below -tol_rel * max_i |c_i| only: exact zeros of y (a degenerate
    # row) would otherwise flip back and forth on rounding errors.
    tol = tol_rel * tl.max(tl.abs(Ct), axis=1)
    Xt = masked_solve(Gt, Ct, F, r, BLOCK_K)
    infeasible = infeasible_set(Gt, Ct, Xt, F, valid, tol)
    count = tl.sum(infeasible, axis=1)
    alpha = tl.zeros((BLOCK_M,), dtype=tl.int32) + 3
    beta = tl.zeros((BLOCK_M,), dtype=tl.int32) + (r + 1)
    rounds = max_rounds * 0
    while (tl.max(count, axis=0) > 0) & (rounds < max_rounds):
        fewer = count < beta
        full_exchange = fewer | (alpha >= 1)
        beta = tl.where(fewer, count, beta)
        alpha = tl.where(fewer, 3, tl.where(alpha >= 1, alpha - 1, alpha))
        largest = tl.max(tl.where(infeasible > 0, idx[None, :], -1), axis=1)
        flip = tl.where(full_exchange[:, None], infeasible > 0, idx[None, :] == largest[:, None])
        F = tl.where(flip, 1.0 - F, F)
        Xt = masked_solve(Gt, Ct, F, r, BLOCK_K)
        infeasible = infeasible_set(Gt, Ct, Xt, F, valid, tol)
        count = tl.sum(infeasible, axis=1)
        rounds += 1
    # A row still infeasible after max_rounds is clipped at zero (NaN stays NaN). NaN or Inf anywhere in
    # the row of C or in G makes the row NaN: an all-active start would otherwise return zeros for it.
    poison = tl.sum(Ct * 0.0, axis=1) + tl.sum(tl.sum(Gt * 0.0, axis=1), axis=0)
    return tl.where(Xt < 0.0, 0.0, Xt) + poison[:, None]


@triton.jit
def nnls_kernel(
    G, C, X0, X, m, r, max_rounds, tol_rel,
    stride_gb, stride_gr, stride_gc,
    stride_cb, stride_cm, stride_ck,
    stride_x0b, stride_x0m, stride_x0k,
    stride_xb, stride_xm, stride_xk,
    HAS_X0: tl.constexpr, SOLVE_ONLY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
):
    # One grid axis over (problem, row tile): axes 1 and 2 stop at 65,535 programs.
    pid = tl.program_id(0).to(tl.int64)
    tiles = tl.cdiv(m, BLOCK_M)
    b = pid // tiles
    rows = (pid % tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    idx = tl.arange(0, BLOCK_K)
    inside = (idx[:, None] < r) & (idx[None, :] < r)
    g_ptr = G + b * stride_gb
    # The symmetric part of G, read from both triangles: the gradient is then the symmetric one.
    Gt = tl.load(g_ptr + idx[:, None] * stride_gr + idx[None, :] * stride_gc, mask=inside, other=0.0).to(ACC)
    Gt = 0.5 * (Gt + tl.load(g_ptr + idx[None, :] * stride_gr + idx[:, None] * stride_gc, mask=inside, other=0.0))
    valid = (rows[:, None] < m) & (idx[None, :] < r)
    Ct = tl.load(C + b * stride_cb + rows[:, None] * stride_cm + idx[None, :] * stride_ck, mask=valid, other=0.0)
    Ct = Ct.to(ACC)
    if HAS_X0:
        x0 = tl.load(X0 + b * stride_x0b + rows[:, None] * stride_x0m + idx[None, :] * stride_x0k, mask=valid,
                     other=0.0)
        F = tl.where(x0 > 0.0, 1.0, 0.0).to(ACC)
    else:
        F = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
    if SOLVE_ONLY:
        Xt = masked_solve(Gt, Ct, F, r, BLOCK_K)
        if HAS_X0:  # a row that the forward made NaN (F empty there) gets a NaN gradient, not 0
            Xt += 0.0 * x0.to(ACC)
    else:
        Xt = pivoting(Gt, Ct, F, valid, r, max_rounds, tol_rel, BLOCK_M, BLOCK_K)
    tl.store(X + b * stride_xb + rows[:, None] * stride_xm + idx[None, :] * stride_xk, Xt, mask=valid)
