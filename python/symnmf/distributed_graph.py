"""Kuang's self-tuning kNN graph (`symnmf.similarity_graph`), built row-sharded on torch.distributed.

    # torchrun --nproc-per-node 4 my_script.py
    from symnmf import distributed as sd, distributed_graph as sg
    graph = sg.similarity_graph("features.npy")   # this rank's rows of the graph: a ShardedGraph
    result = sd.fit(graph, 10, "hals")

Rank p reads only its own block of feature rows (offsets[p]:offsets[p+1], the blocks the sharded
solvers use) and ends with its own block of rows of the graph. No rank holds the whole feature
matrix, the whole graph, or more than a chunk x block of distances (docs/distributed.md):

1. Neighbours: the feature blocks travel round a ring. In P steps every rank searches every block
   for its rows' nearest neighbours (blocked products and top-k, the candidates' distances then
   recomputed from the row differences, as `knn_search` does) while it passes the block it holds to
   rank p - 1 and receives the next one from rank p + 1.
2. The union pattern: (i, j) is an edge when j is among i's k nearest or i among j's. Rank p knows
   its rows' own choices; every choice i -> j goes to j's owner with its distance (one exchange).
3. Weights: A_ij = exp(-D_ij / (sigma_i sigma_j)) and A <- D^{-1/2} A D^{-1/2} need sigma and the
   degree of the other ranks' rows: two all_gathers of n numbers.

The result is the single-process graph up to the order of the degree sums: both searches rank twice
k candidates per row by the expanded distance and keep the k nearest by the recomputed one, ties
broken by index in both steps (`symnmf.graph.block_candidates`, `keep_nearest`), so how the rows and
columns are blocked does not change the neighbours. The search is exact: n^2 d / P multiply-adds per
rank (FAISS's approximate search is a single-process option).
"""
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from .distributed import Comm, ShardedGraph, owner_of, row_offsets, write_shard, write_shards_index
from .graph import (
    _BLOCK_FLOATS, _METRICS, _check_count, _unit_rows, block_candidates, candidates_per_row, centered, keep_nearest,
)
from .validation import power_of_two_scale

__all__ = ["similarity_graph", "feature_rows"]


def feature_rows(features):
    """(n, d, dtype, read) for features given as a path to an .npy file (np.save; read(start, stop) maps
    the file and copies only those rows) or as an array or tensor that every rank holds."""
    if isinstance(features, (str, os.PathLike)):
        path = os.fspath(features)
        if not path.endswith(".npy"):
            raise ValueError(f"sharded features are read from an .npy file (np.save), got {path!r}; load other "
                             "formats yourself and pass the array")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read features from {path}: {err}") from None
    elif isinstance(features, torch.Tensor):
        array = features.detach()
        if array.layout != torch.strided:
            array = array.to_dense()
    else:
        import scipy.sparse as sp

        array = features.tocsr() if sp.issparse(features) else np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"features must be a 2-D (n_samples, n_features) array, got shape {tuple(array.shape)}")
    # as in one process (graph._as_features): the cast to float would drop an imaginary part
    if array.is_complex() if isinstance(array, torch.Tensor) else array.dtype.kind not in "biuf":
        raise ValueError(f"features must hold real numbers, got an array of {array.dtype}")
    n, d = (int(s) for s in array.shape)

    def read(start, stop):
        rows = array[start:stop]
        if hasattr(rows, "toarray"):
            rows = rows.toarray()
        if isinstance(rows, torch.Tensor):
            return rows
        return torch.from_numpy(np.array(rows))  # a copy: a memory map or read-only array stays untouched

    return n, d, array.dtype, read


def _default_dtype(dtype):
    """float32 features stay float32, anything else becomes float64 (as `symnmf cluster`)."""
    return torch.float32 if dtype in (torch.float32, np.float32) else torch.float64


def _start_ring(comm, block, incoming):
    """Send `block` to rank p - 1 and receive `incoming` from rank p + 1, without waiting."""
    P, p = comm.world_size, comm.rank
    ops = [dist.P2POp(dist.isend, block, comm._peer((p - 1) % P), group=comm.group),
           dist.P2POp(dist.irecv, incoming, comm._peer((p + 1) % P), group=comm.group)]
    return dist.batch_isend_irecv(ops)


