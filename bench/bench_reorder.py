"""What renumbering a graph's nodes buys the SpMM, and what it costs.

A graph whose nodes come in random order makes every gather of a row of U a
cache miss. `symnmf_kernels.sparse.locality_order` (reverse Cuthill-McKee, or
by degree) and `permute` renumber it once. For each graph this script takes
the graph in random node order, renumbers it each way, and times side by side
on the same U (row-permuted to match):

    ours    sk.spmm (the library's SpMM: CPU OpenMP or CUDA kernel)
    torch   torch.sparse.mm (MKL on the CPU, cuSPARSE on CUDA)

with the one-off cost of the renumbering (order + permute, on the host) and
how many SpMMs it takes to pay for itself. With --fits, whole fits as users run
them (`symnmf.fitting.fit_affinity`) of the graph in random order, with
node_order=None against node_order="rcm" (the renumbering included in the
time), and whether they end at the same labels (table bench_reorder_fit).

    python bench/bench_reorder.py --device cpu --n 200000
    python bench/bench_reorder.py --device cpu --n 200000 --ranks 16 --fits hals,net --fit-iters 30
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.bench_spmm import make_graph, torch_csr  # noqa: E402
from bench.common import add_run_args, bench, resolve_run_args, write_table  # noqa: E402
from symnmf_kernels.sparse import locality_order, permute  # noqa: E402

COLUMNS = ["graph", "n", "nnz", "r", "order", "order_s", "ours_ms", "torch_ms", "x_random_ours", "x_random_torch",
           "pays_after_spmms"]
FIT_COLUMNS = ["graph", "n", "nnz", "r", "solver", "iterations", "none_s", "rcm_fit_s", "rcm_order_s", "x_rcm",
               "same_labels", "rel_error_none", "rel_error_rcm"]


def time_fits(kind, X, r, solvers, iters, seed, device):
    """Rows of FIT_COLUMNS: each solver's fit of X with node_order None and "rcm", run in turns, twice each (the
    faster of two kept: the first run of a solver also pays its one-off costs, its kernels' first calls)."""
    from symnmf.fitting import fit_affinity

    A = X.to_torch()
    rows = []
    for solver in solvers:
        runs = {None: [], "rcm": []}
        for _ in range(2):
            for order in runs:
                runs[order].append(fit_affinity(A, r, solver, random_state=seed, max_iter=iters, tol=0.0,
                                                node_order=order, progress=False))
        plain = min(runs[None], key=lambda f: f.seconds)
        renum = min(runs["rcm"], key=lambda f: f.seconds + f.order_seconds)
        rows.append({
            "graph": kind, "n": X.shape[0], "nnz": X.nnz, "r": r, "solver": solver, "iterations": iters,
            "none_s": plain.seconds, "rcm_fit_s": renum.seconds, "rcm_order_s": renum.order_seconds,
            "x_rcm": plain.seconds / (renum.seconds + renum.order_seconds),
            "same_labels": float((plain.labels == renum.labels).mean()),
            "rel_error_none": plain.rel_error, "rel_error_rcm": renum.rel_error,
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser)
    parser.add_argument("--n", type=int, default=None, help="nodes (default: 1M on CUDA, 200k on CPU)")
    parser.add_argument("--ranks", default="16,64")
    parser.add_argument("--graphs", default="knn_like,knn_gauss")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--fits", default="", help="solvers whose whole fits to time, e.g. hals,net (default: none)")
    parser.add_argument("--fit-iters", type=int, default=30,
                        help="iterations of each timed fit (the net's training steps), tolerance 0")
    args = resolve_run_args(parser, parser.parse_args(argv))
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (1_000_000 if device.type == "cuda" else 200_000)
    header = [
        "graphs of bench_spmm.py in random node order, renumbered by symnmf_kernels.sparse.locality_order "
        "(rcm: reverse Cuthill-McKee; degree: by decreasing degree) and permute",
        f"times: median ms ({'do_bench' if device.type == 'cuda' else 'perf_counter'}), float32, "
        f"{torch.get_num_threads()} CPU threads; order_s: seconds of locality_order + permute (host)",
        "x_random_*: speed-up over the random order; pays_after_spmms: order_s over the time ours saves per SpMM",
    ]
    rows, fit_rows = [], []
    fit_header = header[:1] + [
        f"fit_affinity(A, r, solver, random_state={args.seed}, max_iter=--fit-iters, tol=0) of the graph in random "
        f"order, node_order=None and \"rcm\", in turns, the faster of two runs each; {torch.get_num_threads()} CPU "
        "threads on the CPU",
        "none_s, rcm_fit_s: the fit's seconds; rcm_order_s: the renumbering's; x_rcm: none_s over rcm_fit_s + "
        "rcm_order_s; same_labels: the fraction of nodes with the same label in both",
    ]
    solvers = [s for s in args.fits.split(",") if s]
    for kind in args.graphs.split(","):
        X0 = make_graph(kind, n, device, args.seed)
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        X = permute(X0, torch.randperm(n, generator=gen))  # the graph in random node order
        graphs = {"random": (X, 0.0)}
        for method in ("rcm", "degree"):
            t0 = time.perf_counter()
            perm = locality_order(X, method)
            Xp = permute(X, perm)
            if device.type == "cuda":
                torch.cuda.synchronize()
            graphs[method] = (Xp, time.perf_counter() - t0)
        for r in [int(x) for x in args.ranks.split(",")]:
            U = torch.rand(n, r, device=device, generator=torch.Generator(device=device).manual_seed(args.seed))
            base = {}
            for order, (G, cost) in graphs.items():
                Gt, _ = torch_csr(G)
                ours = bench(lambda: sk.spmm(G, U), warmup=args.warmup, rep=args.rep, device=device)
                peer = bench(lambda: torch.sparse.mm(Gt, U), warmup=args.warmup, rep=args.rep, device=device)
                if order == "random":
                    base = {"ours": ours, "torch": peer}
                saved_ms = base["ours"] - ours
                rows.append({
                    "graph": kind, "n": n, "nnz": G.nnz, "r": r, "order": order, "order_s": cost,
                    "ours_ms": ours, "torch_ms": peer,
                    "x_random_ours": base["ours"] / ours, "x_random_torch": base["torch"] / peer,
                    "pays_after_spmms": (cost * 1e3 / saved_ms) if order != "random" and saved_ms > 0 else None,
                })
                write_table("bench_reorder", rows, COLUMNS, header_lines=header, out_dir=args.out, device=device,
                            echo=False)
        if solvers:
            for r in [int(x) for x in args.ranks.split(",")]:
                fit_rows += time_fits(kind, X, r, solvers, args.fit_iters, args.seed, device)
                write_table("bench_reorder_fit", fit_rows, FIT_COLUMNS, header_lines=fit_header, out_dir=args.out,
                            device=device, echo=False)
    if fit_rows:
        write_table("bench_reorder_fit", fit_rows, FIT_COLUMNS, out_dir=args.out, device=device, echo=True,
                    header_lines=fit_header)
    write_table("bench_reorder", rows, COLUMNS, out_dir=args.out, device=device, echo=True, header_lines=header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
