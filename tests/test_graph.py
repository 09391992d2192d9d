"""similarity_graph against a dense brute-force implementation of the same formula."""
import math

import numpy as np
import pytest
import torch

from symnmf.graph import faiss_knn_search, knn_search, similarity_graph


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert np.isfinite(err)
    return err


def knn_mask(score, k, largest):
    """Boolean (n, n): j among i's k best by score (diagonal excluded by the caller)."""
    n = score.shape[0]
    order = np.argsort(-score if largest else score, axis=1, kind="stable")
    mask = np.zeros((n, n), dtype=bool)
    mask[np.arange(n)[:, None], order[:, :k]] = True
    return mask


def dense_self_tuning(X, k=None, scale_neighbor=7, mask=None):
    """Kuang's graph written out on the full n x n distance matrix (on ``mask``'s pattern if given)."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    k = int(math.floor(math.log2(n))) + 1 if k is None else k
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    sigma = np.sqrt(np.sort(D, axis=1)[:, scale_neighbor - 1])
    A = np.exp(-D / np.outer(sigma, sigma))
    np.fill_diagonal(A, 0.0)
    if mask is None:
        mask = knn_mask(D, k, largest=False)
        mask |= mask.T
    A = np.where(mask, A, 0.0)
    d = A.sum(axis=1)
    return A / np.sqrt(np.outer(d, d)), mask


def dense_cosine(X, k=None):
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    k = int(math.floor(math.log2(n))) + 1 if k is None else k
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Xn @ Xn.T
    np.fill_diagonal(S, -np.inf)
    mask = knn_mask(S, k, largest=True)
    mask |= mask.T
    A = np.where(mask, np.clip(S, 0, None), 0.0)
    d = A.sum(axis=1)
    return A / np.sqrt(np.outer(d, d)), mask


def pattern(A):
    n = A.shape[0]
    mask = np.zeros((n, n), dtype=bool)
    crow, col = A.crow_indices().numpy(), A.col_indices().numpy()
    rows = np.repeat(np.arange(n), np.diff(crow))
    mask[rows, col] = True
    return mask


@pytest.mark.parametrize("n,d", [(53, 5), (130, 17)])
def test_euclidean_matches_dense_formula(n, d, rng):
    X = rng.normal(size=(n, d))
    A = similarity_graph(X)
    expected, mask = dense_self_tuning(X)
    assert A.layout == torch.sparse_csr and A.shape == (n, n) and A.dtype == torch.float64
    assert rel_err(A.to_dense().numpy(), expected) < 1e-12
    assert np.array_equal(pattern(A), mask)


def test_float32_features_give_float32_graph_close_to_float64(rng):
    X = rng.normal(size=(97, 9)).astype(np.float32)
    A = similarity_graph(X)
    assert A.dtype == torch.float32
    # A near-tie at the k-th neighbour may resolve differently in float32: compare the
    # values on the pattern float32 found, and the patterns up to such a flip.
    expected, _ = dense_self_tuning(X, mask=pattern(A))
    assert rel_err(A.to_dense().numpy(), expected) < 1e-5
    _, mask64 = dense_self_tuning(X)
    assert (pattern(A) != mask64).sum() <= 4


def test_explicit_neighbours_and_scale(rng):
    X = rng.normal(size=(61, 4))
    A = similarity_graph(X, n_neighbors=3, scale_neighbor=2)
    expected, mask = dense_self_tuning(X, k=3, scale_neighbor=2)
    assert rel_err(A.to_dense().numpy(), expected) < 1e-12
    assert np.array_equal(pattern(A), mask)
    assert (pattern(A).sum(axis=1) >= 3).all()


def test_cosine_matches_dense_formula(rng):
    X = np.abs(rng.normal(size=(77, 31)))  # non-negative, like tf-idf
    A = similarity_graph(X, metric="cosine")
    expected, mask = dense_cosine(X)
    assert rel_err(A.to_dense().numpy(), expected) < 1e-12
    assert np.array_equal(pattern(A), mask)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunked_equals_unchunked(metric):
    X = torch.rand(89, 6, dtype=torch.float64)
    full = similarity_graph(X, metric=metric, chunk_size=89)
    for chunk in (1, 7, 40):
        part = similarity_graph(X, metric=metric, chunk_size=chunk)
        assert torch.equal(part.crow_indices(), full.crow_indices())
        assert torch.equal(part.col_indices(), full.col_indices())
        assert rel_err(part.values().numpy(), full.values().numpy()) < 1e-14


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_float32_neighbours_do_not_depend_on_the_chunks(metric):
    # In float32 the expanded distance ||a||^2 + ||b||^2 - 2 a.b rounds with the products' blocking; the
    # search ranks twice k candidates by it and keeps the k nearest by the recomputed distance, so the
    # chunking (and so the ranks of symnmf.distributed_graph) cannot change which neighbours are kept.
    g = torch.Generator().manual_seed(7)
    X = (torch.randn(10, 64, generator=g) * 2)[torch.randint(0, 10, (1200,), generator=g)]
    X = X + torch.randn(1200, 64, generator=g)
    full_idx, full = knn_search(X, 11, metric=metric)
    for chunk in (1, 37, 500):
        idx, scores = knn_search(X, 11, metric=metric, chunk_size=chunk)
        assert torch.equal(idx, full_idx)
        assert torch.equal(scores, full)


def test_ties_are_broken_by_index():
    # points 1-4 at distance exactly 1 from point 0 (within its 2 k candidates), the rest far away
    X = torch.tensor([[0, 0], [0, -1], [1, 0], [0, 1], [-1, 0]] + [[10, 10 + i] for i in range(6)],
                     dtype=torch.float64)
    for chunk in (1, 3, 11):
        idx, dist = knn_search(X, 2, chunk_size=chunk)
        assert idx[0].tolist() == [1, 2] and dist[0].tolist() == [1.0, 1.0]


def test_exactly_symmetric_zero_diagonal_sorted_csr():
    X = torch.randn(150, 3)
    A = similarity_graph(X, chunk_size=16)
    dense = A.to_dense()
    assert torch.equal(dense, dense.T)
    assert torch.count_nonzero(torch.diagonal(dense)) == 0
    assert bool((A.values() >= 0).all()) and bool(torch.isfinite(A.values()).all())
    crow, col = A.crow_indices(), A.col_indices()
    for i in range(150):
        row_cols = col[crow[i] : crow[i + 1]]
        assert bool((row_cols[1:] > row_cols[:-1]).all())


def test_knn_search_finds_true_neighbours_nearest_first():
    X = torch.randn(70, 5, dtype=torch.float64)
    idx, dist = knn_search(X, 6, chunk_size=9)
    D = torch.cdist(X, X) ** 2
    D.fill_diagonal_(math.inf)
    best, best_idx = torch.sort(D, dim=1)
    assert torch.equal(idx, best_idx[:, :6])
    assert rel_err(dist.numpy(), best[:, :6].numpy()) < 1e-12


def test_duplicate_points_give_finite_weights(rng):
    base = rng.normal(size=(20, 3))
    X = np.concatenate([base] + [base[:1]] * 9)  # point 0 repeated: its sigma is 0
    A = similarity_graph(X)
    assert bool(torch.isfinite(A.values()).all())
    dense = A.to_dense()
    assert torch.equal(dense, dense.T)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype, scales", [(np.float32, (1e20, 1e-25)), (np.float64, (1e160, 1e-160))])
def test_any_feature_scale_gives_the_same_graph(rng, metric, dtype, scales):
    """The self-tuning graph does not change when every feature is multiplied by one factor: at scales where squared
    distances or norms overflow or underflow (the features are scaled by a power of two first), the same pattern,
    the same weights to rounding, and the same rows for new samples."""
    from symnmf.graph import similarity_to_graph

    X = rng.normal(size=(30, 4)).astype(dtype)
    A, scales_1, used_1 = similarity_graph(X, metric=metric, return_scales=True)
    new = rng.normal(size=(3, 4)).astype(dtype)
    rows_1, _ = similarity_to_graph(new, used_1, scales_1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for c in scales:
        B, scales_c, used_c = similarity_graph(X * dtype(c), metric=metric, return_scales=True)
        assert torch.equal(B.crow_indices(), A.crow_indices()) and torch.equal(B.col_indices(), A.col_indices())
        assert rel_err(B.values().numpy(), A.values().numpy()) < tol
        rows_c, _ = similarity_to_graph(new * dtype(c), used_c, scales_c)
        assert rel_err(rows_c.numpy(), rows_1.numpy()) < tol


def test_small_n_caps_neighbour_counts(rng):
    X = rng.normal(size=(5, 2))
    A = similarity_graph(X)  # k = 3, scale neighbour 7 capped at 4
    expected, _ = dense_self_tuning(X, k=3, scale_neighbor=4)
    assert rel_err(A.to_dense().numpy(), expected) < 1e-12


def test_bad_input_errors():
    with pytest.raises(ValueError, match="metric"):
        similarity_graph(np.ones((4, 2)), metric="manhattan")
    with pytest.raises(ValueError, match="2-D"):
        similarity_graph(np.ones(5))
    with pytest.raises(ValueError, match="at least 2"):
        similarity_graph(np.ones((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        similarity_graph(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="n_neighbors"):
        similarity_graph(np.random.rand(6, 2), n_neighbors=0)
    with pytest.raises(ValueError, match="chunk_size"):
        similarity_graph(np.random.rand(6, 2), chunk_size=0)
    for complex_or_text in (np.ones((6, 2), dtype=complex), torch.ones(6, 2, dtype=torch.complex64),
                            np.full((6, 2), "a")):
        with pytest.raises(TypeError, match="features must hold real numbers"):
            similarity_graph(complex_or_text)
    # binary features are numbers; features that need a gradient give a graph that does not
    assert similarity_graph(np.eye(6, 3) > 0).shape == (6, 6)
    assert not similarity_graph(torch.rand(6, 2, requires_grad=True)).requires_grad


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_search_recalls_the_exact_neighbours(metric):
    faiss = pytest.importorskip("faiss")
    # Fixed data and one FAISS thread: the recall checked is the index's, not that of an unlucky draw or of
    # the threads' insertion order in the graph index.
    rng = np.random.default_rng(17)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        _check_faiss_recall(rng, metric)
    finally:
        faiss.omp_set_num_threads(threads)


def _check_faiss_recall(rng, metric):
    centres = rng.normal(size=(8, 12)) * 4
    X = torch.from_numpy(centres[rng.integers(0, 8, 1500)] + rng.normal(size=(1500, 12))).float()
    if metric == "cosine":
        X = X / X.norm(dim=1, keepdim=True)
    k = 11
    exact_idx, exact_scores = knn_search(X, k, metric=metric)
    idx, scores = faiss_knn_search(X, k, metric=metric)
    assert idx.shape == (1500, k) and not bool((idx == torch.arange(1500)[:, None]).any())
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(idx.tolist(), exact_idx.tolist())])
    assert recall > 0.98, f"recall {recall:.4f} of FAISS's neighbours ({metric})"
    # scores are recomputed from the rows: exact for the neighbours found, sorted nearest first
    found = X[idx]
    expect = ((X[:, None] - found) ** 2).sum(-1) if metric == "euclidean" else (X[:, None] * found).sum(-1)
    assert rel_err(scores.numpy(), expect.numpy()) < 1e-6
    assert bool((scores.diff(dim=1) >= 0).all() if metric == "euclidean" else (scores.diff(dim=1) <= 0).all())


def test_faiss_graph_is_close_to_the_exact_graph(rng):
    pytest.importorskip("faiss")
    X = rng.normal(size=(800, 6)).astype(np.float32)
    exact = similarity_graph(X, neighbors="exact").to_dense().numpy()
    approx = similarity_graph(X, neighbors="faiss").to_dense().numpy()
    assert np.allclose(approx, approx.T) and rel_err(approx, exact) < 0.05


def test_neighbor_search_choice():
    with pytest.raises(ValueError, match="neighbors"):
        similarity_graph(np.random.rand(6, 2), neighbors="annoy")
    X = np.random.rand(40, 3)
    # below the size where "auto" turns to FAISS, auto is the exact search
    assert torch.equal(similarity_graph(X).to_dense(), similarity_graph(X, neighbors="exact").to_dense())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    X = torch.randn(300, 12, dtype=torch.float64)
    cpu = similarity_graph(X, chunk_size=64)
    gpu = similarity_graph(X, device="cuda", chunk_size=64)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.col_indices().cpu(), cpu.col_indices())
    assert rel_err(gpu.values().cpu().numpy(), cpu.values().numpy()) < 1e-12


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_new_samples_join_the_fitted_graph_row_by_row(metric):
    from symnmf.graph import similarity_to_graph

    rng = np.random.default_rng(5)
    features = rng.normal(size=(40, 3)) + 2.0
    A, scales, used = similarity_graph(features, metric=metric, n_neighbors=5, return_scales=True)
    assert torch.equal(A.to_dense(), similarity_graph(features, metric=metric, n_neighbors=5).to_dense())
    new = rng.normal(size=(6, 3)) + 2.0
    rows, nearest = similarity_to_graph(new, used, scales)
    assert rows.shape == (6, 40) and (rows >= 0).all()
    assert ((rows > 0).sum(1) <= 5).all() and ((rows > 0).sum(1) >= 1).all()
    for i in range(6):  # each row depends on its own sample only
        single, near = similarity_to_graph(new[i:i + 1], used, scales)
        assert torch.allclose(single[0], rows[i], rtol=1e-12, atol=0) and int(near[0]) == int(nearest[i])
    # the nearest fitted sample is found
    d = ((new[:, None, :] - features[None]) ** 2).sum(-1) if metric == "euclidean" else None
    if d is not None:
        np.testing.assert_array_equal(nearest.numpy(), d.argmin(1))


def test_features_far_from_the_origin_keep_their_true_neighbours(rng):
    """The candidates are ranked by ||a||^2 + ||b||^2 - 2 a.b, which loses about eps ||a||^2 to rounding: float32
    features with a common offset of 1e3 had 212 of 400 rows' neighbour sets wrong, and the search depended on its
    chunks. The features are centered first (graph.centered), which no distance notices: the graph of the shifted
    features is that of the features, and so are the rows of new samples."""
    from symnmf.graph import similarity_to_graph

    base = rng.normal(size=(400, 16))
    D = ((base[:, None] - base[None]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    true = np.sort(np.argsort(D, 1)[:, :9], 1)
    shifted = torch.tensor(base + 1e3, dtype=torch.float32)
    for chunk in (1, 400):
        idx, dist = knn_search(shifted, 9, chunk_size=chunk)
        np.testing.assert_array_equal(np.sort(idx.numpy(), 1), true)
        assert rel_err(dist.numpy(), np.take_along_axis(D, idx.numpy(), 1)) < 1e-3
    A, scales, used = similarity_graph(base.astype(np.float32), return_scales=True)
    B, scales_b, used_b = similarity_graph(base.astype(np.float32) + np.float32(1e3), return_scales=True)
    assert torch.equal(B.crow_indices(), A.crow_indices()) and torch.equal(B.col_indices(), A.col_indices())
    assert rel_err(B.values().numpy(), A.values().numpy()) < 1e-3
    new = rng.normal(size=(5, 16)).astype(np.float32)
    rows, _ = similarity_to_graph(new, used, scales)
    rows_b, _ = similarity_to_graph(new + np.float32(1e3), used_b, scales_b)
    assert torch.equal(rows_b > 0, rows > 0) and rel_err(rows_b.numpy(), rows.numpy()) < 1e-3


def test_knn_search_checks_its_arguments():
    X = torch.randn(10, 3)
    for k in (0, 10, 2.0, True):
        with pytest.raises(ValueError, match="k must be an int from 1 to n - 1 = 9"):
            knn_search(X, k)
    with pytest.raises(ValueError, match="metric must be one of"):
        knn_search(X, 3, metric="cosin")
