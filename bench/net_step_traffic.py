"""SymNMF-Net's training step as a GPU would run it, counted in memory traffic, on a machine without one.

The step (bench_net_step.steps: the blocks, the layer losses, the backward, fused Adam) runs on CPU tensors with
every Triton launch handed to `bench.gpu_launches` (recorded with a GPU's launch geometry, not run) and every
torch operator seen by a TorchDispatchMode, in both of its forms side by side: "chain", the objective in one
autograd node as fit takes it (symnmf.net_chain), and "ops", op by op. Each launch and each operator is charged
the bytes of its distinct tensors of at least n elements (arguments and outputs; a tensor passed twice, or as a
stand-in for an argument the kernel does not read, once): what a kernel that streams them once moves.
Views (view, slice, detach, ...) and allocations move nothing and are left out; the SpMMs, which gather rows of U
through X's pattern, are timed by bench_spmm.py and are not counted here. Fused Adam reads a weight, its gradient
and two moments and writes three of them: 7 passes, where its arguments count 4.

The table gives, per kernel or operator, its calls a step and its bytes in units of one n x r float32 tensor, and
the milliseconds those bytes take at --bandwidth (GB/s; an H200's measured copy bandwidth by default): the step's
time outside its SpMMs at the copy roofline, to set against the measured step.

    python bench/net_step_traffic.py --size 200000,64,10      # units do not depend on n beyond the Gram's partials
"""
import argparse
import collections
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels' stand-ins take CPU tensors; none runs
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from bench.bench_net_step import make_net, steps  # noqa: E402
from bench.common import write_table  # noqa: E402
from bench.gpu_launches import gpu_launches, kernel_name  # noqa: E402

COLUMNS = ["variant", "kind", "name", "calls", "units", "ms_at_roofline"]
VARIANTS = {"chain": "ours", "ops": "ops"}  # this table's names for bench_net_step.steps' variants
# Operators (by name, overloads aside) that only describe memory (views, metadata) or allocate it: no traffic.
NO_TRAFFIC = {"view", "_unsafe_view", "slice", "detach", "empty", "empty_like", "new_empty", "set_", "unbind",
              "values", "col_indices", "crow_indices", "as_strided", "expand", "alias", "t", "transpose", "select",
              "_reshape_alias", "unsqueeze", "squeeze", "permute", "split", "split_with_sizes"}
ADAM_PASSES = 7 / 4  # read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq


def _bytes(tensors, n):
    distinct = {(t.data_ptr(), t.numel(), t.element_size()) for t in tensors
                if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() >= n}
    return sum(numel * size for _, numel, size in distinct)


def count(n, r, L, variant):
    """{(kind, name): [calls, bytes]} of one eager training step at (n, r, L), the objective's form being
    variant ("chain" or "ops")."""
    net, Xp, X_norm2, S0 = make_net(n, r, L, torch.device("cpu"))
    step = steps(net, Xp, X_norm2, S0, False)[VARIANTS[variant]]
    table = collections.defaultdict(lambda: [0, 0])

    def on_launch(kernel, args, kwargs, grid):
        entry = table[("triton", kernel_name(kernel))]
        entry[0] += 1
        entry[1] += _bytes(list(args) + list(kwargs.values()), n)

    class Operators(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = str(func)
            if func.overloadpacket.__name__ not in NO_TRAFFIC:
                moved = _bytes(tree_leaves((args, kwargs, out)), n)
                if moved:
                    entry = table[("torch", name)]
                    entry[0] += 1
                    entry[1] += moved * (ADAM_PASSES if "fused_adam" in name else 1)
            return out

    with gpu_launches(on_launch):
        step()  # Adam's state made, the launches' caches filled
        table.clear()
        with Operators():
            step()
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200000,64,10", metavar="N,R,L")
    parser.add_argument("--bandwidth", type=float, default=4250.0,
                        help="GB/s for the roofline column (default: an H200's measured copy bandwidth)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--name", default="net_step_traffic")
    args = parser.parse_args(argv)
    n, r, L = (int(v) for v in args.size.split(","))
    unit = n * r * 4
    rows, totals = [], []
    for variant in VARIANTS:
        table = count(n, r, L, variant)
        rows += [{"variant": variant, "kind": kind, "name": name, "calls": calls, "units": moved / unit,
                  "ms_at_roofline": moved / (args.bandwidth * 1e6)}
                 for (kind, name), (calls, moved) in sorted(table.items(), key=lambda item: -item[1][1])]
        total = sum(moved for _, moved in table.values())
        totals.append({"variant": variant, "kind": "all", "name": "the step outside its SpMMs",
                       "calls": sum(c for c, _ in table.values()), "units": total / unit,
                       "ms_at_roofline": total / (args.bandwidth * 1e6)})
    rows += totals
    header = [
        f"one eager SymNMF-Net training step at n = {n}, r = {r}, L = {L} (float32, one problem, the planted graph), "
        "its Triton launches recorded with an H100/H200's geometry and not run, its torch operators counted",
        "variant: chain, the objective in one autograd node as fit takes it; ops, the objective op by op",
        "units: bytes of each call's distinct tensors of at least n elements over one n x r float32 tensor "
        f"({unit / 1e6:.1f} MB); fused Adam counted at 7 passes; the SpMMs not counted",
        f"ms_at_roofline: those bytes at {args.bandwidth:g} GB/s; a prediction of traffic, nothing here was timed",
    ]
    write_table(args.name, rows, COLUMNS, header, out_dir=args.out, device=torch.device("cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
