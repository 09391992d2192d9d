"""gram(U, lam) = U^T U + lam I, and mm_small(A, M) = A @ M, its backward's one pass over U."""
import torch

from . import _launch
from ._common import as_batch, as_lam, check_tensor, needs_grad, use_triton


@torch.library.custom_op("symnmf_kernels::mm_small", mutates_args=())
def mm_small(A: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """A @ M for tall-skinny A (..., n, r) and small M (..., r, r) of the same batch shape."""
    r = A.shape[-1]
    if use_triton(A, r):
        A3, batch = as_batch(A)
        return _launch.apply(A3, M.reshape(-1, r, r), relu=False).reshape(A.shape)
    return (A @ M).contiguous()


@mm_small.register_fake
def _(A, M):
    return torch.empty_like(A, memory_format=torch.contiguous_format)


# ---- the torch path (CPU, and r beyond the fused kernels) ------------------------------------------------------


def gram_torch(U, lam):
    """U^T U + lam I: one BLAS product, lam added to its diagonal in place."""
    if U.dim() == 2:
        G = torch.mm(U.mT, U)
        G.diagonal().add_(lam)
        return G
    G = U.mT @ U
    G.diagonal(dim1=-2, dim2=-1).add_(lam.unsqueeze(-1) if lam.dim() else lam)
    return G


def gram_backward_torch(U, dG, lam_shape, need_u, need_lam):
    """(dU, dlam) of G = U^T U + lam I: dU = U (dG + dG^T), one product (torch's autograd of U^T U takes two)."""
    dU = U @ (dG + dG.mT) if need_u else None
    dlam = dG.diagonal(dim1=-2, dim2=-1).sum(-1).sum_to_size(lam_shape) if need_lam else None
    return dU, dlam


class _GramTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, U, lam):
        ctx.save_for_backward(U)
        ctx.lam_shape = lam.shape
        return gram_torch(U, lam)

    @staticmethod
    def backward(ctx, dG):
        (U,) = ctx.saved_tensors
        return gram_backward_torch(U, dG, ctx.lam_shape, *ctx.needs_input_grad[:2])


@torch.library.custom_op("symnmf_kernels::gram", mutates_args=())
def gram_op(U: torch.Tensor, lam: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
    r = U.shape[-1]
    if use_triton(U, r):
        U3, batch = as_batch(U)
        lam_b = lam.expand(batch).reshape(-1).contiguous()
        return _launch.gram(U3, lam_b, deterministic).reshape(*batch, r, r)
    return gram_torch(U, lam)


@gram_op.register_fake
def _(U, lam, deterministic=True):
    r = U.shape[-1]
    return U.new_empty((*U.shape[:-2], r, r))


def _gram_setup(ctx, inputs, output):
    U, lam, _ = inputs
    ctx.save_for_backward(U)
    ctx.lam_shape = lam.shape


def _gram_backward(ctx, dG):
    (U,) = ctx.saved_tensors
    dU = dlam = None
    if ctx.needs_input_grad[0]:
        dU = mm_small(U, (dG + dG.mT).contiguous())
    if ctx.needs_input_grad[1]:
        dlam = dG.diagonal(dim1=-2, dim2=-1).sum(-1).sum_to_size(ctx.lam_shape)
    return dU, dlam, None


gram_op.register_autograd(_gram_backward, setup_context=_gram_setup)


def gram(U, lam=0.0, deterministic=True, *, check_lam=True):
    """G = U^T U + lam I for U of shape (..., n, r): (..., r, r).

    lam is a float or a tensor broadcastable to the batch shape (...); it may
    require grad. deterministic=False lets the split-n partial sums meet by
    atomic adds (run-to-run bit differences) instead of a second stage.
    check_lam: a negative lam is a ValueError (checked for a float, and for a
    CPU tensor; a GPU tensor is not read back); False allows it.
    """
    check_tensor(U, "U")
    lam = as_lam(lam, U, check_lam)
    if not use_triton(U, U.shape[-1]):
        return _GramTorch.apply(U, lam) if needs_grad(U, lam) else gram_torch(U, lam)
    return gram_op(U, lam, bool(deterministic))
