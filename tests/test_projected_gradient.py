"""projected_gradient_sq, the solvers' stopping measure: the extension's CPU kernel, the Triton kernel (a GPU's,
through the interpreter on the CPU) and the torch form against reference.projected_gradient_sq in float64."""
import os

import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops import projected_gradient as pg_ops

needs_native = pytest.mark.skipif(not pg_ops._NATIVE, reason="the extension's CPU kernel is not built")
PATHS = ["native", "triton", "torch"]


def take(path, monkeypatch, device="cpu"):
    """Make sk.projected_gradient_sq take `path` on `device` (skip where it cannot run)."""
    if path == "native" and not (pg_ops._NATIVE and str(device) == "cpu"):
        pytest.skip("the extension's CPU kernel runs on CPU tensors, when it is built")
    if path == "triton" and str(device) == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        pytest.skip("the Triton kernel needs CUDA or TRITON_INTERPRET=1")
    monkeypatch.setattr(pg_ops, "_NATIVE", path == "native")
    if path == "torch":
        monkeypatch.setattr(pg_ops, "use_triton", lambda t: False)


def inputs(shape, dtype, seed):
    """A gradient of both signs and a factor with about a third of its entries exactly zero."""
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    U = torch.rand(shape, generator=g, dtype=torch.float64)
    U[U < 0.35] = 0
    return grad.to(dtype), U.to(dtype)


def rel(a, b):
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 1003])
@pytest.mark.parametrize("r", [1, 5, 16, 48, 128])
def test_matches_reference(dtype, n, r):
    grad, U = inputs((n, r), dtype, seed=1000 * n + r)
    want = reference.projected_gradient_sq(grad.double(), U.double())
    got = sk.projected_gradient_sq(grad, U)
    assert got.dtype == torch.float64 and got.shape == ()  # squared and summed in float64 whatever the dtype
    tol = 1e-13
    assert rel(got, want) <= tol
    assert rel(pg_ops._torch(grad, U), want) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (1003, 16), (1003, 128), (3, 257, 12)])
def test_triton_kernel_matches_reference(monkeypatch, device, dtype, shape):
    """The GPU's one-pass kernel: runs of 1,024 entries, 16 runs a program (1003 x 128 spans eight programs and
    ends inside a run), its partials summed in float64; a batch and a non-contiguous view."""
    take("triton", monkeypatch, device)
    grad, U = inputs(shape, dtype, seed=sum(shape))
    grad, U = grad.to(device), U.to(device)
    want = reference.projected_gradient_sq(grad.double().cpu(), U.double().cpu())
    got = sk.projected_gradient_sq(grad, U)
    assert got.dtype == torch.float64 and got.shape == () and got.device == grad.device
    tol = 1e-13
    assert rel(got, want) <= tol
    g_t, U_t = grad.mT.contiguous().mT, U.mT.contiguous().mT
    assert rel(sk.projected_gradient_sq(g_t, U_t), want) <= tol


def test_batch_and_non_contiguous():
    grad, U = inputs((3, 257, 12), torch.float32, seed=1)
    want = reference.projected_gradient_sq(grad.double(), U.double())
    assert rel(sk.projected_gradient_sq(grad, U), want) <= 1e-6
    g_t, U_t = grad.mT.contiguous().mT, U.mT.contiguous().mT  # column-major storage
    assert not g_t.is_contiguous()
    assert rel(sk.projected_gradient_sq(g_t, U_t), want) <= 1e-6
    assert rel(sk.projected_gradient_sq(grad[:, ::2], U[:, ::2]),
               reference.projected_gradient_sq(grad[:, ::2].double(), U[:, ::2].double())) <= 1e-6


def test_only_the_feasible_directions_count():
    """A positive gradient on a zero entry is dropped; every other entry counts whole."""
    grad = torch.tensor([[2.0, -3.0], [5.0, -7.0]])
    U = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert float(sk.projected_gradient_sq(grad, U)) == 9.0 + 25.0 + 49.0


