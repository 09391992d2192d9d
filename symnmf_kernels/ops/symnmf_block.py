"""symnmf_block: one SymNMF-Net block, U_next = ReLU(P (U^T U + lam I)^{-1}).

One custom op forward and one backward, so that a block costs two dispatches
however many kernels run inside; small problems take the single-launch
fused kernel of triton/symnmf_block.py.
"""
import torch

from . import _launch
from ._common import (
    as_batch, as_lam, broadcasts_to, check_batch_of, check_same, check_tensor, first_order_only, needs_grad, use_triton,
)
from .apply_relu import (
    apply_relu_backward_torch, apply_relu_gram, apply_relu_gram_torch,
    apply_relu_gram_triton, apply_relu_torch,
)
from .gram import gram_torch, tall_mm
from .spd_inverse import spd_inverse, spd_inverse_backward_torch, spd_inverse_torch, spd_inverse_triton


# ---- the torch path (CPU, and r beyond the fused kernels) --------------------------------------------------------
# One autograd node per block, with the backward of docs/design.md ("The block and its backward") on BLAS:
# the ReLU's mask in one pass, dP and P^T Zb as two products, dU as one product with dG + dG^T (torch's own
# autograd of U^T U takes two), and no saved copy of Z = P G^{-1}.


def block_torch(U, P, lam):
    """(ReLU(P G^{-1}), G^{-1}) with G = U^T U + lam I."""
    Ginv, _ = spd_inverse_torch(gram_torch(U, lam))
    return apply_relu_torch(P, Ginv), Ginv


def block_backward_torch(grad, U, P, Ginv, Y, need_u=True, need_p=True, need_g=True):
    """(dU, dP, dG) of Y = ReLU(P G^{-1}), G = U^T U + lam I; dlam = trace(dG). None for what is not needed."""
    need_dG = need_u or need_g
    dP, PtZb = apply_relu_backward_torch(grad, Y, P, Ginv, None, need_p, need_dG)
    dG = -(Ginv.mT @ PtZb @ Ginv.mT) if need_dG else None
    dU = tall_mm(U, dG + dG.mT) if need_u else None
    return dU, dP, dG


def _trace(dG, lam_shape):
    """dlam = trace(dG), summed to lam's shape."""
    return dG.diagonal(dim1=-2, dim2=-1).sum(-1).sum_to_size(lam_shape)


class _Block(torch.autograd.Function):
    """The block in eager mode, on the torch path or (triton=True) the Triton path. torch.compile sees the custom
    ops below instead (same functions): on a GPU their dispatch costs more host time per call than the kernels
    of a small block take."""

    @staticmethod
    def forward(ctx, U, P, lam, triton):
        Y, Ginv = block_triton(U, P, lam) if triton else block_torch(U, P, lam)
        ctx.save_for_backward(U, P, Ginv, Y)
        ctx.lam_shape = lam.shape
        ctx.triton = triton
        return Y

    @staticmethod
    @first_order_only
    def backward(ctx, dY):
        U, P, Ginv, Y = ctx.saved_tensors
        need_u, need_p, need_lam = ctx.needs_input_grad[:3]
        if ctx.triton:
            dU, dP, dG = block_backward_triton(dY.contiguous(), U, P, Ginv, Y)
        else:
            dU, dP, dG = block_backward_torch(dY, U, P, Ginv, Y, need_u, need_p, need_lam)
        return dU, dP, (_trace(dG, ctx.lam_shape) if need_lam else None), None


