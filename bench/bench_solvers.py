"""Solver benchmark: time per iteration and time to tolerance of every SymNMF solver,
the GPU kernels against the CPU path, on kNN-like graphs (docs/design.md, "Measuring performance").

Rows, per graph and rank:

    hals_sweep  one SymHALS half-iteration sweep as the solver runs it
                (symnmf_kernels.ops.hals.hals_sweep_ with C = X V + lam V formed
                from X V and V): the fused Triton row sweep against the torch
                column loop on the same device; ideal traffic 4 n r values
                (read X V, V and W, write W)
    projected_gradient_sq
                (CUDA) the solvers' stopping measure: the Triton kernel
                (kernels) against the torch form (torch-form); ideal traffic
                2 n r values (read grad and U)
    net         one SymNMF-Net training step (default recipe): eager and
                replayed from a captured CUDA graph (fit(cuda_graph=True)) on
                CUDA, the CPU path otherwise; ms_per_iter from k2 - k1 steps
    <solver>    anls, hals, pgd, newton, admm through symnmf.solvers.SOLVERS on
                each path:
                  kernels     CUDA tensors: Triton kernels and the CUDA SpMM
                  torch-loop  CUDA, SymHALS only: the sweep as a plain torch
                              column loop (the SymHALS peer of docs/design.md)
                  cpu         CPU tensors: the torch path and the C++ SpMM
                ms_per_iter: (time of k2 iterations - time of k1) / (k2 - k1),
                so set-up (penalty, first product) cancels; the stopping check
                runs only at the ends
                to tolerance: the solver's default tol and max_iter, stopped
                early after --tol-cap-s seconds (converged = False then)

Every solver starts from the same Kuang et al. factor. The table goes to
bench/results/bench_solvers-<date>-<device>.md, rewritten after every row.

    python bench/bench_solvers.py                     # CUDA: --sizes full; CPU: --sizes tiny
    python bench/bench_solvers.py --sizes small --solvers hals pgd --out /tmp/results
"""
import argparse
import gc
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    add_run_args,
    bench,
    copy_bandwidth,
    resolve_run_args,
    roofline_fraction,
    write_table,
)
from symnmf.solvers import SOLVERS, init_factor  # noqa: E402
from symnmf_kernels.ops.hals import hals_sweep_  # noqa: E402
from symnmf_kernels.ops.projected_gradient import projected_gradient_sq  # noqa: E402

SIZES = {
    "tiny": {"n": [2_000], "r": [8]},
    "small": {"n": [20_000], "r": [16]},
    "full": {"n": [1_000_000], "r": [64]},
}
GRAPHS = ("knn_like", "knn_gauss")
COLUMNS = [
    "graph", "n", "nnz", "r", "solver", "path", "ms_per_iter", "x_cpu", "frac_roofline",
    "iters", "s_to_tol", "converged", "rel_error", "notes",
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def short_error(exc):
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, (text[0] if text else "")[:100])


def make_graph(kind, n, device, seed):
    """The graphs of bench_spmm.py (kNN-like or Gaussian-mixture kNN), as a torch sparse CSR."""
    from bench.bench_spmm import make_graph as spmm_graph

    return spmm_graph(kind, n, device, seed).to_torch()


def run_solver(name, X, U0, path, **kwargs):
    """Wall time (s) and result of one solver run, device synchronised around it."""
    if path == "torch-loop":
        kwargs["backend"] = "torch"
    sync(X.device)
    start = time.perf_counter()
    result = SOLVERS[name](X, U0, **kwargs)
    sync(X.device)
    return time.perf_counter() - start, result


def ms_per_iter(name, X, U0, path, k1, k2):
    run_solver(name, X, U0, path, max_iter=1, tol=0.0, check_every=1)  # compiles / warms up what it needs
    t1, _ = run_solver(name, X, U0, path, max_iter=k1, tol=0.0, check_every=k1)
    t2, _ = run_solver(name, X, U0, path, max_iter=k2, tol=0.0, check_every=k2)
    # Timing noise on a busy host can exceed a few iterations' time: no number then.
    return 1e3 * (t2 - t1) / (k2 - k1) if t2 > t1 else float("nan")


