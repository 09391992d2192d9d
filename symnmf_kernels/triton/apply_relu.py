"""Tall-skinny times small-square kernels: one pass over n x r data each.

`apply_kernel`:  Y = [ReLU](A @ M) for A (B, n, r), M (B, r, r). With
EMIT_GRAM it also accumulates Y^T Y into the Gram partial layout of gram.py,
so the next block's Gram costs no extra read of Y. Used for the block forward
(A = P, M = G^{-1}, ReLU) and for dU = U (dG + dG^T) (no ReLU).

`apply_backward_kernel`: the backward of Y = ReLU(A @ M) in one pass:
    Zb = (grad + Y @ H) * 1[not Y <= 0] (Y @ H only with HAS_H; NaN passes, as in torch's relu)
    dA = Zb @ M^T                         (the caller passes M^T through strides)
    partials += A^T Zb                    (the r x r gradient of M, before the r x r algebra)
Y @ H is the gradient that flows into Y through the next block's Gram
Y^T Y when that Gram was emitted by apply_kernel: H = dGram + dGram^T.

The row range of each program follows gram.py: program (b, s) owns
rows [s * rows_per_split, (s + 1) * rows_per_split) of problem b.
"""
import triton
import triton.language as tl

from ._common import add_tile_gram, dot_tf32x3, relu, tf32_split, tile_gram_total
from .gram import split_rows, store_partial


@triton.jit
def _load_square(M, b, r, stride_mb, stride_mr, stride_mc, BLOCK_R: tl.constexpr, ACC: tl.constexpr):
    offs = tl.arange(0, BLOCK_R)
    mask = (offs[:, None] < r) & (offs[None, :] < r)
    m = tl.load(M + b * stride_mb + offs[:, None] * stride_mr + offs[None, :] * stride_mc, mask=mask, other=0.0)
    return m.to(ACC)


@triton.jit
def apply_kernel(
    A, M, Y, partials, n, r, rows_per_split,
    stride_ab, stride_an, stride_ar,
    stride_mb, stride_mr, stride_mc,
    stride_yb, stride_yn, stride_yr,
    RELU: tl.constexpr, EMIT_GRAM: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",
):
    b, s, num_splits, row_start, row_end = split_rows(n, rows_per_split)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    # tf32x3 with the operands split here: M once per program, Y once for both sides of its Gram.
    SPLIT: tl.constexpr = PRECISION == "tf32x3"

    m = _load_square(M, b, r, stride_mb, stride_mr, stride_mc, BLOCK_R, ACC)
    if SPLIT:
        m_hi, m_lo = tf32_split(m)
    acc = tl.zeros((BLOCK_R, BLOCK_R), dtype=ACC)
    for start in range(row_start, row_end, BLOCK_N):
        rows = (start + offs_n).to(tl.int64)
        mask = (rows[:, None] < row_end) & (offs_r[None, :] < r)
        a = tl.load(A + b * stride_ab + rows[:, None] * stride_an + offs_r[None, :] * stride_ar, mask=mask, other=0.0)
        if SPLIT:
            a_hi, a_lo = tf32_split(a.to(ACC))
            y = dot_tf32x3(a_hi, a_lo, m_hi, m_lo, tl.zeros((BLOCK_N, BLOCK_R), dtype=ACC))
        else:
            y = tl.dot(a.to(ACC), m, input_precision=PRECISION, out_dtype=ACC)
        if RELU:
            y = relu(y)
        tl.store(Y + b * stride_yb + rows[:, None] * stride_yn + offs_r[None, :] * stride_yr, y, mask=mask)
        if EMIT_GRAM:
            # Padding rows of A are zero, so their rows of y are zero too.
            acc = add_tile_gram(acc, y, PRECISION)
    if EMIT_GRAM:
        store_partial(partials, tile_gram_total(acc, PRECISION), b, s, num_splits, BLOCK_R)


