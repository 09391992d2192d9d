"""symnmf_block: one SymNMF-Net block, U_next = ReLU(P (U^T U + lam I)^{-1})."""
import torch

from ._common import as_lam, check_same, check_tensor
from .apply_relu import apply_relu, apply_relu_gram
from .gram import gram
from .spd_inverse import spd_inverse


def _check(U, P):
    check_tensor(U, "U")
    check_tensor(P, "P")
    check_same(P, U, "P", "U")
    if P.shape[-1] != U.shape[-1]:
        raise ValueError(f"P has r = {P.shape[-1]} columns but U has r = {U.shape[-1]}; they must match")


def symnmf_block(U, P, lam):
    """ReLU(P (U^T U + lam I)^{-1}) for U (..., m, r), P (..., n, r); differentiable in U, P and lam.

    Passes over n x r data: forward reads U and P and writes the result;
    backward reads the gradient, the result and P, writes dP, then reads U and
    writes dU (the r x r algebra in between is negligible).
    """
    _check(U, P)
    if U.shape[:-2] != P.shape[:-2]:
        raise ValueError(f"U's batch shape {tuple(U.shape[:-2])} differs from P's {tuple(P.shape[:-2])}")
    return apply_relu(P, spd_inverse(gram(U, lam)))


def symnmf_block_from_gram(UtU, P, lam):
    """One block from the Gram U^T U of its input: returns (U_next, U_next^T U_next).

    The chain form of `symnmf_block` for networks of blocks: the Gram of each
    block's output comes out of the same pass that writes it, so the next block
    never reads its input factor, and the backward of a block needs one pass
    over n x r data instead of two.
    """
    check_tensor(UtU, "UtU")
    check_tensor(P, "P")
    check_same(P, UtU, "P", "UtU")
    r = P.shape[-1]
    if UtU.shape[-2:] != (r, r):
        raise ValueError(f"UtU must be r x r = {r} x {r} to match P, got {tuple(UtU.shape[-2:])}")
    lam = as_lam(lam, P)
    G = UtU + lam[..., None, None] * torch.eye(r, dtype=P.dtype, device=P.device)
    return apply_relu_gram(P, spd_inverse(G))
