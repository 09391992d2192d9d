"""Clustering metrics against hand-computed cases and scikit-learn."""
import math

import numpy as np
import pytest
import scipy.sparse
import torch
from sklearn.metrics import normalized_mutual_info_score

from symnmf.metrics import accuracy, contingency, modularity, nmi, purity, recovery_error


def test_accuracy_hand_cases():
    assert accuracy([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0  # relabelled perfect clustering
    # classes a,a,a,b,b,c ; clusters 0,0,1,1,1,2 : best matching a->0 (2), b->1 (2), c->2 (1)
    assert accuracy(list("aaabbc"), [0, 0, 1, 1, 1, 2]) == pytest.approx(5 / 6)
    # one cluster for two classes: only one class can be matched
    assert accuracy([0, 0, 1, 1, 1], [7, 7, 7, 7, 7]) == pytest.approx(3 / 5)
    # more clusters than classes: the extra cluster is wrong
    assert accuracy([0, 0, 0, 1], [0, 1, 2, 2]) == pytest.approx(2 / 4)


def test_labels_that_do_not_sort():
    """Any hashable labels: None beside ints, or strings beside ints, which np.unique cannot sort."""
    assert accuracy([None, None, 1], [1, 1, 2]) == 1.0
    assert purity(["a", 1, "a", None], [0, 0, 0, 1]) == pytest.approx(3 / 4)
    assert nmi([None, None, 1, 1], ["x", "x", 0, 0]) == pytest.approx(1.0)
    # classes in order of first appearance: None, "x", 3
    np.testing.assert_array_equal(contingency([None, "x", None, 3], [2, 1, 2, 1]), [[0, 2], [1, 0], [1, 0]])


def test_accuracy_is_hungarian_not_greedy():
    # counts: class 0 -> clusters [3, 3], class 1 -> [3, 0]. Taking the first largest cell
    # (0, 0) forces (1, 1) = 0: 3/9. The optimal matching (0, 1) + (1, 0) gives 6/9.
    true = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0])
    assert accuracy(true, pred) == pytest.approx(6 / 9)


