"""SymNMF estimator: scikit-learn conventions, input types, feature and precomputed input, errors."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import nnls
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError

from symnmf import SymNMF, SymNMFNet
from symnmf.metrics import accuracy

# few epochs / iterations: under TRITON_INTERPRET=1 every kernel runs through Triton's interpreter
NET = dict(solver="net", n_layers=3, max_iter=20, lr=0.1)


def planted_graph(sizes, p_in, p_out, seed):
    """Normalised adjacency D^{-1/2} A D^{-1/2} of a stochastic block model (numpy), and its labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    same = labels[:, None] == labels[None, :]
    A = np.triu(rng.random((len(labels), len(labels))) < np.where(same, p_in, p_out), 1).astype(float)
    A = A + A.T
    d = np.maximum(A.sum(1), 1)
    return A / np.sqrt(d[:, None] * d[None, :]), labels


@pytest.fixture(scope="module")
def graph():
    return planted_graph([14, 17, 20], 0.6, 0.05, seed=0)


@pytest.fixture(scope="module")
def fitted_hals(graph):
    A, _ = graph
    return SymNMF(3, solver="hals", affinity="precomputed", random_state=0).fit(A)


def test_sklearn_parameters_and_clone():
    model = SymNMF(4, solver="pgd", affinity="precomputed", random_state=3, tol=1e-5)
    params = model.get_params()
    assert params["n_components"] == 4 and params["solver"] == "pgd" and params["tol"] == 1e-5
    assert params["affinity"] == "precomputed" and params["random_state"] == 3
    assert model.set_params(max_iter=7, lam=0.5) is model
    assert model.max_iter == 7 and model.lam == 0.5
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    assert repr(model).startswith("SymNMF(")
    # __init__ stores parameters untouched; fit checks them
    bad = SymNMF(3, solver="sgd", affinity="precomputed")
    assert bad.solver == "sgd"
    with pytest.raises(ValueError, match="'solver' parameter of SymNMF"):
        bad.fit(np.eye(4))
    with pytest.raises(NotFittedError):
        SymNMF(2).transform(np.eye(3))


def test_fit_attributes_and_fit_predict(graph, fitted_hals):
    A, labels = graph
    model = fitted_hals
    n = A.shape[0]
    U = model.embedding_
    assert U.shape == (n, 3) and U.dtype == np.float64 and (U >= 0).all()
    np.testing.assert_array_equal(model.labels_, U.argmax(1))
    assert accuracy(labels, model.labels_) >= 0.95
    err2 = np.linalg.norm(A - U @ U.T) ** 2
    assert model.reconstruction_err_ == pytest.approx(np.sqrt(err2), rel=1e-6)
    assert model.relative_error_ == pytest.approx(err2 / np.linalg.norm(A) ** 2, rel=1e-6)
    assert model.n_iter_ >= 1 and model.converged_
    assert len(model.history_["rel_error"]) >= 1 and model.n_features_in_ == n
    np.testing.assert_allclose(model.affinity_matrix_, A)
    from symnmf.metrics import modularity

    assert model.modularity_ == pytest.approx(modularity(A, model.labels_, 3), rel=1e-12) and model.modularity_ > 0.3
    again = clone(model).fit_predict(A)
    np.testing.assert_array_equal(again, model.labels_)  # same seed, same result
    np.testing.assert_array_equal(model.fit_transform(A), model.embedding_)
    assert list(model.get_feature_names_out()) == ["symnmf0", "symnmf1", "symnmf2"]


