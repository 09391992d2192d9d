"""apply_relu(P, Ginv) = ReLU(P @ Ginv), alone or with the Gram of its output from the same pass."""
from typing import Optional

import torch

from . import _common, _launch
from ._common import (
    FLOAT_DTYPES, as_batch, broadcasts_to, check_batch_of, check_same, check_square, check_tensor, direct_call,
    needs_grad, use_triton,
)
from .gram import _tall_native, tall_gram, tall_mm


_STRIDED = torch.strided


def _flat_square(M, B, r):
    return M.reshape(B, r, r)


# ---- the torch path (CPU, and r beyond the fused kernels) ------------------------------------------------------


def apply_relu_torch(P, Ginv):
    """ReLU(P @ Ginv): one product, the ReLU in place on its result (out of place under torch.compile:
    torch 2.11 traced the in-place ReLU inside the autograd Functions that call this so that their gradients
    came out zero or wrong, silently; torch 2.13 traces either form correctly)."""
    if torch.compiler.is_compiling():
        return torch.relu(P @ Ginv)
    return torch.relu_(tall_mm(P, Ginv))


def _per_problem(M, P):
    """The r x r operand M broadcast to P's batch, one contiguous matrix per problem (the extension's layout)."""
    r = P.shape[-1]
    return M.expand(*P.shape[:-2], r, r).contiguous()


def _fused_native(P, Ginv, *factors):
    """Whether the extension's fused loops take P @ Ginv with its ReLU: where tall_mm's own loops would, with Ginv
    broadcasting to P's batch and the other n x r operands of P's shape."""
    r = P.shape[-1]
    return (_tall_native(P, Ginv, *factors) and Ginv.shape[-2:] == (r, r) and Ginv.dim() <= P.dim()
            and all(f.shape == P.shape for f in factors))


def apply_relu_gram_torch(P, Ginv):
    """(Y, Y^T Y) with Y = ReLU(P @ Ginv): on the CPU one pass of the extension's loops, each tile's Gram taken
    while the tile is in cache (the same values as the product, ReLU and Gram one after another)."""
    if _fused_native(P, Ginv):
        return torch.ops.symnmf_kernels.tall_apply_relu_gram(P, _per_problem(Ginv, P))
    Y = apply_relu_torch(P, Ginv)
    return Y, tall_gram(Y, Y)


def apply_relu_backward_torch(grad, Y, P, Ginv, H=None, need_p=True, need_ginv=True):
    """(dP, dGinv) of Y = ReLU(P @ Ginv) given dL/dY = grad + Y @ H; the ReLU's mask in one pass
    (threshold_backward, as torch's own relu backward). On the CPU the extension's loops do it all in one pass
    over the n x r operands, with the same values, and dGinv per problem of P's batch as tall_gram gives it."""
    if (need_p or need_ginv) and _fused_native(P, Ginv, grad, Y) and (H is None or H.shape == Ginv.shape):
        dP, dGinv = torch.ops.symnmf_kernels.tall_apply_relu_backward(
            grad, Y, P, _per_problem(Ginv, P), None if H is None else _per_problem(H, P))
        return (dP if need_p else None), (dGinv if need_ginv else None)
    if H is not None:
        grad = tall_mm(Y, H, add=grad)
    Zb = torch.ops.aten.threshold_backward(grad, Y, 0)
    dP = tall_mm(Zb, Ginv.mT) if need_p else None
    dGinv = tall_gram(P, Zb) if need_ginv else None
    return dP, dGinv


class _ApplyReluTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, P, Ginv):
        Y = apply_relu_torch(P, Ginv)
        ctx.save_for_backward(Y, P, Ginv)
        return Y

    @staticmethod
    def backward(ctx, dY):
        Y, P, Ginv = ctx.saved_tensors
        dP, dGinv = apply_relu_backward_torch(dY, Y, P, Ginv, None, *ctx.needs_input_grad[:2])
        return dP, (dGinv.sum_to_size(Ginv.shape) if dGinv is not None else None)


