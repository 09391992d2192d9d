"""Batched NNLS by block principal pivoting against scipy.optimize.nnls."""
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
