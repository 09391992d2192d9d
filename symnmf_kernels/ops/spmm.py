"""spmm(X, U): a sparse X times a tall-skinny dense U, differentiable in U.

The product is the custom operator symnmf_kernels::spmm_csr of the C++/CUDA
extension symnmf_kernels._C (csrc/): an OpenMP row-parallel kernel on the CPU,
a sub-warp-per-row kernel on CUDA. symnmf_kernels._extension loads the library
and fills the devices it has no kernel for with torch.sparse.mm. Here the op
gets its fake (shape) kernel and its autograd formula, dense.grad = X^T
out.grad, so it works under torch.compile and torch.library.opcheck, and
symnmf_kernels.sparse.CSR gets its `@`.

The backward needs X^T: a symmetric X (a similarity graph) is its own
transpose; any other X has its transpose computed once and cached with X
(symnmf_kernels.sparse.CSR).
"""
import math
import platform

import torch

from .._extension import OP, extension_status
from ..sparse import CSR, as_csr
from ._common import FLOAT_DTYPES

__all__ = ["spmm", "spmm_csr", "extension_status"]


@torch.library.register_fake(OP)
def _spmm_csr_fake(crow_indices, col_indices, values, dense, t_crow_indices=None, t_col_indices=None,
                   t_values=None):
    torch._check(dense.dim() in (2, 3), lambda: f"spmm_csr: dense must be 2-d or 3-d, got {dense.dim()}-d")
    torch._check(values.shape == col_indices.shape, lambda: "spmm_csr: values and col_indices differ in length")
    return dense.new_empty((*dense.shape[:-2], crow_indices.shape[0] - 1, dense.shape[-1]))


def _setup_context(ctx, inputs, output):
    crow, col, values, _, t_crow, t_col, t_values = inputs
    ctx.save_for_backward(crow, col, values, t_crow, t_col, t_values)


def _backward(ctx, grad):
    crow, col, values, t_crow, t_col, t_values = ctx.saved_tensors
    dense_grad = None
    if ctx.needs_input_grad[3]:
        if t_crow is None:  # X is symmetric
            dense_grad = spmm_csr(crow, col, values, grad)
        else:  # X^T grad; X is in turn the transpose of X^T, for a double backward
            dense_grad = spmm_csr(t_crow, t_col, t_values, grad, crow, col, values)
    return None, None, None, dense_grad, None, None, None


torch.library.register_autograd(OP, _backward, setup_context=_setup_context)


def spmm_csr(crow_indices, col_indices, values, dense, t_crow_indices=None, t_col_indices=None, t_values=None):
    """The raw operator: X @ dense for X = (crow_indices, col_indices, values), differentiable in dense.

    dense is (n_cols, r) or (B, n_cols, r). The t_* tensors are X^T in CSR
    form for the backward; leaving them out declares X symmetric.
    """
    return torch.ops.symnmf_kernels.spmm_csr(crow_indices, col_indices, values, dense, t_crow_indices, t_col_indices, t_values)


def _check_dense(U, name="U"):
    if not isinstance(U, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(U).__name__}")
    if U.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {U.layout}")
    if U.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {U.dtype}; convert it with {name}.float()")
    if U.dim() < 1:
        raise ValueError(f"{name} must be (n, r) or (..., n, r), got a scalar")


@torch.compiler.disable
def host_side(X, U, symmetric=None, name="X"):
    """The per-matrix work, which reads index values and caches, so it runs eagerly even under torch.compile.

    Returns (A, t): X as a validated CSR on U's device and dtype, and the t_*
    arguments of the raw operator (`transpose_args`).
    """
    A = as_csr(X, device=U.device, dtype=U.dtype, name=name)
    if A.device != U.device:
        raise ValueError(f"{name} is on {A.device} but U is on {U.device}; move both to one device")
    if A.dtype != U.dtype:
        raise TypeError(f"{name} is {A.dtype} but U is {U.dtype}; use one dtype (e.g. {name}.to(U.dtype))")
    if A.values.requires_grad:
        raise ValueError(
            f"sk.spmm is differentiable in U only, but {name}'s values require grad; detach them, or use "
            "torch.sparse.mm for gradients in X"
        )
    A.validate()
    return A, transpose_args(A, U, symmetric)


def layout(A, U, name="X"):
    """U's layout against the CSR A: (D, out_shape, blockdiag).

    D is the dense operand of the raw operator ((n_cols, r) or (B, n_cols, r)).
    U may be (n_cols, r); (..., n_cols, r), every problem times the same X; or
    (..., n, r) against a block-diagonal X of prod(...) blocks of size n.
    """
    n_rows, n_cols = A.shape
    n, r = U.shape[-2:]
    batch = U.shape[:-2]
    B = math.prod(batch)
    if n == n_cols:
        D = U.reshape(B, n, r) if batch else U
        return D, (*batch, n_rows, r), False
    if batch and B * n == n_cols and n_rows == n_cols:
        return U.reshape(B * n, r), U.shape, True
    raise ValueError(
        f"{name} is {n_rows} x {n_cols} but U has shape {tuple(U.shape)}: U must be ({n_cols}, r), "
        f"(..., {n_cols}, r), or (B, n, r) with B * n = {n_cols} for a block-diagonal {name} of B graphs"
    )


