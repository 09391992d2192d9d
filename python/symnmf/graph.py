"""Sparse similarity graphs from feature vectors (Kuang, Yun and Park, 2015).

`similarity_graph` builds the self-tuning k-nearest-neighbour graph used by the
SymNMF literature:

- D_ij = ||x_i - x_j||^2 (squared Euclidean distance);
- sigma_i = distance (not squared) from x_i to its 7th nearest neighbour, self excluded;
- A_ij = exp(-D_ij / (sigma_i sigma_j)), A_ii = 0;
- the edge (i, j) is kept when j is among the k = floor(log2 n) + 1 nearest
  neighbours of i, or i among those of j;
- A <- D^{-1/2} A D^{-1/2} with the degrees D = diag(A 1).

For text (``metric="cosine"``) the rows are L2-normalised and A_ij is their
cosine similarity (clipped at 0) on the same kNN pattern, then normalised the
same way.

The exact neighbour search runs over blocks of rows, so at most ``chunk_size x n``
distances exist at once; the work is matrix products and top-k on whatever
device the features are on. Its cost grows like n^2 d; beyond a few hundred
thousand rows on a CPU, ``neighbors="faiss"`` finds approximate neighbours with
FAISS's HNSW index (pip install faiss-cpu) in about n log n. Entry values are recomputed from the feature rows
(not from the expanded ||a||^2 + ||b||^2 - 2 a.b, which loses digits for near
neighbours), once per undirected edge, so the result is exactly symmetric.
"""
import math
import warnings

from dataclasses import dataclass

import numpy as np
import torch

from .validation import array_as_tensor, check_device, is_scipy_sparse, power_of_two_scale

__all__ = ["similarity_graph", "knn_search", "faiss_knn_search", "GraphScales", "similarity_to_graph",
           "candidates_per_row", "keep_nearest", "block_candidates"]

_METRICS = ("euclidean", "cosine")
_NEIGHBOR_SEARCHES = ("exact", "faiss", "auto")
# With neighbors="auto", CPU features of at least this many rows use FAISS when it is installed: there the
# exact search (n^2 d multiply-adds) takes minutes on a few cores (48 s at 70,000 x 784 on two).
_AUTO_FAISS_ROWS = 200_000
# HNSW settings: 32 links per node, and a search beam of at least 64 (or 2 k): recall above 0.98 on the
# 10-20 neighbours of image-like features (tests/test_graph.py measures it against the exact search).
_HNSW_LINKS = 32
_HNSW_MIN_EF = 64

# Budget of floats for one block of the neighbour search (a chunk_size x n distance block).
_BLOCK_FLOATS = 1 << 24


def _as_features(features, device, dtype, min_samples=2):
    """features (numpy, scipy.sparse or torch, (n, d)) as a dense float torch tensor."""
    if is_scipy_sparse(features):
        features = features.toarray()
    if isinstance(features, torch.Tensor):
        if features.layout != torch.strided:
            features = features.to_dense()
        X = features
    else:
        array = np.asarray(features)
        if array.dtype.kind not in "biuf":  # complex, strings, objects: nothing a distance is defined on here
            raise TypeError(f"features must hold real numbers, got an array of {array.dtype}")
        X = array_as_tensor(array)
    if X.is_complex():  # the cast below would drop the imaginary part
        raise TypeError(f"features must hold real numbers, got a tensor of {X.dtype}")
    X = X.detach()  # a graph of the data, not a function of it to differentiate
    if dtype is None:
        dtype = X.dtype if X.dtype in (torch.float32, torch.float64) else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    device = check_device(device)
    finite = bool(torch.isfinite(X).all())  # before the cast: a finite 1e300 becomes inf in float32
    narrowed = X.dtype == torch.float64 and dtype == torch.float32  # the one cast that can overflow
    X = X.to(device=device if device is not None else X.device, dtype=dtype)
    if finite and narrowed and not bool(torch.isfinite(X).all()):
        raise ValueError(f"features has entries too large for {dtype}; pass dtype=torch.float64 or rescale them")
    if X.dim() != 2:
        raise ValueError(f"features must be a 2-D (n_samples, n_features) array, got shape {tuple(X.shape)}")
    if X.shape[0] < min_samples:
        raise ValueError(
            f"features needs at least {min_samples} samples{' to build a graph' if min_samples > 1 else ''}, "
            f"got {X.shape[0]}"
        )
    if X.shape[1] == 0:
        raise ValueError("features has no columns (n_features = 0)")
    if not finite:
        raise ValueError("features has NaN or infinite entries; clean or impute them first")
    return X.contiguous()


def _check_count(value, name, n):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return min(int(value), n - 1)


