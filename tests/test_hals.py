"""The SymHALS sweep, both backends, against reference.hals_sweep and each other.

On a CPU-only machine the Triton path runs through Triton's interpreter
(TRITON_INTERPRET=1, as in CI); on a CUDA machine it runs on the GPU.
"""
import os

import pytest
import torch

from symnmf_kernels import reference
from symnmf_kernels.ops import hals as hals_ops
from symnmf_kernels.ops.hals import ZERO_COLUMN_FILL, hals_sweep, hals_sweep_, revive_zero_columns_

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1",
    reason="the Triton kernel needs CUDA or TRITON_INTERPRET=1",
)


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def hals_inputs(n, r, dtype, seed, lam=0.3, with_v=False, device=DEVICE):
    """W, C = X V + lam V, B = V^T V + lam I from a random symmetric non-negative X (and X V, V)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, n, generator=g, dtype=torch.float64)
    X = X + X.T
    V = torch.rand(n, r, generator=g, dtype=torch.float64)
    W = torch.rand(n, r, generator=g, dtype=torch.float64)
    B = V.T @ V + lam * torch.eye(r, dtype=torch.float64)
    C = X @ V + lam * V
    out = (W, C, B, X @ V, V) if with_v else (W, C, B)
    return [t.to(device=device, dtype=dtype) for t in out]


@needs_triton
@pytest.mark.parametrize("n", [1, 7, 203])
@pytest.mark.parametrize("r", [1, 5, 16])
def test_triton_matches_torch_float32(n, r):
    W, C, B = hals_inputs(n, r, torch.float32, seed=10 * n + r)
    W_triton, max_triton = hals_sweep(W, C, B, backend="triton")
    W_torch, max_torch = hals_sweep(W, C, B, backend="torch")
    assert rel(W_triton, W_torch) <= 1e-5
    assert rel(max_triton, max_torch) <= 1e-5
    assert bool((W_triton >= 0).all())


@needs_triton
@pytest.mark.parametrize("r", [5, 16])
def test_right_hand_side_formed_in_the_kernel(r):
    """With V given, the sweep reads X V and V and forms C = X V + lam V itself."""
    W, C, B, XV, V = hals_inputs(203, r, torch.float32, seed=r, lam=0.3, with_v=True)
    expected, _ = hals_sweep(W, C, B, backend="torch")
    for backend in ("triton", "torch"):
        out, _ = hals_sweep(W, XV, B, V=V, lam=0.3, backend=backend)
        assert rel(out, expected) <= 1e-5


@needs_triton
def test_triton_matches_torch_float64():
    W, C, B = hals_inputs(131, 9, torch.float64, seed=1)
    W_triton, _ = hals_sweep(W, C, B, backend="triton")
    W_torch, _ = hals_sweep(W, C, B, backend="torch")
    assert rel(W_triton, W_torch) <= 1e-12


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("with_v", [False, True])
def test_matches_reference(backend, with_v):
    W, C, B, XV, V = hals_inputs(97, 6, torch.float64, seed=6, with_v=True)
    C[:, 4] = -1e3  # a column the sweep zeroes, then revives
    rhs, extra = (XV, dict(V=V, lam=0.3)) if with_v else (C, {})
    if with_v:
        rhs = rhs.clone()
        rhs[:, 4] = -1e3
    want, want_max = reference.hals_sweep(W, rhs, B, **extra)
    got, got_max = hals_sweep(W, rhs, B, backend=backend, **extra)
    # Formed in the kernel, C = X V + lam V may round differently (a fused multiply-add on the GPU), and the
    # sweep's cancellation C_k - W B_k amplifies that rounding.
    tol = 1e-9 if with_v and backend == "triton" else 1e-12
    assert rel(got, want) <= tol and rel(got_max, want_max) <= tol
    W_in_place = W.clone()
    assert rel(hals_sweep_(W_in_place, rhs, B, backend=backend, **extra), want_max) <= tol
    assert rel(W_in_place, want) <= tol


def _batch_inputs(P, n, r, dtype, seed, lam=0.3):
    """P problems of `hals_inputs` stacked: W, X V, B, V of shapes (P, n, r) and (P, r, r)."""
    parts = [hals_inputs(n, r, dtype, seed=seed + p, lam=lam, with_v=True) for p in range(P)]
    return [torch.stack([q[i] for q in parts]) for i in (0, 3, 2, 4)]


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("n", [1, 7, 203])
@pytest.mark.parametrize("r", [1, 5, 16])
def test_batch_of_factors_matches_reference(backend, P, n, r):
    """A batch (P, n, r), each factor with its own B, against the reference sweeping each one; one factor of
    the batch has a column driven to zero (revived from its own maximum, not the batch's)."""
    W, XV, B, V = _batch_inputs(P, n, r, torch.float64, seed=100 * n + r)
    XV[-1, :, r - 1] = -1e3
    want, want_max = reference.hals_sweep(W, XV, B, V=V, lam=0.3)
    got = W.clone()
    got_max = hals_sweep_(got, XV, B, V=V, lam=0.3, backend=backend)
    tol = 1e-9 if backend == "triton" else 1e-12  # C = X V + lam V formed in the kernel (see above)
    assert got_max.shape == (P, r)
    assert rel(got, want) <= tol and rel(got_max, want_max) <= tol
    fill = ZERO_COLUMN_FILL * float(want[-1].max())
    assert abs(float(got[-1, 0, r - 1]) - fill) <= 1e-9 * fill


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_batch_of_strided_factors(backend):
    """A batch whose factors interleave in memory ((n, P, r) storage viewed as (P, n, r)), float32."""
    W, XV, B, V = _batch_inputs(3, 57, 5, torch.float32, seed=7)
    want, want_max = reference.hals_sweep(W.double(), XV.double(), B.double(), V=V.double(), lam=0.3)
    got = W.transpose(0, 1).contiguous().transpose(0, 1)
    assert not got.is_contiguous()
    got_max = hals_sweep_(got, XV.transpose(0, 1).contiguous().transpose(0, 1), B, V=V, lam=0.3, backend=backend)
    assert rel(got.double(), want) <= 1e-5 and rel(got_max.double(), want_max) <= 1e-5


def test_torch_sweep_is_coordinate_minimisation():
    """Each column update is the exact minimiser of the quadratic in that column, clipped at 0."""
    W, C, B = [t.cpu().double() for t in hals_inputs(37, 4, torch.float64, seed=2)]
    out, _ = hals_sweep(W, C, B, backend="torch")
    expected = W.clone()
    for k in range(4):
        others = expected @ B[:, k] - expected[:, k] * B[k, k]
        expected[:, k] = torch.clamp((C[:, k] - others) / B[k, k], min=0)
    assert rel(out, expected) <= 1e-13


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_zero_column_is_revived(backend):
    W, C, B = hals_inputs(53, 6, torch.float32, seed=3)
    C[:, 2] = -1e3  # drives column 2 to zero for every row
    out, colmax = hals_sweep(W, C, B, backend=backend)
    fill = ZERO_COLUMN_FILL * float(out.max())
    assert torch.equal(out[:, 2], torch.full_like(out[:, 2], out[0, 2].item()))
    assert abs(out[0, 2].item() - fill) <= 1e-6 * fill
    assert abs(colmax[2].item() - fill) <= 1e-6 * fill
    # Without reviving the column stays exactly zero.
    out_raw, colmax_raw = hals_sweep(W, C, B, revive=False, backend=backend)
    assert float(out_raw[:, 2].abs().max()) == 0.0 and float(colmax_raw[2]) == 0.0


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_in_a_zero_column_is_not_revived_away(device, backend):
    # Column 2 is driven to zero in every row but one, which is NaN: its maximum is NaN, not zero, so the
    # revival of all-zero columns leaves it alone (a GPU's max instruction alone would have returned 0).
    W, C, B = hals_inputs(53, 6, torch.float32, seed=3, device=device)
    C[:, 2] = -1e3
    C[5, 2] = float("nan")
    out, colmax = hals_sweep(W, C, B, backend=backend)
    assert bool(torch.isnan(out[5, 2])) and bool(torch.isnan(colmax[2]))
    assert float(out[torch.arange(53, device=device) != 5, 2].abs().max()) == 0.0


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_or_inf_in_the_factor_stays_non_finite(device, backend):
    """A NaN or an infinity already in W (in the column being updated, whose own term the Triton sweep's one
    reduction leaves out) makes its row NaN from there on, as in the reference: never a finite value."""
    W, C, B = hals_inputs(31, 7, torch.float32, seed=5, device=device)
    W[4, 3] = float("nan")
    W[9, 0] = float("inf")
    out, _ = hals_sweep(W, C, B, revive=False, backend=backend)
    want, _ = reference.hals_sweep(W.cpu().double(), C.cpu().double(), B.cpu().double(), revive=False)
    assert torch.equal(torch.isnan(out.cpu()), torch.isnan(want)) and bool(torch.isnan(out[[4, 9]]).all())
    rows = [i for i in range(31) if i not in (4, 9)]
    assert rel(out[rows].double().cpu(), want[rows]) <= 1e-5


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_diagonal_of_b_gives_nan(device, backend, value):
    """An infinite or NaN B_kk makes column k, and every column swept after it, NaN in every row, as in the
    reference (there w_k B_kk turns the infinity into NaN; the Triton sweep's one reduction leaves that term
    out): never a finite value, nor a column zeroed and then revived."""
    W, C, B = hals_inputs(31, 7, torch.float32, seed=8, device=device)
    B[3, 3] = value
    for revive in (False, True):
        out, colmax = hals_sweep(W, C, B, revive=revive, backend=backend)
        want, want_max = reference.hals_sweep(W.cpu().double(), C.cpu().double(), B.cpu().double(), revive=revive)
        assert bool(torch.isnan(want[:, 3:]).all()) and bool(torch.isnan(want_max[3:]).all())
        assert torch.equal(torch.isnan(out.cpu()), torch.isnan(want))
        assert torch.equal(torch.isnan(colmax.cpu()), torch.isnan(want_max))
        assert rel(out[:, :3].double().cpu(), want[:, :3]) <= 1e-5


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (203, 16), (1003, 48), (5, 128), (3, 41, 7)])
def test_revive_zero_columns_matches_reference(backend, shape):
    """Maxima given from outside (as a sharded sweep's, over every rank): the columns they name zero are set to
    1e-16 times the largest given maximum of their factor, the rest untouched; float32 and float64, and a
    column-major factor."""
    g = torch.Generator().manual_seed(sum(shape))
    for dtype in (torch.float32, torch.float64):
        W = torch.rand(shape, generator=g, dtype=dtype).to(DEVICE)
        colmax = 2 + torch.rand((*shape[:-2], shape[-1]), generator=g, dtype=dtype).to(DEVICE)  # larger than W's
        zero = torch.rand(colmax.shape, generator=g).to(DEVICE) < 0.4
        zero.view(-1)[0] = True
        colmax[zero] = 0
        W.masked_fill_(zero[..., None, :], 0.0)
        for layout in ("rows", "columns"):
            W_in = W.clone() if layout == "rows" else W.mT.contiguous().mT
            expected_W = W.clone()
            expected = reference.revive_zero_columns_(expected_W, colmax.clone())
            got = revive_zero_columns_(W_in, colmax.clone(), backend=backend)
            assert torch.equal(got, expected) and torch.equal(W_in, expected_W), (dtype, layout)
            fill = ZERO_COLUMN_FILL * colmax.amax(-1)
            assert torch.equal(W_in[zero[..., None, :].expand_as(W_in)].unique(),
                               fill.unique() if W.dim() == 2 else fill[zero.any(-1)].unique())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_revive_zero_columns_nan_and_bad_input(backend):
    if backend == "triton" and DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        pytest.skip("the Triton kernel needs CUDA or TRITON_INTERPRET=1")
    # A NaN maximum is not zero: its column keeps its values; the fill, from the largest maximum, is NaN too, and
    # the zero column takes it (NaN spreads as in the reference, never hidden).
    W = torch.zeros(9, 3, device=DEVICE)
    colmax = torch.tensor([0.0, float("nan"), 2.0], device=DEVICE)
    expected_W = W.clone()
    expected = reference.revive_zero_columns_(expected_W, colmax.clone())
    out = revive_zero_columns_(W, colmax, backend=backend)
    assert torch.isnan(out[:2]).all() and out[2] == 2 and torch.equal(out[2:], expected[2:])
    assert torch.isnan(W[:, 0]).all() and torch.isnan(expected_W[:, 0]).all()
    assert float(W[:, 1:].abs().max()) == 0.0
    # In a batch, a NaN maximum of one factor leaves the others as the reference leaves them.
    Wb = torch.zeros(3, 9, 3, device=DEVICE)
    colmax_b = torch.tensor([[0.0, 1.0, 2.0], [0.0, float("nan"), 2.0], [4.0, 0.0, 0.0]], device=DEVICE)
    expected_Wb = Wb.clone()
    expected_b = reference.revive_zero_columns_(expected_Wb, colmax_b.clone())
    out_b = revive_zero_columns_(Wb, colmax_b, backend=backend)
    assert torch.isnan(Wb[1, :, 0]).all() and torch.isnan(expected_Wb[1, :, 0]).all()
    assert torch.equal(Wb[[0, 2]], expected_Wb[[0, 2]]) and torch.equal(out_b[[0, 2]], expected_b[[0, 2]])
    assert bool(torch.isfinite(Wb[[0, 2]]).all()) and float(Wb[0, :, 0].max()) > 0
    with pytest.raises(ValueError, match="one maximum per column"):
        revive_zero_columns_(W, colmax[:2], backend=backend)
    with pytest.raises(TypeError, match="float64"):
        revive_zero_columns_(W, colmax.double(), backend=backend)
    with pytest.raises(ValueError, match="backend"):
        revive_zero_columns_(W, colmax, backend="cuda")
    with pytest.raises(ValueError, match=r"W must be one factor \(n, r\) or a batch"):
        revive_zero_columns_(torch.zeros(2, 3, 9, 3, device=DEVICE), torch.zeros(2, 3, 3, device=DEVICE),
                             backend=backend)
    with pytest.raises(TypeError, match="colmax must be a torch.Tensor"):
        revive_zero_columns_(W, [0.0, 1.0, 2.0], backend=backend)


