"""sym_loss(X, U) = ||X - U U^T||_F^2 for dense or sparse X."""
import torch

from . import _launch
from ._common import (
    as_batch, broadcasts_to, check_same, check_tensor, direct_call, first_order_only, needs_grad, use_triton,
)
from .sparse_loss import sparse_sym_loss


# ---- the torch path (CPU, and r beyond the fused kernels) ------------------------------------------------------


def residual_torch(X, U):
    """R = X - U U^T in one BLAS call (addmm / baddbmm with alpha = -1), never U U^T alone."""
    if X.dim() == 2:
        return torch.addmm(X, U, U.mT, alpha=-1)
    if X.dim() == 3 and X.shape == (*U.shape[:-1], U.shape[-2]):
        return torch.baddbmm(X, U, U.mT, alpha=-1)
    return X - U @ U.mT


def sq_norm(R):
    """||R||_F^2 per problem, in one pass without a temporary."""
    return torch.linalg.vector_norm(R, dim=(-2, -1)).square()


class _SymLossTorch(torch.autograd.Function):
    """||X - U U^T||^2 with R = X - U U^T saved: dU = -2 (R + R^T) U as two products, dX = 2 R."""

    @staticmethod
    def forward(ctx, X, U):
        R = residual_torch(X, U)
        ctx.save_for_backward(R, U)
        return sq_norm(R)

    @staticmethod
    @first_order_only
    def backward(ctx, dloss):
        R, U = ctx.saved_tensors
        g = dloss[..., None, None]
        dX = dU = None
        if ctx.needs_input_grad[1]:
            RU = R @ U
            if R.dim() == 2:
                RU = torch.addmm(RU, R.mT, U)
            elif R.dim() == 3:
                RU = torch.baddbmm(RU, R.mT, U)
            else:
                RU = RU + R.mT @ U
            dU = (-2 * g) * RU
        if ctx.needs_input_grad[0]:
            dX = (2 * g) * R
        return dX, dU


def sym_loss_dense_triton(X, U):
    """Per-problem loss by the Triton kernel."""
    U3, batch = as_batch(U)
    X3 = X.reshape(U3.shape[0], *X.shape[-2:])
    return _launch.sym_loss(X3, U3).reshape(batch)


@torch.library.custom_op("symnmf_kernels::sym_loss_dense", mutates_args=())
def sym_loss_dense(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Per-problem loss for X (..., n, n) and U (..., n, r) of the same batch shape."""
    if use_triton(U, U.shape[-1]):
        return sym_loss_dense_triton(X, U)
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
    if X.shape[:-2] != batch and not broadcasts_to(X.shape[:-2], batch):
        raise ValueError(f"X's batch shape {tuple(X.shape[:-2])} must broadcast to U's {tuple(batch)}")
    if X.shape[:-2] != batch:
        X = X.expand(*batch, n, n)
    if not use_triton(U, U.shape[-1]):
        return _SymLossTorch.apply(X, U) if needs_grad(X, U) else sq_norm(residual_torch(X, U))
    if direct_call(X, U):
        return sym_loss_dense_triton(X, U)
    return sym_loss_dense(X, U)
