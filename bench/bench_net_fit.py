"""The whole default SymNMF-Net fit against SymHALS, end to end, on one device.

Rows: digits (Kuang's kNN graph of sklearn's 1797 digits) and planted20k (a 20,000-node
planted sparse graph, 8 blocks), r = number of classes. Variants, side by side in one run:

    hals        symnmf.solvers.solve(solver="hals"), the library's defaults (500 iterations, tolerance stop)
    net         fit_net(recipe="default"): 4 restarts batched, plateau stop, 100 SymHALS steps from each, the
                highest modularity of their labels kept
    net_loss    the same, keeping the restart of the lowest training loss and polishing it alone (select="loss",
                the earlier default): what the three extra polishes cost (CPU)
    net_blas    the default with the tall-skinny products on torch's BLAS instead of the extension's row loops
                (symnmf_kernels/ops/gram.py): what those loops save (CPU)
    net_ops     the default with the objective op by op, an autograd node per block and layer loss, instead of
                the one-node chain (python/symnmf/net_chain.py): what the chain saves (CPU)
    net_graph   the default with every training step replayed from a CUDA graph (cuda_graph=True)
    net_graph_loss  the same with select="loss" (CUDA)

Each fit runs once to compile and warm up, then the variants run in turns for `--repeats` rounds, so that a
machine whose speed drifts slows them alike; the median wall time is reported (a fit is seconds long, so
do_bench's sub-millisecond machinery does not apply).
x_hals = net time / SymHALS time (the cost target is net <= 5x SymHALS at 20k nodes).

    python bench/bench_net_fit.py                # writes bench/results/bench_net_fit-<date>-<device>.md
"""
import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import net_chain, tall_loops, write_table  # noqa: E402
from bench.study_net import load  # noqa: E402
from symnmf.metrics import accuracy  # noqa: E402
from symnmf.net import fit_net  # noqa: E402
from symnmf.solvers import solve  # noqa: E402

COLUMNS = ["graph", "n", "nnz", "r", "variant", "seconds", "x_hals", "steps", "acc", "rel_error", "note"]


def once(fn, device):
    """(seconds, result) of one call, the device synchronised on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def race(fits, device, repeats):
    """Median seconds and last result of each fit (name -> fn): one warm-up call each, then `repeats` rounds in
    which every fit runs once, in turns, so that a machine whose speed drifts slows all of them alike. A fit
    that raises is recorded as the exception and left out of later rounds."""
    times = {name: [] for name in fits}
    results = {}
    for name, fn in fits.items():
        try:
            once(fn, device)  # compile, warm up
        except Exception as exc:  # noqa: BLE001 - a failing variant is recorded, and the others still run
            results[name] = exc
    for _ in range(repeats):
        for name, fn in fits.items():
            if not isinstance(results.get(name), Exception):
                try:
                    t, results[name] = once(fn, device)
                    times[name].append(t)
                except Exception as exc:  # noqa: BLE001
                    results[name] = exc
    return {name: (statistics.median(times[name]) if times[name] else None, results.get(name)) for name in fits}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--graphs", nargs="+", default=["digits", "planted20k"],
                        help="data sets of bench/study_net.py (digits, planted, planted20k, mnist5k, mfeat-pix)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="results folder (default bench/results)")
    parser.add_argument("--name", default="bench_net_fit", help="table name (file <name>-<date>-<device>.md)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cpu_only = ["net_loss", "net_blas", "net_ops"]
    variants = ["hals", "net"] + (["net_graph", "net_graph_loss"] if device.type == "cuda" else cpu_only)

    rows = []
    for graph in args.graphs:
        X, labels = load(graph, seed=args.seed)
        r = int(labels.max()) + 1
        X = X.to(device)
        base = dict(graph=graph, n=X.shape[0], nnz=X._nnz() if X.layout != torch.strided else X.numel(), r=r)

        def fit(variant, X=X, r=r):
            if variant == "hals":
                return solve(X, r, solver="hals", random_state=args.seed)
            select = "loss" if variant.endswith("_loss") else None  # None: the recipe's rule
            # net_blas: torch's BLAS products instead of the row loops; net_ops: the objective op by op
            with tall_loops(variant != "net_blas"), net_chain(variant != "net_ops"):
                return fit_net(X, r, random_state=args.seed, cuda_graph=variant.startswith("net_graph"),
                               select=select)

        timings = race({variant: functools.partial(fit, variant) for variant in variants}, device, args.repeats)
        hals_s = timings["hals"][0]
        for variant in variants:
            s, res = timings[variant]
            row = dict(base, variant=variant)
            if isinstance(res, Exception):
                row["note"] = f"{type(res).__name__}: {str(res)[:120]}"
            else:
                U = res.U
                steps = res.n_iter
                err = res.history["rel_error"][-1] if variant == "hals" else res.relative_error
                row.update(seconds=s, steps=steps, acc=accuracy(labels, U.argmax(-1).cpu().numpy()),
                           rel_error=float(err))
                if hals_s:
                    row["x_hals"] = s / hals_s
            print(row, flush=True)
            rows.append(row)
    write_table(args.name, rows, COLUMNS, out_dir=args.out, device=device,
                header_lines=[f"seed {args.seed}; median of {args.repeats} fits after one warm-up fit, the variants "
                              f"in turns; torch threads {torch.get_num_threads()}"])


if __name__ == "__main__":
    main()
