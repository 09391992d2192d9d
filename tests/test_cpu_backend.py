"""The torch path of every op (the CPU backend, and r beyond the fused kernels) against the reference twins.

tests/conftest.py makes CPU tensors run the Triton kernels in the interpreter, so the kernel tests never reach
the torch path on a machine without CUDA. Here `use_triton` is switched off for the CPU, and every public op
is checked on that path: values and gradients against `symnmf_kernels.reference` under torch's own autograd,
gradcheck in float64, NaN where the Gram is not positive definite, and the argument checks.
"""
import importlib

import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops import _common
from symnmf_kernels.sparse import as_csr


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    t = torch.ones(2, 2)
    assert not _common.use_triton(t, 2)


def close(a, b, tol=1e-10):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()


def grads(fn, inputs, seed=0):
    """Values and gradients of fn at inputs, with fixed random output gradients."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    gouts = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    gin = torch.autograd.grad(outs, inputs, gouts, allow_unused=True)
    return [o.detach() for o in outs], gin


def same_as_reference(ours, ref, inputs, tol=1e-10):
    o1, g1 = grads(ours, inputs)
    o2, g2 = grads(ref, inputs)
    for a, b in zip(o1, o2):
        close(a, b, tol)
    for a, b in zip(g1, g2):
        if b is None:
            assert a is None or not a.abs().max() > 0
        else:
            close(a, b, tol)


def spd(batch, r, dtype=torch.float64):
    A = torch.randn(*batch, 2 * r, r, dtype=dtype)
    return A.mT @ A / r + 0.5 * torch.eye(r, dtype=dtype)


BATCHES = [(), (3,)]


@pytest.mark.parametrize("batch", BATCHES)
def test_gram(batch):
    U = torch.rand(*batch, 50, 4, dtype=torch.float64)
    lam = torch.rand(batch, dtype=torch.float64)
    same_as_reference(sk.gram, reference.gram, [U, lam])
    assert torch.autograd.gradcheck(sk.gram, (U.requires_grad_(), lam.requires_grad_()))
    close(sk.gram(U.detach(), 0.3), reference.gram(U.detach(), 0.3))


@pytest.mark.parametrize("batch", BATCHES)
def test_spd_inverse(batch):
    A = torch.randn(*batch, 5, 3, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)

    def through(fn):
        return lambda A: fn(A.mT @ A + eye)

    same_as_reference(through(sk.spd_inverse), through(reference.spd_inverse), [A])
    assert torch.autograd.gradcheck(through(sk.spd_inverse), (A.requires_grad_(),))


def test_spd_inverse_not_positive_definite_is_nan():
    G = torch.stack([torch.eye(3, dtype=torch.float64), -torch.eye(3, dtype=torch.float64)])
    inv = sk.spd_inverse(G)
    close(inv[0], torch.eye(3, dtype=torch.float64))
    assert torch.isnan(inv[1]).all()
    with pytest.raises(ValueError, match="not positive definite"):
        sk.spd_inverse(G, check=True)


@pytest.mark.parametrize("batch", BATCHES)
def test_apply_relu(batch):
    P = torch.randn(*batch, 40, 4, dtype=torch.float64)
    Ginv = torch.linalg.inv(spd(batch, 4))
    same_as_reference(sk.apply_relu, reference.apply_relu, [P, Ginv])
    same_as_reference(sk.apply_relu_gram, reference.apply_relu_gram, [P, Ginv])
    assert torch.autograd.gradcheck(sk.apply_relu, (P.requires_grad_(), Ginv.requires_grad_()))
    assert torch.autograd.gradcheck(sk.apply_relu_gram, (P, Ginv))


def test_apply_relu_broadcast_ginv():
    P = torch.randn(3, 20, 4, dtype=torch.float64)
    Ginv = torch.linalg.inv(spd((), 4))
    same_as_reference(sk.apply_relu, reference.apply_relu, [P, Ginv])


def test_apply_relu_gram_only_gram_used():
    P = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    Ginv = torch.linalg.inv(spd((), 4)).requires_grad_()
    _, YtY = sk.apply_relu_gram(P, Ginv)
    g_ours = torch.autograd.grad(YtY.sum(), (P, Ginv))
    _, YtY = reference.apply_relu_gram(P, Ginv)
    g_ref = torch.autograd.grad(YtY.sum(), (P, Ginv))
    for a, b in zip(g_ours, g_ref):
        close(a, b)


@pytest.mark.parametrize("batch", BATCHES)
def test_symnmf_block(batch):
    U = torch.rand(*batch, 60, 4, dtype=torch.float64)
    P = torch.randn(*batch, 60, 4, dtype=torch.float64)
    lam = torch.rand(batch, dtype=torch.float64) + 0.1
    same_as_reference(sk.symnmf_block, reference.symnmf_block, [U, P, lam])
    assert torch.autograd.gradcheck(sk.symnmf_block, tuple(t.requires_grad_() for t in (U, P, lam)))
    with pytest.raises(ValueError, match="negative"):
        sk.symnmf_block(U, P, -1.0)


def test_symnmf_block_not_positive_definite_is_nan():
    U = torch.zeros(10, 3, dtype=torch.float64)
    P = torch.rand(10, 3, dtype=torch.float64)
    assert torch.isnan(sk.symnmf_block(U, P, 0.0)).all()


@pytest.mark.parametrize("batch", BATCHES)
def test_symnmf_block_from_gram(batch):
    U = torch.rand(*batch, 60, 4, dtype=torch.float64)
    P = torch.randn(*batch, 60, 4, dtype=torch.float64)
    lam = torch.rand(batch, dtype=torch.float64) + 0.1

    # Through UtU = U^T U, as every caller builds it (the Gram's gradient is taken symmetric).
    def chain(fn):
        return lambda U, P, lam: fn(U.mT @ U, P, lam)

    same_as_reference(chain(sk.symnmf_block_from_gram), chain(reference.symnmf_block_from_gram), [U, P, lam])
    assert torch.autograd.gradcheck(chain(sk.symnmf_block_from_gram), tuple(t.requires_grad_() for t in (U, P, lam)))


@pytest.mark.parametrize("batch", BATCHES)
def test_sym_loss_dense(batch):
    A = torch.rand(*batch, 30, 30, dtype=torch.float64)
    X = A + A.mT
    U = torch.rand(*batch, 30, 3, dtype=torch.float64)
    same_as_reference(sk.sym_loss, reference.sym_loss, [X, U])
    # a general (non-symmetric) X, differentiable in X too
    same_as_reference(sk.sym_loss, reference.sym_loss, [A, U])
    assert torch.autograd.gradcheck(sk.sym_loss, (A.requires_grad_(), U.requires_grad_()))


def test_sym_loss_dense_accuracy_float32():
    gen = torch.Generator().manual_seed(0)
    U = torch.rand(500, 8, generator=gen)
    X = U @ U.mT + 0.01 * torch.rand(500, 500, generator=gen)
    ref = reference.sym_loss(X.double(), U.double())
    assert abs(sk.sym_loss(X, U).double() - ref) / ref < 1e-4


def random_sparse(n, per_row, seed, symmetric=True):
    gen = torch.Generator().manual_seed(seed)
    m = n * per_row
    i, j = torch.randint(0, n, (m,), generator=gen), torch.randint(0, n, (m,), generator=gen)
    w = torch.rand(m, generator=gen, dtype=torch.float64)
    if symmetric:
        i, j, w = torch.cat([i, j]), torch.cat([j, i]), torch.cat([w, w])
    return torch.sparse_coo_tensor(torch.stack([i, j]), w, (n, n)).coalesce()


@pytest.mark.parametrize("symmetric", [True, False])
def test_sparse_losses(symmetric):
    X = random_sparse(40, 3, 0, symmetric)
    U = torch.rand(2, 40, 3, dtype=torch.float64)
    P = torch.rand(2, 40, 3, dtype=torch.float64)
    lam = torch.rand(2, dtype=torch.float64)
    same_as_reference(lambda U: sk.sym_loss(X, U), lambda U: reference.sparse_sym_loss(X, U), [U], tol=1e-9)
    same_as_reference(lambda U, P, lam: sk.sparse_layer_loss(X, U, P, lam),
                      lambda U, P, lam: reference.sparse_layer_loss(X, U, P, lam), [U, P, lam], tol=1e-9)
    assert torch.autograd.gradcheck(lambda U, P, lam: sk.sparse_layer_loss(X, U, P, lam),
                                    tuple(t.requires_grad_() for t in (U, P, lam)))


@pytest.mark.parametrize("r", [1, 3, 4, 8, 16, 24, 32, 40, 64, 100, 128, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_widths(r, dtype):
    # Every fixed-width accumulator of csrc/cpu/spmm_cpu_rows.h and the chunked widths between them.
    X = random_sparse(300, 5, r).to(dtype)
    U = torch.rand(300, r, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    close(sk.spmm(X, U), (X.to_dense() @ U), tol)
    U3 = torch.rand(2, 300, r, dtype=dtype)
    close(sk.spmm(X, U3), X.to_dense() @ U3, tol)


def test_spmm_int32_indices_and_empty_rows():
    X = random_sparse(200, 2, 1).to_sparse_csr()
    A = as_csr(X)
    crow, col = A.crow_indices.to(torch.int32), A.col_indices.to(torch.int32)
    U = torch.rand(200, 8, dtype=torch.float64)
    out = torch.ops.symnmf_kernels.spmm_csr(crow, col, A.values, U)
    close(out, X.to_dense() @ U)
    empty = torch.ops.symnmf_kernels.spmm_csr(torch.zeros(5, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                                              torch.zeros(0, dtype=torch.float64), U[:7])
    assert empty.shape == (4, 8) and not empty.abs().max() > 0


@pytest.mark.parametrize("r", [1, 8, 16, 17, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mkl_is_faster", [True, False])
def test_spmm_goes_to_torch_where_it_is_faster(monkeypatch, r, dtype, mkl_is_faster):
    """Where MKL's product is the faster (an Intel processor), a CPU forward at r <= 8 with int32 column indices
    runs torch.sparse.mm; anything else, and any product U's gradient needs, the extension. Both give the
    product, NaN included."""
    spmm_module = importlib.import_module("symnmf_kernels.ops.spmm")  # the op's name shadows its module
    monkeypatch.setattr(spmm_module, "_MKL_IS_FASTER", mkl_is_faster)
    X = random_sparse(400, 6, r).to(dtype)
    A = as_csr(X)
    A = type(A)(A.crow_indices, A.col_indices.to(torch.int32), A.values, A.shape)
    U = torch.rand(400, r, dtype=dtype)
    U[7, 0] = float("nan")
    calls = []
    real = torch.sparse.mm
    monkeypatch.setattr(torch.sparse, "mm", lambda *a: calls.append(1) or real(*a))
    out = sk.spmm(A, U)
    expected_torch = r <= 8 and mkl_is_faster
    assert bool(calls) == expected_torch
    native = torch.ops.symnmf_kernels.spmm_csr(A.crow_indices, A.col_indices, A.values, U)
    assert torch.equal(torch.isnan(out), torch.isnan(native)) and bool(torch.isnan(out).any())
    finite = ~torch.isnan(native)
    close(out[finite], native[finite], 1e-5 if dtype == torch.float32 else 1e-12)
    calls.clear()
    V = U.clone().requires_grad_()
    sk.spmm(A, V).sum().backward()  # autograd: the extension's op, whose backward is X^T grad
    assert not calls and V.grad is not None
    calls.clear()
    sk.spmm(as_csr(X), U)  # int64 column indices: torch's own kernel would be slower
    assert not calls


def test_mkl_is_faster_only_on_intel(monkeypatch):
    """The small-r dispatch to MKL follows the processor's vendor as /proc/cpuinfo (or the platform) names it."""
    import builtins
    import io

    spmm_module = importlib.import_module("symnmf_kernels.ops.spmm")
    real_open = builtins.open
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    for vendor, expected in (("GenuineIntel", True), ("AuthenticAMD", False)):
        text = f"processor\t: 0\nvendor_id\t: {vendor}\n"
        monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(text) if path == "/proc/cpuinfo"
                            else real_open(path, *a, **k))
        assert spmm_module._mkl_is_faster_here() is expected

    def no_cpuinfo(path, *a, **k):
        if path == "/proc/cpuinfo":
            raise OSError("no /proc here")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    for processor, expected in (("Intel64 Family 6 Model 85", True), ("AMD64 Family 25", False), ("arm", False)):
        monkeypatch.setattr(spmm_module.platform, "processor", lambda p=processor: p)
        assert spmm_module._mkl_is_faster_here() is expected
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    monkeypatch.setattr(spmm_module.platform, "processor", lambda: "Intel64")
    assert spmm_module._mkl_is_faster_here() is False


