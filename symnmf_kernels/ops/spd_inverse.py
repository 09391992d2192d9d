"""spd_inverse(G): inverse of a batch of small SPD matrices through Cholesky."""
import math

import torch

from . import _launch
from ._common import as_batch, check_square, direct_call, needs_grad, use_triton


# ---- the torch path (CPU, and r beyond the fused kernels) ------------------------------------------------------


def spd_inverse_torch(G):
    """(G^{-1}, info) through LAPACK's Cholesky (cholesky_ex, cholesky_inverse), without a host synchronisation:
    where the factorisation fails (info != 0) the factor is replaced by NaN, so that inverse is all NaN. A
    non-finite diagonal entry fails too (info 1, as in the Triton kernel)."""
    L, info = torch.linalg.cholesky_ex(G)
    # LAPACK takes an infinite pivot, and the inverse then has a zero row and column: finite, from a non-finite
    # input. (A non-finite entry below the diagonal makes a later pivot -inf or NaN, which LAPACK fails itself.)
    diagonal = G.diagonal(dim1=-2, dim2=-1)
    if G.is_cpu and not torch.compiler.is_compiling():
        # On the CPU the flags are host memory: replace only the failed factors (usually none). One sum tests
        # every diagonal at once; a finite one whose sum overflows only costs the exact test below.
        if (info.item() if info.dim() == 0 else info.any()) or not math.isfinite(diagonal.sum().item()):
            info = torch.where(diagonal.isfinite().all(-1), info, 1)
            L = torch.where((info != 0)[..., None, None], float("nan"), L)
    else:
        info = torch.where(diagonal.isfinite().all(-1), info, 1)
        L = torch.where((info != 0)[..., None, None], float("nan"), L)
    return torch.cholesky_inverse(L), info


def spd_inverse_backward_torch(inv, dinv):
    """dG of G^{-1}: -G^{-1} dinv G^{-1}, symmetrised (the convention of torch.linalg.cholesky)."""
    S = -(inv.mT @ dinv @ inv.mT)
    return 0.5 * (S + S.mT)


class _SpdInverseTorch(torch.autograd.Function):
    """G^{-1} with the backward written out: two r x r products instead of the Cholesky's own backward."""

    @staticmethod
    def forward(ctx, G):
        inv, info = spd_inverse_torch(G)
        ctx.save_for_backward(inv)
        ctx.mark_non_differentiable(info)
        return inv, info

    @staticmethod
    def backward(ctx, dinv, dinfo):
        (inv,) = ctx.saved_tensors
        return spd_inverse_backward_torch(inv, dinv)


def spd_inverse_triton(G, lam=None):
    """(G^{-1}, info) by the Triton kernel (torch's past BLOCK_R = 64 on a GPU); with lam, a tensor of G's batch
    shape or 0-d, the inverse of G + lam I without forming it."""
    G3, batch = as_batch(G)
    lam1 = None if lam is None else (lam.reshape(1) if lam.dim() == 0 else lam.reshape(-1))
    inv, info = _launch.spd_inverse(G3, lam1)
    return inv.reshape(G.shape), info.reshape(batch)


@torch.library.custom_op("symnmf_kernels::spd_inverse", mutates_args=())
def spd_inverse_op(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G^{-1}, info): info is 1 where G is not positive definite, and G^{-1} is NaN there."""
    if use_triton(G, G.shape[-1]):
        return spd_inverse_triton(G)
    inv, info = spd_inverse_torch(G)
    return inv.contiguous(), (info != 0).to(torch.int32)


@spd_inverse_op.register_fake
def _(G):
    return torch.empty_like(G, memory_format=torch.contiguous_format), G.new_empty(G.shape[:-2], dtype=torch.int32)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output[0])


def _backward(ctx, dinv, dinfo):
    (inv,) = ctx.saved_tensors
    # d(G^{-1}) = -G^{-1} dG G^{-1}; G is symmetric, so its gradient is the
    # symmetric part (the convention of torch.linalg.cholesky).
    return spd_inverse_backward_torch(inv, dinv)


spd_inverse_op.register_autograd(_backward, setup_context=_setup)


def spd_inverse(G, check=False):
    """Inverse of each symmetric positive definite matrix in G (..., r, r).

    Only the lower triangle of G is read. A matrix that is not positive
    definite gets an all-NaN inverse; with check=True that raises instead
    (which reads a flag back from the device: keep it out of training steps).
    """
    check_square(G, "G")
    if use_triton(G, G.shape[-1]):
        inv, info = spd_inverse_triton(G) if direct_call(G) else spd_inverse_op(G)
    else:
        inv, info = _SpdInverseTorch.apply(G) if needs_grad(G) else spd_inverse_torch(G)
    if check:
        bad = torch.nonzero(info.reshape(-1)).reshape(-1)
        if bad.numel():
            raise ValueError(
                f"G is not positive definite in {bad.numel()} of {info.numel()} matrices "
                f"(flat batch indices {bad[:8].tolist()}); increase lam or check U for NaN"
            )
    return inv