class _BlockFromGram(torch.autograd.Function):
    """(Y, Y^T Y) with Y = ReLU(P (UtU + lam I)^{-1}), on the torch path or (triton=True) the Triton path, in
    eager mode; the Gram's gradient joins dY before the mask."""

    @staticmethod
    def forward(ctx, UtU, P, lam, triton):
        if triton and (lam.dim() == 0 or lam.shape == UtU.shape[:-2]):  # the inverse's kernel adds lam to UtU
            Ginv = spd_inverse_triton(UtU, lam)[0]
        else:
            if lam.dim() == 0:  # lam added to a copy's diagonal: two small kernels instead of an eye, a product, a sum
                G = UtU.clone()
                G.diagonal(dim1=-2, dim2=-1).add_(lam)
            else:  # lam's batch may be wider than UtU's
                G = UtU + lam[..., None, None] * torch.eye(UtU.shape[-1], dtype=UtU.dtype, device=UtU.device)
            Ginv = (spd_inverse_triton if triton else spd_inverse_torch)(G)[0]
        if triton:  # the kernels take G^{-1} with P's batch
            Ginv = Ginv.expand(*P.shape[:-2], *Ginv.shape[-2:])
            Y, YtY = apply_relu_gram_triton(P, Ginv)
        else:
            Y, YtY = apply_relu_gram_torch(P, Ginv)
        if ctx is not None:  # None: called without autograd
            ctx.save_for_backward(P, Ginv, Y)
            ctx.lam_shape = lam.shape
            ctx.triton = triton
        return Y, YtY

    @staticmethod
    @first_order_only
    def backward(ctx, dY, dYtY):
        P, Ginv, Y = ctx.saved_tensors
        need_g, need_p, need_lam = ctx.needs_input_grad[:3]
        if dY is None:
            dY = torch.zeros_like(Y)
        dUtU = dlam = None
        if ctx.triton:
            # The ReLU product's backward forms dYtY + dYtY^T as it loads dYtY; one kernel then does the r x r
            # step and lam's trace.
            dP, dG, trace = block_from_gram_backward_triton(
                dY.contiguous(), Y, P, Ginv, None if dYtY is None else dYtY.contiguous(), need_lam)
            if need_lam:
                dlam = trace.sum_to_size(ctx.lam_shape)
        else:
            H = None if dYtY is None else dYtY + dYtY.mT
            dP, dGinv = apply_relu_backward_torch(dY, Y, P, Ginv, H, need_p, need_g or need_lam)
            dG = spd_inverse_backward_torch(Ginv, dGinv) if need_g or need_lam else None
            if need_lam:
                dlam = _trace(dG, ctx.lam_shape)
        if need_g:
            dUtU = dG
        return dUtU, dP, dlam, None


# ---- the Triton path ---------------------------------------------------------------------------------------------


def block_triton(U, P, lam):
    """(ReLU(P G^{-1}), G^{-1}) with G = U^T U + lam I, by the Triton kernels (one launch for small problems)."""
    r = P.shape[-1]
    U3, batch = as_batch(U)
    P3, _ = as_batch(P)
    lam_b = lam.expand(batch).reshape(-1).contiguous()
    Y, Ginv, _ = _launch.symnmf_block(U3, P3, lam_b)
    return Y.reshape(P.shape), Ginv.reshape(*batch, r, r)


def block_from_gram_backward_triton(grad, Y, P, Ginv, dYtY=None, trace=False):
    """(dP, dG, trace(dG) with trace, else None) of the chain form's Y = ReLU(P G^{-1}) given dL/dY = grad +
    Y (dYtY + dYtY^T), by the Triton kernels: dG the gradient of G = UtU + lam I, symmetric (Ginv and dYtY of P's
    batch), its trace of P's batch shape."""
    r = P.shape[-1]
    P3, batch = as_batch(P)
    B = P3.shape[0]
    dP, dG, tr = _launch.apply_relu_inverse_backward(
        grad.reshape(P3.shape), Y.reshape(P3.shape), P3, Ginv.reshape(B, r, r),
        None if dYtY is None else dYtY.reshape(B, r, r), sym_h=True, trace=trace)
    return dP.reshape(P.shape), dG.reshape(Ginv.shape), (tr.reshape(batch) if trace else None)


def block_backward_triton(grad, U, P, Ginv, Y):
    """(dU, dP, dG) of Y = ReLU(P G^{-1}) by the Triton kernels (one launch for small problems)."""
    r = P.shape[-1]
    U3, _ = as_batch(U)
    P3, _ = as_batch(P)
    dU, dP, dG = _launch.symnmf_block_backward(
        grad.reshape(P3.shape), Y.reshape(P3.shape), P3, Ginv.reshape(P3.shape[0], r, r), U3)
    return dU.reshape(U.shape), dP.reshape(P.shape), dG.reshape(Ginv.shape)


# ---- the custom ops (torch.compile) ------------------------------------------------------------------------------


@torch.library.custom_op("symnmf_kernels::symnmf_block", mutates_args=())
def symnmf_block_op(U: torch.Tensor, P: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_next, G^{-1}) with G = U^T U + lam I; G^{-1} is kept for the backward."""
    if use_triton(P, P.shape[-1]):
        return block_triton(U, P, lam)
    Y, Ginv = block_torch(U, P, lam)
    return Y.contiguous(), Ginv.contiguous()


@symnmf_block_op.register_fake
def _(U, P, lam):
    r = P.shape[-1]
    return torch.empty_like(P, memory_format=torch.contiguous_format), P.new_empty((*P.shape[:-2], r, r))


@torch.library.custom_op("symnmf_kernels::symnmf_block_backward", mutates_args=())
def symnmf_block_backward(
    grad: torch.Tensor, U: torch.Tensor, P: torch.Tensor, Ginv: torch.Tensor, Y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dU, dP, dG) of Y = ReLU(P G^{-1}), G = U^T U + lam I; dlam = trace(dG).

    The formulas: docs/design.md, "The block and its backward".
    """
    check_batch_of(P, Ginv=Ginv)
    if use_triton(P, P.shape[-1]):
        return block_backward_triton(grad, U, P, Ginv, Y)
    return tuple(t.contiguous() for t in block_backward_torch(grad, U, P, Ginv, Y))


