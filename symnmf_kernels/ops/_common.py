"""Device dispatch, launch geometry and argument checks shared by the ops.

Checks read shapes, dtypes and devices only: reading tensor values would
synchronise with the host inside a training step.
"""
import contextlib
import functools
import math
import os
import warnings

import torch

MAX_FUSED_R = 128
FLOAT_DTYPES = (torch.float32, torch.float64)

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAS_TRITON = False

_warned = set()


def first_order_only(backward):
    """An autograd.Function's backward whose saved intermediates (G^{-1}, X - U U^T, an NNLS solution) were made
    without a graph: under create_graph=True a second derivative through it would leave out their terms, silently
    where other terms of the graph carry on. It raises there instead."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{type(ctx).__name__.removesuffix('Backward')}: the backward of this op is first order only; a "
                "second derivative (create_graph=True, torch.func.hessian) is not supported"
            )
        return backward(ctx, *grads)

    return wrapper


def warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


try:  # os.environ's own mapping: a dict lookup instead of a key encode and value decode on every op call
    _ENV_DATA = os.environ._data
    _INTERPRET_KEY = os.environ.encodekey("TRITON_INTERPRET")
    _INTERPRET_ON = os.environ.encodevalue("1")
except AttributeError:  # pragma: no cover - an os.environ without the CPython internals
    _ENV_DATA = None


def interpreting():
    """Whether TRITON_INTERPRET=1 (read at every call: it may change at run time)."""
    if _ENV_DATA is not None and not torch.compiler.is_compiling() and os.environ._data is _ENV_DATA:
        return _ENV_DATA.get(_INTERPRET_KEY) == _INTERPRET_ON
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def torch_path_cpu(t):
    """Whether t is a CPU tensor that every op runs on the plain-torch path (no Triton interpreter), in eager
    mode: the condition of the ops' shortcuts that skip their general checks."""
    return not torch.compiler.is_compiling() and t.is_cpu and not (HAS_TRITON and interpreting())


def use_triton(t, r=None):
    """Whether the Triton kernels run for tensor t (and rank r)."""
    # is_cuda / is_cpu: attribute reads, where t.device builds an object (this runs on every op call)
    if not HAS_TRITON or not (t.is_cuda or (t.is_cpu and interpreting())):
        return False
    if r is not None and r > MAX_FUSED_R:
        warn_once(
            ("large-r", t.device.type),
            f"r = {r} exceeds the fused kernels' limit of {MAX_FUSED_R}: symnmf_kernels falls back to the torch path",
        )
        return False
    return True


# input_precision of the float32 tl.dot over n-length data (Gram, apply, backward, sparse terms):
# "tf32x3" runs on tensor cores at close to float32 accuracy, "ieee" is plain FMA, "tf32" is
# fastest and coarsest (10-bit mantissa). float64, the interpreter and the r x r solve use "ieee".
# "auto", the default, keeps each dot within 2x of torch's own float32 error against a float64
# oracle, as measured on an H200 (bench/results/tune_tiles-2026-11-26-NVIDIA-H200.md): tf32x3
# everywhere but the n-length reductions (U^T U and the like) at BLOCK_R <= 32, where tf32x3 was
# 2.1-4x torch's error and ieee 2x, so they take ieee (cheap at that width).
DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")
_dot_precision = ["auto"]


def set_dot_precision(precision):
    """Set the float32 dot precision of the Triton kernels on CUDA ("auto", "ieee", "tf32x3" or "tf32");
    returns the previous setting."""
    if precision != "auto":
        check_precision(precision)
    previous = _dot_precision[0]
    _dot_precision[0] = precision
    return previous


def get_dot_precision():
    """The float32 dot precision of the Triton kernels on CUDA ("auto" unless set)."""
    return _dot_precision[0]


@contextlib.contextmanager
def dot_precision(precision):
    """Within the block, the Triton kernels' float32 dots on CUDA use `precision`."""
    previous = set_dot_precision(precision)
    try:
        yield
    finally:
        set_dot_precision(previous)


def check_precision(precision, name="precision"):
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"{name} must be 'auto' or one of {DOT_PRECISIONS}, got {precision!r}")


