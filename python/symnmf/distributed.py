"""Row-sharded SymNMF on torch.distributed: NCCL on GPUs, gloo on the CPU.

    # torchrun --nproc-per-node 4 my_script.py
    from symnmf import distributed as sd
    labels = sd.cluster("graph.npz", k=10, solver="hals", seed=0, out="run/")  # labels on rank 0, None elsewhere

    graph = sd.ShardedGraph.from_npz("graph.npz")     # this rank's block of rows only
    U0 = sd.init_factor(graph, rank=10, seed=0)        # this rank's rows of the single-process start
    result = sd.hals(graph, U0)                        # result.U: this rank's rows of the factor

Sharding (docs/distributed.md). The n nodes are split into P contiguous blocks
of rows, rank p owning rows offsets[p]:offsets[p+1] of X and of every n x r
factor. Each rank reads only its own rows of the CSR (from an .npz written by
scipy.sparse.save_npz, from a set of shard files written by `save_shards`, or
from an in-memory matrix that every rank holds).

The halo. Row i of X U reads the rows of U that row i's columns name. A rank's
block references its own rows and a set of other rows, the halo: the plan
(`HaloPlan`) computes that set once from the local column pattern, tells every
owner which of its rows to send (one exchange of index lists), and renumbers
the local columns into [halo rows before the block, own rows, halo rows after
it], which keeps the order of the entries in every row. Each product X U then
sends only the halo rows, by point-to-point send/recv, never an all_gather of
U. `HaloPlan.bytes_per_exchange` is what one product sends in all.

Everything else is r x r: Grams U^T U, the loss terms and the projected
gradient are local sums combined by all_reduce, so every rank takes the same
decisions (stopping, Armijo acceptance) from the same numbers.

Same start as one process: `init_factor` draws the same uniform stream as
`symnmf.solvers.init_factor` for the same seed (a CPU torch.Generator, drawn in
chunks; this rank keeps its own rows), so the sharded solvers follow the
single-process ones up to the order of floating-point reductions (the Gram and
the loss sums are added per rank, then across ranks).

Solvers: SymHALS (`hals`) and SymANLS (`anls`) on Zhu et al.'s two-factor form,
W and V both row-sharded; PGD (`pgd`, Kuang et al., Armijo on the projection
arc); SymNewton (`newton`, its matrix-free CG form, with PGD's Armijo); ADMM
(`admm`, Lu, Hong and Wang); and SymNMF-Net (`net`, in symnmf.distributed_net).
"""
import copy
import functools
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

import symnmf_kernels as sk
from symnmf_kernels.ops._common import dot64
from symnmf_kernels.ops.hals import hals_sweep_, revive_zero_columns_
from symnmf_kernels.sparse import CSR

from .fitting import DEFAULT_MAX_ITER, _per_scale, check_penalty, resolve_dtype, snapped_scale, thread_limit
from .metrics import cluster_indicators, modularity_from_sums, modularity_sums
from .solvers.admm import DEFAULTS as _ADMM_DEFAULTS, admm_step, default_rho
from .solvers.anls import DEFAULTS as _ANLS_DEFAULTS
from .solvers.hals import DEFAULTS as _HALS_DEFAULTS
from .solvers.base import Monitor, as_seed, check_lam, default_check_every, projected_gradient_sq
from .solvers.penalised import SYMMETRY_GAP, half_gradient
from .solvers.linesearch import check_search
from .solvers.newton import DEFAULTS as _NEWTON_DEFAULTS, cg_direction, is_descent
from .solvers.nnls import nnls_gram
from .solvers.pgd import DEFAULTS as _PGD_DEFAULTS
from .validation import as_similarity, canonical_csr, check_device, check_similarity, is_int, power_of_two_scale

__all__ = [
    "Comm", "row_offsets", "BALANCES", "read_npz_rows", "save_shards", "HaloPlan", "ShardedGraph", "init_factor",
    "hals", "pgd", "anls", "net", "SOLVERS", "DEFAULT_MAX_ITER", "fit", "DistributedFit", "cluster", "gather_rows",
    "init_from_env", "owner_of", "read_shards", "write_shard", "write_shards_index",
]

SHARDS_INDEX = "shards.json"


# ------------------------------------------------------------------------------------------ the group
class Comm:
    """The process group a sharded problem runs on: rank, world size, device, and the collectives used.

    group: a torch.distributed group, or None for the default group when torch.distributed is
    initialised, else a single process (world size 1: every collective is the identity, so the
    sharded code runs, unchanged, without torchrun).
    """

    def __init__(self, group=None, device=None):
        self.group = group
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self.active else 0
        self.world_size = dist.get_world_size(group) if self.active else 1
        self.backend = dist.get_backend(group) if self.active else None
        if device is None:
            if self.backend == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            else:
                device = torch.device("cpu")
        self.device = torch.device(device)
        if self.backend == "nccl" and self.device.type != "cuda":
            raise ValueError("the NCCL backend needs CUDA tensors: pass a CUDA device (or use gloo on the CPU)")

    def all_reduce(self, t, op="sum"):
        """t summed (or maxed) over the ranks, in place; returns t."""
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self.group)
        return t

    def exchange(self, sends, recvs):
        """Point-to-point: sends[p] goes to rank p, recvs[p] (preallocated) comes from rank p; empty skipped."""
        ops = []
        for p, t in sends.items():
            if t.numel():
                ops.append(dist.P2POp(dist.isend, t, self._peer(p), group=self.group))
        for p, t in recvs.items():
            if t.numel():
                ops.append(dist.P2POp(dist.irecv, t, self._peer(p), group=self.group))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()

    def counts_from_peers(self, counts):
        """Given counts[q], this rank's count of items for rank q, every rank's count for this rank (a list of P
        ints; one all_reduce of the P x P matrix)."""
        P = self.world_size
        matrix = torch.zeros((P, P), dtype=torch.int64, device=self.device)
        matrix[self.rank] = torch.as_tensor(counts, dtype=torch.int64).to(self.device)
        self.all_reduce(matrix)
        return [int(c) for c in matrix[:, self.rank].cpu()]

    def _peer(self, p):
        return dist.get_global_rank(self.group, p) if self.group is not None else p

    def all_gather_rows(self, local, counts):
        """The row blocks of every rank stacked (counts[p] rows from rank p), on every rank."""
        if self.world_size == 1:
            return local
        most = max(counts)
        padded = local.new_zeros((most, *local.shape[1:]))
        padded[: local.shape[0]] = local
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(out, padded, group=self.group)
        return torch.cat([o[:c] for o, c in zip(out, counts)])


