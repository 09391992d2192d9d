"""Host cost of the block's Triton path: Python, dispatch and allocations per call, with no kernel run.

On a GPU a small block's forward + backward is bound by the host: at n = 100,000 the kernels
take a few microseconds and the call about a millisecond (bench/results/bench_block-*-NVIDIA-H200.md).
This script measures, on any machine, what the library's own Python costs per call and how many kernels
it launches: the ops run on CPU tensors with the Triton path and a GPU's launch geometry, and every
Triton launch is recorded and skipped (as tests/test_launch_grids.py does). Triton's own launch cost
and the GPU's are not in these numbers; the launches column says how many of them a call adds.

Variants, side by side on the same inputs:

    function     sk.symnmf_block: an autograd.Function in eager mode, one-launch kernels for small problems
    custom_op    the torch.library custom op (what torch.compile traces), same kernels
    split        sk.symnmf_block with every problem on the split-n kernels (as if n > 1024)

    python bench/bench_host.py            # one thread, writes bench/results/bench_host-<date>-cpu.md
"""
import argparse
import contextlib
import importlib
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors take the Triton path; nothing is interpreted (launches skipped)

import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.common import write_table  # noqa: E402
from symnmf_kernels.ops import _common, _launch  # noqa: E402
from symnmf_kernels.triton.gram import gram_partials_kernel  # noqa: E402

block_module = importlib.import_module("symnmf_kernels.ops.symnmf_block")

CASES = [(1, 100_000, 16), (1, 100_000, 64), (1, 1_000, 16), (4096, 256, 8), (256, 1_024, 32)]
COLUMNS = ["B", "n", "r", "work", "variant", "host_us", "launches", "x_custom_op"]


@contextlib.contextmanager
def launches_skipped(counter):
    """Every Triton launch counted and skipped, with a GPU's launch geometry (132 SMs)."""
    kernel_type = type(gram_partials_kernel)
    gpu = types.SimpleNamespace(type="cuda", index=0)
    saved = [(kernel_type, "run"), (_common, "_sm_count")] + [(_launch, k) for k in ("tiles", "split_rows", "block_n")]
    originals = [(obj, name, getattr(obj, name)) for obj, name in saved]

    def run(self, *args, grid, warmup=False, **kwargs):
        counter[0] += 1

    kernel_type.run = run
    _common._sm_count = lambda index: 132
    for name in ("tiles", "split_rows", "block_n"):
        fn = getattr(_common, name)
        setattr(_launch, name, lambda *a, _fn=fn: _fn(*a[:-1], gpu))
    try:
        yield
    finally:
        for obj, name, value in originals:
            setattr(obj, name, value)


def custom_op_block(U, P, lam):
    return block_module.symnmf_block_op(U, P, lam)[0]


@contextlib.contextmanager
def variant(name):
    if name != "split":
        yield sk.symnmf_block if name == "function" else custom_op_block
        return
    small_n = _launch.SMALL_N
    _launch.SMALL_N = 0
    try:
        yield sk.symnmf_block
    finally:
        _launch.SMALL_N = small_n


def time_in_turns(calls, counter, rounds):
    """{name: (median µs of one call, launches per call)}: `rounds` rounds, each timing 20 calls of every
    variant in turn (so a drift of the machine's speed touches them all alike), after a warm-up of each."""
    for fn in calls.values():
        for _ in range(20):
            fn()
    samples = {name: [] for name in calls}
    launches = dict.fromkeys(calls, 0)
    for _ in range(rounds):
        for name, fn in calls.items():
            counter[0] = 0
            start = time.perf_counter()
            for _ in range(20):
                fn()
            samples[name].append((time.perf_counter() - start) / 20 * 1e6)
            launches[name] += counter[0]
    return {name: (statistics.median(samples[name]), launches[name] / (20 * rounds)) for name in calls}


def block_call(name, work, U, P, lam, g):
    """One call of the variant: the forward without autograd, or forward and backward."""
    def call():
        with variant(name) as block:
            if work == "forward":
                with torch.no_grad():
                    block(U, P, lam)
            else:
                block(U, P, lam).backward(g)
                U.grad = P.grad = lam.grad = None

    return call


def measure(B, n, r, rounds):
    lead = (B,) if B > 1 else ()
    U = torch.rand(*lead, n, r, requires_grad=True)
    P = torch.rand(*lead, n, r, requires_grad=True)
    lam = torch.tensor(1.0, requires_grad=True)
    g = torch.rand(*lead, n, r)
    rows = []
    counter = [0]
    with launches_skipped(counter):
        for work in ("forward", "forward + backward"):
            calls = {name: block_call(name, work, U, P, lam, g) for name in ("function", "custom_op", "split")}
            results = time_in_turns(calls, counter, rounds)
            for name, (us, launches) in results.items():
                rows.append({"B": B, "n": n, "r": r, "work": work, "variant": name, "host_us": us,
                             "launches": launches, "x_custom_op": results["custom_op"][0] / us})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds of 20 calls of each variant (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for B, n, r in CASES:
        rows += measure(B, n, r, args.rounds)
    header = [
        "host time per call of sk.symnmf_block's Triton path with every kernel launch skipped: the library's "
        "Python, torch's dispatch and the allocations, without Triton's launch cost or any GPU time",
        "CPU tensors, TRITON_INTERPRET=1 for the path (nothing is interpreted), a GPU's launch geometry (132 SMs); "
        "%d thread(s); median of %d rounds, each timing 20 calls of every variant in turn" % (args.threads, args.rounds),
        "variants: function = the eager autograd.Function (the default), custom_op = the torch.library op "
        "torch.compile traces, split = every problem on the split-n kernels",
        "launches: Triton launches per call; x_custom_op: the custom op's host time over the row's",
    ]
    write_table("bench_host", rows, COLUMNS, header, out_dir=args.out, device=torch.device("cpu"))


if __name__ == "__main__":
    main()