class _ApplyReluGramTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, P, Ginv):
        Y, YtY = apply_relu_gram_torch(P, Ginv)
        ctx.save_for_backward(Y, P, Ginv)
        return Y, YtY

    @staticmethod
    def backward(ctx, dY, dYtY):
        Y, P, Ginv = ctx.saved_tensors
        if dY is None:
            dY = torch.zeros_like(Y)
        H = None if dYtY is None else dYtY + dYtY.mT
        dP, dGinv = apply_relu_backward_torch(dY, Y, P, Ginv, H, *ctx.needs_input_grad[:2])
        return dP, (dGinv.sum_to_size(Ginv.shape) if dGinv is not None else None)


def apply_relu_triton(P, Ginv):
    """ReLU(P @ Ginv) by the Triton kernel."""
    P3, _ = as_batch(P)
    return _launch.apply(P3, _flat_square(Ginv, P3.shape[0], P.shape[-1]), relu=True).reshape(P.shape)


def apply_relu_gram_triton(P, Ginv):
    """(Y, Y^T Y) with Y = ReLU(P @ Ginv) by the Triton kernels, from one pass over P."""
    r = P.shape[-1]
    P3, batch = as_batch(P)
    Y, YtY = _launch.apply_relu_gram(P3, _flat_square(Ginv, P3.shape[0], r))
    return Y.reshape(P.shape), YtY.reshape(*batch, r, r)


def apply_relu_backward_triton(grad, Y, P, Ginv, H=None):
    """(dP, dGinv) of Y = ReLU(P @ Ginv) given dL/dY = grad + Y @ H, by the Triton kernel (Ginv and H of P's
    batch)."""
    r = P.shape[-1]
    P3, _ = as_batch(P)
    B = P3.shape[0]
    H3 = None if H is None else _flat_square(H, B, r)
    dP, dGinv = _launch.apply_backward(grad.reshape(B, -1, r), Y.reshape(B, -1, r), P3, _flat_square(Ginv, B, r), H3)
    return dP.reshape(P.shape), dGinv.reshape(Ginv.shape)


@torch.library.custom_op("symnmf_kernels::apply_relu", mutates_args=())
def apply_relu_op(P: torch.Tensor, Ginv: torch.Tensor) -> torch.Tensor:
    if use_triton(P, P.shape[-1]):
        return apply_relu_triton(P, Ginv)
    return apply_relu_torch(P, Ginv).contiguous()


@apply_relu_op.register_fake
def _(P, Ginv):
    return torch.empty_like(P, memory_format=torch.contiguous_format)


@torch.library.custom_op("symnmf_kernels::apply_relu_gram", mutates_args=())
def apply_relu_gram_op(P: torch.Tensor, Ginv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y, Y^T Y) with Y = ReLU(P @ Ginv), both from one pass over P."""
    if use_triton(P, P.shape[-1]):
        return apply_relu_gram_triton(P, Ginv)
    Y, YtY = apply_relu_gram_torch(P, Ginv)
    return Y.contiguous(), YtY.contiguous()


@apply_relu_gram_op.register_fake
def _(P, Ginv):
    r = P.shape[-1]
    return torch.empty_like(P, memory_format=torch.contiguous_format), P.new_empty((*P.shape[:-2], r, r))


@torch.library.custom_op("symnmf_kernels::apply_relu_backward", mutates_args=())
def apply_relu_backward(
    grad: torch.Tensor, Y: torch.Tensor, P: torch.Tensor, Ginv: torch.Tensor, H: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dP, dGinv) for Y = ReLU(P @ Ginv) given dL/dY = grad + Y @ H (H = dGram + dGram^T, optional)."""
    check_batch_of(P, Ginv=Ginv, H=H)
    if use_triton(P, P.shape[-1]):
        return apply_relu_backward_triton(grad, Y, P, Ginv, H)
    dP, dGinv = apply_relu_backward_torch(grad, Y, P, Ginv, H)
    return dP.contiguous(), dGinv.contiguous()


@apply_relu_backward.register_fake
def _(grad, Y, P, Ginv, H):
    check_batch_of(P, Ginv=Ginv, H=H)
    return (
        torch.empty_like(P, memory_format=torch.contiguous_format),
        torch.empty_like(Ginv, memory_format=torch.contiguous_format),
    )


