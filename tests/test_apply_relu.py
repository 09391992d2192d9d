import importlib

import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops import _common, _launch
from conftest import INTERPRET, rel_err


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


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs the interpreter or a GPU")
@pytest.mark.parametrize("precision", _common.DOT_PRECISIONS)
@pytest.mark.parametrize("with_h", [False, True])
@pytest.mark.parametrize("r", [5, 48])
def test_apply_kernels_every_precision(monkeypatch, precision, with_h, r):
    """The ReLU product's kernels with each dot precision forced, against float64: Y = ReLU(A M) and its Gram
    Y^T Y in one pass, and the backward's dA = Zb M^T and A^T Zb with Zb = (grad + Y (H + H^T)) 1[Y > 0].
    tf32x3 splits M and H once per program and Y or Zb once for their two products (triton/_common.dot_tf32x3);
    through the interpreter the split path runs as on a GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(_launch, "input_precision", lambda t, r, reduction, p=None: precision)
    n = 203
    A = torch.randn(1, n, r, device=device)
    M = inverse_like((1,), r, device)
    Y_want = torch.relu(A.double() @ M.double())
    tol = 1e-2 if precision == "tf32" and device == "cuda" else 1e-5
    Y, YtY = _launch.apply_relu_gram(A, M)
    assert rel_err(Y, Y_want) <= tol and rel_err(YtY, Y_want.mT @ Y_want) <= tol
    Y = torch.relu(A @ M)
    grad = torch.randn(1, n, r, device=device)
    H = torch.randn(1, r, r, device=device) if with_h else None
    dA, dM = _launch.apply_backward(grad, Y, A, M, H, sym_h=with_h)
    g = grad.double() + (Y.double() @ (H + H.mT).double() if with_h else 0)
    Zb = g * (Y > 0)
    assert rel_err(dA, Zb @ M.double().mT) <= tol
    assert rel_err(dM, A.double().mT @ Zb) <= tol


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs the interpreter or a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, n, r", [(1, 1, 1), (2, 7, 5), (3, 1003, 16), (1, 203, 48)])
def test_apply_backward_adds_another_gradient_of_a(monkeypatch, dtype, B, n, r):
    """dp_extra = (T, c): dA + c[b] T[b] stored by the backward's own pass (SymNMF-Net's chain adds the
    regulariser's gradient of each weight so), on the kernels and on torch's GEMMs (`cublas_products`), with
    T column-major; the other output and NaN in T are untouched by the sum."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    A = torch.randn(B, n, r, device=device, dtype=dtype)
    M = inverse_like((B,), r, device, dtype)
    Y = torch.relu(A @ M)
    grad = torch.randn(B, n, r, device=device, dtype=dtype)
    H = torch.randn(B, r, r, device=device, dtype=dtype)
    T = torch.randn(B, r, n, device=device, dtype=dtype).mT
    c = torch.randn(B, device=device, dtype=dtype)
    Zb = (grad.double() + Y.double() @ (H + H.mT).double()) * (Y > 0)
    dA_want = Zb @ M.double().mT + c.double()[:, None, None] * T.double()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    dA, dM = _launch.apply_backward(grad, Y, A, M, H, sym_h=True, dp_extra=(T, c))
    assert rel_err(dA, dA_want) <= tol and rel_err(dM, A.double().mT @ Zb) <= tol
    dP, dG, _ = _launch.apply_relu_inverse_backward(grad, Y, A, M, H, sym_h=True, dp_extra=(T, c))
    assert rel_err(dP, dA_want) <= tol
    with monkeypatch.context() as m:
        m.setattr(_launch, "cublas_products", lambda *args, **kwargs: True)
        assert rel_err(_launch.apply_backward(grad, Y, A, M, H, sym_h=True, dp_extra=(T, c))[0], dA_want) <= tol
    T[0, 0, 0] = float("nan")
    assert torch.isnan(_launch.apply_backward(grad, Y, A, M, H, sym_h=True, dp_extra=(T, c))[0][0, 0, 0])


