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


@triton.jit
def tf32_round(x):
    """float32 x rounded to tf32 (10 mantissa bits), to nearest with ties away from zero, as PTX's
    cvt.rna.tf32.f32 does: add half of the dropped part's range to the bits, then clear it.

    NaN and infinity pass as they are: a GPU's NaN is 0x7FFFFFFF, whose rounding carries into the sign bit and
    gives -0.0 (a NaN input made a finite product, and a failed inverse an all-zero factor). A finite x that
    rounds past the largest float32 is cut to tf32 instead (rounded, it was inf, and its split's low part -inf)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    cut = (bits & 0xFFFFE000).to(tl.float32, bitcast=True)
    rounded = tl.where(tl.abs(rounded) < float("inf"), rounded, cut)
    return tl.where(tl.abs(x) < float("inf"), rounded, x)


@triton.jit
def tf32_split(x):
    """(hi, lo) with hi = tf32(x) and lo = tf32(x - hi): x to about 21 bits as the sum of two tf32 values."""
    hi = tf32_round(x)
    return hi, tf32_round(x - hi)


@triton.jit
def dot_tf32x3(a_hi, a_lo, b_hi, b_lo, acc):
    """acc + a @ b from split operands (tf32_split) in three tf32 tensor-core products, a_lo @ b_lo dropped:
    tl.dot's "tf32x3", with the splits left to the caller. tl.dot splits both operands at every call, so a
    kernel that multiplies by the same r x r matrix in each trip of its loop, or uses one tile in two
    products, splits that operand again each time; split once, it is not. Small terms first."""
    acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32", out_dtype=tl.float32)
    acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32", out_dtype=tl.float32)
    return tl.dot(a_hi, b_hi, acc, input_precision="tf32", out_dtype=tl.float32)


@triton.jit
def add_tile_gram(acc, u, PRECISION: tl.constexpr):
    """acc plus a row tile u's u^T u, in a form that tile_gram_total turns into the Gram gathered so far.

    Under tf32x3 the tile is split once, u = hi + lo, and u^T u = hi^T hi + hi^T lo + (hi^T lo)^T: the two cross
    terms are one product's transpose. acc gathers hi^T hi + 2 hi^T lo (2 lo is exact), whose symmetric part
    is the Gram: two tensor-core products a tile instead of tl.dot's three, in one accumulator."""
    if PRECISION == "tf32x3":
        u_hi, u_lo = tf32_split(u)
        u_hi_t = tl.trans(u_hi)
        acc = tl.dot(u_hi_t, u_lo + u_lo, acc, input_precision="tf32", out_dtype=tl.float32)
        acc = tl.dot(u_hi_t, u_hi, acc, input_precision="tf32", out_dtype=tl.float32)
    else:
        acc += tl.dot(tl.trans(u), u, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def tile_gram_total(acc, PRECISION: tl.constexpr):
    """The Gram that add_tile_gram gathered in acc: under tf32x3 acc's symmetric part (acc + acc^T) / 2, which
    also makes the result exactly symmetric."""
    if PRECISION == "tf32x3":
        acc = (acc + tl.trans(acc)) * 0.5
    return acc
