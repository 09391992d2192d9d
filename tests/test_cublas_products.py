"""The products that run as torch's GEMMs at BLOCK_R = 128 on CUDA (ops._common.cublas_products), against the
reference: the Gram, the block forward and backward, the chain form, the plain product and the dense loss.

On a CPU machine the rule is switched on for the interpreter's CPU tensors, so the composed path (torch's
products beside the Triton ReLU product) is what runs; on a GPU the rule itself decides, and the test checks that
it did take the GEMMs.
"""
import types

import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops import _common, _launch
from conftest import rel_err


@pytest.fixture
def taken(monkeypatch, device):
    """Widths at which the rule answered yes, recorded; on the CPU the rule is on from BLOCK_R = 128."""
    seen = []
    rule = _common.cublas_products

    def spy(t, r, precision=None):
        yes = _common.block_r(r) >= 128 and precision is None if device.type == "cpu" else rule(t, r, precision)
        if yes:
            seen.append(r)
        return yes

    monkeypatch.setattr(_launch, "cublas_products", spy)
    return seen


def test_rule():
    gpu32 = types.SimpleNamespace(is_cuda=True, dtype=torch.float32)
    gpu64 = types.SimpleNamespace(is_cuda=True, dtype=torch.float64)
    assert _common.cublas_products(gpu32, 128) and _common.cublas_products(gpu32, 65)
    assert not _common.cublas_products(gpu32, 64)
    assert not _common.cublas_products(torch.ones(1), 128)  # a CPU tensor: the kernels or the torch path
    assert not _common.cublas_products(gpu32, 128, "tf32x3")  # an explicit precision keeps the kernels
    with sk.dot_precision("ieee"):
        assert not _common.cublas_products(gpu32, 128)
    previous = torch.backends.cuda.matmul.fp32_precision, torch.backends.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # TF32 in torch's float32 GEMMs: not for the Gram
        assert not _common.cublas_products(gpu32, 128)
        assert _common.cublas_products(gpu64, 128)
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        assert _common.cublas_products(gpu32, 128)
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.backends.fp32_precision = "tf32"  # the global setting, inherited
        assert not _common.cublas_products(gpu32, 128)
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.fp32_precision = previous


def _grads(fn, inputs, g):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, g)]


# n = 1031 runs the split-n forward; n = 7 the one-program forward (the backward is the composed one either way).
@pytest.mark.parametrize("n,r", [(1031, 128), (7, 128), (1031, 67)])
def test_block_forward_backward(device, taken, n, r):
    U = torch.rand(n, r, device=device)
    P = torch.randn(n, r, device=device)
    lam = torch.tensor(0.1 * n + 1.0, device=device)
    g = torch.randn(n, r, device=device)
    ours = _grads(sk.symnmf_block, (U, P, lam), g)
    exact = _grads(reference.symnmf_block, (U.double(), P.double(), lam.double()), g.double())
    torch32 = _grads(reference.symnmf_block, (U, P, lam), g)
    for name, got, want, base in zip(["U_next", "dU", "dP"], ours, exact, torch32):
        err, base_err = rel_err(got, want), rel_err(base, want)
        assert err <= 2 * base_err + 1e-5, f"{name}: {err:.2e} vs torch float32 {base_err:.2e}"
    assert rel_err(ours[3], exact[3]) <= 1e-3
    assert taken and set(taken) == {r}


def test_gram_batched_non_contiguous(device, taken):
    U = torch.rand(3, 128, 301, device=device, dtype=torch.float64).mT  # (3, 301, 128), columns contiguous
    assert not U.is_contiguous()
    lam = torch.rand(3, device=device, dtype=torch.float64)
    G = sk.gram(U, lam)
    assert rel_err(G, reference.gram(U, lam)) <= 1e-12
    dU = torch.randn_like(G)
    got = _grads(lambda U: sk.gram(U, lam), (U,), dU)  # the backward's U (dG + dG^T): the plain product
    want = _grads(lambda U: reference.gram(U, lam), (U,), dU)
    assert rel_err(got[1], want[1]) <= 1e-12
    assert taken


def test_chain_form(device, taken):
    n, r = 1031, 100
    U = torch.rand(2, n, r, device=device, dtype=torch.float64)
    P = torch.randn(2, n, r, device=device, dtype=torch.float64)
    lam = torch.tensor(0.1 * n, device=device, dtype=torch.float64)
    gY, gG = torch.randn(2, n, r, device=device, dtype=torch.float64), torch.randn(2, r, r, device=device,
                                                                                   dtype=torch.float64)

    def run(block):
        leaves = [t.detach().clone().requires_grad_() for t in (U, P, lam)]
        UtU = leaves[0].mT @ leaves[0]
        Y, YtY = block(UtU, leaves[1], leaves[2])
        return [Y, YtY, *torch.autograd.grad((Y * gY).sum() + (YtY * gG).sum(), leaves)]

    for got, want in zip(run(sk.symnmf_block_from_gram), run(reference.symnmf_block_from_gram)):
        assert rel_err(got, want) <= 1e-10
    assert taken


def test_apply_relu_backward_and_loss(device, taken):
    n, r = 257, 128
    P = torch.randn(n, r, device=device, dtype=torch.float64)
    Ginv = reference.spd_inverse(reference.gram(torch.rand(n, r, device=device, dtype=torch.float64), 10.0))
    g = torch.randn(n, r, device=device, dtype=torch.float64)
    for got, want in zip(_grads(sk.apply_relu, (P, Ginv), g), _grads(reference.apply_relu, (P, Ginv), g)):
        assert rel_err(got, want) <= 1e-12
    U = torch.rand(2, n, r, device=device, dtype=torch.float64)
    X = torch.rand(2, n, n, device=device, dtype=torch.float64)
    X = X + X.mT
    assert rel_err(sk.sym_loss(X, U), reference.sym_loss(X, U)) <= 1e-12
    assert taken


def test_loss_in_row_blocks(device, taken, monkeypatch):
    monkeypatch.setattr(_launch, "LOSS_ROWS_ELEMENTS", 3 * 101)  # three rows per block: the last block is short
    U = torch.rand(101, 128, device=device, dtype=torch.float64)
    X = torch.rand(101, 101, device=device, dtype=torch.float64)
    assert rel_err(sk.sym_loss(X + X.mT, U), reference.sym_loss(X + X.mT, U)) <= 1e-12
    assert taken


def test_nan_passes(device, taken):
    n, r = 1031, 128
    U = torch.rand(n, r, device=device)
    U[5, 7] = float("nan")
    out = sk.symnmf_block(U, torch.rand(n, r, device=device), 1.0)
    assert torch.isnan(out).all()  # a NaN in U makes G, G^{-1} and every output NaN, as in the reference
    X = torch.rand(n, n, device=device)
    assert torch.isnan(sk.sym_loss(X + X.mT, U))
    assert taken
