"""SpecNet2: the objective and its kernels, the mini-batch machinery, the estimator and its errors.

The objective is checked on the kernels (the Triton interpreter on a CPU) against a dense float64
formula; the training tests run the plain-torch path (`torch_path`), since hundreds of steps
through the interpreter would take minutes. Accuracy is measured against scipy's eigsh on graphs
with a clear eigengap; docs/specnet2.md has the study on digits.
"""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs

import symnmf_kernels as sk
from symnmf import similarity_graph
from symnmf.metrics import accuracy
from symnmf.specnet2 import SpecNet2, _Graph, _RunningGram, specnet2_objective
from symnmf.validation import as_similarity
from symnmf_kernels.ops import _common

from conftest import rel_err


@pytest.fixture
def torch_path(monkeypatch):
    monkeypatch.setattr(_common, "interpreting", lambda: False)


def _scipy(W):
    return sp.csr_matrix((W.values().numpy(), W.col_indices().numpy(), W.crow_indices().numpy()), shape=W.shape)


def _leading(W, k):
    """(lambda, V): the k leading eigenpairs of D^-1 W from eigsh on D^-1/2 W D^-1/2, descending."""
    d = np.asarray(W.sum(1)).ravel()
    s = 1 / np.sqrt(d)
    lam, V = sla.eigsh(sp.diags(s) @ W @ sp.diags(s), k=k, which="LA")
    order = np.argsort(lam)[::-1]
    return lam[order], s[:, None] * V[:, order]


def _sine(A, B):
    """Sine of the largest principal angle between the column spans of A and B (1 for NaN)."""
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        return 1.0
    qa, _ = np.linalg.qr(A)
    qb, _ = np.linalg.qr(B)
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False).min()
    return float(np.sqrt(max(0.0, 1 - cos**2)))


def _random_graph(n, seed, density=0.15):
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=density, random_state=rng, format="csr")
    A = (A + A.T).tocsr()
    A.setdiag(0)
    A.eliminate_zeros()
    A = A + sp.eye(n, k=1) + sp.eye(n, k=-1)  # a path through all nodes: no isolated node
    return A.tocsr()


def _blobs(n=300, seed=0):
    """Three clusters in 10-D: their kNN graph has lambda_1..3 = 1 and lambda_4 near 0.75, a clear gap."""
    X, y = make_blobs(n_samples=n, n_features=10, centers=3, cluster_std=1.0, random_state=seed)
    return X, y


# ------------------------------------------------------------------------------------------------ objective


def test_objective_on_the_kernels_matches_a_dense_formula():
    n, k = 40, 3
    W = _random_graph(n, 1)
    Wd = torch.tensor(W.toarray())
    Y = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    f = specnet2_objective(W, Y)
    f.backward()
    D = torch.diag(Wd.sum(1))
    Y0 = Y.detach().clone().requires_grad_(True)
    expected = -2 * torch.trace(Y0.T @ Wd @ Y0) + torch.linalg.matrix_norm(Y0.T @ D @ Y0) ** 2
    expected.backward()
    assert abs(f.item() - expected.item()) <= 1e-10 * abs(expected.item())
    grad = -4 * Wd @ Y0.detach() + 4 * D @ Y0.detach() @ (Y0.detach().T @ D @ Y0.detach())
    torch.testing.assert_close(Y0.grad, grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(Y.grad, grad, rtol=1e-10, atol=1e-10)


def test_minimiser_is_the_scaled_leading_eigenvectors(torch_path):
    """f(D^-1/2 V_k Lambda_k^1/2) = -sum lambda_i^2 and the gradient vanishes there."""
    n, k = 60, 4
    W = _random_graph(n, 2)
    d = np.asarray(W.sum(1)).ravel()
    lam, V = _leading(W, k)  # V = D^-1/2 (eigenvectors of the symmetric form)
    assert lam[-1] > 0
    Y = torch.tensor(V * np.sqrt(lam), requires_grad=True)
    f = specnet2_objective(W, Y)
    f.backward()
    f = f.item()
    assert abs(f + np.sum(lam**2)) <= 1e-9 * np.sum(lam**2)
    assert float(Y.grad.norm()) <= 1e-8 * np.sqrt(d.sum())
    # a rotation of it is a minimiser too; a different subspace is not
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((k, k)))
    assert abs(float(specnet2_objective(W, torch.tensor(V * np.sqrt(lam) @ Q))) - f) <= 1e-9 * abs(f)
    lam5, V5 = _leading(W, k + 1)
    other = np.concatenate([V5[:, :k - 1], V5[:, k:]], axis=1) * np.sqrt(np.concatenate([lam5[:k - 1], lam5[k:]]))
    assert float(specnet2_objective(W, torch.tensor(other))) > f + 1e-3 * (lam5[k - 1] ** 2 - lam5[k] ** 2)