def input_precision(t, r, reduction, precision=None):
    """The input_precision of a kernel's n-length dots for tensor t at rank r.

    reduction: whether the kernel sums products over the n rows (a Gram and the like), where
    the "auto" setting keeps ieee at small r. float64 and CPU tensors (the interpreter computes
    in full precision anyway) always take "ieee".
    """
    if t.dtype != torch.float32 or not t.is_cuda:
        return "ieee"
    precision = precision or _dot_precision[0]
    if precision == "auto":
        return "ieee" if reduction and block_r(r) <= 32 else "tf32x3"
    return precision


# From this padded width, on CUDA and under the "auto" precision, the products over n rows that the Triton kernels
# only multiply (U^T U, A @ M without a ReLU, the backward's Zb M^T and A^T Zb, the dense loss's U U^T) run as
# torch's GEMMs (cuBLAS) instead; the ReLU product P G^{-1}, whose ReLU is fused into its pass, stays a Triton
# kernel. On an H200 at r = 128 (bench/results/bench_block-2026-11-27-NVIDIA-H200.md) the kernels' tf32x3 dots ran
# at 0.70-0.84x cuBLAS's float32 GEMM for the Gram (n = 100,000 to 4M), the block's forward + backward at
# 0.79-0.85x eager torch, and the dense loss at 0.35-0.39x, while the ReLU product was 1.15-1.23x eager.
CUBLAS_MIN_BLOCK_R = 128


def cublas_products(t, r, precision=None):
    """Whether the n-row products of an op on tensor t at rank r run as torch's GEMMs rather than Triton kernels:
    on CUDA from CUBLAS_MIN_BLOCK_R, under the "auto" dot precision (an explicit precision keeps the kernels), and
    for float32 only while torch's own float32 GEMMs are full precision (its default): with TF32 in torch's GEMMs
    the Gram would lose the accuracy its Cholesky needs."""
    if not t.is_cuda or block_r(r) < CUBLAS_MIN_BLOCK_R or (precision or _dot_precision[0]) != "auto":
        return False
    return t.dtype != torch.float32 or _torch_float32_gemm_exact()


def _torch_float32_gemm_exact():
    """Whether torch's float32 GEMMs on CUDA are full precision. Read from torch's per-backend setting, which the
    legacy switches (allow_tf32, set_float32_matmul_precision) also set; torch.get_float32_matmul_precision raises
    once the two APIs have been mixed."""
    try:
        mode = torch.backends.cuda.matmul.fp32_precision
        if mode == "none":  # inherits the global setting
            mode = torch.backends.fp32_precision
        return mode in ("none", "ieee")
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the per-backend setting
        return torch.get_float32_matmul_precision() == "highest"


def block_r(r):
    """Padded width of an r-wide tile: a power of two, at least 16 for tl.dot."""
    return max(16, 1 << (r - 1).bit_length())


# (BLOCK_N, num_warps) on a GPU by kernel family and padded width BLOCK_R: the fastest of a sweep
# over BLOCK_N in {16, ..., 256} x num_warps in {4, 8} with tf32x3 dots at n = 1M on an H200
# (bench/tune_tiles.py; bench/results/tune_tiles-2026-11-26-NVIDIA-H200.md). Families the sweep
# did not cover keep the spill-free configurations of the sm_90 compile report.
_GPU_TILES = {
    "gram": {16: (128, 4), 32: (32, 4), 64: (32, 4), 128: (64, 8)},
    "apply": {16: (64, 4), 32: (64, 4), 64: (32, 4), 128: (16, 8)},
    "apply_backward": {16: (128, 4), 32: (64, 4), 64: (64, 4), 128: (16, 8)},
    # The same kernel with the Gram's gradient H (SymNMF-Net's chain form), not swept yet: the tiles of the
    # block's backward (as launched at r = 64 they keep 352 stack bytes per thread, against 272 without H).
    "apply_backward_h": {16: (128, 4), 32: (64, 4), 64: (64, 4), 128: (16, 8)},
    "loss": {16: (64, 4), 32: (64, 4), 64: (64, 8), 128: (32, 8)},
    "block_small": {16: (32, 4), 32: (16, 4), 64: (32, 4), 128: (32, 32)},
    "block_small_backward": {16: (32, 4), 32: (16, 4), 64: (16, 16)},
    "sparse_terms": {16: (128, 4), 32: (64, 4), 64: (64, 4), 128: (64, 8)},
    "sparse_grad": {16: (128, 4), 32: (64, 4), 64: (64, 4), 128: (128, 8)},
}
# The Cholesky tile: three BLOCK_R x BLOCK_R register tiles; r = 128 still spills.
_INVERSE_WARPS = {16: 4, 32: 4, 64: 4, 128: 16}
# The split-n backward's r x r step (symnmf_block_dgram_kernel): three tiles and two products; at BLOCK_R = 64
# four warps kept 472 bytes per thread on the stack in the sm_90 compile.
_DGRAM_WARPS = {16: 4, 32: 4, 64: 8}


