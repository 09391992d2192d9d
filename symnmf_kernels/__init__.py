"""symnmf_kernels: fused GPU kernels for Symmetric NMF and SymNMF-Net.

    import symnmf_kernels as sk
    G = sk.gram(U, lam)            # U^T U + lam I
    Ginv = sk.spd_inverse(G)       # batched Cholesky inverse
    U1 = sk.apply_relu(P, Ginv)    # ReLU(P Ginv)
    U1 = sk.symnmf_block(U, P, lam)
    S = sk.spmm(X, U)              # sparse X times a tall-skinny U
    f = sk.sym_loss(X, U)          # ||X - U U^T||_F^2, dense or sparse X
    f, reg = sk.sparse_layer_loss(X, U, P, lam)   # one SymNMF-Net layer's losses, one SpMM
    colmax = sk.hals_sweep_(W, C, B)              # one SymHALS sweep over W's columns, in place

Every op has a plain-torch twin of the same name in `sk.reference`, and every
custom op is registered under torch.ops.symnmf_kernels. lam must be >= 0
(check_lam=False opts out); a Gram that is not positive definite gives NaN.
CUDA tensors run the Triton kernels and the CUDA extension; CPU tensors run the
plain-torch path, or the Triton kernels through Triton's interpreter when
TRITON_INTERPRET=1. On CUDA the float32 n-length products run on tensor cores
in tf32x3 (about float32 accuracy), but for the n-length sums of products at
r <= 32, which stay in plain FMA ("auto", the default);
`sk.set_dot_precision("ieee")` or `with sk.dot_precision("ieee"):` selects
plain FMA everywhere, "tf32x3" tensor cores everywhere, "tf32" the fastest and
coarsest mode. The extension's CPU kernels keep their freed large outputs for
reuse (256 MiB at most; `sk.set_host_cache_limit`, `sk.empty_host_cache`).
docs/design.md explains the design.
"""
from . import ops, reference
from .ops import *  # noqa: F401,F403 - the public ops, listed in ops.__all__
from ._extension import empty_host_cache, host_cache_bytes, set_host_cache_limit
from .ops._common import dot_precision, get_dot_precision, set_dot_precision

__version__ = "0.1.0"
__all__ = [
    *ops.__all__, "reference", "dot_precision", "get_dot_precision", "set_dot_precision",
    "empty_host_cache", "host_cache_bytes", "set_host_cache_limit",
]