def test_batch_rows_gathers_only_the_batch_rows():
    n = 50
    W = _random_graph(n, 3)
    graph = _Graph(as_similarity(W), torch.float64)
    scaled = W.toarray() / W.sum(1).mean()
    rows = torch.tensor([7, 3, 41, 3 + 1])
    sub, N, at = graph.batch_rows(rows)
    sub.validate()
    r = rows.numpy()
    expected_N = np.union1d(np.nonzero(W[r].toarray().any(0))[0], r)
    np.testing.assert_array_equal(N.numpy(), expected_N)
    np.testing.assert_array_equal(N[at].numpy(), r)
    assert sub.shape == (len(r), len(expected_N))
    assert sub.nnz == W[r].nnz  # exactly the batch rows' stored entries, nothing else of W
    dense = sk.spmm(sub, torch.eye(sub.shape[1], dtype=torch.float64))
    np.testing.assert_allclose(dense.numpy(), scaled[r][:, expected_N], rtol=1e-12)


def test_running_gram_tracks_the_exact_one():
    n, k = 80, 4
    degree = torch.rand(n, dtype=torch.float64) + 0.5
    Y = torch.randn(n, k, dtype=torch.float64)
    running = _RunningGram(Y.clone(), degree)
    for _ in range(20):
        rows = torch.randperm(n)[:15]
        Y[rows] = torch.randn(15, k, dtype=torch.float64)
        running.update(rows, Y[rows])
    exact = Y.T @ (degree[:, None] * Y)
    torch.testing.assert_close(running.value, exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(running.cache, Y, rtol=0, atol=0)
    Y += 0.1
    assert running.refresh(Y) > 0.01  # the error it had against the moved Y ...
    torch.testing.assert_close(running.value, Y.T @ (degree[:, None] * Y), rtol=1e-12, atol=1e-12)
    assert running.refresh(Y) <= 1e-15  # ... and none after the refresh


# ------------------------------------------------------------------------------------------------ estimator


SMALL = dict(hidden=(64, 64), batch_size=64, epochs=60, lr=1e-2, random_state=0, device="cpu")


def test_fit_spans_the_leading_eigenvectors_and_clusters(torch_path):
    X, y = _blobs()
    model = SpecNet2(3, **SMALL).fit(X)
    lam, V = _leading(model.affinity_matrix_, 3)
    assert model.embedding_.shape == (300, 3) and model.eigenvalues_.shape == (3,)
    assert model.network_.net[-1].out_features == 3 + 6  # the extra outputs of n_oversamples
    assert _sine(model.embedding_, V) <= 0.1
    np.testing.assert_allclose(model.eigenvalues_, lam, atol=0.01)
    assert accuracy(y, model.labels_) >= 0.99
    h = model.history_
    assert len(h["objective"]) == model.n_iter_ == 60
    assert np.isfinite(h["objective"]).all()
    lam9, _ = _leading(model.affinity_matrix_, 9)  # the network has 3 + 6 outputs
    # below what the leading 3 alone give, above the optimum -sum lambda^2 of all 9 (a lower bound)
    assert -np.sum(lam9**2) - 1e-3 <= h["objective"][-1] <= -np.sum(lam**2) * 0.99
    # the running Y^T D Y tracks the exact one once the step has decayed
    assert 0 <= h["ydy_error"][-1] <= 0.02


def test_full_batch_variant(torch_path):
    X, y = _blobs()
    model = SpecNet2(3, **{**SMALL, "batch_size": None, "epochs": 400}).fit(X)
    _, V = _leading(model.affinity_matrix_, 3)
    assert _sine(model.embedding_, V) <= 0.1
    assert accuracy(y, model.labels_) >= 0.99
    assert model.history_["ydy_error"] == [0.0] * 400


def test_exact_refreshes_of_the_running_gram(torch_path, monkeypatch):
    X, _ = _blobs(120)
    refreshes = []
    refresh = _RunningGram.refresh

    def spy(self, Y):
        refreshes.append(Y.shape[0])
        return refresh(self, Y)

    monkeypatch.setattr(_RunningGram, "refresh", spy)
    SpecNet2(2, **{**SMALL, "epochs": 2, "batch_size": 20}, ydy_refresh=2).fit(X)
    # 6 steps per epoch: refreshes after steps 2 and 4 (step 6 ends the epoch, which refreshes anyway)
    assert refreshes == [120] * 6
    refreshes.clear()
    SpecNet2(2, **{**SMALL, "epochs": 2, "batch_size": 20}).fit(X)
    assert refreshes == [120] * 2


def test_mini_batches_form_only_their_rows_of_w(torch_path, monkeypatch):
    X, _ = _blobs(120)
    seen = []
    batch_rows = _Graph.batch_rows

    def spy(self, rows):
        out = batch_rows(self, rows)
        seen.append((rows.numel(), out[0].shape[0], out[0].nnz, int(self.crow[rows + 1].sum() - self.crow[rows].sum())))
        return out

    monkeypatch.setattr(_Graph, "batch_rows", spy)
    SpecNet2(2, **{**SMALL, "epochs": 2, "batch_size": 50}).fit(X)
    assert [b for b, _, _, _ in seen] == [50, 50, 20] * 2
    assert all(b == rows and nnz == stored for b, rows, nnz, stored in seen)


def test_out_of_sample_extension(torch_path):
    X, y = _blobs(400, seed=1)
    rng = np.random.default_rng(0)
    held = rng.permutation(400)[:80]
    train = np.setdiff1d(np.arange(400), held)
    model = SpecNet2(3, **SMALL).fit(X[train])
    # the fitted rows map to their own embedding
    np.testing.assert_allclose(model.transform(X[train]), model.embedding_, rtol=1e-4, atol=1e-4)
    acc_in = accuracy(y[train], model.labels_)
    acc_out = accuracy(y[held], model.predict(X[held]))
    assert acc_in >= 0.99 and acc_out >= acc_in - 0.02


def test_precomputed_affinity_free_table_and_features(torch_path):
    X, y = _blobs()
    W = _scipy(similarity_graph(X))
    table = SpecNet2(3, **{**SMALL, "lr": None}, affinity="precomputed").fit(W)  # lr 0.1 for a table
    _, V = _leading(W, 3)
    assert _sine(table.embedding_, V) <= 0.1
    assert accuracy(y, table.labels_) >= 0.99
    with pytest.raises(ValueError, match="free table"):
        table.transform(X)
    net = SpecNet2(3, **SMALL, affinity="precomputed").fit(W, features=X)
    assert _sine(net.embedding_, V) <= 0.1
    assert net.transform(X[:7]).shape == (7, 3)
    assert net.n_features_in_ == 300


def test_extra_outputs_are_capped_and_dropped(torch_path):
    X, _ = _blobs(60)
    fast = {**SMALL, "epochs": 1}
    model = SpecNet2(3, **fast, n_oversamples=500).fit(X)
    assert model.network_.net[-1].out_features == 60  # never more outputs than nodes
    assert model.embedding_.shape == (60, 3) and model.transform(X[:4]).shape == (4, 3)
    assert SpecNet2(3, **fast, n_oversamples=0).fit(X).network_.net[-1].out_features == 3


def test_same_seed_same_embedding(torch_path):
    X, _ = _blobs(120)
    params = {**SMALL, "epochs": 3}
    a = SpecNet2(2, **params).fit(X)
    b = clone(a).fit(X)
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
    c = SpecNet2(2, **{**params, "random_state": 1}).fit(X)
    assert not np.array_equal(a.embedding_, c.embedding_)


def test_the_scale_of_w_and_of_the_features_changes_nothing(torch_path):
    """W is divided by its mean degree and the features standardised, so their scales cancel; both were cast to
    float32 first, where a float64 W at 1e39 or 1e-46 became inf or 0 (NaN degrees, a crash on the degree check)
    and features at 1e39 inf (a diverged fit)."""
    X, _ = _blobs(120)
    W = _scipy(similarity_graph(X)).astype(np.float64)
    params = {**SMALL, "epochs": 3}
    base = SpecNet2(3, **params, affinity="precomputed").fit(W, features=X)
    for s in (1e39, 1e-46):
        model = SpecNet2(3, **params, affinity="precomputed").fit(W * s, features=X)
        np.testing.assert_allclose(model.eigenvalues_, base.eigenvalues_, rtol=1e-5)
    scaled = SpecNet2(3, **params, affinity="precomputed").fit(W, features=X * 1e39)
    np.testing.assert_allclose(scaled.eigenvalues_, base.eigenvalues_, rtol=1e-4)
    assert rel_err(scaled.transform(X[:7] * 1e39), base.transform(X[:7])) < 1e-3


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused_naming_the_argument():
    X, _ = _blobs(60)
    W = _random_graph(60, 4)
    fast = dict(hidden=(8,), epochs=1, device="cpu", random_state=0)
    negative = W.tolil()
    negative[0, 1] = negative[1, 0] = -1.0
    negative = negative.tocsr()
    with pytest.raises(ValueError, match="X has negative entries"):
        SpecNet2(2, affinity="precomputed", **fast).fit(negative)
    nan = W.toarray()
    nan[0, 1] = nan[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SpecNet2(2, affinity="precomputed", **fast).fit(nan)
    with pytest.raises(ValueError, match="n_components = 61 exceeds"):
        SpecNet2(61, affinity="precomputed", **fast).fit(W)
    with pytest.raises(ValueError, match="square"):
        SpecNet2(2, affinity="precomputed", **fast).fit(W[:, :50])
    isolated = W.tolil()
    isolated[5, :] = 0
    isolated[:, 5] = 0
    with pytest.raises(ValueError, match="node 5 has no neighbour"):
        SpecNet2(2, affinity="precomputed", **fast).fit(isolated.tocsr())
    with pytest.raises(ValueError, match="features has 59 rows"):
        SpecNet2(2, affinity="precomputed", **fast).fit(W, features=X[:59])
    with pytest.raises(ValueError, match="features is for affinity='precomputed'"):
        SpecNet2(2, **fast).fit(X, features=X)
    with pytest.raises(ValueError, match="hidden"):
        SpecNet2(2, **{**fast, "hidden": (8, 0)}).fit(X)
    with pytest.raises(ValueError, match="batch_size"):
        SpecNet2(2, **{**fast, "batch_size": 0}).fit(X)
    model = SpecNet2(2, **fast).fit(X)
    for method in (model.transform, model.predict):  # scikit-learn's wording, as check_n_features_in_after_fitting
        with pytest.raises(ValueError, match="X has 3 features, but SpecNet2 is expecting 10 features as input"):
            method(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        model.transform(np.full((4, 10), np.nan))


def test_predict_and_transform_before_fit_raise_not_fitted():
    from sklearn.exceptions import NotFittedError

    model = SpecNet2(2, device="cpu")
    for method in (model.predict, model.transform):
        with pytest.raises(NotFittedError):
            method(np.zeros((4, 3)))
