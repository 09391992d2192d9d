"""The extension's CPU row loops are compiled twice, for AVX2 + FMA and for the baseline instruction set, and
the CPU picks one at run time (csrc/cpu/cpu_common.h). On an AVX2 machine only the first runs by default:
SYMNMF_CPU_BASELINE=1 forces the second. A subprocess with it set runs every dual-compiled kernel (the SpMM at
r = 8, 13 and 20, the fused sparse layer loss forward and backward, the SymHALS sweep, the projected-gradient
norm, the tall-skinny products and the fused ReLU) on fixed inputs, and the results are checked here against
the plain-torch reference in float64."""
import os
import subprocess
import sys

import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops.spmm import extension_status

pytestmark = pytest.mark.skipif(not extension_status()["cpu"], reason="the extension is not built")

SCRIPT = r"""
import sys
import torch
import symnmf_kernels as sk

def graph(n, seed):
    g = torch.Generator().manual_seed(seed)
    A = (torch.rand(n, n, generator=g) < 0.05) * torch.rand(n, n, generator=g)
    return ((A + A.T) / 2).to_sparse_csr()

out = {}
for dtype in (torch.float32, torch.float64):
    X = graph(301, 0).to(dtype)
    g = torch.Generator().manual_seed(1)
    for r in (8, 13, 20):
        U = torch.rand(301, r, generator=g).to(dtype)
        out[f"spmm {dtype} {r}"] = (X, U, sk.spmm(X, U))
    U = torch.rand(2, 301, 8, generator=g).to(dtype).requires_grad_()
    P = torch.rand(2, 301, 8, generator=g).to(dtype).requires_grad_()
    fit, reg = sk.sparse_layer_loss(X, U, P, 0.3, symmetric=True)
    (fit.sum() + reg.sum()).backward()
    out[f"loss {dtype}"] = (X, U.detach(), P.detach(), fit.detach(), reg.detach(), U.grad, P.grad)
    W, XV, V = (torch.rand(203, 16, generator=g).to(dtype) for _ in range(3))
    B = V.T @ V + 0.3 * torch.eye(16, dtype=dtype)
    W1 = W.clone()
    colmax = sk.hals_sweep_(W1, XV, B, V=V, lam=0.3, backend="torch")
    out[f"hals {dtype}"] = (W, XV, B, V, W1, colmax)
    grad = torch.randn(1003, 7, generator=g).to(dtype)
    Uf = torch.rand(1003, 7, generator=g).to(dtype)
    Uf[Uf < 0.35] = 0
    out[f"pg {dtype}"] = (grad, Uf, sk.projected_gradient_sq(grad, Uf))
    for r in (5, 8, 10, 13):
        A, add = (torch.randn(2, 1001, r, generator=g).to(dtype) for _ in range(2))
        M = torch.randn(2, r, r, generator=g).to(dtype)
        ops = torch.ops.symnmf_kernels
        out[f"tall {dtype} {r}"] = (A, M, add, ops.tall_mm(A, M, add), ops.tall_gram(A, add))
        Y, YtY = ops.tall_apply_relu_gram(A, M)
        out[f"tall relu {dtype} {r}"] = (Y, YtY, *ops.tall_apply_relu_backward(add, Y, A, M, M.mT.contiguous()))
torch.save(out, sys.argv[1])
"""


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


@pytest.fixture(scope="module")
def baseline_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("baseline") / "out.pt"
    env = dict(os.environ, SYMNMF_CPU_BASELINE="1", TRITON_INTERPRET="0")
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True, timeout=300)
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_baseline_tall_products(baseline_results, dtype):
    for r in (5, 8, 10, 13):
        A, M, add, mm, gram = baseline_results[f"tall {dtype} {r}"]
        assert rel(mm, add.double() + A.double() @ M.double()) <= tol(dtype)
        assert rel(gram, A.double().mT @ add.double()) <= tol(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_baseline_fused_apply_relu(baseline_results, dtype):
    for r in (5, 8, 10, 13):
        A, M, add, _, _ = baseline_results[f"tall {dtype} {r}"]
        Y, YtY, dP, PtZ = baseline_results[f"tall relu {dtype} {r}"]
        A, M, add = A.double(), M.double(), add.double()
        Y64 = torch.relu(A @ M)
        Z = (add + Y64 @ M.mT) * (Y64 > 0)
        assert rel(Y, Y64) <= tol(dtype) and rel(YtY, Y64.mT @ Y64) <= tol(dtype)
        assert rel(dP, Z @ M.mT) <= tol(dtype) and rel(PtZ, A.mT @ Z) <= tol(dtype)


def tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_baseline_spmm(baseline_results, dtype):
    for r in (8, 13, 20):
        X, U, got = baseline_results[f"spmm {dtype} {r}"]
        assert rel(got, reference.spmm(X.to_dense().double(), U.double())) <= tol(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_baseline_sparse_layer_loss(baseline_results, dtype):
    X, U, P, fit, reg, dU, dP = baseline_results[f"loss {dtype}"]
    U64, P64 = U.double().requires_grad_(), P.double().requires_grad_()
    want_fit, want_reg = reference.sparse_layer_loss(X.to_dense().double(), U64, P64, 0.3)
    (want_fit.sum() + want_reg.sum()).backward()
    assert rel(fit, want_fit) <= tol(dtype) and rel(reg, want_reg) <= tol(dtype)
    assert rel(dU, U64.grad) <= 10 * tol(dtype) and rel(dP, P64.grad) <= 10 * tol(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_baseline_hals_sweep(baseline_results, dtype):
    W, XV, B, V, got, colmax = baseline_results[f"hals {dtype}"]
    want, want_max = reference.hals_sweep(W.double(), XV.double(), B.double(), V=V.double(), lam=0.3)
    assert rel(got, want) <= 10 * tol(dtype) and rel(colmax, want_max) <= 10 * tol(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_baseline_projected_gradient_sq(baseline_results, dtype):
    grad, U, got = baseline_results[f"pg {dtype}"]
    assert rel(got, reference.projected_gradient_sq(grad.double(), U.double())) <= tol(dtype)
