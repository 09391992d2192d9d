"""The ``symnmf`` command: cluster, reproduce, bench.

    symnmf cluster features.npy -k 10                 # features -> kNN graph -> SymNMF-Net -> labels
    symnmf cluster graph.mtx -k 4 --solver hals        # a precomputed affinity
    symnmf cluster --dataset digits --solver anls      # a named data set (labels give the metrics)
    symnmf reproduce --dataset digits                  # the paper's comparison table and convergence plots
    symnmf bench block --sizes tiny                    # bench/bench_block.py with the arguments after the name
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

from .datasets import DatasetUnavailableError

__all__ = ["main", "load_matrix", "build_parser"]

BENCHMARKS = {"block": "bench_block.py", "spmm": "bench_spmm.py", "solvers": "bench_solvers.py"}


class CommandError(Exception):
    """A user error reported as one line and exit status 2."""


# ----------------------------------------------------------------- loading input
def _is_sparse(A):
    import scipy.sparse as sp

    return sp.issparse(A)


def load_matrix(path, key=None):
    """(matrix, labels or None) from .npy, .npz (np.savez or scipy.sparse.save_npz), .mtx, .csv or .txt.

    An .npz of arrays gives the array under ``key`` (default: the first of X, affinity,
    features, data, else its first array) and the labels under "labels" or "y" if present.
    """
    if not os.path.exists(path):
        raise CommandError(f"input file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    labels = None
    if ext == ".npy":
        matrix = np.load(path, allow_pickle=False)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if {"format", "indptr", "indices", "data", "shape"} <= set(keys):
                import scipy.sparse as sp

                matrix = sp.load_npz(path).tocsr()
            else:
                if key is None:
                    key = next((k for k in ("X", "affinity", "features", "data") if k in keys), None)
                    key = key if key is not None else next(k for k in keys if k not in ("labels", "y"))
                if key not in keys:
                    raise CommandError(f"{path} has no array {key!r}; it has {keys} (choose one with --key)")
                matrix = archive[key]
                for name in ("labels", "y"):
                    if name in keys and name != key:
                        labels = archive[name]
                        break
    elif ext == ".mtx":
        import scipy.io

        matrix = scipy.io.mmread(path)
        if _is_sparse(matrix):
            matrix = matrix.tocsr()
    elif ext in (".csv", ".txt", ".tsv"):
        matrix = np.loadtxt(path, delimiter="," if ext == ".csv" else None, ndmin=2)
    else:
        raise CommandError(f"cannot read {path!r}: use .npy, .npz, .mtx, .csv or .txt")
    if not _is_sparse(matrix):
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise CommandError(
                f"{path} holds an array of shape {matrix.shape}; expected 2-D (samples x features or n x n)"
            )
        if not np.issubdtype(matrix.dtype, np.number):
            raise CommandError(f"{path} holds non-numeric data ({matrix.dtype})")
    return matrix, labels


def _load_labels(path):
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return np.load(path, allow_pickle=False).ravel()
    if ext in (".txt", ".csv", ".tsv"):
        with open(path) as f:
            return np.array([line.strip() for line in f if line.strip()])
    raise CommandError(f"cannot read labels from {path!r}: use .npy or a text file with one label per line")


def _looks_like_affinity(matrix):
    """Sparse input, or a square, symmetric, non-negative dense matrix."""
    if _is_sparse(matrix):
        return True
    if matrix.shape[0] != matrix.shape[1]:
        return False
    if not np.all(np.isfinite(matrix)) or matrix.min() < 0:
        return False
    return bool(np.allclose(matrix, matrix.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(matrix).max()))))


# ---------------------------------------------------------------------- cluster
def _cluster(args):  # torch is imported here, not at the top: `symnmf --help` stays fast
    from .graph import similarity_graph
    from .metrics import accuracy, nmi, purity
    from .reproduce import METHODS, run_method
    from .validation import as_similarity, check_rank, check_similarity

    if (args.input is None) == (args.dataset is None):
        raise CommandError("give either an input file or --dataset NAME (not both)")
    labels_true = None
    if args.dataset is not None:
        from . import datasets

        matrix, labels_true = datasets.load(args.dataset)
        source = f"data set {args.dataset}"
    else:
        matrix, labels_true = load_matrix(args.input, key=args.key)
        source = args.input
    if args.labels is not None:
        labels_true = _load_labels(args.labels)
    if labels_true is not None and len(labels_true) != matrix.shape[0]:
        raise CommandError(f"--labels has {len(labels_true)} entries but the input has {matrix.shape[0]} rows")

    affinity = args.affinity
    if affinity == "auto":
        affinity = "precomputed" if (args.dataset is None and _looks_like_affinity(matrix)) else "features"
    if affinity == "precomputed" and matrix.shape[0] != matrix.shape[1]:
        raise CommandError(f"--affinity precomputed needs a square n x n matrix, got shape {matrix.shape}")

    k = args.n_clusters
    if k is None:
        if labels_true is None:
            raise CommandError("pass the number of clusters with -k/--n-clusters (no labels to count classes from)")
        k = int(len(np.unique(labels_true)))
    if args.solver not in METHODS:
        raise CommandError(f"--solver must be one of {METHODS}")
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32

    start = time.perf_counter()
    if affinity == "features":
        features = matrix.toarray() if _is_sparse(matrix) else matrix
        X = similarity_graph(features, n_neighbors=args.n_neighbors, metric=args.metric, device=device, dtype=dtype)
        graph_note = (f"kNN graph ({args.metric}) of {features.shape[0]} x {features.shape[1]} features, "
                      f"nnz {X.values().numel()}")
    else:
        try:
            X = check_similarity(as_similarity(matrix, device=device, dtype=dtype), name="the affinity")
        except ValueError as err:
            raise CommandError(str(err)) from None
        graph_note = f"precomputed affinity {X.shape[0]} x {X.shape[1]}"
    graph_seconds = time.perf_counter() - start
    try:
        check_rank(k, X.shape[0], name="--n-clusters")
    except (ValueError, TypeError) as err:
        raise CommandError(str(err)) from None

    print(f"{source}: {graph_note} ({graph_seconds:.2f} s)")
    run = run_method(X, k, args.solver, max_iter=args.max_iter, epochs=args.epochs, lr=args.lr,
                     relative_lr=args.relative_lr, tol=args.tol,
                     seed=args.seed, device=device)
    result = {
        "input": source, "affinity": affinity, "solver": args.solver, "n_clusters": k, "n": int(X.shape[0]),
        "device": str(device), "rel_error": run.rel_error, "iterations": run.n_iter, "seconds": run.seconds,
        "graph_seconds": graph_seconds, "cluster_sizes": np.bincount(run.labels, minlength=k).tolist(),
    }
    if labels_true is not None:
        result.update({
            "acc": accuracy(labels_true, run.labels),
            "nmi_max": nmi(labels_true, run.labels, "max"),
            "nmi_arithmetic": nmi(labels_true, run.labels, "arithmetic"),
            "purity": purity(labels_true, run.labels),
        })
    print(f"{args.solver}: rank {k}, {run.n_iter} iterations, {run.seconds:.2f} s, "
          f"relative error ||X - UU^T||^2/||X||^2 = {run.rel_error:.4f}")
    print(f"cluster sizes: {result['cluster_sizes']}")
    if labels_true is not None:
        print(f"ACC {result['acc']:.4f}  NMI (MI/max H) {result['nmi_max']:.4f}  "
              f"NMI (MI/mean H) {result['nmi_arithmetic']:.4f}  purity {result['purity']:.4f}")

    os.makedirs(args.out, exist_ok=True)
    np.savetxt(os.path.join(args.out, "labels.txt"), run.labels, fmt="%d")
    np.save(os.path.join(args.out, "embedding.npy"), run.U.cpu().numpy())
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}/labels.txt, embedding.npy (the factor U), metrics.json")
    return 0


# -------------------------------------------------------------------- reproduce
def _reproduce(args):
    from . import datasets
    from .reproduce import METHODS, format_table, reproduce

    names = None
    if args.dataset and args.dataset != ["all"]:
        names = args.dataset
        missing = [n for n in names if n not in datasets.available() and n in datasets.names()]
        if missing:
            # load() raises the error that names the package to install.
            datasets.load(missing[0])
    methods = METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CommandError(f"unknown method(s) {unknown} in --methods; choose from {','.join(METHODS)}")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cpu" and args.threads:
        # Each op here is tens of microseconds of work: more threads gain nothing, and a
        # thread descheduled by other load stalls every op at its barrier.
        torch.set_num_threads(args.threads)
    rows = reproduce(
        datasets=names, methods=methods, max_iter=args.max_iter, epochs=args.epochs, lr=args.lr,
        relative_lr=args.relative_lr, beta=args.beta, tol=args.tol, runs=args.runs, seed=args.seed, device=device,
        subset=args.subset, out_dir=args.out, plot=not args.no_plot, log=print if not args.quiet else None,
    )
    print()
    print(format_table(rows))
    if args.out:
        print(f"wrote {os.path.join(args.out, 'results.md')} and results.json")
        if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
            print('no convergence plots: they need matplotlib (pip install "symnmf-kernels[plot]")')
    return 0


# ------------------------------------------------------------------------ bench
def _bench_dir(explicit):
    candidates = [explicit] if explicit else [
        os.environ.get("SYMNMF_BENCH_DIR"),
        os.path.join(os.getcwd(), "bench"),
        os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"),
    ]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "bench_block.py")):
            return path
    raise CommandError(
        "cannot find the bench/ folder of a symnmf-kernels checkout; run from the repository root, "
        "or pass --bench-dir PATH (or set SYMNMF_BENCH_DIR)"
    )


def _bench(args):
    folder = _bench_dir(args.bench_dir)
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    passthrough = list(args.args)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    status = 0
    for name in names:
        script = os.path.join(folder, BENCHMARKS[name])
        if not os.path.isfile(script):
            print(f"skipping {name}: {script} is not there", file=sys.stderr)
            status = status or 1
            continue
        command = [sys.executable, script, *passthrough]
        print("$ " + " ".join(command), flush=True)
        rc = subprocess.call(command)
        if rc != 0:
            print(f"{BENCHMARKS[name]} exited with status {rc}", file=sys.stderr)
            status = rc
    return status


# ----------------------------------------------------------------------- parser
def build_parser():
    parser = argparse.ArgumentParser(prog="symnmf", description="Symmetric NMF and SymNMF-Net clustering.")
    sub = parser.add_subparsers(dest="command", metavar="{cluster,reproduce,bench}")
    sub.required = True

    methods = "net, anls, hals, pgd, newton, admm"
    c = sub.add_parser("cluster", help="cluster features or an affinity matrix",
                       description="Cluster the rows of a feature matrix (via Kuang's kNN similarity graph) or "
                                   "the nodes of a precomputed affinity; print and save labels and metrics.")
    c.add_argument("input", nargs="?", help="features or affinity: .npy, .npz, .mtx, .csv or .txt")
    c.add_argument("--dataset", help="a named data set instead of a file (see `symnmf reproduce --help`)")
    c.add_argument("-k", "--n-clusters", type=int, help="number of clusters (default: number of classes in the labels)")
    c.add_argument("--solver", default="net", help=f"one of {methods} (default net: SymNMF-Net)")
    c.add_argument("--affinity", choices=("auto", "features", "precomputed"), default="auto",
                   help="auto: sparse or square symmetric non-negative input is an affinity, anything else features")
    c.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean",
                   help="graph of features: euclidean (self-tuning Gaussian) or cosine (text)")
    c.add_argument("--n-neighbors", type=int, help="kNN of the graph (default floor(log2 n) + 1)")
    c.add_argument("--labels", help="true labels (.npy or one per line) to score the clustering against")
    c.add_argument("--key", help="array name inside an .npz")
    c.add_argument("--max-iter", type=int, help="iterations of a classical solver (default: a quick setting)")
    c.add_argument("--epochs", type=int, help="training steps of SymNMF-Net (default 200)")
    c.add_argument("--lr", type=float, default=0.1,
                   help="SymNMF-Net learning rate, relative to each weight's initial scale (default 0.1)")
    c.add_argument("--absolute-lr", dest="relative_lr", action="store_false",
                   help="SymNMF-Net: the paper's absolute Adam step instead (the paper uses --lr 0.5 for images, "
                        "0.3 for text; on normalised graphs that step is far larger than the weights)")
    c.add_argument("--tol", type=float, help="stopping tolerance (projected-gradient norm relative to its start)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", help="cpu or cuda (default cuda when available)")
    c.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    c.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default 0: torch's default)")
    c.add_argument("--out", default="symnmf-cluster", help="output folder (default ./symnmf-cluster)")
    c.set_defaults(func=_cluster)

    r = sub.add_parser("reproduce", help="the paper's comparison table on the digit data sets",
                       description="SymNMF-Net against SymANLS, SymHALS, PGD, SymNewton and ADMM on each data set: "
                                   "relative error, ACC, NMI, purity, iterations and time; convergence PNGs.")
    r.add_argument("--dataset", nargs="+", help="digits, mnist5k, mfeat-pix, or all (default: all available)")
    r.add_argument("--methods", help=f"comma-separated subset of {methods} (default all)")
    r.add_argument("--max-iter", type=int,
                   help="iterations of every classical solver (default: a quick per-solver setting)")
    r.add_argument("--epochs", type=int, help="SymNMF-Net training steps (default 200)")
    r.add_argument("--lr", type=float, default=0.1,
                   help="SymNMF-Net learning rate, relative to each weight's initial scale (default 0.1)")
    r.add_argument("--beta", type=float, default=5e-6,
                   help="SymNMF-Net regulariser weight (paper 5e-6; about 0.1 keeps ReLU-cut entries alive on "
                        "normalised graphs, see SymNMFNet)")
    r.add_argument("--absolute-lr", dest="relative_lr", action="store_false",
                   help="SymNMF-Net: the paper's absolute Adam step instead (the paper uses --lr 0.5 for images, "
                        "0.3 for text; on normalised graphs that step is far larger than the weights)")
    r.add_argument("--tol", type=float, help="stopping tolerance passed to every method")
    r.add_argument("--runs", type=int, default=1, help="seeds per method; the table shows mean +- std")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", help="cpu or cuda (default cuda when available)")
    r.add_argument("--subset", type=int, help="use only this many samples of each data set")
    r.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: these problems are too small to gain from more; "
                        "0 keeps torch's default)")
    r.add_argument("--out", default="symnmf-results", help="folder for results.md, results.json and PNGs")
    r.add_argument("--no-plot", action="store_true", help="skip the convergence PNGs")
    r.add_argument("--quiet", action="store_true", help="print only the table")
    r.set_defaults(func=_reproduce)

    b = sub.add_parser("bench", help="run the benchmarks in bench/",
                       description="Run bench/bench_<name>.py; the arguments after the name go to the script "
                                   "(e.g. `symnmf bench block --sizes tiny`).")
    b.add_argument("--bench-dir", help="the bench/ folder (default: ./bench or the checkout's bench/)")
    b.add_argument("which", choices=(*BENCHMARKS, "all"), help="which benchmark")
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script")
    b.set_defaults(func=_bench)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandError as err:
        print(f"symnmf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except DatasetUnavailableError as err:
        print(f"symnmf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
