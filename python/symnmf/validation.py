"""Input checks and conversions for similarity matrices, shared by the models, solvers and estimator.

These read the values of X (a host synchronisation), so they run once per fit,
never inside a training step.
"""
import math
import numbers
import warnings

import numpy as np
import torch

__all__ = [
    "as_similarity", "check_similarity", "check_rank", "check_device", "is_scipy_sparse", "power_of_two_scale",
    "real_array",
]


def is_scipy_sparse(X):
    """Whether X is a scipy.sparse matrix or array (the one such test of the package)."""
    import scipy.sparse as sp

    return sp.issparse(X)


def power_of_two_scale(X, dim=None):
    """The power of two near 1 / max|X| (over `dim`, keeping it, or over all of X; 1 where X is 0): X times it has
    its largest magnitude in [0.5, 1), exactly, so that squares, norms and distances of data of any scale neither
    overflow nor underflow, and a method that a common factor does not change gives the same result."""
    top = X.abs().amax() if dim is None else X.abs().amax(dim, keepdim=True)
    exponent = torch.frexp(torch.where(top > 0, top, torch.full_like(top, 0.5))).exponent  # 0.5: a unit of 1
    # at most the dtype's largest power of two: for a subnormal largest entry 2^-exponent is beyond the range (X
    # times it then lands in the normal range, if below 0.5)
    exponent = exponent.clamp(min=1 - math.frexp(torch.finfo(X.dtype).max)[1])
    return torch.ldexp(torch.ones_like(top), -exponent)


