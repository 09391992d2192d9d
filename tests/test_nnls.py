"""Batched NNLS by block principal pivoting against scipy.optimize.nnls."""
import sys

import numpy as np
import pytest
import scipy.optimize
import torch

from symnmf.solvers.nnls import nnls_gram


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def scipy_rows(A, Bt):
    """scipy's NNLS of min ||A x - b|| for every column b of Bt, as rows."""
    return np.stack([scipy.optimize.nnls(A, Bt[:, j])[0] for j in range(Bt.shape[1])])


def normal_equations(A, Bt, dtype=torch.float64):
    return torch.tensor(A.T @ A, dtype=dtype), torch.tensor((A.T @ Bt).T, dtype=dtype)


@pytest.mark.parametrize("r", [1, 4, 9, 20])
def test_equals_scipy(r):
    rng = np.random.default_rng(100 + r)
    A = rng.standard_normal((2 * r + 7, r))
    Bt = rng.standard_normal((2 * r + 7, 61))
    expected = scipy_rows(A, Bt)
    B, C = normal_equations(A, Bt)
    X = nnls_gram(B, C).numpy()
    assert rel(X, expected) <= 1e-9
    assert (X >= 0).all()


@pytest.mark.parametrize("r", [5, 16])
def test_warm_start_gives_the_same_solution(r):
    rng = np.random.default_rng(200 + r)
    A = rng.standard_normal((3 * r, r))
    Bt = rng.standard_normal((3 * r, 47))
    expected = scipy_rows(A, Bt)
    B, C = normal_equations(A, Bt)
    # A wrong passive set (random) and a nearly right one must both end at the optimum.
    for X0 in (rng.random((47, r)) * (rng.random((47, r)) < 0.5), expected + 0.01 * (rng.random((47, r)) < 0.2)):
        X = nnls_gram(B, C, X0=torch.tensor(X0)).numpy()
        assert rel(X, expected) <= 1e-9


def test_kkt_conditions_float32():
    rng = np.random.default_rng(3)
    r = 12
    A = rng.standard_normal((40, r))
    Bt = rng.standard_normal((40, 93))
    B, C = normal_equations(A, Bt, torch.float32)
    X = nnls_gram(B, C)
    Y = X @ B - C
    scale = float(C.abs().max())
    assert bool((X >= 0).all())
    assert float(Y.min()) >= -1e-4 * scale  # no negative gradient left on the active set
    assert float((X * Y).abs().max()) <= 1e-4 * scale * float(X.abs().max())  # complementarity
    expected = scipy_rows(A, Bt)
    assert rel(X.double().numpy(), expected) <= 1e-4


def test_all_negative_right_hand_side_gives_zero():
    rng = np.random.default_rng(4)
    A = np.abs(rng.standard_normal((15, 6)))
    Bt = -np.abs(rng.standard_normal((15, 9)))
    B, C = normal_equations(A, Bt)
    X = nnls_gram(B, C)
    assert torch.equal(X, torch.zeros_like(X))


def test_ill_conditioned_gram():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((30, 7)) @ np.diag(np.logspace(0, -3, 7))  # cond(B) ~ 1e6
    Bt = rng.standard_normal((30, 41))
    expected = scipy_rows(A, Bt)
    B, C = normal_equations(A, Bt)
    X = nnls_gram(B, C).numpy()
    assert rel(X, expected) <= 1e-6


def test_singular_gram_is_an_error():
    B = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    C = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="positive definite"):
        nnls_gram(B, C)


