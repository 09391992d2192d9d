"""Fused passes over n x r data around the SpMM S = X U of the sparse SymNMF losses.

For a sparse symmetric X (docs/design.md, "The sparse losses")

    ||X - U U^T||^2       = ||X||^2 - 2 <S, U> + ||U^T U||^2
    ||P - (S + lam U)||^2 = ||R||^2,  R = P - S - lam U

Forward: `sparse_loss_terms_kernel` reads U, S (and P) once and emits every
reduction both losses and the lam-gradient need: <S, U>, U^T U (unless the
caller has it: HAS_GRAM = 0), ||R||^2 and <R, U>, as per-program partials
(deterministic). `sparse_loss_values_kernel` then sums them per problem and forms
both losses, one program per problem.
Backward: `sparse_loss_coefs_kernel` forms the per-problem coefficients (one
program per problem); `sparse_reg_grad_kernel` writes W = c (P - S - lam U), which is both
dP and the right-hand side of the backward SpMM; `sparse_loss_grad_kernel`
writes dU = cs S + cg U G - lam W - Y in one pass (Y the backward SpMM). SymNMF-Net's
chain (symnmf.net_chain) has the terms kernel store R instead, and the gradient
kernel take R and X R with the coefficient c (no W at all).

All tensors are batches (B, n, r) addressed through strides; per-problem
scalars (lam, coefficients) are (B,) tensors. Scalar reductions accumulate in
float64: ||X||^2 - 2 <S, U> + ||U^T U||^2 cancels near a good fit.
"""
import triton
import triton.language as tl

from ._common import add_tile_gram, row_tile, tile_gram_total
from .gram import split_rows, store_partial


@triton.jit
def sparse_loss_terms_kernel(
    U, S, P, lam, sums, gram, R, n, r, rows_per_split,
    stride_ub, stride_un, stride_ur,
    stride_sb, stride_sn, stride_sr,
    stride_pb, stride_pn, stride_pr,
    stride_rb, stride_rn, stride_rr,
    HAS_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr = "ieee", HAS_GRAM: tl.constexpr = True, WRITE_R: tl.constexpr = False,
):
    """Program (b, s) reduces rows [s * rows_per_split, (s + 1) * rows_per_split) of problem b.

    sums[b, s, :] = (<S, U>, ||R||^2, <R, U>) over those rows (float64);
    gram[b, s] = their BLOCK_R x BLOCK_R part of U^T U (with HAS_GRAM; gram is not written otherwise);
    with WRITE_R (and HAS_P) R itself is stored, for a backward that keeps it rather than forming it again.
    """
    b, s, num_splits, row_start, row_end = split_rows(n, rows_per_split)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    lam_b = tl.load(lam + b).to(ACC)
    su = tl.zeros((BLOCK_R,), dtype=tl.float64)
    rr = tl.zeros((BLOCK_R,), dtype=tl.float64)
    ru = tl.zeros((BLOCK_R,), dtype=tl.float64)
    g = tl.zeros((BLOCK_R, BLOCK_R), dtype=ACC)
    for start in range(row_start, row_end, BLOCK_N):
        rows = (start + offs_n).to(tl.int64)
        mask = (rows[:, None] < row_end) & (offs_r[None, :] < r)
        u = tl.load(U + b * stride_ub + rows[:, None] * stride_un + offs_r[None, :] * stride_ur, mask=mask, other=0.0)
        x = tl.load(S + b * stride_sb + rows[:, None] * stride_sn + offs_r[None, :] * stride_sr, mask=mask, other=0.0)
        u = u.to(ACC)
        x = x.to(ACC)
        su += tl.sum(u * x, axis=0).to(tl.float64)
        if HAS_GRAM:
            g = add_tile_gram(g, u, PRECISION)
        if HAS_P:
            p = tl.load(P + b * stride_pb + rows[:, None] * stride_pn + offs_r[None, :] * stride_pr, mask=mask, other=0.0)
            res = tl.where(mask, p.to(ACC) - x - lam_b * u, 0.0)  # padding's 0 * inf lam: NaN, not the inf it is
            rr += tl.sum(res * res, axis=0).to(tl.float64)
            ru += tl.sum(res * u, axis=0).to(tl.float64)
            if WRITE_R:
                tl.store(R + b * stride_rb + rows[:, None] * stride_rn + offs_r[None, :] * stride_rr, res, mask=mask)
    slot = b * num_splits + s
    tl.store(sums + slot * 3, tl.sum(su, axis=0))
    tl.store(sums + slot * 3 + 1, tl.sum(rr, axis=0))
    tl.store(sums + slot * 3 + 2, tl.sum(ru, axis=0))
    if HAS_GRAM:
        store_partial(gram, tile_gram_total(g, PRECISION), b, s, num_splits, BLOCK_R)