def test_purity_hand_cases():
    assert purity([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert purity(list("aaabbc"), [0, 0, 1, 1, 1, 2]) == pytest.approx(5 / 6)
    # purity counts each cluster's majority, even when two clusters share a class
    assert purity([0, 0, 0, 1], [0, 1, 2, 2]) == pytest.approx(3 / 4)
    assert purity([0, 1, 2, 3], [0, 0, 0, 0]) == pytest.approx(1 / 4)


def test_nmi_hand_case_max_normalisation():
    true = [0, 0, 1, 1]
    pred = [0, 0, 0, 1]
    # H(true) = ln 2; H(pred) = -(3/4 ln 3/4 + 1/4 ln 1/4); MI = H(true) - H(true | pred)
    h_true = math.log(2)
    h_pred = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h_true_given_pred = 0.75 * (-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    mi = h_true - h_true_given_pred
    assert nmi(true, pred, "max") == pytest.approx(mi / max(h_true, h_pred), rel=1e-12)
    assert nmi(true, pred, "min") == pytest.approx(mi / min(h_true, h_pred), rel=1e-12)
    assert nmi(true, pred, "geometric") == pytest.approx(mi / math.sqrt(h_true * h_pred), rel=1e-12)
    assert nmi(true, pred) == nmi(true, pred, "max")


@pytest.mark.parametrize("normalization", ["arithmetic", "max", "min", "geometric"])
def test_nmi_matches_sklearn(normalization, rng):
    true = rng.integers(0, 7, size=503)
    pred = np.where(rng.random(503) < 0.6, true, rng.integers(0, 9, size=503))
    ours = nmi(true, pred, normalization)
    ref = normalized_mutual_info_score(true, pred, average_method=normalization)
    assert abs(ours - ref) <= 1e-12 * max(ref, 1e-300)


def test_nmi_extremes():
    assert nmi([1, 1, 2, 2], ["x", "x", "y", "y"]) == pytest.approx(1.0)
    assert nmi([0, 0, 0], [5, 5, 5]) == 1.0
    assert nmi([0, 1, 0, 1], [0, 0, 0, 0]) == 0.0
    # independent labellings: MI = 0
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1], "arithmetic") == pytest.approx(0.0, abs=1e-15)


def test_metrics_accept_torch_and_check_input():
    t = torch.tensor([0, 0, 1, 1, 2])
    p = torch.tensor([2, 2, 0, 0, 1])
    assert accuracy(t, p) == 1.0 and purity(t, p) == 1.0 and nmi(t, p) == pytest.approx(1.0)
    assert contingency(t, p).sum() == 5
    with pytest.raises(ValueError, match="same length"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        purity(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        nmi([], [])
    with pytest.raises(ValueError, match="normalization"):
        nmi([0, 1], [0, 1], normalization="sqrt")
    # NaN would be a class of its own (or one per NaN): refused in either argument, float or object labels
    for metric in (accuracy, purity, nmi, contingency):
        with pytest.raises(ValueError, match="labels_true contains NaN"):
            metric([0.0, np.nan, 1.0], [0, 1, 1])
        with pytest.raises(ValueError, match="labels_pred contains NaN"):
            metric(["a", "b", "b"], np.array([0, np.nan, 1], dtype=object))


def test_recovery_error_ignores_permutation_and_scale(rng):
    A = rng.uniform(0, 1, (30, 6))
    perm = rng.permutation(6)
    assert recovery_error(A[:, perm] * rng.uniform(0.5, 3, 6), A) < 1e-12
    # a perturbation of one column: the error is that column's error after the best scaling
    B = A.copy()
    B[:, 2] += rng.normal(0, 0.1, 30)
    b = B[:, 2]
    scaled = b * (b @ A[:, 2]) / (b @ b)
    expected = np.linalg.norm(scaled - A[:, 2]) / np.linalg.norm(A)
    assert abs(recovery_error(B[:, perm], A) - expected) < 1e-12
    assert recovery_error(np.where(np.arange(6) == 0, 0.0, A), A) == float("inf")
    assert recovery_error(np.full_like(A, np.nan), A) == float("inf")
    with pytest.raises(ValueError, match="d x k"):
        recovery_error(A[:, :5], A)
    # a true feature of zeros has no direction to match: named, not a NaN cosine deep in the assignment
    for bad in (np.where(np.arange(6) == 3, 0.0, A), np.full_like(A, np.nan)):
        with pytest.raises(ValueError, match="A_true must be finite with no all-zero column"):
            recovery_error(A, bad)


def _random_graph(n, density, seed):
    rng = np.random.default_rng(seed)
    A = rng.random((n, n)) * (rng.random((n, n)) < density)
    return np.triu(A, 1) + np.triu(A, 1).T


@pytest.mark.parametrize("n, k", [(7, 2), (60, 5), (211, 9)])
def test_modularity_matches_networkx(n, k):
    nx = pytest.importorskip("networkx")
    A = _random_graph(n, 0.2, n)
    labels = np.random.default_rng(n + 1).integers(0, k, n)
    G = nx.from_numpy_array(A)
    expected = nx.community.modularity(G, [set(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    for X in (A, torch.tensor(A).to_sparse_csr(), scipy.sparse.csr_matrix(A)):
        assert abs(modularity(X, labels) - expected) < 1e-12


def test_modularity_batch_and_hand_cases():
    # two triangles joined by one edge: the natural split scores (1 - 1/7) - 2 (1/2)^2 = 5/14
    A = np.zeros((6, 6))
    for i, j in [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (2, 3)]:
        A[i, j] = A[j, i] = 1.0
    split = np.array([0, 0, 0, 1, 1, 1])
    assert abs(modularity(A, split) - 5 / 14) < 1e-12
    assert abs(modularity(A, np.zeros(6, dtype=int))) < 1e-12  # one cluster: 1 - 1 = 0
    batch = torch.tensor(np.stack([split, np.zeros(6, dtype=int), np.arange(6) % 2]))
    q = modularity(torch.tensor(A, dtype=torch.float32), batch, n_clusters=2)
    assert q.shape == (3,) and q.dtype == torch.float64
    assert abs(float(q[0]) - 5 / 14) < 1e-6 and float(q[0]) == float(q.max())
    assert abs(float(q[2]) - modularity(A, np.arange(6) % 2)) < 1e-6


def test_modularity_checks_input():
    A = _random_graph(5, 0.5, 0)
    with pytest.raises(ValueError, match="square"):
        modularity(A[:4], np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="integer labels"):
        modularity(A, np.zeros(5))
    with pytest.raises(ValueError, match="last dimension n = 5"):
        modularity(A, np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=">= 0"):
        modularity(A, -np.ones(5, dtype=int))
    with pytest.raises(ValueError, match="n_clusters = 2"):
        modularity(A, np.arange(5), n_clusters=2)
    for bad in (np.zeros((5, 5)), np.where(A > 0, np.nan, 0.0)):
        with pytest.raises(ValueError, match="positive, finite total weight"):
            modularity(bad, np.zeros(5, dtype=int))
    # Q is at most 1 for non-negative weights only: a signed X (a correlation matrix) gave 1.5
    with pytest.raises(ValueError, match="negative entries"):
        modularity(np.array([[1.0, -0.5], [-0.5, 1.0]]), [0, 1])
    # a batch of no labellings: no scores, of the batch's shape
    for k in (None, 2):
        q = modularity(A, np.zeros((0, 5), dtype=int), n_clusters=k)
        assert q.shape == (0,) and q.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_modularity_on_cuda_matches_the_cpu():
    A = torch.tensor(_random_graph(301, 0.05, 3))
    labels = torch.randint(0, 7, (3, 301), generator=torch.Generator().manual_seed(4))
    expected = modularity(A, labels, 7)
    for X in (A.cuda(), A.to_sparse_csr().cuda(), A.float().to_sparse_csr().cuda()):
        q = modularity(X, labels.cuda(), 7)
        assert q.device.type == "cpu" and torch.allclose(q, expected, rtol=1e-5 if X.dtype == torch.float32 else 1e-12)