def test_apply_relu_gradcheck(device):
    P = torch.randn(2, 5, 3, device=device, dtype=torch.float64, requires_grad=True)
    Ginv = inverse_like((2,), 3, device, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(sk.apply_relu, (P, Ginv))
    assert torch.autograd.gradcheck(reference.apply_relu, (P, Ginv))


# ---- the CPU's fused loops (tall_apply_relu_gram, tall_apply_relu_backward) ---------------------------------------

gram_module = importlib.import_module("symnmf_kernels.ops.gram")
apply_relu_module = importlib.import_module("symnmf_kernels.ops.apply_relu")
needs_tall = pytest.mark.skipif(not gram_module._NATIVE_TALL, reason="the extension's CPU kernels are not built")
TALL_RANKS = [1, 2, 5, 8, 10, 13, 16, 32]  # compiled ranks, the run-time loop, and its limit


def _unfused_forward(P, Ginv):
    op = torch.ops.symnmf_kernels
    Y = torch.relu_(op.tall_mm(P, Ginv))
    return Y, op.tall_gram(Y, Y)


def _unfused_backward(grad, Y, P, Ginv, H):
    op = torch.ops.symnmf_kernels
    z = grad if H is None else op.tall_mm(Y, H, grad)
    Z = torch.ops.aten.threshold_backward(z, Y, 0)
    return op.tall_mm(Z, Ginv.mT.contiguous()), op.tall_gram(P, Z)


@needs_tall
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", TALL_RANKS)
@pytest.mark.parametrize("shape", [(1,), (7,), (1003,), (3, 4099)])
def test_tall_apply_relu_matches_its_parts_and_float64(shape, r, dtype):
    """The fused loops give the unfused chain's values to the bit (tiles of rows, the same operations in the same
    order), and those are within the float32 bound of torch's own products against float64."""
    gen = torch.Generator().manual_seed(r * 100 + shape[-1])
    P = torch.randn(*shape, r, generator=gen, dtype=dtype)
    Ginv = inverse_like(shape[:-1], r, "cpu", dtype)
    Y, YtY = torch.ops.symnmf_kernels.tall_apply_relu_gram(P, Ginv)
    Y0, YtY0 = _unfused_forward(P, Ginv)
    assert torch.equal(Y, Y0) and torch.equal(YtY, YtY0)
    Y64, YtY64 = reference.apply_relu_gram(P.double(), Ginv.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(Y, Y64) <= tol and rel_err(YtY, YtY64) <= tol
    grad = torch.randn(*shape, r, generator=gen, dtype=dtype)
    H = torch.randn(*shape[:-1], r, r, generator=gen, dtype=dtype)
    for h in (H, None):
        dP, PtZ = torch.ops.symnmf_kernels.tall_apply_relu_backward(grad, Y, P, Ginv, h)
        dP0, PtZ0 = _unfused_backward(grad, Y, P, Ginv, h)
        assert torch.equal(dP, dP0) and torch.equal(PtZ, PtZ0)
        z = grad.double() if h is None else grad.double() + Y64 @ h.double()
        Z = z * (Y64 > 0)
        assert rel_err(dP, Z @ Ginv.double().mT) <= tol
        assert rel_err(PtZ, P.double().mT @ Z) <= tol


@needs_tall
def test_tall_apply_relu_backward_takes_any_layout_of_grad_and_y():
    P = torch.randn(2, 700, 8)
    Ginv = inverse_like((2,), 8, "cpu")
    Y, _ = torch.ops.symnmf_kernels.tall_apply_relu_gram(P, Ginv)
    grad = torch.randn(2, 8, 700).mT  # column-major rows
    got = torch.ops.symnmf_kernels.tall_apply_relu_backward(grad, Y.mT.contiguous().mT, P, Ginv.mT.contiguous().mT)
    want = _unfused_backward(grad.contiguous(), Y, P, Ginv, None)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_tall
def test_tall_apply_relu_does_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(5)
    P, grad = torch.randn(20_011, 8, generator=gen), torch.randn(20_011, 8, generator=gen)
    Ginv, H = inverse_like((), 8, "cpu"), torch.randn(8, 8, generator=gen)
    op = torch.ops.symnmf_kernels
    threads = torch.get_num_threads()
    runs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            Y, YtY = op.tall_apply_relu_gram(P, Ginv)
            runs.append((Y, YtY, *op.tall_apply_relu_backward(grad, Y, P, Ginv, H)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_tall
def test_tall_apply_relu_keeps_nan_and_inf():
    P = torch.rand(700, 8)
    P[5, 2] = float("nan")
    P[9, 1] = float("inf")
    Ginv = torch.rand(8, 8) + torch.eye(8)  # positive, so no ReLU hides the non-finite rows
    Y, YtY = torch.ops.symnmf_kernels.tall_apply_relu_gram(P, Ginv)
    assert Y[5].isnan().all() and Y[9].isinf().all() and YtY.isnan().all()
    grad = torch.rand(700, 8)
    grad[20, 3] = float("nan")
    dP, PtZ = torch.ops.symnmf_kernels.tall_apply_relu_backward(grad, torch.rand(700, 8) + 0.1, P, Ginv)
    assert dP[20].isnan().all() and PtZ[:, 3].isnan().all()
    # the mask follows torch's threshold_backward: a NaN in Y passes the gradient on
    want = _unfused_backward(grad, Y, P, Ginv, None)
    got = torch.ops.symnmf_kernels.tall_apply_relu_backward(grad, Y, P, Ginv)
    assert torch.equal(got[0].isnan(), want[0].isnan()) and torch.equal(got[1].isnan(), want[1].isnan())


@needs_tall
def test_tall_apply_relu_opcheck():
    P = torch.randn(2, 300, 5)
    Ginv = inverse_like((2,), 5, "cpu")
    op = torch.ops.symnmf_kernels
    torch.library.opcheck(op.tall_apply_relu_gram.default, (P, Ginv))
    Y, _ = op.tall_apply_relu_gram(P, Ginv)
    torch.library.opcheck(op.tall_apply_relu_backward.default, (torch.randn(2, 300, 5), Y, P, Ginv, None))
    torch.library.opcheck(op.tall_apply_relu_backward.default, (torch.randn(300, 5), Y[0], P[0], Ginv[0],
                                                                torch.randn(5, 5)))


@needs_tall
def test_tall_apply_relu_rejects_bad_arguments():
    op = torch.ops.symnmf_kernels
    P = torch.rand(10, 4)
    with pytest.raises(RuntimeError, match="Ginv must have shape"):
        op.tall_apply_relu_gram(P, torch.rand(4, 5))
    with pytest.raises(RuntimeError, match="Ginv must have P's dtype"):
        op.tall_apply_relu_gram(P, torch.rand(4, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="row-major"):
        op.tall_apply_relu_gram(torch.rand(4, 10).T, torch.rand(4, 4))
    with pytest.raises(RuntimeError, match="grad must have P's shape"):
        op.tall_apply_relu_backward(torch.rand(9, 4), P, P, torch.rand(4, 4))
    with pytest.raises(RuntimeError, match="H must have shape"):
        op.tall_apply_relu_backward(P, P, P, torch.rand(4, 4), torch.rand(2, 4, 4))
    with pytest.raises(RuntimeError, match="r = 33 must lie in"):
        op.tall_apply_relu_gram(torch.rand(10, 33), torch.rand(33, 33))


@needs_tall
@pytest.mark.parametrize("batch", [(), (3,)])
def test_apply_relu_torch_path_takes_the_fused_loops(monkeypatch, batch):
    """The ops' CPU path at a size the fused loops take gives the unfused chain's values and gradients to the
    bit, with Ginv broadcast over the batch."""
    monkeypatch.setattr(importlib.import_module("symnmf_kernels.ops._common"), "interpreting", lambda: False)
    P = torch.randn(*batch, 1003, 8, requires_grad=True)
    Ginv = inverse_like((), 8, "cpu").requires_grad_()
    gU, gG = torch.randn(*batch, 1003, 8), torch.randn(*batch, 8, 8)

    def run():
        Y, YtY = sk.apply_relu_gram(P, Ginv)
        return (Y, YtY, *torch.autograd.grad((Y * gU).sum() + (YtY * gG).sum(), (P, Ginv)))

    taken = []
    fused_native = apply_relu_module._fused_native
    monkeypatch.setattr(apply_relu_module, "_fused_native", lambda *a: taken.append(fused_native(*a)) or taken[-1])
    fused = run()
    assert taken == [True, True]  # the forward and the backward
    monkeypatch.setattr(apply_relu_module, "_fused_native", lambda *a: False)
    unfused = run()
    assert all(torch.equal(a, b) for a, b in zip(fused, unfused))
