"""hals_sweep_: one SymHALS sweep over the columns of a factor, in place.

    for k in 0..r-1:  w_k <- max(0, w_k + (C_k - W B_k) / B_kk)

with the shared r x r matrix B = V^T V + lam I and C = X V + lam V (n x r).
A column the sweep leaves all zero is then reset to 1e-16 times the largest
entry of W (the safety step of Gillis's HALS code, taken after the sweep rather
than inside it so that the sweep stays independent across rows).

CUDA tensors (and CPU tensors under TRITON_INTERPRET=1) run the fused Triton
row sweep of symnmf_kernels/triton/hals.py: one pass reading W and C (or
X V and V, forming C as it reads) and writing W. CPU tensors run the
extension's row sweep (csrc/cpu/hals_cpu.cpp), the same single pass, when W is
row-major; otherwise, or without the extension, a torch column loop over blocks
of rows small enough to stay in cache. r above the fused limit on CUDA falls
back to the torch loop.
"""
import numbers

import torch

from . import _launch
from ._common import check_same, check_tensor, use_triton
from .._extension import has_cpu_op

ZERO_COLUMN_FILL = 1e-16

__all__ = ["hals_sweep_", "hals_sweep", "revive_zero_columns_"]


def _check_no_grad(*tensors):
    # An update in place that autograd cannot see: a gradient through it would be silently wrong.
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        raise TypeError("the SymHALS sweep updates W in place and has no gradient, but an input requires one: "
                        "pass detached tensors or run it under torch.no_grad()")


def _check_writable(W):
    """W is written in place: refused where its entries share memory (an expanded W), which the Triton kernels
    would write racing, with maxima that do not match W, where torch raises."""
    if torch._debug_has_internal_overlap(W) == 1:  # 1: some entries share memory (a stride of 0, say)
        raise ValueError(f"W has entries that share memory (strides {W.stride()} for shape {tuple(W.shape)}, e.g. "
                         "an expanded tensor) and is updated in place: pass W.clone()")


def _check(W, C, B, V):
    check_tensor(W, "W")
    check_tensor(C, "C")
    check_tensor(B, "B")
    check_same(C, W, "C", "W")
    check_same(B, W, "B", "W")
    if V is not None:
        check_tensor(V, "V")
        check_same(V, W, "V", "W")
        if V.shape != W.shape:
            raise ValueError(f"V has shape {tuple(V.shape)} but W has {tuple(W.shape)}; they must match")
    if W.dim() not in (2, 3):
        raise ValueError(f"W must be an n x r factor or a batch (P, n, r) of them, got shape {tuple(W.shape)}")
    if C.shape != W.shape:
        raise ValueError(f"C has shape {tuple(C.shape)} but W has {tuple(W.shape)}; C = X V + lam V must match W")
    r = W.shape[-1]
    if B.shape != (*W.shape[:-2], r, r):
        what = "r x r" if W.dim() == 2 else f"(P, r, r) with P = {W.shape[0]}"
        raise ValueError(f"B must be {what}, r = {r} (V^T V + lam I, one per factor), got shape {tuple(B.shape)}")
    _check_writable(W)


def _check_lam(lam):
    if isinstance(lam, bool) or not (isinstance(lam, numbers.Real)
                                     or (isinstance(lam, torch.Tensor) and lam.numel() == 1
                                         and not lam.is_complex() and lam.dtype != torch.bool)):
        raise TypeError(f"lam must be a real number (one for every factor of a batch), got {lam!r}")


def _triton_backend(t, backend):
    """The backend to run: None picks by device; "triton" on a CPU tensor needs Triton's interpreter."""
    if backend is None:
        return "triton" if use_triton(t, t.shape[-1]) else "torch"
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be None, 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and not use_triton(t):  # (the device alone: no rule on r here)
        raise ValueError(f"backend='triton' runs on a CUDA device, or on the CPU under TRITON_INTERPRET=1; this "
                         f"tensor is on {t.device}: pass backend='torch' or None")
    return backend


# The extension's CPU sweep (csrc/cpu/hals_cpu.cpp): one pass over the rows instead of about eight tensor
# operations per column, each a pass over a block of rows.
_NATIVE_HALS = has_cpu_op("hals_sweep_rows_")

if _NATIVE_HALS:
    @torch.library.register_fake("symnmf_kernels::hals_sweep_rows_")
    def _(W, C, B, V, lam):
        return W.new_empty((W.shape[1],))


def _native_runs(W):
    """Whether the extension's CPU sweep takes W (row-major, at least one row, outside torch.compile's tracing)."""
    return (_NATIVE_HALS and W.device.type == "cpu" and W.shape[0] > 0 and W.stride(1) == 1
            and (W.stride(0) == W.shape[1] or W.shape[0] == 1) and not torch.compiler.is_compiling())


