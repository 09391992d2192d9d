"""symnmf_block and its chain form against the reference, forward and every gradient.

Following flash-attention's tests: the float32 kernel's error against a float64
reference is bounded by a small multiple of the float32 torch path's error.
"""
import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from conftest import rel_err


def block_inputs(batch, n, r, device, dtype=torch.float32):
    U = torch.rand(*batch, n, r, device=device, dtype=dtype)
    P = torch.randn(*batch, n, r, device=device, dtype=dtype)
    # lam on the scale of U^T U keeps the Gram's condition number moderate, as in the network.
    lam = torch.tensor(0.1 * n + 1.0, device=device, dtype=dtype)
    return U, P, lam


def grads(fn, U, P, lam, g):
    U, P, lam = (t.detach().clone().requires_grad_() for t in (U, P, lam))
    out = fn(U, P, lam)
    return (out, *torch.autograd.grad(out, (U, P, lam), g))


# n <= 1024 runs the fused one-program-per-problem kernel, n = 1500 the split-n kernels.
@pytest.mark.parametrize("n,r", [(1, 1), (7, 5), (1003, 16), (301, 48), (67, 128), (1500, 8)])
@pytest.mark.parametrize("inverse", ["default", "sweep"])
def test_block_forward_backward(device, monkeypatch, n, r, inverse):
    if inverse == "sweep":  # the in-register inverse as the symmetric sweep at every width, not only r > 64
        from symnmf_kernels.ops import _launch

        if r > 64 or n > 1024:
            pytest.skip("the default already: the sweep at r > 64; the split-n kernels invert G apart")
        monkeypatch.setattr(_launch, "SWEEP_MIN_BLOCK_R", 1)
    U, P, lam = block_inputs((), n, r, device)
    g = torch.randn(n, r, device=device)
    ours = grads(sk.symnmf_block, U, P, lam, g)
    exact = grads(reference.symnmf_block, U.double(), P.double(), lam.double(), g.double())
    torch32 = grads(reference.symnmf_block, U, P, lam, g)
    # dlam = trace(dG) can cancel to near zero: its error is measured against sum |dG_ii|, not |dlam|.
    U64, P64 = U.double(), P.double()
    Ginv = reference.spd_inverse(reference.gram(U64, lam.double()))
    dG = reference.block_backward(g.double(), U64, P64, Ginv, reference.apply_relu(P64, Ginv))[2]
    lam_scale = dG.diagonal(dim1=-2, dim2=-1).abs().sum()
    if lam_scale == 0:  # every output clipped by the ReLU (n = 1 with P < 0): dlam is exactly 0 on every path
        lam_scale = torch.ones_like(lam_scale)
    for name, got, want, base in zip(["U_next", "dU", "dP", "dlam"], ours, exact, torch32):
        if name == "dlam":
            err, base_err = (float((x.double() - want).abs() / lam_scale) for x in (got, base))
        else:
            err, base_err = rel_err(got, want), rel_err(base, want)
        assert err <= 2 * base_err + 1e-5, f"{name}: {err:.2e} vs torch float32 {base_err:.2e}"


def test_block_batched_non_contiguous(device):
    U, P, lam = block_inputs((2, 3), 45, 6, device, torch.float64)
    U_nc = U.transpose(0, 1).contiguous().transpose(0, 1)  # batch dims out of order in memory
    assert not U_nc.is_contiguous()
    lam_b = torch.rand(2, 3, device=device, dtype=torch.float64) + 5.0
    g = torch.randn(2, 3, 45, 6, device=device, dtype=torch.float64)
    for got, want in zip(grads(sk.symnmf_block, U_nc, P, lam_b, g), grads(reference.symnmf_block, U, P, lam_b, g)):
        assert rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("n", [40, 1100])
def test_block_singular_gram_gives_nan_not_garbage(device, n):
    U = torch.zeros(2, n, 3, device=device)
    U[0] = torch.rand(n, 3, device=device)  # problem 1 has U = 0, so U^T U + 0 I is singular
    P = torch.rand(2, n, 3, device=device)
    out = sk.symnmf_block(U, P, 0.0)
    assert torch.isnan(out[1]).all()
    assert rel_err(out[0], reference.symnmf_block(U[0].double(), P[0].double(), 0.0)) <= 1e-4


