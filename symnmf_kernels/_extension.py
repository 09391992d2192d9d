"""The compiled library symnmf_kernels._C and the fallbacks for what it lacks.

_C (built from csrc/) holds torch operators only, no Python module: loading it
with torch.ops.load_library defines the schema of symnmf_kernels::spmm_csr and
registers its CPU (OpenMP) and, when built with CUDA, its CUDA kernel.

Importing this module loads the library once (from SYMNMF_KERNELS_LIBRARY when
that is set, e.g. a CMake build) and fills every gap with torch.sparse.mm:
the schema itself when the library did not load, and a kernel for each device
it has none for. The fallback says so once per device. `extension_status()`
reports which native kernels there are.

The fake (shape) kernel and the autograd formula of the operator belong to the
op and are registered in symnmf_kernels.ops.spmm.
"""
import importlib.util
import os
import warnings

import torch

__all__ = [
    "OP", "SCHEMA", "empty_host_cache", "extension_status", "has_cpu_op", "host_cache_bytes", "set_host_cache_limit",
]

NAMESPACE = "symnmf_kernels"
OP = f"{NAMESPACE}::spmm_csr"
SCHEMA = (
    "spmm_csr(Tensor crow_indices, Tensor col_indices, Tensor values, Tensor dense, "
    "Tensor? t_crow_indices=None, Tensor? t_col_indices=None, Tensor? t_values=None) -> Tensor"
)


def _load():
    """Load symnmf_kernels._C (or the library named by SYMNMF_KERNELS_LIBRARY); the error, or None."""
    path = os.environ.get("SYMNMF_KERNELS_LIBRARY")
    if not path:
        try:
            spec = importlib.util.find_spec("symnmf_kernels._C")
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            return "symnmf_kernels._C is not built (reinstall with `pip install --no-build-isolation -e .`)"
        path = spec.origin
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as e:
        return f"symnmf_kernels._C failed to load from {path}: {e}"
    return None


def _has_op():
    return hasattr(getattr(torch.ops, NAMESPACE), "spmm_csr")


def _has_kernel(dispatch_key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(OP, dispatch_key)


_load_error = _load()
# Which native kernels there are, taken before the fallbacks below fill the gaps.
_native = {
    "cpu": _load_error is None and _has_op() and _has_kernel("CPU"),
    "cuda": _load_error is None and _has_op() and _has_kernel("CUDA"),
}
_warned = set()
_fallback_lib = None  # keeps the Python registrations of the fallback alive


def extension_status():
    """{'cpu': bool, 'cuda': bool, 'error': str or None}: which native SpMM kernels are available."""
    return {**_native, "error": _load_error}


def has_cpu_op(name):
    """Whether the built library defines the CPU operator symnmf_kernels::<name> (the C++ kernels beside the SpMM)."""
    return _native["cpu"] and hasattr(getattr(torch.ops, NAMESPACE), name)


def set_host_cache_limit(max_bytes):
    """Sets the most bytes the CPU kernels' output cache keeps (0 turns it off), frees what it holds beyond that,
    and returns the limit before (0 when the library is not built).

    The extension's CPU kernels take their large outputs (1 MiB or more) from this cache, and a freed output's
    buffer goes back to it, so a loop that allocates the same shapes every step reuses pages that are already
    mapped instead of page-faulting on fresh ones (docs/cpu_backend.md, "The host cache"). The limit starts at
    256 MiB, or at SYMNMF_HOST_CACHE_MB MiB when that is set in the environment.
    """
    if int(max_bytes) < 0:
        raise ValueError(f"set_host_cache_limit: max_bytes must be >= 0, got {max_bytes}")
    if not has_cpu_op("host_cache_set_limit"):
        return 0
    return torch.ops.symnmf_kernels.host_cache_set_limit(int(max_bytes))


def host_cache_bytes():
    """The bytes of freed output buffers the CPU kernels' cache holds (0 when the library is not built)."""
    return torch.ops.symnmf_kernels.host_cache_bytes() if has_cpu_op("host_cache_bytes") else 0


def empty_host_cache():
    """Frees every buffer the CPU kernels' output cache holds; its limit stays."""
    set_host_cache_limit(set_host_cache_limit(0))


def spmm_csr_torch(crow_indices, col_indices, values, dense, t_crow_indices=None, t_col_indices=None,
                   t_values=None):
    """symnmf_kernels::spmm_csr through torch.sparse.mm, for a device without a native kernel."""
    device = dense.device.type
    if device not in _warned:
        _warned.add(device)
        why = _load_error or "the extension was built without CUDA"
        warnings.warn(f"{why}; sk.spmm on {device} uses torch.sparse.mm", stacklevel=2)
    n_rows, n_cols = crow_indices.numel() - 1, dense.shape[-2]
    with warnings.catch_warnings():  # torch's "sparse CSR is beta" notice
        warnings.simplefilter("ignore", UserWarning)
        X = torch.sparse_csr_tensor(
            crow_indices.to(torch.int64), col_indices.to(torch.int64), values, size=(n_rows, n_cols),
            check_invariants=False,
        )
    if dense.dim() == 2:
        return torch.sparse.mm(X, dense)
    B, _, r = dense.shape
    flat = dense.transpose(0, 1).reshape(n_cols, B * r)
    return torch.sparse.mm(X, flat).reshape(n_rows, B, r).transpose(0, 1).contiguous()


def _register_fallbacks():
    global _fallback_lib
    if not _has_op():
        _fallback_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
        _fallback_lib.define(SCHEMA)
    missing = [key for key in ("CPU", "CUDA") if not _has_kernel(key)]
    if missing:
        _fallback_lib = _fallback_lib or torch.library.Library(NAMESPACE, "IMPL")
        for key in missing:
            _fallback_lib.impl("spmm_csr", spmm_csr_torch, key)


_register_fallbacks()
