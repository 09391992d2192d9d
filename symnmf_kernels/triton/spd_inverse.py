"""Batched inverse of small SPD matrices, one matrix per program.

The whole r x r matrix (r <= 128) lives in registers as a BLOCK_R x BLOCK_R
tile whose padding is the identity, so padding never disturbs the
elimination. Two forms, both in one launch:

- Cholesky (SWEEP = False): G = L L^T by r right-looking rank-1 updates, X = L^{-1}
  by r more (column-oriented forward substitution), then G^{-1} = X^T X with one
  tl.dot: three live tiles, 2 r serial steps.
- the symmetric sweep (SWEEP = True): Gauss-Jordan elimination without pivoting,
  kept symmetric (the sweep operator): r rank-1 updates of the one tile, which ends
  as -G^{-1}. Its pivots are Cholesky's (the diagonal of each Schur complement), so
  it fails exactly where Cholesky does; on SPD matrices its error matched Cholesky's and torch's to within 2x in
  float32 and float64 (r = 5-128, condition numbers 1e2-1e6). At BLOCK_R = 128 the
  Cholesky form kept 3952 bytes per thread on the stack in the sm_90 compile, the
  sweep none (bench/results/compile-sm90-*.md).

`spd_inverse_tile` is the in-register part, shared with the fused
small-problem block kernel.

A pivot that is not positive and finite (NaN included) marks the matrix as failed: its output
is all NaN and info[b] = 1. Nothing is read back on the host here; the op
decides whether to look at info.
"""
import triton
import triton.language as tl


@triton.jit
def spd_inverse_tile(A, r, BLOCK_R: tl.constexpr, ACC: tl.constexpr, SWEEP: tl.constexpr = False):
    """(A^{-1}, failed) for a BLOCK_R x BLOCK_R register tile holding an r x r SPD matrix.

    A must be the identity outside its leading r x r block.
    """
    if SWEEP:
        return _sweep_inverse(A, r, BLOCK_R)
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
        failed = tl.where((pivot > 0.0) & (pivot < float("inf")), failed, 1)  # NaN fails the test too
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
def _sweep_inverse(A, r, BLOCK_R: tl.constexpr):
    """(A^{-1}, failed) by the symmetric sweep. Sweeping pivot k, with p = A[k, k] and c = column k off the
    diagonal: A <- A - c c^T / p off row and column k, then row and column k <- c / p and A[k, k] <- -1 / p.
    After every k < r the leading block holds -A^{-1}; the identity padding is never swept."""
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_R)
    failed = tl.zeros((BLOCK_R,), dtype=tl.int32)
    for k in range(0, r):
        col = tl.sum(tl.where(cols[None, :] == k, A, 0.0), axis=1)
        pivot = tl.sum(tl.where(rows == k, col, 0.0), axis=0)
        # NaN fails the test too; an infinite pivot must fail as well, or it would sweep to exact zeros
        failed = tl.where((pivot > 0.0) & (pivot < float("inf")), failed, 1)
        inv = 1.0 / pivot
        c = tl.where(rows == k, 0.0, col)
        c_scaled = c * inv
        A = A - c_scaled[:, None] * c[None, :]
        # row and column k hold c / p (their other entries are 0 after the update), the pivot -1 / p
        on_k = (rows[:, None] == k) | (cols[None, :] == k)
        A = tl.where(on_k, c_scaled[:, None] + c_scaled[None, :], A)
        A = tl.where((rows[:, None] == k) & (cols[None, :] == k), -inv, A)
    padding_eye = (rows[:, None] == cols[None, :]) & (rows[:, None] >= r)
    bad = tl.max(failed, axis=0)
    out = tl.where(padding_eye, A, -A)
    out = tl.where(bad > 0, float("nan"), out)
    return out, bad


@triton.jit
def spd_inverse_kernel(
    G, Ginv, info, lam, r,
    stride_gb, stride_gr, stride_gc,
    stride_ob, stride_or, stride_oc, stride_lb,
    BLOCK_R: tl.constexpr, ACC: tl.constexpr, SWEEP: tl.constexpr, HAS_LAM: tl.constexpr = False,
):
    """(G + lam I)^{-1} of matrix b, with HAS_LAM (lam[b * stride_lb]; a stride of 0 shares one lam), else G^{-1}:
    the lam of a block added where the matrix is loaded, instead of in a copy of it."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_R)
    inside = (rows[:, None] < r) & (cols[None, :] < r)
    diagonal = rows[:, None] == cols[None, :]
    A = tl.load(G + b * stride_gb + rows[:, None] * stride_gr + cols[None, :] * stride_gc, mask=inside, other=0.0)
    A = A.to(ACC)
    if HAS_LAM:
        A = tl.where(diagonal & inside, A + tl.load(lam + b * stride_lb).to(ACC), A)
    A = tl.where(diagonal & (rows[:, None] >= r), 1.0, A)  # the padding: the identity
    out, bad = spd_inverse_tile(A, r, BLOCK_R, ACC, SWEEP)
    tl.store(Ginv + b * stride_ob + rows[:, None] * stride_or + cols[None, :] * stride_oc, out, mask=inside)
    tl.store(info + b, bad)
