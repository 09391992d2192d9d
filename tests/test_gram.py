import importlib

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


# ---- the CPU's tall-skinny products (tall_mm, tall_gram) ---------------------------------------------------------

gram_module = importlib.import_module("symnmf_kernels.ops.gram")
needs_tall = pytest.mark.skipif(not gram_module._NATIVE_TALL, reason="the extension's CPU kernels are not built")
TALL_RANKS = [1, 2, 4, 5, 7, 8, 10, 13, 16, 31, 32]  # the compiled ranks, the run-time loop, and its limit


def _tall_err_bound(ours, fast, want):
    """The float32 product's error is at most a small multiple of torch's own float32 product's, both against
    the float64 product (float64: a fixed bound)."""
    if ours.dtype == torch.float64:
        return rel_err(ours, want) <= 1e-13
    return rel_err(ours, want) <= 2 * rel_err(fast, want) + 1e-6


@needs_tall
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", TALL_RANKS)
@pytest.mark.parametrize("shape", [(1,), (7,), (1003,), (3, 257)])
def test_tall_mm_matches_float64(shape, r, dtype):
    gen = torch.Generator().manual_seed(r * 1000 + shape[-1])
    A = torch.randn(*shape, r, generator=gen, dtype=dtype)
    M = torch.randn(*shape[:-1], r, r, generator=gen, dtype=dtype)
    add = torch.randn(*shape, r, generator=gen, dtype=dtype)
    op = torch.ops.symnmf_kernels
    want = A.double() @ M.double()
    assert _tall_err_bound(op.tall_mm(A, M), A @ M, want)
    assert _tall_err_bound(op.tall_mm(A, M, add), add + A @ M, want + add.double())
    gram = op.tall_gram(A, add)
    assert gram.shape == (*shape[:-1], r, r)
    assert _tall_err_bound(gram, A.mT @ add, A.double().mT @ add.double())


@needs_tall
@pytest.mark.parametrize("r", [5, 8, 16])
def test_tall_products_take_their_fallbacks(r):
    """The helpers give torch's products where the kernels do not run: a non-contiguous factor, M broadcast
    over the batch, a recorded gradient, more rows or fewer than the kernels' bounds."""
    A = torch.rand(2, 600, r, dtype=torch.float64)
    M = torch.rand(r, r, dtype=torch.float64)
    strided = torch.rand(2, r, 600, dtype=torch.float64).mT
    assert rel_err(gram_module.tall_mm(A, M), A @ M) <= 1e-14  # M broadcast to both problems
    assert rel_err(gram_module.tall_mm(strided, M), strided @ M) <= 1e-14
    assert rel_err(gram_module.tall_gram(strided, A), strided.mT @ A) <= 1e-14
    small = torch.rand(9, r, dtype=torch.float64)
    assert rel_err(gram_module.tall_gram(small, small), small.T @ small) <= 1e-14
    leaf = torch.rand(600, r, dtype=torch.float64, requires_grad=True)
    out = gram_module.tall_mm(leaf, M)
    out.sum().backward()  # torch's product, so the gradient is recorded
    assert rel_err(leaf.grad, torch.ones(600, r, dtype=torch.float64) @ M.T) <= 1e-14


@needs_tall
def test_tall_products_do_not_depend_on_the_thread_count():
    """Rows are independent in the product, and the Gram adds fixed blocks of rows in one order."""
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(20_011, 8, generator=gen)
    M = torch.randn(8, 8, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.symnmf_kernels.tall_mm(A, M), torch.ops.symnmf_kernels.tall_gram(A, A)
        torch.set_num_threads(2)
        two = torch.ops.symnmf_kernels.tall_mm(A, M), torch.ops.symnmf_kernels.tall_gram(A, A)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@needs_tall
@pytest.mark.parametrize("r", [8, 10])
def test_tall_products_keep_nan_and_inf(r):
    A = torch.rand(700, r)
    A[5, 2] = float("nan")
    A[9, 1] = float("inf")
    M = torch.rand(r, r)
    out = torch.ops.symnmf_kernels.tall_mm(A, M)
    assert out[5].isnan().all() and out[9].isinf().all()
    assert out[torch.arange(700) % 700 > 9].isfinite().all()
    G = torch.ops.symnmf_kernels.tall_gram(A, A)
    assert G.isnan().any() and G[2].isnan().all()


@needs_tall
def test_tall_products_opcheck():
    A = torch.rand(2, 300, 5)
    torch.library.opcheck(torch.ops.symnmf_kernels.tall_mm.default, (A, torch.rand(2, 5, 5), torch.rand(2, 300, 5)))
    torch.library.opcheck(torch.ops.symnmf_kernels.tall_mm.default, (A[0], torch.rand(5, 5)))
    torch.library.opcheck(torch.ops.symnmf_kernels.tall_gram.default, (A, torch.rand(2, 300, 5)))


@needs_tall
def test_tall_products_reject_bad_arguments():
    op = torch.ops.symnmf_kernels
    with pytest.raises(RuntimeError, match="r = 33 must lie in"):
        op.tall_gram(torch.rand(10, 33), torch.rand(10, 33))
    with pytest.raises(RuntimeError, match="row-major"):
        op.tall_mm(torch.rand(8, 10).T, torch.rand(8, 8))
    with pytest.raises(RuntimeError, match="M must have shape"):
        op.tall_mm(torch.rand(10, 4), torch.rand(4, 5))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op.tall_gram(torch.ones(10, 4, dtype=torch.int32), torch.ones(10, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="B must have A's dtype"):
        op.tall_gram(torch.rand(10, 4), torch.rand(10, 4, dtype=torch.float64))