@pytest.mark.parametrize("n", [40, 1100])  # the one-program kernel and the split-n path
@pytest.mark.parametrize("case", ["nan in U", "indefinite G", "U = 0 and lam = 0"])
def test_block_gives_nan_like_the_reference_never_zeros(device, n, case):
    U = torch.rand(n, 4, device=device)
    P = torch.rand(n, 4, device=device)
    lam = 1.0
    if case == "nan in U":
        U[n // 2, 1] = float("nan")
    elif case == "indefinite G":
        lam = -100.0 * n  # far below -||U||^2: G = U^T U + lam I is negative definite
    else:
        U.zero_()
        lam = 0.0
    want = reference.symnmf_block(U.double(), P.double(), lam)
    assert torch.isnan(want).all()
    got = sk.symnmf_block(U, P, lam, check_lam=False)
    assert torch.isnan(got).all(), f"{int((got == 0).sum())} zeros, {int(torch.isnan(got).sum())} NaN"
    got_chain, gram_chain = sk.symnmf_block_from_gram(sk.gram(U, 0.0), P, lam, check_lam=False)
    assert torch.isnan(got_chain).all() and torch.isnan(gram_chain).all()


def test_block_lam_as_float(device):
    U, P, _ = block_inputs((), 50, 4, device, torch.float64)
    assert rel_err(sk.symnmf_block(U, P, 2.5), reference.symnmf_block(U, P, 2.5)) <= 1e-12


def test_chain_form_equals_block(device):
    U, P, lam = block_inputs((2,), 77, 8, device, torch.float64)
    gU = torch.randn(2, 77, 8, device=device, dtype=torch.float64)
    gG = torch.randn(2, 8, 8, device=device, dtype=torch.float64)

    def chain(U, P, lam):
        U_next, UtU_next = sk.symnmf_block_from_gram(sk.gram(U, 0.0), P, lam)
        return (U_next * gU).sum() + (UtU_next * gG).sum()

    def plain(U, P, lam):
        U_next = reference.symnmf_block(U, P, lam)
        return (U_next * gU).sum() + ((U_next.mT @ U_next) * gG).sum()

    one = torch.ones((), device=device, dtype=torch.float64)
    for got, want in zip(grads(chain, U, P, lam, one), grads(plain, U, P, lam, one)):
        assert rel_err(got, want) <= 1e-12
    UtU = U.mT @ U
    for got, want in zip(sk.symnmf_block_from_gram(UtU, P, lam), reference.symnmf_block_from_gram(UtU, P, lam)):
        assert rel_err(got, want) <= 1e-12


def chain_grads(fn, UtU, P, lam, gY, gG, **kwargs):
    """(Y, Y^T Y, dUtU, dP, dlam) of <Y, gY> + <Y^T Y, gG> for (Y, Y^T Y) = fn(UtU, P, lam); gY None: the
    loss of the Gram alone, Y unused."""
    UtU, P, lam = (t.detach().clone().requires_grad_(t.is_floating_point()) for t in (UtU, P, lam))
    Y, YtY = fn(UtU, P, lam, **kwargs)
    out = (YtY * gG).sum() + ((Y * gY).sum() if gY is not None else 0)
    wrt = [t for t in (UtU, P, lam) if t.requires_grad]
    return (Y, YtY, *torch.autograd.grad(out, wrt))


@pytest.mark.parametrize("n,r", [(1, 1), (7, 5), (1003, 16), (301, 48), (67, 128)])
def test_chain_form_float32_within_torch_error(device, n, r):
    """The chain form in float32 (the net's block), forward and every gradient: against the float64 reference,
    within twice the error of the float32 reference (the block's own rule, test_block_forward_backward)."""
    U, P, lam = block_inputs((), n, r, device)
    UtU = U.mT @ U
    gY = torch.randn(n, r, device=device)
    gG = torch.randn(r, r, device=device) / max(n, 1)
    ours = chain_grads(sk.symnmf_block_from_gram, UtU, P, lam, gY, gG)
    exact = chain_grads(reference.symnmf_block_from_gram, UtU.double(), P.double(), lam.double(), gY.double(),
                        gG.double())
    torch32 = chain_grads(reference.symnmf_block_from_gram, UtU, P, lam, gY, gG)
    # dlam = trace(dG) = trace(dUtU) can cancel to near zero: measured against sum |dUtU_ii|.
    lam_scale = float(exact[2].diagonal().abs().sum()) or 1.0
    for name, got, want, base in zip(["Y", "YtY", "dUtU", "dP", "dlam"], ours, exact, torch32):
        assert bool(torch.isfinite(got).all()), name
        if name == "dlam":
            err, base_err = (float((x.double() - want).abs()) / lam_scale for x in (got, base))
        else:
            err, base_err = rel_err(got, want), rel_err(base, want)
        assert err <= 2 * base_err + 1e-5, f"{name}: {err:.2e} vs torch float32 {base_err:.2e}"


@pytest.mark.parametrize("case", ["Gram alone", "lam fixed", "P fixed"])
def test_chain_form_partial_gradients(device, case):
    """The chain form's backward when only Y^T Y reaches the loss (no gradient of Y), when lam needs no gradient
    (its trace is not formed) and when P needs none: the gradients that are asked for, as the reference's."""
    U, P, lam = block_inputs((2,), 33, 5, device, torch.float64)
    UtU = U.mT @ U
    gY = None if case == "Gram alone" else torch.randn(2, 33, 5, device=device, dtype=torch.float64)
    gG = torch.randn(2, 5, 5, device=device, dtype=torch.float64)
    if case == "lam fixed":
        lam = lam.clone().requires_grad_(False).to(torch.float64)
    args = [UtU, P, lam]

    def run(fn):
        inputs = [t.detach().clone() for t in args]
        for i, t in enumerate(inputs):
            t.requires_grad_(not ((case == "lam fixed" and i == 2) or (case == "P fixed" and i == 1)))
        Y, YtY = fn(*inputs)
        out = (YtY * gG).sum() + ((Y * gY).sum() if gY is not None else 0)
        return (Y, YtY, *torch.autograd.grad(out, [t for t in inputs if t.requires_grad]))

    got, want = run(sk.symnmf_block_from_gram), run(reference.symnmf_block_from_gram)
    assert len(got) == len(want) == (4 if case != "Gram alone" else 5)
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel_err(a, b) <= 1e-11


def test_chain_form_gradcheck(device):
    """gradcheck of the chain form on the library's path (the Triton kernels in the interpreter or on a GPU),
    in float64, through U (U^T U formed inside: the form's input is symmetric, and only its symmetric
    perturbations are defined), P and lam."""
    U, P, lam = block_inputs((), 4, 2, device, torch.float64)
    inputs = tuple(t.detach().clone().requires_grad_() for t in (U, P, lam))
    gG = torch.randn(2, 2, device=device, dtype=torch.float64)

    def fn(U, P, lam):
        Y, YtY = sk.symnmf_block_from_gram(U.mT @ U, P, lam)
        return Y, (YtY * gG).sum()

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("lam_case", ["0-d", "one per Gram", "strided", "wider than the Gram", "nan"])
@pytest.mark.parametrize("inverse", ["kernel", "torch"])
def test_chain_form_lam_of_every_shape(device, monkeypatch, lam_case, inverse):
    """The chain form's lam, which the inverse's kernel adds where it loads U^T U when lam is 0-d or has the
    Gram's batch shape (else a G is formed first), or which is added before torch's inverse where that runs (a GPU
    past a padded width of 64, forced here): values and gradients, lam's included, against the reference."""
    if inverse == "torch":
        from symnmf_kernels.ops import _launch

        monkeypatch.setattr(_launch, "torch_inverse", lambda G: True)
    r, n = 6, 41
    U, P, _ = block_inputs((3,), n, r, device, torch.float64)
    UtU = U.mT @ U
    lam = 0.1 * n + torch.rand(3, device=device, dtype=torch.float64)
    if lam_case == "0-d":
        lam = lam[0]
    elif lam_case == "strided":
        lam = torch.stack([lam, lam], 1)[:, 1]  # (3,) with stride 2
    elif lam_case == "wider than the Gram":  # one Gram shared by three problems, each with its own lam
        UtU = UtU[0]
    elif lam_case == "nan":
        lam = lam.clone()
        lam[1] = float("nan")
    gY = torch.randn(3, n, r, device=device, dtype=torch.float64)
    gG = torch.randn(3, r, r, device=device, dtype=torch.float64)

    def run(fn, UtU, P, lam):
        UtU, P, lam = (t.detach().clone().requires_grad_() for t in (UtU, P, lam))
        Y, YtY = fn(UtU, P, lam, check_lam=False) if fn is sk.symnmf_block_from_gram else fn(UtU, P, lam)
        out = (Y * gY).sum() + (YtY * gG).sum()
        return (Y, YtY, *torch.autograd.grad(out, (UtU, P, lam)))

    got = run(sk.symnmf_block_from_gram, UtU, P, lam)
    want = run(reference.symnmf_block_from_gram, UtU, P, lam)
    if lam_case == "nan":  # problem 1 is NaN throughout, its gradients too; the others as the reference
        for a, b in zip(got, want):
            assert torch.isnan(a[1]).all() and torch.isnan(b[1]).all()
            assert rel_err(a[[0, 2]], b[[0, 2]]) <= 1e-11
        return
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel_err(a, b) <= 1e-11


def test_block_gradcheck(device):
    U, P, lam = block_inputs((), 4, 2, device, torch.float64)
    inputs = tuple(t.requires_grad_() for t in (U, P, lam))
    assert torch.autograd.gradcheck(sk.symnmf_block, inputs)
    assert torch.autograd.gradcheck(reference.symnmf_block, inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4096, 16), (64, 256, 8)])