def _setup(ctx, inputs, output):
    P, Ginv = inputs
    Y = output[0] if isinstance(output, tuple) else output
    ctx.save_for_backward(Y, P, Ginv)


def _backward(ctx, dY):
    Y, P, Ginv = ctx.saved_tensors
    if dY is None:
        dY = torch.zeros_like(Y)
    dP, dGinv = apply_relu_backward(dY.contiguous(), Y, P, Ginv, None)
    return dP, dGinv


def _backward_gram(ctx, dY, dYtY):
    Y, P, Ginv = ctx.saved_tensors
    if dY is None:
        dY = torch.zeros_like(Y)
    H = None if dYtY is None else (dYtY + dYtY.mT).contiguous()
    return apply_relu_backward(dY.contiguous(), Y, P, Ginv, H)


apply_relu_op.register_autograd(_backward, setup_context=_setup)
apply_relu_gram_op.register_autograd(_backward_gram, setup_context=_setup)


def _check(P, Ginv):
    check_tensor(P, "P")
    check_square(Ginv, "Ginv")
    check_same(Ginv, P, "Ginv", "P")
    if Ginv.shape[-1] != P.shape[-1]:
        raise ValueError(f"Ginv is {tuple(Ginv.shape[-2:])} but P has r = {P.shape[-1]} columns; Ginv must be r x r")
    batch = P.shape[:-2]
    if Ginv.shape[:-2] == batch:
        return Ginv
    if not broadcasts_to(Ginv.shape[:-2], batch):
        raise ValueError(f"Ginv's batch shape {tuple(Ginv.shape[:-2])} must broadcast to P's {tuple(batch)}")
    return Ginv.expand(*batch, *Ginv.shape[-2:])


def _plain_cpu_2d(P, Ginv):
    """Whether P (n, r) and Ginv (r, r) are valid dense CPU tensors of one float dtype on the torch path:
    the common case, tested in a few attribute reads (the full checks in `_check` cost more than the
    product itself at n = 1000)."""
    return (
        isinstance(P, torch.Tensor) and isinstance(Ginv, torch.Tensor)
        and P.dim() == 2 and Ginv.dim() == 2
        and P.layout is _STRIDED and Ginv.layout is _STRIDED
        and P.dtype in FLOAT_DTYPES and Ginv.dtype is P.dtype
        and P.shape[1] > 0 and P.shape[0] > 0 and Ginv.shape == (P.shape[1], P.shape[1])
        and _common.torch_path_cpu(P) and Ginv.is_cpu
    )


def apply_relu(P, Ginv):
    """ReLU(P @ Ginv) for P (..., n, r) and Ginv (..., r, r) (its batch broadcasts to P's)."""
    if _plain_cpu_2d(P, Ginv):
        # The torch path without the general checks. When a gradient is recorded tall_mm is torch's mm, and
        # torch's own autograd of mm and an in-place ReLU is _ApplyReluTorch's backward (the mask from the
        # output, then two products) without a Python node.
        return tall_mm(P, Ginv).relu_()
    Ginv = _check(P, Ginv)
    if not use_triton(P, P.shape[-1]):
        return _ApplyReluTorch.apply(P, Ginv) if needs_grad(P, Ginv) else apply_relu_torch(P, Ginv)
    if direct_call(P, Ginv):
        return apply_relu_triton(P, Ginv)
    return apply_relu_op(P, Ginv)


def apply_relu_gram(P, Ginv):
    """(Y, Y^T Y) with Y = ReLU(P @ Ginv), the Gram accumulated in the same pass over P.

    Feeding Y^T Y to the next block (`symnmf_block_from_gram`) means a chain of
    blocks reads each factor once forward, and its backward folds the Gram's
    gradient into this op's single backward pass.
    """
    Ginv = _check(P, Ginv)
    if not use_triton(P, P.shape[-1]):
        if not needs_grad(P, Ginv):
            return apply_relu_gram_torch(P, Ginv)
        return _ApplyReluGramTorch.apply(P, Ginv)
    if direct_call(P, Ginv):
        return apply_relu_gram_triton(P, Ginv)
    return apply_relu_gram_op(P, Ginv)
