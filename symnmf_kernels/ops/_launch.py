"""Host-side launchers of the Triton kernels: allocate outputs, pick the geometry, launch.

Every launcher takes and returns batched 3-d tensors (B, rows, cols); the ops
reshape leading dimensions around them. Inputs may be non-contiguous: the
kernels take strides.
"""
import torch

from ..triton.apply_relu import apply_backward_kernel, apply_kernel
from ..triton.symnmf_block import (
    symnmf_block_dgram_kernel, symnmf_block_gram_inverse_kernel, symnmf_block_small_backward_kernel,
    symnmf_block_small_kernel,
)
from ..triton.spd_inverse import spd_inverse_kernel
from ..triton.gram import gram_finalize_kernel, gram_partials_kernel
from ..triton.hals import fill_zero_columns_kernel, hals_sweep_kernel
from ..triton.nnls import nnls_kernel
from ..triton.projected_gradient import projected_gradient_partials_kernel
from ..triton.sparse_loss import (
    sparse_loss_coefs_kernel, sparse_loss_grad_kernel, sparse_loss_terms_kernel, sparse_loss_values_kernel,
    sparse_reg_grad_kernel,
)
from ..triton.sym_loss import sym_loss_partials_kernel
from ._common import (
    acc_dtype, block_n, block_r, cublas_products, dgram_warps, hals_tiles, input_precision, inverse_warps, num_warps,
    split_rows, tiles, triton_cdiv,
)


# Up to this many rows a problem is one program of the fused small-block kernel;
# beyond it the split-n kernels spread each problem over many programs.
SMALL_N = 1024
# The fused small-block backward keeps three BLOCK_R x BLOCK_R tiles (G^{-T}, P^T Zb, then dG) beside its row
# tiles: up to this padded width; past it the split-n backward runs, and past it too the split-n backward's
# r x r step (dG and dG + dG^T) is torch's rather than one program's.
SMALL_BACKWARD_MAX_BLOCK_R = 64
# Beyond this padded width the one-program register Cholesky spills: at r = 128 it ran 6.5x slower
# than torch's (cuSOLVER) on an H200 (bench/results/bench_block-2026-11-26-NVIDIA-H200.md), which
# then runs instead.
INVERSE_MAX_BLOCK_R = 64
# From this padded width the in-register inverse (spd_inverse_tile) is the symmetric sweep, one r x r tile,
# instead of Cholesky and its triangular inverse, three tiles: at BLOCK_R = 128 the latter keeps 3952
# bytes per thread on the stack in the sm_90 compile (bench/compile_report.py), the sweep none. Below it the
# choice has not been timed on a GPU yet (bench/bench_block.py --inverse, run_gpu.sh's `inverse` step).
SWEEP_MIN_BLOCK_R = 128
# Entries of the residual X - U U^T that the dense loss forms at a time where `cublas_products`.
LOSS_ROWS_ELEMENTS = 1 << 24
# Partial sums one finalize program loads per step.
FINALIZE_SPLITS = 16
# Entries of the r x r result per finalize program: one program per problem up to BLOCK_R = 16, which then
# inverts G as well in the block's forward (symnmf_block_gram_inverse_kernel).
FINALIZE_CHUNK = 256


def torch_inverse(G):
    """Whether torch's inverse runs for the r x r matrices G in place of the kernel (a GPU, past INVERSE_MAX_BLOCK_R)."""
    return G.is_cuda and block_r(G.shape[-1]) > INVERSE_MAX_BLOCK_R


def _geometry(A, kind):
    B, n, r = A.shape
    BN, warps = tiles(kind, r, A.device)
    rows_per_split, splits = split_rows(n, B, BN, A.device)
    return B, n, r, block_r(r), BN, warps, rows_per_split, splits


def _partials(A, B, splits, BR):
    # float64 problems reduce in float64, all others in float32.
    dtype = torch.float64 if A.dtype == torch.float64 else torch.float32
    return torch.empty((B, splits, BR, BR), dtype=dtype, device=A.device)