@symnmf_block_backward.register_fake
def _(grad, U, P, Ginv, Y):
    check_batch_of(P, Ginv=Ginv)
    like = torch.contiguous_format
    return (
        torch.empty_like(U, memory_format=like),
        torch.empty_like(P, memory_format=like),
        torch.empty_like(Ginv, memory_format=like),
    )


def _setup(ctx, inputs, output):
    U, P, lam = inputs
    Y, Ginv = output
    ctx.save_for_backward(U, P, Ginv, Y)
    ctx.lam_shape = lam.shape


def _backward(ctx, dY, dGinv):
    U, P, Ginv, Y = ctx.saved_tensors
    if dY is None:
        return None, None, None
    dU, dP, dG = symnmf_block_backward(dY.contiguous(), U, P, Ginv, Y)
    return dU, dP, (_trace(dG, ctx.lam_shape) if ctx.needs_input_grad[2] else None)


symnmf_block_op.register_autograd(_backward, setup_context=_setup)


def _check(U, P):
    check_tensor(U, "U")
    check_tensor(P, "P")
    check_same(P, U, "P", "U")
    if P.shape[-1] != U.shape[-1]:
        raise ValueError(f"P has r = {P.shape[-1]} columns but U has r = {U.shape[-1]}; they must match")


def symnmf_block(U, P, lam, *, check_lam=True):
    """ReLU(P (U^T U + lam I)^{-1}) for U (..., m, r), P (..., n, r); differentiable in U, P and lam.

    lam is a float or a tensor broadcastable to the batch shape (...).
    Passes over n x r data: forward reads U and P and writes the result;
    backward reads the gradient, the result and P, writes dP, then reads U and
    writes dU (the r x r algebra in between is negligible).
    lam must be >= 0: a negative lam is a ValueError for a float and for a CPU
    tensor (a GPU tensor is not read back, which would stall the step);
    check_lam=False allows it. A Gram that is not positive definite (a negative
    lam, NaN in U) yields NaN, never zeros. With lam = 0 and a rank-deficient U
    the Gram is singular, and rounding decides whether its Cholesky meets a
    pivot that is not positive (NaN) or a tiny positive one (huge values), on
    the kernels and on torch's Cholesky alike, not always the same way: pass a
    lam > 0.
    """
    _check(U, P)
    if U.shape[:-2] != P.shape[:-2]:
        raise ValueError(f"U's batch shape {tuple(U.shape[:-2])} differs from P's {tuple(P.shape[:-2])}")
    lam = as_lam(lam, U, check_lam)
    triton = use_triton(P, P.shape[-1])
    if triton and torch.compiler.is_compiling():
        return symnmf_block_op(U, P, lam)[0]
    if needs_grad(U, P, lam):
        return _Block.apply(U, P, lam, triton)
    return (block_triton if triton else block_torch)(U, P, lam)[0]


def symnmf_block_from_gram(UtU, P, lam, *, check_lam=True):
    """One block from the Gram U^T U of its input: returns (U_next, U_next^T U_next).

    The chain form of `symnmf_block` for networks of blocks: the Gram of each
    block's output comes out of the same pass that writes it, so the next block
    never reads its input factor, and the backward of a block needs one pass
    over n x r data instead of two. lam and check_lam as in `symnmf_block`.
    """
    check_tensor(UtU, "UtU")
    check_tensor(P, "P")
    check_same(P, UtU, "P", "UtU")
    r = P.shape[-1]
    if UtU.shape[-2:] != (r, r):
        raise ValueError(f"UtU must be r x r = {r} x {r} to match P, got {tuple(UtU.shape[-2:])}")
    if not broadcasts_to(UtU.shape[:-2], P.shape[:-2]):
        raise ValueError(f"UtU's batch shape {tuple(UtU.shape[:-2])} must broadcast to P's {tuple(P.shape[:-2])}: "
                         "one Gram per problem of P, or one shared by all")
    lam = as_lam(lam, P, check_lam)
    triton = use_triton(P, r)
    if triton and torch.compiler.is_compiling():  # the custom ops
        G = UtU + lam[..., None, None] * torch.eye(r, dtype=P.dtype, device=P.device)
        return apply_relu_gram(P, spd_inverse(G))
    if not needs_grad(UtU, P, lam):
        return _BlockFromGram.forward(None, UtU, P, lam, triton)
    return _BlockFromGram.apply(UtU, P, lam, triton)
