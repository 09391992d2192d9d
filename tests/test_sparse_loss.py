"""Sparse SymNMF losses against the dense float64 formulas, their gradients, and the fused passes."""
import importlib

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops.sparse_loss import (
    sparse_layer_loss,
    sparse_loss_grad,
    sparse_loss_terms,
    sparse_reg_grad,
    sparse_sym_loss,
)
from symnmf_kernels.sparse import as_csr, block_diag

from conftest import INTERPRET, rel_err

loss_mod = importlib.import_module("symnmf_kernels.ops.sparse_loss")


def random_graph(n, nnz_per_row=5.0, seed=0, symmetric=True):
    """A scipy CSR (n, n), duplicate-free random pattern, positive values, some empty rows."""
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=min(1.0, nnz_per_row / n), format="csr", random_state=rng,
                  data_rvs=lambda k: rng.uniform(0.1, 1, k))
    if symmetric:
        A = (A + A.T).tocsr()
    A.sort_indices()
    return A


def dense(A, device="cpu"):
    return torch.from_numpy(A.toarray()).to(device)


def dense_losses(Xd, U, P=None, lam=0.0):
    """The reference on a dense float64 X: ||X - U U^T||^2 and ||P - (X U + lam U)||^2 per problem."""
    return reference.sparse_layer_loss(Xd.double(), U.double(), None if P is None else P.double(), lam)


@pytest.fixture(params=["torch", "native", "triton"])
def path(request, monkeypatch):
    """Run the fused passes through plain torch, the extension's fused CPU kernels (SpMM and passes in one;
    CPU tensors only), or the Triton kernels (interpreter or GPU)."""
    if request.param in ("torch", "native"):
        monkeypatch.setattr(loss_mod, "use_triton", lambda t, r=None: False)
    if request.param == "torch":
        monkeypatch.setattr(loss_mod, "_NATIVE_LOSS", False)
    elif request.param == "native" and not loss_mod._NATIVE_LOSS:
        pytest.skip("the extension's CPU kernels are not built")
    elif not INTERPRET and not torch.cuda.is_available():
        pytest.skip("the Triton kernels need a GPU or TRITON_INTERPRET=1")
    return request.param


def _device_for(path, device):
    if path == "triton" and device.type == "cpu" and not INTERPRET:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    return device


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, r", [(1, 1), (50, 3), (61, 10), (203, 17)])
def test_sym_loss_value_and_gradient(path, device, dtype, n, r):
    _device_for(path, device)
    A = random_graph(n, seed=n + r)
    X = as_csr(A, device=device, dtype=dtype)
    U = (0.3 * torch.rand(n, r, dtype=dtype, device=device)).requires_grad_()
    loss = sparse_sym_loss(X, U)
    assert loss.shape == () and loss.dtype == dtype
    U64 = U.detach().double().requires_grad_()
    ref = dense_losses(dense(A, device), U64)[0]
    (ref_grad,) = torch.autograd.grad(ref, U64)
    (grad,) = torch.autograd.grad(loss, U)
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    assert rel_err(loss, ref) < tol
    assert rel_err(grad, ref_grad) < tol


def test_layer_loss_value_and_gradients(path, device):
    _device_for(path, device)
    n, r = 77, 5
    A = random_graph(n, seed=1)
    X = as_csr(A, device=device, dtype=torch.float64)
    U = torch.rand(n, r, dtype=torch.float64, device=device, requires_grad=True)
    P = torch.rand(n, r, dtype=torch.float64, device=device, requires_grad=True)
    lam = torch.tensor(0.7, dtype=torch.float64, device=device, requires_grad=True)
    loss, reg = sparse_layer_loss(X, U, P, lam)
    ref_loss, ref_reg = dense_losses(dense(A, device), U, P, lam)
    assert rel_err(loss, ref_loss) < 1e-12 and rel_err(reg, ref_reg) < 1e-12
    w = torch.tensor([0.3, 1.7], dtype=torch.float64)  # weighs the two terms differently
    grads = torch.autograd.grad(w[0] * loss + w[1] * reg, (U, P, lam))
    ref_grads = torch.autograd.grad(w[0] * ref_loss + w[1] * ref_reg, (U, P, lam))
    for g, ref in zip(grads, ref_grads):
        assert rel_err(g, ref) < 1e-11


