"""sym_loss(X, U) = ||X - U U^T||_F^2 for dense or sparse X."""
import torch

from . import _launch
from ._common import as_batch, broadcasts_to, check_same, check_tensor, use_triton


@torch.library.custom_op("symnmf_kernels::sym_loss_dense", mutates_args=())
def sym_loss_dense(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Per-problem loss for X (..., n, n) and U (..., n, r) of the same batch shape."""
    r = U.shape[-1]
    if use_triton(U, r):
        U3, batch = as_batch(U)
        X3 = X.reshape(U3.shape[0], *X.shape[-2:])
        return _launch.sym_loss(X3, U3).reshape(batch)
    return (X - U @ U.mT).pow(2).sum((-2, -1))


@sym_loss_dense.register_fake
def _(X, U):
    return U.new_empty(U.shape[:-2])


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dloss):
    X, U = ctx.saved_tensors
    g = dloss[..., None, None]
    dX = dU = None
    if ctx.needs_input_grad[1]:
        # d/dU ||X - U U^T||^2 = -2 (X + X^T) U + 4 U (U^T U); dense X U is cuBLAS's job.
        dU = g * (-2 * ((X + X.mT) @ U) + 4 * (U @ (U.mT @ U)))
    if ctx.needs_input_grad[0]:
        dX = g * 2 * (X - U @ U.mT)
    return dX, dU


sym_loss_dense.register_autograd(_backward, setup_context=_setup)


def sym_loss(X, U):
    """||X - U U^T||_F^2 per problem, shape (...), without forming U U^T where it can.

    X is dense (..., n, n) (its batch broadcasts to U's) or a sparse CSR/COO
    (n, n) tensor or scipy.sparse matrix; U is (..., n, r). Differentiable in U.
    """
    if not isinstance(X, torch.Tensor) or X.layout != torch.strided:
        from .sparse_loss import sparse_sym_loss

        return sparse_sym_loss(X, U)
    check_tensor(X, "X")
    check_tensor(U, "U")
    check_same(X, U, "X", "U")
    n = U.shape[-2]
    if X.shape[-1] != X.shape[-2]:
        raise ValueError(f"X must be square (..., n, n), got shape {tuple(X.shape)}")
    if X.shape[-1] != n:
        raise ValueError(f"X is {X.shape[-1]} x {X.shape[-1]} but U has n = {n} rows; they must match")
    batch = U.shape[:-2]
    if not broadcasts_to(X.shape[:-2], batch):
        raise ValueError(f"X's batch shape {tuple(X.shape[:-2])} must broadcast to U's {tuple(batch)}")
    return sym_loss_dense(X.expand(*batch, n, n), U)