def test_block_training_step_captures_in_a_cuda_graph(shape):
    # No host synchronisation in forward or backward: the whole step replays from a CUDA graph.
    U = torch.rand(*shape, device="cuda")
    P = torch.randn(*shape, device="cuda", requires_grad=True)
    lam = torch.tensor(float(shape[-2]), device="cuda", requires_grad=True)

    def step():
        out = sk.symnmf_block(U, P, lam)
        loss = (out * out).sum()
        return (loss, *torch.autograd.grad(loss, (P, lam)))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        expected = step()  # warm-up: compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, expected):
        assert rel_err(got, want) <= 1e-6


@pytest.mark.parametrize("n,r", [(1, 1), (7, 5), (300, 16), (97, 48)])
def test_block_small_backward_equals_split_path(device, monkeypatch, n, r):
    # The one-program backward and the split-n kernels compute the same formulas: float64 agrees to rounding.
    from symnmf_kernels.ops import _launch

    launched = []
    kernel = _launch.symnmf_block_small_backward_kernel
    monkeypatch.setattr(type(kernel), "run", _recording(type(kernel).run, kernel, launched))
    U, P, lam = block_inputs((3,), n, r, device, torch.float64)
    U = U.transpose(-1, -2).contiguous().transpose(-1, -2)  # column-major factors: the kernel reads strides
    lam = torch.rand(3, device=device, dtype=torch.float64) + 0.1 * n
    g = torch.randn(3, n, r, device=device, dtype=torch.float64)
    small = grads(sk.symnmf_block, U, P, lam, g)
    assert launched, "the one-program backward did not run"
    monkeypatch.setattr(_launch, "SMALL_N", 0)  # every problem on the split-n kernels
    split = grads(sk.symnmf_block, U, P, lam, g)
    assert len(launched) == 1
    for name, got, want in zip(["U_next", "dU", "dP", "dlam"], small, split):
        assert rel_err(got, want) <= 1e-12, name


