"""AlternatingNMF (Li and Liang's alternating updates): the decode on the kernels, the closed-form
gradient steps, feature recovery under correlated weights, batches, input checks and scikit-learn's
estimator checks.

Recovery is measured as in docs/alternating_nmf.md: columns matched to the true features by the
Hungarian method on cosine similarity and scaled onto them, then ||A - A*||_F / ||A*||_F. NaN gives
an infinite error, so it never passes.
"""
import numpy as np
import pytest
import torch
from scipy.stats import norm

from symnmf.alternating import AlternatingNMF, _gradient_steps, alternating_nmf, decode
from symnmf.metrics import recovery_error

from conftest import rel_err


@pytest.fixture
def torch_path(monkeypatch):
    """The plain-torch CPU path: the fits below run hundreds of decodes, which Triton's interpreter would
    make take minutes; the decode's kernels are checked against the torch formula in test_decode_kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correlated_problem(rng, n=400, d=60, k=5, rho=0.55, active=0.3, start_error=0.3):
    """Y = X A*^T with sparse features A* (d x k), weights X of mean pairwise correlation about 0.4,
    and a start A* (I + E) at relative distance start_error."""
    A = rng.random((d, k)) * (rng.random((d, k)) < 0.4) + 0.01 * rng.random((d, k))
    A /= A.sum(0)
    g = np.sqrt(rho) * rng.standard_normal((n, 1)) + np.sqrt(1 - rho) * rng.standard_normal((n, k))
    X = np.maximum(g - norm.ppf(1 - active), 0)
    E = rng.uniform(-0.5, 0.5, (k, k))
    E *= start_error * np.linalg.norm(A) / np.linalg.norm(A @ E)
    return X @ A.T, X, A, A @ (np.eye(k) + E)


def mean_correlation(X):
    C = np.corrcoef(X.T)
    return C[~np.eye(len(C), dtype=bool)].mean()


# ------------------------------------------------------------------------------------------------ the pieces
def test_decode_kernels(device):
    """The decode on the kernels (the Triton interpreter on CPU) equals max(Y A (A^T A)^{-1} - alpha, 0),
    for a batch of problems with one threshold per feature: the fold of alpha into P is exact algebra."""
    B, n, d, k = 3, 40, 24, 5
    Y = torch.rand(B, n, d, dtype=torch.float64, device=device)
    A = torch.rand(B, d, k, dtype=torch.float64, device=device)
    alpha = 0.05 * torch.rand(B, k, dtype=torch.float64, device=device)
    W, P, Ginv = decode(Y, A, alpha)
    expected = torch.relu(Y @ torch.linalg.pinv(A).mT - alpha[:, None, :])
    assert rel_err(W, expected) < 1e-10
    assert (W == 0).any() and (W > 0).any()  # the threshold cut some weights, not all
    assert rel_err(P, Y @ A) < 1e-12
    assert rel_err(Ginv, torch.linalg.inv(A.mT @ A)) < 1e-10


def test_iterations_on_the_kernels_match_the_torch_path(monkeypatch, rng):
    """A few whole iterations (decode, the Grams of W and of Y A, the noise floor, the steps) through the
    Triton kernels (the interpreter on CPU) give the torch path's features and thresholds."""
    Y, _, _, A0 = correlated_problem(rng, n=48, d=24, k=4)
    Y = Y + 0.2 * Y.mean() * rng.random(Y.shape)  # noise, so that the noise floor is active
    Yt, A0t = torch.as_tensor(Y), torch.as_tensor(A0)
    kernels = alternating_nmf(Yt, A0t, max_iter=4, inner_iter=10, decay=5.0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    plain = alternating_nmf(Yt, A0t, max_iter=4, inner_iter=10, decay=5.0)
    assert rel_err(kernels.A, plain.A) < 1e-10
    assert rel_err(kernels.alpha, plain.alpha) < 1e-8
    assert (plain.alpha > plain.history["alpha"][-1]).any()  # the floor held some threshold above the schedule


def test_decode_scalar_threshold_float32():
    Y = torch.rand(50, 30)
    A = torch.rand(30, 4)
    W, _, _ = decode(Y, A, 0.1)
    expected = torch.relu(Y.double() @ torch.linalg.pinv(A.double()).mT - 0.1)
    assert W.dtype == torch.float32
    assert rel_err(W, expected) < 1e-4


def test_gradient_steps_closed_form_matches_the_loop():
    k, d = 6, 20
    W = torch.rand(100, k, dtype=torch.float64)
    B, C = W.mT @ W, torch.rand(d, k, dtype=torch.float64)
    A = torch.rand(d, k, dtype=torch.float64)
    eta = 0.7 / B.sum(-1).max()
    looped = A.clone()
    for _ in range(13):
        looped = looped + eta * (C - looped @ B)
    assert rel_err(_gradient_steps(A, C, B, 0.7, 13), looped) < 1e-12
    # all weights decoded to zero: the features stay where they are
    assert torch.equal(_gradient_steps(A, C, torch.zeros(k, k, dtype=torch.float64), 1.0, 5), A)


# ------------------------------------------------------------------------------------------------ recovery
def test_recovers_features_under_correlated_weights(torch_path, rng):
    """The issue's target on a small instance: mean pairwise correlation about 0.4, a start 30% away,
    no noise: recovery error <= 0.01. Plain non-negative least squares (alpha = 0 throughout) is worse."""
    Y, X, A, A0 = correlated_problem(rng)
    assert 0.2 < mean_correlation(X) < 0.6  # about 0.4; n = 400 samples leave it some spread
    assert recovery_error(A0, A) > 0.1  # the start is far from the answer (0.19-0.30 over random draws)
    model = AlternatingNMF(5).fit(Y, init_components=A0.T)
    assert model.components_.shape == (5, 60)
    assert recovery_error(model.components_.T, A) <= 0.01
    assert model.n_iter_ == 200
    assert set(model.history_) == {"alpha", "rel_residual", "rel_change"}
    assert model.history_["rel_residual"].shape == (200,)
    assert model.history_["rel_residual"][-1] < 1e-3
    assert np.all(np.diff(model.history_["alpha"]) < 0)  # the schedule decreases geometrically
    W = model.transform(Y)
    assert W.shape == (400, 5) and (W >= 0).all()
    assert np.linalg.norm(Y - model.inverse_transform(W)) / np.linalg.norm(Y) < 1e-3
    assert np.array_equal(model.inverse_transform(torch.from_numpy(W)), model.inverse_transform(W))
    # weights that cannot be: checked and named, not a matmul's error or NaN samples
    for bad, message in ((W[:, :4], "n_components = 5"), (np.full((2, 5), np.nan), "NaN"), (W[0], "2D")):
        with pytest.raises(ValueError, match=message):
            model.inverse_transform(bad)
    assert model.reconstruction_err_ == pytest.approx(np.linalg.norm(Y - W @ model.components_), rel=1e-6)


def test_threshold_schedule_matters(torch_path, rng):
    """Without the decreasing threshold (alpha = 0: the decode is plain clipped least squares), the same
    start and iterations recover the features much less well."""
    Y, _, A, A0 = correlated_problem(rng)
    with_threshold = AlternatingNMF(5).fit(Y, init_components=A0.T)
    without = AlternatingNMF(5, alpha=0.0, noise_floor=0.0).fit(Y, init_components=A0.T)
    assert recovery_error(without.components_.T, A) > 5 * max(recovery_error(with_threshold.components_.T, A), 1e-4)


def test_noise_floor_under_noise(torch_path, rng):
    """10% noise: the noise floor on the threshold keeps the error near the noise's own effect on the features;
    letting the threshold fall to zero decodes noise as weight, and the error grows."""
    Y0, _, A, A0 = correlated_problem(rng, n=1500)
    N = rng.standard_normal(Y0.shape)
    Y = Y0 + 0.1 * np.linalg.norm(Y0) / np.linalg.norm(N) * N
    At, A0t = torch.as_tensor(Y), torch.as_tensor(A0)
    floored = recovery_error(alternating_nmf(At, A0t).A.numpy(), A)
    plain = recovery_error(alternating_nmf(At, A0t, noise_floor=0.0).A.numpy(), A)
    assert floored < 0.03
    assert plain > 3 * floored


def test_batch_equals_problem_by_problem(torch_path, rng):
    problems = [correlated_problem(rng, n=200, d=30, k=4) for _ in range(3)]
    Y = torch.as_tensor(np.stack([p[0] for p in problems]))
    A0 = torch.as_tensor(np.stack([p[3] for p in problems]))
    batched = alternating_nmf(Y, A0, max_iter=60)
    assert batched.A.shape == (3, 30, 4) and batched.alpha.shape == (3, 4)
    assert batched.history["rel_residual"].shape == (60, 3)
    for i in range(3):
        single = alternating_nmf(Y[i], A0[i], max_iter=60)
        assert rel_err(batched.A[i], single.A) < 1e-9
        assert rel_err(batched.alpha[i], single.alpha) < 1e-9


def test_default_start_and_float32(torch_path, rng):
    """Without init_components the data-driven start (a short scikit-learn NMF) is refined; float32 input stays
    float32 and gives the same features as float64 to its precision."""
    Y, _, A, _ = correlated_problem(rng, n=300, d=40, k=3, active=0.5)
    model = AlternatingNMF(3, random_state=0).fit(Y)
    assert recovery_error(model.components_.T, A) < 1e-3
    model32 = AlternatingNMF(3, random_state=0).fit(Y.astype(np.float32))
    assert model32.components_.dtype == np.float32
    assert recovery_error(model32.components_.T, model.components_.T) < 1e-3
    assert AlternatingNMF(3, random_state=0).fit(torch.as_tensor(Y)).components_ == pytest.approx(model.components_)


def test_default_start_takes_a_numpy_generator(torch_path, rng):
    """A Generator seeds the data-driven start like an int drawn from it: scikit-learn's NMF alone refuses one."""
    Y = rng.random((60, 12))
    kwargs = dict(max_iter=5, inner_iter=5, init_iter=10)
    model = AlternatingNMF(3, random_state=np.random.default_rng(0), **kwargs).fit(Y)
    again = AlternatingNMF(3, random_state=np.random.default_rng(0), **kwargs).fit(Y)
    assert np.isfinite(model.components_).all()
    np.testing.assert_array_equal(model.components_, again.components_)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "Y, kwargs, match",
    [
        (-np.ones((10, 6)), {}, "Negative values in data Y"),
        (np.zeros((10, 6)), {}, "Y is all zero"),
        (np.full((10, 6), np.nan), {}, "NaN"),
        (np.full((10, 6), np.inf), {}, "infinity"),
        (np.ones((10, 6)), {"n_components": 7}, "n_components = 7 exceeds min"),
        (np.ones((4, 6)), {"n_components": 5}, "n_components = 5 exceeds min"),
        (np.ones(6), {}, "2D array"),
        (np.ones((10, 6)), {"init_components": np.ones((3, 5))}, "init_components must have shape"),
        (np.ones((10, 6)), {"init_components": np.full((2, 6), np.nan)}, "init_components has NaN"),
        (np.ones((10, 6)), {"lr": 2.5}, "'lr' parameter"),
        (np.ones((10, 6)), {"decay": 0.5}, "'decay' parameter"),
        (np.ones((10, 6)), {"n_components": 0}, "'n_components' parameter"),
        (np.ones((10, 6)), {"init_iter": 0}, "'init_iter' parameter"),
    ],
)
def test_bad_input_names_the_argument(Y, kwargs, match, torch_path):
    init = kwargs.pop("init_components", None)
    model = AlternatingNMF(kwargs.pop("n_components", 2), max_iter=3, **kwargs)
    with pytest.raises(ValueError, match=match):
        model.fit(Y, init_components=init)