@triton.jit
def sparse_loss_values_kernel(
    sums, G, x_sq, totals, loss, reg, num_splits, r,
    stride_gb, stride_gr, stride_gc, stride_xb,
    BLOCK_R: tl.constexpr, SPLITS: tl.constexpr,
):
    """Program b: totals[b] = (<S, U>, ||R||^2, <R, U>) summed over problem b's (num_splits, 3) partials in a fixed
    order, loss[b] = ||X||^2 - 2 <S, U> + ||G[b]||_F^2 and reg[b] = ||R||^2, all in float64, the last two stored
    in their outputs' dtype: one launch where the partials' sum and the scalar algebra took nine."""
    b = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, SPLITS)
    su = tl.zeros((SPLITS,), dtype=tl.float64)
    rr = tl.zeros((SPLITS,), dtype=tl.float64)
    ru = tl.zeros((SPLITS,), dtype=tl.float64)
    for s0 in range(0, num_splits, SPLITS):
        split = s0 + offs_s
        inside = split < num_splits
        row = sums + (b * num_splits + split.to(tl.int64)) * 3
        su += tl.load(row, mask=inside, other=0.0)
        rr += tl.load(row + 1, mask=inside, other=0.0)
        ru += tl.load(row + 2, mask=inside, other=0.0)
    su_b = tl.sum(su, axis=0)
    rr_b = tl.sum(rr, axis=0)
    offs = tl.arange(0, BLOCK_R)
    g = tl.load(G + b * stride_gb + offs[:, None] * stride_gr + offs[None, :] * stride_gc,
                mask=(offs[:, None] < r) & (offs[None, :] < r), other=0.0).to(tl.float64)
    g_sq = tl.sum(tl.sum(g * g, axis=1), axis=0)
    x_sq_b = tl.load(x_sq + b * stride_xb).to(tl.float64)
    tl.store(totals + b * 3, su_b)
    tl.store(totals + b * 3 + 1, rr_b)
    tl.store(totals + b * 3 + 2, tl.sum(ru, axis=0))
    tl.store(loss + b, (x_sq_b - 2.0 * su_b + g_sq).to(loss.dtype.element_ty))
    tl.store(reg + b, rr_b.to(reg.dtype.element_ty))


