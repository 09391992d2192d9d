"""NetChain: SymNMF-Net's objective in one autograd node against the op-by-op objective (values and gradients),
gradcheck, its use by `fit`, NaN, and where it applies.

Every test runs on both of the chain's paths, each against the op-by-op objective on the same path: "native",
the extension's CPU kernels (the ops take their plain-torch CPU path, no Triton interpreter), and "triton", the
Triton kernels through the interpreter on CPU tensors (the GPU's kernels; the `gpu` case runs them compiled).
"""
import importlib
import warnings

import pytest
import torch

from symnmf import SymNMFNet
from symnmf.net_chain import NetChain

_common = importlib.import_module("symnmf_kernels.ops._common")


@pytest.fixture(autouse=True, params=["native", "triton"])
def path(request, monkeypatch):
    if request.node.get_closest_marker("gpu"):
        if request.param == "native" or not torch.cuda.is_available():
            pytest.skip("the GPU's case: the Triton kernels compiled, on CUDA tensors")
    elif request.param == "native":
        monkeypatch.setattr(_common, "interpreting", lambda: False)
        if not NetChain.applies(torch.eye(2).to_sparse_csr(), torch.ones(2, 1)):
            pytest.skip("the extension's CPU kernels are not built")
    elif not (_common.HAS_TRITON and _common.interpreting()):
        pytest.skip("the Triton path on CPU tensors needs TRITON_INTERPRET=1")
    return request.param


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def sparse_graph(n, seed, dtype=torch.float64, per_row=6):
    """A random symmetric non-negative graph with about per_row entries per row, as an exactly symmetric CSR."""
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, n, generator=g, dtype=dtype) * (torch.rand(n, n, generator=g) < per_row / max(n, 1))
    A = torch.triu(A, 1)
    A = A + A.T + torch.diag(torch.rand(n, generator=g, dtype=dtype))  # no empty row at n = 1
    return A.to_sparse_csr()


def trained_looking_net(X, r, restarts, loss_blocks, mu, seed=0, layers=3):
    """A net initialised on X with weights moved off Algorithm 1's start (so no gradient is zero by symmetry)."""
    net = SymNMFNet(r, n_layers=layers, n_restarts=restarts, random_state=seed, mu=mu, loss_blocks=loss_blocks)
    net.initialize(X)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for P in net.P:
            P.mul_((1 + 0.2 * torch.rand(P.shape, generator=g, dtype=P.dtype)).to(P.device))
        net.lam.mul_(1.05)
    return net


def objective_and_grads(net, X, chain, grad_residual=0.3):
    """(loss, residual, U_L, [dP_1, ..., dP_L, dlam]) of loss.sum() + grad_residual * residual.sum()."""
    X_norm2 = X.values().pow(2).sum()
    S0 = net._start_product(X)
    for p in net.parameters():
        p.grad = None
    loss, residual, U = net._objective(X, X_norm2, S0, NetChain(X, net.U0, S0) if chain else None)
    (loss.sum() + grad_residual * residual.sum()).backward()
    grads = [p.grad.clone() for p in net.P] + [net.lam.grad.clone()]
    return loss.detach(), residual.detach(), U.detach(), grads