def transpose_args(A, U, symmetric=None):
    """The t_* arguments of the raw operator: (None,) * 3 when no backward needs X^T or X is symmetric."""
    if not (torch.is_grad_enabled() and U.requires_grad):
        return None, None, None
    if symmetric is None:
        symmetric = A.is_symmetric()
    if symmetric and A.shape[0] != A.shape[1]:
        raise ValueError(f"symmetric=True for a {A.shape[0]} x {A.shape[1]} X; only a square X can be symmetric")
    if symmetric:
        return None, None, None
    T = A.transpose()
    return T.crow_indices, T.col_indices, T.values


def spmm(X, U, symmetric=None):
    """X @ U for a sparse X and a tall-skinny dense U; differentiable in U.

    X: a torch sparse CSR or COO tensor (n_rows, n_cols), a batched CSR tensor
    (B, n, n) (taken as the block-diagonal matrix of its B graphs), a
    scipy.sparse matrix (converted to U's device and dtype), a
    symnmf_kernels.sparse.CSR, or a dense tensor (then plain X @ U).
    U: (n_cols, r) or (n_cols,); (..., n_cols, r), every problem multiplied by
    the same X; or (B, n, r) against a block-diagonal X of B graphs of n nodes
    (B n = n_cols), each block multiplied by its own U[b].
    symmetric: whether X^T = X, which spares the backward a transpose. None
    finds out once per X (a host synchronisation, remembered with X) when U
    requires grad.
    Index values are checked once per X (remembered for a torch tensor X;
    scipy input is converted and checked at every call, so convert it once
    with symnmf_kernels.sparse.as_csr for repeated use).
    Returns X @ U of shape (..., n_rows, r) (or (n_rows,) for a 1-d U).
    """
    _check_dense(U)
    if isinstance(X, torch.Tensor) and X.layout == torch.strided:
        if X.device != U.device or X.dtype != U.dtype:
            raise ValueError(f"X ({X.dtype}, {X.device}) and U ({U.dtype}, {U.device}) must share dtype and device")
        # the sparse X's rules: X (n_rows, n_cols), or one per problem of U's batch; U (n_cols, r) or (n_cols,)
        rows = U.shape[0] if U.dim() == 1 else U.shape[-2]
        if X.dim() < 2 or X.shape[-1] != rows:
            raise ValueError(f"X must be (n_rows, {rows}) to multiply U of shape {tuple(U.shape)}, got "
                             f"{tuple(X.shape)}")
        try:
            torch.broadcast_shapes(X.shape[:-2], U.shape[:-2])
        except RuntimeError:
            raise ValueError(f"X's batch shape {tuple(X.shape[:-2])} does not broadcast with U's "
                             f"{tuple(U.shape[:-2])}: one X per problem, or one for all") from None
        return X @ U
    if U.dim() == 1:
        return spmm(X, U[:, None], symmetric)[:, 0]
    A, t = host_side(X, U, symmetric)
    D, out_shape, _ = layout(A, U)
    if _torch_is_faster(A, D):
        T = A.torch_int32()  # None for int64 column indices (torch's own kernel there is the slower)
        if T is not None:
            return torch.sparse.mm(T, D).reshape(out_shape)
    return spmm_csr(A.crow_indices, A.col_indices, A.values, D, *t).reshape(out_shape)


# On the CPU, torch.sparse.mm with 32-bit indices runs MKL's kernel, which on an Intel Xeon at r <= 8 on random
# and kNN graphs of 100,000 nodes (26 entries per row, one thread) was 1.2-1.6x faster than the extension's, and
# at 300,000 nodes 0.8-1.1x; from r = 16 on the two tied or the extension won
# (bench/results/bench_spmm_extension-2026-11-26-cpu.md). On an AMD EPYC the extension was the faster at every r:
# 1.2-1.3x MKL at r = 4 and 1.4-2.4x at r = 8 on the same graphs (bench_spmm_ext_r8_1t-2026-11-27-cpu.md), MKL's
# sparse kernels being tuned for Intel's processors. With 64-bit indices torch runs its own kernel instead,
# 1.3-2x slower than the extension's.
_TORCH_CPU_MAX_R = 8


def _mkl_is_faster_here():
    """Whether torch has MKL and this is an Intel processor, where MKL's sparse product wins at small r."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return "GenuineIntel" in line
    except OSError:
        pass
    return "intel" in platform.processor().lower()


_MKL_IS_FASTER = _mkl_is_faster_here()


def _torch_is_faster(A, D):
    """Whether the forward X @ D goes to torch.sparse.mm (where X has 32-bit indices, `CSR.torch_int32`): a CPU
    product at r <= 8, without autograd, with MKL in torch, on an Intel processor."""
    return (D.dim() == 2 and D.is_cpu and D.shape[-1] <= _TORCH_CPU_MAX_R and _MKL_IS_FASTER
            and not (torch.is_grad_enabled() and D.requires_grad) and not torch.compiler.is_compiling())


def _csr_matmul(self, U):
    """X @ U for a CSR X: `spmm(X, U)`."""
    return spmm(self, U)


# The container knows nothing of the ops that use it: the op attaches itself.
CSR.__matmul__ = _csr_matmul