def test_batched_shared_x_and_per_problem_lam(path):
    _device_for(path, torch.device("cpu"))
    A = random_graph(40, seed=2)
    X = as_csr(A, dtype=torch.float64)
    U = torch.rand(2, 3, 40, 4, dtype=torch.float64, requires_grad=True)
    P = torch.rand(2, 3, 40, 4, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(3, dtype=torch.float64, requires_grad=True)  # broadcast over the first batch dimension
    loss, reg = sparse_layer_loss(X, U, P, lam)
    ref_loss, ref_reg = dense_losses(dense(A), U, P, lam)
    assert loss.shape == reg.shape == (2, 3)
    assert rel_err(loss, ref_loss) < 1e-12 and rel_err(reg, ref_reg) < 1e-12
    g = torch.rand(2, 3, dtype=torch.float64)
    grads = torch.autograd.grad((g * (loss + reg)).sum(), (U, P, lam))
    ref_grads = torch.autograd.grad((g * (ref_loss + ref_reg)).sum(), (U, P, lam))
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) < 1e-11


@pytest.mark.parametrize("lam", [0.6, "tensor"])
def test_batched_problems_with_one_scalar_lam(path, device, lam):
    # One lam for every problem: each problem's regulariser and gradients must use it, not only the first's.
    _device_for(path, device)
    A = random_graph(60, seed=3)
    X = as_csr(A, device=device, dtype=torch.float64)
    U = torch.rand(3, 60, 5, dtype=torch.float64, device=device, requires_grad=True)
    P = torch.rand(3, 60, 5, dtype=torch.float64, device=device, requires_grad=True)
    if lam == "tensor":
        lam = torch.tensor(0.6, dtype=torch.float64, device=device, requires_grad=True)
    loss, reg = sparse_layer_loss(X, U, P, lam)
    ref_loss, ref_reg = dense_losses(dense(A, device), U, P, lam)
    for b in range(3):
        assert rel_err(reg[b], ref_reg[b]) < 1e-12 and rel_err(loss[b], ref_loss[b]) < 1e-12
    wrt = (U, P) + ((lam,) if isinstance(lam, torch.Tensor) else ())
    grads = torch.autograd.grad((loss + reg).sum(), wrt)
    ref_grads = torch.autograd.grad((ref_loss + ref_reg).sum(), wrt)
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) < 1e-11


@pytest.mark.parametrize("with_p", [True, False])
def test_gram_from_the_caller_gives_the_same_loss_and_gradients(path, with_p, monkeypatch):
    # gram = U^T U made by the caller (with autograd): the loss takes ||U^T U||^2 from it and that term's
    # gradient reaches U through gram's own backward; values and gradients as without it.
    _device_for(path, torch.device("cpu"))
    asked = []  # with_gram of each fused terms pass: the caller's Gram leaves the pass's own products out
    terms = loss_mod._launch.sparse_loss_terms
    monkeypatch.setattr(loss_mod._launch, "sparse_loss_terms",
                        lambda *args, **kw: asked.append(args[4]) or terms(*args, **kw))
    n, r = 61, 4
    A = random_graph(n, seed=5)
    X = as_csr(A, dtype=torch.float64)
    U = torch.rand(2, n, r, dtype=torch.float64, requires_grad=True)
    P = torch.rand(2, n, r, dtype=torch.float64, requires_grad=True) if with_p else None
    lam = torch.tensor([0.3, 0.9], dtype=torch.float64, requires_grad=True)
    wrt = (U, lam) if P is None else (U, P, lam)
    results = []
    for gram in (None, U.mT @ U):
        loss, reg = sparse_layer_loss(X, U, P, lam, gram=gram)
        total = (loss + (0.6 * reg if reg is not None else 0.0)).sum()
        grads = torch.autograd.grad(total, wrt, allow_unused=True)
        results.append((loss.detach(), grads))
    (l0, g0), (l1, g1) = results
    assert asked == ([True, False] if path == "triton" else [])
    assert rel_err(l1, l0) < 1e-13
    for a, b in zip(g1, g0):
        if b is None:
            assert a is None
        else:
            assert rel_err(a, b) < 1e-12 and float(b.norm()) > 0
    ref = dense_losses(dense(A), U.detach(), None if P is None else P.detach(), lam.detach())[0]
    assert rel_err(l1, ref) < 1e-12