@pytest.mark.parametrize("n, r", [(1, 1), (7, 5), (300, 8), (300, 13), (1003, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("restarts, loss_blocks, mu", [(None, "all", 0.0), (3, "last", 0.4)])
def test_chain_matches_the_op_by_op_objective(n, r, dtype, restarts, loss_blocks, mu, path):
    if path == "triton" and n == 1003 and restarts:
        pytest.skip("n = 1003 with one problem on the interpreter: each of its launches is 20 s with three")
    X = sparse_graph(n, seed=n + r, dtype=dtype)
    net = trained_looking_net(X, r, restarts, loss_blocks, mu)
    ref = objective_and_grads(net, X, chain=False)
    got = objective_and_grads(net, X, chain=True)
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    for name, a, b in zip(("loss", "residual", "U_L"), got[:3], ref[:3]):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel(a, b) <= tol, (name, rel(a, b))
    for i, (a, b) in enumerate(zip(got[3], ref[3])):
        assert a.shape == b.shape, i
        assert rel(a, b) <= tol, (i, rel(a, b))


def test_chain_with_the_fused_rank_in_float64_and_a_batch_of_four():
    X = sparse_graph(400, seed=3, per_row=10)
    net = trained_looking_net(X, 16, 4, "all", 0.0, layers=2)
    ref, got = objective_and_grads(net, X, chain=False), objective_and_grads(net, X, chain=True)
    for a, b in zip([*got[:3], *got[3]], [*ref[:3], *ref[3]]):
        assert rel(a, b) <= 1e-11


def test_float32_error_bounded_by_the_op_by_op_error():
    """Against the float64 objective on the same weights, the float32 chain errs by at most twice what the float32
    op-by-op objective does (plus float32's unit rounding)."""
    X64 = sparse_graph(1003, seed=12)
    net64 = trained_looking_net(X64, 5, 2, "all", 0.0)
    exact = objective_and_grads(net64, X64, chain=False)
    X32 = X64.to(torch.float32)
    net32 = SymNMFNet(5, n_layers=3, n_restarts=2, random_state=0).initialize(X32)
    with torch.no_grad():
        for p32, p64 in zip(net32.parameters(), net64.parameters()):
            p32.copy_(p64)
        net32.U0.copy_(net64.U0)
    ops = objective_and_grads(net32, X32, chain=False)
    got = objective_and_grads(net32, X32, chain=True)
    for a, b, e in zip([*got[:3], *got[3]], [*ops[:3], *ops[3]], [*exact[:3], *exact[3]]):
        assert rel(a, e) <= 2 * rel(b, e) + 1.2e-7, (rel(a, e), rel(b, e))


@pytest.mark.parametrize("layers, beta, restarts", [(1, None, None), (1, 0.0, 3), (2, 0.0, None)])
def test_chain_with_one_block_and_without_the_regulariser(layers, beta, restarts):
    X = sparse_graph(300, seed=layers + 10)
    net = SymNMFNet(4, n_layers=layers, n_restarts=restarts, random_state=0, beta=beta).initialize(X)
    with torch.no_grad():
        for P in net.P:
            P.mul_(1 + 0.2 * torch.rand(P.shape, generator=torch.Generator().manual_seed(1), dtype=P.dtype))
    ref, got = objective_and_grads(net, X, chain=False), objective_and_grads(net, X, chain=True)
    for a, b in zip([*got[:3], *got[3]], [*ref[:3], *ref[3]]):
        assert rel(a, b) <= 1e-11


def test_weights_not_contiguous():
    X = sparse_graph(300, seed=11, dtype=torch.float32)
    net = trained_looking_net(X, 5, 3, "all", 0.0)
    with torch.no_grad():
        for i, P in enumerate(net.P):  # the same values, column-major
            net.P[i] = torch.nn.Parameter(P.detach().mT.contiguous().mT)
    assert not any(P.is_contiguous() for P in net.P)
    ref, got = objective_and_grads(net, X, chain=False), objective_and_grads(net, X, chain=True)
    for a, b in zip([*got[:3], *got[3]], [*ref[:3], *ref[3]]):
        assert a.shape == b.shape and rel(a, b) <= 2e-5


def test_gradcheck_in_float64(path):
    if path == "triton":
        pytest.skip("the interpreter's 150 evaluations take minutes; the Triton path's gradients are checked "
                    "against the op-by-op objective's, whose ops gradcheck checks on the Triton path "
                    "(tests/test_symnmf_block.py, tests/test_sparse_loss.py)")
    X = sparse_graph(9, seed=4, per_row=4)
    net = trained_looking_net(X, 2, 2, "all", 0.3, layers=2)
    S0 = net._start_product(X)
    chain = NetChain(X, net.U0, S0)
    P0 = [p.detach().clone().requires_grad_() for p in net.P]
    lam0 = net.lam.detach().clone().requires_grad_()

    def f(lam, *P):
        loss, residual, _ = chain(P, lam, [1.0, 1.0], 0.7, 0.3)
        return loss, residual

    assert torch.autograd.gradcheck(f, (lam0, *P0), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("learn_lam", [True, False])
def test_fit_trains_through_the_chain_as_op_by_op(monkeypatch, learn_lam, path):
    X = sparse_graph(300 if path == "native" else 40, seed=5, per_row=8)
    calls = []
    original = NetChain.__call__

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(NetChain, "__call__", counted)
    fast = SymNMFNet(4, n_layers=3, n_restarts=2, random_state=0, learn_lam=learn_lam).fit(X, epochs=6, tol=None)
    assert len(calls) == 7  # six steps and the last record
    monkeypatch.setattr(NetChain, "applies", staticmethod(lambda X, U0: False))
    slow = SymNMFNet(4, n_layers=3, n_restarts=2, random_state=0, learn_lam=learn_lam).fit(X, epochs=6, tol=None)
    assert len(calls) == 7
    for a, b in zip(fast.history_["loss"], slow.history_["loss"]):
        assert abs(a - b) <= 1e-10 * abs(b)
    for p, q in zip(fast.parameters(), slow.parameters()):
        assert rel(p, q) <= 1e-10
    if not learn_lam:
        lam0 = SymNMFNet(4, n_layers=3, n_restarts=2, random_state=0).initialize(X).lam
        assert torch.equal(fast.lam, lam0)


def test_a_second_backward_gives_the_same_gradients():
    X = sparse_graph(50, seed=9)
    net = trained_looking_net(X, 3, None, "all", 0.0)
    S0 = net._start_product(X)
    loss, _, _ = net._objective(X, X.values().pow(2).sum(), S0, NetChain(X, net.U0, S0))
    first = torch.autograd.grad(loss.sum(), list(net.P), retain_graph=True)
    second = torch.autograd.grad(loss.sum(), list(net.P))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_not_finite_input_gives_nan():
    X = sparse_graph(300, seed=6, dtype=torch.float32)
    net = trained_looking_net(X, 5, None, "all", 0.0)
    with torch.no_grad():
        net.P[1][3, 2] = float("nan")
    loss, residual, U, grads = objective_and_grads(net, X, chain=True)
    assert bool(torch.isnan(loss).all()) and bool(torch.isnan(residual).all())
    assert bool(torch.isnan(grads[-1]).all())
    # G + lam I not positive definite: the inverse is NaN, never zeros
    net = trained_looking_net(X, 5, None, "all", 0.0)
    with torch.no_grad():
        net.lam.fill_(-1e6)
    loss, _, _, grads = objective_and_grads(net, X, chain=True)
    assert bool(torch.isnan(loss).all()) and bool(torch.isnan(grads[0]).any())


def test_where_the_chain_applies(path):
    X = sparse_graph(20, seed=7)
    U0 = torch.rand(20, 2, dtype=torch.float64)
    assert NetChain.applies(X, U0)
    assert NetChain(X, U0, X @ U0).triton == (path == "triton")
    assert not NetChain.applies(X.to_dense(), U0)
    assert not NetChain.applies(sparse_graph(40, seed=7), torch.rand(2, 20, 2, dtype=torch.float64))  # not (n, n)
    # beyond the fused kernels' rank the Triton path is not taken: the chain runs only on the CPU's kernels
    wide = torch.rand(20, _common.MAX_FUSED_R + 1, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ops' one warning of the torch path beyond the fused kernels' rank
        assert NetChain.applies(X, wide) == (path == "native")


def test_a_graph_not_exactly_symmetric_is_refused():
    X = sparse_graph(20, seed=8).to_dense()
    X[0, 1] += 1e-3
    U0 = torch.rand(20, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="exactly symmetric"):
        NetChain(X.to_sparse_csr(), U0, X @ U0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chain_on_a_gpu_matches_the_op_by_op_objective(dtype):
    """The compiled kernels: the chain against the op-by-op objective on CUDA (float32 within twice the op-by-op
    objective's own error against float64, plus float32's rounding), and a fit that replays the chain's step
    from a CUDA graph trains as its eager steps do."""
    X64 = sparse_graph(1003, seed=21, per_row=12).cuda()
    net64 = trained_looking_net(X64, 16, 2, "all", 0.2)
    exact = objective_and_grads(net64, X64, chain=False)
    X = X64.to(dtype)
    net = SymNMFNet(16, n_layers=3, n_restarts=2, random_state=0, mu=0.2).initialize(X)
    with torch.no_grad():
        for p, p64 in zip(net.parameters(), net64.parameters()):
            p.copy_(p64)
        net.U0.copy_(net64.U0)
    assert NetChain(X, net.U0, net._start_product(X)).triton
    ops = objective_and_grads(net, X, chain=False)
    got = objective_and_grads(net, X, chain=True)
    floor = 1e-13 if dtype == torch.float64 else 1.2e-7
    for a, b, e in zip([*got[:3], *got[3]], [*ops[:3], *ops[3]], [*exact[:3], *exact[3]]):
        assert rel(a, e) <= 2 * rel(b, e) + floor, (rel(a, e), rel(b, e))
    eager = SymNMFNet(4, n_layers=3, random_state=0).fit(X, epochs=30, tol=None, cuda_graph=False)
    graphed = SymNMFNet(4, n_layers=3, random_state=0).fit(X, epochs=30, tol=None, cuda_graph=True)
    assert graphed.cuda_graph_ and not eager.cuda_graph_
    for a, b in zip(graphed.history_["loss"], eager.history_["loss"]):
        assert abs(a - b) <= 1e-4 * abs(b)


def test_the_layers_are_freed_by_the_backward_and_guarded_against_changes():
    """The layers' tensors are saved for the backward as autograd saves an op's: freed when it ends (kept on the
    node, they lived until the next step's outputs replaced these: 3 L factors the size of U_0 more than op by op
    through the next step), refused after an in-place change, and U_L, which the chain does not differentiate,
    says so rather than drop its term."""
    X = sparse_graph(60, seed=13)
    net = trained_looking_net(X, 3, 2, "all", 0.0)
    S0 = net._start_product(X)
    chain = NetChain(X, net.U0, S0)
    loss, residual, U = chain(list(net.P), net.lam, [1.0] * 3, 0.5, 0.0)
    node = loss.grad_fn.next_functions[0][0]  # the chain's node, under the reshape to the batch's shape
    factors = [t for t in node.saved_tensors if t is not None and t.shape == (2, 60, 3)]
    assert len(factors) == 3 + 3 * 3 - 1 + 1  # the weights, U, S of each layer and R but the last, R_0
    (loss.sum() + residual.sum()).backward()
    with pytest.raises(RuntimeError, match="freed"):
        node.saved_tensors
    loss, _, U = chain(list(net.P), net.lam, [1.0] * 3, 0.5, 0.0)
    U.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()
    loss, _, U = chain(list(net.P), net.lam, [1.0] * 3, 0.5, 0.0)
    with pytest.raises(RuntimeError, match="not U_L"):
        (loss.sum() + U.sum()).backward()
