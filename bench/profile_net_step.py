"""Where SymNMF-Net's training step spends its time: each kernel's share of one step, grouped by what it does.

bench_net_step.py times the whole step against plain torch and its SpMMs; this script says what the rest is.
It runs the same eager step (bench_net_step.steps, one problem, the planted graph) a few times under
torch.profiler and adds up, per step:

    on CUDA   every GPU kernel's device time, by kernel name
    on CPU    every operator's own CPU time (self time), by operator name

and sorts the names into groups: the SpMM, each Triton kernel of the library (by its kernel), cuBLAS's GEMMs,
Adam, torch's elementwise and reduction kernels (autograd's accumulations among them), copies and fills, and the
rest. The table has one row per group and then the largest kernels one by one, each with its calls and its
milliseconds per step and its share of the profiled total.

    python bench/profile_net_step.py                        # CUDA: 1M nodes, r = 64, L = 10; CPU: 2,000, r = 8, L = 5
    python bench/profile_net_step.py --size 1000000,16,5 --steps 5
"""
import argparse
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.bench_net_step import make_net, parse_step_args, steps  # noqa: E402
from bench.common import write_table  # noqa: E402

COLUMNS = ["level", "name", "group", "calls_per_step", "ms_per_step", "share"]
DEFAULT_SIZE = {"cuda": (1_000_000, 64, 10), "cpu": (2_000, 8, 5)}
# The library's Triton kernels, by the names their modules define.
TRITON_KERNEL = re.compile(r"^(\w+_kernel)\b")
GROUPS = [  # (group, pattern on the kernel or operator name), the first that matches; the SpMM first
    ("spmm", re.compile(r"spmm", re.I)),
    ("adam", re.compile(r"adam", re.I)),
    ("gemm (cuBLAS)", re.compile(r"gemm|cutlass|xmma|addmm|\bmm\b|bmm|matmul", re.I)),
    ("copy / fill", re.compile(r"memcpy|memset|copy|fill|zero", re.I)),
    ("reduction (torch)", re.compile(r"reduce|sum|norm|amax|amin", re.I)),
    ("elementwise (torch)", re.compile(r"elementwise|add|mul|sub|div|where|relu|clamp|maximum|pow", re.I)),
]


def group_of(name):
    """The group a kernel or operator belongs to."""
    triton_name = TRITON_KERNEL.match(name)
    if triton_name and not name.startswith("void "):
        return "triton: " + triton_name.group(1)
    if name.startswith("symnmf_kernels::") and not GROUPS[0][1].search(name):
        return "op: " + name.split("::", 1)[1]  # on the CPU: the library's ops, whatever runs inside them
    for group, pattern in GROUPS:
        if pattern.search(name):
            return group
    return "other"


def profile_step(step, device, n_steps):
    """{name: (calls, total ms)} over n_steps calls of step: GPU kernels on CUDA, operators' self time on CPU."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):  # compiled, allocated, Adam's state made
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n_steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    totals = collections.defaultdict(lambda: [0, 0.0])
    if device.type == "cuda":
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                entry = totals[event.name]
                entry[0] += 1
                entry[1] += event.device_time_total / 1e3
    else:
        for event in prof.key_averages():
            if event.self_cpu_time_total > 0 and not event.key.startswith("ProfilerStep"):
                entry = totals[event.key]
                entry[0] += event.count
                entry[1] += event.self_cpu_time_total / 1e3
    return dict(totals)


def table_rows(totals, n_steps, top):
    """Rows of the table: every group, then the `top` largest names, per step."""
    total_ms = sum(ms for _, ms in totals.values()) or float("nan")
    groups = collections.defaultdict(lambda: [0, 0.0])
    for name, (calls, ms) in totals.items():
        entry = groups[group_of(name)]
        entry[0] += calls
        entry[1] += ms

    def row(level, name, group, calls, ms):
        return {"level": level, "name": name, "group": group, "calls_per_step": calls / n_steps,
                "ms_per_step": ms / n_steps, "share": ms / total_ms}

    rows = [row("group", group, group, calls, ms)
            for group, (calls, ms) in sorted(groups.items(), key=lambda item: -item[1][1])]
    rows.append(row("total", "all", "", sum(c for c, _ in totals.values()), total_ms))
    largest = sorted(totals.items(), key=lambda item: -item[1][1])[:top]
    rows += [row("kernel", name[:120], group_of(name), calls, ms) for name, (calls, ms) in largest]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default=None, metavar="N,R,L",
                        help="n,r,L (default: 1000000,64,10 on CUDA, 2000,8,5 on the CPU)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=30, help="kernels listed one by one")
    args, tiles = parse_step_args(parser, argv, "profile_net_step")
    device = args.device
    n, r, L = (tuple(int(v) for v in args.size.split(",")) if args.size else DEFAULT_SIZE[device.type])
    net, Xp, X_norm2, S0 = make_net(n, r, L, device, seed=args.seed)
    step = steps(net, Xp, X_norm2, S0, graph=False)["ours"]
    totals = profile_step(step, device, args.steps)
    rows = table_rows(totals, args.steps, args.top)
    header = [
        "SymNMF-Net's eager training step (bench_net_step.steps 'ours': all blocks' losses and regularisers, "
        f"backward, fused Adam, lam's projection), float32, one problem, n = {n}, r = {r}, L = {L}, "
        f"{Xp.values().numel()} stored entries (planted graph)",
        f"torch.profiler over {args.steps} steps after 3 warm-up steps; "
        + ("GPU kernels' device time" if device.type == "cuda" else
           f"operators' own CPU time, {torch.get_num_threads()} thread(s)")
        + "; per step; share: of the profiled total (the step's kernels back to back, without launch gaps)",
        "group: spmm (the CSR SpMM), triton: <kernel> (the library's Triton kernels), op: <op> (the library's ops, "
        "on the CPU), gemm (cuBLAS), adam, reduction and elementwise (torch's own kernels: autograd's "
        "accumulations, the loss's sums), copy / fill",
    ]
    if tiles:
        header.append("GPU tiles from %s: %s" % (os.path.basename(args.tiles), tiles))
    write_table(args.name, rows, COLUMNS, header, out_dir=args.out, device=device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
