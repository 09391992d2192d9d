import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from conftest import rel_err

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.mark.parametrize("n", [1, 7, 1003])
@pytest.mark.parametrize("r", [1, 5, 16, 48, 128])
def test_gram_matches_reference(device, n, r):
    U = torch.rand(n, r, device=device)
    G = sk.gram(U, 0.7)
    assert G.shape == (r, r)
    assert rel_err(G, reference.gram(U.double(), 0.7)) <= TOL[torch.float32]


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_batched_per_problem_lam(device, dtype, deterministic):
    U = torch.rand(2, 3, 211, 12, device=device, dtype=dtype)
    lam = torch.rand(2, 3, device=device, dtype=dtype)
    G = sk.gram(U, lam, deterministic=deterministic)
    assert rel_err(G, reference.gram(U.double(), lam.double())) <= TOL[dtype]


def test_gram_deterministic_is_bitwise_repeatable(device):
    U = torch.rand(517, 20, device=device)
    assert torch.equal(sk.gram(U, 0.1), sk.gram(U, 0.1))
    # The atomic path may differ from run to run in the last bits, never beyond rounding.
    ref = reference.gram(U.double(), 0.1)
    for _ in range(2):
        assert rel_err(sk.gram(U, 0.1, deterministic=False), ref) <= TOL[torch.float32]


def test_gram_non_contiguous(device):
    base = torch.rand(3, 16, 301, device=device)
    U = base.mT[::2]  # (2, 301, 16), neither row- nor column-contiguous in the batch
    assert not U.is_contiguous()
    assert rel_err(sk.gram(U, 0.0), reference.gram(U.double(), 0.0)) <= TOL[torch.float32]


def test_gram_gradients_match_reference(device):
    U = torch.rand(2, 97, 9, device=device, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.3, device=device, dtype=torch.float64, requires_grad=True)
    dG = torch.randn(2, 9, 9, device=device, dtype=torch.float64)
    dU, dlam = torch.autograd.grad(sk.gram(U, lam), (U, lam), dG)
    U_ref, lam_ref = U.detach().clone().requires_grad_(), lam.detach().clone().requires_grad_()
    dU_ref, dlam_ref = torch.autograd.grad(reference.gram(U_ref, lam_ref), (U_ref, lam_ref), dG)
    assert rel_err(dU, dU_ref) <= 1e-12
    assert rel_err(dlam, dlam_ref) <= 1e-12


def test_gram_gradcheck(device):
    U = torch.rand(2, 6, 3, device=device, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(2, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sk.gram, (U, lam))
    assert torch.autograd.gradcheck(reference.gram, (U, lam))
