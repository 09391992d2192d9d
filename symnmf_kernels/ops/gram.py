"""gram(U, lam) = U^T U + lam I, and mm_small(A, M) = A @ M, its backward's one pass over U.

On the CPU the ops' torch paths form their tall-skinny products (A^T B and A @ M for n x r factors, r small)
with tall_gram and tall_mm: the extension's single-pass row loops (csrc/cpu/gram_cpu.cpp) where they are
faster than BLAS, torch's products elsewhere.
"""
import torch

from . import _launch
from ._common import as_batch, as_lam, check_tensor, direct_call, needs_grad, use_triton
from .._extension import has_cpu_op

# ---- tall-skinny products on the CPU ---------------------------------------------------------------------------

_NATIVE_TALL = has_cpu_op("tall_mm")
# The ranks at which the extension's loops beat the CPU build's BLAS, one thread, n = 20,000 and 200,000: 3-7x at
# r = 5-8 and 2-5x at r = 10, float64 1.5-3.3x at r = 16; float32 at r = 16 and any dtype at r = 12 or 32 (the
# loop without a compile-time rank) lost or tied (docs/cpu_backend.md, "Tall-skinny products").
_TALL_RANKS = {torch.float32: frozenset(range(1, 11)), torch.float64: frozenset([*range(1, 11), 16])}
# Below this many rows a product is a few microseconds either way; torch's is then the shorter call.
_TALL_MIN_ROWS = 256

if _NATIVE_TALL:
    @torch.library.register_fake("symnmf_kernels::tall_mm")
    def _(A, M, add=None):
        return torch.empty_like(A, memory_format=torch.contiguous_format)

    @torch.library.register_fake("symnmf_kernels::tall_gram")
    def _(A, B):
        r = A.shape[-1]
        return A.new_empty((*A.shape[:-2], r, r))

    @torch.library.register_fake("symnmf_kernels::tall_apply_relu_gram")
    def _(P, Ginv):
        r = P.shape[-1]
        return torch.empty_like(P, memory_format=torch.contiguous_format), P.new_empty((*P.shape[:-2], r, r))

    @torch.library.register_fake("symnmf_kernels::tall_apply_relu_backward")
    def _(grad, Y, P, Ginv, H=None):
        r = P.shape[-1]
        return torch.empty_like(P, memory_format=torch.contiguous_format), P.new_empty((*P.shape[:-2], r, r))


def _tall_native(A, *others):
    """Whether the extension's loops take the factor A (and the other operands): a row-major CPU float factor of
    at most two batch dimensions, a rank they win at, eager mode, and no autograd graph to record."""
    if not (_NATIVE_TALL and A.is_cpu and A.dim() in (2, 3) and A.shape[-2] >= _TALL_MIN_ROWS
            and A.shape[-1] in _TALL_RANKS.get(A.dtype, ()) and A.is_contiguous()
            and not torch.compiler.is_compiling()):
        return False
    if torch.is_grad_enabled() and (A.requires_grad or any(t.requires_grad for t in others)):
        return False
    return all(t.dtype == A.dtype and t.is_cpu for t in others)


def tall_mm(A, M, add=None):
    """add + A @ M for a tall-skinny A (..., n, r) and a small M (r, r) or (..., r, r); add (optional) has A's
    shape. The extension's row loop on the CPU where it is faster, torch's product otherwise."""
    r = A.shape[-1]
    operands = (M,) if add is None else (M, add)
    if (_tall_native(A, *operands) and M.shape[-2:] == (r, r) and M.dim() <= A.dim()
            and (add is None or add.shape == A.shape)):
        # M's batch broadcast to A's: the kernel takes one r x r matrix per problem.
        return torch.ops.symnmf_kernels.tall_mm(A, M.expand(*A.shape[:-2], r, r).contiguous(), add)
    if add is None:
        return A @ M
    if add.dim() == 2 and A.dim() == 2 and M.dim() == 2:
        return torch.addmm(add, A, M)
    if add.dim() == 3 and A.dim() == 3 and M.dim() == 3:
        return torch.baddbmm(add, A, M)
    return add + A @ M


def tall_gram(A, B):
    """A^T B for tall-skinny A, B (..., n, r) of the same shape: (..., r, r). The extension's row loop on the CPU
    where it is faster, torch's product otherwise."""
    if _tall_native(A, B) and B.shape == A.shape:
        return torch.ops.symnmf_kernels.tall_gram(A, B)
    if A.dim() == 2 and B.dim() == 2:
        return torch.mm(A.mT, B)
    if A.dim() == 3 and B.dim() == 3:  # bmm itself: matmul's batch logic costs as much as the product at n = 1000
        return torch.bmm(A.mT, B)
    return A.mT @ B


@torch.library.custom_op("symnmf_kernels::mm_small", mutates_args=())
def mm_small(A: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """A @ M for tall-skinny A (..., n, r) and small M (..., r, r) of the same batch shape."""
    r = A.shape[-1]
    if use_triton(A, r):
        A3, batch = as_batch(A)
        return _launch.apply(A3, M.reshape(-1, r, r), relu=False).reshape(A.shape)
    return tall_mm(A, M).contiguous()


@mm_small.register_fake
def _(A, M):
    return torch.empty_like(A, memory_format=torch.contiguous_format)


# ---- the torch path (CPU, and r beyond the fused kernels) ------------------------------------------------------


def gram_torch(U, lam):
    """U^T U + lam I: one product, lam added to its diagonal in place."""
    G = tall_gram(U, U)
    if U.dim() == 2:
        G.diagonal().add_(lam)
        return G
    G.diagonal(dim1=-2, dim2=-1).add_(lam.unsqueeze(-1) if lam.dim() else lam)
    return G


def gram_backward_torch(U, dG, lam_shape, need_u, need_lam):
    """(dU, dlam) of G = U^T U + lam I: dU = U (dG + dG^T), one product (torch's autograd of U^T U takes two)."""
    dU = tall_mm(U, dG + dG.mT) if need_u else None
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


def gram_triton(U, lam, deterministic=True):
    """U^T U + lam I by the Triton kernels."""
    r = U.shape[-1]
    U3, batch = as_batch(U)
    lam_b = lam.expand(batch).reshape(-1).contiguous()
    return _launch.gram(U3, lam_b, deterministic).reshape(*batch, r, r)


@torch.library.custom_op("symnmf_kernels::gram", mutates_args=())
def gram_op(U: torch.Tensor, lam: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
    if use_triton(U, U.shape[-1]):
        return gram_triton(U, lam, deterministic)
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
    if direct_call(U, lam):
        return gram_triton(U, lam, bool(deterministic))
    return gram_op(U, lam, bool(deterministic))
