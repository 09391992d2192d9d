"""projected_gradient_sq on a GPU: ||P(grad)||^2 in one pass over grad and U.

P(grad) is grad where U > 0 and min(grad, 0) where U = 0. Program p reads STEPS runs of BLOCK entries of the
flattened grad and U, squares and sums them in float64 (a float32 square leaves float32's range below 1e-19 and
above 1e19), and writes one partial sum; the caller adds the partials in a fixed order, so the result does not
depend on how the programs are scheduled.

Each entry adds P(grad)^2 + (u - u): the second term is exactly zero for a finite u and NaN for a NaN or an
infinite one, which makes the measure NaN there as the reference's is, without a second pass over U.
"""
import triton
import triton.language as tl


@triton.jit
def projected_gradient_partials_kernel(grad, U, sums, numel, BLOCK: tl.constexpr, STEPS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((), dtype=tl.float64)
    for step in range(STEPS):
        idx = (pid * STEPS + step) * BLOCK + offs
        mask = idx < numel
        g = tl.load(grad + idx, mask=mask, other=0.0)
        u = tl.load(U + idx, mask=mask, other=1.0)
        # A positive gradient on a zero entry points out of the feasible set and is dropped; a NaN gradient
        # compares false and stays.
        p = (tl.where((u <= 0.0) & (g >= 0.0), 0.0, g) + (u - u)).to(tl.float64)
        acc += tl.sum(p * p, axis=0)
    tl.store(sums + pid, acc)
