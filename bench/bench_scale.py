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

`--graph planted` skips the points and the kNN search: a planted partition of `--clusters` balanced
clusters is drawn directly as a sparse graph on `--device` (each node gets `--per-row` / 2 edges, a
fraction `--inside` of them inside its cluster, weights uniform in [0.1, 1], symmetrised, duplicates
summed, D^-1/2 A D^-1/2). That is how the GPU runs reach 4M-10M nodes at r = 64 in a few seconds:

    python bench/bench_scale.py --graph planted --device cuda --n 4000000 --clusters 64 --net-steps 20

`--net-steps N` then times N SymNMF-Net training steps (default recipe, one restart) on the same graph;
`--net-fit` runs the whole default fit (`fit_net`: 4 restarts, plateau stop, SymHALS finish).
`--hals-phases` times each part of a SymHALS iteration alone on the solved factor (the SpMM, the Gram, the
sweep, the stopping check), to set beside the iteration's measured time.
On a GPU, memory is the peak allocated by torch (torch.cuda.max_memory_allocated) after each stage.

`--graph fashion` takes Fashion-MNIST's 70,000 images (pixels in [0, 1], 10 classes; Zalando's idx files
from SYMNMF_FASHION_MNIST=DIR, bench/study_net.py `load_fashion`) through the kNN graph (`--search`):

    SYMNMF_FASHION_MNIST=DIR OMP_NUM_THREADS=2 python bench/bench_scale.py --graph fashion --search faiss \
        --net-fit --name bench_scale_fashion
"""
import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.common import bench, write_table  # noqa: E402
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


def planted(n, clusters, per_row, inside, seed, device):
    """A planted partition as a CSR similarity on device: node i is in cluster i mod `clusters`; returns (X, labels)."""
    g = torch.Generator(device).manual_seed(seed)
    m = n * per_row // 2
    i = torch.randint(0, n, (m,), generator=g, device=device)
    labels = torch.arange(n, device=device) % clusters
    # a node of i's own cluster: its label plus a multiple of `clusters` below n
    j_same = labels[i] + clusters * torch.randint(0, n // clusters, (m,), generator=g, device=device)
    j_any = torch.randint(0, n, (m,), generator=g, device=device)
    j = torch.where(torch.rand(m, generator=g, device=device) < inside, j_same, j_any)
    keep = i != j
    i, j = i[keep], j[keep]
    w = torch.rand(i.numel(), generator=g, device=device) * 0.9 + 0.1
    del keep, j_same, j_any
    A = torch.sparse_coo_tensor(torch.stack([torch.cat([i, j]), torch.cat([j, i])]), torch.cat([w, w]), (n, n))
    del i, j, w
    A = A.coalesce()
    rows, cols = A.indices()
    values = A.values()
    degree = torch.zeros(n, device=device).index_add_(0, rows, values)
    values = values / torch.sqrt(degree[rows] * degree[cols])
    X = torch.sparse_coo_tensor(A.indices(), values, (n, n), is_coalesced=True).to_sparse_csr()
    return X, labels.cpu().numpy()


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in kB on Linux


def peak_gb(device):
    """Peak memory so far: torch's peak allocation on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return peak_rss_gb()


