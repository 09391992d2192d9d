"""A whole SymNMF-Net block forward for small problems, one program per problem.

For a batch of small graphs (n up to a few thousand) the split-n kernels
would spend more on launches and partial sums than on data. Here program b
reads U[b] (m x r) once for its Gram, inverts it in registers, then reads P[b] (n x r) once
and writes ReLU(P[b] G^{-1}): the ideal 3 n r traffic in a single launch.
"""
import triton
import triton.language as tl

from ._common import relu
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
        G += tl.dot(tl.trans(u), u, input_precision=PRECISION, out_dtype=ACC)
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
