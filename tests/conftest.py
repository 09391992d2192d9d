"""Shared test helpers, and the switch that makes the kernel tests run the kernels.

Kernels are compared with a relative error ||a - b|| / ||b|| against a float64
reference; NaN anywhere makes the error infinite, so NaN never passes.
CUDA cases run only where a GPU is present (marked `gpu`).

On a machine without CUDA a CPU tensor would take the plain-torch path, the
same code as `symnmf_kernels.reference`, and a kernel test would compare the
reference with itself. So, before anything imports Triton, this file sets
TRITON_INTERPRET=1 when it is unset: the CPU cases then run the Triton kernels
through Triton's interpreter (Triton reads the variable when a kernel is
decorated, so it must be set before `import triton`). With TRITON_INTERPRET=0
on a machine without CUDA every kernel test fails, saying why, rather than run
as a test that cannot fail; the other tests run on the torch path. On a CUDA
machine the variable is left as it is: the `gpu` cases run the compiled
kernels, and the CPU cases check the torch path.
"""
import os
import sys
import zlib

import numpy as np
import pytest
import torch


def _interpreter_setting():
    """TRITON_INTERPRET as the kernel tests need it: '1' without CUDA; an error message when that cannot be."""
    value = os.environ.get("TRITON_INTERPRET")
    if torch.cuda.is_available():
        return value, None
    if value is None:
        if "triton" in sys.modules:
            return value, (
                "triton was imported before tests/conftest.py could set TRITON_INTERPRET=1, so the kernels would "
                "not run on this machine without CUDA; run `TRITON_INTERPRET=1 python -m pytest`"
            )
        os.environ["TRITON_INTERPRET"] = "1"
        return "1", None
    if value != "1":
        return value, (
            f"TRITON_INTERPRET={value} without a CUDA device: the kernel tests would compare the torch path with "
            "itself; unset it (tests/conftest.py then sets TRITON_INTERPRET=1) or run on a GPU"
        )
    return value, None


_value, _error = _interpreter_setting()
INTERPRET = _value == "1"


def _share_the_cores():
    """Under pytest-xdist, each worker's torch gets its share of the cores. With every worker on all of them, a
    worker's OpenMP-threaded BLAS and LAPACK calls wait for threads the other workers hold: a 37 x 10 bmm that
    takes 6 µs alone took 8 ms beside a busy neighbour, and a gradcheck of the block 60 s instead of 3 s."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores()


def _kernel_test_files():
    """tests/test_<op>.py for every op module symnmf_kernels/ops/<op>.py, and the custom-op checks."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ops = [f[:-3] for f in os.listdir(os.path.join(root, "symnmf_kernels", "ops")) if f.endswith(".py")]
    return {f"test_{op}.py" for op in ops if not op.startswith("_")} | {"test_custom_ops.py"}

DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else [])


def rel_err(a, b):
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    denom = b.norm()
    num = (a - b).norm()
    return float(num / denom) if denom > 0 else float(num)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_KERNEL_TEST_FILES = _kernel_test_files()


@pytest.fixture(autouse=True)
def _kernels_must_run(request):
    # Only kernel tests fail: the models' and solvers' tests may run on the torch path.
    if _error is not None and request.node.path.name in _KERNEL_TEST_FILES:
        pytest.fail(_error, pytrace=False)


def _test_seed(request):
    return zlib.crc32(request.node.nodeid.encode())


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh random data in every test, reproducible from the test's name (torch's and numpy's global generators).
    torch.manual_seed(_test_seed(request))
    np.random.seed(_test_seed(request))


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's name, as torch is: a failing draw can be replayed."""
    return np.random.default_rng(_test_seed(request))


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
