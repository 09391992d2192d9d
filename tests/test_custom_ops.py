"""The ops are torch.library custom ops: opcheck passes and torch.compile traces through them."""
import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops.apply_relu import apply_relu_backward, apply_relu_gram_op, apply_relu_op
from symnmf_kernels.ops.symnmf_block import symnmf_block_backward, symnmf_block_op
from symnmf_kernels.ops.gram import gram_op, mm_small
from symnmf_kernels.ops.spd_inverse import spd_inverse_op
from symnmf_kernels.ops.sym_loss import sym_loss_dense
from conftest import rel_err


def _spd(r, device):
    A = torch.randn(2, r, r, device=device, dtype=torch.float64)
    return A @ A.mT + r * torch.eye(r, device=device, dtype=torch.float64)


def cases(device):
    f64 = dict(device=device, dtype=torch.float64)
    U = torch.rand(2, 9, 3, **f64)
    G = _spd(3, device)
    Ginv = torch.linalg.inv(G)
    X = torch.rand(2, 9, 9, **f64)
    return [
        (gram_op, (U.requires_grad_(), torch.tensor(0.5, **f64).requires_grad_(), True)),
        (mm_small, (torch.rand(2, 9, 3, **f64), G)),
        (spd_inverse_op, (G.clone().requires_grad_(),)),
        (apply_relu_op, (torch.randn(2, 9, 3, **f64).requires_grad_(), Ginv.clone().requires_grad_())),
        (apply_relu_gram_op, (torch.randn(2, 9, 3, **f64).requires_grad_(), Ginv.clone().requires_grad_())),
        (apply_relu_backward, (torch.randn(2, 9, 3, **f64), torch.rand(2, 9, 3, **f64), torch.randn(2, 9, 3, **f64), Ginv, None)),
        (sym_loss_dense, (X + X.mT, torch.rand(2, 9, 3, **f64).requires_grad_())),
        (symnmf_block_op, (torch.rand(2, 9, 3, **f64).requires_grad_(), torch.randn(2, 9, 3, **f64).requires_grad_(),
                           torch.tensor(2.0, **f64).requires_grad_())),
        (symnmf_block_backward, (torch.randn(2, 9, 3, **f64), torch.rand(2, 9, 3, **f64), torch.randn(2, 9, 3, **f64),
                                 Ginv, torch.rand(2, 9, 3, **f64))),
    ]


@pytest.mark.parametrize("index", range(len(cases("cpu"))))
def test_opcheck(device, index):
    op, args = cases(device)[index]
    torch.library.opcheck(op, args)


def test_kernel_tests_run_the_kernels():
    """tests/conftest.py makes a plain `pytest` run the Triton kernels: compiled on CUDA, interpreted otherwise."""
    from symnmf_kernels.ops._common import use_triton
    from symnmf_kernels.triton.gram import gram_partials_kernel

    if torch.cuda.is_available():
        assert use_triton(torch.empty(1, 1, device="cuda"), 1)
    else:
        from triton.runtime.interpreter import InterpretedFunction

        assert use_triton(torch.empty(1, 1), 1), "CPU tensors would take the torch path: TRITON_INTERPRET is not 1"
        assert isinstance(gram_partials_kernel, InterpretedFunction)


def test_torch_compile_block_training_step(device):
    torch._dynamo.reset()
    U = torch.rand(64, 4, device=device)
    P = torch.randn(64, 4, device=device, requires_grad=True)
    lam = torch.tensor(8.0, device=device, requires_grad=True)

    def step(U, P, lam):
        U1 = sk.symnmf_block(U, P, lam)
        return (U1 * U1).sum()

    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(U, P, lam)
    dP, dlam = torch.autograd.grad(loss, (P, lam))
    P_ref, lam_ref = P.detach().double().requires_grad_(), lam.detach().double().requires_grad_()
    U_ref = reference.symnmf_block(U.double(), P_ref, lam_ref)
    dP_ref, dlam_ref = torch.autograd.grad((U_ref * U_ref).sum(), (P_ref, lam_ref))
    assert rel_err(loss, (U_ref * U_ref).sum()) <= 1e-5
    assert rel_err(dP, dP_ref) <= 1e-4
    assert rel_err(dlam, dlam_ref) <= 1e-4