def to_tolerance(name, X, U0, path, cap_s):
    def stop_at_cap(it, U, history):
        return history["time"][-1] > cap_s

    seconds, result = run_solver(name, X, U0, path, callback=stop_at_cap)
    return {
        "iters": result.n_iter, "s_to_tol": seconds, "converged": result.converged,
        "rel_error": result.history["rel_error"][-1],
    }


def bench_hals(X, r, args, bw, base):
    """The SymHALS sweep alone: Triton against the torch column loop, on X's device."""
    device = X.device
    g = torch.Generator(device=device).manual_seed(args.seed)
    n = X.shape[0]
    V = torch.rand(n, r, device=device, generator=g)
    W = torch.rand(n, r, device=device, generator=g)
    B = V.T @ V + 0.5 * torch.eye(r, device=device)
    XV = torch.sparse.mm(X, V)
    nbytes = 4 * n * r * 4
    paths = ["triton", "torch"] if device.type == "cuda" else ["torch"]
    rows, times = [], {}
    for path in paths:
        Wp = W.clone()
        times[path] = bench(lambda: hals_sweep_(Wp, XV, B, V=V, lam=0.5, backend=path), warmup=args.warmup,
                            rep=args.rep, device=device)
        rows.append({**base, "solver": "hals_sweep", "path": "kernels" if path == "triton" else "torch-loop",
                     "ms_per_iter": times[path], "frac_roofline": roofline_fraction(nbytes, times[path], bw)})
    if "triton" in times:
        rows[0]["notes"] = "%.3gx the torch loop" % (times["torch"] / times["triton"])
    return rows


def bench_projected_gradient(X, r, args, bw, base):
    """The solvers' stopping measure alone on CUDA: the Triton kernel (one pass over grad and U) against the
    torch form it replaces there (about six passes)."""
    if X.device.type != "cuda":
        return []
    from symnmf_kernels.ops.projected_gradient import _torch as torch_form

    g = torch.Generator(device=X.device).manual_seed(args.seed + 1)
    n = X.shape[0]
    grad = torch.randn(n, r, device=X.device, generator=g)
    U = torch.rand(n, r, device=X.device, generator=g)
    U[U < 0.3] = 0  # a third of the entries at the bound, as in a factor
    nbytes = 2 * n * r * 4
    rows = []
    for path, fn in (("kernels", projected_gradient_sq), ("torch-form", torch_form)):
        ms = bench(lambda: fn(grad, U), warmup=args.warmup, rep=args.rep, device=X.device)
        rows.append({**base, "solver": "projected_gradient_sq", "path": path, "ms_per_iter": ms,
                     "frac_roofline": roofline_fraction(nbytes, ms, bw)})
    rows[0]["notes"] = "%.3gx the torch form" % (rows[1]["ms_per_iter"] / rows[0]["ms_per_iter"])
    return rows


def net_ms_per_step(X, r, graph, k1, k2, seed):
    """ms per SymNMF-Net training step (the default recipe, no early stop), from k2 - k1 steps."""
    from symnmf.net import SymNMFNet

    def timed(k):
        net = SymNMFNet(r, random_state=seed)
        sync(X.device)
        start = time.perf_counter()
        net.fit(X, epochs=k, tol=None, cuda_graph=graph, log_every=k)
        sync(X.device)
        return time.perf_counter() - start

    timed(k1)  # the first fit also pays the kernels' loading and compiles: not part of a step
    t1, t2 = timed(k1), timed(k2)
    # As ms_per_iter: host noise larger than a few steps' time leaves no number, never a negative one.
    return (t2 - t1) / (k2 - k1) * 1e3 if t2 > t1 else float("nan")