def _recording(run, kernel, launched):
    def record(self, *args, **kwargs):
        if self is kernel:
            launched.append(kwargs.get("grid"))
        return run(self, *args, **kwargs)

    return record


@pytest.mark.parametrize("case", ["nan in the gradient", "nan in P", "singular G"])
@pytest.mark.parametrize("path", ["small", "split"])
def test_block_backward_gives_nan_where_the_reference_does(device, monkeypatch, case, path):
    if path == "split":
        from symnmf_kernels.ops import _launch

        monkeypatch.setattr(_launch, "SMALL_N", 0)
    U, P, lam = block_inputs((2,), 30, 4, device, torch.float64)
    g = torch.randn(2, 30, 4, device=device, dtype=torch.float64)
    if case == "nan in the gradient":
        g[1, 3] = float("nan")
    elif case == "nan in P":
        P[1, 0, 0] = float("nan")
    else:
        U[1].zero_()
        lam = torch.zeros((), device=device, dtype=torch.float64)
    ours = grads(lambda *a: sk.symnmf_block(*a, check_lam=False), U, P, lam, g)
    want = grads(reference.symnmf_block, U, P, lam, g)
    assert torch.isnan(want[1][1]).all(), "the case must reach dU"
    for name, got, ref in zip(["U_next", "dU", "dP", "dlam"], ours, want):
        assert torch.equal(torch.isnan(got), torch.isnan(ref)), f"{name}: NaN where the reference has none, or not"
        ok = ~torch.isnan(ref)
        assert rel_err(got[ok], ref[ok]) <= 1e-10, name