def row_offsets(n, world_size, indptr=None):
    """The first row of every rank's block and n: rank p owns rows offsets[p]:offsets[p+1].

    Balanced by rows, or, given the matrix's row pointers `indptr` (n + 1), by stored entries
    (each block still has at least one row).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"the rows are split into a positive int number of blocks, got {world_size!r}")
    if n < world_size:
        raise ValueError(f"n = {n} nodes cannot be split over {world_size} ranks: use at most n ranks")
    if indptr is None:
        return [n * p // world_size for p in range(world_size + 1)]
    indptr = np.asarray(indptr, dtype=np.int64)
    if indptr.shape != (n + 1,):
        raise ValueError(f"indptr must have n + 1 = {n + 1} entries, got {indptr.shape}")
    targets = indptr[-1] * np.arange(world_size + 1) / world_size
    offsets = np.searchsorted(indptr, targets, side="left").astype(np.int64)
    offsets[0], offsets[-1] = 0, n
    for p in range(1, world_size):  # at least one row per block
        offsets[p] = min(max(offsets[p], offsets[p - 1] + 1), n - (world_size - p))
    return [int(o) for o in offsets]


def owner_of(offsets, rows):
    """The rank that owns each global row in `rows` (a tensor), for the row blocks `offsets`."""
    bounds = torch.tensor(offsets, dtype=torch.int64, device=rows.device)
    return torch.searchsorted(bounds, rows, right=True) - 1


BALANCES = ("rows", "nnz")


def _offsets(n, comm, balance, indptr_reader):
    if balance not in BALANCES:
        raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
    return row_offsets(n, comm.world_size, indptr_reader() if balance == "nnz" else None)


def _on_every_rank(comm, action, describe):
    """action()'s result on every rank; where it raises on any rank, every rank raises the same ValueError,
    describe(first failing rank, its error as one line). A failure left on one rank would leave the others
    waiting in their next collective until gloo or NCCL drops the connection."""
    try:
        result, caught = action(), None
    except Exception as err:  # noqa: BLE001 - raised again below, as a ValueError on every rank
        result, caught = None, err
    failed = torch.tensor([float(caught is not None)], device=comm.device)
    comm.all_reduce(failed, "max")
    if not failed[0]:
        return result
    mine = None if caught is None else " ".join(str(caught).split()) or type(caught).__name__
    errors = [mine]
    if comm.world_size > 1:
        errors = [None] * comm.world_size
        dist.all_gather_object(errors, mine, group=comm.group)
    rank = next(p for p, error in enumerate(errors) if error is not None)
    raise ValueError(describe(rank, errors[rank])) from caught


def _read_on_every_rank(comm, source, read, offsets=None):
    """read() on every rank, or the same ValueError on every rank naming the source and the rank that failed:
    its rows of the blocks `offsets`, or (None) the row pointers that the blocks are computed from."""
    def describe(rank, error):
        what = "the row pointers" if offsets is None else f"its rows {offsets[rank]}:{offsets[rank + 1]}"
        return f"{source}: rank {rank} could not read {what}: {error}"

    return _on_every_rank(comm, read, describe)


# -------------------------------------------------------------------------------------- reading rows
def _npy_member(zf, key):
    names = set(zf.namelist())
    name = key + ".npy" if key + ".npy" in names else key
    if name not in names:
        raise KeyError(key)
    return name


def _open_npy(zf, key):
    """(file positioned at the data, shape, dtype) of one array of an .npz, without reading the data."""
    f = zf.open(_npy_member(zf, key))
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran and len(shape) > 1:
        f.close()
        raise ValueError(f"{key}: Fortran-ordered arrays are not supported")
    return f, shape, dtype


def _read_slice(zf, key, start, stop):
    """Elements start:stop of a 1-d array of an .npz: only those bytes are kept (a compressed member is
    decompressed up to stop, in a stream)."""
    f, shape, dtype = _open_npy(zf, key)
    with f:
        if dtype.hasobject:
            raise ValueError(f"{key}: object arrays are not supported")
        base = f.tell()
        f.seek(base + start * dtype.itemsize)
        count = stop - start
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise ValueError(f"{key}: truncated array in the archive")
        return np.frombuffer(data, dtype=dtype).copy()


def _read_small(zf, key):
    with zf.open(_npy_member(zf, key)) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def read_npz_rows(path, start, stop):
    """Rows start:stop of a CSR matrix saved by scipy.sparse.save_npz, reading only those rows.

    Returns (indptr (stop - start + 1,) int64 from 0, indices int64 (global columns), data, shape).
    The row pointers, indices and values of other rows are never held in memory (a compressed
    archive is still decompressed up to the last row read). Only the "csr" format is read this way.
    """
    with zipfile.ZipFile(path) as zf:
        try:
            fmt = _read_small(zf, "format")
        except KeyError:
            raise ValueError(f"{path} is not a scipy.sparse .npz (no 'format' entry)") from None
        fmt = fmt.item() if fmt.shape == () else fmt[0]
        fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
        if fmt != "csr":
            raise ValueError(
                f"{path} holds a {fmt!r} matrix; the sharded reader needs CSR: save it with "
                "scipy.sparse.save_npz(path, A.tocsr())"
            )
        shape = tuple(int(s) for s in _read_small(zf, "shape"))
        if not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"rows {start}:{stop} out of range for a matrix of {shape[0]} rows")
        indptr = _read_slice(zf, "indptr", start, stop + 1).astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        indices = _read_slice(zf, "indices", lo, hi).astype(np.int64)
        data = _read_slice(zf, "data", lo, hi)
    return indptr - lo, indices, data, shape


def save_shards(X, directory, parts, *, order=None):
    """Write the rows of X (scipy.sparse, square) as `parts` shard files part-00000.npz, ... plus shards.json.

    Each shard is a CSR block of consecutive rows (global column numbers) saved by
    scipy.sparse.save_npz; shards.json records n, the row offsets and the files. Any number of
    ranks can read the set (`ShardedGraph.from_shards`): each reads only the rows it owns.

    order: None keeps the node numbering; "rcm" or "degree" renumbers the nodes once
    (`symnmf_kernels.sparse.locality_order`) so that neighbours sit in the same or nearby
    blocks, which shrinks the halo (docs/distributed.md). The permutation is saved (perm.npy:
    node perm[i] of X is row i of the shards), and the sharded fit maps it back: the random start,
    the labels and the factor are those of X's own numbering.
    """
    import scipy.sparse as sp

    A = canonical_csr(sp.csr_matrix(X))
    n = A.shape[0]
    if A.shape[1] != n:
        raise ValueError(f"X must be square, got shape {A.shape}")
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or not 1 <= parts <= n:
        raise ValueError(f"parts must be an int from 1 to n = {n} (one shard holds at least one row), got {parts!r}")
    index = {}
    os.makedirs(directory, exist_ok=True)
    if order is not None:
        from symnmf_kernels.sparse import locality_order

        perm = locality_order(A, order).cpu().numpy().astype(np.int64)
        A = A[perm][:, perm].tocsr()
        A.sort_indices()
        np.save(os.path.join(directory, "perm.npy"), perm)
        index.update(order=order, perm="perm.npy")
    offsets = row_offsets(n, parts)
    for p in range(parts):
        write_shard(directory, p, A[offsets[p]:offsets[p + 1]])
    return write_shards_index(directory, n, offsets, A.dtype, **index)


def write_shard(directory, part, rows):
    """Rows (scipy.sparse, global column numbers) as the shard file part-<part>.npz of `directory`."""
    import scipy.sparse as sp

    sp.save_npz(os.path.join(directory, f"part-{part:05d}.npz"), sp.csr_matrix(rows), compressed=False)


def write_shards_index(directory, n, offsets, dtype, **extra):
    """shards.json for the parts part-00000.npz ... of row blocks `offsets` (`save_shards`'s index); its path."""
    index = {"n": int(n), **extra, "offsets": [int(o) for o in offsets],
             "files": [f"part-{p:05d}.npz" for p in range(len(offsets) - 1)], "dtype": str(np.dtype(dtype))}
    path = os.path.join(directory, SHARDS_INDEX)
    with open(path, "w") as f:
        json.dump(index, f, indent=1)
    return path


def read_shards(directory):
    """The whole graph of a shards folder (`save_shards`, or written by the ranks that built it) as a scipy CSR
    matrix in its nodes' own order: rows and columns renumbered when the shards were written are put back."""
    import scipy.sparse as sp

    with open(os.path.join(directory, SHARDS_INDEX)) as f:
        index = json.load(f)
    indptr, indices, data, shape = _read_shard_rows(directory, 0, int(index["n"]))
    A = sp.csr_matrix((data, indices, indptr), shape=shape)
    if index.get("perm"):  # row i of the shards is node perm[i]
        inverse = np.argsort(np.load(os.path.join(directory, index["perm"])))
        A = A[inverse][:, inverse].tocsr()
    return A


def _read_shard_rows(directory, start, stop):
    with open(os.path.join(directory, SHARDS_INDEX)) as f:
        index = json.load(f)
    offsets, n = index["offsets"], int(index["n"])
    pieces = []
    for p, name in enumerate(index["files"]):
        a, b = max(start, offsets[p]), min(stop, offsets[p + 1])
        if a >= b:
            continue
        indptr, indices, data, shape = read_npz_rows(os.path.join(directory, name), a - offsets[p], b - offsets[p])
        if shape[1] != n:
            raise ValueError(f"{name} has {shape[1]} columns, {SHARDS_INDEX} says n = {n}")
        pieces.append((indptr, indices, data))
    if not pieces:
        return np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0), (n, n)
    indptr = [pieces[0][0]]
    total = pieces[0][0][-1]
    for ip, _, _ in pieces[1:]:
        indptr.append(ip[1:] + total)
        total += ip[-1]
    return (np.concatenate(indptr), np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces]), (n, n))


# --------------------------------------------------------------------------------------------- halo
class HaloPlan:
    """Which rows of U each rank sends and receives for the local product X_local @ U, computed once.

    needed: the sorted global rows outside this rank's block that its columns reference; they come
    from their owners, recv_counts[p] from rank p. send_rows[p]: this rank's local rows that rank p
    needs. The extended factor U_ext stacks [halo rows of ranks before, own rows, halo rows of
    ranks after], in global order, and the local CSR's columns are renumbered into it.
    """

    def __init__(self, comm, offsets, col_indices):
        self.comm = comm
        P, me = comm.world_size, comm.rank
        lo, hi = offsets[me], offsets[me + 1]
        self.lo, self.hi = lo, hi
        cols = col_indices
        outside = (cols < lo) | (cols >= hi)
        needed = torch.unique(cols[outside])  # sorted
        recv_counts = torch.bincount(owner_of(offsets, needed), minlength=P).cpu()
        self.needed = needed
        self.n_before = int((needed < lo).sum())
        self.n_local = hi - lo
        self.n_ext = self.n_local + needed.numel()
        # Renumber the columns: monotone, so every row keeps the order of its entries.
        ext = torch.empty_like(cols)
        inside = ~outside
        ext[inside] = cols[inside] - lo + self.n_before
        pos = torch.searchsorted(needed, cols[outside])
        ext[outside] = torch.where(cols[outside] < lo, pos, pos + self.n_local)
        self.ext_cols = ext
        # Exchange the counts (what each rank receives from this one), then the lists.
        self.recv_counts = [int(c) for c in recv_counts]
        self.send_counts = comm.counts_from_peers(self.recv_counts)
        starts = np.concatenate([[0], np.cumsum(self.recv_counts)])
        sends = {p: needed[starts[p]:starts[p + 1]].to(comm.device).contiguous() for p in range(P) if p != me}
        recvs = {p: torch.empty(self.send_counts[p], dtype=torch.int64, device=comm.device)
                 for p in range(P) if p != me}
        comm.exchange(sends, recvs)
        self.send_rows = {p: (recvs[p] - lo).to(comm.device) for p in recvs if recvs[p].numel()}
        for p, rows in self.send_rows.items():
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.n_local):
                raise RuntimeError(f"rank {p} asked rank {me} for rows it does not own")
        # Where each peer's rows land in U_ext.
        self.recv_slices = {}
        for p in range(P):
            if p == me or not self.recv_counts[p]:
                continue
            a = int(starts[p])
            a = a if p < me else a + self.n_local
            self.recv_slices[p] = (a, a + self.recv_counts[p])
        self.exchanges = 0
        self.bytes_sent = 0

    @property
    def halo_rows(self):
        """Rows this rank receives per product."""
        return int(self.needed.numel())

    @property
    def rows_sent(self):
        """Rows this rank sends per product."""
        return int(sum(self.send_counts))

    def bytes_per_exchange(self, r, dtype):
        """Bytes this rank sends for one product X U with an n x r factor of `dtype`."""
        return self.rows_sent * r * torch.empty((), dtype=dtype).element_size()

    def extend(self, U):
        """U_ext: this rank's rows U (n_local x r) with the halo rows received from their owners; for R
        factors U (R, n_local, r), U_ext (R, n_ext, r) in one exchange."""
        m = U.shape[-2]
        U_ext = U.new_empty((*U.shape[:-2], self.n_ext, U.shape[-1]))
        U_ext[..., self.n_before:self.n_before + m, :] = U
        sends = {p: U.index_select(-2, rows) for p, rows in self.send_rows.items()}
        # A peer's rows land in place when their slice of U_ext is contiguous (one factor), else in a buffer.
        slices = {p: U_ext[..., a:b, :] for p, (a, b) in self.recv_slices.items()}
        recvs = {p: t if t.is_contiguous() else torch.empty_like(t, memory_format=torch.contiguous_format)
                 for p, t in slices.items()}
        self.comm.exchange(sends, recvs)
        for p, t in slices.items():
            if recvs[p] is not t:
                t.copy_(recvs[p])
        self.exchanges += 1
        self.bytes_sent += sum(t.numel() for t in sends.values()) * U.element_size()
        return U_ext


