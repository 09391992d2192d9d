"""Public ops: autograd-aware, registered as torch.library custom ops, dispatching by device.

One module per op, named as the op in every layer: ops/<op>.py here,
triton/<op>.py (or csrc/cpu/<op>_cpu.cpp), reference.<name>, tests/test_<op>.py and
a bench entry <op>. Every name below is also a function of
symnmf_kernels.reference.
"""
from .apply_relu import apply_relu, apply_relu_gram
from .gram import gram
from .hals import hals_sweep, hals_sweep_, revive_zero_columns_
from .nnls import nnls
from .projected_gradient import projected_gradient_sq
from .sparse_loss import sparse_layer_loss, sparse_sym_loss
from .spd_inverse import spd_inverse
from .spmm import spmm
from .sym_loss import sym_loss
from .symnmf_block import symnmf_block, symnmf_block_from_gram

__all__ = [
    "gram",
    "spd_inverse",
    "apply_relu",
    "apply_relu_gram",
    "symnmf_block",
    "symnmf_block_from_gram",
    "spmm",
    "sym_loss",
    "sparse_sym_loss",
    "sparse_layer_loss",
    "hals_sweep",
    "hals_sweep_",
    "revive_zero_columns_",
    "nnls",
    "projected_gradient_sq",
]
