"""The float32 dot precision of the Triton kernels: the setting, its resolution, and each value's launch."""
import types

import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels import reference
from symnmf_kernels.ops import _common, _launch

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
def test_every_precision_launches(monkeypatch, precision):
    # Each value reaches the kernels' tl.dot; on a GPU the error stays at the precision's own level.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(_launch, "input_precision", lambda t, r, reduction, p=None: precision)
    U, P = torch.rand(1, 1103, 24, device=device), torch.rand(1, 1103, 24, device=device)  # the split-n path
    lam = torch.ones(1, device=device)
    Y, Ginv, info = _launch.symnmf_block(U, P, lam)
    want = reference.symnmf_block(U.double(), P.double(), 1.0)
    tol = 1e-2 if precision == "tf32" and device == "cuda" else 1e-4
    assert int(info.sum()) == 0 and rel_err(Y, want) < tol
    G = _launch.gram(U, lam)
    assert rel_err(G, reference.gram(U.double(), 1.0)) < (1e-2 if precision == "tf32" and device == "cuda" else 1e-5)