def tiles(kind, r, device):
    """(BLOCK_N, num_warps) of a kernel family for rank r on this device."""
    if device.type == "cpu":
        return 64, 4  # the interpreter runs each program serially: fewer, wider tiles are faster
    return _GPU_TILES[kind][block_r(r)]


def hals_tiles(r, device):
    """(BLOCK_N, BLOCK_R, num_warps) of the HALS row sweep, which keeps a BLOCK_N x BLOCK_R tile of W in
    registers and loops over the r columns (BLOCK_R down to 4: no tl.dot)."""
    BR = max(4, 1 << (r - 1).bit_length())
    if device.type == "cpu":
        return 256, BR, 4  # the interpreter runs programs one after another: few, wide tiles
    return max(16, min(256, 4096 // BR)), BR, 4 if BR <= 64 else 8


def inverse_warps(r):
    return _INVERSE_WARPS[block_r(r)]


def dgram_warps(r):
    return _DGRAM_WARPS[block_r(r)]


def block_n(r, device):
    """Row tile of the kernels without a tuned entry in _GPU_TILES."""
    if device.type == "cpu":
        return 64
    return 128 if r <= 32 else (64 if r <= 64 else 32)


def split_rows(n, batch, block, device):
    """Rows per program along n and the number of programs per problem.

    Enough programs to fill the GPU a few times over, each owning a whole
    number of row tiles so that tiles never straddle two programs.
    """
    tiles = max(1, triton_cdiv(n, block))  # n = 0: one program that finds no row, and writes zero partials
    if device.type == "cpu":
        splits = min(tiles, 4)
    else:
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        splits = max(1, min(tiles, triton_cdiv(4 * sms, batch)))
    rows_per_split = triton_cdiv(tiles, splits) * block
    return rows_per_split, max(1, triton_cdiv(n, rows_per_split))


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def triton_cdiv(a, b):
    return -(-a // b)


def num_warps(r):
    return 4 if r <= 64 else 8


def acc_dtype(dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


# Entries per BLAS dot in `dot64` on the CPU.
DOT_RUN = 1 << 16


def dot64(A, B):
    """<A[b], B[b]> for each problem b of A and B (shape (B, ...)), summed in float64 where it matters: (B,) float64.

    On the CPU (eager): BLAS dots over runs of DOT_RUN entries in A's dtype, the runs summed in float64 (an error
    of the size of the products' own rounding per run) and no product tensor: 1.5-3.3x faster than the product
    route at 20,000 x 8 to 500,000 x 16. Elsewhere (one kernel rather than one per run): the products, summed in
    runs of 16 in A's dtype and the runs in float64; a sum with dtype=float64 over all products would first copy
    them all to float64.
    """
    A2, B2 = A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)
    m = A2.shape[1]
    if A.is_cpu and not torch.compiler.is_compiling():
        if m == 0:
            return A2.new_zeros(A2.shape[0], dtype=torch.float64)
        parts = [torch.dot(a[i:i + DOT_RUN], b[i:i + DOT_RUN]) for a, b in zip(A2, B2) for i in range(0, m, DOT_RUN)]
        return torch.stack(parts).reshape(A2.shape[0], -1).sum(-1, dtype=torch.float64)
    prod = A2 * B2
    if A.dtype != torch.float64 and m % 16 == 0 and m >= 1 << 16:
        prod = prod.view(A2.shape[0], m // 16, 16).sum(-1)
    return prod.sum(-1, dtype=torch.float64)


def as_batch(t, trailing=2):
    """t as a 3-d (B, a, b) tensor (a view when possible) and its batch shape."""
    batch = t.shape[:-trailing]
    return t.reshape(-1, *t.shape[-trailing:]), batch


# ---- argument checks -------------------------------------------------------------------------------------------


def check_tensor(t, name, min_dim=2):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions (..., rows, cols), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}; convert it with {name}.float()")
    if t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(t.shape)}")


def check_same(t, ref, name, ref_name):
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move both to one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} is {t.dtype} but {ref_name} is {ref.dtype}; use one dtype")


def _negative_lam(value):
    return ValueError(
        f"lam = {value} is negative: G = U^T U + lam I is positive definite for every U only with lam >= 0 "
        "(an indefinite G gives NaN). Pass lam >= 0, or check_lam=False to allow a negative lam on purpose"
    )


def as_lam(lam, U, check=True, shape=()):
    """lam (float or tensor) as a tensor on U's device and dtype, broadcastable to U's batch shape
    (a float is filled into a tensor of the given shape).

    With check, a negative or infinite lam is a ValueError wherever that costs no
    device synchronisation: always for a Python number; for a tensor on the CPU
    (outside torch.compile tracing). A tensor on a GPU is not read (that would
    stall the training step): a negative one there yields NaN, never zeros.
    A bool or complex tensor is a TypeError, as a bool or a complex number is.
    """
    if isinstance(lam, torch.Tensor):
        on_cpu = lam.is_cpu
        if not (on_cpu and U.is_cpu) and lam.device != U.device:
            raise ValueError(f"lam is on {lam.device} but U is on {U.device}; move lam to {U.device}")
        if lam.dtype is not U.dtype:
            if lam.dtype == torch.bool:
                raise TypeError("lam must be a float or a float tensor, got a bool tensor")
            if lam.is_complex():  # the cast below would drop the imaginary part
                raise TypeError(f"lam must be a float or a float tensor, got a complex tensor ({lam.dtype})")
            if not lam.is_floating_point():
                lam = lam.to(U.dtype)
            else:
                raise TypeError(f"lam is {lam.dtype} but U is {U.dtype}; use one dtype")
        if lam.dim() and not broadcasts_to(lam.shape, U.shape[:-2]):
            batch = tuple(U.shape[:-2])
            raise ValueError(f"lam of shape {tuple(lam.shape)} must broadcast to U's batch shape {batch}")
        if check and on_cpu and not torch.compiler.is_compiling():
            # An infinite lam is refused as a float one is: it is a mistake in the call, which an error names where
            # the unchecked op would only give NaN (G + inf I has no inverse). A NaN lam is let through: every
            # result it touches is NaN (a training step whose lam went NaN yields a NaN loss, which the fit's
            # restart selection drops).
            if lam.dim() == 0:  # the common case, read directly (a CPU tensor: no device synchronisation)
                value = lam.item()
                if math.isinf(value):
                    raise ValueError(f"lam must be finite, got {value}")
                if value < 0:
                    raise _negative_lam(value)
                return lam
            if lam.numel():
                detached = lam.detach()
                if bool(torch.isinf(detached).any()):
                    raise ValueError(f"lam must be finite, got {detached[torch.isinf(detached)][0].item()}")
                low = detached.min()
                if bool(low < 0):
                    raise _negative_lam(float(low))
        return lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a float or a tensor, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    if check and lam < 0:
        raise _negative_lam(lam)
    # torch.full, not torch.tensor: a fill kernel rather than a host-to-device copy, so CUDA graphs can capture it.
    return torch.full(shape, lam, dtype=U.dtype, device=U.device)


def broadcasts_to(shape, batch):
    """Whether a tensor of this shape broadcasts to the batch shape without growing it."""
    if shape == batch or not shape:
        return True
    try:
        return torch.broadcast_shapes(shape, batch) == batch
    except RuntimeError:
        return False


def needs_grad(*tensors):
    """Whether autograd records an op on these tensors: otherwise the torch path skips its autograd node."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def direct_call(*tensors):
    """Whether an op on the Triton path may call its launcher directly rather than through its custom op: in
    eager mode (torch.compile must see the op) with no gradient recorded. The custom op's dispatch costs host
    time that a small call on a GPU, whose kernels take microseconds, cannot hide (bench/bench_host.py)."""
    return not torch.compiler.is_compiling() and not needs_grad(*tensors)


def check_batch_of(P, **tensors):
    """The backward ops take r x r operands of P's own batch (the public functions expand a shared one first):
    their gradients then have the operand's shape, as the ops' fake functions say."""
    for name, t in tensors.items():
        if t is not None and t.shape[:-2] != P.shape[:-2]:
            raise ValueError(f"{name} must have P's batch shape {tuple(P.shape[:-2])} (one per problem; expand a "
                             f"shared one first), got shape {tuple(t.shape)}")


def check_square(G, name):
    check_tensor(G, name)
    if G.shape[-1] != G.shape[-2]:
        raise ValueError(f"{name} must be square (..., r, r), got shape {tuple(G.shape)}")