def test_numpy_scipy_and_torch_input_agree(graph, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the input conversions, on the CPU's kernels
    A, _ = graph
    # One device for all: a numpy input goes to CUDA when there is one, a CPU torch tensor stays on the CPU.
    fitted = SymNMF(3, solver="hals", affinity="precomputed", random_state=0, device="cpu").fit(A)
    reference = fitted.embedding_
    for X in (sp.csr_matrix(A), torch.from_numpy(A), torch.from_numpy(A).to_sparse_csr()):
        model = SymNMF(3, solver="hals", affinity="precomputed", random_state=0, device="cpu").fit(X)
        err = np.linalg.norm(model.embedding_ - reference) / np.linalg.norm(reference)
        assert err < 1e-8, type(X)
        np.testing.assert_array_equal(model.labels_, fitted.labels_)
    assert sp.issparse(model.affinity_matrix_)


def test_net_solver_on_precomputed_graph(graph, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the estimator's bookkeeping: the ops' tests check the kernels
    A, labels = graph
    model = SymNMF(3, affinity="precomputed", random_state=1, **NET).fit(sp.csr_matrix(A.astype(np.float32)))
    assert isinstance(model.net_, SymNMFNet) and model.n_iter_ == 20
    h = model.history_
    assert len(h["loss"]) == 21 and np.isfinite(h["loss"]).all()
    # The returned factor is the kept restart after the recipe's SymHALS finish: E is its own.
    U = model.embedding_.astype(np.float64)
    own = np.linalg.norm(A - U @ U.T) ** 2 / np.linalg.norm(A) ** 2
    assert model.relative_error_ == pytest.approx(own, rel=1e-4)
    assert model.embedding_.dtype == np.float32
    np.testing.assert_array_equal(model.fit_predict(A.astype(np.float32)), model.labels_)
    assert accuracy(labels, model.labels_) >= 0.95


def test_net_restarts_parameter(graph, monkeypatch):
    """n_restarts: how many restarts the net trains side by side (None: the recipe's), checked like the others."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the parameter's handling, on the torch path
    A, _ = graph
    two = SymNMF(3, affinity="precomputed", random_state=1, n_restarts=2, max_iter=3).fit(A)
    assert tuple(two.net_.U0.shape[:-2]) == (2,)
    default = SymNMF(3, affinity="precomputed", random_state=1, max_iter=3).fit(A)
    assert tuple(default.net_.U0.shape[:-2]) == (4,)
    with pytest.raises(ValueError, match="'n_restarts' parameter"):
        SymNMF(3, affinity="precomputed", n_restarts=0).fit(A)


def test_feature_input_builds_a_graph():
    features, labels = make_blobs(n_samples=[21, 25, 29], centers=[[0, 0], [6, 0], [0, 6]], random_state=2)
    model = SymNMF(3, solver="hals", random_state=3, n_neighbors=6).fit(features)
    A = model.affinity_matrix_
    assert sp.issparse(A) and A.shape == (75, 75)
    assert abs(A - A.T).max() < 1e-12 and A.min() >= 0
    assert model.n_features_in_ == 2
    assert accuracy(labels, model.labels_) >= 0.95
    # torch features give the same graph
    torch_model = SymNMF(3, solver="hals", random_state=3, n_neighbors=6).fit(torch.from_numpy(features))
    assert abs(torch_model.affinity_matrix_ - A).max() < 1e-12
    np.testing.assert_array_equal(torch_model.labels_, model.labels_)
    # the fitted data transforms to the embedding, sample by sample
    np.testing.assert_array_equal(model.transform(features), model.embedding_)
    np.testing.assert_array_equal(model.transform(features[7:8]), model.embedding_[7:8])
    # new feature vectors join the fitted graph: near a fitted sample, they land in its cluster
    moved = features[:20] + 0.05
    np.testing.assert_array_equal(model.predict(moved), model.labels_[:20])
    H = model.transform(moved)
    assert H.shape == (20, 3) and (H >= 0).all()
    np.testing.assert_array_equal(model.transform(moved[3:4]), H[3:4])


def test_transform_new_samples_is_nnls(graph, fitted_hals):
    A, _ = graph
    model = fitted_hals
    U = model.embedding_
    rng = np.random.default_rng(4)
    new = rng.random((5, A.shape[0])) * (rng.random((5, A.shape[0])) < 0.3)
    H = model.transform(new)
    assert H.shape == (5, 3)
    for h, a in zip(H, new):
        expected, _ = nnls(U, a)
        assert np.linalg.norm(h - expected) <= 1e-8 * max(np.linalg.norm(expected), 1e-30)
    # rows of the fitted affinity land in their own cluster
    rows = A[::3] + 0.0  # a copy with other values' identity: not recognised as the fitted data
    np.testing.assert_array_equal(model.predict(rows), model.labels_[::3])
    assert (model.transform(sp.csr_matrix(new)) - H).max() < 1e-10
    with pytest.raises(ValueError, match="features, but SymNMF is expecting"):
        model.transform(new[:, :-1])
    with pytest.raises(ValueError, match="negative"):
        model.transform(-new)


def test_bad_input_gives_clear_errors(graph):
    A, _ = graph
    pre = dict(affinity="precomputed", solver="hals")
    with pytest.raises(ValueError, match="not symmetric"):
        SymNMF(2, **pre).fit(A + np.triu(np.ones_like(A), 1))
    with pytest.raises(ValueError, match="negative"):
        SymNMF(2, **pre).fit(A - 0.5)
    nan = A.copy()
    nan[1, 2] = nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SymNMF(2, **pre).fit(nan)
    with pytest.raises(ValueError, match="NaN"):
        SymNMF(2, solver="hals").fit(np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 1.0]]))
    with pytest.raises(ValueError, match="exceeds the number of nodes"):
        SymNMF(A.shape[0] + 1, **pre).fit(A)
    with pytest.raises(ValueError, match="square"):
        SymNMF(2, **pre).fit(A[:, :-1])
    with pytest.raises(ValueError, match="dim 3"):
        SymNMF(2, **pre).fit(A[None])
    with pytest.raises(ValueError, match="n_components"):
        SymNMF(0, **pre).fit(A)
    with pytest.raises(ValueError, match="'affinity' parameter"):
        SymNMF(2, affinity="rbf").fit(A)
    with pytest.raises(ValueError, match="lam"):
        SymNMF(2, solver="net", affinity="precomputed", lam="zhu").fit(A)
    with pytest.raises(ValueError, match="penalty rho"):  # before any work, as for the net
        SymNMF(2, solver="admm", affinity="precomputed", lam="kuang").fit(A)
    with pytest.raises(ValueError, match="random_state"):
        SymNMF(2, random_state="seven", **pre).fit(A)
    with pytest.raises(ValueError, match="'n_init' parameter"):
        SymNMF(2, n_init=0, **pre).fit(A)
    with pytest.raises(ValueError, match="n_restarts"):
        SymNMF(2, solver="net", affinity="precomputed", n_init=2).fit(A)


def test_several_starts_keep_the_highest_modularity(graph, monkeypatch):
    """n_init: the start of highest modularity kept; start 0 is the one-start fit's."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the rule that keeps a start, on the CPU's kernels
    A, _ = graph
    default = SymNMF(3, solver="hals", affinity="precomputed", random_state=0).fit(A)
    model = SymNMF(3, solver="hals", affinity="precomputed", random_state=0, n_init=4).fit(A)
    assert model.modularity_ >= default.modularity_ - 1e-12
    one = SymNMF(3, solver="hals", affinity="precomputed", random_state=0, n_init=1).fit(A)
    assert np.array_equal(one.labels_, default.labels_) and np.array_equal(one.embedding_, default.embedding_)


@pytest.mark.parametrize("solver", ["hals", "anls", "pgd", "newton", "admm", "net"])
def test_all_zero_affinity_is_refused(solver):
    with pytest.raises(ValueError, match="all zero"):
        SymNMF(2, solver=solver, affinity="precomputed").fit(np.zeros((6, 6)))
    with pytest.raises(ValueError, match="all zero"):
        SymNMF(2, solver=solver, affinity="precomputed").fit(sp.csr_matrix((6, 6)))
    # feature rows of zeros have no cosine similarity to anything
    with pytest.raises(ValueError, match="all zero"):
        SymNMF(2, solver=solver, metric="cosine").fit(np.zeros((6, 3)))


def test_transform_is_row_wise_on_precomputed_rows(graph, fitted_hals):
    A, _ = graph
    model = fitted_hals
    np.testing.assert_array_equal(model.transform(A), model.embedding_)
    np.testing.assert_array_equal(model.transform(A[[5, 2]]), model.embedding_[[5, 2]])
    np.testing.assert_array_equal(model.transform(sp.csr_matrix(A[[9]])), model.embedding_[[9]])
    # fitted in float32 from float64 data: the data are matched in the fit's dtype
    A64 = np.asarray(A, dtype=np.float64) * (1 + 1e-3 * np.random.default_rng(0).random(A.shape))
    A64 = (A64 + A64.T) / 2  # values float32 cannot hold
    model32 = SymNMF(3, solver="hals", affinity="precomputed", random_state=0, dtype=torch.float32).fit(A64)
    np.testing.assert_array_equal(model32.transform(A64), model32.embedding_)
    np.testing.assert_array_equal(model32.transform(A64[[5, 2]]), model32.embedding_[[5, 2]])
    np.testing.assert_array_equal(model32.transform(sp.csr_matrix(A64)), model32.embedding_)


def test_threads_are_restored_after_fit(graph):
    A, _ = graph
    before = torch.get_num_threads()
    SymNMF(3, solver="hals", affinity="precomputed", random_state=0, n_threads=1).fit(A)
    assert torch.get_num_threads() == before


def test_transform_of_the_fitted_data_with_repeated_samples_is_the_embedding(monkeypatch):
    """Repeated samples have graph rows, and so embedding rows, of their own: transform and predict of the fitted
    data give embedding_ and labels_ all the same, for features and for a precomputed similarity."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    X = np.random.default_rng(13).normal(size=(80, 2))
    X = np.vstack([X, X[:40]])
    model = SymNMF(4, solver="hals", random_state=0).fit(X)
    assert np.array_equal(model.transform(X), model.embedding_)
    assert np.array_equal(model.predict(X), model.labels_)
    A = model.affinity_matrix_
    for affinity in (A, A.toarray()):
        pre = SymNMF(4, solver="hals", affinity="precomputed", random_state=0).fit(affinity)
        assert np.array_equal(pre.transform(affinity), pre.embedding_)
        assert np.array_equal(pre.predict(affinity), pre.labels_)


def test_a_sample_equal_to_a_fitted_one_gets_its_row_alone_or_in_a_batch(monkeypatch):
    """A sample equal to a fitted one gets the first such sample's row of embedding_, passed alone or with others:
    also where a repeated sample's kernel row is a near twin of the original's (rounding), and under cosine, where
    a parallel fitted sample is as near as the equal one."""
    from sklearn.metrics.pairwise import rbf_kernel

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rng = np.random.default_rng(1)
    X, _ = make_blobs(n_samples=120, centers=3, random_state=0)
    X = X[np.concatenate([np.arange(120), rng.integers(0, 120, 40)])]
    A = rbf_kernel(X, gamma=0.3)
    model = SymNMF(3, solver="hals", affinity="precomputed", random_state=0, max_iter=50).fit(A)
    first = [next(i for i in range(len(A)) if np.array_equal(A[i], A[j])) for j in range(len(A))]
    alone = np.array([model.transform(A[[j]])[0] for j in range(len(A))])
    assert np.array_equal(alone, model.embedding_[first])
    assert np.array_equal(model.transform(A[:-1]), model.embedding_[first[:-1]])
    F = np.abs(make_blobs(n_samples=60, centers=3, random_state=0)[0]) + 0.1
    F[30] = 2 * F[5]  # parallel to sample 5: as near under cosine
    model = SymNMF(3, solver="hals", metric="cosine", random_state=0, max_iter=50).fit(F)
    assert np.array_equal(model.transform(F[[30]])[0], model.embedding_[30])
    assert np.array_equal(model.transform(F[25:35]), model.embedding_[25:35])


def test_positive_only_tag_follows_the_affinity(monkeypatch):
    """A precomputed similarity refuses negative entries with scikit-learn's message; features take any sign."""
    from sklearn.utils.estimator_checks import check_positive_only_tag_during_fit

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for affinity in ("precomputed", "nearest_neighbors"):
        model = SymNMF(3, solver="hals", affinity=affinity, random_state=0, max_iter=20)
        assert model.__sklearn_tags__().input_tags.positive_only == (affinity == "precomputed")
        check_positive_only_tag_during_fit("SymNMF", model)
    from symnmf import SpecNet2

    for affinity in ("precomputed", "nearest_neighbors"):  # SpecNet2 refuses a negative similarity too
        model = SpecNet2(2, affinity=affinity, random_state=0, epochs=2)
        assert model.__sklearn_tags__().input_tags.positive_only == (affinity == "precomputed")
        check_positive_only_tag_during_fit("SpecNet2", model)


def test_a_precomputed_affinity_of_complex_or_too_large_values_is_refused_by_name():
    """A cast to float would cut complex numbers to their real part (torch only warns), and a float64 entry of
    1e300 made float32 was reported as "NaN or infinite"."""
    from symnmf.fitting import build_affinity

    A = np.array([[0.0, 1.0], [1.0, 0.0]])
    for bad in (A + 1j * A, torch.from_numpy(A + 1j * A), sp.csr_matrix(A + 1j * A)):
        with pytest.raises(TypeError, match="must hold real numbers"):
            build_affinity(bad, "precomputed")
    with pytest.raises(ValueError, match="too large for torch.float32; pass dtype=torch.float64"):
        build_affinity(A * 1e300, "precomputed", dtype=torch.float32)
    assert float(build_affinity(A * 1e300, "precomputed").max()) == 1e300  # float64 stays float64


@pytest.mark.parametrize("solver", ["hals", "anls"])
def test_repeated_points_fit_below_the_zero_factor(solver, monkeypatch):
    """Ten equal points: their kNN graph has a strongly negative eigenvalue, where the two-factor form converges
    with W and V apart under Kuang's penalty (a relative error above 1, worse than U = 0) unless it goes on from
    W = V; the fit then matches PGD's."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    X = np.ones((10, 3))
    fit = SymNMF(2, solver=solver, random_state=0).fit(X)
    pgd = SymNMF(2, solver="pgd", random_state=0).fit(X)
    assert fit.relative_error_ < 1.0
    assert fit.relative_error_ == pytest.approx(pgd.relative_error_, abs=1e-3)
