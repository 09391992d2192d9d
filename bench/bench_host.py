"""Host cost of the ops' Triton path: Python, dispatch and allocations per call, with no kernel run.

On a GPU a small block's forward + backward is bound by the host: at n = 100,000 the kernels
take a few microseconds and the call about a millisecond (bench/results/bench_block-*-NVIDIA-H200.md).
This script measures, on any machine, what the library's own Python costs per call and how many kernels
it launches: the ops run on CPU tensors with the Triton path and a GPU's launch geometry, and every
Triton launch is recorded and skipped (as tests/test_launch_grids.py does). Triton's own launch cost
and the GPU's are not in these numbers; the launches column says how many of them a call adds.

Variants, side by side on the same inputs:

    default      what sk.<op> does in eager mode: for the block an autograd.Function, for a call without
                 a gradient (the forward rows) the launcher itself
    custom_op    the op's torch.library custom op (what torch.compile traces), same kernels
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
import unittest.mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors take the Triton path; nothing is interpreted (launches skipped)

import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.common import write_table  # noqa: E402
from bench.gpu_launches import gpu_launches  # noqa: E402
from symnmf_kernels.ops import _launch  # noqa: E402

block_module = importlib.import_module("symnmf_kernels.ops.symnmf_block")

CASES = [(1, 100_000, 16), (1, 100_000, 64), (1, 1_000, 16), (4096, 256, 8), (256, 1_024, 32)]
# The other ops (op, B, n, r): the chain form's forward and backward against its former composition of custom
# ops; the forward of the others against their custom ops.
OP_CASES = [("symnmf_block_from_gram", 1, 100_000, 16), ("gram", 1, 100_000, 16), ("spd_inverse", 1, 0, 32), ("apply_relu", 1, 100_000, 16),
            ("sym_loss", 1, 2_048, 16)]
COLUMNS = ["op", "B", "n", "r", "work", "variant", "host_us", "launches", "x_custom_op"]


def launches_skipped(counter):
    """Every Triton launch counted (counter[0]) and skipped, with a GPU's launch geometry (132 SMs)."""
    def count(kernel, args, kwargs, grid):
        counter[0] += 1

    return gpu_launches(count)


def custom_ops():
    """The custom op of each op, called as sk.<op> would call it: {op: fn(*inputs)}."""
    ops = {name: importlib.import_module("symnmf_kernels.ops." + name) for name in
           ("gram", "spd_inverse", "apply_relu", "sym_loss")}
    def from_gram(UtU, P, lam):  # the chain form's former composition: two custom ops around G's torch ops
        G = UtU + lam[..., None, None] * torch.eye(UtU.shape[-1], dtype=UtU.dtype)
        return ops["apply_relu"].apply_relu_gram_op(P, ops["spd_inverse"].spd_inverse_op(G)[0])

    return {
        "symnmf_block": lambda U, P, lam: block_module.symnmf_block_op(U, P, lam)[0],
        "symnmf_block_from_gram": from_gram,
        "gram": lambda U, lam: ops["gram"].gram_op(U, lam, True),
        "spd_inverse": lambda G: ops["spd_inverse"].spd_inverse_op(G)[0],
        "apply_relu": lambda P, Ginv: ops["apply_relu"].apply_relu_op(P, Ginv),
        "sym_loss": lambda X, U: ops["sym_loss"].sym_loss_dense(X, U),
    }


def public(op):
    return {"symnmf_block": sk.symnmf_block, "symnmf_block_from_gram": sk.symnmf_block_from_gram, "gram": sk.gram,
            "spd_inverse": sk.spd_inverse, "apply_relu": sk.apply_relu, "sym_loss": sk.sym_loss}[op]


@contextlib.contextmanager
def variant(op, name):
    if name != "split":
        yield public(op) if name == "default" else custom_ops()[op]
        return
    small_n = _launch.SMALL_N
    _launch.SMALL_N = 0
    try:
        yield public(op)
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


def op_call(op, name, work, inputs, grads):
    """One call of the variant: the forward without autograd, or forward and backward (the blocks)."""
    leaves = [t for t in inputs if t.requires_grad]

    def call():
        with variant(op, name) as fn:
            if work == "forward":
                with torch.no_grad():
                    fn(*inputs)
            else:
                out = fn(*inputs)
                outs = out if isinstance(out, tuple) else (out,)
                torch.autograd.backward(outs, grads[:len(outs)])
                for t in leaves:
                    t.grad = None

    return call