@needs_triton
def test_in_place_on_strided_factor():
    W, C, B = hals_inputs(71, 5, torch.float32, seed=4)
    expected, _ = hals_sweep(W, C, B, backend="torch")
    W_cols = W.T.contiguous().T  # column-major storage: the kernel follows the strides
    colmax = hals_sweep_(W_cols, C, B, backend="triton")
    assert rel(W_cols, expected) <= 1e-5
    assert rel(colmax, expected.amax(0)) <= 1e-5


def test_bad_input():
    W, C, B = hals_inputs(9, 3, torch.float32, seed=5)
    with pytest.raises(ValueError, match="r x r"):
        hals_sweep_(W, C, B[:2, :2])
    with pytest.raises(ValueError, match="C has shape"):
        hals_sweep_(W, C[:5], B)
    with pytest.raises(TypeError, match="float64"):
        hals_sweep_(W, C.double(), B)
    with pytest.raises(ValueError, match="backend"):
        hals_sweep_(W, C, B, backend="cuda")
    with pytest.raises(ValueError, match="V has shape"):
        hals_sweep_(W, C, B, V=W[:4], lam=0.5)
    with pytest.raises(ValueError, match=r"\(P, r, r\) with P = 2"):
        hals_sweep_(torch.stack([W, W]), torch.stack([C, C]), B)
    with pytest.raises(ValueError, match="batch"):
        hals_sweep_(W[None, None], C[None, None], B[None, None])
    for backend in ("torch", "triton"):  # an empty batch sweeps nothing
        empty = W.new_empty((0, 9, 3))
        assert hals_sweep_(empty, empty, B.new_empty((0, 3, 3)), backend=backend).shape == (0, 3)
    for lam in ("a", torch.ones(2), True, None, torch.tensor(1 + 5j), torch.tensor(True)):
        with pytest.raises(TypeError, match="lam must be a real number"):
            hals_sweep_(W, C, B, V=W, lam=lam)
    with pytest.raises(TypeError, match="W must be a torch.Tensor"):
        hals_sweep(W.tolist(), C, B)
    # no gradient through an update autograd cannot see (the reference's in-place loop fails in its backward)
    for name in ("W", "C", "B"):
        args = {"W": W.clone(), "C": C.clone(), "B": B.clone()}
        args[name].requires_grad_()
        for backend in ("torch", "triton"):
            with pytest.raises(TypeError, match="no gradient"):
                hals_sweep(args["W"], args["C"], args["B"], backend=backend)
        with torch.no_grad():
            hals_sweep(args["W"], args["C"], args["B"])
    with pytest.raises(TypeError, match="no gradient"):
        revive_zero_columns_(W.clone().requires_grad_(), W.amax(0))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sweep_under_torch_compile(backend):
    """torch.compile runs the sweep as eager (the Triton launch is a graph break), with the same result."""
    W, C, B = hals_inputs(33, 4, torch.float64, seed=8)
    expected, colmax = hals_sweep(W, C, B, backend=backend)
    compiled = torch.compile(lambda W, C, B: hals_sweep_(W, C, B, backend=backend), backend="aot_eager")
    W_c = W.clone()
    assert rel(compiled(W_c, C, B), colmax) <= 1e-12 and rel(W_c, expected) <= 1e-12


