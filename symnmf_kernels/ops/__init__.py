"""Public ops: autograd-aware, registered as torch.library custom ops, dispatching by device."""
from .apply_relu import apply_relu
from .block import symnmf_block
from .gram import gram
from .spd_inverse import spd_inverse
from .spmm import spmm
from .sym_loss import sym_loss

__all__ = ["gram", "spd_inverse", "apply_relu", "symnmf_block", "spmm", "sym_loss"]
