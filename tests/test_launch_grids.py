"""Every Triton launch fits CUDA's grid limits at the sizes the library targets.

CUDA allows 2^31 - 1 programs along grid axis x but only 65,535 along y and z,
so no axis other than x may carry tiles that grow with n. These tests run the
forward and backward of the block and of the sparse SymNMF-Net loss at large n
with the launches intercepted: each launch's grid is recorded and the kernel is
skipped, with the launch geometry the ops pick on a GPU (the interpreter's own
geometry is smaller). Nothing here needs a GPU or runs a kernel.
"""
import importlib
import os
import sys

import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels.ops.sparse_loss import sparse_layer_loss

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.gpu_launches import gpu_launches, kernel_name  # noqa: E402

MAX_YZ = 65_535
MAX_X = 2**31 - 1
CASES = [(8_500_000, 32), (4_500_000, 64), (2_200_000, 128)]


@pytest.fixture
def launches():
    """Record (kernel, grid) of every launch instead of running it, with the GPU's launch geometry."""
    recorded = []

    def record(kernel, args, kwargs, grid):
        recorded.append((kernel_name(kernel), tuple(grid(kwargs) if callable(grid) else grid)))

    with gpu_launches(record):
        yield recorded


def check(recorded, what):
    assert recorded, f"{what}: no launch was recorded"
    for name, grid in recorded:
        assert len(grid) <= 3, (what, name, grid)
        assert 1 <= grid[0] <= MAX_X, f"{what}: {name} has grid {grid}: axis x out of range"
        for axis, size in zip("yz", grid[1:]):
            assert 1 <= size <= MAX_YZ, f"{what}: {name} has grid {grid}: axis {axis} passes {MAX_YZ}"


def big(n, r, requires_grad=False):
    # Uninitialised: the launches are skipped, so no kernel reads these values.
    return torch.empty(n, r).requires_grad_(requires_grad)


@pytest.fixture(autouse=True)
def _kernels_path(monkeypatch):
    # The ops take the Triton path for every CPU tensor here, interpreter or not (nothing is launched).
    for name in ("symnmf_kernels.ops.symnmf_block", "symnmf_kernels.ops.sparse_loss"):
        monkeypatch.setattr(importlib.import_module(name), "use_triton", lambda t, r=None: True)


@pytest.mark.parametrize("n, r", CASES)
def test_block_forward_and_backward_grids(launches, n, r):
    U, P = big(n, r, True), big(n, r, True)
    lam = torch.tensor(1.0, requires_grad=True)
    out = sk.symnmf_block(U, P, lam)
    out.backward(torch.empty(n, r))
    check(launches, f"symnmf_block n={n} r={r}")
    kernels = {name for name, _ in launches}
    assert {"gram_partials_kernel", "gram_finalize_kernel", "apply_kernel", "apply_backward_kernel"} <= kernels


@pytest.mark.parametrize("n, r", CASES)
def test_sparse_layer_loss_forward_and_backward_grids(launches, n, r):
    # A diagonal X: the SpMMs around the fused passes run for real, on the CPU, and cost little.
    X = torch.sparse_csr_tensor(torch.arange(n + 1), torch.arange(n), torch.ones(n), (n, n))
    U, P = big(n, r, True), big(n, r, True)
    loss, reg = sparse_layer_loss(X, U, P, 0.5, symmetric=True)
    (loss + reg).backward()
    check(launches, f"sparse_layer_loss n={n} r={r}")
    kernels = {name for name, _ in launches}
    assert {"sparse_loss_terms_kernel", "sparse_reg_grad_kernel", "sparse_loss_grad_kernel"} <= kernels


def test_a_grid_past_the_limit_is_caught(launches):
    # The check itself: a launch with row tiles on axis y at 4.5M rows, r = 64 (70,313 tiles of 64).
    launches.append(("row_tiles_on_axis_y", (1, 70_313)))
    with pytest.raises(AssertionError, match="axis y passes"):
        check(launches, "a synthetic launch")