def _search_block(X, sq, block, offset, own, nearest, cosine, chunk_size):
    """Merge block's candidates into each local row's running nearest (scores, global indices), in place,
    as `knn_search` ranks its candidates over all n at once."""
    best, best_idx = nearest
    n_local, n_search = best.shape
    nb, d = block.shape
    kk = candidates_per_row(n_search, nb - (1 if own else 0))
    if kk <= 0:
        return
    sq_block = None if cosine else (block * block).sum(dim=1)
    chunk = chunk_size or max(1, min(n_local, _BLOCK_FLOATS // max(nb, kk * d)))
    for start in range(0, n_local, chunk):
        stop = min(n_local, start + chunk)
        found, idx = block_candidates(X[start:stop], block, kk, cosine, None if cosine else sq[start:stop], sq_block,
                                      self_col=start if own else None)
        best[start:stop], best_idx[start:stop] = keep_nearest(
            torch.cat([best[start:stop], found], dim=1), torch.cat([best_idx[start:stop], idx + offset], dim=1),
            n_search, descending=cosine)


def _knn_ring(comm, offsets, X, n_search, cosine, chunk_size):
    """(scores, global indices) of each local row's n_search nearest rows among all n, nearest first,
    and the bytes this rank sent."""
    P, p = comm.world_size, comm.rank
    n_local = X.shape[0]
    # Empty slots: the worst score and the largest index, so that they sort after every candidate.
    nearest = (torch.full((n_local, n_search), -math.inf if cosine else math.inf, dtype=X.dtype, device=X.device),
               torch.full((n_local, n_search), offsets[-1], dtype=torch.int64, device=X.device))
    sq = None if cosine else (X * X).sum(dim=1)
    block, sent = X, 0
    for t in range(P):
        q = (p + t) % P
        requests, incoming = [], None
        if t + 1 < P:  # the next block arrives while this one is searched
            nxt = (p + t + 1) % P
            incoming = X.new_empty((offsets[nxt + 1] - offsets[nxt], X.shape[1]))
            requests = _start_ring(comm, block, incoming)
            sent += block.numel() * block.element_size()
        _search_block(X, sq, block, offsets[q], q == p, nearest, cosine, chunk_size)
        for request in requests:
            request.wait()
        block = incoming
    return nearest[0], nearest[1], sent


def _send_choices(comm, offsets, src, dst, scores):
    """Every choice src -> dst to dst's owner: (rows, cols, scores) of the choices made of this rank's rows,
    as entries (dst, src) of its block, and the bytes sent."""
    P, p = comm.world_size, comm.rank
    owner = owner_of(offsets, dst)
    order = torch.argsort(owner, stable=True)
    owner, src, dst, scores = owner[order], src[order], dst[order], scores[order]
    counts = torch.bincount(owner, minlength=P).cpu()
    bounds = [0, *torch.cumsum(counts, 0).tolist()]
    pairs = torch.stack([dst, src])
    mine = (pairs[:, bounds[p]:bounds[p + 1]], scores[bounds[p]:bounds[p + 1]])
    if P == 1:
        return mine[0][0], mine[0][1], mine[1], 0
    incoming = comm.counts_from_peers(counts.tolist())  # then the entries themselves
    got = {q: incoming[q] for q in range(P) if q != p}
    pair_sends = {q: pairs[:, bounds[q]:bounds[q + 1]].contiguous() for q in got}
    score_sends = {q: scores[bounds[q]:bounds[q + 1]].contiguous() for q in got}
    pair_recvs = {q: torch.empty((2, got[q]), dtype=torch.int64, device=src.device) for q in got}
    score_recvs = {q: torch.empty(got[q], dtype=scores.dtype, device=src.device) for q in got}
    comm.exchange(pair_sends, pair_recvs)
    comm.exchange(score_sends, score_recvs)
    sent = sum(t.numel() * t.element_size() for t in [*pair_sends.values(), *score_sends.values()])
    pairs_in = torch.cat([mine[0], *pair_recvs.values()], dim=1)
    scores_in = torch.cat([mine[1], *score_recvs.values()])
    return pairs_in[0], pairs_in[1], scores_in, sent


def _save_rows(comm, directory, offsets, indptr, cols, values, n):
    """This rank's rows as part-<rank>.npz, and (rank 0) shards.json: `save_shards`'s format, one part per rank."""
    import scipy.sparse as sp

    os.makedirs(directory, exist_ok=True)
    write_shard(directory, comm.rank, sp.csr_matrix((values, cols, indptr), shape=(len(indptr) - 1, n)))
    if comm.rank == 0:
        write_shards_index(directory, n, offsets, values.dtype)
    if comm.world_size > 1:  # the set is complete when any rank returns
        dist.barrier(group=comm.group)


def similarity_graph(features, n_neighbors=None, metric="euclidean", scale_neighbor=7, *, group=None, device=None,
                     dtype=None, chunk_size=None, save_to=None):
    """This rank's block of rows of `symnmf.similarity_graph(features)`, as a ShardedGraph.

    features: a path to an .npy file (each rank maps it and reads only its rows) or an array, tensor
    or scipy.sparse matrix that every rank holds (each keeps its rows). n_neighbors, metric and
    scale_neighbor as `symnmf.similarity_graph`. dtype: default float32 for float32 features, else
    float64 (as `symnmf cluster`). chunk_size: local rows per block of the search (default: about
    2^24 distances at once). Every rank of the group must call it (collective).

    The returned graph's `construction` dict holds this rank's seconds and bytes sent (feature
    blocks, choices, and the n-vectors gathered). save_to: a directory (on a file system every rank
    sees) where each rank writes its rows as part-<rank>.npz and rank 0 writes shards.json, the
    format of `symnmf.distributed.save_shards`: `ShardedGraph.from_shards` or `symnmf cluster DIR`
    read the graph back on any number of ranks.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    start_time = time.perf_counter()
    n, d, features_dtype, read = feature_rows(features)
    dtype = _default_dtype(features_dtype) if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    comm = Comm(group, device)
    if n < 2:
        raise ValueError(f"features needs at least 2 samples to build a graph, got {n}")
    if d == 0:
        raise ValueError("features has no columns (n_features = 0)")
    offsets = row_offsets(n, comm.world_size)
    lo, hi = offsets[comm.rank], offsets[comm.rank + 1]
    X = read(lo, hi)
    finite = bool(torch.isfinite(X).all())  # before the cast, as in one process: a finite 1e300 is inf in float32
    narrowed = X.dtype == torch.float64 and dtype == torch.float32  # the one cast that can overflow
    X = X.to(device=comm.device, dtype=dtype).contiguous()
    # 2: NaN or infinite entries, 1: entries too large for dtype; the first wins, as in one process
    bad = torch.tensor([2.0 if not finite else 1.0 if narrowed and not bool(torch.isfinite(X).all()) else 0.0],
                       dtype=torch.float64, device=comm.device)
    comm.all_reduce(bad, "max")
    if bad[0] == 2:
        raise ValueError("features has NaN or infinite entries; clean or impute them first")
    if bad[0] == 1:
        raise ValueError(f"features has entries too large for {dtype}; pass dtype=torch.float64 or rescale them")

    k = _check_count(int(math.floor(math.log2(n))) + 1 if n_neighbors is None else n_neighbors, "n_neighbors", n)
    cosine = metric == "cosine"
    if cosine:
        X = _unit_rows(X)
        s, n_search = 0, k
    else:
        s = _check_count(scale_neighbor, "scale_neighbor", n)
        n_search = max(k, s)
        # every rank's features times one power of two, as in one process (validation.power_of_two_scale)
        top = X.abs().amax().reshape(1).double() if X.numel() else torch.zeros(1, dtype=torch.float64, device=X.device)
        X = X * power_of_two_scale(comm.all_reduce(top, "max")).to(X.dtype)
        X, _ = centered(X, comm.all_reduce(X.sum(0, dtype=torch.float64), "sum"), n)  # graph.centered

    best, best_idx, feature_bytes = _knn_ring(comm, offsets, X, n_search, cosine, chunk_size)
    n_local = hi - lo
    src = torch.arange(lo, hi, device=X.device).repeat_interleave(k)
    dst = best_idx[:, :k].reshape(-1)
    chosen = best[:, :k].reshape(-1)
    rows_in, cols_in, scores_in, choice_bytes = _send_choices(comm, offsets, src, dst, chosen)
    # This block's entries of the union pattern: its rows' own choices and the choices of them; an edge
    # chosen from both ends carries the same distance up to rounding, and amax keeps one, as in one process.
    keys = torch.cat([(src - lo) * n + dst, (rows_in - lo) * n + cols_in])
    keys, inverse = torch.unique(keys, return_inverse=True)
    scores = torch.empty(keys.numel(), dtype=X.dtype, device=X.device).scatter_reduce_(
        0, inverse, torch.cat([chosen, scores_in]), reduce="amax", include_self=False)
    rows, cols = keys // n, keys % n
    counts = [offsets[q + 1] - offsets[q] for q in range(comm.world_size)]
    if cosine:
        weights = scores.clamp_min(0)
    else:
        sigma = comm.all_gather_rows(best[:, s - 1].sqrt().contiguous(), counts)
        scale = (sigma[rows + lo] * sigma[cols]).clamp_min(torch.finfo(X.dtype).tiny)
        weights = torch.exp(-scores / scale)
    degree = comm.all_gather_rows(torch.zeros(n_local, dtype=X.dtype, device=X.device).index_add_(0, rows, weights),
                                  counts)
    inv_sqrt = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    values = weights * (inv_sqrt[rows + lo] * inv_sqrt[cols])
    total = torch.stack([values.double().abs().sum()])
    comm.all_reduce(total)
    if total[0] == 0:
        raise ValueError("the kNN similarity graph of the features is all zero: no two samples are similar "
                         f"(metric={metric!r}; all-zero feature rows have no cosine similarity), nothing to cluster")
    indptr = torch.zeros(n_local + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(rows.cpu(), minlength=n_local), dim=0)
    if save_to is not None:
        _save_rows(comm, save_to, offsets, indptr.numpy(), cols.cpu().numpy(), values.cpu().numpy(), n)
    graph = ShardedGraph(indptr.numpy(), cols.cpu().numpy(), values.cpu().numpy(), n, comm=comm, dtype=dtype,
                         name="the kNN graph", offsets=offsets)
    gathered = (2 if not cosine else 1) * (comm.world_size - 1) * n_local * X.element_size()
    graph.construction = {
        "seconds": time.perf_counter() - start_time, "n_neighbors": k, "metric": metric,
        "feature_bytes_sent": feature_bytes, "choice_bytes_sent": choice_bytes, "gather_bytes_sent": gathered,
    }
    return graph