def test_bad_input():
    B = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="square"):
        nnls_gram(torch.ones(3, 2, dtype=torch.float64), torch.ones(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="m x r"):
        nnls_gram(B, torch.ones(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="X0"):
        nnls_gram(B, torch.ones(5, 3, dtype=torch.float64), X0=torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        nnls_gram(B, torch.ones(5, 3, dtype=torch.float32))


# ---- the op symnmf_kernels.nnls (Triton kernel under TRITON_INTERPRET=1 on the CPU) and its reference twin ----

import symnmf_kernels as sk  # noqa: E402
from symnmf_kernels import reference  # noqa: E402
from symnmf_kernels.ops.nnls import nnls_op, nnls_passive_solve, nnls_torch  # noqa: E402
nnls_module = sys.modules["symnmf_kernels.ops.nnls"]  # the module (the package exports a function of its name)
from conftest import rel_err  # noqa: E402

OP_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def least_squares(k, m, rows_a=None, batch=(), device="cpu", dtype=torch.float64, generator=None):
    """(A, Bt, G, C) of min ||A x - b|| for the columns b of Bt: G = A^T A, C = Bt^T A."""
    rows_a = rows_a or 2 * k + 3
    A = torch.randn(*batch, rows_a, k, dtype=torch.float64, generator=generator)
    Bt = torch.randn(*batch, rows_a, m, dtype=torch.float64, generator=generator)
    G, C = A.mT @ A, Bt.mT @ A
    return A, Bt, G.to(device, dtype), C.to(device, dtype)


def scipy_solution(A, Bt):
    A, Bt = A.reshape(-1, *A.shape[-2:]).numpy(), Bt.reshape(-1, *Bt.shape[-2:]).numpy()
    out = np.stack([scipy_rows(a, bt) for a, bt in zip(A, Bt)])
    return torch.tensor(out)


def kkt_violation(G, C, X):
    """max of the KKT residuals relative to max |C|: -x, -(G x - c), |x (G x - c)| (all <= 0 at the optimum)."""
    G, C, X = G.double(), C.double(), X.double()
    Y = X @ G - C
    scale = C.abs().max()
    return max(float((-X).max()), float((-Y).max()) / scale, float((X * Y).abs().max() / (scale * X.abs().max())))


@pytest.mark.parametrize("k,m", [(1, 1), (1, 40), (5, 1003), (16, 37)])
def test_op_equals_scipy(device, k, m):
    A, Bt, G, C = least_squares(k, m, device=device)
    X = sk.nnls(G, C)
    assert X.shape == C.shape
    expected = scipy_solution(A, Bt)[0]
    assert rel_err(X, expected) <= OP_TOL[torch.float64]
    assert rel_err(reference.nnls(G, C), expected) <= OP_TOL[torch.float64]
    assert kkt_violation(G, C, X) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_batched_matches_reference_and_kkt(device, dtype):
    A, Bt, G, C = least_squares(9, 29, batch=(3, 1), device=device, dtype=dtype)
    X = sk.nnls(G, C)
    expected = scipy_solution(A, Bt).reshape(3, 1, 29, 9)
    assert rel_err(X, expected) <= OP_TOL[dtype]
    assert rel_err(X, reference.nnls(G.double(), C.double())) <= OP_TOL[dtype]
    assert kkt_violation(G, C, X) <= (1e-5 if dtype == torch.float32 else 1e-12)
    assert int((X > 0).sum()) > 0 and int((X == 0).sum()) > 0  # both sets are exercised


NATIVE = [False] + ([True] if nnls_module._NATIVE_NNLS else [])


@pytest.fixture(params=NATIVE, ids=lambda native: "native" if native else "torch")
def cpu_path(request, monkeypatch):
    """The CPU path with the extension's kernel (native) and without it (the torch operations)."""
    monkeypatch.setattr(nnls_module, "_NATIVE_NNLS", request.param)
    return request.param


@pytest.mark.parametrize("k,m", [(2, 400), (7, 501), (16, 30)])
def test_op_torch_path_matches_scipy(cpu_path, k, m):
    """The CPU path on its own, outside the interpreter: k = 2 has at most 4 passive sets for 400 rows
    (one inverse per set, shared), k = 16 about one set per row (one solve per row)."""
    A, Bt, G, C = least_squares(k, m, batch=(2,))
    X = nnls_torch(G, C, None, 5 * k + 20)
    assert rel_err(X, scipy_solution(A, Bt)) <= OP_TOL[torch.float64]


@pytest.mark.parametrize("k,m", [(5, 300), (48, 37)])
def test_torch_path_chunks_give_the_same_solution(monkeypatch, k, m):
    """The torch path's steps over chunks of rows (a CPU's chunk, and a GPU's 16 times larger) change nothing:
    chunks of 7 rows, and of one row, give bit for bit what one chunk of every row gives, cold and warm-started,
    with the backward's solve; with one problem and with three (whose row products are chunked too)."""
    monkeypatch.setattr(nnls_module, "_NATIVE_NNLS", False)
    gen = torch.Generator().manual_seed(k)
    for batch in ((), (3,)):
        A, Bt, G, C = least_squares(k, m, batch=batch, generator=gen)
        x0 = torch.rand(C.shape, generator=gen, dtype=torch.float64) - 0.5
        dX = torch.randn(C.shape, generator=gen, dtype=torch.float64)
        G3, C3, x03, dX3 = G.reshape(-1, k, k), C.reshape(-1, m, k), x0.reshape(-1, m, k), dX.reshape(-1, m, k)
        out = {}
        for chunk in (1 << 30, 7 * k * k, 1):
            monkeypatch.setattr(nnls_module, "_CHUNK_ELEMENTS", chunk)
            cold = nnls_torch(G3, C3, None, 5 * k + 20)
            out[chunk] = cold, nnls_torch(G3, C3, x03, 5 * k + 20), nnls_module.nnls_backward_torch(G3, cold, dX3)
        for chunk in (7 * k * k, 1):
            for got, want in zip(out[chunk], out[1 << 30]):
                assert torch.equal(got, want), (batch, chunk)
        assert rel_err(out[1 << 30][0].reshape(C.shape), scipy_solution(A, Bt)) <= OP_TOL[torch.float64]


def test_torch_path_chunk_rows():
    """A GPU's steps gather 16 times the rows of a CPU's, at least one row whatever k."""
    assert nnls_module._chunk_rows(64, torch.device("cpu")) == 1024
    assert nnls_module._chunk_rows(64, torch.device("cuda")) == 16 * 1024
    assert nnls_module._chunk_rows(4096, torch.device("cpu")) == 1


@pytest.mark.skipif(not nnls_module._NATIVE_NNLS, reason="the extension's CPU kernel is not built")
@pytest.mark.parametrize("k", [1, 5, 16, 33, 48])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_kernel_matches_torch_path(monkeypatch, k, dtype):
    """The extension's kernel and the torch operations run the same pivoting: the same solutions, cold and
    warm-started, and the same backward solve, on batched problems with both sets populated."""
    gen = torch.Generator().manual_seed(k)
    A, Bt, G, C = least_squares(k, 57, batch=(2,), dtype=dtype, generator=gen)
    x0 = torch.rand(C.shape, generator=gen, dtype=torch.float64).to(dtype) - 0.5
    dX = torch.randn(C.shape, generator=gen, dtype=torch.float64).to(dtype)
    out = {}
    for native in (True, False):
        monkeypatch.setattr(nnls_module, "_NATIVE_NNLS", native)
        cold = nnls_torch(G, C, None, 5 * k + 20)
        warm = nnls_torch(G, C, x0, 5 * k + 20)
        out[native] = cold, warm, nnls_module.nnls_backward_torch(G, cold, dX)
    tol = OP_TOL[dtype] * (10 if dtype == torch.float32 else 1)
    for native, torch_path in zip(out[True], out[False]):
        assert rel_err(native, torch_path) <= tol
    cold = out[True][0]
    assert int((cold > 0).sum()) > 0 and int((cold == 0).sum()) > 0
    assert kkt_violation(G, C, cold) <= (1e-4 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("problems", [1, 3])
@pytest.mark.parametrize("k", [1, 7, 33, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_solves_gather_each_rows_passive_set(problems, k, dtype):
    """One solve per row at its passive set's size (rounded up to the width step; one shared inverse for the
    full sets of a single problem) gives, row for row, the k x k solve restricted to the set: sets of every
    size from empty to full. A Gram that is not positive definite (the last problem's, and with one problem a
    second call) gives NaN in the rows with a non-empty set, and leaves the other problems' rows alone."""
    gen = torch.Generator().manual_seed(k)
    A = torch.randn(problems, 2 * k + 3, k, dtype=torch.float64, generator=gen)
    G = A.mT @ A
    negative = G[-1] - torch.eye(k, dtype=torch.float64) * (torch.linalg.eigvalsh(G[-1])[-1] + 1)
    if problems > 1:
        G[-1] = negative
    m = 4 * k + 5
    problem = torch.randint(0, problems, (m,), generator=gen)
    C = torch.randn(m, k, dtype=torch.float64, generator=gen)
    size = torch.arange(m) % (k + 1)  # 0, 1, ..., k
    F = torch.rand(m, k, generator=gen).argsort(1).argsort(1) < size[:, None]
    X = nnls_module._row_solves(G.to(dtype), problem, C.to(dtype), F)
    assert X.dtype == dtype
    for i in range(m):
        f = F[i].nonzero().squeeze(1)
        if problems > 1 and problem[i] == problems - 1 and f.numel() > 0:
            assert torch.isnan(X[i]).all(), i
            continue
        want = torch.zeros(k, dtype=torch.float64)
        want[f] = torch.linalg.solve(G[problem[i]][f][:, f], C[i, f])
        assert torch.equal(X[i][~F[i]], torch.zeros_like(X[i][~F[i]])), i
        assert rel_err(X[i], want) <= (1e-3 if dtype == torch.float32 else 1e-10), i
    if problems == 1:
        X = nnls_module._row_solves(negative[None].to(dtype), problem, C.to(dtype), F)
        assert torch.isnan(X[size > 0]).all() and torch.equal(X[size == 0], torch.zeros_like(X[size == 0]))


@pytest.mark.parametrize("path", ["native", "kernel", "torch"])
@pytest.mark.parametrize("r", [9, 40])
def test_nnls_gram_on_every_path(monkeypatch, path, r):
    """SymANLS's NNLS on the CPU's kernel, the Triton kernel (the interpreter, r <= 32) and the torch path
    (CUDA beyond r = 32): scipy's solution, cold and warm-started, and the same error for a B that is not
    positive definite."""
    if path == "native" and not nnls_module._NATIVE_NNLS:
        pytest.skip("the extension's CPU kernel is not built")
    if path == "kernel" and (r > sk.ops._launch.NNLS_MAX_K or not sk.ops._common.use_triton(torch.ones(1))):
        pytest.skip("the Triton kernel runs for r <= 32, on CUDA or under TRITON_INTERPRET=1")
    monkeypatch.setattr(nnls_module, "_NATIVE_NNLS", path == "native")
    if path == "torch":
        monkeypatch.setattr(nnls_module, "_kernel_runs", lambda C: False)
    rng = np.random.default_rng(r)
    A = np.abs(rng.standard_normal((2 * r + 7, r)))
    Bt = rng.standard_normal((2 * r + 7, 53))
    expected = scipy_rows(A, Bt)
    B, C = normal_equations(A, Bt)
    assert rel(nnls_gram(B, C).numpy(), expected) <= 1e-9
    X0 = torch.tensor(expected + 0.01 * (rng.random(expected.shape) < 0.2))
    assert rel(nnls_gram(B, C, X0=X0).numpy(), expected) <= 1e-9
    with pytest.raises(ValueError, match="positive definite"):
        nnls_gram(B - 2 * torch.eye(r, dtype=torch.float64) * torch.linalg.eigvalsh(B)[-1], C)


def test_cpu_path_nan_and_not_positive_definite(cpu_path):
    """NaN in C or G, and a G that is not positive definite on a passive set, give NaN on both CPU paths."""
    A, Bt, G, C = least_squares(4, 9)
    C = -C.abs()
    C[3, 1] = float("nan")
    X = nnls_torch(G[None], C[None], None, 40)[0]
    assert torch.isnan(X[3]).all() and torch.equal(X[[0, 1, 2, 4]], torch.zeros(4, 4, dtype=torch.float64))
    G_bad = G.clone()
    G_bad[1, 2] = float("inf")
    assert torch.isnan(nnls_torch(G_bad[None], C[None], None, 40)).all()
    G = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))[None]
    C = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]], dtype=torch.float64)
    X = nnls_torch(G, C, None, 20)[0]
    assert torch.isnan(X[0]).all() and torch.equal(X[1], torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_cpu_path_gradient_of_a_nan_row_is_nan(cpu_path, monkeypatch):
    """The backward of rows the forward made NaN: their passive sets are empty, and the gradient must be NaN (as the
    reference's for a non-finite G, and the Triton kernel's), not the zero of an empty set. Both CPU paths."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    A, Bt, G, C = least_squares(3, 6)
    G_bad = G.clone()
    G_bad[0, 1] = G_bad[1, 0] = float("nan")
    for f in (sk.nnls, reference.nnls):
        Gx, Cx = G_bad.clone().requires_grad_(), C.clone().requires_grad_()
        dG, dC = torch.autograd.grad(f(Gx, Cx).sum(), (Gx, Cx))
        assert torch.isnan(dC).all() and torch.isnan(dG).all()
    C[2, 0] = float("nan")
    Gx, Cx = G.clone().requires_grad_(), C.clone().requires_grad_()
    dG, dC = torch.autograd.grad(sk.nnls(Gx, Cx).sum(), (Gx, Cx))
    assert torch.isnan(dC[2]).all() and bool(torch.isfinite(dC[[0, 1, 3, 4, 5]]).all()) and torch.isnan(dG).all()


@pytest.mark.skipif(not nnls_module._NATIVE_NNLS, reason="the extension's CPU kernel is not built")
def test_native_kernel_is_a_custom_op():
    A, Bt, G, C = least_squares(5, 11, batch=(2,))
    op = torch.ops.symnmf_kernels.nnls_rows
    torch.library.opcheck(op, (G, C, None, 45, 2.0 ** -46, False))
    torch.library.opcheck(op, (G, C, torch.rand_like(C), 45, 2.0 ** -46, True))
    with pytest.raises(RuntimeError, match="C must be"):
        op(G, C[:, :, :3], None, 45, 0.0, False)
    with pytest.raises(RuntimeError, match="solve_only needs x0"):
        op(G, C, None, 45, 0.0, True)


def test_op_non_contiguous_inputs(device):
    A, Bt, G, C = least_squares(6, 45, device=device)
    Cn = C.mT.contiguous().mT  # column-major rows
    Gn = G.mT.contiguous().mT
    x0 = torch.rand(6, 45, dtype=torch.float64, device=device).mT
    assert not Cn.is_contiguous() and not x0.is_contiguous()
    expected = scipy_solution(A, Bt)[0]
    assert rel_err(sk.nnls(Gn, Cn), expected) <= OP_TOL[torch.float64]
    assert rel_err(sk.nnls(Gn, Cn, x0), expected) <= OP_TOL[torch.float64]


def test_op_warm_start_gives_the_same_solution(device):
    A, Bt, G, C = least_squares(8, 70, device=device)
    expected = scipy_solution(A, Bt)[0]
    wrong = torch.rand(70, 8, dtype=torch.float64) * (torch.rand(70, 8) < 0.5)
    near = expected + 0.01 * (torch.rand(70, 8) < 0.2)
    for x0 in (wrong, near, expected):
        assert rel_err(sk.nnls(G, C, x0.to(device)), expected) <= OP_TOL[torch.float64]


def test_op_exact_start_takes_no_pivoting(device):
    """Started from the solution's passive sets, no round is needed: max_rounds=0 still gives the optimum."""
    A, Bt, G, C = least_squares(5, 50, device=device)
    expected = scipy_solution(A, Bt)[0]
    assert rel_err(sk.nnls(G, C, expected.to(device), max_rounds=0), expected) <= OP_TOL[torch.float64]
    # Without the warm start and without rounds the result is not the optimum: the test above can fail.
    assert rel_err(sk.nnls(G, C, max_rounds=0), expected) > 1e-3


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on NaN
def test_op_nan_and_inf_give_nan(device):
    A, Bt, G, C = least_squares(4, 9, device=device)
    C = -C.abs()  # the optimum is x = 0 for every row: NaN must not be hidden as a zero
    C[3, 1] = float("nan")
    C[5, 0] = float("inf")
    X = sk.nnls(G, C)
    assert torch.isnan(X[3]).all() and torch.isnan(X[5]).all()
    others = [i for i in range(9) if i not in (3, 5)]
    assert torch.equal(X[others], torch.zeros_like(X[others]))
    G_bad = G.clone()
    G_bad[1, 2] = float("nan")
    assert torch.isnan(sk.nnls(G_bad, C)).all()
    assert torch.isnan(reference.nnls(G_bad, C)).all()


def test_op_not_positive_definite_gives_nan(device):
    G = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64, device=device))
    C = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64, device=device)
    X = sk.nnls(G, C)
    assert torch.isnan(X[0]).all()  # index 1 enters the passive set, where G is not positive definite
    assert torch.equal(X[1], torch.tensor([1.0, 0.0], dtype=torch.float64, device=device))