def hals_phases(X, U, lam, check_every, device):
    """Rows timing each part of a SymHALS iteration (python/symnmf/solvers/penalised.py `alternate`) on the
    solved factor U, the median of repeated runs: the SpMM, the Gram and the sweep run twice an iteration,
    the stopping check's half gradient and loss once every `check_every` iterations."""
    from symnmf.solvers.base import Problem
    from symnmf.solvers.penalised import half_gradient
    from symnmf_kernels.ops.hals import hals_sweep_

    problem = Problem(X)
    XU = problem.matmul(U)
    B = sk.gram(U, lam)
    F = U.clone()  # swept in place again and again: it stays near the fixed point U is close to
    parts = [
        ("spmm (X U)", 2, lambda: problem.matmul(U)),
        ("gram (U^T U + lam I)", 2, lambda: sk.gram(U, lam)),
        ("sweep (hals_sweep_)", 2, lambda: hals_sweep_(F, XU, B, V=U, lam=lam)),
        ("check: half gradient", 1 / check_every, lambda: half_gradient(U, B, XU, U, lam)),
        ("check: loss", 1 / check_every, lambda: problem.loss(U, XU)),
    ]
    rows, total = [], 0.0
    for name, per_iter, fn in parts:
        ms = bench(fn, device=device)
        total += per_iter * ms
        rows.append(dict(stage=f"symhals phase: {name}", n=X.shape[0], stored_entries=X._nnz(), r=U.shape[1],
                         seconds=ms / 1e3, notes=f"{per_iter:g} per iteration; median of repeated runs"))
    rows.append(dict(stage="symhals phases, one iteration", n=X.shape[0], stored_entries=X._nnz(), r=U.shape[1],
                     s_per_iter=total / 1e3, notes="the phases above, weighted by how often an iteration runs them"))
    return rows


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--neighbors", type=int, default=None, help="k of the kNN graph (default: the library's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-check progress lines from SymHALS")
    p.add_argument("--out", help="results folder (default bench/results)")
    p.add_argument("--name", default="bench_scale", help="table name (file <name>-<date>-<device>.md)")
    p.add_argument("--search", choices=["auto", "exact", "faiss"], default="auto",
                   help="the kNN search of the knn and fashion graphs (similarity_graph's neighbors)")
    p.add_argument("--net-fit", action="store_true", help="also run the whole default SymNMF-Net fit (fit_net)")
    p.add_argument("--graph", choices=["knn", "planted", "fashion"], default="knn",
                   help="knn: a kNN graph of mixture points (CPU); planted: a planted partition drawn on --device")
    p.add_argument("--device", default="cpu", help="where the graph (planted) and the solvers live")
    p.add_argument("--per-row", type=int, default=32, help="planted: stored entries per row (before duplicates)")
    p.add_argument("--inside", type=float, default=0.6, help="planted: fraction of each node's edges in its cluster")
    p.add_argument("--max-iter", type=int, default=None, help="SymHALS iterations at most (default: the library's)")
    p.add_argument("--net-steps", type=int, default=0, help="also time this many SymNMF-Net training steps")
    p.add_argument("--hals-phases", action="store_true",
                   help="also time each part of a SymHALS iteration alone (SpMM, Gram, sweep, stopping check)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    rows = []
    t0 = time.perf_counter()
    r = args.clusters
    if args.graph == "planted":
        X, labels = planted(args.n, r, args.per_row, args.inside, args.seed, device)
        sync(device)
        notes = f"planted, {r} clusters, {args.inside:.0%} of the edges inside"
    else:
        if args.graph == "fashion":
            from bench.study_net import load_fashion

            (train, y_train), (test, y_test) = load_fashion("train"), load_fashion("t10k")
            points, labels = np.concatenate([train, test]), np.concatenate([y_train, y_test])
            args.n, args.d = points.shape
            r = args.clusters = int(len(np.unique(labels)))
            del train, test
        else:
            points, labels = mixture(args.n, args.d, args.clusters, args.seed)
        kwargs = {} if args.neighbors is None else {"n_neighbors": args.neighbors}
        X = similarity_graph(points, dtype=torch.float32, neighbors=args.search, **kwargs).to(device)
        del points
        notes = f"d = {args.d}, {args.search} kNN search"
    graph_s = time.perf_counter() - t0
    nnz = X._nnz()
    state_mb = (nnz * 8 + (args.n + 1) * 8 + 4 * args.n * r * 4) / 1e6
    rows.append(dict(stage="graph", n=args.n, stored_entries=nnz, r="", seconds=graph_s, peak_rss_gb=peak_gb(device),
                     notes=f"{notes}, {nnz / args.n:.1f} entries per row"))
    print(rows[-1], flush=True)

    t0 = time.perf_counter()
    res = solve(X, r, solver="hals", random_state=args.seed, verbose=not args.quiet, max_iter=args.max_iter)
    sync(device)
    solve_s = time.perf_counter() - t0
    pred = res.U.argmax(1).cpu().numpy()
    rows.append(dict(stage="symhals", n=args.n, stored_entries=nnz, r=r, seconds=solve_s, iterations=res.n_iter,
                     s_per_iter=solve_s / max(res.n_iter, 1), converged=res.converged,
                     rel_error=res.history["rel_error"][-1], acc=accuracy(labels, pred), nmi=nmi(labels, pred),
                     peak_rss_gb=peak_gb(device), state_mb=state_mb,
                     notes=f"an n x n float32 matrix would be {args.n**2 * 4 / 1e9:.0f} GB"))
    print(rows[-1], flush=True)
    if args.hals_phases:
        rows += hals_phases(X, res.U, res.params["lam"], res.params["check_every"], device)
        for row in rows[-6:]:
            print(row, flush=True)
    del res

    if args.net_steps:
        from symnmf.net import CudaGraphCaptureError, SymNMFNet

        net = SymNMFNet(r, random_state=args.seed)
        steps = "CUDA-graph steps" if device.type == "cuda" else "eager steps"
        t0 = time.perf_counter()
        try:
            net.fit(X, epochs=args.net_steps, tol=None, cuda_graph=device.type == "cuda")
        except (torch.OutOfMemoryError, CudaGraphCaptureError) as exc:  # a row says so; the table keeps the rest
            cause = exc.__cause__ if isinstance(exc, CudaGraphCaptureError) else exc
            what = "out of memory" if isinstance(cause, torch.OutOfMemoryError) else "the CUDA-graph capture failed"
            rows.append(dict(stage="symnmf-net steps", n=args.n, stored_entries=nnz, r=r, peak_rss_gb=peak_gb(device),
                             notes=f"{what}: {str(cause).splitlines()[0][:200]}"))
        else:
            sync(device)
            fit_s = time.perf_counter() - t0
            times = net.history_["time"]  # seconds since the start at each record: record 0 is the initialisation
            per_step = (times[-1] - times[0]) / max(net.n_iter_, 1)
            with torch.no_grad():
                pred = net().argmax(-1).cpu().numpy()
            rows.append(dict(stage="symnmf-net steps", n=args.n, stored_entries=nnz, r=r, seconds=fit_s,
                             iterations=net.n_iter_, s_per_iter=per_step, rel_error=net.history_["relative_error"][-1],
                             acc=accuracy(labels, pred), nmi=nmi(labels, pred), peak_rss_gb=peak_gb(device),
                             notes=f"default recipe, one restart, L = {net.n_layers}; {steps}; "
                                   "seconds include the initialisation"))
        print(rows[-1], flush=True)

    if args.net_fit:
        from symnmf.net import fit_net

        t0 = time.perf_counter()
        fit = fit_net(X, r, random_state=args.seed)
        sync(device)
        fit_s = time.perf_counter() - t0
        pred = fit.labels.cpu().numpy()
        rows.append(dict(stage="symnmf-net fit", n=args.n, stored_entries=nnz, r=r, seconds=fit_s,
                         iterations=fit.n_iter, s_per_iter=fit_s / max(fit.n_iter, 1), rel_error=fit.relative_error,
                         acc=accuracy(labels, pred), nmi=nmi(labels, pred), peak_rss_gb=peak_gb(device),
                         notes="fit_net's default recipe: 4 restarts, kept by modularity, SymHALS finish; "
                               "s_per_iter: the whole fit's seconds over its training steps"))
        print(rows[-1], flush=True)

    memory = ("peak_rss_gb: torch's peak GPU allocation after the stage (torch.cuda.max_memory_allocated)"
              if device.type == "cuda" else
              "peak_rss_gb: the process's peak resident memory after the stage (ru_maxrss)")
    graph_line = (f"planted partition drawn on {device}: {r} balanced clusters, {args.per_row} entries per row "
                  f"before duplicates, {args.inside:.0%} inside; seed {args.seed}; float32"
                  if args.graph == "planted" else
                  (f"Fashion-MNIST, all {args.n} images, d = {args.d}, 10 classes" if args.graph == "fashion" else
                   f"Gaussian mixture, {args.clusters} centres, n = {args.n}, d = {args.d}") +
                  f", seed {args.seed}; float32; graph: symnmf.similarity_graph, neighbors={args.search!r} (auto: "
                  "FAISS HNSW from 200,000 rows where installed)")
    write_table(args.name, rows, COLUMNS, out_dir=args.out, device=device, header_lines=[
        graph_line,
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "symhals: solve(solver='hals') with its defaults (max_iter 500, tol 1e-3 on the projected-gradient norm)"
        + (f", max_iter {args.max_iter}" if args.max_iter else ""),
        memory + "; state_mb: CSR + 4 n x r factors",
    ])


if __name__ == "__main__":
    main()
