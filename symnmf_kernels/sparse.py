"""CSR: the sparse matrix format of the SpMM and the sparse losses.

A `CSR` holds the three arrays of a compressed-sparse-row matrix, int64 row
pointers, int32 or int64 column indices and float values, plus what is worth
computing once per matrix and reusing every step: whether its indices are
valid, whether it is symmetric, its transpose and its squared Frobenius norm.

`as_csr(X)` turns a torch sparse CSR/COO tensor (batched CSR included), a
scipy.sparse matrix or a CSR into a CSR; for a torch tensor the result is
cached on the tensor, so repeated calls with the same X share that work.
`block_diag(mats)` stacks B graphs into one block-diagonal CSR, the layout of
a batch of graphs of the same size. `locality_order(X)` and `permute(X, perm)`
renumber the nodes of a graph in random order so that neighbours get near
indices, which the SpMM's gathers of U's rows reward (a one-off cost).

This module imports no op; `X @ U` on a CSR is attached by
symnmf_kernels.ops.spmm (it is `sk.spmm(X, U)`).
"""
import warnings

import numpy as np
import torch
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["CSR", "as_csr", "block_diag", "locality_order", "permute"]

INDEX_DTYPES = (torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float32, torch.float64)


def _is_scipy_sparse(X):
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(X)