def candidates_per_row(k, available):
    """How many candidates the search ranks by the expanded distance ||a||^2 + ||b||^2 - 2 a.b, whose
    rounding depends on how the products are blocked, before it keeps the k nearest by the distance
    recomputed from the row difference: twice k, so that no rounding near the k-th neighbour decides
    which k are kept, whatever the blocking (the chunks here, the ranks of symnmf.distributed_graph)."""
    return min(available, 2 * k)


def keep_nearest(scores, indices, k, descending=False):
    """The k best (scores, indices) of each row's candidates, ordered by score, then by index among equal
    scores: one answer whatever the order the candidates came in."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    scores, indices = torch.gather(scores, 1, by_index), torch.gather(indices, 1, by_index)
    scores, order = torch.sort(scores, dim=1, descending=descending, stable=True)
    return scores[:, :k], torch.gather(indices, 1, order[:, :k])


def block_candidates(rows, block, n_cand, cosine, sq_rows=None, sq_block=None, self_col=None):
    """Each of `rows`' n_cand best candidates among `block`'s rows by the expanded distance
    ||a||^2 + ||b||^2 - 2 a.b (sq_rows, sq_block: the squared norms) or, for cosine, the inner product;
    returned with their scores recomputed from the row differences: (scores, indices into block), unsorted.
    self_col: where rows[0] sits among block's rows when block holds `rows` (each row is then not its own
    candidate). The searches of this module and of symnmf.distributed_graph all go through here.
    Among scores tied with the n_cand-th, the lowest indices are the candidates: the same set whatever
    the rows and columns a block holds."""
    scores = rows @ block.T
    if not cosine:
        scores.mul_(-2).add_(sq_rows[:, None]).add_(sq_block[None, :])
    if self_col is not None:
        local = torch.arange(rows.shape[0], device=rows.device)
        scores[local, local + self_col] = -math.inf if cosine else math.inf
    # topk picks any of the scores tied with the last one it keeps. One more candidate shows where it had to
    # choose (the next score equals the last kept): there the choice is redone by column, else each block of
    # columns (the chunks, the ranks) could keep other neighbours.
    extra = int(n_cand < scores.shape[1])
    top, idx = torch.topk(scores, n_cand + extra, dim=1, largest=cosine, sorted=extra == 1)
    idx = idx[:, :n_cand]
    tie = top[:, n_cand - 1] == top[:, n_cand] if extra else None
    # On a GPU every row is redone where needed, without reading back which: a host read per block of rows would
    # stall the search's launches.
    redo = idx.new_empty(0) if tie is None else (
        torch.arange(tie.shape[0], device=tie.device) if tie.is_cuda else tie.nonzero()[:, 0])
    if redo.numel():
        tied, last = scores[redo], top[redo, n_cand - 1, None]
        columns = torch.arange(tied.shape[1], device=tied.device).expand_as(tied)
        key = torch.where(tied == last, columns, tied.shape[1])  # the tied ones by column, the worse ones last
        key = torch.where(tied > last if cosine else tied < last, -1, key)  # then every better one first
        chosen = torch.topk(key, n_cand, dim=1, largest=False, sorted=False).indices
        idx[redo] = torch.where(tie[redo, None], chosen, idx[redo])
    del scores
    if cosine:
        return (rows[:, None, :] * block[idx]).sum(dim=-1), idx
    diff = rows[:, None, :] - block[idx]
    return (diff * diff).sum(dim=-1), idx


def knn_search(X, k, metric="euclidean", chunk_size=None):
    """Indices (n, k) of each row's k nearest other rows of X, nearest first, and the
    squared distances (euclidean) or cosine similarities (cosine, rows already unit norm).

    Rows are searched in blocks of ``chunk_size`` so that at most chunk_size x n
    scores exist at once. The `candidates_per_row` best by the expanded distance are
    scored again from the row differences, and the k best by that score kept (ties
    broken by index), so the result does not depend on chunk_size.
    """
    n, d = X.shape
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise ValueError(f"k must be an int from 1 to n - 1 = {n - 1} (each row's other rows), got {k!r}")
    chunk_size = _chunk_rows(n, d, k, chunk_size)
    if metric == "cosine":
        return _search(X, k, True, chunk_size)
    # exact scaling, and a shift that does not change distances: see `centered`
    unit = float(power_of_two_scale(X))
    indices, scores = _search(centered(X * unit)[0], k, False, chunk_size)
    return indices, scores if unit == 1.0 else scores / unit / unit  # (unit ** 2 can leave the float range)


def _chunk_rows(n, d, k, chunk_size):
    """chunk_size as given (checked), or the default: the scores (c x n) and the candidates' rows gathered
    (c x n_cand x d) both bounded."""
    if chunk_size is None:
        chunk_size = max(1, min(n, _BLOCK_FLOATS // max(n, candidates_per_row(k, n - 1) * d)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def _search(X, k, cosine, chunk_size):
    """`knn_search` on features already prepared: unit rows (cosine), or scaled and centered (euclidean)."""
    n = X.shape[0]
    n_cand = candidates_per_row(k, n - 1)
    sq_norms = None if cosine else (X * X).sum(dim=1)
    indices = torch.empty(n, k, dtype=torch.int64, device=X.device)
    scores = torch.empty(n, k, dtype=X.dtype, device=X.device)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        exact, idx = block_candidates(X[start:stop], X, n_cand, cosine, None if cosine else sq_norms[start:stop],
                                      sq_norms, self_col=start)
        scores[start:stop], indices[start:stop] = keep_nearest(exact, idx, k, descending=cosine)
    return indices, scores


def faiss_knn_search(X, k, metric="euclidean"):
    """Approximate `knn_search` with FAISS's HNSW index (CPU): the same outputs, neighbours found by
    the graph index and their scores recomputed from the rows (so they are exact for the neighbours
    found), nearest first."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError('neighbors="faiss" needs FAISS: pip install faiss-cpu (or use neighbors="exact")') from e
    cosine = metric == "cosine"
    data = np.ascontiguousarray(X.detach().cpu().numpy(), dtype=np.float32)
    n, d = data.shape
    index = faiss.IndexHNSWFlat(d, _HNSW_LINKS, faiss.METRIC_INNER_PRODUCT if cosine else faiss.METRIC_L2)
    index.hnsw.efSearch = max(_HNSW_MIN_EF, 2 * (k + 1))
    index.add(data)
    _, found = index.search(data, k + 1)  # k + 1: the row itself is (nearly always) among them
    found = torch.from_numpy(found).to(X.device)
    rows = torch.arange(n, device=X.device)[:, None]
    # Drop the row itself, and the -1 FAISS returns when it finds fewer than k + 1 (then the row's
    # own index fills the gap and is dropped too): keep the first k others.
    bad = (found == rows) | (found < 0)
    order = torch.argsort(bad.to(torch.int8), dim=1, stable=True)[:, :k]
    idx = torch.gather(found, 1, order)
    short = torch.gather(bad, 1, order)
    if bool(short.any()):
        raise RuntimeError(f"FAISS found fewer than {k} neighbours for some rows; use neighbors='exact'")
    scores = torch.empty(n, k, dtype=X.dtype, device=X.device)
    step = max(1, _BLOCK_FLOATS // (k * d))  # rows per block: at most 2^24 gathered features at once
    for start in range(0, n, step):
        block, near = X[start:start + step], X[idx[start:start + step]]
        if cosine:
            scores[start:start + step] = (block[:, None, :] * near).sum(dim=-1)
        else:
            diff = block[:, None, :] - near
            scores[start:start + step] = (diff * diff).sum(dim=-1)
    scores, order = torch.sort(scores, dim=1, descending=cosine)
    return torch.gather(idx, 1, order), scores


def _use_faiss(neighbors, X):
    if neighbors not in _NEIGHBOR_SEARCHES:
        raise ValueError(f"neighbors must be one of {_NEIGHBOR_SEARCHES}, got {neighbors!r}")
    if neighbors != "auto":
        return neighbors == "faiss"
    if X.device.type != "cpu" or X.shape[0] < _AUTO_FAISS_ROWS:
        return False
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def similarity_graph(
    features,
    n_neighbors=None,
    metric="euclidean",
    scale_neighbor=7,
    device=None,
    chunk_size=None,
    dtype=None,
    return_scales=False,
    neighbors="auto",
):
    """Kuang's normalised self-tuning kNN similarity graph of the rows of ``features``.

    Parameters
    ----------
    features : array-like (n_samples, n_features)
        numpy array, scipy.sparse matrix (densified) or torch tensor.
    n_neighbors : int, optional
        k of the kNN pattern; default floor(log2 n) + 1. Capped at n - 1.
    metric : "euclidean" | "cosine"
        "euclidean": Gaussian of the squared distance with self-tuning scales
        sigma_i (images, generic features). "cosine": cosine similarity of the
        L2-normalised rows (text, e.g. tf-idf); rows of zero norm get no weight.
    scale_neighbor : int
        sigma_i is the distance to this nearest neighbour (7 in Kuang et al.).
        Euclidean only.
    device : torch device, optional
        Where to compute; default the features' device (CPU for numpy input).
    chunk_size : int, optional
        Rows per block of the neighbour search; default keeps a block near 2^24 scores.
    dtype : torch.float32 | torch.float64, optional
        Default: float64 features stay float64, anything else becomes float32.
    return_scales : bool
        Also return what `similarity_to_graph` needs to join new samples to
        the graph: its `GraphScales` and the features as used (a torch tensor:
        unit rows for cosine, otherwise the features times `GraphScales.unit`
        less `GraphScales.center`).
    neighbors : "auto" | "exact" | "faiss"
        The neighbour search. "exact": blocked matrix products (any device).
        "faiss": FAISS's approximate HNSW index on the CPU (pip install
        faiss-cpu); neighbours it misses are replaced by slightly farther ones.
        "auto": FAISS for CPU features of at least 200,000 rows when it is
        installed, exact otherwise.

    Returns
    -------
    torch sparse CSR tensor (n, n), symmetric, non-negative, zero diagonal,
    with sorted column indices; its stored entries are exactly the union kNN
    pattern (an entry whose weight underflows to 0 is still stored). With
    return_scales: (graph, GraphScales, features used).
    """
    graph = _build_graph(features, n_neighbors, metric, scale_neighbor, device, chunk_size, dtype, neighbors)
    return graph if return_scales else graph[0]


@dataclass
class GraphScales:
    """What a new sample's row of a fitted graph needs (see `similarity_to_graph`): the k of the
    kNN pattern, the scale neighbour s, the metric, each fitted sample's sigma_i (euclidean)
    and its degree before the normalisation, the power of two `unit` the features were
    multiplied by and the mean `center` then taken from them (euclidean: the features used
    are features * unit - center, and sigma is in their units)."""

    n_neighbors: int
    scale_neighbor: int
    metric: str
    sigma: torch.Tensor
    degree: torch.Tensor
    unit: float = 1.0
    center: torch.Tensor = None


def centered(X, column_sums=None, n=None):
    """(X less about the mean of the rows, that center), for X scaled to magnitudes below 1 (`power_of_two_scale`).

    Distances do not change, and the expanded distance ||a||^2 + ||b||^2 - 2 a.b that ranks the candidates loses
    about eps ||a||^2 to rounding: features far from the origin (a common offset of 1e3 on unit-spread float32 data)
    had their true neighbours ranked out. The mean is summed in float64 and rounded to a multiple of 2^-12, so that
    a sum in another order (the ranks' of symnmf.distributed_graph) gives the same center. column_sums and n: the
    sums over all n rows, where X holds some of them (a rank's)."""
    if column_sums is None:
        column_sums, n = X.sum(0, dtype=torch.float64), X.shape[0]
    center = torch.round(column_sums / max(n, 1) * 4096).div_(4096).to(X.dtype)
    return X - center, center


def _unit_rows(X):
    """Rows of X over their norms (zero rows stay zero), each first scaled exactly by a power of two so that the
    norm neither overflows nor underflows."""
    X = X * power_of_two_scale(X, dim=1)
    norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
    return X / torch.where(norms > 0, norms, torch.ones_like(norms))


def _build_graph(features, n_neighbors=None, metric="euclidean", scale_neighbor=7, device=None, chunk_size=None,
                 dtype=None, neighbors="exact"):
    """(the graph of `similarity_graph`, its GraphScales, the features as used: unit rows for cosine, times
    GraphScales.unit less GraphScales.center otherwise)."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    X = _as_features(features, device, dtype)
    n = X.shape[0]
    k = _check_count(int(math.floor(math.log2(n))) + 1 if n_neighbors is None else n_neighbors, "n_neighbors", n)
    cosine = metric == "cosine"
    unit, center = 1.0, None
    if cosine:
        X = _unit_rows(X)
        n_search = k
        s = 0
    else:
        s = _check_count(scale_neighbor, "scale_neighbor", n)
        n_search = max(k, s)
        unit = float(power_of_two_scale(X))
        X, center = centered(X * unit)

    if _use_faiss(neighbors, X):
        indices, scores = faiss_knn_search(X, n_search, metric=metric)
    else:
        # the features are prepared above (scaled and centered, or unit rows): knn_search would do it again
        indices, scores = _search(X, n_search, cosine, _chunk_rows(n, X.shape[1], n_search, chunk_size))

    # Undirected edges of the union pattern, each once as (lo, hi) with lo < hi.
    src = torch.arange(n, device=X.device).repeat_interleave(k)
    dst = indices[:, :k].reshape(-1)
    lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
    keys, inverse = torch.unique(lo * n + hi, return_inverse=True)
    # The two directions of an edge found from both ends carry the same score up to
    # rounding; amax picks one deterministically.
    edge_scores = torch.empty(keys.numel(), dtype=X.dtype, device=X.device).scatter_reduce_(
        0, inverse, scores[:, :k].reshape(-1), reduce="amax", include_self=False
    )
    lo, hi = keys // n, keys % n

    if cosine:
        weights = edge_scores.clamp_min(0)
        sigma = torch.ones(n, dtype=X.dtype, device=X.device)
    else:
        sigma = scores[:, s - 1].sqrt()
        # Duplicate points give sigma = 0; the clamp makes their mutual weight exp(0) = 1
        # and every other weight through them exp(-inf) = 0 instead of NaN.
        scale = (sigma[lo] * sigma[hi]).clamp_min(torch.finfo(X.dtype).tiny)
        weights = torch.exp(-edge_scores / scale)

    degree = torch.zeros(n, dtype=X.dtype, device=X.device)
    degree.index_add_(0, lo, weights).index_add_(0, hi, weights)
    inv_sqrt = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    weights = weights * (inv_sqrt[lo] * inv_sqrt[hi])

    rows = torch.cat([lo, hi])
    cols = torch.cat([hi, lo])
    values = torch.cat([weights, weights])
    order = torch.argsort(rows * n + cols)
    rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.zeros(n + 1, dtype=torch.int64, device=X.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), dim=0)
    with warnings.catch_warnings():  # torch's "sparse CSR is beta" notice
        warnings.simplefilter("ignore", UserWarning)
        A = torch.sparse_csr_tensor(crow, cols, values, size=(n, n))
    return A, GraphScales(k, s, metric, sigma, degree, unit, center), X


def similarity_to_graph(new_features, fitted_features, scales, chunk_size=None):
    """Rows (m, n) of similarities of m new samples to the n samples of a fitted graph.

    Each new sample x is joined to the fitted graph as one more node would be:
    its k nearest fitted samples (k of the fitted graph), weights
    exp(-||x - x_j||^2 / (sigma_x sigma_j)) with sigma_x its distance to its
    s-th nearest fitted sample (cosine: the clipped cosine similarity), then
    normalised by sqrt(degree_x degree_j) with the fitted degrees. The new
    samples do not change the fitted graph, so a row depends on its own sample
    only. fitted_features and scales: from `similarity_graph(...,
    return_scales=True)`. Returns a dense torch tensor (m, n) on the fitted features' device,
    and the index of each new sample's nearest fitted sample.
    """
    Y = _as_features(new_features, fitted_features.device, fitted_features.dtype, min_samples=1)
    F = fitted_features
    if Y.shape[1] != F.shape[1]:
        raise ValueError(f"new features have {Y.shape[1]} columns, the fitted ones {F.shape[1]}")
    m, n = Y.shape[0], F.shape[0]
    k = scales.n_neighbors
    cosine = scales.metric == "cosine"
    Y = _unit_rows(Y) if cosine else Y * scales.unit - scales.center.to(Y.device)  # the fitted features' units
    n_search = k if cosine else max(k, scales.scale_neighbor)
    n_cand = candidates_per_row(n_search, n)
    if chunk_size is None:
        chunk_size = max(1, min(max(m, 1), _BLOCK_FLOATS // max(n, n_cand * Y.shape[1])))
    rows = torch.zeros(m, n, dtype=F.dtype, device=F.device)
    nearest = torch.zeros(m, dtype=torch.int64, device=F.device)
    sq_norms = None if cosine else (F * F).sum(dim=1)
    for start in range(0, m, chunk_size):
        stop = min(m, start + chunk_size)
        Yc = Y[start:stop]
        exact, idx = block_candidates(Yc, F, n_cand, cosine, None if cosine else (Yc * Yc).sum(dim=1), sq_norms)
        exact, idx = keep_nearest(exact, idx, n_search, descending=cosine)
        nearest[start:stop] = idx[:, 0]
        idx, exact_k = idx[:, :k], exact[:, :k]
        if cosine:
            weights = exact_k.clamp_min(0)
        else:
            sigma_x = exact[:, scales.scale_neighbor - 1].sqrt()
            scale = (sigma_x[:, None] * scales.sigma[idx]).clamp_min(torch.finfo(F.dtype).tiny)
            weights = torch.exp(-exact_k / scale)
        degree_x = weights.sum(dim=1, keepdim=True)
        norm = degree_x * scales.degree[idx]
        weights = torch.where(norm > 0, weights / norm.sqrt(), torch.zeros_like(weights))
        rows[start:stop].scatter_(1, idx, weights)
    return rows, nearest
