"""SymHALS row sweep: one pass over a factor that updates all r of its columns.

For the penalised SymNMF problem with the other factor fixed, HALS updates the
columns of W in turn,

    w_k <- max(0, w_k + (C_k - W B_k) / B_kk),   k = 0, ..., r - 1,

with B = V^T V + lam I (r x r, shared) and C = X V + lam V (n x r). Row i of the
update reads only row i of W and C and the shared B, so each program owns a
tile of rows, keeps it in registers and loops over the r columns there: the
pass reads C and W once and writes W once (3 n r values), where a column loop
in torch reads W r times. With HAS_V the kernel takes X V and V and forms
C = X V + lam V as it loads them, so C is never written out (4 n r values per
sweep instead of 3 n r plus the 3 n r of forming C).

A batch of such problems (SymHALS from several starts on one graph) runs in
one launch: the problems' row tiles share the grid.

`hals_sweep_kernel` updates W in place and writes, per program, the column
maxima of its updated rows (a (programs, BLOCK_R) buffer the caller reduces):
they tell which columns ended up all zero. `fill_zero_columns_kernel` then sets
those columns to a small positive value with masked stores, so a sweep that
leaves no zero column costs no extra pass over W.
"""
import triton
import triton.language as tl

from ._common import relu


@triton.jit
def hals_sweep_kernel(
    W, C, V, lam, B, colmax, n, r, tiles,
    stride_wb, stride_wn, stride_wr, stride_cb, stride_cn, stride_cr, stride_vb, stride_vn, stride_vr,
    stride_bb, stride_br, stride_bc,
    HAS_V: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Problems of a batch (each with its own W, C, V and B) and their row tiles share grid axis x,
    # problem-major: program pid sweeps tile pid % tiles of problem pid // tiles.
    pid = tl.program_id(0)
    problem = (pid // tiles).to(tl.int64)
    W += problem * stride_wb
    C += problem * stride_cb
    V += problem * stride_vb
    B += problem * stride_bb
    rows = (pid % tiles).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_R)
    col_ok = cols < r
    mask = (rows[:, None] < n) & col_ok[None, :]
    w = tl.load(W + rows[:, None] * stride_wn + cols[None, :] * stride_wr, mask=mask, other=0.0)
    c = tl.load(C + rows[:, None] * stride_cn + cols[None, :] * stride_cr, mask=mask, other=0.0)
    if HAS_V:
        v = tl.load(V + rows[:, None] * stride_vn + cols[None, :] * stride_vr, mask=mask, other=0.0)
        c += tl.where(mask, lam * v, 0.0)  # padding's 0 * inf lam: NaN column maxima
    for k in range(r):
        # Column k of B; padding entries are zero so padded columns of w never contribute.
        b_k = tl.load(B + cols * stride_br + k * stride_bc, mask=col_ok, other=0.0)
        b_kk = tl.load(B + k * stride_br + k * stride_bc)
        # The reduction below leaves out w_k b_kk, the term that makes an infinite b_kk give NaN; 0 * b_kk puts
        # that NaN into the divisor (a finite b_kk is unchanged), per column rather than per element.
        b_kk = b_kk + 0.0 * b_kk
        is_k = (cols == k)[None, :]
        # w_k + (c_k - sum_j w_j b_jk) / b_kk = (c_k - sum_{j != k} w_j b_jk) / b_kk: one reduction over the
        # row instead of three (w_k, c_k and the product), which bound the sweep. 0 * w_k keeps a NaN or an
        # infinity of w_k in the result, as the first form has it.
        t_k = tl.sum(tl.where(is_k, c + 0.0 * w, -w * b_k[None, :]), axis=1)
        w = tl.where(is_k, relu(t_k / b_kk)[:, None], w)
    tl.store(W + rows[:, None] * stride_wn + cols[None, :] * stride_wr, w, mask=mask)
    # Rows past n were loaded as zeros and stay zero, so they do not raise the maxima of W >= 0. tl.max drops
    # NaN on a GPU (its max instruction returns the other operand): a column of zeros and NaN would read as all
    # zero, and the revival would overwrite its NaN with a finite value. So NaN is put back explicitly.
    has_nan = tl.sum((w != w).to(tl.int32), axis=0) > 0
    tl.store(colmax + pid * BLOCK_R + cols, tl.where(has_nan, float("nan"), tl.max(w, axis=0)))


@triton.jit
def fill_zero_columns_kernel(
    W, colmax, fill, n, r, tiles, stride_wb, stride_wn, stride_wr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # colmax: (problems, r) contiguous; fill: one value per problem. The grid as hals_sweep_kernel's.
    pid = tl.program_id(0)
    problem = (pid // tiles).to(tl.int64)
    W += problem * stride_wb
    rows = (pid % tiles).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_R)
    col_ok = cols < r
    zero_col = tl.load(colmax + problem * r + cols, mask=col_ok, other=1.0) == 0.0
    value = tl.load(fill + problem)
    mask = (rows[:, None] < n) & (col_ok & zero_col)[None, :]
    tl.store(
        W + rows[:, None] * stride_wn + cols[None, :] * stride_wr,
        tl.zeros((BLOCK_N, BLOCK_R), dtype=W.dtype.element_ty) + value,
        mask=mask,
    )