@pytest.mark.parametrize("r", [1, 7, 16])
def test_block_forward_reduction_with_inverse_equals_gram_then_inverse(device, r):
    # Past the small-problem size, r <= 16 sums the Gram's partials and inverts G in one program per problem:
    # the same G^{-1} as the Gram's own reduction followed by spd_inverse.
    from symnmf_kernels.ops import _launch

    U, P, _ = block_inputs((3,), 1500, r, device, torch.float64)
    lam = torch.rand(3, device=device, dtype=torch.float64) + 150.0
    Y, Ginv, info = _launch.symnmf_block(U, P, lam)
    Ginv_apart, info_apart = _launch.spd_inverse(_launch.gram(U, lam))
    assert rel_err(Ginv, Ginv_apart) <= 1e-13 and torch.equal(info, info_apart)
    assert rel_err(Y, reference.symnmf_block(U, P, lam)) <= 1e-12


def test_chain_form_broadcasts_a_shared_gram(device):
    # One UtU for three problems with their own P and lam: G^{-1} takes P's batch, and the gradients of the
    # shared UtU add up over the problems, as in the reference.
    U, _, _ = block_inputs((), 50, 6, device, torch.float64)
    P = torch.randn(3, 50, 6, device=device, dtype=torch.float64)
    lam = torch.rand(3, device=device, dtype=torch.float64) + 5.0
    gY = torch.randn(3, 50, 6, device=device, dtype=torch.float64)
    gG = torch.randn(3, 6, 6, device=device, dtype=torch.float64)

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (U.mT @ U, P, lam)]
        Y, YtY = fn(*leaves)
        return (Y, YtY, *torch.autograd.grad((Y * gY).sum() + (YtY * gG).sum(), leaves))

    for got, want in zip(run(sk.symnmf_block_from_gram), run(reference.symnmf_block_from_gram)):
        assert got.shape == want.shape and rel_err(got, want) <= 1e-12


# The chain form's backward: its r x r step in one program per problem, from P^T Zb's partial sums (r <= 16) or
# from their sum (r = 17-64), and torch's products past that (r = 100).
@pytest.mark.parametrize("r", [5, 20, 48, 100])
@pytest.mark.parametrize("with_gram_grad", [True, False])
def test_chain_form_backward_at_every_width(device, r, with_gram_grad):
    n = 131
    U, P, lam = block_inputs((2,), n, r, device, torch.float64)
    lam = torch.tensor([0.1 * n + 1.0, 0.2 * n], device=device, dtype=torch.float64)
    gY = torch.randn(2, n, r, device=device, dtype=torch.float64)
    gG = torch.randn(2, r, r, device=device, dtype=torch.float64)

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (U.mT @ U, P, lam)]
        Y, YtY = fn(*leaves)
        total = (Y * gY).sum() + ((YtY * gG).sum() if with_gram_grad else 0.0)
        return (Y, YtY, *torch.autograd.grad(total, leaves))

    for got, want in zip(run(sk.symnmf_block_from_gram), run(reference.symnmf_block_from_gram)):
        assert got.shape == want.shape and rel_err(got, want) <= 1e-11