def test_block_diagonal_batch(path):
    _device_for(path, torch.device("cpu"))
    graphs = [random_graph(30, seed=s) for s in range(3)]
    X = block_diag([as_csr(g, dtype=torch.float64) for g in graphs])
    U = torch.rand(3, 30, 6, dtype=torch.float64, requires_grad=True)
    loss = sparse_sym_loss(X, U)
    Xd = torch.stack([dense(g) for g in graphs])
    ref = dense_losses(Xd, U)[0]
    assert loss.shape == (3,) and rel_err(loss, ref) < 1e-12
    assert rel_err(torch.autograd.grad(loss.sum(), U)[0], torch.autograd.grad(ref.sum(), U)[0]) < 1e-11


def test_squared_norm_of_x_cached_whole_and_per_block():
    """||X||^2, which every call of the loss needs, is summed once per X (and per block count of a block-diagonal
    X) in float64."""
    graphs = [random_graph(30, seed=s) for s in range(3)]
    X = block_diag([as_csr(g, dtype=torch.float32) for g in graphs])
    per_block = torch.tensor([float((g.data.astype(np.float32).astype(np.float64) ** 2).sum()) for g in graphs],
                             dtype=torch.float64)  # of the float32 values X holds
    assert rel_err(X.squared_norm(3), per_block) < 1e-12 and X.squared_norm(3).dtype == torch.float64
    assert rel_err(X.squared_norm(), per_block.sum()) < 1e-12 and X.squared_norm().dim() == 0
    assert X.squared_norm() is X.squared_norm() and X.squared_norm(3) is X.squared_norm(3)


def test_cached_data_follow_the_arrays_changed_in_place():
    """What a CSR derives from its arrays (||X||^2 and its per-row and per-block pieces, X^T, symmetry, the
    checks) is derived again after an in-place change or a replaced array, so the loss stays right."""
    A = random_graph(30, seed=7)
    X = as_csr(A, dtype=torch.float64)
    U = torch.rand(2, 30, 3, dtype=torch.float64)
    before = sparse_sym_loss(X, U)
    assert X.is_symmetric() and rel_err(X.squared_norm(), torch.tensor(float((A.data ** 2).sum()), dtype=torch.float64)) < 1e-13
    X.values.mul_(2)  # in place: every value doubled, X stays symmetric
    want = reference.sparse_sym_loss(torch.from_numpy(2 * A.toarray()), U)
    assert rel_err(X.squared_norm(), torch.tensor(float((4 * A.data ** 2).sum()), dtype=torch.float64)) < 1e-13
    assert rel_err(sparse_sym_loss(X, U), want) < 1e-12 and rel_err(sparse_sym_loss(X, U), before) > 0.1
    X.values[0] += 1.0  # no longer symmetric: the cached answer and X^T are dropped
    assert not X.is_symmetric() and torch.equal(X.transpose().to_torch().to_dense(), X.to_torch().to_dense().T)
    X.values = X.values.clone().fill_(1.0)  # a replaced array
    assert float(X.squared_norm()) == X.nnz
    X.validate()
    X.col_indices[0] = 30  # out of range, written in place after a successful check: checked again
    with pytest.raises(ValueError, match="out of range"):
        X.validate()