def test_transform_checks_the_features(torch_path, rng):
    model = AlternatingNMF(2, max_iter=5).fit(rng.random((20, 6)))
    with pytest.raises(ValueError, match="features"):
        model.transform(np.ones((3, 5)))
    with pytest.raises(ValueError, match="Negative values"):
        model.transform(-np.ones((3, 6)))
    with pytest.raises(ValueError, match="must have shape"):
        alternating_nmf(torch.ones(5, 6), torch.ones(5, 2))


def test_check_estimator(torch_path):
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(AlternatingNMF(2, max_iter=20, inner_iter=5, init_iter=10), on_fail=None)
    failed = {r["check_name"]: repr(r["exception"]) for r in results if r["status"] == "failed"}
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 35


@pytest.mark.parametrize("max_iter", [0, 5])
def test_a_singular_start_is_refused_whatever_max_iter(max_iter, monkeypatch):
    """A start whose rows are linearly dependent (all zero here) is refused with the documented message, also when
    no step is taken (max_iter = 0), rather than fitted to NaN."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rng = np.random.default_rng(0)
    Y = rng.random((60, 3)) @ rng.random((3, 15))
    with pytest.raises(ValueError, match="linearly dependent"):
        AlternatingNMF(3, max_iter=max_iter).fit(Y, init_components=np.zeros((3, 15)))


@pytest.mark.parametrize("dtype, scales", [(np.float32, [1e-25, 1e20]), (np.float64, [1e-170, 1e160])])
def test_the_scale_of_y_changes_nothing_but_the_units(dtype, scales, torch_path, rng):
    """The updates of H do not change when Y is multiplied by a constant, so a Y whose squares under- or overflow
    learns the same features, with alpha_, the history's thresholds and reconstruction_err_ in Y's units (it gave
    an error of 0.0 and NaN residuals at 1e-25 in float32, and refused valid data at 1e20)."""
    Y = (rng.random((40, 3)) @ rng.random((3, 12))).astype(dtype)
    H0 = rng.random((3, 12))
    base = AlternatingNMF(3, max_iter=5, inner_iter=5).fit(Y, init_components=H0)
    for s in scales:
        model = AlternatingNMF(3, max_iter=5, inner_iter=5).fit(Y * dtype(s), init_components=H0)
        assert rel_err(model.components_, base.components_) < 1e-5
        assert rel_err(model.alpha_ / s, base.alpha_) < 1e-4
        assert rel_err(model.history_["alpha"] / s, base.history_["alpha"]) < 1e-4
        assert rel_err(model.history_["rel_residual"], base.history_["rel_residual"]) < 1e-4
        assert abs(model.reconstruction_err_ / s / base.reconstruction_err_ - 1) < 1e-4
        assert rel_err(model.transform(Y * dtype(s)) / s, base.transform(Y)) < 1e-4


def test_a_start_that_is_not_real_numbers_is_refused(torch_path, rng):
    """A complex start was cut to its real part with only a warning, and text failed deep in numpy."""
    Y = rng.random((20, 6))
    for bad in (rng.random((2, 6)) + 1j, rng.random((2, 6)).astype(str)):
        with pytest.raises(ValueError, match="init_components must hold real numbers"):
            AlternatingNMF(2, max_iter=2).fit(Y, init_components=bad)


@pytest.mark.parametrize("kwargs", [{"decay": 0.0}, {"inner_iter": 0}, {"lr": 2.0}, {"max_iter": 1.5}, {"alpha": -1}])
def test_the_function_refuses_what_the_estimator_refuses(kwargs):
    """decay = 0 gave an infinite threshold and inner_iter = 0 took one step anyway."""
    with pytest.raises(ValueError, match="max_iter|decay"):
        alternating_nmf(torch.rand(10, 6, dtype=torch.float64), torch.rand(6, 2, dtype=torch.float64), **kwargs)


@pytest.mark.parametrize("dtype, scales", [(np.float32, [2.0**-100, 2.0**20, 2.0**60]),
                                           (np.float64, [2.0**-560, 2.0**20, 2.0**530])])
def test_the_default_start_and_the_features_at_any_scale(dtype, scales, torch_path, rng):
    """The default start is computed at a power of two of Y and given back in Y's units, and the features run at a
    power of two of their own: a fit of c Y is the fit of Y in c's units (exactly, for c a power of two). NNDSVD's
    truncation is absolute, so the start of Y * 1e6 ended at twice Y's error, and at 1e-170 the features' Gram
    underflowed (refused as linearly dependent)."""
    Y = (rng.random((40, 3)) @ rng.random((3, 12))).astype(dtype)
    base = AlternatingNMF(3, max_iter=5, inner_iter=5, random_state=0).fit(Y)
    for s in scales:
        model = AlternatingNMF(3, max_iter=5, inner_iter=5, random_state=0).fit(Y * dtype(s))
        assert rel_err(model.components_ / s, base.components_) < 1e-6, s
        assert rel_err(model.alpha_, base.alpha_) < 1e-6, s  # weights: Y's units over the features'
        assert abs(model.reconstruction_err_ / s / base.reconstruction_err_ - 1) < 1e-6, s
        assert rel_err(model.transform(Y * dtype(s)), base.transform(Y)) < 1e-6, s
    if dtype == np.float64:  # any other c: a start as good (the fit of Y * 1e6 here had 2.6 times the error)
        g = np.random.default_rng(5)
        Y = g.random((200, 5)) @ g.random((5, 40)) + 0.01 * g.random((200, 40))
        base = AlternatingNMF(5, random_state=0).fit(Y)
        for s in (1e6, 3.1e-7):
            model = AlternatingNMF(5, random_state=0).fit(Y * s)
            assert model.reconstruction_err_ / s <= 1.2 * base.reconstruction_err_, s