def test_op_gradients_match_reference(device):
    A, Bt, G, C = least_squares(6, 40, device=device)
    dX = torch.randn(40, 6, dtype=torch.float64, device=device)
    G1, C1 = G.clone().requires_grad_(), C.clone().requires_grad_()
    dG, dC = torch.autograd.grad(sk.nnls(G1, C1), (G1, C1), dX)
    G2, C2 = G.clone().requires_grad_(), C.clone().requires_grad_()
    dG_ref, dC_ref = torch.autograd.grad(reference.nnls(G2, C2), (G2, C2), dX)
    assert rel_err(dC, dC_ref) <= 1e-10
    assert rel_err(dG, dG_ref) <= 1e-10
    assert float(dC.abs().max()) > 0 and float(dG.abs().max()) > 0


def test_op_gradcheck(device):
    """At a strictly complementary point (the active set is stable under small perturbations)."""
    gen = torch.Generator().manual_seed(11)
    A, Bt, G, C = least_squares(3, 4, generator=gen)
    X = reference.nnls(G, C)
    Y = X @ G - C
    assert float(torch.where(X > 0, X, Y).min()) > 1e-3  # strict complementarity, so finite differences apply
    G, C = G.to(device).requires_grad_(), C.to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda g, c: sk.nnls(g, c), (G, C), fast_mode=True)
    assert torch.autograd.gradcheck(lambda g, c: reference.nnls(g, c), (G, C))