@pytest.mark.parametrize("path", PATHS)
def test_gradient_is_the_reference_gradient(monkeypatch, path):
    """The kernels have no backward: where a gradient is recorded the measure runs in torch, so its gradient is the
    reference's (2 P(grad) in grad) and never a silent None."""
    take(path, monkeypatch)
    grad, U = inputs((37, 5), torch.float64, seed=4)
    grad.requires_grad_()
    got = torch.autograd.grad(sk.projected_gradient_sq(grad, U), grad)[0]
    want = torch.autograd.grad(reference.projected_gradient_sq(grad, U), grad)[0]
    assert float((got - want).norm() / want.norm()) < 1e-12 and float(want.abs().sum()) > 0
    with torch.no_grad():  # no gradient recorded: the path under test, and a result that needs none
        assert not sk.projected_gradient_sq(grad, U).requires_grad


@pytest.mark.parametrize("where_U", [0.0, 1.0])
@pytest.mark.parametrize("path", PATHS)
def test_nan_gives_nan(monkeypatch, where_U, path):
    """A NaN in the gradient is never dropped as a zero, whatever U is there, on every path."""
    take(path, monkeypatch)
    grad, U = inputs((1003, 16), torch.float32, seed=2)
    grad[500, 7] = float("nan")
    U[500, 7] = where_U
    assert torch.isnan(sk.projected_gradient_sq(grad, U))
    assert torch.isnan(reference.projected_gradient_sq(grad, U))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("path", PATHS)
def test_non_finite_u_gives_nan(monkeypatch, bad, path):
    """A NaN or an infinity in U is not read as a zero or a positive entry: the measure is NaN, on the
    extension's kernel (inside a run of 256 and in the tail), on the Triton kernel, on the torch form and in
    the reference."""
    take(path, monkeypatch)
    for at in ((100, 2), (1002, 15)):  # 100 * 16 + 2: inside the runs; 1002 * 16 + 15: the last entry
        grad, U = inputs((1003, 16), torch.float64, seed=4)
        U[at] = bad
        assert torch.isnan(sk.projected_gradient_sq(grad, U)), at
        assert torch.isnan(reference.projected_gradient_sq(grad, U)), at
    grad, U = inputs((1003, 16), torch.float32, seed=5)
    U[U > 0] = 3e38  # finite, though a sum of them is not: the measure stays finite
    assert torch.isfinite(sk.projected_gradient_sq(grad, U))


def test_bad_input():
    grad, U = inputs((9, 3), torch.float32, seed=3)
    with pytest.raises(ValueError, match="must match"):
        sk.projected_gradient_sq(grad, U[:4])
    with pytest.raises(TypeError, match="use one dtype"):
        sk.projected_gradient_sq(grad, U.double())
    with pytest.raises(TypeError, match="float32 or float64"):
        sk.projected_gradient_sq(grad.half(), U.half())


@needs_native
def test_native_opcheck():
    grad, U = inputs((37, 6), torch.float32, seed=4)
    torch.library.opcheck(torch.ops.symnmf_kernels.projected_gradient_sq.default, (grad, U))


@needs_native
def test_native_sum_does_not_depend_on_the_thread_count():
    """Fixed blocks summed in their order: the same bits with one thread as with two."""
    grad, U = inputs((70_001, 5), torch.float32, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sk.projected_gradient_sq(grad, U)
        torch.set_num_threads(2)
        two = sk.projected_gradient_sq(grad, U)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("path", PATHS)
def test_empty_gives_zero(monkeypatch, path):
    """A rank of a sharded solver may hold no rows: its share of the norm is 0."""
    take(path, monkeypatch)
    grad, U = inputs((0, 4), torch.float32, seed=6)
    assert float(sk.projected_gradient_sq(grad, U)) == 0.0
    assert float(pg_ops._torch(grad, U)) == 0.0


@pytest.mark.parametrize("scale", [1e-25, 1e25])
@pytest.mark.parametrize("path", PATHS)
def test_float32_entries_whose_squares_leave_float32(monkeypatch, scale, path):
    """Float32 entries of 1e-25 or 1e25 have squares outside float32's range: the measure read 0 (a solver on an
    X of 1e-16 stopped at iteration 0, converged) or inf (a divergence reported at once), and the extension's
    kernel raised converting a finite total to float32. Every path squares in float64."""
    take(path, monkeypatch)
    grad, U = inputs((1003, 16), torch.float32, seed=7)
    grad = grad * scale
    want = reference.projected_gradient_sq(grad.double(), U.double())
    assert 0 < float(want) < float("inf")
    got = sk.projected_gradient_sq(grad, U)
    assert got.dtype == torch.float64 and rel(got, want) <= 1e-13