def op_inputs(op, B, n, r):
    lead = (B,) if B > 1 else ()
    lam = torch.tensor(1.0, requires_grad=True)
    if op == "symnmf_block":
        return [torch.rand(*lead, n, r, requires_grad=True), torch.rand(*lead, n, r, requires_grad=True), lam]
    if op == "symnmf_block_from_gram":
        U = torch.rand(*lead, n, r)
        return [(U.mT @ U).requires_grad_(), torch.rand(*lead, n, r, requires_grad=True), lam]
    if op == "gram":
        return [torch.rand(*lead, n, r), lam]
    if op == "spd_inverse":
        return [torch.eye(r).expand(*lead, r, r) * 2.0]
    if op == "apply_relu":
        return [torch.rand(*lead, n, r), torch.eye(r).expand(*lead, r, r).contiguous()]
    X = torch.rand(*lead, n, n)
    return [(X + X.mT) / 2, torch.rand(*lead, n, r)]


def measure(op, B, n, r, rounds):
    inputs = op_inputs(op, B, n, r)
    lead = (B,) if B > 1 else ()
    grads = (torch.rand(*lead, n, r), torch.rand(*lead, r, r))
    works = ("forward", "forward + backward") if op.startswith("symnmf_block") else ("forward",)
    names = ("default", "custom_op", "split") if op == "symnmf_block" else ("default", "custom_op")
    rows = []
    counter = [0]
    with launches_skipped(counter):
        for work in works:
            calls = {name: op_call(op, name, work, inputs, grads) for name in names}
            results = time_in_turns(calls, counter, rounds)
            for name, (us, launches) in results.items():
                rows.append({"op": op, "B": B, "n": n if op != "spd_inverse" else "-", "r": r, "work": work,
                             "variant": name, "host_us": us, "launches": launches,
                             "x_custom_op": results["custom_op"][0] / us})
    return rows


def measure_net_step(n, r, L, rounds):
    """SymNMF-Net's training step (SymNMFNet's objective op by op, as on a GPU without a CUDA graph, its
    backward, the fused Adam, lam's projection) on a planted graph of n nodes: one row, variant "default".
    The SpMMs are the extension's CPU kernel and run for real (cheap at this n); the Triton launches are skipped."""
    from bench.bench_cpu import planted_graph
    from symnmf import SymNMFNet

    counter = [0]
    with launches_skipped(counter):
        X, _ = planted_graph(n, r, 20, seed=0)
        net = SymNMFNet(r, n_layers=L, random_state=0)
        # Its kernels skipped too: the weights hold whatever memory held, which costs no host time, and which its
        # one-off range checks would refuse (NaN, say), so they are skipped as well.
        with unittest.mock.patch("symnmf.net._check_range", lambda *args, **kwargs: None):
            net.initialize(X)
        Xp = net._prepare(X)
        x_norm2 = Xp.values().pow(2).sum()
        S0 = net._start_product(Xp)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)

        def step():
            opt.zero_grad(set_to_none=True)
            loss, _, _ = net._objective(Xp, x_norm2, S0, None)
            loss.sum().backward()
            opt.step()
            net.project_lam()

        (us, launches), = time_in_turns({"default": step}, counter, rounds).values()
    return [{"op": "net step (L = %d)" % L, "B": 1, "n": n, "r": r, "work": "forward + backward + Adam",
             "variant": "default", "host_us": us, "launches": launches}]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds of 20 calls of each variant (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for B, n, r in CASES:
        rows += measure("symnmf_block", B, n, r, args.rounds)
    for op, B, n, r in OP_CASES:
        rows += measure(op, B, n, r, args.rounds)
    rows += measure_net_step(300, 8, 5, args.rounds)
    header = [
        "host time per call of the ops' Triton path with every kernel launch skipped: the library's "
        "Python, torch's dispatch and the allocations, without Triton's launch cost or any GPU time",
        "CPU tensors, TRITON_INTERPRET=1 for the path (nothing is interpreted), a GPU's launch geometry (132 SMs); "
        "%d thread(s); median of %d rounds, each timing 20 calls of every variant in turn"
        % (args.threads, args.rounds),
        "variants: default = sk.<op> in eager mode (for the block an autograd.Function; without a gradient the "
        "launcher itself), custom_op = the torch.library op torch.compile traces, split = every problem on the "
        "split-n kernels",
        "launches: Triton launches per call; x_custom_op: the custom op's host time over the row's",
        "net step: SymNMFNet(8, n_layers=5), one restart, its objective op by op (the GPU's eager step) on a planted "
        "graph of 300 nodes; its SpMMs run on the CPU (the extension's kernel)",
    ]
    write_table("bench_host", rows, COLUMNS, header, out_dir=args.out, device=torch.device("cpu"))


if __name__ == "__main__":
    main()