def test_one_op_namespace():
    """Every custom op, C++ or Python, lives under torch.ops.symnmf_kernels, and docs/design.md lists them all."""
    import os
    import re

    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.split("::")[0].startswith("symnmf"))
    assert names and all(n.startswith("symnmf_kernels::") for n in names), names
    notes = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "design.md")).read()
    paragraph = notes[notes.index("**One op namespace.**"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    documented = set(re.findall(r"`(\w+)`", paragraph)) - {"symnmf_kernels"}
    assert {n.split("::")[1] for n in names} == documented


def test_backward_ops_refuse_an_operand_of_another_batch(device):
    """The backward ops' r x r operands have P's batch (the public functions expand a shared one): a shared Ginv
    or H given to the op itself is refused, by the op and by its fake alike, rather than given a gradient of
    another shape than its fake says."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    f64 = dict(device=device, dtype=torch.float64)
    P, Y, grad = torch.randn(3, 7, 4, **f64), torch.rand(3, 7, 4, **f64), torch.randn(3, 7, 4, **f64)
    shared = torch.linalg.inv(_spd(4, device)[0])
    calls = [lambda *t: apply_relu_backward(t[0], t[1], t[2], t[3], None),
             lambda *t: apply_relu_backward(t[0], t[1], t[2], t[3].expand(3, 4, 4), t[3]),
             lambda *t: symnmf_block_backward(t[0], t[1], t[2], t[3], t[1])]
    for call in calls:
        with pytest.raises(ValueError, match="must have P's batch shape"):
            call(grad, Y, P, shared)
        with FakeTensorMode() as mode, pytest.raises(ValueError, match="must have P's batch shape"):
            call(*(mode.from_tensor(t) for t in (grad, Y, P, shared)))


@pytest.mark.parametrize("interpret", ["0", "1"])
def test_a_second_derivative_is_refused_or_right(interpret, monkeypatch):
    """The blocks, the dense loss and NNLS save intermediates made without a graph (G^{-1}, X - U U^T, the
    solution): a Hessian-vector product through them dropped their terms silently where another term (here
    sum x^3) kept the graph alive (0.01-0.9 relative error). A second derivative is now an error, or equal to the
    reference's."""
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    gen = torch.Generator().manual_seed(0)
    n, r = 7, 3
    X = torch.rand(n, n, dtype=torch.float64, generator=gen)
    X = X + X.mT
    U = (torch.rand(n, r, dtype=torch.float64, generator=gen) + 0.1).requires_grad_()
    P = torch.randn(n, r, dtype=torch.float64, generator=gen).requires_grad_()
    lam = torch.tensor(0.7, dtype=torch.float64)
    G = torch.eye(r, dtype=torch.float64) * 2 + 0.1
    C = torch.randn(5, r, dtype=torch.float64, generator=gen).requires_grad_()
    cases = (
        (lambda m, U: m.sym_loss(X, U).sum(), (U,)),
        (lambda m, U, P: m.symnmf_block(U, P, lam).pow(2).sum(), (U, P)),
        (lambda m, U, P: m.symnmf_block_from_gram(U.mT @ U, P, lam)[0].pow(2).sum(), (U, P)),
        (lambda m, C: m.nnls(G, C).pow(2).sum(), (C,)),
    )
    refused = 0
    for f, inputs in cases:
        def hvp(m):
            loss = f(m, *inputs) + sum(x.pow(3).sum() for x in inputs)
            grads = torch.autograd.grad(loss, inputs, create_graph=True)
            return torch.autograd.grad(sum(g.sum() for g in grads), inputs)

        want = hvp(reference)
        try:
            got = hvp(sk)
        except RuntimeError as e:
            assert "first order only" in str(e) or "backward through" in str(e), e
            refused += 1
            continue
        for a, b in zip(got, want):
            assert rel_err(a, b) < 1e-10
    assert refused >= (3 if interpret == "0" else 2)


@pytest.mark.parametrize("interpret", ["0", "1"])
def test_infinite_results_stay_infinite_and_a_nan_lam_stays_on_the_diagonal(interpret, monkeypatch):
    """The Triton losses summed their padding unmasked: an infinite entry of U, or an infinite lam, made 0 * inf
    NaN there, and an infinite loss came out NaN (the CPU path and the reference: inf). A NaN lam is added on the
    diagonal alone, by the ops and by the reference (whose lam * I had made it NaN everywhere)."""
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    gen = torch.Generator().manual_seed(0)
    n, r = 6, 3
    U = torch.rand(n, r, dtype=torch.float64, generator=gen) + 0.1
    X = torch.rand(n, n, dtype=torch.float64, generator=gen)
    X = X + X.mT
    Ui = U.clone()
    Ui[1, 1] = float("inf")
    assert sk.sym_loss(X, Ui).item() == reference.sym_loss(X, Ui).item() == float("inf")
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    assert sk.sparse_layer_loss(X.to_sparse_csr(), U, U, inf)[1].item() == float("inf")
    assert reference.sparse_layer_loss(X, U, U, inf)[1].item() == float("inf")
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    got, want = sk.gram(U, nan), reference.gram(U, nan)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert bool(got.diagonal().isnan().all()) and bool(torch.isfinite(got[~torch.eye(r, dtype=torch.bool)]).all())


def test_padding_keeps_infinities_in_the_block_backward_the_sweep_and_nnls(monkeypatch):
    """Tiles are padded with zeros, and 0 * inf there is NaN: an infinite dY made the block backward's dG, dlam
    and dU NaN where the closed form is infinite; an infinite lam made every column maximum of the SymHALS sweep
    NaN where the reference has 0; NNLS's Triton backward gave a row that the forward made NaN a gradient of 0,
    where its torch path (and the docs) give NaN."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gen = torch.Generator().manual_seed(0)
    n, r = 70, 17
    lam = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    A = torch.eye(r, dtype=torch.float64) + 0.05
    UtU = (torch.linalg.inv(A) - 0.1 * torch.eye(r, dtype=torch.float64))[None]
    Q, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64, generator=gen))
    U = (Q @ torch.linalg.cholesky(UtU[0]).mT)[None].requires_grad_()
    P = torch.rand(1, n, r, dtype=torch.float64, generator=gen) + 0.1
    dY = torch.rand(1, n, r, dtype=torch.float64, generator=gen)
    dY[0, 3, 1] = float("inf")
    Ginv = reference.spd_inverse(reference.gram(U.detach(), 0.1))
    _, _, dG = reference.block_backward(dY, U.detach(), P, Ginv, reference.apply_relu(P, Ginv))
    sk.symnmf_block(U, P, lam).backward(dY)
    assert lam.grad.item() == dG.diagonal(dim1=-2, dim2=-1).sum().item() and torch.isinf(lam.grad)

    W = torch.rand(1, n, 5, dtype=torch.float64, generator=gen) + 0.1
    C, V = torch.rand_like(W), torch.rand_like(W) + 0.1
    B = (torch.eye(5, dtype=torch.float64) * 2 + 0.1)[None]
    for bad in (float("inf"), -float("inf")):
        got, want = sk.hals_sweep(W, C, B, V=V, lam=bad), reference.hals_sweep(W, C, B, V=V, lam=bad)
        torch.testing.assert_close(got[1], want[1], equal_nan=True)

    M = torch.randn(2, 15, 5, dtype=torch.float64, generator=gen)
    G = M.mT @ M
    Cn = torch.randn(2, 70, 5, dtype=torch.float64, generator=gen)
    Cn[0, 3, 1] = float("inf")
    Cn.requires_grad_()
    X = sk.nnls(G, Cn)
    assert bool(X[0, 3].isnan().all())
    X.sum().backward()
    assert bool(Cn.grad[0, 3].isnan().all()) and bool(torch.isfinite(Cn.grad[0, 4:]).all())