def test_op_gradient_of_least_squares_in_a():
    """Through gram(A) and C = B^T A, the gradient in A of a loss of S = argmin ||B - A S|| matches finite
    differences: the use the Neural NMF layers make of the op."""
    gen = torch.Generator().manual_seed(5)
    A = torch.rand(6, 3, dtype=torch.float64, generator=gen).requires_grad_()
    Bm = torch.rand(6, 4, dtype=torch.float64, generator=gen)
    W = torch.randn(3, 4, dtype=torch.float64, generator=gen)

    def loss(A):
        S = sk.nnls(sk.gram(A), Bm.mT @ A).mT
        return (W * S).sum()

    with torch.no_grad():
        S = sk.nnls(sk.gram(A), Bm.mT @ A)
        assert float((S == 0).sum()) > 0  # some of the active set is there
    assert torch.autograd.gradcheck(loss, (A,), fast_mode=True)


def test_op_is_a_custom_op(device):
    A, Bt, G, C = least_squares(3, 7, device=device)
    torch.library.opcheck(nnls_op, (G.clone().requires_grad_(), C.clone().requires_grad_(), None, 20))
    X = sk.nnls(G, C)
    torch.library.opcheck(nnls_passive_solve, (G, torch.randn_like(C), X))


def test_op_bad_input_names_the_argument():
    G = torch.eye(3, dtype=torch.float64)
    C = torch.ones(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="G must be square"):
        sk.nnls(torch.ones(3, 2, dtype=torch.float64), C)
    with pytest.raises(ValueError, match="C must be"):
        sk.nnls(G, torch.ones(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch shape"):
        sk.nnls(G, torch.ones(2, 5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="C is torch.float32"):
        sk.nnls(G, C.float())
    with pytest.raises(TypeError, match="C must be float32 or float64"):
        sk.nnls(G, C.long())
    with pytest.raises(ValueError, match="x0 must have"):
        sk.nnls(G, C, torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_rounds"):
        sk.nnls(G, C, max_rounds=-1)
    with pytest.raises(TypeError, match="G must be a torch.Tensor"):
        sk.nnls(np.eye(3), C)