@pytest.mark.parametrize("blocks", [0, -1, 4, 2.0, True, torch.tensor(2)])
def test_squared_norm_refuses_a_bad_block_count(blocks):
    X = as_csr(random_graph(30, seed=1), dtype=torch.float64)  # 30 rows: 4 does not divide them
    X.squared_norm(1)  # a cached count does not let an equal but wrong one (True) through
    with pytest.raises(ValueError, match="blocks must be a positive int that divides the 30 rows"):
        X.squared_norm(blocks)


def test_reference_takes_a_sparse_or_dense_x():
    A = random_graph(40, seed=5)
    Xs = torch.from_numpy(A.toarray()).to_sparse_csr()
    Xd = dense(A)
    U = torch.rand(2, 40, 3, dtype=torch.float64)
    P = torch.rand(2, 40, 3, dtype=torch.float64)
    for got, want in zip(reference.sparse_layer_loss(Xs, U, P, 0.4), reference.sparse_layer_loss(Xd, U, P, 0.4)):
        assert rel_err(got, want) < 1e-13
    assert rel_err(reference.sparse_sym_loss(Xs.to_sparse_coo(), U), reference.sparse_sym_loss(Xd, U)) < 1e-13
    assert reference.sparse_layer_loss(Xs, U)[1] is None
    assert rel_err(sparse_sym_loss(as_csr(A, dtype=torch.float64), U), reference.sparse_sym_loss(Xs, U)) < 1e-12


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck(symmetric):
    A = random_graph(9, nnz_per_row=3, seed=3, symmetric=symmetric)
    X = as_csr(A, dtype=torch.float64)
    assert X.is_symmetric() == symmetric
    U = torch.rand(9, 2, dtype=torch.float64, requires_grad=True)
    P = torch.rand(9, 2, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, p, l: sparse_layer_loss(X, u, p, l), (U, P, lam))
    assert torch.autograd.gradcheck(lambda u: sparse_sym_loss(X, u), (U,))


def test_general_x_gradient_matches_dense():
    A = random_graph(25, seed=4, symmetric=False)
    U = torch.rand(25, 3, dtype=torch.float64, requires_grad=True)
    P = torch.rand(25, 3, dtype=torch.float64)
    loss, reg = sparse_layer_loss(A, U, P, 0.5)
    ref_loss, ref_reg = dense_losses(dense(A), U, P, 0.5)
    g = torch.autograd.grad(loss + 2 * reg, U)[0]
    assert rel_err(g, torch.autograd.grad(ref_loss + 2 * ref_reg, U)[0]) < 1e-11


def test_backward_of_symmetric_sym_loss_runs_no_spmm(monkeypatch):
    X = as_csr(random_graph(20, seed=5), dtype=torch.float64)
    U = torch.rand(20, 3, dtype=torch.float64, requires_grad=True)
    loss = sparse_sym_loss(X, U)
    calls = []
    real = loss_mod._times_x
    monkeypatch.setattr(loss_mod, "_times_x", lambda *a: calls.append(1) or real(*a))
    loss.backward()
    assert calls == [] and U.grad is not None


def test_routed_through_sym_loss():
    A = random_graph(35, seed=6)
    U = torch.rand(35, 4, dtype=torch.float64)
    Xt = as_csr(A, dtype=torch.float64).to_torch()
    assert rel_err(sk.sym_loss(Xt, U), dense_losses(dense(A), U)[0]) < 1e-12
    assert rel_err(sk.sym_loss(Xt, U), sk.reference.sym_loss(Xt, U)) < 1e-12


