"""Public ops: autograd-aware, registered as torch.library custom ops, dispatching by device."""
from .apply_relu import apply_relu, apply_relu_gram
from .symnmf_block import symnmf_block, symnmf_block_from_gram
from .gram import gram
from .spd_inverse import spd_inverse
from .spmm import spmm
from .sym_loss import sym_loss

__all__ = [
    "gram",
    "spd_inverse",
    "apply_relu",
    "apply_relu_gram",
    "symnmf_block",
    "symnmf_block_from_gram",
    "spmm",
    "sym_loss",
]
