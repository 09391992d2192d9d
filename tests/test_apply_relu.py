import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from conftest import rel_err


def inverse_like(batch, r, device, dtype=torch.float32):
    """A well-conditioned symmetric r x r matrix with mixed signs, so the ReLU bites."""
    A = torch.randn(*batch, r, r, device=device, dtype=dtype) / r**0.5
    return 0.5 * (A + A.mT) + torch.eye(r, device=device, dtype=dtype)


@pytest.mark.parametrize("n", [1, 7, 1003])
@pytest.mark.parametrize("r", [1, 5, 16, 48, 128])
def test_apply_relu_matches_reference(device, n, r):
    P = torch.randn(n, r, device=device)
    Ginv = inverse_like((), r, device)
    U = sk.apply_relu(P, Ginv)
    expected = reference.apply_relu(P.double(), Ginv.double())
    assert rel_err(U, expected) <= 1e-5
    assert (U >= 0).all()


def test_apply_relu_batched_broadcast_and_non_contiguous(device):
    P = torch.randn(3, 17, 129, device=device).mT  # (3, 129, 17), column-major rows
    Ginv = inverse_like((), 17, device)  # one Ginv for the three problems
    assert rel_err(sk.apply_relu(P, Ginv), reference.apply_relu(P.double(), Ginv.double())) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_relu_gram_emits_gram_of_output(device, dtype):
    P = torch.randn(2, 301, 24, device=device, dtype=dtype)
    Ginv = inverse_like((2,), 24, device, dtype)
    U, UtU = sk.apply_relu_gram(P, Ginv)
    U_ref, UtU_ref = reference.apply_relu_gram(P.double(), Ginv.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(U, U_ref) <= tol
    assert rel_err(UtU, UtU_ref) <= tol


def test_apply_relu_gradients_match_reference(device):
    P = torch.randn(2, 203, 16, device=device, requires_grad=True)
    Ginv = inverse_like((2,), 16, device).requires_grad_()
    g = torch.randn(2, 203, 16, device=device)
    dP, dGinv = torch.autograd.grad(sk.apply_relu(P, Ginv), (P, Ginv), g)
    P64, Ginv64 = P.detach().double().requires_grad_(), Ginv.detach().double().requires_grad_()
    dP_ref, dGinv_ref = torch.autograd.grad(reference.apply_relu(P64, Ginv64), (P64, Ginv64), g.double())
    assert rel_err(dP, dP_ref) <= 1e-5
    assert rel_err(dGinv, dGinv_ref) <= 1e-5


def test_apply_relu_gram_gradients_match_reference(device):
    P = torch.randn(131, 8, device=device, dtype=torch.float64, requires_grad=True)
    Ginv = inverse_like((), 8, device, torch.float64).requires_grad_()
    gU, gG = torch.randn(131, 8, device=device, dtype=torch.float64), torch.randn(8, 8, device=device, dtype=torch.float64)
    U, UtU = sk.apply_relu_gram(P, Ginv)
    grads = torch.autograd.grad((U * gU).sum() + (UtU * gG).sum(), (P, Ginv))
    P_ref, Ginv_ref = P.detach().clone().requires_grad_(), Ginv.detach().clone().requires_grad_()
    U_ref = reference.apply_relu(P_ref, Ginv_ref)
    grads_ref = torch.autograd.grad((U_ref * gU).sum() + ((U_ref.mT @ U_ref) * gG).sum(), (P_ref, Ginv_ref))
    for got, want in zip(grads, grads_ref):
        assert rel_err(got, want) <= 1e-12


def test_apply_relu_gradcheck(device):
    P = torch.randn(2, 5, 3, device=device, dtype=torch.float64, requires_grad=True)
    Ginv = inverse_like((2,), 3, device, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(sk.apply_relu, (P, Ginv))
    assert torch.autograd.gradcheck(reference.apply_relu, (P, Ginv))
