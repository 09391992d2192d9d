"""One large graph end to end on one machine: points -> kNN similarity graph -> SymHALS -> clusters.

Data: a Gaussian mixture of `--clusters` centres (unit noise, centres about 3 sigma apart, as in
bench_graph.py), n x d float32. The graph is symnmf.similarity_graph (self-tuning Gaussian
weights, D^-1/2 A D^-1/2; FAISS HNSW from 200,000 rows where installed); SymHALS runs at
r = the number of clusters with the library's defaults (500 iterations at most, stop when the
projected-gradient norm falls below 1e-3 of its first value), printing its progress.

Reported per stage: seconds, and the process's peak resident memory after it (ru_maxrss; it
never falls). `state_mb` is what the factorisation has to hold: the CSR (8 bytes per stored
entry for value and index, 8 per row pointer) and a few n x r float32 factors, against which
the peak is compared; an n x n matrix would be n^2 x 4 bytes.

    OMP_NUM_THREADS=1 python bench/bench_scale.py                 # 1,000,000 x 16, 10 clusters
    python bench/bench_scale.py --n 200000 --out /tmp/x           # a smaller run
"""
import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import write_table  # noqa: E402
from symnmf.graph import similarity_graph  # noqa: E402
from symnmf.metrics import accuracy, nmi  # noqa: E402
from symnmf.solvers import solve  # noqa: E402

COLUMNS = ["stage", "n", "stored_entries", "r", "seconds", "iterations", "s_per_iter", "converged", "rel_error",
           "acc", "nmi", "peak_rss_gb", "state_mb", "notes"]


def mixture(n, d, clusters, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * (3.0 / np.sqrt(2))
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in kB on Linux


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--neighbors", type=int, default=None, help="k of the kNN graph (default: the library's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-check progress lines from SymHALS")
    p.add_argument("--out", help="results folder (default bench/results)")
    args = p.parse_args(argv)

    rows = []
    t0 = time.perf_counter()
    points, labels = mixture(args.n, args.d, args.clusters, args.seed)
    kwargs = {} if args.neighbors is None else {"n_neighbors": args.neighbors}
    X = similarity_graph(points, dtype=torch.float32, **kwargs)
    graph_s = time.perf_counter() - t0
    nnz = X._nnz()
    del points
    r = args.clusters
    state_mb = (nnz * 8 + (args.n + 1) * 8 + 4 * args.n * r * 4) / 1e6
    rows.append(dict(stage="graph", n=args.n, stored_entries=nnz, r="", seconds=graph_s, peak_rss_gb=peak_rss_gb(),
                     notes=f"d = {args.d}, {nnz / args.n:.1f} entries per row"))
    print(rows[-1], flush=True)

    t0 = time.perf_counter()
    res = solve(X, r, solver="hals", random_state=args.seed, verbose=not args.quiet)
    solve_s = time.perf_counter() - t0
    pred = res.U.argmax(1).numpy()
    rows.append(dict(stage="symhals", n=args.n, stored_entries=nnz, r=r, seconds=solve_s, iterations=res.n_iter,
                     s_per_iter=solve_s / max(res.n_iter, 1), converged=res.converged,
                     rel_error=res.history["rel_error"][-1], acc=accuracy(labels, pred), nmi=nmi(labels, pred),
                     peak_rss_gb=peak_rss_gb(), state_mb=state_mb,
                     notes=f"an n x n float32 matrix would be {args.n**2 * 4 / 1e9:.0f} GB"))
    print(rows[-1], flush=True)
    write_table("bench_scale", rows, COLUMNS, out_dir=args.out, device="cpu", header_lines=[
        f"Gaussian mixture, {args.clusters} centres, n = {args.n}, d = {args.d}, seed {args.seed}; float32",
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "graph: symnmf.similarity_graph (FAISS HNSW from 200,000 rows where installed); symhals: solve(solver='hals') "
        "with its defaults (max_iter 500, tol 1e-3 on the projected-gradient norm)",
        "peak_rss_gb: the process's peak resident memory after the stage (ru_maxrss); state_mb: CSR + 4 n x r factors",
    ])


if __name__ == "__main__":
    main()
