import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from conftest import rel_err


def similarity(batch, n, device, dtype=torch.float32):
    X = torch.rand(*batch, n, n, device=device, dtype=dtype)
    return X + X.mT


@pytest.mark.parametrize("n,r", [(1, 1), (7, 5), (257, 16), (130, 48), (70, 128)])
def test_dense_loss_matches_reference(device, n, r):
    X = similarity((), n, device)
    U = torch.rand(n, r, device=device) / r**0.5
    assert rel_err(sk.sym_loss(X, U), reference.sym_loss(X.double(), U.double())) <= 1e-5


def test_dense_loss_near_exact_fit_keeps_its_digits(device):
    # ||X - U U^T||^2 is tiny next to ||X||^2: the tiled residual keeps it; the
    # expanded form ||X||^2 - 2<XU, U> + ||U^T U||^2 would lose it to cancellation.
    U = torch.rand(200, 6, device=device)
    X = U @ U.mT + 1e-3 * similarity((), 200, device)
    want = reference.sym_loss(X.double(), U.double())
    assert rel_err(sk.sym_loss(X, U), want) <= 1e-3


def test_dense_loss_batched_shared_x(device):
    X = similarity((), 90, device, torch.float64)
    U = torch.rand(4, 90, 7, device=device, dtype=torch.float64)  # four restarts of one graph
    loss = sk.sym_loss(X, U)
    assert loss.shape == (4,)
    assert rel_err(loss, reference.sym_loss(X, U)) <= 1e-12


def test_dense_loss_gradients(device):
    X = similarity((2,), 40, device, torch.float64).requires_grad_()
    U = torch.rand(2, 40, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, device=device, dtype=torch.float64)
    dX, dU = torch.autograd.grad(sk.sym_loss(X, U), (X, U), w)
    dX_ref, dU_ref = torch.autograd.grad(reference.sym_loss(X, U), (X, U), w)
    assert rel_err(dU, dU_ref) <= 1e-12
    assert rel_err(dX, dX_ref) <= 1e-12


def test_dense_loss_gradcheck(device):
    X = similarity((), 5, device, torch.float64).requires_grad_()
    U = torch.rand(5, 2, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sk.sym_loss, (X, U))
    assert torch.autograd.gradcheck(reference.sym_loss, (X, U))