def test_triton_backend_on_a_cpu_tensor_needs_the_interpreter(monkeypatch):
    """backend="triton" for a CPU tensor without TRITON_INTERPRET=1 is a clear error, not a crash in Triton's
    driver lookup."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    W, C, B = hals_inputs(9, 3, torch.float32, seed=5)
    for call in (lambda: hals_sweep_(W, C, B, backend="triton"),
                 lambda: revive_zero_columns_(W, W.amax(0), backend="triton")):
        with pytest.raises(ValueError, match="backend='triton' runs on a CUDA device, or on the CPU under"):
            call()


@needs_triton
def test_symhals_solver_same_iterates_with_either_sweep():
    from symnmf.solvers import hals

    g = torch.Generator().manual_seed(6)
    X = torch.rand(29, 29, generator=g)
    X = (X + X.T).to(DEVICE)
    U0 = torch.rand(29, 3, generator=g).to(DEVICE)
    a = hals(X, U0, max_iter=3, tol=0.0, check_every=3, backend="triton")
    b = hals(X, U0, max_iter=3, tol=0.0, check_every=3, backend="torch")
    assert a.n_iter == b.n_iter == 3
    assert rel(a.U, b.U) <= 1e-5


# ---- the extension's CPU row sweep (csrc/cpu/hals_cpu.cpp) against the torch loop and the reference ----------

needs_native = pytest.mark.skipif(not hals_ops._NATIVE_HALS, reason="the extension's CPU sweep is not built")


def _cpu_inputs(n, r, dtype, seed, lam=0.3):
    """W, X V, B, V on the CPU (the native sweep's inputs, the right-hand side formed in the kernel)."""
    W, _, B, XV, V = hals_inputs(n, r, dtype, seed, lam=lam, with_v=True, device="cpu")
    return W, XV, B, V


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 1003])
@pytest.mark.parametrize("r", [1, 5, 16, 48, 128])
def test_native_sweep_matches_reference(dtype, n, r):
    """The row sweep's error against the float64 reference is within a small multiple of the torch loop's."""
    W, XV, B, V = _cpu_inputs(n, r, dtype, seed=1000 * n + r)
    want, want_max = reference.hals_sweep(W.double(), XV.double(), B.double(), V=V.double(), lam=0.3)
    got = W.clone()
    got_max = hals_sweep_(got, XV, B, V=V, lam=0.3, backend="torch")
    assert hals_ops._native_runs(got)
    loop = W.clone()
    hals_ops._sweep_torch_(loop, XV, B, V, 0.3)
    floor = 1e-6 if dtype == torch.float32 else 1e-14
    assert rel(got.double(), want) <= 4 * rel(loop.double(), want) + floor
    assert rel(got_max.double(), want_max) <= 4 * rel(loop.double().amax(0), want_max) + floor
    assert bool((got >= 0).all())


