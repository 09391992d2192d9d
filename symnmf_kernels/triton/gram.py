"""Gram kernels: G = U^T U + lam I for a batch of tall-skinny U (B, n, r).

A split-n reduction in two stages. Stage one: program (b, s) reads rows
[s * rows_per_split, (s + 1) * rows_per_split) of U[b] once and writes its
BLOCK_R x BLOCK_R partial sum (or adds it atomically into a single slot).
Stage two: one program per problem sums the partials, adds lam on the
diagonal and writes the r x r result. The partial layout
(B, num_splits, BLOCK_R, BLOCK_R) is shared with the apply kernels, which emit
the Gram of their own output in the same pass.
"""
import triton
import triton.language as tl

from ._common import add_tile_gram, tile_gram_total


@triton.jit
def split_rows(n, rows_per_split):
    """(b, s, number of splits, first row, end row) of program (b, s) in the split-n layout."""
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    row_start = s * rows_per_split
    return b, s, tl.num_programs(1), row_start, tl.minimum(row_start + rows_per_split, n)


@triton.jit
def store_partial(partials, acc, b, s, num_splits, BLOCK_R: tl.constexpr):
    """Write program (b, s)'s BLOCK_R x BLOCK_R partial sum to partials[b, s]."""
    offs = tl.arange(0, BLOCK_R)
    tl.store(partials + (b * num_splits + s) * BLOCK_R * BLOCK_R + offs[:, None] * BLOCK_R + offs[None, :], acc)


@triton.jit
def sum_partials(partials, b, num_splits, BLOCK_R: tl.constexpr, SPLITS: tl.constexpr):
    """The BLOCK_R x BLOCK_R sum of problem b's partials in one program, SPLITS of them per step in the same
    fixed order as gram_finalize_kernel: for narrow tiles, where one program per problem is the whole reduction."""
    flat = tl.arange(0, BLOCK_R * BLOCK_R)
    offs_s = tl.arange(0, SPLITS)
    base = partials + b * num_splits * BLOCK_R * BLOCK_R
    acc = tl.zeros((BLOCK_R * BLOCK_R,), dtype=partials.dtype.element_ty)
    for s0 in range(0, num_splits, SPLITS):
        split = s0 + offs_s
        block = tl.load(base + split[:, None].to(tl.int64) * BLOCK_R * BLOCK_R + flat[None, :],
                        mask=split[:, None] < num_splits, other=0.0)
        acc += tl.sum(block, axis=0)
    return tl.reshape(acc, (BLOCK_R, BLOCK_R))


@triton.jit
def gram_partials_kernel(
    U, partials, n, r, rows_per_split,
    stride_ub, stride_un, stride_ur,
    ATOMIC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",
):
    b, s, num_splits, row_start, row_end = split_rows(n, rows_per_split)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    U_b = U + b * stride_ub
    acc = tl.zeros((BLOCK_R, BLOCK_R), dtype=ACC)
    for start in range(row_start, row_end, BLOCK_N):
        rows = start + offs_n
        mask = (rows[:, None] < row_end) & (offs_r[None, :] < r)
        u = tl.load(U_b + rows[:, None].to(tl.int64) * stride_un + offs_r[None, :] * stride_ur, mask=mask, other=0.0)
        u = u.to(ACC)
        # The Gram feeds a Cholesky: plain tf32's 10-bit mantissa is not enough there, tf32x3 (tensor-core
        # products of split operands) and ieee (FMA) keep float32 accuracy.
        acc = add_tile_gram(acc, u, PRECISION)
    acc = tile_gram_total(acc, PRECISION)
    if ATOMIC:
        tl.atomic_add(partials + b * BLOCK_R * BLOCK_R + offs_r[:, None] * BLOCK_R + offs_r[None, :], acc)
    else:
        store_partial(partials, acc, b, s, num_splits, BLOCK_R)


@triton.jit
def gram_finalize_kernel(
    partials, lam, G, num_splits, r,
    stride_gb, stride_gr, stride_gc,
    BLOCK_R: tl.constexpr, CHUNK: tl.constexpr, SPLITS: tl.constexpr, HAS_LAM: tl.constexpr = True,
):
    """Program (b, c) sums entries [c * CHUNK, (c + 1) * CHUNK) of the flattened BLOCK_R x BLOCK_R
    partials of problem b over every split, adds lam on the diagonal (with HAS_LAM; lam is not read
    otherwise) and writes them to G[b].

    Each step loads a SPLITS x CHUNK block (many independent loads in flight) and the splits
    are always summed in the same order, so the result is bitwise repeatable.
    """
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    entries = c * CHUNK + tl.arange(0, CHUNK)
    offs_s = tl.arange(0, SPLITS)
    base = partials + b * num_splits * BLOCK_R * BLOCK_R
    acc = tl.zeros((CHUNK,), dtype=partials.dtype.element_ty)
    for s0 in range(0, num_splits, SPLITS):
        split = s0 + offs_s
        block = tl.load(base + split[:, None].to(tl.int64) * BLOCK_R * BLOCK_R + entries[None, :],
                        mask=split[:, None] < num_splits, other=0.0)
        acc += tl.sum(block, axis=0)
    row = entries // BLOCK_R
    col = entries % BLOCK_R
    if HAS_LAM:
        lam_b = tl.load(lam + b).to(acc.dtype)
        acc = tl.where(row == col, acc + lam_b, acc)
    tl.store(G + b * stride_gb + row * stride_gr + col * stride_gc, acc, mask=(row < r) & (col < r))