def bench_net(X, r, args, base):
    """SymNMF-Net's training step, eager and replayed from a captured CUDA graph (CUDA), or on the CPU."""
    on_cuda = X.device.type == "cuda"
    rows = []
    for path, graph in ([("kernels", False), ("cuda-graph", True)] if on_cuda else [("cpu", False)]):
        k1, k2 = (5, 5 + args.k2) if on_cuda else (4, 4 + args.cpu_k2)
        row = {**base, "solver": "net", "path": path}
        try:
            row["ms_per_iter"] = net_ms_per_step(X, r, graph, k1, k2, args.seed)
        except Exception as exc:
            row["notes"] = short_error(exc)
        rows.append(row)
    if on_cuda and all("ms_per_iter" in row for row in rows):
        rows[1]["notes"] = "%.3gx the eager step" % (rows[0]["ms_per_iter"] / rows[1]["ms_per_iter"])
    return rows


def header_lines(args, device, bw, stopped):
    lines = [
        "paths: kernels = CUDA tensors (Triton sweep, CUDA SpMM, Triton Gram/loss); torch-loop = CUDA, SymHALS "
        "sweep as a torch column loop; cpu = CPU tensors (%d threads)" % torch.get_num_threads(),
        "ms_per_iter: (wall time of k2 - k1 more iterations) / (k2 - k1), k1 = %d, k2 = %d (CPU: k1 = 1, k2 = %d), "
        "device synchronised; stopping checks only at the ends" % (args.k1, args.k2, args.cpu_k2),
        "x_cpu: the cpu path's ms_per_iter over this path's",
        "to tolerance: each solver's default tol and max_iter (anls/hals 1e-3, 500; pgd/newton 1e-4, 10000; "
        "admm 1e-4, 1000), stopped after %g s (converged False then); cpu path only for n <= %d"
        % (args.tol_cap_s, args.cpu_tol_max_n),
        "sweep: hals_sweep_ timed with bench.common.bench; frac_roofline = (4 n r x 4 bytes / time) / copy "
        "bandwidth (%.4g GB/s); projected_gradient_sq likewise with 2 n r x 4 bytes" % (bw / 1e9),
        "float32; graphs from bench_spmm.py (knn_like: docs/design.md, 'Measuring performance'; knn_gauss: kNN of Gaussian-mixture points)",
    ]
    if device.type != "cuda":
        lines.append("CPU-only run on a shared machine: no GPU numbers here")
    if stopped:
        lines.append("stopped after --budget-s %g s: %d rows not measured" % (args.budget_s, stopped))
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), help="size preset (default: full on CUDA, tiny on CPU)")
    parser.add_argument("--graphs", nargs="+", choices=GRAPHS, default=["knn_like"])
    # SymANLS last: at r > 32 on a GPU its iteration takes about a second (docs/gpu_performance.md)
    parser.add_argument("--solvers", nargs="+", choices=sorted(SOLVERS),
                        default=["hals", "pgd", "newton", "admm", "anls"])
    parser.add_argument("--n", type=int, nargs="+", help="node counts (default: from --sizes)")
    parser.add_argument("--r", type=int, nargs="+", help="ranks (default: from --sizes)")
    parser.add_argument("--k1", type=int, default=2, help="iterations of the shorter timed run")
    parser.add_argument("--k2", type=int, default=12, help="iterations of the longer timed run")
    parser.add_argument("--cpu-k2", type=int, default=3, help="k2 on the CPU path (k1 = 1 there)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the cpu path on a CUDA machine")
    parser.add_argument("--no-net", action="store_true",
                        help="skip the SymNMF-Net training-step rows (eager and CUDA-graph on CUDA)")
    parser.add_argument("--cpu-tol-max-n", type=int, default=50_000, help="largest n for the cpu path's to-tolerance run")
    parser.add_argument("--tol-cap-s", type=float, help="time cap of a to-tolerance run (default: 8 CUDA, 20 CPU)")
    add_run_args(parser)  # --budget-s: 55 s on CUDA by default, unlimited on CPU
    args = resolve_run_args(parser, parser.parse_args(argv), cuda_budget_s=55.0)
    on_cuda = args.device.type == "cuda"
    args.sizes = args.sizes or ("full" if on_cuda else "tiny")
    args.n = args.n or SIZES[args.sizes]["n"]
    args.r = args.r or SIZES[args.sizes]["r"]
    args.tol_cap_s = (8.0 if on_cuda else 20.0) if args.tol_cap_s is None else args.tol_cap_s
    if not 1 <= args.k1 < args.k2 or args.cpu_k2 < 2:
        parser.error("need 1 <= k1 < k2 and cpu-k2 >= 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    torch.set_float32_matmul_precision("highest")
    bw = copy_bandwidth(device)
    start = time.perf_counter()
    rows, stopped = [], 0
    paths = ["kernels", "cpu"] if device.type == "cuda" and not args.no_cpu else [
        "kernels" if device.type == "cuda" else "cpu"]

    def save(echo=False):
        return write_table("bench_solvers", rows, COLUMNS, header_lines(args, device, bw, stopped),
                           out_dir=args.out, device=device, echo=echo)

    for gi, kind in enumerate(args.graphs):
        for n in args.n:
            try:
                X = make_graph(kind, n, device, args.seed + gi)
                X_cpu = X.cpu() if device.type == "cuda" else X
            except Exception as exc:  # e.g. out of memory: the other graphs still run
                rows.append({"graph": kind, "n": n, "notes": "graph: " + short_error(exc)})
                release(device)
                continue
            nnz = X.values().numel()
            for r in args.r:
                base = {"graph": kind, "n": n, "nnz": nnz, "r": r}
                try:
                    rows.extend(bench_hals(X, r, args, bw, base))
                except Exception as exc:
                    rows.append({**base, "solver": "hals_sweep", "notes": short_error(exc)})
                try:
                    rows.extend(bench_projected_gradient(X, r, args, bw, base))
                except Exception as exc:
                    rows.append({**base, "solver": "projected_gradient_sq", "notes": short_error(exc)})
                save()
                U0 = init_factor(X, r, torch.Generator().manual_seed(args.seed))
                # Every solver's own path first, then the peers (the torch loop, the CPU): a run cut short by
                # --budget-s still has the GPU's row of each solver.
                order = [(path, name) for path in paths[:1] for name in args.solvers]
                if device.type == "cuda" and "hals" in args.solvers:
                    order.append(("torch-loop", "hals"))
                order += [(path, name) for path in paths[1:] for name in args.solvers]
                results = {name: {} for name in args.solvers}
                for path, name in order:
                    if time.perf_counter() - start > args.budget_s:
                        stopped += 1
                        continue
                    on_cpu = path == "cpu"
                    Xp = X_cpu if on_cpu else X
                    Up = U0.to(Xp.device)
                    row = {**base, "solver": name, "path": path}
                    try:
                        k1, k2 = (1, args.cpu_k2) if on_cpu else (args.k1, args.k2)
                        row["ms_per_iter"] = ms_per_iter(name, Xp, Up, path, k1, k2)
                        if not (on_cpu and n > args.cpu_tol_max_n):
                            row.update(to_tolerance(name, Xp, Up, path, args.tol_cap_s))
                    except Exception as exc:
                        row["notes"] = short_error(exc)
                        release(device)
                    results[name][path] = row
                    rows.append(row)
                    print("%-9s n=%-8d r=%-4d %-7s %-10s %s ms/iter" % (
                        kind, n, r, name, path, row.get("ms_per_iter", float("nan"))), flush=True)
                    save()
                for by_path in results.values():
                    cpu_ms = by_path.get("cpu", {}).get("ms_per_iter")
                    for row in by_path.values():
                        ms = row.get("ms_per_iter")
                        if cpu_ms and ms and math.isfinite(ms) and ms > 0:
                            row["x_cpu"] = cpu_ms / ms
                if not args.no_net and time.perf_counter() - start <= args.budget_s:
                    rows.extend(bench_net(X, r, args, base))
                save()
            del X, X_cpu
            release(device)
    path = save(echo=True)
    print("wrote", path, flush=True)
    return path


if __name__ == "__main__":
    main()