@needs_native
def test_native_sweep_without_v_and_batch_of_calls():
    W, XV, B, V = _cpu_inputs(203, 9, torch.float64, seed=3)
    C = XV + 0.3 * V
    want, _ = reference.hals_sweep(W, C, B)
    got, colmax = hals_sweep(W, C, B, backend="torch")
    assert rel(got, want) <= 1e-12 and rel(colmax, got.amax(0)) == 0.0


@needs_native
def test_native_sweep_keeps_nan():
    """A NaN in the right-hand side stays NaN in W and in its column maxima, never a zero."""
    W, XV, B, V = _cpu_inputs(40, 4, torch.float32, seed=4)
    XV[3, 1] = float("nan")
    colmax = hals_sweep_(W, XV, B, V=V, lam=0.3, backend="torch", revive=False)
    assert bool(torch.isnan(W[3, 1:]).all()) and bool(torch.isfinite(W[:3]).all())
    assert bool(torch.isnan(colmax[1:]).all()) and bool(torch.isfinite(colmax[0]))


@needs_native
def test_strided_factor_takes_the_torch_loop():
    W, XV, B, V = _cpu_inputs(71, 5, torch.float64, seed=5)
    W_cols = W.T.contiguous().T
    assert not hals_ops._native_runs(W_cols)
    colmax = hals_sweep_(W_cols, XV, B, V=V, lam=0.3, backend="torch")
    want, want_max = reference.hals_sweep(W, XV, B, V=V, lam=0.3)
    assert rel(W_cols, want) <= 1e-12 and rel(colmax, want_max) <= 1e-12


