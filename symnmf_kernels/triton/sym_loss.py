"""Dense SymNMF loss ||X - U U^T||_F^2, tile by tile, never forming U U^T.

Program (b, i, j) reads the (i, j) tile of X[b] and the row blocks i and j of
U[b], forms that tile of the residual in registers and writes the sum of its
squares to partials[b, i, j]; the host sums the partials (deterministic). The
residual is formed explicitly rather than through ||X||^2 - 2<XU, U> +
||U^T U||^2, which loses all its digits to cancellation near a good fit.
"""
import triton
import triton.language as tl


@triton.jit
def sym_loss_partials_kernel(
    X, U, partials, n, r,
    stride_xb, stride_xi, stride_xj,
    stride_ub, stride_un, stride_ur,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",
):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1)
    j = tl.program_id(2)
    offs_r = tl.arange(0, BLOCK_R)
    rows = (i * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = (j * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    U_b = U + b * stride_ub
    r_ok = offs_r[None, :] < r
    u_i = tl.load(U_b + rows[:, None] * stride_un + offs_r[None, :] * stride_ur, mask=(rows[:, None] < n) & r_ok, other=0.0)
    u_j = tl.load(U_b + cols[:, None] * stride_un + offs_r[None, :] * stride_ur, mask=(cols[:, None] < n) & r_ok, other=0.0)
    uu = tl.dot(u_i.to(ACC), tl.trans(u_j.to(ACC)), input_precision=PRECISION, out_dtype=ACC)
    x_mask = (rows[:, None] < n) & (cols[None, :] < n)
    x = tl.load(X + b * stride_xb + rows[:, None] * stride_xi + cols[None, :] * stride_xj, mask=x_mask, other=0.0)
    res = tl.where(x_mask, x.to(ACC) - uu, 0.0)  # padding's 0 * inf would make an infinite loss NaN
    total = tl.sum(tl.sum(res * res, axis=1), axis=0)
    tl.store(partials + (b * tl.num_programs(1) + i) * tl.num_programs(2) + j, total)