@triton.jit
def sparse_loss_coefs_kernel(
    gloss, greg, sums, G, coefs, dlam, dgram, problems, r,
    stride_lb, stride_rb, stride_gb, stride_gr, stride_gc, stride_db, stride_dr, stride_dc,
    HAS_DGRAM: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Program b: the backward's per-problem scalars for a symmetric X from the losses' gradients gloss[b] and
    greg[b]: coefs[:, b] = (-4 gloss, 4 gloss, 2 greg) (the coefficients of S, of U G and of R),
    dlam[b] = -2 greg <R, U> (sums[b, 2]) and, with HAS_DGRAM, dgram[b] = 2 gloss G[b] (the gradient of the
    caller's Gram); in float64, stored in the outputs' dtypes. One launch where torch took about eight."""
    b = tl.program_id(0).to(tl.int64)
    gl = tl.load(gloss + b * stride_lb).to(tl.float64)
    gr = tl.load(greg + b * stride_rb).to(tl.float64)
    out = coefs.dtype.element_ty
    tl.store(coefs + b, (-4.0 * gl).to(out))
    tl.store(coefs + problems + b, (4.0 * gl).to(out))
    tl.store(coefs + 2 * problems + b, (2.0 * gr).to(out))
    tl.store(dlam + b, (-2.0 * gr * tl.load(sums + b * 3 + 2)).to(dlam.dtype.element_ty))
    if HAS_DGRAM:
        offs = tl.arange(0, BLOCK_R)
        inside = (offs[:, None] < r) & (offs[None, :] < r)
        g = tl.load(G + b * stride_gb + offs[:, None] * stride_gr + offs[None, :] * stride_gc, mask=inside, other=0.0)
        tl.store(dgram + b * stride_db + offs[:, None] * stride_dr + offs[None, :] * stride_dc,
                 ((2.0 * gl) * g.to(tl.float64)).to(dgram.dtype.element_ty), mask=inside)


@triton.jit
def sparse_reg_grad_kernel(
    U, S, P, lam, coef, W, n, r,
    stride_ub, stride_un, stride_ur,
    stride_sb, stride_sn, stride_sr,
    stride_pb, stride_pn, stride_pr,
    stride_wb, stride_wn, stride_wr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
):
    """W[b] = coef[b] (P[b] - S[b] - lam[b] U[b]) on row tile (b, i), grid (B * row tiles,)."""
    b, i = row_tile(n, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    rows = (i * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask = (rows[:, None] < n) & (offs_r[None, :] < r)
    u = tl.load(U + b * stride_ub + rows[:, None] * stride_un + offs_r[None, :] * stride_ur, mask=mask, other=0.0)
    x = tl.load(S + b * stride_sb + rows[:, None] * stride_sn + offs_r[None, :] * stride_sr, mask=mask, other=0.0)
    p = tl.load(P + b * stride_pb + rows[:, None] * stride_pn + offs_r[None, :] * stride_pr, mask=mask, other=0.0)
    lam_b = tl.load(lam + b).to(ACC)
    c = tl.load(coef + b).to(ACC)
    w = c * (p.to(ACC) - x.to(ACC) - lam_b * u.to(ACC))
    tl.store(W + b * stride_wb + rows[:, None] * stride_wn + offs_r[None, :] * stride_wr, w, mask=mask)


@triton.jit
def sparse_loss_grad_kernel(
    U, S, G, W, Y, lam, coef_s, coef_g, coef_w, dU, n, r,
    stride_ub, stride_un, stride_ur,
    stride_sb, stride_sn, stride_sr,
    stride_gb, stride_gr, stride_gc,
    stride_wb, stride_wn, stride_wr,
    stride_yb, stride_yn, stride_yr,
    stride_db, stride_dn, stride_dr,
    HAS_W: tl.constexpr, HAS_Y: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr = "ieee", HAS_UG: tl.constexpr = True, HAS_CW: tl.constexpr = False,
):
    """dU[b] = coef_s[b] S + coef_g[b] U G[b] - cw (lam[b] W + Y) on row tile (b, i), grid (B * row tiles,); W, Y
    optional, cw = coef_w[b] with HAS_CW and 1 otherwise.

    Without HAS_UG the U G term is left out (U, G and coef_g are not read): the caller's Gram carries it. With
    HAS_CW, W is the regulariser's residual R itself and Y = X R, where the layer loss's own backward passes
    W = 2 greg R and X W: SymNMF-Net's chain keeps R from the forward and never forms W."""
    b, i = row_tile(n, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    rows = (i * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    r_ok = offs_r < r
    mask = (rows[:, None] < n) & r_ok[None, :]
    x = tl.load(S + b * stride_sb + rows[:, None] * stride_sn + offs_r[None, :] * stride_sr, mask=mask, other=0.0)
    d = tl.load(coef_s + b).to(ACC) * x.to(ACC)
    if HAS_UG:
        u = tl.load(U + b * stride_ub + rows[:, None] * stride_un + offs_r[None, :] * stride_ur, mask=mask, other=0.0)
        g = tl.load(
            G + b * stride_gb + offs_r[:, None] * stride_gr + offs_r[None, :] * stride_gc,
            mask=r_ok[:, None] & r_ok[None, :], other=0.0,
        )
        ug = tl.dot(u.to(ACC), g.to(ACC), input_precision=PRECISION, out_dtype=ACC)
        d += tl.load(coef_g + b).to(ACC) * ug
    t = tl.zeros((BLOCK_N, BLOCK_R), dtype=ACC)
    if HAS_W:
        w = tl.load(W + b * stride_wb + rows[:, None] * stride_wn + offs_r[None, :] * stride_wr, mask=mask, other=0.0)
        t += tl.load(lam + b).to(ACC) * w.to(ACC)
    if HAS_Y:
        y = tl.load(Y + b * stride_yb + rows[:, None] * stride_yn + offs_r[None, :] * stride_yr, mask=mask, other=0.0)
        t += y.to(ACC)
    if HAS_CW:
        t *= tl.load(coef_w + b).to(ACC)
    d -= t
    tl.store(dU + b * stride_db + rows[:, None] * stride_dn + offs_r[None, :] * stride_dr, d, mask=mask)