@triton.jit
def apply_backward_kernel(
    grad, Y, A, M, H, dA, partials, T, coef_t, n, r, rows_per_split,
    stride_gb, stride_gn, stride_gr,
    stride_yb, stride_yn, stride_yr,
    stride_ab, stride_an, stride_ar,
    stride_mb, stride_mr, stride_mc,
    stride_hb, stride_hr, stride_hc,
    stride_db, stride_dn, stride_dr,
    stride_tb, stride_tn, stride_tr,
    HAS_H: tl.constexpr, RELU: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr = "ieee", SYM_H: tl.constexpr = False, HAS_T: tl.constexpr = False,
):
    b, s, num_splits, row_start, row_end = split_rows(n, rows_per_split)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    # tf32x3 with the operands split here (tf32_split, dot_tf32x3): M and H once per program rather than in
    # every trip of the loop, and Zb once for its two products. In the sm_90 compile as launched at r = 64 one
    # trip went from 1,941 to 1,665 instructions, and the stack from 272 bytes a thread to none.
    SPLIT: tl.constexpr = PRECISION == "tf32x3"

    m = _load_square(M, b, r, stride_mb, stride_mr, stride_mc, BLOCK_R, ACC)
    if SPLIT:
        m_hi, m_lo = tf32_split(m)
    if HAS_H:
        h = _load_square(H, b, r, stride_hb, stride_hr, stride_hc, BLOCK_R, ACC)
        if SYM_H:  # H holds the gradient of Y^T Y, and the term is Y (H + H^T)
            h += _load_square(H, b, r, stride_hb, stride_hc, stride_hr, BLOCK_R, ACC)
        if SPLIT:
            h_hi, h_lo = tf32_split(h)
    if HAS_T:
        coef_t_b = tl.load(coef_t + b).to(ACC)
    acc = tl.zeros((BLOCK_R, BLOCK_R), dtype=ACC)
    for start in range(row_start, row_end, BLOCK_N):
        rows = (start + offs_n).to(tl.int64)
        mask = (rows[:, None] < row_end) & (offs_r[None, :] < r)
        g = tl.load(grad + b * stride_gb + rows[:, None] * stride_gn + offs_r[None, :] * stride_gr, mask=mask, other=0.0)
        g = g.to(ACC)
        if HAS_H or RELU:
            y = tl.load(Y + b * stride_yb + rows[:, None] * stride_yn + offs_r[None, :] * stride_yr, mask=mask, other=0.0)
            y = y.to(ACC)
        if HAS_H:
            if SPLIT:
                y_hi, y_lo = tf32_split(y)
                g = dot_tf32x3(y_hi, y_lo, h_hi, h_lo, g)
            else:
                g += tl.dot(y, h, input_precision=PRECISION, out_dtype=ACC)
        if RELU:
            g = tl.where(y <= 0.0, 0.0, g)  # NaN in Y passes, as in torch's threshold_backward
        if SPLIT:
            g_hi, g_lo = tf32_split(g)
            da = dot_tf32x3(g_hi, g_lo, m_hi, m_lo, tl.zeros((BLOCK_N, BLOCK_R), dtype=ACC))
        else:
            da = tl.dot(g, m, input_precision=PRECISION, out_dtype=ACC)
        if HAS_T:  # another gradient of A, added as dA is stored rather than by a pass of its own
            t = tl.load(T + b * stride_tb + rows[:, None] * stride_tn + offs_r[None, :] * stride_tr, mask=mask,
                        other=0.0)
            da += coef_t_b * t.to(ACC)
        tl.store(dA + b * stride_db + rows[:, None] * stride_dn + offs_r[None, :] * stride_dr, da, mask=mask)
        a = tl.load(A + b * stride_ab + rows[:, None] * stride_an + offs_r[None, :] * stride_ar, mask=mask, other=0.0)
        if SPLIT:
            a_hi, a_lo = tf32_split(a.to(ACC))
            acc = dot_tf32x3(tl.trans(a_hi), tl.trans(a_lo), g_hi, g_lo, acc)
        else:
            acc += tl.dot(tl.trans(a.to(ACC)), g, input_precision=PRECISION, out_dtype=ACC)
    store_partial(partials, acc, b, s, num_splits, BLOCK_R)
