"""symnmf_kernels: fused GPU kernels for Symmetric NMF and SymNMF-Net.

    import symnmf_kernels as sk
    G = sk.gram(U, lam)            # U^T U + lam I
    Ginv = sk.spd_inverse(G)       # batched Cholesky inverse
    U1 = sk.apply_relu(P, Ginv)    # ReLU(P Ginv)
    U1 = sk.symnmf_block(U, P, lam)
    S = sk.spmm(X, U)              # sparse X times a tall-skinny U
    f = sk.sym_loss(X, U)          # ||X - U U^T||_F^2

CUDA tensors run the Triton kernels and the CUDA extension; CPU tensors run the
plain-torch path of `sk.reference`, or the Triton kernels through Triton's
interpreter when TRITON_INTERPRET=1.
"""
from . import ops, reference
from .ops import *  # noqa: F401,F403 - the public ops, listed in ops.__all__

__version__ = "0.1.0"
__all__ = [*ops.__all__, "reference"]