def reduce_partials(partials, lam, r, out_dtype):
    """Sum (B, splits, BR, BR) partials and add lam (B,) on the diagonal, or nothing with lam None: (B, r, r)."""
    B, splits, BR, _ = partials.shape
    G = torch.empty((B, r, r), dtype=out_dtype, device=partials.device)
    # 16 programs per problem at BLOCK_R = 64 (64 at 128) share the reduction over the splits
    # (about 500 of them at n = 1M on an H100 or H200), which one program per problem did serially.
    chunk = min(BR * BR, FINALIZE_CHUNK)
    gram_finalize_kernel[(B, BR * BR // chunk)](
        partials, lam if lam is not None else partials, G, splits, r, *G.stride(),
        BLOCK_R=BR, CHUNK=chunk, SPLITS=FINALIZE_SPLITS, HAS_LAM=lam is not None, num_warps=4,
    )
    return G


def gram_partials(U, precision=None, deterministic=True):
    """The Gram's partial sums (B, splits, BR, BR) (one slot, added atomically, unless deterministic)."""
    B, n, r, BR, BN, warps, rows_per_split, splits = _geometry(U, "gram")
    if deterministic:
        partials = _partials(U, B, splits, BR)
    else:
        partials = torch.zeros((B, 1, BR, BR), dtype=_partials(U, 0, 0, BR).dtype, device=U.device)
    gram_partials_kernel[(B, splits)](
        U, partials, n, r, rows_per_split, *U.stride(),
        ATOMIC=not deterministic, BLOCK_N=BN, BLOCK_R=BR, ACC=acc_dtype(partials.dtype),
        PRECISION=input_precision(U, r, True, precision), num_warps=warps,
    )
    return partials


def gram(U, lam, deterministic=True, precision=None):
    """U^T U + lam I; lam is a (B,) tensor."""
    if cublas_products(U, U.shape[-1], precision):
        G = torch.bmm(U.mT, U)
        G.diagonal(dim1=-2, dim2=-1).add_(lam[:, None])
        return G
    return reduce_partials(gram_partials(U, precision, deterministic), lam, U.shape[-1], U.dtype)


def spd_inverse(G, lam=None):
    """(G^{-1}, info) with info[b] = 1 where the Cholesky of G[b] met a non-positive pivot; with lam ((B,), or
    (1,) for all) the inverse of G + lam I, lam added as the kernel loads G."""
    B, r, _ = G.shape
    BR = block_r(r)
    if torch_inverse(G):
        from .spd_inverse import spd_inverse_torch  # the op's own torch path (that module imports this one)

        if lam is not None:
            G = G + lam[:, None, None] * torch.eye(r, dtype=G.dtype, device=G.device)
        return spd_inverse_torch(G)
    out = torch.empty((B, r, r), dtype=G.dtype, device=G.device)
    info = torch.empty((B,), dtype=torch.int32, device=G.device)
    has_lam = lam is not None
    spd_inverse_kernel[(B,)](
        G, out, info, lam if has_lam else info, r, *G.stride(), *out.stride(),
        (lam.stride(0) if lam.shape[0] > 1 else 0) if has_lam else 0,
        BLOCK_R=BR, ACC=acc_dtype(G.dtype), SWEEP=BR >= SWEEP_MIN_BLOCK_R, HAS_LAM=has_lam,
        num_warps=inverse_warps(r),
    )
    return out, info


def symnmf_block(U, P, lam, precision=None):
    """(ReLU(P (U^T U + lam I)^{-1}), (U^T U + lam I)^{-1}, info); lam is a (B,) tensor."""
    B, m, r = U.shape
    n = P.shape[1]
    if max(m, n) > SMALL_N:
        BR = block_r(r)
        if BR * BR > FINALIZE_CHUNK:
            G = gram(U, lam, precision=precision)
            Ginv, info = spd_inverse(G)
        else:  # the reduction is one program per problem: it inverts G too, one launch less
            partials = gram_partials(U, precision=precision)
            Ginv = torch.empty((B, r, r), dtype=P.dtype, device=P.device)
            info = torch.empty((B,), dtype=torch.int32, device=P.device)
            symnmf_block_gram_inverse_kernel[(B,)](
                partials, lam, Ginv, info, partials.shape[1], r, *Ginv.stride(),
                BLOCK_R=BR, ACC=acc_dtype(P.dtype), SPLITS=FINALIZE_SPLITS, SWEEP=BR >= SWEEP_MIN_BLOCK_R,
                num_warps=inverse_warps(r),
            )
        return apply(P, Ginv, relu=True, precision=precision), Ginv, info
    Y = torch.empty((B, n, r), dtype=P.dtype, device=P.device)
    Ginv = torch.empty((B, r, r), dtype=P.dtype, device=P.device)
    info = torch.empty((B,), dtype=torch.int32, device=P.device)
    BN, warps = tiles("block_small", r, P.device)
    symnmf_block_small_kernel[(B,)](
        U, P, lam, Y, Ginv, info, m, n, r, *U.stride(), *P.stride(), *Y.stride(), *Ginv.stride(),
        BLOCK_N=BN, BLOCK_R=block_r(r), ACC=acc_dtype(P.dtype), SWEEP=block_r(r) >= SWEEP_MIN_BLOCK_R,
        PRECISION=input_precision(P, r, True, precision),
        num_warps=warps,
    )
    return Y, Ginv, info


def _relu_inverse_backward(grad, Y, P, Ginv, H, half, precision, sym_h=False, trace=False, dp_extra=None):
    """(dP, dG, dG + dG^T, or (dG + dG^T) / 2 with half, trace(dG) (B,) with trace, else None) of
    Y = ReLU(P G^{-1}) given dL/dY = grad + Y @ H (H + H^T with sym_h), with dG = -G^{-T} (P^T Zb) G^{-T}, for
    BLOCK_R <= SMALL_BACKWARD_MAX_BLOCK_R: the ReLU product's backward, then one program per problem for the r x r
    step. Up to BLOCK_R = 16 that program adds up P^T Zb's partial sums itself (one program per problem, as the
    finalize would be); wider, the finalize's grid of programs does. dp_extra: as in `apply_backward`."""
    B, _, r = P.shape
    BR = block_r(r)
    from_partials = BR * BR <= FINALIZE_CHUNK
    dP, PtZb = apply_backward(grad, Y, P, Ginv, H, precision=precision, reduce=not from_partials, sym_h=sym_h,
                              dp_extra=dp_extra)
    dG = torch.empty((B, r, r), dtype=P.dtype, device=P.device)
    S = torch.empty_like(dG)
    tr = torch.empty((B,), dtype=P.dtype, device=P.device) if trace else None
    strides = (0, 0, 0) if from_partials else PtZb.stride()
    symnmf_block_dgram_kernel[(B,)](
        PtZb, Ginv, dG, S, tr if trace else S, PtZb.shape[1] if from_partials else 1, r, *strides, *Ginv.stride(),
        *dG.stride(), *S.stride(),
        BLOCK_R=BR, ACC=acc_dtype(P.dtype), FROM_PARTIALS=from_partials, SPLITS=FINALIZE_SPLITS,
        HALF=half, TRACE=trace, num_warps=dgram_warps(r),
    )
    return dP, dG, S, tr


def apply_relu_inverse_backward(grad, Y, P, Ginv, H=None, precision=None, sym_h=False, trace=False, dp_extra=None):
    """(dP, dG, trace(dG) (B,) with trace, else None) of Y = ReLU(P G^{-1}) through G^{-1} = inverse(G), given
    dL/dY = grad + Y @ H (H + H^T with sym_h: H the gradient of Y^T Y): dG the symmetrised -G^{-T} dGinv G^{-T}
    (the chain form's backward into its Gram), its trace the gradient of a lam on G's diagonal. Past the r x r
    kernel's tiles, or where `cublas_products`, the ReLU product's backward and torch's r x r products.
    dp_extra: (T, c) adds c[b] T[b] to dP (`apply_backward`)."""
    r = P.shape[-1]
    if block_r(r) > SMALL_BACKWARD_MAX_BLOCK_R or cublas_products(P, r, precision):
        from .spd_inverse import spd_inverse_backward_torch  # the op's own torch path (that module imports this one)

        dP, dGinv = apply_backward(grad, Y, P, Ginv, H, precision=precision, sym_h=sym_h, dp_extra=dp_extra)
        dG = spd_inverse_backward_torch(Ginv, dGinv)
        return dP, dG, (dG.diagonal(dim1=-2, dim2=-1).sum(-1) if trace else None)
    dP, _, dG, tr = _relu_inverse_backward(grad, Y, P, Ginv, H, True, precision, sym_h, trace, dp_extra)
    return dP, dG, tr


def small_block_backward(m, n, r):
    """Whether the backward of a block of these sizes is one program per problem (the forward is up to r = 128)."""
    return max(m, n) <= SMALL_N and block_r(r) <= SMALL_BACKWARD_MAX_BLOCK_R


def symnmf_block_backward(grad, Y, P, Ginv, U, precision=None):
    """(dU, dP, dG) of Y = ReLU(P G^{-1}), G = U^T U + lam I, by the split-n kernels, or in one launch of the
    small-problem kernel when `small_block_backward`."""
    B, m, r = U.shape
    n = P.shape[1]
    if not small_block_backward(m, n, r):
        if block_r(r) > SMALL_BACKWARD_MAX_BLOCK_R:  # beyond the register tiles of the r x r kernel
            # (where `cublas_products`, apply_backward and apply below are torch's GEMMs themselves)
            dP, PtZb = apply_backward(grad, Y, P, Ginv, precision=precision)
            dG = -(Ginv.mT @ PtZb @ Ginv.mT)
            S = (dG + dG.mT).contiguous()
        else:
            dP, dG, S, _ = _relu_inverse_backward(grad, Y, P, Ginv, None, False, precision)
        return apply(U, S, relu=False, precision=precision), dP, dG
    dP = torch.empty((B, n, r), dtype=P.dtype, device=P.device)
    dU = torch.empty((B, m, r), dtype=U.dtype, device=U.device)
    dG = torch.empty((B, r, r), dtype=P.dtype, device=P.device)
    BN, warps = tiles("block_small_backward", r, P.device)
    symnmf_block_small_backward_kernel[(B,)](
        grad, Y, P, Ginv, U, dP, dU, dG, m, n, r,
        *grad.stride(), *Y.stride(), *P.stride(), *Ginv.stride(), *U.stride(), *dP.stride(), *dU.stride(),
        *dG.stride(),
        BLOCK_N=BN, BLOCK_R=block_r(r), ACC=acc_dtype(P.dtype), PRECISION=input_precision(P, r, True, precision),
        num_warps=warps,
    )
    return dU, dP, dG


def apply(A, M, relu, emit_gram=False, precision=None):
    """[ReLU](A @ M), and with emit_gram the Gram partials of the result (see `apply_relu_gram` for the Gram)."""
    if not relu and cublas_products(A, A.shape[-1], precision):
        return torch.bmm(A, M)
    B, n, r, BR, BN, warps, rows_per_split, splits = _geometry(A, "apply")
    Y = torch.empty((B, n, r), dtype=A.dtype, device=A.device)
    partials = _partials(A, B, splits, BR) if emit_gram else Y  # Y stands in for an unused pointer
    apply_kernel[(B, splits)](
        A, M, Y, partials, n, r, rows_per_split, *A.stride(), *M.stride(), *Y.stride(),
        RELU=relu, EMIT_GRAM=emit_gram, BLOCK_N=BN, BLOCK_R=BR, ACC=acc_dtype(A.dtype),
        PRECISION=input_precision(A, r, emit_gram, precision), num_warps=warps,
    )
    return (Y, partials) if emit_gram else Y


def apply_relu_gram(P, M, precision=None):
    """(Y, Y^T Y) with Y = ReLU(P @ M): the Gram from the same pass, or from a GEMM where `cublas_products`."""
    r = P.shape[-1]
    if cublas_products(P, r, precision):
        Y = apply(P, M, relu=True, precision=precision)
        return Y, torch.bmm(Y.mT, Y)
    Y, partials = apply(P, M, relu=True, emit_gram=True, precision=precision)
    return Y, reduce_partials(partials, None, r, P.dtype)


def apply_backward(grad, Y, A, M, H=None, relu=True, precision=None, reduce=True, sym_h=False, dp_extra=None):
    """Backward of Y = [ReLU](A @ M): (dA, dM) with dM of shape (B, r, r).

    H, when given, adds Y @ H to grad first (the gradient through Y^T Y); with sym_h H is that gradient itself,
    and Y @ (H + H^T) is added (the kernel reads H both ways). reduce=False returns dM as its
    (B, splits, BR, BR) partial sums, for a kernel that adds them up itself (not where `cublas_products`).
    dp_extra: (T, c), T of A's shape and c (B,), adds c[b] T[b] to dA in the same pass: another gradient of A
    that would otherwise be summed with dA by a pass of its own (SymNMF-Net's chain: the regulariser's).
    """
    if reduce and cublas_products(A, A.shape[-1], precision):
        if H is not None:
            grad = torch.baddbmm(grad, Y, H + H.mT if sym_h else H)
        # threshold_backward: the gradient passes where Y is NaN, as in the kernel and torch's relu backward
        Zb = torch.ops.aten.threshold_backward(grad, Y, 0) if relu else grad
        dA = torch.bmm(Zb, M.mT)
        if dp_extra is not None:
            dA.addcmul_(dp_extra[1][:, None, None], dp_extra[0])
        return dA, torch.bmm(A.mT, Zb)
    B, n, r, BR, BN, warps, rows_per_split, splits = _geometry(A, "apply_backward" if H is None else "apply_backward_h")
    dA = torch.empty((B, n, r), dtype=A.dtype, device=A.device)
    partials = _partials(A, B, splits, BR)
    Mt = M.mT  # dA = Zb @ M^T: a transposed view, read through strides
    H_arg = H if H is not None else M
    # read as coef_t[b]: an expanded scalar would be read out of bounds; dA and partials stand in for no dp_extra
    T, coef_t = (dp_extra[0], dp_extra[1].contiguous()) if dp_extra is not None else (dA, partials)
    apply_backward_kernel[(B, splits)](
        grad, Y, A, Mt, H_arg, dA, partials, T, coef_t, n, r, rows_per_split,
        *grad.stride(), *Y.stride(), *A.stride(), *Mt.stride(), *H_arg.stride(), *dA.stride(), *T.stride(),
        HAS_H=H is not None, RELU=relu, BLOCK_N=BN, BLOCK_R=BR, ACC=acc_dtype(A.dtype),
        PRECISION=input_precision(A, r, True, precision), SYM_H=sym_h and H is not None, HAS_T=dp_extra is not None,
        num_warps=warps,
    )
    if not reduce:
        return dA, partials
    return dA, reduce_partials(partials, None, r, A.dtype)


def sym_loss(X, U, precision=None):
    """||X[b] - U[b] U[b]^T||_F^2 for each b: (B,)."""
    B, n, r = U.shape
    if cublas_products(U, r, precision):
        # R = X - U U^T a block of rows at a time (at most LOSS_ROWS_ELEMENTS entries): no n x n temporary
        rows = max(1, min(n, LOSS_ROWS_ELEMENTS // (B * n)))
        total = torch.zeros((B,), dtype=torch.float64, device=U.device)
        for i in range(0, n, rows):
            R = torch.baddbmm(X[:, i:i + rows], U[:, i:i + rows], U.mT, alpha=-1)
            total += torch.linalg.vector_norm(R, dim=(-2, -1)).double().square()
        return total.to(U.dtype)
    BR = block_r(r)
    BN, warps = tiles("loss", r, X.device)
    n_tiles = triton_cdiv(n, BN)
    dtype = torch.float64 if U.dtype == torch.float64 else torch.float32
    partials = torch.empty((B, n_tiles, n_tiles), dtype=dtype, device=U.device)
    sym_loss_partials_kernel[(B, n_tiles, n_tiles)](
        X, U, partials, n, r, *X.stride(), *U.stride(),
        BLOCK_N=BN, BLOCK_R=BR, ACC=acc_dtype(dtype), PRECISION=input_precision(U, r, False, precision),
        num_warps=warps,
    )
    return partials.sum((1, 2)).to(U.dtype)


def sparse_loss_terms(U, S, P, lam, with_gram=True, reduce=True, write_r=False):
    """(sums (B, 3) float64 = (<S, U>, ||R||^2, <R, U>), U^T U (B, r, r), or None without with_gram) with
    R = P - S - lam U; P may be None. reduce=False returns the sums as their (B, splits, 3) partials, for
    `sparse_loss_values`. write_r: R (B, n, r) itself is returned third (None without P), from the same pass."""
    B, n, r, BR, BN, warps, rows_per_split, splits = _geometry(U, "sparse_terms")
    lam = lam.contiguous()  # read as lam[b]: an expanded scalar would be read out of bounds
    sums = torch.empty((B, splits, 3), dtype=torch.float64, device=U.device)
    partials = _partials(U, B, splits, BR) if with_gram else sums  # sums stands in for an unused pointer
    Pt = P if P is not None else U  # stands in for an unused pointer
    R = torch.empty((B, n, r), dtype=U.dtype, device=U.device) if write_r and P is not None else None
    Rt = R if R is not None else U
    sparse_loss_terms_kernel[(B, splits)](
        U, S, Pt, lam, sums, partials, Rt, n, r, rows_per_split, *U.stride(), *S.stride(), *Pt.stride(), *Rt.stride(),
        HAS_P=P is not None, BLOCK_N=BN, BLOCK_R=BR, ACC=acc_dtype(U.dtype), PRECISION=input_precision(U, r, True),
        HAS_GRAM=with_gram, WRITE_R=R is not None, num_warps=warps,
    )
    sums = sums.sum(1) if reduce else sums
    G = reduce_partials(partials, None, r, U.dtype) if with_gram else None
    return (sums, G, R) if write_r else (sums, G)


def sparse_loss_values(partials, G, x_sq, dtype):
    """(sums (B, 3) float64, loss (B,), reg (B,)) in dtype, from the terms' (B, splits, 3) partials, the Gram G
    (B, r, r) and ||X||^2 (a 0-d tensor, or (B,) for a block-diagonal X): loss = ||X||^2 - 2 <S, U> + ||G||_F^2,
    reg = ||R||^2; one program per problem."""
    B, splits, _ = partials.shape
    r = G.shape[-1]
    sums = torch.empty((B, 3), dtype=torch.float64, device=partials.device)
    loss = torch.empty((B,), dtype=dtype, device=partials.device)
    reg = torch.empty_like(loss)
    sparse_loss_values_kernel[(B,)](
        partials, G, x_sq, sums, loss, reg, splits, r, *G.stride(), x_sq.stride(0) if x_sq.dim() else 0,
        BLOCK_R=block_r(r), SPLITS=FINALIZE_SPLITS, num_warps=4,
    )
    return sums, loss, reg


def _problem_stride(t, B):
    """The stride of a per-problem scalar t (one value, or B of them) read as t[b]: 0 for a single value."""
    return 0 if t.numel() == 1 else t.reshape(B).stride(0)


def sparse_loss_coefs(gloss, greg, sums, G, B):
    """The layer loss's backward scalars for a symmetric X: ((-4 gloss, 4 gloss, 2 greg) as three (B,) tensors,
    dlam = -2 greg <R, U> (B,), and 2 gloss G (B, r, r), or None without G), from the losses' gradients gloss and
    greg (one value or B each, in the loss's dtype) and the forward's sums (B, 3); one program per problem."""
    coefs = torch.empty((3, B), dtype=gloss.dtype, device=gloss.device)
    dlam = torch.empty((B,), dtype=gloss.dtype, device=gloss.device)
    dgram = None if G is None else torch.empty_like(G, memory_format=torch.contiguous_format)
    r = 1 if G is None else G.shape[-1]
    sparse_loss_coefs_kernel[(B,)](
        gloss, greg, sums, G if G is not None else coefs, coefs, dlam, dgram if G is not None else coefs, B, r,
        _problem_stride(gloss, B), _problem_stride(greg, B),
        *(G.stride() if G is not None else (0, 0, 0)), *(dgram.stride() if G is not None else (0, 0, 0)),
        HAS_DGRAM=G is not None, BLOCK_R=block_r(r), num_warps=4,
    )
    return coefs.unbind(0), dlam, dgram


def sparse_reg_grad(U, S, P, lam, coef):
    """W = coef (P - S - lam U); lam and coef are (B,) tensors."""
    B, n, r = U.shape
    BN = block_n(r, U.device)
    W = torch.empty((B, n, r), dtype=U.dtype, device=U.device)
    sparse_reg_grad_kernel[(B * triton_cdiv(n, BN),)](
        U, S, P, lam.contiguous(), coef.contiguous(), W, n, r, *U.stride(), *S.stride(), *P.stride(), *W.stride(),
        BLOCK_N=BN, BLOCK_R=block_r(r), ACC=acc_dtype(U.dtype), num_warps=num_warps(r),
    )
    return W


def sparse_loss_grad(U, S, G, W, Y, lam, coef_s, coef_g, coef_w=None):
    """dU = coef_s S + coef_g U G - cw (lam W + Y), cw = coef_w or 1; W, Y, coef_g and coef_w may be None
    (coef_g None: no U G term, and then U and G are not read, G may be None); the scalars are (B,) tensors."""
    B, n, r = U.shape
    BN, warps = tiles("sparse_grad", r, U.device)
    dU = torch.empty((B, n, r), dtype=U.dtype, device=U.device)
    Wt = W if W is not None else U  # stand in for unused pointers
    Yt = Y if Y is not None else U
    Gt = G if G is not None else U
    coef_s = coef_s.contiguous()
    sparse_loss_grad_kernel[(B * triton_cdiv(n, BN),)](
        U, S, Gt, Wt, Yt, lam.contiguous(), coef_s, coef_g.contiguous() if coef_g is not None else coef_s,
        coef_w.contiguous() if coef_w is not None else coef_s, dU, n, r,
        *U.stride(), *S.stride(), *Gt.stride(), *Wt.stride(), *Yt.stride(), *dU.stride(),
        HAS_W=W is not None, HAS_Y=Y is not None, BLOCK_N=BN, BLOCK_R=block_r(r), ACC=acc_dtype(U.dtype),
        PRECISION=input_precision(U, r, False), HAS_UG=coef_g is not None, HAS_CW=coef_w is not None,
        num_warps=warps,
    )
    return dU


def hals_sweep_(W, C, B, V, lam, revive, fill_scale):
    """One in-place SymHALS sweep of W (n, r), or of each problem of a batch W (P, n, r) with its own
    C, V (P, n, r) and B (P, r, r); returns the column maxima after it, (r,) or (P, r).

    With revive, all-zero columns are then set to fill_scale times the largest entry (of their problem).
    """
    batched = W.dim() == 3
    if not batched:
        W, C, B = W[None], C[None], B[None]
        V = None if V is None else V[None]
    P, n, r = W.shape
    BN, BR, warps = hals_tiles(r, W.device)
    tiles = triton_cdiv(n, BN)
    grid = P * tiles
    partial = torch.empty((grid, BR), dtype=W.dtype, device=W.device)
    has_v = V is not None
    Vt = V if has_v else C  # stands in for an unused pointer
    hals_sweep_kernel[(grid,)](
        W, C, Vt, float(lam), B, partial, n, r, tiles, *W.stride(), *C.stride(), *Vt.stride(), *B.stride(),
        HAS_V=has_v, BLOCK_N=BN, BLOCK_R=BR, num_warps=warps,
    )
    colmax = partial.reshape(P, tiles, BR).amax(1)[:, :r].contiguous()
    if revive:
        colmax = revive_zero_columns_(W, colmax, fill_scale)
    return colmax if batched else colmax[0]


def revive_zero_columns_(W, colmax, fill_scale):
    """Set the columns of W (n, r), or of each problem of W (P, n, r), whose maximum in colmax ((r,) or (P, r)) is
    0 to fill_scale times their problem's largest maximum, in place, without reading anything back to the host;
    returns the maxima after it."""
    batched = W.dim() == 3
    if not batched:
        W, colmax = W[None], colmax[None]
    P, n, r = W.shape
    BN, BR, warps = hals_tiles(r, W.device)
    tiles = triton_cdiv(n, BN)
    colmax = colmax.contiguous()
    fill = (fill_scale * colmax.amax(1)).contiguous()
    fill_zero_columns_kernel[(P * tiles,)](
        W, colmax, fill, n, r, tiles, *W.stride(), BLOCK_N=BN, BLOCK_R=BR, num_warps=warps,
    )
    colmax = torch.where(colmax == 0, fill[:, None], colmax)
    return colmax if batched else colmax[0]


# The NNLS kernel keeps a (BLOCK_M, BLOCK_K, BLOCK_K) system tile per program: about 4096 values, so
# BLOCK_M shrinks as k grows; beyond k = 32 the tile would spill and the op's torch path runs.
NNLS_MAX_K = 32
NNLS_TILE = 4096


def nnls(G, C, X0, max_rounds, tol_rel, solve_only=False):
    """Row-wise NNLS of C (B, m, k) with the Grams G (B, k, k), passive sets started from X0 > 0 (X0 may be None).

    solve_only: solve on the passive sets X0 > 0 only, without pivoting or clipping (the backward's solve).
    """
    B, m, k = C.shape
    BK = max(2, 1 << (k - 1).bit_length())
    BM = max(1, min(128, NNLS_TILE // (BK * BK)))
    X = torch.empty((B, m, k), dtype=C.dtype, device=C.device)
    X0_arg = X0 if X0 is not None else C  # stands in for an unused pointer
    nnls_kernel[(B * triton_cdiv(m, BM),)](
        G, C, X0_arg, X, m, k, int(max_rounds), float(tol_rel),
        *G.stride(), *C.stride(), *X0_arg.stride(), *X.stride(),
        HAS_X0=X0 is not None, SOLVE_ONLY=solve_only, BLOCK_M=BM, BLOCK_K=BK, ACC=acc_dtype(C.dtype), num_warps=4,
    )
    return X


# The projected-gradient measure's programs each sum PG_STEPS runs of PG_BLOCK entries: 16,384 entries a
# program, about 4,000 programs (and float64 partials) for a factor of 1M x 64.
PG_BLOCK = 1024
PG_STEPS = 16


def projected_gradient_partials(grad, U):
    """float64 partial sums of ||P(grad)||^2 over the flattened contiguous grad and U (one per program)."""
    numel = grad.numel()
    programs = max(1, triton_cdiv(numel, PG_BLOCK * PG_STEPS))
    partials = torch.empty(programs, dtype=torch.float64, device=grad.device)
    projected_gradient_partials_kernel[(programs,)](grad, U, partials, numel, BLOCK=PG_BLOCK, STEPS=PG_STEPS,
                                                   num_warps=4)
    return partials
