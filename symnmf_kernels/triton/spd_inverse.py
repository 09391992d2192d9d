"""Batched inverse of small SPD matrices through Cholesky, one matrix per program.

The whole r x r matrix (r <= 128) lives in registers as a BLOCK_R x BLOCK_R
tile whose padding is the identity, so padding never disturbs the
factorisation. Three steps, all in one launch:

1. right-looking Cholesky G = L L^T: r rank-1 updates of the tile;
2. X = L^{-1} by column-oriented forward substitution: r rank-1 updates;
3. G^{-1} = X^T X with one tl.dot.

`spd_inverse_tile` is the in-register part, shared with the fused
small-problem block kernel.

A pivot that is not positive (or NaN) marks the matrix as failed: its output
is all NaN and info[b] = 1. Nothing is read back on the host here; the op
decides whether to look at info.
"""
import triton
import triton.language as tl


@triton.jit
def spd_inverse_tile(A, r, BLOCK_R: tl.constexpr, ACC: tl.constexpr):
    """(A^{-1}, failed) for a BLOCK_R x BLOCK_R register tile holding an r x r SPD matrix.

    A must be the identity outside its leading r x r block.
    """
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_R)
    diagonal = rows[:, None] == cols[None, :]
    padding_eye = diagonal & (rows[:, None] >= r)

    # 1. Cholesky: column k of L is the current column k of A scaled by 1/sqrt(pivot).
    L = tl.where(padding_eye, 1.0, tl.zeros((BLOCK_R, BLOCK_R), dtype=ACC))
    failed = tl.zeros((BLOCK_R,), dtype=tl.int32)
    for k in range(0, r):
        col = tl.sum(tl.where(cols[None, :] == k, A, 0.0), axis=1)
        pivot = tl.sum(tl.where(rows == k, col, 0.0), axis=0)
        failed = tl.where(pivot > 0.0, failed, 1)  # also catches a NaN pivot
        l_k = tl.where(rows >= k, col / tl.sqrt(pivot), 0.0)
        L = tl.where(cols[None, :] == k, l_k[:, None], L)
        A = A - l_k[:, None] * l_k[None, :]

    # 2. X = L^{-1}: at step k row k of X is final after dividing by L[k, k];
    # every row below it then subtracts L[i, k] times that row.
    X = tl.where(diagonal, 1.0, tl.zeros((BLOCK_R, BLOCK_R), dtype=ACC))
    for k in range(0, r):
        l_col = tl.sum(tl.where(cols[None, :] == k, L, 0.0), axis=1)
        l_kk = tl.sum(tl.where(rows == k, l_col, 0.0), axis=0)
        x_row = tl.sum(tl.where(rows[:, None] == k, X, 0.0), axis=0) / l_kk
        below = tl.where(rows > k, l_col, 0.0)
        X = tl.where(rows[:, None] == k, x_row[None, :], X - below[:, None] * x_row[None, :])

    # 3. A^{-1} = L^{-T} L^{-1}.
    out = tl.dot(tl.trans(X), X, input_precision="ieee", out_dtype=ACC)
    bad = tl.max(failed, axis=0)
    out = tl.where(bad > 0, float("nan"), out)
    return out, bad


@triton.jit
def spd_inverse_kernel(
    G, Ginv, info, r,
    stride_gb, stride_gr, stride_gc,
    stride_ob, stride_or, stride_oc,
    BLOCK_R: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_R)
    inside = (rows[:, None] < r) & (cols[None, :] < r)
    padding_eye = (rows[:, None] == cols[None, :]) & (rows[:, None] >= r)
    A = tl.load(G + b * stride_gb + rows[:, None] * stride_gr + cols[None, :] * stride_gc, mask=inside, other=0.0)
    A = tl.where(padding_eye, 1.0, A.to(ACC))
    out, bad = spd_inverse_tile(A, r, BLOCK_R, ACC)
    tl.store(Ginv + b * stride_ob + rows[:, None] * stride_or + cols[None, :] * stride_oc, out, mask=inside)
    tl.store(info + b, bad)
