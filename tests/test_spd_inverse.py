import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from conftest import rel_err


def spd_batch(batch, r, cond, device, dtype=torch.float32):
    """SPD matrices with eigenvalues spread log-uniformly over [1/cond, 1]."""
    Q, _ = torch.linalg.qr(torch.randn(*batch, r, r, dtype=torch.float64))
    eig = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), r, dtype=torch.float64)
    G = Q @ torch.diag_embed(eig.expand(*batch, r)) @ Q.mT
    return (0.5 * (G + G.mT)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("r", [1, 5, 16, 48, 128])
def test_spd_inverse_matches_reference(device, r):
    G = spd_batch((3,), r, 1e4, device)
    exact = reference.spd_inverse(G.double())
    err = rel_err(sk.spd_inverse(G), exact)
    # The bound of the issue, and no worse than a small multiple of torch's own float32 error.
    torch_err = rel_err(reference.spd_inverse(G), exact)
    assert err <= 1e-4
    assert err <= 4 * torch_err + 1e-6


@pytest.mark.parametrize("r", [5, 33])
def test_spd_inverse_float64(device, r):
    G = spd_batch((2, 2), r, 1e6, device, torch.float64)
    assert rel_err(sk.spd_inverse(G), reference.spd_inverse(G)) <= 1e-9


def test_spd_inverse_non_contiguous(device):
    G = spd_batch((4,), 20, 100, device)
    Gt = G.mT[1::2]  # symmetric, so the transposed view has the same inverse
    assert not Gt.is_contiguous()
    assert rel_err(sk.spd_inverse(Gt), reference.spd_inverse(Gt.double())) <= 1e-5


@pytest.mark.parametrize("r", [1, 5, 16, 48, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_with_lam_added_on_load(device, r, dtype):
    """spd_inverse_triton(G, lam) inverts G + lam I without forming it: lam 0-d, one per matrix, and one per
    matrix as a strided view (the last alone from r = 48, which the interpreter runs slowly), with G a
    non-contiguous batch; within a small multiple of torch's own error in float32 against the float64 inverse
    of G + lam I (torch's inverse past a padded width of 64 on a GPU)."""
    from symnmf_kernels.ops.spd_inverse import spd_inverse_triton

    if dtype == torch.float64 and r == 128:
        pytest.skip("float64 at r = 128: the interpreter's time, not a different path")
    G = spd_batch((6,), r, 1e3, device, dtype)[::2]  # (3, r, r), not contiguous
    assert not G.is_contiguous()
    eye = torch.eye(r, dtype=torch.float64, device=device)
    lam_wide = torch.tensor([[0.5, 0.1], [2.0, 7.0], [0.25, 1.0]], dtype=dtype, device=device)
    lams = [torch.tensor(0.3, dtype=dtype, device=device), lam_wide[:, 0].contiguous(), lam_wide[:, 1]]
    for lam in lams if r < 48 else lams[2:]:
        exact = reference.spd_inverse(G.double() + lam.double().reshape(*lam.shape, 1, 1) * eye)
        inv, info = spd_inverse_triton(G, lam)
        assert inv.shape == G.shape and info.shape == (3,) and not bool(info.any())
        err = rel_err(inv, exact)
        if dtype == torch.float64:
            assert err <= 1e-11
        else:
            torch_err = rel_err(reference.spd_inverse(G + lam.reshape(*lam.shape, 1, 1) * eye.to(dtype)), exact)
            assert err <= 4 * torch_err + 1e-6


def test_inverse_with_lam_flags_what_lam_leaves_indefinite(device):
    """A lam that leaves G + lam I indefinite (negative, or NaN) gives NaN and info 1 for that matrix alone;
    one that makes an indefinite G definite gives its inverse."""
    from symnmf_kernels.ops.spd_inverse import spd_inverse_triton

    G = spd_batch((3,), 6, 10, device)  # eigenvalues in [0.1, 1]
    G[2] -= 0.5 * torch.eye(6, device=device)  # indefinite until lam > 0.4
    lam = torch.tensor([-2.0, float("nan"), 1.0], device=device)
    inv, info = spd_inverse_triton(G, lam)
    assert info.tolist() == [1, 1, 0]
    assert torch.isnan(inv[0]).all() and torch.isnan(inv[1]).all()
    exact = reference.spd_inverse(G[2].double() + torch.eye(6, dtype=torch.float64, device=device))
    assert rel_err(inv[2], exact) <= 1e-5


def test_not_positive_definite_gives_nan_only_there(device):
    G = spd_batch((3,), 6, 10, device)
    G[1, 2, 2] = -1.0
    inv = sk.spd_inverse(G)
    assert torch.isnan(inv[1]).all()
    assert torch.isfinite(inv[0]).all() and torch.isfinite(inv[2]).all()
    with pytest.raises(ValueError, match="not positive definite in 1 of 3"):
        sk.spd_inverse(G, check=True)


def test_spd_inverse_gradients_match_reference(device):
    A = torch.randn(2, 7, 7, device=device, dtype=torch.float64)
    G = (A @ A.mT + 7 * torch.eye(7, device=device, dtype=torch.float64)).requires_grad_()
    dinv = torch.randn(2, 7, 7, device=device, dtype=torch.float64)
    (dG,) = torch.autograd.grad(sk.spd_inverse(G), G, dinv)
    G_ref = G.detach().clone().requires_grad_()
    (dG_ref,) = torch.autograd.grad(reference.spd_inverse(G_ref), G_ref, dinv)
    assert rel_err(dG, dG_ref) <= 1e-12


def test_spd_inverse_gradcheck(device):
    # G is built symmetric from A, the way every caller builds it.
    A = torch.randn(2, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    eye = torch.eye(3, device=device, dtype=torch.float64)

    def through(fn):
        return lambda A: fn(A @ A.mT + eye)

    assert torch.autograd.gradcheck(through(sk.spd_inverse), (A,))
    assert torch.autograd.gradcheck(through(reference.spd_inverse), (A,))


def test_wide_inverse_through_torch_cholesky_keeps_the_contract(device):
    # Above BLOCK_R = 64 a CUDA G goes through torch's Cholesky instead of the register kernel:
    # the same values, info 1 and an all-NaN inverse for a matrix that is not positive definite.
    from symnmf_kernels.ops.spd_inverse import spd_inverse_torch

    A = torch.randn(3, 100, 100, device=device, dtype=torch.float64)
    G = A @ A.mT + 100 * torch.eye(100, device=device, dtype=torch.float64)
    G[1] = -G[1]
    inv, info = spd_inverse_torch(G)
    assert info.tolist() == [0, 1, 0] and info.dtype == torch.int32
    assert torch.isnan(inv[1]).all()
    for b in (0, 2):
        assert rel_err(inv[b], reference.spd_inverse(G[b])) <= 1e-12


@pytest.fixture
def sweep_everywhere(monkeypatch):
    """The in-register inverse as the symmetric sweep at every width (ops._launch uses it from BLOCK_R = 128)."""
    from symnmf_kernels.ops import _launch

    monkeypatch.setattr(_launch, "SWEEP_MIN_BLOCK_R", 1)


@pytest.mark.parametrize("r", [1, 5, 16, 48, 128])
def test_sweep_inverse_matches_reference(device, sweep_everywhere, r):
    # float32 against the float64 oracle, also within a small multiple of torch's own float32 error; float64
    # against torch's float64 inverse, as test_spd_inverse_float64 checks the Cholesky form.
    G = spd_batch((3,), r, 1e4, device)
    exact = reference.spd_inverse(G.double())
    err = rel_err(sk.spd_inverse(G), exact)
    assert err <= 1e-4 and err <= 4 * rel_err(reference.spd_inverse(G), exact) + 1e-6
    G = spd_batch((3,), r, 1e6, device, torch.float64)
    assert rel_err(sk.spd_inverse(G), reference.spd_inverse(G)) <= 1e-9


@pytest.mark.parametrize("sweep", [False, True])
def test_register_inverse_fails_on_every_non_finite_or_indefinite_matrix(device, monkeypatch, sweep):
    # Both forms of the in-register inverse: all NaN and info 1 for an indefinite matrix, a NaN entry, an
    # infinite diagonal entry (which an exact sweep would turn into a zero row) and an infinite off-diagonal
    # pair; the rest untouched.
    from symnmf_kernels.ops import _launch

    if device.type == "cpu" and not sk.ops._common.interpreting():
        pytest.skip("the Triton kernel on the CPU needs TRITON_INTERPRET=1")
    monkeypatch.setattr(_launch, "SWEEP_MIN_BLOCK_R", 1 if sweep else 1 << 20)
    G = spd_batch((5,), 6, 10, device)
    G[1, 2, 2] = -1.0
    G[2, 0, 3] = G[2, 3, 0] = float("nan")
    G[3, 4, 4] = float("inf")
    G[4, 1, 5] = G[4, 5, 1] = float("inf")
    inv, info = _launch.spd_inverse(G)
    assert info.tolist() == [0, 1, 1, 1, 1]
    assert torch.isnan(inv[1:]).all()
    assert rel_err(inv[0], reference.spd_inverse(G[0].double())) <= 1e-5


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_non_finite_entry_gives_nan_on_every_path(device, monkeypatch, path):
    # inf, -inf and NaN on the diagonal and as an off-diagonal pair, in a batch: an all-NaN inverse (a failure that
    # check=True reports) and NaN block outputs for those matrices alone, as in the reference. LAPACK's Cholesky
    # takes an infinite pivot, whose inverse would have a finite zero row and column; an infinite lam
    # (check_lam=False) puts one on every pivot.
    from symnmf_kernels.ops import _launch

    if path == "torch" and device.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    elif path == "torch":  # torch's Cholesky in place of the kernel, as past BLOCK_R = 64
        monkeypatch.setattr(_launch, "torch_inverse", lambda G: True)
    elif device.type == "cpu" and not sk.ops._common.interpreting():
        pytest.skip("the Triton kernel on the CPU needs TRITON_INTERPRET=1")
    G = spd_batch((2, 4), 5, 10, device, torch.float64)
    for b, v in enumerate([float("inf"), float("-inf"), float("nan")]):
        G[0, 1 + b, b, b] = v
        G[1, 1 + b, 4, b] = G[1, 1 + b, b, 4] = v
    bad = torch.ones(2, 4, dtype=torch.bool, device=device)
    bad[:, 0] = False
    want = reference.spd_inverse(G)
    assert torch.isnan(want[bad]).all() and torch.isfinite(want[~bad]).all()
    inv = sk.spd_inverse(G)
    assert torch.equal(torch.isnan(inv), torch.isnan(want))
    assert rel_err(inv[~bad], want[~bad]) <= 1e-12
    with pytest.raises(ValueError, match="not positive definite in 6 of 8"):
        sk.spd_inverse(G, check=True)
    P = torch.randn(2, 4, 9, 5, device=device, dtype=torch.float64)
    for got, ref in zip(sk.symnmf_block_from_gram(G, P, 0.5), reference.symnmf_block_from_gram(G, P, 0.5)):
        assert torch.isnan(ref[bad]).all() and torch.equal(torch.isnan(got), torch.isnan(ref))
        assert rel_err(got[~bad], ref[~bad]) <= 1e-12
    U = torch.rand(2, 9, 5, device=device, dtype=torch.float64)
    lam = torch.tensor([0.5, float("inf")], device=device, dtype=torch.float64)
    outputs = [(sk.symnmf_block(U, P[:, 0], lam, check_lam=False), reference.symnmf_block(U, P[:, 0], lam))]
    outputs += zip(sk.symnmf_block_from_gram(U.mT @ U, P[:, 0], lam, check_lam=False),
                   reference.symnmf_block_from_gram(U.mT @ U, P[:, 0], lam))
    for got, ref in outputs:
        assert torch.isnan(ref[1]).all() and torch.isnan(got[1]).all()
        assert rel_err(got[0], ref[0]) <= 1e-12
