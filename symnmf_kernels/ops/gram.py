"""gram(U, lam) = U^T U + lam I, and mm_small(A, M) = A @ M, its backward's one pass over U."""
import torch

from .. import reference
from . import _launch
from ._common import as_batch, as_lam, check_tensor, use_triton


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


@torch.library.custom_op("symnmf_kernels::gram", mutates_args=())
def gram_op(U: torch.Tensor, lam: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
    r = U.shape[-1]
    if use_triton(U, r):
        U3, batch = as_batch(U)
        lam_b = lam.expand(batch).reshape(-1).contiguous()
        return _launch.gram(U3, lam_b, deterministic).reshape(*batch, r, r)
    return reference.gram(U, lam).contiguous()


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
    return gram_op(U, lam, bool(deterministic))
