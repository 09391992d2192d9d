"""The float32 dot precision of the Triton kernels: the setting, its resolution, and each value's launch."""
import types

import pytest
import torch
import triton
import triton.language as tl

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops import _common, _launch

from symnmf_kernels.triton._common import tf32_split

from conftest import INTERPRET, rel_err


def test_default_set_get_and_context():
    assert sk.get_dot_precision() == "auto"
    previous = sk.set_dot_precision("ieee")
    try:
        assert previous == "auto" and sk.get_dot_precision() == "ieee"
        with sk.dot_precision("tf32"):
            assert sk.get_dot_precision() == "tf32"
        assert sk.get_dot_precision() == "ieee"
    finally:
        sk.set_dot_precision(previous)


@pytest.mark.parametrize("bad", [None, "fp32", "TF32x3", 3])
def test_bad_precision_names_the_choices(bad):
    with pytest.raises(ValueError, match="auto.*ieee.*tf32x3.*tf32"):
        sk.set_dot_precision(bad)
    assert sk.get_dot_precision() == "auto"


def test_resolution():
    cuda32 = types.SimpleNamespace(dtype=torch.float32, is_cuda=True)
    cuda64 = types.SimpleNamespace(dtype=torch.float64, is_cuda=True)
    cpu32 = torch.empty(1)
    # "auto": tensor cores, but for the n-length sums of products at r <= 32.
    assert _common.input_precision(cuda32, 64, False) == "tf32x3"
    assert _common.input_precision(cuda32, 64, True) == "tf32x3"
    assert _common.input_precision(cuda32, 8, False) == "tf32x3"
    assert _common.input_precision(cuda32, 32, True) == "ieee"
    assert _common.input_precision(cuda32, 16, True, "tf32") == "tf32"
    with sk.dot_precision("tf32x3"):
        assert _common.input_precision(cuda32, 16, True) == "tf32x3"
    # float64 and CPU tensors (the interpreter computes in full precision anyway) always take ieee.
    assert _common.input_precision(cuda64, 64, False, "tf32") == "ieee"
    assert _common.input_precision(cpu32, 64, False, "tf32") == "ieee"


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs the interpreter or a GPU")
@pytest.mark.parametrize("precision", _common.DOT_PRECISIONS)
@pytest.mark.parametrize("n", [1103, 203])  # the split-n kernels, the one-program kernel (n <= _launch.SMALL_N)
def test_every_precision_launches(monkeypatch, precision, n):
    # Each value reaches the kernels' tl.dot; on a GPU the error stays at the precision's own level.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(_launch, "input_precision", lambda t, r, reduction, p=None: precision)
    U, P = torch.rand(1, n, 24, device=device), torch.rand(1, n, 24, device=device)
    lam = torch.ones(1, device=device)
    Y, Ginv, info = _launch.symnmf_block(U, P, lam)
    want = reference.symnmf_block(U.double(), P.double(), 1.0)
    # Through the interpreter at float32 accuracy (about 1.4e-6 here; 9e-5 with a cross term of tf32x3 halved).
    tol = (1e-2 if precision == "tf32" else 1e-4) if device == "cuda" else 1e-5
    assert int(info.sum()) == 0 and rel_err(Y, want) < tol
    G = _launch.gram(U, lam)
    # Through the interpreter at float32 accuracy: a dropped cross term of tf32x3's split would show.
    tol = (1e-2 if precision == "tf32" else 1e-5) if device == "cuda" else 2e-6
    assert rel_err(G, reference.gram(U.double(), 1.0)) < tol
    if precision == "tf32x3":  # the symmetric part of hi^T hi + 2 hi^T lo (triton/_common.add_tile_gram)
        assert torch.equal(G, G.mT)


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs the interpreter or a GPU")
@pytest.mark.parametrize("precision", _common.DOT_PRECISIONS)
def test_sparse_loss_terms_gram_every_precision(monkeypatch, precision):
    """The layer loss's terms pass with its Gram (a tile split once for both sides under tf32x3) and each dot
    precision forced: the Gram and the three sums against float64."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(_launch, "input_precision", lambda t, r, reduction, p=None: precision)
    U, S, P = (torch.rand(1, 1103, 40, device=device) for _ in range(3))
    lam = torch.full((1,), 0.5, device=device)
    sums, G = _launch.sparse_loss_terms(U, S, P, lam)
    Ud, Sd, Pd = U.double(), S.double(), P.double()
    R = Pd - Sd - 0.5 * Ud
    # Through the interpreter at float32 accuracy: a dropped cross term of the split (about 8e-6 here) shows.
    tol = (1e-2 if precision == "tf32" else 1e-5) if device == "cuda" else 2e-6
    assert rel_err(G, Ud.mT @ Ud) <= tol
    want = torch.stack([(Sd * Ud).sum(), (R * R).sum(), (R * Ud).sum()])
    assert rel_err(sums[0], want) <= 1e-6  # float32 products, summed in float64


@triton.jit
def _split_kernel(X, HI, LO, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < n, other=0.0)
    hi, lo = tf32_split(x)
    tl.store(HI + offs, hi, mask=offs < n)
    tl.store(LO + offs, lo, mask=offs < n)


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs the interpreter or a GPU")
def test_tf32_split_rounds_to_nearest_tf32():
    """tf32_split(x) = (hi, lo): hi is x rounded to 10 mantissa bits (to nearest, ties away from zero, as PTX's
    cvt.rna.tf32.f32), lo is x - hi rounded likewise, so hi + lo is x to about 2^-22 relative. Checked against
    the same rounding done on the bits by torch, over magnitudes from 1e-30 to 1e30, both signs, and exact
    ties."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g) * torch.logspace(-30, 30, 4000)
    ties = torch.tensor([1.0 + 2.0 ** -11, -(1.0 + 3 * 2.0 ** -11), 3.0, 0.0, -0.0])  # halfway cases, exact ones
    x = torch.cat([x, ties])

    def rna(t):
        return ((t.view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)

    hi, lo = torch.empty_like(x, device=device), torch.empty_like(x, device=device)
    _split_kernel[(1,)](x.to(device), hi, lo, x.numel(), BLOCK=4096 * 2)
    hi, lo = hi.cpu(), lo.cpu()
    assert torch.equal(hi, rna(x)) and torch.equal(lo, rna(x - rna(x)))
    assert torch.equal(hi.view(torch.int32) & 0x1FFF, torch.zeros_like(hi, dtype=torch.int32))
    assert float(((hi + lo - x).abs() / x.abs().clamp(min=1e-38)).max()) <= 2.0 ** -21
    assert hi[-5:].tolist() == [1.0 + 2.0 ** -10, -(1.0 + 2 * 2.0 ** -10), 3.0, 0.0, -0.0]


def test_tf32_split_passes_nan_and_infinity(monkeypatch, device):
    """A GPU's NaN is 0x7FFFFFFF, whose rounding to tf32 carried into the sign bit: -0.0, so under tf32x3 (the
    default for float32 on CUDA) a NaN input gave finite products, and a failed inverse an all-zero factor.
    NaN and infinity now pass the split; a finite value near float32's largest is cut where rounding passes
    it. Through the ops with tf32x3 forced, a GPU's NaN reaches the output as it does in the reference."""
    if device.type == "cpu" and not INTERPRET:
        pytest.skip("the Triton kernels on the CPU need the interpreter")
    bits = torch.tensor([0x7FFFFFFF, -1, 0x7F800001, 0x7FC00000, 0x7F800000, -8388608], dtype=torch.int32)
    x = torch.cat([bits.view(torch.float32), torch.tensor([3.4028e38, -3.4028e38])])  # NaNs, +-inf, near max
    hi, lo = torch.empty_like(x, device=device), torch.empty_like(x, device=device)
    _split_kernel[(1,)](x.to(device), hi, lo, x.numel(), BLOCK=8)
    hi, lo = hi.cpu(), lo.cpu()
    assert torch.isnan(hi[:4]).all() and torch.isnan(lo[:4]).all()
    assert hi[4:6].tolist() == [float("inf"), float("-inf")]
    assert torch.isfinite(hi[6:]).all() and torch.isfinite(lo[6:]).all()
    assert float(((hi[6:] + lo[6:]) / x[6:] - 1).abs().max()) <= 2.0 ** -21
    gpu_nan = bits[:1].view(torch.float32)[0]
    monkeypatch.setattr(_launch, "input_precision", lambda t, r, reduction, p=None: "tf32x3")
    P = torch.randn(1, 7, 5, device=device)
    P[0, 2, 3] = gpu_nan
    Ginv = reference.spd_inverse(reference.gram(torch.rand(1, 20, 5, device=device), 0.1))
    Y = _launch.apply(P, Ginv, relu=True)
    assert torch.isnan(Y[0, 2]).all() and torch.isfinite(Y[0, [0, 1, 3, 4, 5, 6]]).all()
    failed = torch.full(Ginv.shape, 0x7FFFFFFF, dtype=torch.int32, device=device).view(torch.float32)  # an inverse
    assert torch.isnan(_launch.apply(torch.randn(1, 7, 5, device=device), failed, relu=True)).all()
    U = torch.rand(1, 1100, 40, device=device)
    U[0, 5, 7] = gpu_nan
    G = _launch.gram(U, torch.zeros(1, device=device))
    assert torch.equal(torch.isnan(G), torch.isnan(reference.gram(U, 0.0)))
