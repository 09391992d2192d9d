"""SymANLS's NNLS calls, each timed on every path that runs on this machine.

SymANLS runs a few iterations on a kNN graph of Gaussian clusters (bench_spmm.knn_gauss) from Kuang et al.'s
random start; the (B, C, X0) of each of its NNLS calls (`symnmf.solvers.nnls.nnls_gram`, two an iteration) is
kept, and each call is then timed on the paths side by side:

    native   the extension's CPU kernel (CPU tensors)
    torch    the op's torch path (CUDA beyond r = 32; on the CPU without the extension)
    kernel   the op's Triton kernel (CUDA, r <= 32)

Columns: call (0, 1: the first iteration, whose start is positive everywhere, so every passive set is full at
first), rows, passive (mean passive-set size of the solution), then each path's median ms and x_torch (the
torch path's time over the row's best other path); rel_err: each path against the first, worst.

    python bench/bench_nnls_symanls.py --n 50000 --r 64 --calls 0 1 4 10
"""
import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

import torch  # noqa: E402

from bench.bench_spmm import make_graph  # noqa: E402
from bench.common import bench, write_table  # noqa: E402
from symnmf.solvers import solve  # noqa: E402

anls_module = importlib.import_module("symnmf.solvers.anls")
nnls_module = importlib.import_module("symnmf_kernels.ops.nnls")

PATHS = ("native", "torch", "kernel")


def captured_calls(n, r, iters, device, seed):
    """[(B, C, X0)] of SymANLS's NNLS calls over `iters` iterations on a knn_gauss graph of n nodes."""
    X = make_graph("knn_gauss", n, device, seed).to_torch()
    calls = []
    solver_nnls = anls_module.nnls_gram

    def keep(B, C, X0=None, **kwargs):
        calls.append((B.clone(), C.clone(), None if X0 is None else X0.clone()))
        return solver_nnls(B, C, X0, **kwargs)

    anls_module.nnls_gram = keep
    try:
        solve(X, r, "anls", max_iter=iters, tol=0.0, random_state=seed)
    finally:
        anls_module.nnls_gram = solver_nnls
    return calls


def available_paths(device, r):
    paths = []
    if device.type == "cpu" and nnls_module._NATIVE_NNLS:
        paths.append("native")
    paths.append("torch")
    if device.type == "cuda" and r <= nnls_module._launch.NNLS_MAX_K:
        paths.append("kernel")
    return paths


def on_path(path, fn):
    """fn() with nnls_gram taking `path`."""
    native, kernel_runs = nnls_module._NATIVE_NNLS, nnls_module._kernel_runs
    nnls_module._NATIVE_NNLS = path == "native"
    if path != "kernel":
        nnls_module._kernel_runs = lambda C: False
    try:
        return fn()
    finally:
        nnls_module._NATIVE_NNLS, nnls_module._kernel_runs = native, kernel_runs


def measure(calls, wanted, paths, device, max_runs, save=lambda rows: None):
    """One row per wanted call; save(rows) after each, so that a run cut short keeps its rows."""
    from symnmf.solvers.nnls import nnls_gram

    rows = []
    for i in wanted:
        if i >= len(calls):
            continue
        B, C, X0 = calls[i]
        row = dict(call=i, rows=C.shape[0], r=C.shape[1])
        outs = {}
        for path in paths:
            run = lambda: nnls_gram(B, C, X0)  # noqa: E731
            outs[path] = on_path(path, run)
            row[f"{path}_ms"] = on_path(path, lambda: bench(run, warmup=0, rep=1, device=device, max_runs=max_runs))
        first = outs[paths[0]]
        row["passive"] = float((first > 0).sum(1).double().mean())
        others = [row[f"{p}_ms"] for p in paths if p != "torch"]
        row["x_torch"] = row["torch_ms"] / min(others) if others else float("nan")
        row["rel_err"] = max(float((outs[p] - first).norm() / first.norm()) for p in paths)
        print(row, flush=True)
        rows.append(row)
        save(rows)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--r", type=int, default=64)
    parser.add_argument("--iters", type=int, default=6, help="SymANLS iterations captured (two calls each)")
    parser.add_argument("--calls", type=int, nargs="+", default=[0, 1, 4, 10], help="which calls to time")
    parser.add_argument("--max-runs", type=int, default=3, help="timed runs of a call on a path (their median)")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (600 nodes, r = 40)")
    parser.add_argument("--out", help="folder of the table (default bench/results)")
    parser.add_argument("--name", default="bench_nnls_symanls", help="the table's name (default %(default)s)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.r, args.iters, args.calls = 600, 40, 2, [0, 3]
    device = torch.device(args.device)
    calls = captured_calls(args.n, args.r, args.iters, device, args.seed)
    paths = available_paths(device, args.r)
    columns = ["call", "rows", "r", "passive"] + [f"{p}_ms" for p in paths] + ["x_torch", "rel_err"]
    header = [
        f"SymANLS on knn_gauss, n = {args.n}, r = {args.r}, {args.iters} iterations from random_state {args.seed}; "
        "its NNLS calls kept and each timed on every path here",
        "paths: native = the extension's CPU kernel, torch = the op's torch path, kernel = the op's Triton kernel "
        "(CUDA, r <= 32)",
        ("times: triton.testing.do_bench medians (bench.common.bench)" if device.type == "cuda" else
         f"times: median ms of {args.max_runs} runs (bench.common.bench)")
        + f"; torch threads {torch.get_num_threads()}",
        "passive: mean passive-set size of the solution; x_torch: torch_ms / the best other path's; "
        "rel_err: worst ||X_path - X_first|| / ||X_first||",
    ]

    def save(rows):
        return write_table(args.name, rows, columns, header, out_dir=args.out, device=args.device, echo=False)

    rows = measure(calls, args.calls, paths, device, args.max_runs, save)
    print(open(save(rows)).read() if rows else "no call measured")
    return rows


if __name__ == "__main__":
    main()