def _sweep_torch_(W, C, B, V, lam):
    if V is not None:
        C = C + lam * V
    n, r = W.shape
    diag = B.diagonal()
    # Rows are independent: a block of rows that fits in cache is swept over all r
    # columns before the next block, instead of r passes over the whole of W.
    block = max(1024, (1 << 18) // r)
    for start in range(0, n, block):
        Wb = W[start:start + block]
        Cb = C[start:start + block]
        for k in range(r):
            w_k = Wb[:, k] + (Cb[:, k] - Wb @ B[:, k]) / diag[k]
            Wb[:, k] = w_k.clamp_(min=0)
    return W.amax(0)


def hals_sweep_(W, C, B, *, V=None, lam=0.0, revive=True, backend=None):
    """Sweep the columns of W (n x r) in place; returns W's column maxima (r,) after the sweep.

    B (r x r) is V^T V + lam I with a positive diagonal; the right-hand side is
    C (n x r) = X V + lam V, or, when V is given, C + lam V (then pass C = X V:
    the Triton path forms the sum as it reads, saving a pass).
    A batch W, C, V (P, n, r) with B (P, r, r) sweeps each of the P factors with
    its own B (Triton: in one launch); the maxima are then (P, r).
    revive: reset all-zero columns of the result to 1e-16 * max(W) (per factor).
    backend: None picks by device (Triton on CUDA or under TRITON_INTERPRET=1,
    the host path otherwise); "torch" (the host path: the extension's row sweep
    for a row-major W on the CPU, else the torch column loop) or "triton" force one.
    Never synchronises with a CUDA device.
    """
    _check(W, C, B, V)
    _check_lam(lam)
    _check_no_grad(W, C, B, V, lam)
    backend = _triton_backend(W, backend)
    if W.dim() == 3 and W.shape[0] == 0:
        return W.new_empty((0, W.shape[-1]))
    if backend == "triton":
        return _triton_sweep_(W, C, B, V, lam, revive, ZERO_COLUMN_FILL)
    if W.dim() == 3:  # one factor at a time, each in place on its own rows of the batch
        return torch.stack([hals_sweep_(W[p], C[p], B[p], V=None if V is None else V[p], lam=lam, revive=revive,
                                        backend="torch") for p in range(W.shape[0])])
    if _native_runs(W):
        colmax = torch.ops.symnmf_kernels.hals_sweep_rows_(W, C, B, V, float(lam))
    else:
        colmax = _sweep_torch_(W, C, B, V, lam)
    return _revive_torch_(W, colmax) if revive else colmax


def revive_zero_columns_(W, colmax, *, backend=None):
    """The safety step of `hals_sweep_` alone, in place: set the columns of W (n x r, or each factor of a batch
    (P, n, r)) whose maximum in colmax ((r,) or (P, r)) is zero to 1e-16 times the largest entry of colmax (per
    factor); returns colmax after it. W's columns named zero must be all zero (W >= 0 with a zero maximum).

    For maxima gathered elsewhere: a row-sharded sweep (`symnmf.distributed`) takes them over every rank's
    rows, then revives its own. backend as in `hals_sweep_`. Never synchronises with a CUDA device.
    """
    check_tensor(W, "W")
    if not isinstance(colmax, torch.Tensor):
        raise TypeError(f"colmax must be a torch.Tensor, got {type(colmax).__name__}")
    check_same(colmax, W, "colmax", "W")
    if W.dim() not in (2, 3):
        raise ValueError(f"W must be one factor (n, r) or a batch of them (P, n, r), got shape {tuple(W.shape)}")
    if colmax.shape != (*W.shape[:-2], W.shape[-1]):
        raise ValueError(f"colmax must hold one maximum per column of W {tuple(W.shape)}: shape "
                         f"{(*W.shape[:-2], W.shape[-1])}, got {tuple(colmax.shape)}")
    _check_writable(W)
    _check_no_grad(W)
    if _triton_backend(W, backend) == "triton":
        return _triton_revive_(W, colmax, ZERO_COLUMN_FILL)
    return _revive_torch_(W, colmax)


# torch.compile runs the Triton launches eagerly (a graph break): traced, the launch of an in-place kernel
# outside a custom op reached Triton's interpreter with fake tensors.
_triton_sweep_ = torch.compiler.disable(_launch.hals_sweep_)
_triton_revive_ = torch.compiler.disable(_launch.revive_zero_columns_)


def _revive_torch_(W, colmax):
    zero = colmax == 0
    if not W.is_cuda and not bool(zero.any()):  # a free check on the CPU; it skips a pass over W
        return colmax
    fill = ZERO_COLUMN_FILL * colmax.amax(-1, keepdim=True)
    # A zero column is exactly zero, so adding the fill sets it; other columns add an exact 0.
    W.add_(torch.where(zero, fill, torch.zeros_like(fill))[..., None, :])
    return torch.where(zero, fill, colmax)


def hals_sweep(W, C, B, *, V=None, lam=0.0, revive=True, backend=None):
    """Out-of-place `hals_sweep_`: returns (updated copy of W, its column maxima)."""
    check_tensor(W, "W")
    W = W.clone(memory_format=torch.contiguous_format)
    return W, hals_sweep_(W, C, B, V=V, lam=lam, revive=revive, backend=backend)
