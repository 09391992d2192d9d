"""A whole SymNMF-Net block forward for small problems, one program per problem.

For a batch of small graphs (n up to a few thousand) the split-n kernels
would spend more on launches and partial sums than on data. Here program b
reads U[b] (m x r) once for its Gram, inverts it in registers, then reads P[b] (n x r) once
and writes ReLU(P[b] G^{-1}): the ideal 3 n r traffic in a single launch. Its backward is
one launch too: `symnmf_block_small_backward_kernel`.
"""
import triton
import triton.language as tl

from ._common import add_tile_gram, relu, tile_gram_total
from .gram import sum_partials
from .spd_inverse import spd_inverse_tile


@triton.jit
def symnmf_block_small_kernel(
    U, P, lam, Y, Ginv, info, m, n, r,
    stride_ub, stride_un, stride_ur,
    stride_pb, stride_pn, stride_pr,
    stride_yb, stride_yn, stride_yr,
    stride_gb, stride_gr, stride_gc,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr, SWEEP: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",
):
    b = tl.program_id(0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    r_ok = offs_r[None, :] < r

    G = tl.zeros((BLOCK_R, BLOCK_R), dtype=ACC)
    for start in range(0, m, BLOCK_N):
        rows = (start + offs_n).to(tl.int64)
        mask = (rows[:, None] < m) & r_ok
        u = tl.load(U + b * stride_ub + rows[:, None] * stride_un + offs_r[None, :] * stride_ur, mask=mask, other=0.0)
        u = u.to(ACC)
        G = add_tile_gram(G, u, PRECISION)
    G = tile_gram_total(G, PRECISION)
    diagonal = offs_r[:, None] == offs_r[None, :]
    lam_b = tl.load(lam + b).to(ACC)
    G = tl.where(diagonal, G + tl.where(offs_r[:, None] < r, lam_b, 1.0), G)

    inv, bad = spd_inverse_tile(G, r, BLOCK_R, ACC, SWEEP)
    inside = (offs_r[:, None] < r) & r_ok
    tl.store(Ginv + b * stride_gb + offs_r[:, None] * stride_gr + offs_r[None, :] * stride_gc, inv, mask=inside)
    tl.store(info + b, bad)

    for start in range(0, n, BLOCK_N):
        rows = (start + offs_n).to(tl.int64)
        mask = (rows[:, None] < n) & r_ok
        p = tl.load(P + b * stride_pb + rows[:, None] * stride_pn + offs_r[None, :] * stride_pr, mask=mask, other=0.0)
        y = relu(tl.dot(p.to(ACC), inv, input_precision=PRECISION, out_dtype=ACC))
        tl.store(Y + b * stride_yb + rows[:, None] * stride_yn + offs_r[None, :] * stride_yr, y, mask=mask)


@triton.jit
def symnmf_block_small_backward_kernel(
    grad, Y, P, Ginv, U, dP, dU, dG, m, n, r,
    stride_gb, stride_gn, stride_gr,
    stride_yb, stride_yn, stride_yr,
    stride_pb, stride_pn, stride_pr,
    stride_ib, stride_ir, stride_ic,
    stride_ub, stride_un, stride_ur,
    stride_dpb, stride_dpn, stride_dpr,
    stride_dub, stride_dun, stride_dur,
    stride_dgb, stride_dgr, stride_dgc,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",
):
    """The whole backward of a small block, one program per problem
    (docs/design.md, "The block and its backward"): with Zb = grad * 1[not Y <= 0], dP = Zb G^{-T} and P^T Zb
    in one pass over the n rows, the r x r algebra dG = -G^{-T} (P^T Zb) G^{-T} in registers, then
    dU = U (dG + dG^T) in one pass over the m rows.

    The split-n backward takes three or four launches for the same; here P^T Zb never leaves the program.
    """
    b = tl.program_id(0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    r_ok = offs_r[None, :] < r
    inside = (offs_r[:, None] < r) & r_ok
    # (G^{-1})^T, read through swapped strides: G^{-1} is symmetric up to rounding, and the formulas take its
    # transpose where the split-n path does.
    inv_t = tl.load(Ginv + b * stride_ib + offs_r[:, None] * stride_ic + offs_r[None, :] * stride_ir,
                    mask=inside, other=0.0).to(ACC)

    ptz = tl.zeros((BLOCK_R, BLOCK_R), dtype=ACC)
    for start in range(0, n, BLOCK_N):
        rows = (start + offs_n).to(tl.int64)
        mask = (rows[:, None] < n) & r_ok
        g = tl.load(grad + b * stride_gb + rows[:, None] * stride_gn + offs_r[None, :] * stride_gr,
                    mask=mask, other=0.0).to(ACC)
        y = tl.load(Y + b * stride_yb + rows[:, None] * stride_yn + offs_r[None, :] * stride_yr, mask=mask, other=0.0)
        zb = tl.where(y <= 0.0, 0.0, g)  # NaN in Y passes, as in torch's threshold_backward
        dp = tl.dot(zb, inv_t, input_precision=PRECISION, out_dtype=ACC)
        tl.store(dP + b * stride_dpb + rows[:, None] * stride_dpn + offs_r[None, :] * stride_dpr, dp, mask=mask)
        p = tl.load(P + b * stride_pb + rows[:, None] * stride_pn + offs_r[None, :] * stride_pr, mask=mask, other=0.0)
        ptz += tl.dot(tl.trans(p.to(ACC)), zb, input_precision=PRECISION, out_dtype=ACC)

    # r x r: in full precision, as the inverse itself (its padding rows and columns are zero). P^T Zb's padding
    # is zeroed first: an infinite dY made it 0 * inf = NaN there, which the products spread over dG.
    ptz = tl.where(inside, ptz, 0.0)
    dg = tl.dot(tl.dot(inv_t, ptz, input_precision="ieee", out_dtype=ACC), inv_t, input_precision="ieee", out_dtype=ACC)
    dg = -dg
    tl.store(dG + b * stride_dgb + offs_r[:, None] * stride_dgr + offs_r[None, :] * stride_dgc, dg, mask=inside)
    s = dg + tl.trans(dg)

    for start in range(0, m, BLOCK_N):
        rows = (start + offs_n).to(tl.int64)
        mask = (rows[:, None] < m) & r_ok
        u = tl.load(U + b * stride_ub + rows[:, None] * stride_un + offs_r[None, :] * stride_ur, mask=mask, other=0.0)
        du = tl.dot(u.to(ACC), s, input_precision=PRECISION, out_dtype=ACC)
        tl.store(dU + b * stride_dub + rows[:, None] * stride_dun + offs_r[None, :] * stride_dur, du, mask=mask)


@triton.jit
def symnmf_block_dgram_kernel(
    PtZb, Ginv, dG, S, trace, num_splits, r,
    stride_zb, stride_zr, stride_zc,
    stride_ib, stride_ir, stride_ic,
    stride_gb, stride_gr, stride_gc,
    stride_sb, stride_sr, stride_sc,
    BLOCK_R: tl.constexpr, ACC: tl.constexpr, FROM_PARTIALS: tl.constexpr, SPLITS: tl.constexpr,
    HALF: tl.constexpr = False, TRACE: tl.constexpr = False,
):
    """The r x r step of the split-n backward, one program per problem: dG = -G^{-T} (P^T Zb) G^{-T} and
    S = dG + dG^T (the matrix that U multiplies into dU), or with HALF (dG + dG^T) / 2 (the symmetric gradient of
    the chain form's Gram), in one launch where torch's r x r products took five.
    With FROM_PARTIALS, PtZb holds the (B, num_splits, BLOCK_R, BLOCK_R) partial sums of P^T Zb, which this
    program adds up itself (narrow tiles: one launch less); otherwise the (B, r, r) sum, through its strides.
    With TRACE, trace[b] = trace(dG), the gradient of a lam on G's diagonal."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_R)
    inside = (offs[:, None] < r) & (offs[None, :] < r)
    inv_t = tl.load(Ginv + b * stride_ib + offs[:, None] * stride_ic + offs[None, :] * stride_ir,
                    mask=inside, other=0.0).to(ACC)
    if FROM_PARTIALS:
        ptz = tl.where(inside, sum_partials(PtZb, b, num_splits, BLOCK_R, SPLITS).to(ACC), 0.0)  # NaN padding
    else:
        ptz = tl.load(PtZb + b * stride_zb + offs[:, None] * stride_zr + offs[None, :] * stride_zc,
                      mask=inside, other=0.0).to(ACC)
    dg = tl.dot(tl.dot(inv_t, ptz, input_precision="ieee", out_dtype=ACC), inv_t, input_precision="ieee", out_dtype=ACC)
    dg = -dg
    tl.store(dG + b * stride_gb + offs[:, None] * stride_gr + offs[None, :] * stride_gc, dg, mask=inside)
    if TRACE:
        on_diagonal = (offs[:, None] == offs[None, :]) & inside
        tl.store(trace + b, tl.sum(tl.sum(tl.where(on_diagonal, dg, 0.0), axis=1), axis=0))
    sym = dg + tl.trans(dg)
    if HALF:
        sym = 0.5 * sym
    tl.store(S + b * stride_sb + offs[:, None] * stride_sr + offs[None, :] * stride_sc, sym, mask=inside)


@triton.jit
def symnmf_block_gram_inverse_kernel(
    partials, lam, Ginv, info, num_splits, r,
    stride_ib, stride_ir, stride_ic,
    BLOCK_R: tl.constexpr, ACC: tl.constexpr, SPLITS: tl.constexpr, SWEEP: tl.constexpr,
):
    """G^{-1} with G = (sum of the Gram partials) + lam I, one program per problem: the split-n forward's
    reduction and inverse in one launch. For narrow tiles only, where the reduction is one program's work
    anyway (gram_finalize_kernel then has one program per problem too)."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_R)
    G = sum_partials(partials, b, num_splits, BLOCK_R, SPLITS).to(ACC)
    diagonal = offs[:, None] == offs[None, :]
    lam_b = tl.load(lam + b).to(ACC)
    inside = (offs[:, None] < r) & (offs[None, :] < r)
    # padding: the identity, as spd_inverse_tile needs; the partials' padding rows and columns are zero
    G = tl.where(diagonal, G + tl.where(offs[:, None] < r, lam_b, 1.0), G)
    inv, bad = spd_inverse_tile(G, r, BLOCK_R, ACC, SWEEP)
    tl.store(Ginv + b * stride_ib + offs[:, None] * stride_ir + offs[None, :] * stride_ic, inv, mask=inside)
    tl.store(info + b, bad)