@needs_native
def test_native_sweep_opcheck():
    W, XV, B, V = _cpu_inputs(37, 6, torch.float32, seed=6)
    torch.library.opcheck(torch.ops.symnmf_kernels.hals_sweep_rows_.default, (W.clone(), XV, B, V, 0.3))
    torch.library.opcheck(torch.ops.symnmf_kernels.hals_sweep_rows_.default, (W.clone(), XV + 0.3 * V, B, None, 0.0))


@needs_native
def test_native_sweep_does_not_depend_on_the_thread_count():
    """Rows are independent and each row's sums run in one order: one thread and two give the same bits."""
    W, XV, B, V = _cpu_inputs(5003, 12, torch.float32, seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = W.clone()
        max_one = hals_sweep_(one, XV, B, V=V, lam=0.3, backend="torch")
        torch.set_num_threads(2)
        two = W.clone()
        max_two = hals_sweep_(two, XV, B, V=V, lam=0.3, backend="torch")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and torch.equal(max_one, max_two)


@needs_triton
def test_symhals_restarts_same_iterates_with_either_sweep():
    """SymHALS from 3 starts side by side (the Triton sweep of the whole batch in one launch) against the
    torch sweep, and against each start run alone."""
    from symnmf.solvers.hals import hals, hals_restarts

    g = torch.Generator().manual_seed(8)
    X = torch.rand(31, 31, generator=g, dtype=torch.float64)
    X = (X + X.T).to(DEVICE)
    U0 = torch.rand(3, 31, 4, generator=g, dtype=torch.float64).to(DEVICE)
    a = hals_restarts(X, U0, max_iter=4, tol=0.0, check_every=2, backend="triton")
    b = hals_restarts(X, U0, max_iter=4, tol=0.0, check_every=2, backend="torch")
    for k in range(3):
        alone = hals(X, U0[k], max_iter=4, tol=0.0, check_every=2, backend="triton")
        assert a[k].n_iter == b[k].n_iter == alone.n_iter == 4
        assert rel(a[k].U, b[k].U) <= 1e-9 and rel(a[k].U, alone.U) <= 1e-12


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_w_whose_entries_share_memory_is_refused(backend):
    """W is written in place: an expanded W (rows sharing one row's memory) was swept by the Triton kernels with
    racing writes and maxima that matched no W, where torch raised an error of its own."""
    if backend == "triton" and DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        pytest.skip("the Triton kernel needs CUDA or TRITON_INTERPRET=1")
    W = torch.rand(1, 3, dtype=torch.float64).expand(7, 3)
    C, V = torch.rand(7, 3, dtype=torch.float64), torch.rand(7, 3, dtype=torch.float64)
    B = V.T @ V
    with pytest.raises(ValueError, match="W has entries that share memory"):
        hals_sweep_(W, C, B, V=V, lam=0.5, backend=backend)
    with pytest.raises(ValueError, match="W has entries that share memory"):
        revive_zero_columns_(W, torch.zeros(3, dtype=torch.float64), backend=backend)
    with pytest.raises(ValueError, match="W has entries that share memory"):  # a batch expanded along its factors
        hals_sweep_(torch.rand(1, 7, 3, dtype=torch.float64).expand(2, 7, 3), C.expand(2, 7, 3).clone(),
                       B.expand(2, 3, 3).clone(), lam=0.5, backend=backend)