@pytest.mark.parametrize("r", [5, 8, 10])
@pytest.mark.parametrize("batch", [2, 4, 5, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_rows_are_bitwise_those_of_each_problem_alone(r, batch, dtype, threads):
    """The CPU kernels may multiply a batch's problems side by side (float32 r = 8: one pass over X's nonzeros for
    up to four problems); each problem's rows must still be exactly what it gets alone, sums included."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_batch_rows_alone(r, batch, dtype)
    finally:
        torch.set_num_threads(before)


def check_batch_rows_alone(r, batch, dtype):
    ops = torch.ops.symnmf_kernels
    X = random_sparse(301, 6, batch + r).to(dtype)
    A = as_csr(X)
    csr = (A.crow_indices, A.col_indices, A.values)
    gen = torch.Generator().manual_seed(r * 10 + batch)
    U, P, T = (torch.rand(batch, 301, r, generator=gen, dtype=dtype) for _ in range(3))
    lam, cs, cr = (torch.rand(batch, generator=gen, dtype=dtype) for _ in range(3))
    out = ops.spmm_csr(*csr, U)
    assert torch.equal(out, torch.stack([ops.spmm_csr(*csr, U[b]) for b in range(batch)]))
    close(out, X.to_dense() @ U, 1e-5 if dtype == torch.float32 else 1e-12)
    S, R, sums = ops.sparse_loss_terms_csr(*csr, U, P, lam)
    alone = [ops.sparse_loss_terms_csr(*csr, U[b:b + 1], P[b:b + 1], lam[b:b + 1]) for b in range(batch)]
    for got, parts in zip((S, R, sums), zip(*alone)):
        assert torch.equal(got, torch.cat(parts))
    for T_b in (T, None):
        dU = ops.sparse_loss_grad_csr(*csr, T_b, S, R, lam, cs, cr)
        one = [ops.sparse_loss_grad_csr(*csr, None if T_b is None else T_b[b:b + 1], S[b:b + 1], R[b:b + 1],
                                        lam[b:b + 1], cs[b:b + 1], cr[b:b + 1]) for b in range(batch)]
        assert torch.equal(dU, torch.cat(one))


def test_spmm_bad_indices_raise_runtime_error():
    U = torch.rand(3, 8)
    crow = torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.symnmf_kernels.spmm_csr(crow, torch.tensor([0, 5, 1]), torch.ones(3), U)
    with pytest.raises(RuntimeError, match="out of range"):  # a batch, side by side at r = 8
        torch.ops.symnmf_kernels.spmm_csr(crow, torch.tensor([0, 5, 1]), torch.ones(3), torch.rand(4, 3, 8))
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch.ops.symnmf_kernels.spmm_csr(torch.tensor([0, 2, 1, 3]), torch.tensor([0, 1, 1]), torch.ones(3), U)
    for empty in (torch.rand(3, 0), torch.rand(0, 3, 8)):  # no column read by the row loops: checked all the same
        with pytest.raises(RuntimeError, match="out of range"):
            torch.ops.symnmf_kernels.spmm_csr(crow, torch.tensor([0, 5, 1]), torch.ones(3), empty)


@pytest.mark.parametrize("op", ["symnmf_block", "symnmf_block_from_gram", "apply_relu", "gram", "spd_inverse"])
def test_compile_traces_the_torch_path(op):
    """torch.compile of each op's torch path gives the reference's values and gradients. (torch 2.11 traced
    an in-place ReLU inside the ops' autograd Functions wrongly: zero gradients, correct values.)"""
    gen = torch.Generator().manual_seed(5)
    U = torch.rand(50, 4, generator=gen, dtype=torch.float64)
    P = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    G = spd((), 4, torch.float64)
    calls = {
        "symnmf_block": (lambda m, U, P, G: m.symnmf_block(U, P, 0.5), (U, P)),
        "symnmf_block_from_gram": (lambda m, U, P, G: sum(t.sum() for t in m.symnmf_block_from_gram(G, P, 0.5)),
                                   (P, G)),
        "apply_relu": (lambda m, U, P, G: m.apply_relu(P, G), (P, G)),
        "gram": (lambda m, U, P, G: m.gram(U, 0.5), (U,)),
        "spd_inverse": (lambda m, U, P, G: m.spd_inverse(G), (G,)),
    }
    f, wrt = calls[op]
    for t in wrt:
        t.requires_grad_()
    torch._dynamo.reset()
    out = torch.compile(lambda U, P, G: f(sk, U, P, G).sum(), backend="aot_eager")(U, P, G)
    grads = torch.autograd.grad(out, wrt)
    expected = f(reference, U, P, G).sum()
    close(out.detach(), expected.detach())
    for g, g_ref in zip(grads, torch.autograd.grad(expected, wrt)):
        assert g_ref.abs().max() > 0
        close(g, g_ref)


# ---- the fast paths without autograd (one problem, plain CPU tensors) ------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_grad_single_problem_matches_reference(dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    gen = torch.Generator().manual_seed(3)
    U = torch.rand(60, 4, generator=gen, dtype=dtype)
    P = torch.randn(60, 4, generator=gen, dtype=dtype)
    G = spd((), 4, dtype)
    lam = torch.tensor(0.3, dtype=dtype)
    with torch.no_grad():
        close(sk.gram(U, lam), reference.gram(U, lam), tol)
        close(sk.gram(U, 0.3), reference.gram(U, 0.3), tol)
        close(sk.spd_inverse(G), reference.spd_inverse(G), tol)
        close(sk.apply_relu(P, G), reference.apply_relu(P, G), tol)
        close(sk.symnmf_block(U, P, lam), reference.symnmf_block(U, P, lam), tol)
        for a, b in zip(sk.symnmf_block_from_gram(U.mT @ U, P, lam),
                        reference.symnmf_block_from_gram(U.mT @ U, P, lam)):
            close(a, b, tol)
        # a batch of lam wider than the Gram's: one r x r Gram for every problem
        lam3 = torch.tensor([0.1, 0.5, 2.0], dtype=dtype)
        P3 = P.expand(3, 60, 4)
        for a, b in zip(sk.symnmf_block_from_gram(U.mT @ U, P3, lam3),
                        reference.symnmf_block_from_gram(U.mT @ U, P3, lam3)):
            close(a, b, tol)
        X = random_sparse(60, 3, 1).to(dtype)
        close(sk.sym_loss(X, U), reference.sparse_sym_loss(X, U), 1e-4 if dtype == torch.float32 else 1e-9)
        U2 = torch.rand(2, 60, 4, generator=gen, dtype=dtype)
        close(sk.sym_loss(X, U2), reference.sparse_sym_loss(X, U2), 1e-4 if dtype == torch.float32 else 1e-9)


def test_no_grad_nan_propagates():
    U = torch.rand(20, 3, dtype=torch.float64)
    U[4, 1] = float("nan")
    P = torch.randn(20, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.isnan(sk.gram(U, 0.5)).any()
        assert torch.isnan(sk.symnmf_block(U, P, 0.5)).all()
        assert torch.isnan(sk.spd_inverse(-torch.eye(3, dtype=torch.float64))).all()
        assert torch.isnan(sk.symnmf_block_from_gram(U.mT @ U, P, 0.5)[0]).all()
        Ginv = torch.eye(3, dtype=torch.float64)
        Ginv[0, 0] = float("nan")
        Y = sk.apply_relu(P, Ginv)
        assert torch.isnan(Y[:, 0]).all() and not torch.isnan(Y[:, 1:]).any()
        X = random_sparse(20, 3, 2)
        assert torch.isnan(sk.sym_loss(X, U))


def test_no_grad_bad_input_still_named():
    P, Ginv = torch.rand(10, 3), torch.eye(3)
    with torch.no_grad():
        with pytest.raises(TypeError, match="P must be float32 or float64"):
            sk.apply_relu(P.long(), Ginv.long())
        with pytest.raises(ValueError, match="P must have at least 2 dimensions"):
            sk.apply_relu(torch.rand(3), Ginv)
        with pytest.raises(TypeError, match="Ginv is torch.float64 but P is torch.float32"):
            sk.apply_relu(P, Ginv.double())
        with pytest.raises(ValueError, match="Ginv must be r x r"):
            sk.apply_relu(P, torch.eye(4))
        with pytest.raises(ValueError, match="P has an empty dimension"):
            sk.apply_relu(torch.rand(0, 3), Ginv)
        with pytest.raises(TypeError, match="Ginv must be a dense tensor"):
            sk.apply_relu(P, Ginv.to_sparse())
        with pytest.raises(ValueError, match="lam = -1.0 is negative"):
            sk.gram(P, torch.tensor(-1.0))
        X = random_sparse(10, 2, 0).float()
        with pytest.raises(ValueError, match="lam must be finite"):
            sk.sparse_layer_loss(X, P, None, float("nan"))
        with pytest.raises(TypeError, match="lam must be a float or a tensor"):
            sk.sparse_layer_loss(X, P, None, "0.5")
        with pytest.raises(ValueError, match="X is 10 x 10 but U has shape"):
            sk.sym_loss(X, torch.rand(9, 3))


def test_sparse_loss_one_problem_shapes_and_grad():
    X = random_sparse(30, 3, 4)
    U = torch.rand(30, 3, dtype=torch.float64)
    ref = reference.sparse_sym_loss(X, U)
    with torch.no_grad():
        assert sk.sym_loss(X, U).shape == ()
        close(sk.sym_loss(X, U[None]), ref.reshape(1), 1e-9)
        loss, reg = sk.sparse_layer_loss(X, U)
        assert reg is None
        close(loss, ref, 1e-9)
    # a lam that requires grad keeps the autograd path, as does U
    lam = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    loss, _ = sk.sparse_layer_loss(X, U, None, lam)
    assert loss.requires_grad
    close(loss.detach(), ref, 1e-9)


# ---- the extension's tall-skinny products inside the ops (csrc/cpu/gram_cpu.cpp) ------------------------------

gram_module = importlib.import_module("symnmf_kernels.ops.gram")


@pytest.fixture
def row_loops_everywhere(monkeypatch):
    """The row loops taken at every size (not only from _TALL_MIN_ROWS rows), counting the calls they take."""
    if not gram_module._NATIVE_TALL:
        pytest.skip("the extension's CPU kernels are not built")
    monkeypatch.setattr(gram_module, "_TALL_MIN_ROWS", 1)
    taken = []
    real = gram_module._tall_native

    def counted(*args):
        ok = real(*args)
        taken.append(ok)
        return ok

    monkeypatch.setattr(gram_module, "_tall_native", counted)
    return taken


@pytest.mark.parametrize("r", [1, 5, 10, 16])  # float64: the loops take ranks 1-10 and 16
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 37)])
def test_ops_through_the_row_loops(row_loops_everywhere, shape, r):
    gen = torch.Generator().manual_seed(r + shape[-1])
    U = torch.rand(*shape, r, generator=gen, dtype=torch.float64)
    P = torch.randn(*shape, r, generator=gen, dtype=torch.float64)
    lam = torch.rand(shape[:-1], generator=gen, dtype=torch.float64) + 0.5
    Ginv = torch.linalg.inv(spd(shape[:-1], r))
    same_as_reference(sk.gram, reference.gram, [U, lam])
    same_as_reference(sk.apply_relu, reference.apply_relu, [P, Ginv])
    same_as_reference(sk.apply_relu_gram, reference.apply_relu_gram, [P, Ginv])
    same_as_reference(sk.symnmf_block, reference.symnmf_block, [U, P, lam])

    def chain(fn):
        return lambda U, P, lam: fn(U.mT @ U, P, lam)

    same_as_reference(chain(sk.symnmf_block_from_gram), chain(reference.symnmf_block_from_gram), [U, P, lam])
    assert torch.autograd.gradcheck(chain(sk.symnmf_block_from_gram), tuple(t.requires_grad_() for t in (U, P, lam)))
    assert torch.autograd.gradcheck(sk.apply_relu_gram, (P, Ginv.requires_grad_()))
    assert any(row_loops_everywhere), "the row loops never ran"


def test_sparse_layer_loss_through_the_row_loops(row_loops_everywhere):
    X = random_sparse(301, 5, 0, True)
    U, P = (torch.rand(2, 301, 5, dtype=torch.float64) for _ in range(2))
    lam = torch.rand(2, dtype=torch.float64)
    same_as_reference(lambda U, P, lam: sk.sparse_layer_loss(X, U, P, lam),
                      lambda U, P, lam: reference.sparse_layer_loss(X, U, P, lam), [U, P, lam], tol=1e-9)
    assert any(row_loops_everywhere), "the row loops never ran"


def test_float32_ops_through_the_row_loops_stay_within_torch_error(row_loops_everywhere):
    """float32 through the row loops: within twice the error of the same maths in float32 torch, both against
    float64 (values and gradients of a block)."""
    gen = torch.Generator().manual_seed(11)
    U, P = (torch.rand(3, 1003, 10, generator=gen) for _ in range(2))
    lam = torch.full((3,), 0.7)

    def run(fn, dtype):
        ins = [t.detach().to(dtype).clone().requires_grad_() for t in (U, P, lam)]
        Y = fn(*ins)
        Y.backward(torch.ones_like(Y))
        return [Y.detach()] + [t.grad for t in ins]

    ours = run(sk.symnmf_block, torch.float32)
    assert any(row_loops_everywhere), "the row loops never ran"
    fast, want = run(reference.symnmf_block, torch.float32), run(reference.symnmf_block, torch.float64)
    for a, f, w in zip(ours, fast, want):
        err = float((a.double() - w).norm() / w.norm())
        assert err <= 2 * float((f.double() - w).norm() / w.norm()) + 1e-6
