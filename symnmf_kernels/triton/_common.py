"""Triton helpers shared by several kernel files."""
import triton
import triton.language as tl


@triton.jit
def relu(x):
    """max(x, 0) that keeps NaN.

    On the GPU tl.maximum lowers to a max instruction that returns the other
    operand when one is NaN, so tl.maximum(NaN, 0) is 0: a failed inverse
    would silently become an all-zero factor. NaN < 0 is false, so NaN passes.
    """
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def row_tile(n, BLOCK_N: tl.constexpr):
    """(problem b, row tile i) of a program on a 1-D grid of B * cdiv(n, BLOCK_N) programs.

    One grid axis: axes 1 and 2 stop at 65,535 programs, which a second axis of
    row tiles passes at about 4.2M rows (BLOCK_N = 64).
    """
    pid = tl.program_id(0).to(tl.int64)
    tiles = tl.cdiv(n, BLOCK_N)
    return pid // tiles, pid % tiles
