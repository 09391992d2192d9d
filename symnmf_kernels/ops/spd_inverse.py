"""spd_inverse(G): inverse of a batch of small SPD matrices through Cholesky."""
import torch

from .. import reference
from . import _launch
from ._common import as_batch, check_square, use_triton


@torch.library.custom_op("symnmf_kernels::spd_inverse", mutates_args=())
def spd_inverse_op(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G^{-1}, info): info is 1 where G is not positive definite, and G^{-1} is NaN there."""
    r = G.shape[-1]
    if use_triton(G, r):
        G3, batch = as_batch(G)
        inv, info = _launch.spd_inverse(G3)
        return inv.reshape(G.shape), info.reshape(batch)
    inv = reference.spd_inverse(G).contiguous()
    return inv, torch.isnan(inv[..., 0, 0]).to(torch.int32)


@spd_inverse_op.register_fake
def _(G):
    return torch.empty_like(G, memory_format=torch.contiguous_format), G.new_empty(G.shape[:-2], dtype=torch.int32)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output[0])


def _backward(ctx, dinv, dinfo):
    (inv,) = ctx.saved_tensors
    # d(G^{-1}) = -G^{-1} dG G^{-1}; G is symmetric, so its gradient is the
    # symmetric part (the convention of torch.linalg.cholesky).
    S = -(inv.mT @ dinv @ inv.mT)
    return 0.5 * (S + S.mT)


spd_inverse_op.register_autograd(_backward, setup_context=_setup)


def spd_inverse(G, check=False):
    """Inverse of each symmetric positive definite matrix in G (..., r, r).

    Only the lower triangle of G is read. A matrix that is not positive
    definite gets an all-NaN inverse; with check=True that raises instead
    (which reads a flag back from the device: keep it out of training steps).
    """
    check_square(G, "G")
    inv, info = spd_inverse_op(G)
    if check:
        bad = torch.nonzero(info.reshape(-1)).reshape(-1)
        if bad.numel():
            raise ValueError(
                f"G is not positive definite in {bad.numel()} of {info.numel()} matrices "
                f"(flat batch indices {bad[:8].tolist()}); increase lam or check U for NaN"
            )
    return inv