def real_array(value, name):
    """value (array-like or a torch tensor) as a numpy array of real numbers; anything else (complex numbers,
    which a cast would cut to their real part, text, objects) is a ValueError naming the argument."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got an array of dtype {array.dtype}")
    return array


def check_device(device, name="device"):
    """device (a torch.device or its name) as a torch.device that this process can use, or None for None.

    An unknown name, or a CUDA device that torch cannot see here, is a ValueError naming the argument,
    raised before any data moves (torch's own message for the latter is an AssertionError from deep in
    its CUDA initialisation).
    """
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} {device!r} is not a device torch knows; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA device"
            raise ValueError(f"{name} {str(device)!r} cannot be used: {why} here; use 'cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name} {str(device)!r} cannot be used: torch sees {count} CUDA device(s) here, "
                             f"cuda:0 .. cuda:{count - 1}")
    return device


def array_as_tensor(array):
    """torch.as_tensor of a numpy array, without a copy where torch can share its memory: read-only memory and
    reversed views (negative strides), which torch refuses, are copied first."""
    copy = not array.flags.writeable or any(s < 0 for s in array.strides)
    return torch.as_tensor(array.copy() if copy else array)


def _real(X, name):
    """TypeError unless X (a numpy array, scipy.sparse matrix or torch tensor) holds real numbers: a cast to a
    float dtype would cut complex numbers to their real part, with a warning at most."""
    kind = X.dtype.kind if not isinstance(X, torch.Tensor) else ("c" if X.is_complex() else "f")
    if kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got {X.dtype}")


def _values(X):
    """The stored entries of a dense or sparse CSR tensor."""
    return X.values() if X.layout == torch.sparse_csr else X


def canonical_csr(X):
    """A scipy.sparse matrix (any format) as a CSR with sorted indices and no duplicates. A CSR not in that form is
    copied first: scipy's tocsr() returns the matrix itself, whose in-place sort would permute the caller's data
    array (which it shares) and not its index array (which it may have copied to another integer type)."""
    A = X.tocsr()
    if not A.has_canonical_format:
        A = A.copy() if A is X else A
        A.sum_duplicates()
        A.sort_indices()
    return A


def as_similarity(X, device=None, dtype=None, name="X"):
    """X (numpy, scipy.sparse, or torch; dense or sparse) as a torch tensor.

    Dense input gives a strided tensor, sparse input a torch sparse CSR tensor.
    dtype defaults to float32 for integer or float16 input, else X's own float dtype.
    """
    if is_scipy_sparse(X):
        X = canonical_csr(X)
        with warnings.catch_warnings():  # torch's "sparse CSR is beta" notice
            warnings.simplefilter("ignore", UserWarning)
            X = torch.sparse_csr_tensor(
                torch.from_numpy(X.indptr.astype(np.int64)),
                torch.from_numpy(X.indices.astype(np.int64)),
                torch.from_numpy(np.asarray(X.data)),
                size=X.shape,
                check_invariants=False,  # scipy's canonical form above already holds them
            )
    elif isinstance(X, np.ndarray) or not isinstance(X, torch.Tensor):
        array = np.asarray(X)
        _real(array, name)
        X = array_as_tensor(array)
    elif X.layout == torch.sparse_coo:
        X = X.coalesce().to_sparse_csr()
    elif X.layout not in (torch.strided, torch.sparse_csr):
        raise TypeError(f"{name} has layout {X.layout}; pass a dense tensor or a sparse CSR/COO tensor")
    if dtype is None:
        dtype = X.dtype if X.dtype in (torch.float32, torch.float64) else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    _real(X, name)
    device = check_device(device)
    narrowed = X.dtype == torch.float64 and dtype == torch.float32  # the one cast that can overflow
    original, X = X, X.to(device=device if device is not None else X.device, dtype=dtype)
    # a finite 1e300 become inf would be refused as "not finite": told apart (a second pass only where the cast
    # gave a non-finite entry)
    if narrowed and not bool(torch.isfinite(_values(X)).all()) and bool(torch.isfinite(_values(original)).all()):
        raise ValueError(f"{name} has entries too large for {dtype}; pass dtype=torch.float64 or rescale it "
                         "(e.g. divide it by its largest entry)")
    return X


def check_similarity(X, name="X", symmetric_tol=1e-5):
    """Raise ValueError unless X is a square, symmetric, finite, non-negative, non-zero similarity matrix.

    An all-zero X has the zero factor as its only SymNMF solution: there is
    nothing to cluster, and every solver would return NaN or zeros, so it is
    refused here.

    X is a torch tensor from `as_similarity`, dense (..., n, n) or sparse CSR (n, n).
    Returns X unchanged.
    """
    if X.dim() < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"{name} must be a square n x n similarity matrix, got shape {tuple(X.shape)}")
    if X.shape[-1] == 0:
        raise ValueError(f"{name} is empty (n = 0)")
    sparse = X.layout != torch.strided
    values = X.values() if sparse else X
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} has NaN or infinite entries; clean or impute them before fitting")
    if bool((values < 0).any()):
        # scikit-learn's wording first: its estimator checks look for it where negative input is refused
        raise ValueError(f"Negative values in data: {name} has negative entries; a similarity must be non-negative "
                         "(e.g. clip at 0)")
    if not bool((values != 0).any()):
        raise ValueError(
            f"{name} is all zero: no two samples are similar, so there is nothing to factorise or cluster "
            "(for feature input check the features and the graph's n_neighbors / metric)"
        )
    if sparse:
        asym = _sparse_asymmetry(X)
    else:
        asym = (X - X.mT).abs().max()
    scale = values.abs().max() if values.numel() else values.new_zeros(())
    if bool(asym > symmetric_tol * torch.clamp(scale, min=1e-30)):
        raise ValueError(
            f"{name} is not symmetric (max |X - X^T| = {float(asym):.3g}); symmetrise it, e.g. (X + X^T) / 2"
        )
    return X


def _sparse_asymmetry(X):
    """max |X - X^T| of a sparse CSR (n, n), in O(nnz) memory: the entries sorted by (row, col) and by
    (col, row) must then hold the same keys and values. (X - X^T) in COO form, the fallback for a pattern
    that is not symmetric or holds duplicates, peaked at 4.5 GB on a 27.5M-entry graph.)"""
    crow, col, v = X.crow_indices(), X.col_indices(), X.values()
    n = X.shape[-1]
    if v.numel() == 0:
        return v.new_zeros(())
    rows = torch.repeat_interleave(torch.arange(n, device=v.device), crow.diff())
    key = rows * n + col
    ordered = bool((key[1:] > key[:-1]).all())  # sorted, duplicate-free columns: the usual CSR
    by_row = None if ordered else torch.argsort(key)
    key_t = col * n + rows
    by_col = torch.argsort(key_t)
    key_sorted = key if ordered else key[by_row]
    if bool((key_sorted[1:] > key_sorted[:-1]).all()):
        if torch.equal(key_sorted, key_t[by_col]):
            v_row = v if ordered else v[by_row]
            return (v_row - v[by_col]).abs().max()
    Xc = X.to_sparse_coo()
    diff = (Xc - Xc.t()).coalesce().values()
    return diff.abs().max() if diff.numel() else v.new_zeros(())


def is_int(value):
    """An integer of any kind (Python's, numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_rank(rank, n, name="n_components"):
    """Raise ValueError unless 1 <= rank <= n."""
    if not is_int(rank):
        raise TypeError(f"{name} must be an int, got {type(rank).__name__}")
    if rank < 1:
        raise ValueError(f"{name} must be >= 1, got {rank}")
    if rank > n:
        raise ValueError(f"{name} = {rank} exceeds the number of nodes n = {n}; choose {name} <= n")
    return int(rank)