class CSR:
    """A sparse (n_rows, n_cols) matrix in compressed-sparse-row form.

    crow_indices: (n_rows + 1,) row pointers (stored as int64);
    col_indices: (nnz,) int32 or int64 column of each stored entry, sorted within a row;
    values: (nnz,) float32 or float64.
    symmetric: True/False when known; None lets `is_symmetric()` find out (once).
    Only metadata is checked here; `validate()` checks the index values.
    What is derived from the arrays (the checks, X^T, symmetry, ||X||^2) is kept, and derived again once an
    array is changed in place or replaced.
    """

    def __init__(self, crow_indices, col_indices, values, shape, symmetric=None, name="X"):
        self.name = name
        if not all(isinstance(t, torch.Tensor) for t in (crow_indices, col_indices, values)):
            raise TypeError(f"{name}: crow_indices, col_indices and values must be torch tensors")
        if crow_indices.dtype not in INDEX_DTYPES or col_indices.dtype not in INDEX_DTYPES:
            raise TypeError(
                f"{name}: CSR indices must be int32 or int64, got crow_indices {crow_indices.dtype} "
                f"and col_indices {col_indices.dtype}"
            )
        if values.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: values must be float32 or float64, got {values.dtype}; convert with .float()")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 0:
            raise ValueError(f"{name}: a CSR matrix has a 2-d shape (n_rows, n_cols), got {shape}")
        if crow_indices.dim() != 1 or crow_indices.numel() != shape[0] + 1:
            raise ValueError(
                f"{name}: crow_indices must have n_rows + 1 = {shape[0] + 1} entries, got shape {tuple(crow_indices.shape)}"
            )
        if col_indices.dim() != 1 or values.shape != col_indices.shape:
            raise ValueError(
                f"{name}: col_indices and values must be 1-d of the same length (nnz), got shapes "
                f"{tuple(col_indices.shape)} and {tuple(values.shape)}"
            )
        if not (crow_indices.device == col_indices.device == values.device):
            raise ValueError(
                f"{name}: crow_indices ({crow_indices.device}), col_indices ({col_indices.device}) and values "
                f"({values.device}) must be on one device"
            )
        if symmetric and shape[0] != shape[1]:
            raise ValueError(f"{name}: symmetric=True for a {shape[0]} x {shape[1]} matrix; only a square one can be")
        self.crow_indices = crow_indices.to(torch.int64)
        self.col_indices = col_indices
        self.values = values
        self.shape = shape
        self._declared_symmetric = symmetric
        self._symmetric = symmetric
        self._validated = False
        self._transpose = None
        self._row_sq_norms = None
        self._squared_norms = {}
        self._torch_int32 = None
        self._derived_from = None

    # ---- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_torch(cls, X, name="X"):
        """From a torch sparse CSR or COO tensor of shape (n_rows, n_cols).

        A batched CSR tensor (B, n, n) becomes the block-diagonal (B n, B n) CSR.
        """
        if X.layout == torch.sparse_coo:
            if X.dim() != 2:
                raise ValueError(f"{name}: a sparse COO matrix must be 2-d, got shape {tuple(X.shape)}")
            X = X.coalesce().to_sparse_csr()
        if X.layout != torch.sparse_csr:
            raise TypeError(f"{name} has layout {X.layout}; pass a sparse CSR/COO tensor or a scipy.sparse matrix")
        # values() is a view whose base is the sparse tensor itself; a detached alias shares the
        # memory and version counter without that base, which torch.compile cannot trace.
        values = X.values() if X.values().requires_grad else X.values().detach()
        if X.dim() == 3:
            B, n, m = X.shape
            crow, col, val = X.crow_indices(), X.col_indices(), values
            nnz = col.shape[-1]
            offsets = torch.arange(B, device=col.device, dtype=torch.int64)
            crow = (crow[:, :-1].to(torch.int64) + (offsets * nnz)[:, None]).reshape(-1)
            crow = torch.cat([crow, crow.new_full((1,), B * nnz)])
            col = (col.to(torch.int64) + (offsets * m)[:, None]).reshape(-1)
            return cls(crow, col, val.reshape(-1), (B * n, B * m), name=name)
        if X.dim() != 2:
            raise ValueError(f"{name}: a sparse CSR matrix must be 2-d or a batch (B, n, n), got shape {tuple(X.shape)}")
        return cls(X.crow_indices(), X.col_indices(), values, X.shape, name=name)

    @classmethod
    def from_scipy(cls, A, device=None, dtype=None, name="X"):
        """From a scipy.sparse matrix (any format); duplicates are summed and indices sorted."""
        if A.dtype.kind not in "biuf":  # torch's cast would drop an imaginary part with a warning alone
            raise TypeError(f"{name} must hold real numbers, got a scipy.sparse matrix of {A.dtype}")
        A = A.tocsr(copy=True)
        A.sum_duplicates()
        A.sort_indices()
        if dtype is None:
            dtype = torch.float64 if A.dtype == np.float64 else torch.float32
        index_dtype = np.int32 if A.shape[1] < 2**31 else np.int64
        return cls(
            torch.from_numpy(A.indptr.astype(np.int64)).to(device),
            torch.from_numpy(A.indices.astype(index_dtype)).to(device),
            torch.from_numpy(np.asarray(A.data)).to(device=device, dtype=dtype),
            A.shape,
            name=name,
        )

    def to_torch(self):
        """As a torch sparse CSR tensor (shares memory where the index dtypes allow). A change made through it
        is not seen by this CSR's cached data (its ||X||^2, its symmetry): change `values` itself instead."""
        col = self.col_indices.to(torch.int64)
        with warnings.catch_warnings():  # torch's "sparse CSR is beta" notice
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow_indices, col, self.values, size=self.shape, check_invariants=False)

    def to_scipy(self):
        """As a scipy.sparse CSR matrix of its own arrays (a change to it does not reach this CSR)."""
        import scipy.sparse as sp

        return sp.csr_matrix(
            (self.values.detach().cpu().numpy(), self.col_indices.cpu().numpy(), self.crow_indices.cpu().numpy()),
            shape=self.shape, copy=True,
        )

    def to(self, device=None, dtype=None):
        """A copy on another device and/or with another value dtype; what is known carries over.

        As with torch.Tensor.to, a dtype may come first: X.to(torch.float64)."""
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError("CSR.to: the dtype is given twice")
            device, dtype = None, device
        self._fresh()  # what is known of the arrays as they are now, not as they were
        out = CSR(
            self.crow_indices.to(device),
            self.col_indices.to(device),
            self.values.to(device=device, dtype=dtype),
            self.shape,
            symmetric=self._declared_symmetric,
            name=self.name,
        )
        out._symmetric, out._validated = self._symmetric, self._validated
        return out

    # ---- properties -------------------------------------------------------------------------------------------

    @property
    def device(self):
        return self.values.device

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def nnz(self):
        return self.col_indices.numel()

    def __repr__(self):
        return f"CSR(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, device={self.device})"

    # ---- checks and cached derived data -------------------------------------------------------------------------

    def _fresh(self):
        """Forget what was derived from the three arrays (the checks, X^T, symmetry, the norms) once any of them
        was changed in place or replaced since: a user's `A.values.mul_(2)` must not leave ||X||^2 stale. The
        tensors' version counters tell, at the cost of three attribute reads."""
        arrays = (self.crow_indices, self.col_indices, self.values)
        versions = tuple(_version(t) for t in arrays)
        seen = self._derived_from
        if seen is not None and (versions != seen[1] or any(a is not b for a, b in zip(arrays, seen[0]))):
            self._symmetric = self._declared_symmetric
            self._validated = False
            self._transpose = None
            self._row_sq_norms = None
            self._squared_norms = {}
            self._torch_int32 = None
        self._derived_from = (arrays, versions)

    def validate(self):
        """Raise ValueError unless the index arrays describe a valid CSR matrix.

        Row pointers: start at 0, non-decreasing, end at nnz. Column indices:
        in [0, n_cols) and strictly increasing within each row (sorted, no
        duplicates). Reads the indices (a host synchronisation on a GPU), once
        per matrix: the result is remembered.
        """
        self._fresh()
        if self._validated:
            return self
        name, (n_rows, n_cols) = self.name, self.shape
        crow, col = self.crow_indices, self.col_indices
        nnz = col.numel()
        first, last = int(crow[0]), int(crow[-1])
        if first != 0:
            raise ValueError(f"{name}: crow_indices[0] must be 0, got {first}")
        if last != nnz:
            raise ValueError(f"{name}: crow_indices[-1] must equal nnz = {nnz}, got {last}")
        steps = crow.diff()
        if n_rows and bool((steps < 0).any()):
            i = int(torch.nonzero(steps < 0)[0])
            raise ValueError(
                f"{name}: crow_indices must be non-decreasing (sorted), but crow_indices[{i + 1}] = "
                f"{int(crow[i + 1])} < crow_indices[{i}] = {int(crow[i])}"
            )
        if nnz:
            lo, hi = int(col.min()), int(col.max())
            if lo < 0 or hi >= n_cols:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{name}: column index {bad} is out of range for a matrix with {n_cols} columns")
            # Within a row, each column index must exceed the previous one; the first entry of a
            # row has no predecessor.
            row_start = torch.zeros(nnz, dtype=torch.bool, device=col.device)
            row_start[crow[:-1][steps > 0]] = True
            ordered = (col[1:] > col[:-1]) | row_start[1:]
            if not bool(ordered.all()):
                k = int(torch.nonzero(~ordered)[0]) + 1
                raise ValueError(
                    f"{name}: column indices must be sorted and free of duplicates within each row, but entry {k} "
                    f"(column {int(col[k])}) follows column {int(col[k - 1])} in the same row; canonicalise X "
                    "(e.g. scipy's sum_duplicates() and sort_indices(), or torch's .coalesce())"
                )
        self._validated = True
        return self

    def row_indices(self):
        """(nnz,) int64 row of each stored entry."""
        counts = self.crow_indices.diff()
        rows = torch.arange(self.shape[0], device=self.device)
        return torch.repeat_interleave(rows, counts, output_size=self.nnz)

    def transpose(self):
        """X^T as a CSR (computed once, then cached)."""
        self._fresh()
        if self._transpose is None:
            if self._symmetric:
                self._transpose = self
            else:
                self._transpose = self._compute_transpose()
        return self._transpose

    def _compute_transpose(self):
        n_rows, n_cols = self.shape
        rows = self.row_indices()
        col = self.col_indices.to(torch.int64)
        # Rows are already in order, so a stable sort by column leaves rows sorted within each column.
        order = torch.sort(col, stable=True).indices
        counts = torch.bincount(col, minlength=n_cols) if self.nnz else torch.zeros(n_cols, dtype=torch.int64,
                                                                                     device=self.device)
        crow_t = torch.zeros(n_cols + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(counts, 0, out=crow_t[1:])
        index_dtype = torch.int32 if n_rows < 2**31 else torch.int64
        out = CSR(crow_t, rows[order].to(index_dtype), self.values[order], (n_cols, n_rows), name=f"{self.name}^T")
        out._validated = self._validated
        out._transpose = self
        return out

    def is_symmetric(self):
        """Whether X^T == X exactly (pattern and values); computed once, then cached.

        Costs one transpose and a host synchronisation; the transpose is kept
        only when X is not symmetric (the backward of the SpMM needs it then).
        """
        self._fresh()
        if self._symmetric is None:
            if self.shape[0] != self.shape[1]:
                self._symmetric = False
            else:
                T = self._compute_transpose()
                self._symmetric = bool(
                    torch.equal(T.crow_indices, self.crow_indices)
                    and torch.equal(T.col_indices.to(torch.int64), self.col_indices.to(torch.int64))
                    and torch.equal(T.values, self.values)
                )
                self._transpose = self if self._symmetric else T
        return self._symmetric

    def row_sq_norms(self):
        """(n_rows,) squared norm of each row, the pieces of ||X||_F^2 (cached)."""
        self._fresh()
        if self._row_sq_norms is None:
            rows = self.row_indices()
            sq = self.values.detach().to(torch.float64).pow(2)
            self._row_sq_norms = torch.zeros(self.shape[0], dtype=sq.dtype, device=self.device).index_add_(0, rows, sq)
        return self._row_sq_norms

    def squared_norm(self, blocks=1):
        """||X||_F^2 in float64 (cached): a 0-d tensor, or with blocks > 1 the (blocks,) norms of that many
        equal ranges of rows (the graphs of a block-diagonal X)."""
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1 or self.shape[0] % blocks:
            raise ValueError(f"{self.name}.squared_norm: blocks must be a positive int that divides the "
                             f"{self.shape[0]} rows, got {blocks!r}")
        self._fresh()
        out = self._squared_norms.get(blocks)
        if out is None:
            rows = self.row_sq_norms()
            out = self._squared_norms[blocks] = rows.sum() if blocks == 1 else rows.reshape(blocks, -1).sum(1)
        return out

    def torch_int32(self):
        """This matrix as a torch sparse CSR tensor with 32-bit indices, sharing col_indices and values (the
        row pointers are copied once and cached), or None where the column indices are not int32."""
        if self.col_indices.dtype != torch.int32 or self.nnz >= 2**31:
            return None
        self._fresh()
        if self._torch_int32 is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's note that its sparse CSR support is beta
                self._torch_int32 = torch.sparse_csr_tensor(
                    self.crow_indices.to(torch.int32), self.col_indices, self.values, size=self.shape,
                    check_invariants=False)
        return self._torch_int32


def block_diag(mats, name="X"):
    """The block-diagonal CSR of a list of sparse matrices (torch sparse, scipy.sparse or CSR).

    With B square graphs of n nodes each, (B n, B n) times U of shape (B, n, r)
    is the batch of products X_b U_b.
    """
    parts = [as_csr(m, name=f"{name}[{i}]") for i, m in enumerate(mats)]
    if not parts:
        raise ValueError(f"{name}: block_diag needs at least one matrix")
    device, dtype = parts[0].device, parts[0].dtype
    for i, p in enumerate(parts):
        if p.device != device or p.dtype != dtype:
            raise ValueError(f"{name}[{i}] is {p.dtype} on {p.device}, {name}[0] is {dtype} on {device}; use one of each")
    crows, cols, row_off, col_off, nnz_off = [], [], 0, 0, 0
    for i, p in enumerate(parts):
        crows.append(p.crow_indices[:-1] + nnz_off if i < len(parts) - 1 else p.crow_indices + nnz_off)
        cols.append(p.col_indices.to(torch.int64) + col_off)
        row_off, col_off, nnz_off = row_off + p.shape[0], col_off + p.shape[1], nnz_off + p.nnz
    index_dtype = torch.int32 if col_off < 2**31 else torch.int64
    out = CSR(
        torch.cat(crows), torch.cat(cols).to(index_dtype), torch.cat([p.values for p in parts]), (row_off, col_off),
        name=name,
    )
    for p in parts:
        p._fresh()
    known = [p._symmetric for p in parts]
    if all(s is not None for s in known):
        out._symmetric = all(known)
    return out


_cache = WeakIdKeyDictionary()


def _version(t):
    """t's version counter, or for a tensor made under torch.inference_mode (which has none) a new object each
    time: it matches no stored version, so what was derived from t is derived again."""
    return object() if t.is_inference() else t._version


def _versions(X):
    if X.layout == torch.sparse_csr:
        return (_version(X.crow_indices()), _version(X.col_indices()), _version(X.values()))
    return (_version(X),)


def as_csr(X, device=None, dtype=None, name="X"):
    """X as a CSR.

    X: a CSR (returned as is), a torch sparse CSR (2-d or batched (B, n, n)) or
    COO tensor, or a scipy.sparse matrix. device and dtype apply to scipy input
    (default: CPU, X's own float dtype). For a torch tensor the CSR is cached on
    the tensor and rebuilt only when its data change in place.
    """
    if isinstance(X, CSR):
        return X
    if _is_scipy_sparse(X):
        return CSR.from_scipy(X, device=device, dtype=dtype, name=name)
    if not isinstance(X, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch sparse CSR/COO tensor, a scipy.sparse matrix or a symnmf_kernels.sparse.CSR, "
            f"got {type(X).__name__}"
        )
    if X.layout == torch.strided:
        raise TypeError(f"{name} is a dense tensor; pass a sparse one, e.g. {name}.to_sparse_csr()")
    entry = _cache.get(X)
    versions = _versions(X)
    if entry is not None and entry[0] == versions:
        return entry[1]
    A = CSR.from_torch(X, name=name)
    if not A.values.requires_grad:  # values in a graph hold X itself: the weak cache could then never let it go
        _cache[X] = (versions, A)
    return A


LOCALITY_METHODS = ("rcm", "degree")


def locality_order(X, method="rcm"):
    """A renumbering of X's nodes that brings each node's neighbours near it: perm (n,) int64 on X's device,
    node perm[i] becoming node i.

    method: "rcm", reverse Cuthill-McKee (scipy.sparse.csgraph; bandwidth-reducing, a one-off
    O(nnz) pass on the host), or "degree", by decreasing degree (hubs first, so the rows most
    gathered share cache lines). X must be square; it is read on the host.
    """
    if method not in LOCALITY_METHODS:
        raise ValueError(f"method must be one of {LOCALITY_METHODS}, got {method!r}")
    A = as_csr(X, name="X")
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"X must be square to renumber its nodes, got shape {A.shape}")
    if method == "degree":
        degree = A.crow_indices[1:] - A.crow_indices[:-1]
        return torch.argsort(degree, descending=True, stable=True)
    if A.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=A.device)
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    order = reverse_cuthill_mckee(A.to_scipy(), symmetric_mode=True)
    return torch.from_numpy(order.astype(np.int64)).to(A.device)


def permute(X, perm):
    """P X P^T as a CSR on X's device: row and column i of the result are row and column perm[i] of X.

    Factors map back with the inverse permutation: if U solves the renumbered
    problem, U[inverse] with inverse[perm] = arange(n) solves the original.
    """
    A = as_csr(X, name="X")
    n = A.shape[0]
    if A.shape[1] != n:
        raise ValueError(f"X must be square to renumber its nodes, got shape {A.shape}")
    perm = torch.as_tensor(perm)
    if perm.dtype.is_floating_point or perm.is_complex() or perm.dtype == torch.bool:
        raise TypeError(f"perm must hold integers (a permutation of range({n})), got {perm.dtype}")
    perm = perm.to(torch.int64)
    if perm.shape != (n,) or not torch.equal(torch.sort(perm.cpu()).values, torch.arange(n)):
        raise ValueError(f"perm must be a permutation of range({n}), got shape {tuple(perm.shape)}")
    perm_np = perm.cpu().numpy()
    B = A.to_scipy()[perm_np][:, perm_np].tocsr()
    B.sort_indices()
    out = CSR.from_scipy(B, device=A.device, dtype=A.dtype, name=A.name)
    A._fresh()
    out._symmetric = A._symmetric
    return out