# -------------------------------------------------------------------------------------------- graph
# A local block whose extended column range (own rows and halo) reaches this many columns numbers them in int64.
INT32_COLUMNS = 2**31
# The asymmetry that `check_similarity` accepts, relative to max(X) (its symmetric_tol).
SYMMETRY_TOL = 1e-5


class ShardedGraph:
    """This rank's block of rows of a symmetric similarity X, with its halo plan.

    Build one with `from_matrix` (every rank holds X, keeps its rows), `from_npz` (reads only its
    rows of a scipy.sparse.save_npz file) or `from_shards` (a `save_shards` directory). Every rank
    must build it collectively (the halo plan exchanges index lists).

    Checked locally: square shape, finite and non-negative values, no all-zero X (all_reduce).
    Symmetry: `from_matrix` runs the single-process check (every rank holds X); `from_npz` and
    `from_shards` run `check_symmetric`, a randomised test over the ranks; the constructor itself
    does not (the kNN graph of symnmf.distributed_graph is symmetric as built).
    """

    def __init__(self, indptr, indices, data, n, *, comm=None, dtype=None, device=None, name="X", offsets=None):
        comm = comm if comm is not None else Comm(device=device)
        self.comm = comm
        self.n = int(n)
        self.offsets = list(offsets) if offsets is not None else row_offsets(self.n, comm.world_size)
        self.lo, self.hi = self.offsets[comm.rank], self.offsets[comm.rank + 1]
        self.n_local = self.hi - self.lo
        if len(indptr) != self.n_local + 1:
            raise ValueError(f"{name}: rank {comm.rank} expected {self.n_local} rows, got {len(indptr) - 1}")
        indices, data = np.asarray(indices), np.asarray(data)
        dtype = resolve_dtype(dtype)
        # One collective for what every rank must agree on before the rows are converted: a column index outside
        # the matrix on any rank (caught here, not as a shape error deep in the halo exchange), and any rank's data
        # wider than float32 (as symnmf.fitting, float32 input stays float32, anything else is float64).
        outside = indices.size > 0 and (int(indices.min()) < 0 or int(indices.max()) >= self.n)
        flags = comm.all_reduce(torch.tensor([float(outside), float(data.dtype != np.float32)], dtype=torch.float64,
                                             device=comm.device), "max")
        if flags[0] > 0:
            raise ValueError(f"{name} has column indices outside 0..{self.n - 1}: its rows do not describe an "
                             f"{self.n} x {self.n} matrix")
        if dtype is None:
            dtype = torch.float64 if flags[1] > 0 else torch.float32
        self.dtype = dtype
        self.device = comm.device
        # Canonical rows (sorted, duplicates summed), as the single-process path's scipy conversion.
        import scipy.sparse as sp

        block = sp.csr_matrix((data, indices, indptr), shape=(self.n_local, self.n))
        block.sum_duplicates()
        block.sort_indices()
        crow = torch.from_numpy(block.indptr.astype(np.int64)).to(self.device)
        cols = torch.from_numpy(block.indices.astype(np.int64)).to(self.device)
        values = torch.from_numpy(np.asarray(block.data)).to(device=self.device, dtype=dtype)
        bad = torch.tensor([float(not bool(torch.isfinite(values).all())), float(bool((values < 0).any()))],
                           dtype=torch.float64, device=self.device)
        comm.all_reduce(bad, "max")
        if bad[0] > 0:
            raise ValueError(f"{name} has NaN or infinite entries; clean or impute them before fitting")
        if bad[1] > 0:
            raise ValueError(f"{name} has negative entries; SymNMF needs a non-negative similarity (e.g. clip at 0)")
        self.values = values
        # max(X), then ||X||^2 (float64) and sum(X) over all ranks. The squares are summed at a power of two of X
        # (exact), so that an X of any scale float64 holds keeps them: `_norm_sq_at_unit` / unit^2 is ||X||^2
        # to the same bits where that neither overflows nor underflows, and `scaled` falls back on it elsewhere.
        top = values.max().double().reshape(1) if values.numel() else torch.zeros(1, dtype=torch.float64,
                                                                                 device=self.device)
        self.max_value = float(comm.all_reduce(top, "max")[0])
        if self.max_value == 0:
            raise ValueError(f"{name} is all zero: nothing to factorise or cluster")
        self._unit = float(power_of_two_scale(torch.tensor(self.max_value, dtype=torch.float64)))
        stats = torch.stack([(values.double() * self._unit).pow(2).sum(), values.sum().double()])
        comm.all_reduce(stats)
        self._norm_sq_at_unit = stats[0]
        self.norm_sq = stats[0] / torch.tensor(self._unit, dtype=torch.float64) ** 2
        self.value_sum = float(stats[1])
        self.plan = HaloPlan(comm, self.offsets, cols)
        index_dtype = torch.int32 if self.plan.n_ext < INT32_COLUMNS else torch.int64
        self.local = CSR(crow, self.plan.ext_cols.to(index_dtype), values, (self.n_local, self.plan.n_ext),
                         symmetric=False, name=name)
        self.nnz_local = int(values.numel())

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_matrix(cls, X, *, group=None, device=None, dtype=None, balance="rows"):
        """From a matrix every rank holds (scipy.sparse, numpy, or a torch dense / sparse tensor); keeps its rows.

        balance: "rows" (blocks of equal row counts) or "nnz" (of equal stored entries).
        """
        import scipy.sparse as sp

        dtype = resolve_dtype(dtype)
        if np.ndim(X) != 2:  # also a torch tensor's dim(); before the CSR conversion, whose message hides it
            raise ValueError(f"X must be a square n x n similarity matrix, got shape {tuple(np.shape(X))}")
        comm = Comm(group, device)
        if isinstance(X, torch.Tensor):
            if X.layout == torch.strided:
                X = sp.csr_matrix(X.detach().cpu().numpy())
            else:
                X = X.detach().cpu().to_sparse_csr()
                X = sp.csr_matrix((X.values().numpy(), X.col_indices().numpy(), X.crow_indices().numpy()),
                                  shape=tuple(X.shape))
        elif not sp.issparse(X):
            X = sp.csr_matrix(np.asarray(X))
        X = X.tocsr()
        n = X.shape[0]
        if X.shape != (n, n):
            raise ValueError(f"X must be a square n x n similarity matrix, got shape {X.shape}")
        check_similarity(as_similarity(X))  # every rank holds X: the single-process checks, symmetry included
        offsets = _offsets(n, comm, balance, lambda: X.indptr)
        block = X[offsets[comm.rank]:offsets[comm.rank + 1]]
        return cls(block.indptr, block.indices, block.data, n, comm=comm, dtype=dtype, offsets=offsets)

    @classmethod
    def from_npz(cls, path, *, group=None, device=None, dtype=None, balance="rows"):
        """From a scipy.sparse.save_npz file (CSR); each rank reads only its rows (`read_npz_rows`).

        balance "nnz" reads the whole row-pointer array (n + 1 integers) on every rank to split
        the stored entries evenly.
        """
        comm = Comm(group, device)
        with zipfile.ZipFile(path) as zf:
            shape = tuple(int(s) for s in _read_small(zf, "shape"))
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"{path}: a similarity matrix is square, got shape {shape}")

        def indptr_all():
            with zipfile.ZipFile(path) as zf:
                return _read_slice(zf, "indptr", 0, shape[0] + 1)

        offsets = _offsets(shape[0], comm, balance, lambda: _read_on_every_rank(comm, path, indptr_all))
        indptr, indices, data, _ = _read_on_every_rank(
            comm, path, lambda: read_npz_rows(path, offsets[comm.rank], offsets[comm.rank + 1]), offsets)
        graph = cls(indptr, indices, data, shape[0], comm=comm, dtype=dtype, name=os.path.basename(path),
                    offsets=offsets)
        graph.check_symmetric()
        return graph

    @classmethod
    def from_shards(cls, directory, *, group=None, device=None, dtype=None, balance="rows"):
        """From a `save_shards` directory, for any number of ranks: each reads only the rows it owns.

        balance "nnz" reads every part's row pointers (n + 1 integers in all) on every rank.
        """
        comm = Comm(group, device)
        with open(os.path.join(directory, SHARDS_INDEX)) as f:
            index = json.load(f)
        n = int(index["n"])

        def indptr_all():
            parts, total = [np.zeros(1, np.int64)], 0
            for name, a, b in zip(index["files"], index["offsets"], index["offsets"][1:]):
                with zipfile.ZipFile(os.path.join(directory, name)) as zf:
                    ip = _read_slice(zf, "indptr", 0, b - a + 1).astype(np.int64)
                parts.append(ip[1:] + total)
                total += int(ip[-1])
            return np.concatenate(parts)

        offsets = _offsets(n, comm, balance, lambda: _read_on_every_rank(comm, directory, indptr_all))
        indptr, indices, data, _ = _read_on_every_rank(
            comm, directory, lambda: _read_shard_rows(directory, offsets[comm.rank], offsets[comm.rank + 1]), offsets)
        graph = cls(indptr, indices, data, n, comm=comm, dtype=dtype, name=os.path.basename(directory),
                    offsets=offsets)
        graph.check_symmetric()
        if index.get("perm"):
            graph.perm_path = os.path.join(directory, index["perm"])
        return graph

    perm_path = None  # set when the rows are a renumbering of the graph's nodes (`save_shards(order=...)`)

    def node_ids(self):
        """The original node number of each local row (numpy int64), or None when rows are nodes."""
        if self.perm_path is None:
            return None
        return np.array(np.load(self.perm_path, mmap_mode="r")[self.lo:self.hi], dtype=np.int64)

    def to_nodes(self, rows):
        """A gathered n-row array (numpy or torch) in the graph's own node order (identity without a renumbering)."""
        if self.perm_path is None:
            return rows
        perm = np.load(self.perm_path)
        if isinstance(rows, torch.Tensor):
            out = torch.empty_like(rows)
            out[torch.from_numpy(perm).to(rows.device)] = rows
            return out
        out = np.empty_like(rows)
        out[perm] = rows
        return out

    @classmethod
    def load(cls, source, **kwargs):
        """From a path (a shards directory or a .npz) or an in-memory matrix."""
        if isinstance(source, (str, os.PathLike)):
            if os.path.isdir(source):
                return cls.from_shards(source, **kwargs)
            return cls.from_npz(source, **kwargs)
        return cls.from_matrix(source, **kwargs)

    # ---- products and sums ------------------------------------------------------------------------------------
    def matmul(self, U):
        """(X U)[lo:hi] from this rank's rows U (n_local, r), or of R factors at once (R, n_local, r): one halo
        exchange, then the local SpMM."""
        return sk.spmm(self.local, self.plan.extend(U.contiguous() if U.dim() == 3 else U))

    def modularity(self, labels, k):
        """`symnmf.metrics.modularity` over the whole graph of B labellings given by this rank's rows (B, n_local),
        labels in [0, k): one product of X with their indicators (one halo exchange of B k columns) and one
        all_reduce of 2 B k + 1 sums. Returns a float64 tensor (B,) on the CPU, the same on every rank."""
        H = cluster_indicators(labels, k, self.dtype)
        sums = self.comm.all_reduce(modularity_sums(H, self.matmul(H), k))
        return modularity_from_sums(sums, k).cpu()

    def gram(self, U):
        """U^T U over all ranks (r x r; (R, r, r) for R factors), from this rank's rows."""
        return self.comm.all_reduce(sk.gram(U, 0.0).contiguous())

    def sum(self, *terms):
        """The float64 sums over all ranks of local scalars, in one all_reduce."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(()) for v in terms])
        return self.comm.all_reduce(t)

    def loss(self, U, XU, G):
        """||X - U U^T||_F^2 from the local rows of U and X U and the global Gram G = U^T U."""
        cross = self.sum((XU * U).sum(dtype=torch.float64))[0]
        return self.norm_sq - 2 * cross + G.double().pow(2).sum()

    def scaled(self, factor):
        """This rank's rows of factor * X, sharing the halo plan (nothing is exchanged): a collective-free copy."""
        out = copy.copy(self)
        out.values = self.values * factor
        out.local = CSR(self.local.crow_indices, self.local.col_indices, out.values, self.local.shape,
                        symmetric=False, name=self.local.name)
        f = torch.tensor(factor, dtype=torch.float64)
        out.norm_sq = self.norm_sq * (f * f)
        out.max_value = self.max_value * factor
        out._unit = float(power_of_two_scale(torch.tensor(out.max_value, dtype=torch.float64)))
        out._norm_sq_at_unit = self._norm_sq_at_unit * (f * out._unit / self._unit) ** 2
        if not (0 < out.norm_sq < math.inf):  # ||X||^2 over- or underflowed on one side of the scaling
            out.norm_sq = out._norm_sq_at_unit / torch.tensor(out._unit, dtype=torch.float64) ** 2
        out.value_sum = self.value_sum * factor
        return out

    def spectral_norm(self, iters=50):
        """||X||_2 by power iteration from the all-ones vector, as `Problem.spectral_norm`."""
        v = torch.ones((self.n_local, 1), dtype=self.dtype, device=self.device)
        v = v / math.sqrt(self.n)
        est = 0.0
        for _ in range(iters):
            w = self.matmul(v)
            # the norm of w at X's power of two (exact): its squares neither overflow nor underflow
            est = math.sqrt(float(self.sum((w.double() * self._unit).pow(2).sum())[0])) / self._unit
            v = w / max(est, torch.finfo(self.dtype).tiny)
        return est

    def check_symmetric(self, pairs=4):
        """Raise ValueError, on every rank, when X is clearly not symmetric: <u, X v> = <X u, v> for X = X^T,
        compared for `pairs` pairs of random sign vectors u, v (the same whatever the split into ranks), from one
        halo product of 2 pairs + 1 columns (the last, of ones, gives the degrees) and one all_reduce. The
        whole-matrix check of one process would need every rank's rows; this one finds gross asymmetry (a
        triangle, a directed graph) and, with overwhelming probability, lets through the asymmetry that
        `symnmf.validation.check_similarity` accepts; a smaller asymmetry that it refuses can pass."""
        lo, hi, chunk = self.lo, self.hi, 1 << 16
        blocks = []
        for c in range(lo // chunk, -(-hi // chunk)):  # seeded per block of global rows, not per rank
            draw = torch.randint(0, 2, (chunk, 2 * pairs), generator=torch.Generator().manual_seed(c))
            blocks.append(draw[max(lo - c * chunk, 0):hi - c * chunk])
        signs = (2 * torch.cat(blocks) - 1).to(device=self.device, dtype=self.dtype)
        # at X's power of two (exact), so that the squares below neither overflow nor underflow
        product = self.matmul(torch.cat([signs, signs.new_ones((self.n_local, 1))], dim=1)).double() * self._unit
        u, v = signs[:, :pairs].double(), signs[:, pairs:].double()
        degree = product[:, -1]
        # Bounds, per row, on what the check must let through: rounding of a row of X v (its stored entries
        # times eps times its degree, X >= 0) and check_similarity's asymmetry, SYMMETRY_TOL max(X) per entry.
        # Summed over the rows with random signs, both stay within a few root sums of their squares.
        count = self.local.crow_indices.diff().double()
        size = (count * torch.finfo(self.dtype).eps * degree).pow(2) + count * (
            SYMMETRY_TOL * self.max_value * self._unit) ** 2
        sums = torch.cat([(u * product[:, pairs:-1]).sum(0) - (product[:, :pairs] * v).sum(0), size.sum()[None]])
        self.comm.all_reduce(sums)
        gap, bound = float(sums[:pairs].abs().max()), 20 * math.sqrt(float(sums[pairs]))
        if not gap <= bound:
            raise ValueError(f"{self.local.name} is not symmetric (|<u, X v> - <X u, v>| = {gap / self._unit:.3g} for "
                             f"random sign vectors u, v, above the {bound / self._unit:.3g} allowed for rounding); "
                             "symmetrise it, e.g. (X + X^T) / 2")

    def __repr__(self):
        return (f"ShardedGraph(n={self.n}, rank {self.comm.rank}/{self.comm.world_size}, rows {self.lo}:{self.hi}, "
                f"nnz_local={self.nnz_local}, halo_rows={self.plan.halo_rows}, dtype={self.dtype}, "
                f"device={self.device})")


# ------------------------------------------------------------------------------------------- start
def init_factor(graph, rank, seed=0, *, chunk_rows=1 << 16):
    """This rank's rows of Kuang et al.'s start U_0 = 2 sqrt(mean(X) / r) rand(n, r), as
    `symnmf.solvers.init_factor(X, rank, make_generator(seed))` draws it in one process.

    The CPU generator's stream is drawn in chunks of rows; the rows before this rank's block are
    drawn and dropped (O(n r) time, O(chunk r) memory beyond the own block).
    """
    gen = torch.Generator().manual_seed(as_seed(seed))
    ids = graph.node_ids()
    if ids is None:
        skip = graph.lo
        while skip > 0:
            step = min(skip, chunk_rows)
            torch.rand((step, rank), generator=gen, dtype=graph.dtype)
            skip -= step
        U = torch.rand((graph.n_local, rank), generator=gen, dtype=graph.dtype)
    else:  # renumbered rows: pick each node's row of the stream as it goes by
        order = np.argsort(ids, kind="stable")
        wanted = ids[order]
        U = torch.empty((graph.n_local, rank), dtype=graph.dtype)
        done = 0
        last = int(wanted[-1]) + 1 if wanted.size else 0
        for c0 in range(0, last, chunk_rows):
            c1 = min(c0 + chunk_rows, graph.n)
            block = torch.rand((c1 - c0, rank), generator=gen, dtype=graph.dtype)
            upto = int(np.searchsorted(wanted, c1, side="left"))
            if upto > done:
                U[torch.from_numpy(order[done:upto])] = block[torch.from_numpy(wanted[done:upto] - c0)]
                done = upto
    U = U.to(graph.device)
    mean = torch.tensor(graph.value_sum / (graph.n * graph.n), dtype=graph.dtype, device=graph.device)
    scale = 2 * torch.sqrt(torch.clamp(mean, min=0) / rank)
    return U * scale


# ----------------------------------------------------------------------------------------- solvers
class _MonitorProblem:
    """What `solvers.base.Monitor` reads of a problem: ||X||^2 and the device."""

    def __init__(self, graph):
        self.norm_sq = graph.norm_sq
        self.device = graph.device


def _monitor(name, graph, tol, max_iter, check_every, callback, verbose):
    return Monitor(name, _MonitorProblem(graph), tol, max_iter, check_every, callback,
                   verbose and graph.comm.rank == 0)


def _eye(graph, r):
    return torch.eye(r, dtype=graph.dtype, device=graph.device)


def _sweep(graph, F, B, XO, O, lam, backend):
    """One SymHALS sweep of the local rows of F (or of each factor of a batch (R, n_local, r)), with the
    zero-column safety step taken globally, per factor."""
    colmax = hals_sweep_(F, XO, B, V=O, lam=lam, revive=False, backend=backend)
    revive_zero_columns_(F, graph.comm.all_reduce(colmax.contiguous(), "max"), backend=backend)
    return F


def _penalty(graph, lam, U0, XU0):
    if isinstance(lam, str):
        if lam == "kuang":
            top = graph.max_value
            return top * top if top > 0 else 1.0
        if lam == "zhu":
            loss = float(graph.loss(U0, XU0, graph.gram(U0)))
            return 0.5 * (graph.spectral_norm() + math.sqrt(max(loss, 0.0)))
        raise ValueError(f'lam must be a positive float, "kuang" or "zhu", got {lam!r}')
    return check_lam(lam)


def _alternate(name, graph, U0, update, *, lam, max_iter, tol, check_every, callback, verbose):
    """`solvers.penalised.alternate` sharded: update(F, B, XO, O, lam) -> F on this rank's rows, alternately
    on W and V from W = V = U0. B = O^T O + lam I is all-reduced; X O comes through the halo. A run that
    converges with W far from V goes on from W = V, once, as in one process (solvers/penalised.py)."""
    start_bytes, start_exchanges = graph.plan.bytes_sent, graph.plan.exchanges
    XU0 = graph.matmul(U0)
    GU0 = graph.gram(U0)
    lam = _penalty(graph, lam, U0, XU0)
    monitor = _monitor(name, graph, tol, max_iter, check_every, callback, verbose)
    result = _alternate_from(name, graph, U0, XU0, GU0, update, lam, monitor, 0)
    _traffic(result, graph, U0.shape[1], start_bytes, start_exchanges, max(result.n_iter, 1))
    return result


def _alternate_from(name, graph, U0, XU0, GU0, update, lam, monitor, it, restarted=False):
    """`_alternate`'s loop from W = V = U0 (X U0 and the Gram given) at iteration `it` of `monitor`'s run, as
    `solvers.penalised._alternate_from`."""
    W = U0.clone()
    V = U0.clone()
    XW = XV = XU0
    GW = GV = GU0
    eye = _eye(graph, U0.shape[1])
    # At W = V the penalty's gradient vanishes and V's gradient is that of W.
    pgV_local = projected_gradient_sq(2 * (V @ GV - XV), V)
    first = it
    while True:
        BV = GV + lam * eye
        if monitor.due(it) and not (restarted and it == first):
            # As in one process (solvers/penalised.py): the gradient's factor 2 is applied to the norm.
            half_gW = half_gradient(W, BV, XV, V, lam)
            cross = dot64(XW[None], W[None])[0]
            cross, pgW, pgV = graph.sum(cross, 4 * projected_gradient_sq(half_gW, W), pgV_local)
            loss = graph.norm_sq - 2 * cross + GW.double().pow(2).sum()
            if monitor.check(it, W, loss, pgW + pgV):
                if restarted or not monitor.converged or not _asymmetric(graph, W, V):
                    break
                monitor.converged = False  # W far from V: not a stationary point of SymNMF
                if it >= monitor.max_iter or monitor.stopped_by_callback:
                    break
                return _restart_symmetric(name, graph, W, XW, GW, V, XV, GV, update, monitor, it)
        W = update(W, BV, XV, V, lam)
        XW = graph.matmul(W)
        GW = graph.gram(W)
        BW = GW + lam * eye
        V = update(V, BW, XW, W, lam)
        it += 1
        if monitor.due(it):
            pgV_local = 4 * projected_gradient_sq(half_gradient(V, BW, XW, W, lam), V)
        XV = graph.matmul(V)
        GV = graph.gram(V)
    return monitor.result(W, solver=name, lam=lam, symmetric_restart=first if restarted else None)


def _asymmetric(graph, W, V):
    """`solvers.penalised.asymmetric` over every rank's rows (one all_reduce)."""
    gap, size = graph.sum((W - V).double().pow(2).sum(), W.double().pow(2).sum())
    return bool(gap > SYMMETRY_GAP ** 2 * size)


def _restart_symmetric(name, graph, W, XW, GW, V, XV, GV, update, monitor, it):
    """`solvers.penalised.restart_symmetric` sharded: on from W = V = the better of W and V, with Zhu et al.'s
    penalty there."""
    F, XF, GF = (W, XW, GW) if graph.loss(W, XW, GW) <= graph.loss(V, XV, GV) else (V, XV, GV)
    lam = _penalty(graph, "zhu", F, XF)
    if monitor.verbose:
        print(f"{monitor.name}: W and V converged apart at iteration {it}; from W = V again, lam = {lam:.4g}")
    return _alternate_from(name, graph, F, XF, GF, update, lam, monitor, it, restarted=True)


def hals(graph, U0, *, lam="kuang", max_iter=None, tol=None, callback=None, verbose=False, check_every=None,
         backend=None):
    """SymHALS on a ShardedGraph from this rank's rows U0 of W = V = U_0; `symnmf.solvers.hals` sharded.

    Per iteration: two halo exchanges (X W and X V), two r x r Gram all_reduces, two all_reduces
    of r column maxima (the zero-column safety step), and at each stopping check one all_reduce
    of three float64 sums. Returns a SolverResult whose U holds this rank's rows of W; its params
    include the halo traffic ("bytes_sent", "exchanges").
    """

    def update(F, B, XO, O, lam):
        return _sweep(graph, F, B, XO, O, lam, backend)

    return _alternate(
        "hals", graph, U0, update, lam="kuang" if lam is None else lam,
        max_iter=_HALS_DEFAULTS["max_iter"] if max_iter is None else max_iter,
        tol=_HALS_DEFAULTS["tol"] if tol is None else tol,
        check_every=default_check_every(graph.device, syncs_anyway=False) if check_every is None else check_every,
        callback=callback, verbose=verbose,
    )


def hals_restarts(graph, U0, *, lam="kuang", max_iter=None, tol=None, verbose=False, check_every=None, backend=None):
    """SymHALS from each of R starts on a ShardedGraph side by side: U0 (R, n_local, r) holds this rank's rows
    of every start; `symnmf.solvers.hals.hals_restarts` sharded. A list of R SolverResults, each the one
    `hals(graph, U0[k], ...)` returns, up to the order of floating-point sums.

    Per iteration, for all the restarts still running together: two halo exchanges, two all_reduces of their
    Grams, two of their column maxima, and at each stopping check one of 3 float64 sums per restart: the
    collectives of one run instead of R. lam: a positive float or "kuang" (the same for every restart).
    The traffic in each result's params is that of the whole batch.
    """
    if U0.dim() != 3:
        raise ValueError(f"U0 must hold R starts of this rank's rows, shape (R, n_local, r), got {tuple(U0.shape)}")
    if isinstance(lam, str) and lam == "zhu":
        raise ValueError('lam="zhu" depends on the start; give each restart its own run, or lam="kuang" or a float')
    lam = _penalty(graph, "kuang" if lam is None else lam, None, None)
    max_iter = _HALS_DEFAULTS["max_iter"] if max_iter is None else max_iter
    tol = _HALS_DEFAULTS["tol"] if tol is None else tol
    check_every = default_check_every(graph.device, syncs_anyway=False) if check_every is None else check_every
    R, _, r = U0.shape
    if R == 0:
        return []
    start_bytes, start_exchanges = graph.plan.bytes_sent, graph.plan.exchanges
    monitors = [_monitor("hals" if R == 1 else f"hals (start {k})", graph, tol, max_iter, check_every, None, verbose)
                for k in range(R)]
    results = [None] * R
    running = list(range(R))
    eye = _eye(graph, r)
    W = U0.clone(memory_format=torch.contiguous_format)
    V = W.clone()
    XV = graph.matmul(V)
    GV = graph.gram(V)
    XW, GW = XV, GV
    pgV_local = [projected_gradient_sq(g, v) for g, v in zip(2 * (V @ GV - XV), V)]
    it = 0
    while True:
        BV = GV + lam * eye
        if monitors[running[0]].due(it):  # every monitor has the same check_every and max_iter
            half_gW = half_gradient(W, BV, XV, V, lam)
            terms = []
            for i in range(len(running)):
                terms += [dot64(XW[i][None], W[i][None])[0], 4 * projected_gradient_sq(half_gW[i], W[i]), pgV_local[i]]
            sums = graph.sum(*terms).reshape(-1, 3)
            stop = [monitors[k].check(it, W[i], graph.norm_sq - 2 * sums[i, 0] + GW[i].double().pow(2).sum(),
                                      sums[i, 1] + sums[i, 2])
                    for i, k in enumerate(running)]
            for i, k in enumerate(running):
                if not stop[i]:
                    continue
                if monitors[k].converged and _asymmetric(graph, W[i], V[i]):  # as in one process
                    monitors[k].converged = False
                    if it < monitors[k].max_iter:  # it goes on alone
                        results[k] = _restart_symmetric(
                            "hals", graph, W[i], XW[i], GW[i], V[i], XV[i], GV[i],
                            lambda F, B, XO, O, lam: _sweep(graph, F, B, XO, O, lam, backend), monitors[k], it)
                        continue
                results[k] = monitors[k].result(W[i].clone(), solver="hals", lam=lam, symmetric_restart=None)
            keep = [i for i, done in enumerate(stop) if not done]
            if not keep:
                break
            if len(keep) < len(running):
                rows = torch.tensor(keep, device=W.device)
                W, V, XV, XW, GW, BV = (t.index_select(0, rows) for t in (W, V, XV, XW, GW, BV))
                pgV_local = [pgV_local[i] for i in keep]
                running = [running[i] for i in keep]
        W = _sweep(graph, W, BV, XV, V, lam, backend)
        XW = graph.matmul(W)
        GW = graph.gram(W)
        BW = GW + lam * eye
        V = _sweep(graph, V, BW, XW, W, lam, backend)
        it += 1
        if monitors[running[0]].due(it):
            half_gV = half_gradient(V, BW, XW, W, lam)
            pgV_local = [4 * projected_gradient_sq(g, v) for g, v in zip(half_gV, V)]
        XV = graph.matmul(V)
        GV = graph.gram(V)
    for result in results:
        _traffic(result, graph, r, start_bytes, start_exchanges, max(result.n_iter, 1))
    return results


def anls(graph, U0, *, lam="kuang", max_iter=None, tol=None, callback=None, verbose=False, check_every=None):
    """SymANLS on a ShardedGraph from this rank's rows U0; `symnmf.solvers.anls` sharded.

    The rows' NNLS problems share B and are independent, so each rank solves its own rows by
    block principal pivoting (`solvers.nnls.nnls_gram`, no communication inside); the rest is
    SymHALS's loop. B must be positive definite (lam > 0): a failed factorisation raises on the
    rank that meets it.
    """

    def update(F, B, XO, O, lam):
        return nnls_gram(B, XO + lam * O, X0=F)

    return _alternate(
        "anls", graph, U0, update, lam="kuang" if lam is None else lam,
        max_iter=_ANLS_DEFAULTS["max_iter"] if max_iter is None else max_iter,
        tol=_ANLS_DEFAULTS["tol"] if tol is None else tol,
        check_every=default_check_every(graph.device, syncs_anyway=True) if check_every is None else check_every,
        callback=callback, verbose=verbose,
    )


def _objective_change(graph, S, XS, H, XH, G, grad, Hn):
    """(f(H + S) - f(H), <grad, S>, the number of non-zero entries of Hn = H + S) as `solvers.linesearch`, their
    sums over all ranks in one all_reduce."""
    r = H.shape[1]
    SH = S.mT @ H
    StS = S.mT @ S
    sums = torch.stack([(S * XH).sum(), (S * XS).sum(), (grad * S).sum(), Hn.count_nonzero().to(S.dtype)])
    packed = graph.comm.all_reduce(torch.cat([SH.reshape(-1), StS.reshape(-1), sums]))
    SH, StS = packed[: r * r].reshape(r, r), packed[r * r: 2 * r * r].reshape(r, r)
    delta = SH + SH.mT + StS
    return -4 * packed[-4] - 2 * packed[-3] + 2 * (G * delta).sum() + delta.pow(2).sum(), packed[-2], packed[-1]


def _armijo(graph, H, XH, G, grad, direction, sigma, beta, max_trials):
    """`solvers.linesearch.armijo_projected` sharded: (H_new, X H_new, accepted), one halo exchange and one
    all_reduce per trial; every rank accepts the same trial from the same sums, and none that clips the whole
    factor to zero (a saddle point, where the gradient vanishes)."""
    a = 1.0
    for _ in range(max_trials):
        Hn = torch.clamp(H - a * direction, min=0)
        XHn = graph.matmul(Hn)
        S = Hn - H
        change, decrease, nonzero = _objective_change(graph, S, XHn - XH, H, XH, G, grad, Hn)
        if bool((change <= sigma * decrease) & (nonzero > 0)):
            return Hn, XHn, True
        a *= beta
    return H, XH, False


def _state(graph, H, XH, G, grad):
    """(objective, squared projected gradient) of the whole factor from this rank's rows: one all_reduce."""
    cross, pg = graph.sum(dot64(XH[None], H[None])[0], projected_gradient_sq(grad, H))
    return graph.norm_sq - 2 * cross + G.double().pow(2).sum(), pg


def pgd(graph, U0, *, lam=None, max_iter=None, tol=None, callback=None, verbose=False, check_every=1,
        sigma=0.1, beta=0.1, max_trials=30):
    """PGD (Kuang et al.) on a ShardedGraph from this rank's rows U0; `symnmf.solvers.pgd` sharded.

    grad = 4 (H (H^T H) - X H) on the local rows; Armijo on the projection arc with the decrease
    from the step (`solvers.linesearch`), its sums all_reduced in one call per trial. One halo
    exchange per Armijo trial.
    """
    if lam is not None:
        raise ValueError("pgd has no penalty: leave lam=None")
    check_search(sigma, beta, max_trials)
    max_iter = _PGD_DEFAULTS["max_iter"] if max_iter is None else max_iter
    tol = _PGD_DEFAULTS["tol"] if tol is None else tol
    monitor = _monitor("pgd", graph, tol, max_iter, check_every, callback, verbose)
    start_bytes, start_exchanges = graph.plan.bytes_sent, graph.plan.exchanges
    H = U0.clone()
    XH = graph.matmul(H)
    it = 0
    while True:
        G = graph.gram(H)
        grad = 4 * (H @ G - XH)
        if monitor.due(it) and monitor.check(it, H, *_state(graph, H, XH, G, grad)):
            break
        H, XH, accepted = _armijo(graph, H, XH, G, grad, grad, sigma, beta, max_trials)
        if not accepted:
            monitor.record_last(it, H, *_state(graph, H, XH, G, grad))
            break
        it += 1
    result = monitor.result(H, solver="pgd", sigma=sigma, beta=beta)
    _traffic(result, graph, H.shape[1], start_bytes, start_exchanges, max(it, 1))
    return result


def _global_sum(graph, t):
    """The sum of t's entries over all ranks, in t's dtype (a 0-d tensor; one all_reduce)."""
    return graph.comm.all_reduce(t.sum().reshape(1))[0]


def newton(graph, U0, *, lam=None, max_iter=None, tol=None, callback=None, verbose=False, check_every=1,
           method="auto", sigma=0.1, beta=0.1, max_trials=30, cg_max_iter=50, cg_check_every=1):
    """SymNewton (Kuang et al.) on a ShardedGraph from this rank's rows U0: `symnmf.solvers.newton`'s matrix-free
    form ("cg") sharded. Each iteration: projected Newton-CG on the free set (a CG step costs one halo exchange
    and three all_reduces), then PGD's sharded Armijo along the direction. method "auto" or "cg"; the "exact"
    form factorises blocks of the dense n x n X and is not sharded.

    Sharded, "auto" is always "cg", where one process takes "exact" for n <= EXACT_MAX_N (1000 nodes,
    `symnmf.solvers.newton`): on such a small graph the sharded result is that of method="cg" in one process,
    not that of the single-process default, and its labels can differ.
    """
    if lam is not None:
        raise ValueError("newton has no penalty: leave lam=None (lam is for anls, hals, admm and the net)")
    check_search(sigma, beta, max_trials, cg_max_iter=cg_max_iter, cg_check_every=cg_check_every)
    if method == "exact":
        raise ValueError("newton's method='exact' needs the whole dense X in one process; sharded, it runs 'cg'")
    if method not in ("auto", "cg"):
        raise ValueError(f"method must be 'auto' or 'cg' sharded, got {method!r}")
    monitor = _monitor("newton", graph, _NEWTON_DEFAULTS["tol"] if tol is None else tol,
                       _NEWTON_DEFAULTS["max_iter"] if max_iter is None else max_iter, check_every, callback, verbose)
    start_bytes, start_exchanges = graph.plan.bytes_sent, graph.plan.exchanges
    total = functools.partial(_global_sum, graph)
    H = U0.clone()
    XH = graph.matmul(H)
    g0_norm = None
    it = 0
    while True:
        G = graph.gram(H)
        grad = 4 * (H @ G - XH)
        if g0_norm is None:
            g0_norm = torch.sqrt(total(grad.pow(2)))
        if monitor.due(it) and monitor.check(it, H, *_state(graph, H, XH, G, grad)):
            break
        free = (H > 0) | (grad <= 0)
        direction = cg_direction(H, G, grad, free, g0_norm, cg_max_iter, cg_check_every, graph.matmul, total,
                                 lambda M: graph.comm.all_reduce(M.contiguous()))
        direction = torch.where(is_descent(grad, direction, total), direction, grad)
        H, XH, accepted = _armijo(graph, H, XH, G, grad, direction, sigma, beta, max_trials)
        if not accepted:
            monitor.record_last(it, H, *_state(graph, H, XH, G, grad))
            break
        it += 1
    result = monitor.result(H, solver="newton", method="cg", sigma=sigma, beta=beta)
    _traffic(result, graph, H.shape[1], start_bytes, start_exchanges, max(it, 1))
    return result


def admm(graph, U0, *, lam=None, max_iter=None, tol=None, callback=None, verbose=False, check_every=None):
    """ADMM (Lu, Hong, Wang) on a ShardedGraph from this rank's rows U0; `symnmf.solvers.admm` sharded.

    Every step is row-separable once the r x r Grams are all_reduced: per iteration two halo exchanges
    (X A and X Y) and two Gram all_reduces, and at a stopping check one all_reduce of two float64 sums.
    lam: the penalty rho, default ||X||_2 / 4 (`solvers.admm.default_rho`, the power iteration over the ranks).
    """
    rho = default_rho(graph) if lam is None else check_lam(lam, "lam (the ADMM penalty rho)")
    monitor = _monitor(
        "admm", graph, _ADMM_DEFAULTS["tol"] if tol is None else tol,
        _ADMM_DEFAULTS["max_iter"] if max_iter is None else max_iter,
        default_check_every(graph.device, syncs_anyway=False) if check_every is None else check_every,
        callback, verbose,
    )
    start_bytes, start_exchanges = graph.plan.bytes_sent, graph.plan.exchanges
    r = U0.shape[1]
    Y = U0.clone()
    Lam = torch.zeros_like(Y)
    XY = graph.matmul(Y)
    it = 0
    while True:
        GY = graph.gram(Y)
        if monitor.due(it) and monitor.check(it, Y, *_state(graph, Y, XY, GY, 4 * (Y @ GY - XY))):
            break
        Y = admm_step(Y, Lam, XY, GY, rho, graph.matmul, graph.gram)
        XY = graph.matmul(Y)
        it += 1
    result = monitor.result(Y, solver="admm", rho=rho)
    _traffic(result, graph, r, start_bytes, start_exchanges, max(it, 1))
    return result


def _traffic(result, graph, r, start_bytes, start_exchanges, iterations):
    """The halo traffic of one solver run into result.params: bytes_sent and exchanges (this rank, the
    first product and, for lam="zhu", the power iteration included), bytes_per_exchange (an n x r
    product), bytes_sent_per_iteration, halo_rows, world_size."""
    plan = graph.plan
    result.params.update(
        bytes_sent=plan.bytes_sent - start_bytes, exchanges=plan.exchanges - start_exchanges,
        bytes_per_exchange=plan.bytes_per_exchange(r, graph.dtype),
        bytes_sent_per_iteration=(plan.bytes_sent - start_bytes) / iterations,
        halo_rows=plan.halo_rows, world_size=graph.comm.world_size,
    )


def net(graph, k, **options):
    """SymNMF-Net row-sharded, trained and finished as `symnmf.net.fit_net`: `symnmf.distributed_net.net`."""
    from .distributed_net import net as _net

    return _net(graph, k, **options)


SOLVERS = {"hals": hals, "pgd": pgd, "anls": anls, "newton": newton, "admm": admm, "net": net}


# ------------------------------------------------------------------------------------ fit and cluster
@dataclass
class DistributedFit:
    """One sharded factorisation, as seen by this rank.

    U_local: this rank's rows of the factor; labels_local: their argmax (rows in the graph's shard
    order: `graph.node_ids()` numbers them when the shards were renumbered); labels: all n labels
    on rank 0 in the graph's own node order (None elsewhere); U: the whole factor on rank 0 when gathered, else None; objective and
    rel_error: ||X - U U^T||^2 and its ratio to ||X||^2 (all ranks); modularity: the labels' modularity on
    X (all ranks; `symnmf.metrics.modularity`); traffic: this rank's halo bytes; seconds: the solver's
    wall-clock (after a barrier); scale: X was factorised as X / scale (`similarity_scale`; 1.0 for
    normalised graphs) and U multiplied by sqrt(scale), so history is that of X / scale.
    """

    method: str
    U_local: torch.Tensor
    labels_local: np.ndarray
    labels: np.ndarray
    U: torch.Tensor
    objective: float
    rel_error: float
    n_iter: int
    converged: bool
    seconds: float
    modularity: float
    rank: int
    world_size: int
    rows: tuple
    history: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    traffic: dict = field(default_factory=dict)
    scale: float = 1.0


def gather_rows(graph, local):
    """The n rows of a row-sharded tensor, on every rank (an all_gather; for outputs, not for iterations)."""
    counts = [graph.offsets[p + 1] - graph.offsets[p] for p in range(graph.comm.world_size)]
    return graph.comm.all_gather_rows(local, counts)


def similarity_scale(graph, iters=30):
    """`symnmf.fitting.similarity_scale` of the whole sharded X: ||X||_2 by power iteration, or exactly 1.0 within
    SCALE_TOL of 1. `ShardedGraph.spectral_norm` sums its squares in float64: no scale over- or underflows."""
    return snapped_scale(graph.spectral_norm(iters))


def fit(graph, k, solver="hals", *, seed=0, max_iter=None, tol=None, lam=None, gather_factor=True, **options):
    """Factorise a ShardedGraph at rank k with a sharded solver ("hals", "pgd", "anls", "newton", "admm" or "net")
    from the seed's start; options go to the solver (for "net": recipe and any recipe setting)."""
    if solver not in SOLVERS:
        raise ValueError(f"the sharded solvers are {sorted(SOLVERS)}, got {solver!r} (not sharded yet)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= graph.n:
        raise ValueError(f"k must be an int in [1, n = {graph.n}], got {k!r}")
    if max_iter is not None and not (is_int(max_iter) and max_iter >= 0):
        raise ValueError(f"max_iter must be a non-negative int or None, got {max_iter!r}")
    check_penalty(lam, "lam (the ADMM penalty rho)" if solver == "admm" else "lam")
    check_penalty(options.get("lam"))
    comm = graph.comm
    # As `symnmf.fitting.fit_affinity`: the fit runs on X / scale, and U comes back times sqrt(scale).
    scale = similarity_scale(graph)
    if not 0 < scale < math.inf:  # the same on every rank: the power iteration's sums are all-reduced
        raise ValueError(f"the power iteration gives ||X||_2 = {scale} for {graph.local.name}: X must be symmetric, "
                         "non-zero, and its entries neither vanishingly small nor huge (rescale it, e.g. X / max(X))")
    if scale != 1.0:
        graph = graph.scaled(1.0 / scale)
        lam = _per_scale(lam, scale)
        if "lam" in options:
            options["lam"] = _per_scale(options["lam"], scale)
    if solver != "net":  # the net draws the start of each of its restarts itself
        U0 = init_factor(graph, int(k), seed)
        if max_iter is None:
            max_iter = DEFAULT_MAX_ITER[solver]
    if comm.world_size > 1:
        dist.barrier(group=comm.group)
    start = time.perf_counter()
    if solver == "net":
        result = net(graph, int(k), seed=seed, max_iter=max_iter, tol=tol, lam=lam, **options)
    else:
        result = SOLVERS[solver](graph, U0, lam=lam, max_iter=int(max_iter), tol=tol, **options)
    if graph.device.type == "cuda":
        torch.cuda.synchronize(graph.device)
    seconds = time.perf_counter() - start
    U = result.U
    XU = graph.matmul(U)
    objective = float(graph.loss(U, XU, graph.gram(U)))  # of X / scale: the relative error is X's own
    rel_error = objective / float(graph.norm_sq)
    if scale != 1.0:
        U = U * math.sqrt(scale)
        objective *= scale * scale  # inf where X's own squared error overflows (** would raise)
    labels_local = U.argmax(dim=-1)
    modularity = float(graph.modularity(labels_local[None], int(k))[0])
    labels = gather_rows(graph, labels_local)  # a collective: every rank takes part
    if comm.rank == 0:
        labels = graph.to_nodes(labels)
    U_all = gather_rows(graph, U) if gather_factor else None
    if U_all is not None and comm.rank == 0:
        U_all = graph.to_nodes(U_all)
    root = comm.rank == 0
    params = dict(result.params)
    traffic = {key: params.pop(key) for key in ("bytes_sent", "exchanges", "bytes_per_exchange",
                                                "bytes_sent_per_iteration", "halo_rows") if key in params}
    columns = params.pop("exchange_columns", int(k))  # the net sends its R restarts' k columns at once
    traffic["allgather_bytes_per_exchange"] = (comm.world_size - 1) * graph.n_local * columns * U.element_size()
    return DistributedFit(
        method=solver, U_local=U, labels_local=labels_local.cpu().numpy(),
        labels=labels.cpu().numpy() if root else None, U=U_all if (root and gather_factor) else None,
        objective=objective, rel_error=rel_error, n_iter=result.n_iter,
        converged=result.converged, seconds=seconds, modularity=modularity, rank=comm.rank,
        world_size=comm.world_size,
        rows=(graph.lo, graph.hi), history=result.history, params=params, traffic=traffic, scale=scale,
    )


def init_from_env(backend=None):
    """Initialise torch.distributed from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT)
    when WORLD_SIZE is set and no group is initialised yet; returns the device this rank should use.

    backend: None picks NCCL when CUDA is available, else gloo. With NCCL, LOCAL_RANK picks the GPU.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cluster(source, k, solver="hals", seed=0, *, max_iter=None, tol=None, lam=None, dtype=None, device=None,
            out=None, group=None, threads=None, verbose=False, return_fit=False, balance="rows",
            affinity="precomputed", n_neighbors=None, metric="euclidean", save_graph=None, **options):
    """Cluster a graph with a sharded solver; the labels (numpy, n) on rank 0, None on the other ranks.

    source: a scipy.sparse.save_npz file (CSR; each rank reads only its rows), a `save_shards`
    directory, or a matrix every rank holds. With affinity="nearest_neighbors", source holds features
    instead (an .npy file, each rank reading only its rows, or an array every rank holds), and the
    ranks build Kuang's kNN graph together (`symnmf.distributed_graph.similarity_graph`, with
    n_neighbors and metric), each keeping its own rows; save_graph: a directory where the ranks also
    write that graph as shard files (`save_shards`'s format). Started by torchrun (WORLD_SIZE > 1) it initialises
    the process group itself (`init_from_env`) and closes it on every rank before it returns; in one process it
    runs the same code on one shard.
    seed: the random start, the same as the single-process solvers' for the same int.
    out: a directory where rank 0 writes labels.txt, embedding.npy (the factor U, gathered) and
    metrics.json, the files of `symnmf cluster`, plus the halo traffic and the ranks in metrics; checked on
    every rank and made on rank 0 before any work (an existing file there is a ValueError on every rank).
    threads: torch CPU threads per rank (None or "auto": leave torch's setting; torchrun sets
    OMP_NUM_THREADS=1).
    dtype: torch.float32 / float64, "float32" / "float64" / "auto", or None (float32 input stays
    float32, anything else float64, as `symnmf cluster`). device: None picks CUDA (NCCL, the GPU
    LOCAL_RANK) when available under torchrun, else the CPU (gloo); "cpu" forces gloo.
    return_fit: return the DistributedFit (rank 0: with labels and the gathered U) instead of the labels.
    balance: "rows" (equal row counts per rank) or "nnz" (equal stored entries; a skewed graph).
    """
    device = check_device(device)
    dtype = resolve_dtype(dtype)
    if threads not in (None, "auto") and not (is_int(threads) and threads >= 1):
        raise ValueError(f"threads must be a positive int, None or 'auto', got {threads!r}")
    owns_group = group is None and "WORLD_SIZE" in os.environ and not dist.is_initialized()
    if group is None:
        env_device = init_from_env(None if device is None else ("nccl" if torch.device(device).type == "cuda"
                                                                 else "gloo"))
        if device is None or torch.device(device).type == env_device.type:
            device = env_device  # under torchrun with NCCL: this rank's GPU (LOCAL_RANK)
    try:
        with thread_limit(None if threads == "auto" else threads):  # torch's setting restored after, as in one process
            result = _cluster_on_group(source, k, solver, seed, max_iter, tol, lam, dtype, device, out, group,
                                       threads, verbose, return_fit, balance, affinity, n_neighbors, metric,
                                       save_graph, options)
    except BaseException:
        if owns_group:
            dist.destroy_process_group()
        raise
    if owns_group:
        # Every rank waits for rank 0's files, then all close the group together: a rank that leaves with its
        # gloo group open while the others still use theirs can die in std::terminate at exit.
        dist.barrier()
        dist.destroy_process_group()
    return result


def _cluster_on_group(source, k, solver, seed, max_iter, tol, lam, dtype, device, out, group, threads, verbose,
                      return_fit, balance, affinity, n_neighbors, metric, save_graph, options):
    """`cluster` once the process group (if any) is up: rank 0 gets the labels or the fit, the others None."""
    if affinity not in ("precomputed", "nearest_neighbors"):
        raise ValueError(f"affinity must be 'precomputed' or 'nearest_neighbors', got {affinity!r}")
    if out is not None:
        _prepare_out(Comm(group, device), out)
    start = time.perf_counter()
    if affinity == "nearest_neighbors":
        if balance != "rows":
            raise ValueError("balance='nnz' needs the graph's row pointers before it exists; a graph built from "
                             "features is split into blocks of equal row counts (balance='rows')")
        from .distributed_graph import similarity_graph

        graph = similarity_graph(source, n_neighbors=n_neighbors, metric=metric, group=group, device=device,
                                 dtype=dtype, save_to=save_graph)
    else:
        graph = ShardedGraph.load(source, group=group, device=device, dtype=dtype, balance=balance)
    graph_seconds = time.perf_counter() - start
    run = fit(graph, k, solver, seed=seed, max_iter=max_iter, tol=tol, lam=lam, gather_factor=out is not None,
              verbose=verbose, **options)
    traffic = graph.sum(run.traffic.get("bytes_sent", 0), run.traffic.get("allgather_bytes_per_exchange", 0) *
                        run.traffic.get("exchanges", 0), graph.nnz_local)  # a collective: before rank 0 goes on alone
    nnz = int(traffic[2])
    if run.rank != 0:
        return None
    run.params["graph_seconds"] = graph_seconds
    run.traffic["halo_bytes_sent_total"] = float(traffic[0])
    run.traffic["allgather_bytes_equivalent"] = float(traffic[1])
    if out is not None:
        os.makedirs(out, exist_ok=True)
        metrics = {
            "input": str(source) if isinstance(source, (str, os.PathLike)) else "matrix",
            "affinity": "precomputed" if affinity == "precomputed" else "features",
            "solver": solver, "n_clusters": int(k), "n": graph.n, "device": str(graph.device),
            "dtype": str(graph.dtype).replace("torch.", ""), "rel_error": run.rel_error,
            "scale": run.scale, "modularity": run.modularity, "iterations": run.n_iter, "seconds": run.seconds,
            "graph_seconds": graph_seconds,
            "cluster_sizes": np.bincount(run.labels, minlength=int(k)).tolist(),
            "world_size": run.world_size, "halo_bytes_sent_total": float(traffic[0]),
            "allgather_bytes_equivalent": float(traffic[1]), "exchanges": run.traffic.get("exchanges", 0),
        }
        if affinity == "nearest_neighbors":
            metrics["graph"] = {"n_neighbors": graph.construction["n_neighbors"], "metric": metric, "nnz": nnz}
        np.savetxt(os.path.join(out, "labels.txt"), run.labels, fmt="%d")
        np.save(os.path.join(out, "embedding.npy"), run.U.cpu().numpy())
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    return run if return_fit else run.labels


def _prepare_out(comm, out):
    """Check `out` on every rank before any work, as `symnmf cluster --out` does (`cli._check_out`), and make the
    folder on rank 0: found after the fit, a bad `out` failed rank 0 alone, the others waiting at their barrier."""
    from .cli import CLUSTER_FILES, CommandError, _check_out

    def check():
        try:
            _check_out(out, True, CLUSTER_FILES)  # cluster() replaces the files it writes
        except CommandError as err:
            raise ValueError(str(err).replace("--out", "out", 1)) from None
        if comm.rank == 0:
            try:
                os.makedirs(out, exist_ok=True)
            except OSError as err:
                raise ValueError(f"cannot create out {str(out)!r}: {err}") from None

    _on_every_rank(comm, check, lambda rank, error: error)


# ------------------------------------------------------------------------------------- command line
def main(argv=None):
    """`torchrun --nproc-per-node N -m symnmf.distributed GRAPH -k K [--solver hals] [--seed 0] [--out DIR]`;
    `python -m symnmf.distributed GRAPH.npz --save-shards DIR [--parts P] [--order rcm]` writes shard files.

    GRAPH: a scipy.sparse.save_npz file or a `save_shards` directory. Rank 0 prints the run's
    summary (iterations, seconds, relative error, halo bytes against an all_gather of U) and
    writes DIR/labels.txt, embedding.npy and metrics.json as `symnmf cluster` does.
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m symnmf.distributed", description=main.__doc__.split("\n")[0])
    p.add_argument("graph")
    p.add_argument("-k", "--n-clusters", type=int, help="the number of clusters (needed to fit)")
    p.add_argument("--solver", choices=sorted(SOLVERS), default="hals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-iter", type=int)
    p.add_argument("--tol", type=float)
    p.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--threads", type=int, help="torch CPU threads per rank")
    p.add_argument("--out")
    p.add_argument("--balance", choices=BALANCES, default="rows",
                   help="split the rows into blocks of equal row counts or of equal stored entries")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--save-shards", metavar="DIR",
                   help="instead of fitting: write GRAPH (.npz) as shard files in DIR (one process, no torchrun)")
    p.add_argument("--parts", type=int, default=8, help="with --save-shards: the number of shard files")
    p.add_argument("--order", choices=("rcm", "degree"),
                   help="with --save-shards: renumber the nodes for a small halo (labels map back)")
    args = p.parse_args(argv)
    if args.save_shards:
        import scipy.sparse as sp

        if args.parts < 1:
            p.error(f"--parts must be at least 1, got {args.parts}")
        index = save_shards(sp.load_npz(args.graph), args.save_shards, args.parts, order=args.order)
        print(f"wrote {args.parts} shards and {index}")
        return 0
    if args.n_clusters is None:
        p.error("the following arguments are required to fit: -k/--n-clusters")
    device = init_from_env()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out:
        _prepare_out(Comm(device=device), args.out)
    dtype = {"float32": torch.float32, "float64": torch.float64, None: None}[args.dtype]
    start = time.perf_counter()
    graph = ShardedGraph.load(args.graph, device=device, dtype=dtype, balance=args.balance)
    load_seconds = time.perf_counter() - start
    run = fit(graph, args.n_clusters, args.solver, seed=args.seed, max_iter=args.max_iter, tol=args.tol,
              gather_factor=args.out is not None, verbose=args.verbose)
    comm = graph.comm
    t = run.traffic
    import resource

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    per_rank = torch.tensor([load_seconds, run.seconds, graph.nnz_local, t["halo_rows"], t["bytes_per_exchange"],
                             t["allgather_bytes_per_exchange"], peak_mb], dtype=torch.float64, device=graph.device)
    table = per_rank.new_zeros((comm.world_size, per_rank.numel()))
    table[comm.rank] = per_rank
    comm.all_reduce(table)
    if comm.rank == 0:
        table = table.cpu().numpy()
        halo, gather = table[:, 4].sum(), table[:, 5].sum()
        print(f"{args.solver}: n {graph.n}, nnz {int(table[:, 2].sum())}, rank {args.n_clusters}, "
              f"{comm.world_size} ranks ({comm.backend or 'single process'}, {graph.device}, "
              f"{torch.get_num_threads()} threads each)")
        print(f"  {run.n_iter} iterations in {run.seconds:.2f} s ({run.seconds / max(run.n_iter, 1) * 1e3:.1f} ms per "
              f"iteration), rel_error {run.rel_error:.6f}, load {table[:, 0].max():.2f} s, peak RSS per rank "
              f"{table[:, 6].max():.0f} MB (host memory)")
        print(f"  halo: {int(table[:, 3].sum())} rows received in all per product, {halo / 1e6:.3f} MB sent per "
              f"product ({t['exchanges'] / max(run.n_iter, 1):.2f} products per iteration on rank 0); an all_gather "
              f"of U would send {gather / 1e6:.3f} MB ({halo / gather if gather else 0:.4f}x)")
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            np.savetxt(os.path.join(args.out, "labels.txt"), run.labels, fmt="%d")
            np.save(os.path.join(args.out, "embedding.npy"), run.U.cpu().numpy())
            with open(os.path.join(args.out, "metrics.json"), "w") as f:
                json.dump({"graph": args.graph, "solver": args.solver, "n_clusters": args.n_clusters, "n": graph.n,
                           "world_size": comm.world_size, "rel_error": run.rel_error, "iterations": run.n_iter,
                           "seconds": run.seconds, "halo_bytes_per_product": float(halo),
                           "allgather_bytes_per_product": float(gather)}, f, indent=2)
    if comm.active:  # all ranks close together, after rank 0's files (see `cluster`)
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