def test_float32_loss_near_a_good_fit():
    # A rank-4 X = V V^T and U close to V: the three terms cancel to ~1e-6 of ||X||^2.
    rng = np.random.default_rng(7)
    V = rng.random((60, 4))
    X = sp.csr_matrix(V @ V.T)
    U = torch.from_numpy(V + 1e-3 * rng.standard_normal(V.shape)).float()
    loss = sparse_sym_loss(X, U)
    ref = dense_losses(dense(X), U.double())[0]
    x_sq = float(dense(X).pow(2).sum())
    assert abs(float(loss) - float(ref)) < 1e-6 * x_sq


# ---- the fused passes on their own ------------------------------------------------------------------------------


def _fused_inputs(B, n, r, dtype=torch.float64):
    g = torch.Generator().manual_seed(B * n + r)
    U, S, P, W, Y = (torch.randn(B, n, r, dtype=dtype, generator=g) for _ in range(5))
    G = torch.randn(B, r, r, dtype=dtype, generator=g)
    lam, c1, c2 = (torch.rand(B, dtype=dtype, generator=g) for _ in range(3))
    return U, S, P, W, Y, G, lam, c1, c2


@pytest.mark.skipif(not (INTERPRET or torch.cuda.is_available()), reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, n, r", [(1, 1, 1), (2, 70, 5), (1, 131, 33)])
def test_triton_passes_match_torch(monkeypatch, dtype, B, n, r):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = [t.to(device) for t in _fused_inputs(B, n, r, dtype)]
    U, S, P, W, Y, G, lam, c1, c2 = args
    U = U.mT.contiguous().mT  # a column-major operand: the kernels take strides
    calls = [
        lambda: sparse_loss_terms(U, S, P, lam),
        lambda: sparse_loss_terms(U, S, None, lam),
        lambda: sparse_loss_terms(U, S, P, lam, False),  # the caller has the Gram: an empty (B, 0, 0) in its slot
        lambda: sparse_reg_grad(U, S, P, lam, c1),
        lambda: sparse_loss_grad(U, S, G, W, Y, lam, c1, c2),
        lambda: sparse_loss_grad(U, S, G, None, None, lam, c1, c2),
        lambda: sparse_loss_grad(U, S, G, W, Y, lam, c1, None),  # no U G term: the caller's Gram carries it
    ]
    fused = [f() for f in calls]
    monkeypatch.setattr(loss_mod, "use_triton", lambda t, r=None: False)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for out, f in zip(fused, calls):
        ref = f()
        for a, b in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
            assert a.shape == b.shape and rel_err(a, b) < tol


@pytest.mark.skipif(not (INTERPRET or torch.cuda.is_available()), reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, n, r", [(1, 1, 1), (2, 70, 5), (1, 131, 33), (3, 1003, 16)])
def test_triton_passes_of_the_net_chain(dtype, B, n, r):
    """The passes' forms that SymNMF-Net's chain launches, against float64 torch: the terms pass storing
    R = P - S - lam U beside its sums, and the gradient pass -c (lam R + Y) + cs S taking R and Y = X R with the
    regulariser's coefficient c."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    U, S, P, W, Y, G, lam, c1, c2 = [t.to(device) for t in _fused_inputs(B, n, r, dtype)]
    U = U.mT.contiguous().mT  # a column-major operand: the kernels take strides
    u, s_, p, lam64 = U.double(), S.double(), P.double(), lam.double()[:, None, None]
    R_want = p - s_ - lam64 * u
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    sums, G_none, R = loss_mod._launch.sparse_loss_terms(U, S, P, lam, with_gram=False, write_r=True)
    assert G_none is None and R.shape == U.shape and R.dtype == dtype and R.is_contiguous()
    assert rel_err(R, R_want) < tol
    want = torch.stack([(u * s_).sum((1, 2)), (R_want * R_want).sum((1, 2)), (R_want * u).sum((1, 2))], -1)
    assert rel_err(sums, want) < tol
    assert loss_mod._launch.sparse_loss_terms(U, S, None, lam, with_gram=False, write_r=True)[2] is None
    dU = loss_mod._launch.sparse_loss_grad(S, S, None, W, Y, lam, c1, None, c2)
    dU_want = c1.double()[:, None, None] * s_ - c2.double()[:, None, None] * (lam64 * W.double() + Y.double())
    assert rel_err(dU, dU_want) < tol
    # NaN in R stays NaN in dU, never zero
    W[0, 0, 0] = float("nan")
    assert torch.isnan(loss_mod._launch.sparse_loss_grad(S, S, None, W, Y, lam, c1, None, c2)[0, 0, 0])


def test_opcheck_fused_ops():
    U, S, P, W, Y, G, lam, c1, c2 = _fused_inputs(2, 20, 4)
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_terms.default, (U, S, P, lam))
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_terms.default, (U, S, None, lam))
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_terms.default, (U, S, P, lam, False))
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_reg_grad.default, (U, S, P, lam, c1))
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_grad.default, (U, S, G, W, Y, lam, c1, c2))
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_grad.default, (U, S, G, W, Y, lam, c1, None))


def test_opcheck_native_ops():
    if not loss_mod._NATIVE_LOSS:
        pytest.skip("the extension's CPU kernels are not built")
    A = random_graph(23, seed=11)
    crow, col = torch.from_numpy(A.indptr).long(), torch.from_numpy(A.indices).long()
    values = torch.from_numpy(A.data).double()
    U, P, T = (torch.rand(2, 23, 5, dtype=torch.float64) for _ in range(3))
    lam, c1, c2 = (torch.rand(2, dtype=torch.float64) for _ in range(3))
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_terms_csr.default, (crow, col, values, U, P, lam))
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_terms_csr.default, (crow, col, values, U, None, lam))
    S, R, _ = torch.ops.symnmf_kernels.sparse_loss_terms_csr(crow, col, values, U, P, lam)
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_grad_csr.default,
                          (crow, col, values, T, S, R, lam, c1, c2))
    torch.library.opcheck(torch.ops.symnmf_kernels.sparse_loss_grad_csr.default,
                          (crow, col, values, None, S, R, lam, c1, c2))


def test_native_ops_match_their_formulas():
    """S = X U, R = P - S - lam U and the float64 sums; dU = T + coef_s S - coef_r (lam R + X R)."""
    if not loss_mod._NATIVE_LOSS:
        pytest.skip("the extension's CPU kernels are not built")
    # r up to 64 keeps its float64 sums per column, wider r per row (csrc/cpu/sparse_loss_cpu_rows.h, BlockSums)
    for n, r, B in [(1, 1, 1), (7, 5, 3), (1003, 16, 2), (300, 48, 1), (257, 64, 2), (131, 65, 1), (211, 128, 2)]:
        A = random_graph(n, seed=n + r)
        Xd = dense(A)
        crow, col = torch.from_numpy(A.indptr).long(), torch.from_numpy(A.indices).int()
        for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
            values = torch.from_numpy(A.data).to(dtype)
            U, P, T = (torch.rand(B, n, r, dtype=dtype) for _ in range(3))
            lam, cs, cr = (torch.rand(B, dtype=dtype) for _ in range(3))
            S, R, sums = torch.ops.symnmf_kernels.sparse_loss_terms_csr(crow, col, values, U, P, lam)
            S64, U64, P64 = Xd @ U.double(), U.double(), P.double()
            R64 = P64 - S64 - lam.double()[:, None, None] * U64
            assert rel_err(S, S64) < tol and rel_err(R, R64) < tol
            expect = torch.stack([(S64 * U64).sum((1, 2)), (R64 * R64).sum((1, 2)), (R64 * U64).sum((1, 2))], 1)
            assert sums.dtype == torch.float64 and rel_err(sums, expect) < tol
            # summed in float64 at every r: against the same sums of the S and R it returned, to float64 rounding
            Sd, Rd = S.double(), R.double()
            own = torch.stack([(Sd * U64).sum((1, 2)), (Rd * Rd).sum((1, 2)), (Rd * U64).sum((1, 2))], 1)
            assert rel_err(sums, own) < 1e-12
            dU = torch.ops.symnmf_kernels.sparse_loss_grad_csr(crow, col, values, T, S, R, lam, cs, cr)
            R64 = R.double()
            expect = (T.double() + cs.double()[:, None, None] * S.double()
                      - cr.double()[:, None, None] * (lam.double()[:, None, None] * R64 + Xd @ R64))
            assert rel_err(dU, expect) < tol
            dU = torch.ops.symnmf_kernels.sparse_loss_grad_csr(crow, col, values, None, S, R, lam, cs, cr)  # T = 0
            assert rel_err(dU, expect - T.double()) < tol
    bad = torch.tensor([0, 5], dtype=torch.int64)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.symnmf_kernels.sparse_loss_terms_csr(
            torch.tensor([0, 1]), bad[1:], torch.ones(1), torch.rand(1, 1, 2), None, torch.ones(1))
    S, ones = torch.rand(3, 1, 8), torch.ones(3)  # three problems side by side (float32, r = 8)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.symnmf_kernels.sparse_loss_terms_csr(torch.tensor([0, 1]), bad[1:], torch.ones(1), S, None, ones)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.symnmf_kernels.sparse_loss_grad_csr(torch.tensor([0, 1]), bad[1:], torch.ones(1), None, S, S, ones,
                                                      ones, ones)
    for S in (torch.rand(3, 1, 0), torch.rand(0, 1, 8)):  # r = 0 or no problem: no column read, checked anyway
        ones = torch.ones(S.shape[0])
        with pytest.raises(RuntimeError, match="out of range"):
            torch.ops.symnmf_kernels.sparse_loss_terms_csr(torch.tensor([0, 1]), bad[1:], torch.ones(1), S, None, ones)
        with pytest.raises(RuntimeError, match="out of range"):
            torch.ops.symnmf_kernels.sparse_loss_grad_csr(torch.tensor([0, 1]), bad[1:], torch.ones(1), None, S, S,
                                                          ones, ones, ones)


def test_native_loss_keeps_nan():
    if not loss_mod._NATIVE_LOSS:
        pytest.skip("the extension's CPU kernels are not built")
    X = as_csr(random_graph(30, seed=12), dtype=torch.float64)
    U = torch.rand(30, 3, dtype=torch.float64)
    U[4, 1] = float("nan")
    loss, reg = sparse_layer_loss(X, U, torch.rand(30, 3, dtype=torch.float64), 0.5)
    assert torch.isnan(loss) and torch.isnan(reg)


def test_torch_compile_layer_loss():
    A = random_graph(24, seed=8)
    X = as_csr(A, dtype=torch.float64).to_torch()

    def step(u, p):
        loss, reg = sparse_layer_loss(X, u, p, 0.3)
        return loss + reg

    compiled = torch.compile(step, backend="aot_eager")
    U = torch.rand(24, 3, dtype=torch.float64, requires_grad=True)
    P = torch.rand(24, 3, dtype=torch.float64)
    out = compiled(U, P)
    ref_loss, ref_reg = dense_losses(dense(A), U, P, 0.3)
    assert rel_err(out, ref_loss + ref_reg) < 1e-12
    assert rel_err(torch.autograd.grad(out, U)[0], torch.autograd.grad(ref_loss + ref_reg, U)[0]) < 1e-11


# ---- bad input --------------------------------------------------------------------------------------------------


def test_bad_input():
    X = as_csr(random_graph(10, seed=9), dtype=torch.float64)
    U = torch.rand(10, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="square"):
        sparse_sym_loss(sp.random(10, 12, density=0.2, format="csr"), torch.rand(12, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="P must have U's shape"):
        sparse_layer_loss(X, U, torch.rand(10, 3, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="share U's dtype"):
        sparse_layer_loss(X, U, torch.rand(10, 2), 0.1)
    with pytest.raises(ValueError, match="broadcast"):
        sparse_layer_loss(X, U, U, torch.rand(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="U has shape"):
        sparse_sym_loss(X, torch.rand(11, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(n, r\)"):
        sparse_sym_loss(X, torch.rand(10, dtype=torch.float64))
    with pytest.raises(TypeError, match="use one dtype"):
        sparse_sym_loss(X, U.float())
    with pytest.raises(ValueError, match="gram must be U\\^T U, of shape"):
        sparse_layer_loss(X, U, U, 0.1, gram=torch.eye(3, dtype=torch.float64))


def test_empty_graph_gives_zero_losses(device):
    """A graph of no nodes: zero losses and empty gradients on every path (the Triton kernels launch one
    program that finds no row)."""
    X = as_csr(sp.csr_matrix((0, 0)), device=device, dtype=torch.float64)
    U = torch.zeros(0, 3, dtype=torch.float64, device=device, requires_grad=True)
    loss = sparse_sym_loss(X, U)
    fit, reg = sparse_layer_loss(X, U, torch.zeros(0, 3, dtype=torch.float64, device=device), 0.5)
    assert float(loss.detach()) == 0.0 and float(fit.detach()) == 0.0 and float(reg.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss + fit + reg, U)
    assert grad.shape == (0, 3)


@pytest.mark.gpu
def test_cuda_layer_loss_matches_cpu():
    A = random_graph(2000, nnz_per_row=16, seed=10)
    X = as_csr(A, dtype=torch.float32)
    U = torch.rand(2, 2000, 64, requires_grad=True)
    P = torch.rand(2, 2000, 64, requires_grad=True)
    out = sparse_layer_loss(X, U, P, 0.5)
    Uc, Pc = (t.detach().cuda().requires_grad_() for t in (U, P))
    out_c = sparse_layer_loss(X.to("cuda"), Uc, Pc, 0.5)
    for a, b in zip(out_c, out):
        assert rel_err(a, b) < 1e-5
    g = torch.autograd.grad(sum(t.sum() for t in out), (U, P))
    g_c = torch.autograd.grad(sum(t.sum() for t in out_c), (Uc, Pc))
    for a, b in zip(g_c, g):
        assert rel_err(a, b) < 1e-5


@pytest.mark.gpu
def test_cuda_layer_loss_past_4m_rows():
    # 4.5M rows at r = 64 is 70,313 row tiles of 64: more than one grid axis other than x can hold.
    n, r = 4_500_000, 64
    rows = torch.arange(n, device="cuda").repeat_interleave(2)
    cols = torch.stack([torch.arange(n, device="cuda"), (torch.arange(n, device="cuda") + 1) % n], 1).reshape(-1)
    X = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.rand(2 * n, device="cuda"), (n, n))
    X = (X + X.t()).coalesce().to_sparse_csr()
    U = (0.1 * torch.rand(n, r, device="cuda")).requires_grad_()
    P = torch.rand(n, r, device="cuda", requires_grad=True)
    loss, reg = sparse_layer_loss(X, U, P, 0.5)
    gU, gP = torch.autograd.grad(loss + reg, (U, P))
    # The same maths in plain torch.
    U64, P64 = U.detach().double().requires_grad_(), P.detach().double().requires_grad_()
    X64 = X.to(torch.float64)
    S = X64 @ U64
    ref_loss = X64.values().pow(2).sum() - 2 * (S * U64).sum() + (U64.mT @ U64).pow(2).sum()
    ref_reg = (P64 - S - 0.5 * U64).pow(2).sum()
    rU, rP = torch.autograd.grad(ref_loss + ref_reg, (U64, P64))
    assert rel_err(loss, ref_loss) < 1e-4 and rel_err(reg, ref_reg) < 1e-4
    assert rel_err(gU, rU) < 1e-4 and rel_err(gP, rP) < 1e-4

