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
import math
import os
import subprocess
import sys
import time
import zipfile

import numpy as np

from .datasets import DatasetUnavailableError
from .validation import is_scipy_sparse

__all__ = ["main", "load_matrix", "build_parser"]

BENCHMARKS = {"block": "bench_block.py", "spmm": "bench_spmm.py", "solvers": "bench_solvers.py",
              "reorder": "bench_reorder.py", "cpu": "bench_cpu.py", "nnls": "bench_nnls.py", "graph": "bench_graph.py"}
# What `symnmf bench all` runs: the kernel benchmarks on a GPU, the CPU backend's on the CPU.
BENCH_ALL = {"cuda": ("block", "spmm", "solvers"), "cpu": ("cpu",)}


class CommandError(Exception):
    """A user error reported as one line and exit status 2."""


CLUSTER_FILES = ("labels.txt", "embedding.npy", "metrics.json")
REPRODUCE_FILES = ("results.md", "results.json")


# ----------------------------------------------------------------- loading input
def _read(path, key):
    """The raw contents of path: (matrix, labels or None); CommandError for a file that cannot be read."""
    import warnings

    ext = os.path.splitext(path)[1].lower()
    labels = None
    if ext == ".npy":
        matrix = np.load(path, allow_pickle=False)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if {"format", "shape"} <= set(keys):  # scipy.sparse.save_npz, in any of its formats (CSR, COO, DIA, ...)
                import scipy.sparse as sp

                matrix = sp.load_npz(path).tocsr()
            else:
                if not keys:
                    raise CommandError(f"{path} holds no arrays")
                if key is None:
                    key = next((k for k in ("X", "affinity", "features", "data") if k in keys), None)
                    key = key if key is not None else next((k for k in keys if k not in ("labels", "y")), keys[0])
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
        if is_scipy_sparse(matrix):
            matrix = matrix.tocsr()
    elif ext in (".csv", ".txt", ".tsv"):
        with warnings.catch_warnings():  # an empty file: reported below as empty
            warnings.simplefilter("ignore", UserWarning)
            matrix = np.loadtxt(path, delimiter="," if ext == ".csv" else None, ndmin=2)
    else:
        raise CommandError(f"cannot read {path!r}: use .npy, .npz, .mtx, .csv or .txt")
    return matrix, labels


def _read_shards(path):
    """The whole graph of a shards folder in its nodes' own order (`symnmf.distributed.read_shards`);
    CommandError for a folder that holds none."""
    from .distributed import SHARDS_INDEX, read_shards

    if not os.path.exists(os.path.join(path, SHARDS_INDEX)):
        raise CommandError(f"input {path!r} is a folder without {SHARDS_INDEX}: give a file, or a folder of "
                           "graph shards")
    try:
        return read_shards(path)
    except (OSError, ValueError, KeyError) as err:
        raise CommandError(f"cannot read the shards in {path}: {_one_line(err)}") from None


def load_matrix(path, key=None):
    """(matrix, labels or None) from .npy, .npz (np.savez or scipy.sparse.save_npz), .mtx, .csv or .txt.

    An .npz of arrays gives the array under ``key`` (default: the first of X, affinity,
    features, data, else its first array) and the labels under "labels" or "y" if present.
    Raises CommandError, with a one-line reason, for a missing, unreadable, empty,
    non-numeric or non-2-D matrix, or one with NaN or infinite entries.
    """
    if not os.path.exists(path):
        raise CommandError(f"input file {path!r} does not exist")
    if os.path.isdir(path):
        return _check_matrix(_read_shards(path), path), None
    _check_format(path)
    try:
        matrix, labels = _read(path, key)
    except CommandError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise CommandError(
                f"{path} holds an object array (Python objects), not numbers; save a numeric array, "
                "e.g. np.save(path, X.astype(float))"
            ) from None
        raise CommandError(f"cannot read {path}: {_one_line(err)}") from None
    except (OSError, EOFError, KeyError, TypeError) as err:
        raise CommandError(f"cannot read {path}: {_one_line(err)}") from None
    return _check_matrix(matrix, path), labels


def _check_format(path):
    """A .npy or .npz whose first bytes are not numpy's or a zip archive's: numpy would read any other bytes as a
    pickle and refuse it as an object array, which misnames the problem."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".npz"):
        return
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as err:
        raise CommandError(f"cannot read {path}: {_one_line(err)}") from None
    if ext == ".npy" and head != np.lib.format.MAGIC_PREFIX:
        raise CommandError(f"{path} is not a .npy file (numpy's header is missing); save it with np.save")
    if ext == ".npz" and not zipfile.is_zipfile(path):
        raise CommandError(f"{path} is not a .npz file (not a zip archive); save it with np.savez or "
                           "scipy.sparse.save_npz")


def _one_line(err):
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _check_matrix(matrix, source):
    """matrix (numpy or scipy.sparse) checked: 2-D, numeric (not complex), non-empty, finite."""
    if not is_scipy_sparse(matrix):
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise CommandError(
                f"{source} holds an array of shape {matrix.shape}; expected 2-D (samples x features or n x n)"
            )
    values = matrix.data if is_scipy_sparse(matrix) else matrix
    if np.issubdtype(values.dtype, np.complexfloating) or not (
        np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_
    ):
        raise CommandError(f"{source} holds non-numeric data ({values.dtype}); expected real numbers")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise CommandError(f"{source} is empty (shape {matrix.shape})")
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            where = ""
            if not is_scipy_sparse(matrix):
                i, j = np.argwhere(bad)[0]
                where = f", the first at row {i}, column {j}"
            raise CommandError(
                f"{source} has {int(bad.sum())} NaN or infinite entries{where}; clean or impute them first"
            )
    return matrix


def _load_labels(path):
    if not os.path.exists(path):
        raise CommandError(f"labels file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            return np.load(path, allow_pickle=False).ravel()
        if ext in (".txt", ".csv", ".tsv"):
            with open(path) as f:
                return np.array([line.strip() for line in f if line.strip()])
    except (ValueError, OSError) as err:
        raise CommandError(f"cannot read labels from {path}: {_one_line(err)}") from None
    raise CommandError(f"cannot read labels from {path!r}: use .npy or a text file with one label per line")


def _looks_like_affinity(matrix):
    """Square sparse input, or a square, symmetric, non-negative dense matrix (sparse features, e.g. tf-idf,
    are not square)."""
    if matrix.shape[0] != matrix.shape[1]:
        return False
    if is_scipy_sparse(matrix):
        return True
    if not np.all(np.isfinite(matrix)) or matrix.min() < 0:
        return False
    return bool(np.allclose(matrix, matrix.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(matrix).max()))))


def _check_numbers(args):
    """The numeric options cluster and reproduce share, before any work: finite, and in range."""
    for name, low, strict in (("tol", 0.0, False), ("lr", 0.0, True), ("beta", 0.0, False)):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and (value > low if strict else value >= low)):
            raise CommandError(f"--{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value}")
    for name in ("max_iter", "epochs"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 0, got {value}")


def _check_save_graph(path, overwrite):
    """Check --save-graph before any work: a folder (or a new name), holding no shard files unless --overwrite."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"--save-graph {path!r} is an existing file; give a folder for the graph's shard files")
    if os.path.exists(os.path.join(path, "shards.json")) and not overwrite:
        raise CommandError(f"--save-graph {path!r} already holds a saved graph; pass --overwrite to replace it, or "
                           "choose another folder")


def _check_out(out, overwrite, files):
    """Check --out before any work: a folder (or a new name) whose output files exist only with --overwrite."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CommandError(f"--out {out!r} is an existing file; give a folder for the results")
    existing = [name for name in files if os.path.exists(os.path.join(out, name))]
    blocking = [name for name in existing if not os.path.isfile(os.path.join(out, name))]
    if blocking:  # found only when the results are written, after the fit
        raise CommandError(f"--out {out!r} holds {', '.join(blocking)}, which is not a file; remove it or choose "
                           "another --out")
    if existing and not overwrite:
        raise CommandError(
            f"--out {out!r} already holds {', '.join(existing)}; pass --overwrite to replace them, or choose "
            "another --out"
        )
    if os.path.isdir(out) and not os.access(out, os.W_OK):
        raise CommandError(f"--out {out!r} is not writable")


def _make_out(out):
    """Create the --out folder (after the checks, before the fit)."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise CommandError(f"cannot create --out {out!r}: {_one_line(err)}") from None


def _threads(value):
    """--threads: 0 is the library's policy ("auto"), n > 0 exactly n threads."""
    if value < 0:
        raise CommandError(f"--threads must be >= 0, got {value}")
    return "auto" if value == 0 else value


def _device(name):
    from .fitting import resolve_device
    from .validation import check_device

    try:
        return resolve_device(check_device(name, name="--device"))
    except ValueError as err:
        raise CommandError(str(err)) from None


# ---------------------------------------------------------------------- cluster
def _sharded_source(args):
    """(source, affinity, n, labels or None) for `symnmf.distributed.cluster`: a graph file or folder each rank
    reads its own rows of, an .npy of features each rank reads its own rows of, or a matrix every rank loads
    (a --dataset, and other formats)."""
    if args.dataset is not None:
        from . import datasets

        try:
            matrix, labels = datasets.load(args.dataset)
        except ValueError as err:
            raise CommandError(f"--dataset: {err}") from None
        return matrix, "nearest_neighbors", matrix.shape[0], labels
    import zipfile

    path = args.input
    if not os.path.exists(path):
        raise CommandError(f"input file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    try:
        if os.path.isdir(path):
            from .distributed import SHARDS_INDEX

            with open(os.path.join(path, SHARDS_INDEX)) as f:
                n_graph = int(json.load(f)["n"])
        elif ext == ".npz":
            from .distributed import _read_small

            with zipfile.ZipFile(path) as zf:
                graph_file = {"format.npy", "indptr.npy", "indices.npy"} <= set(zf.namelist())
                n_graph = int(_read_small(zf, "shape")[0]) if graph_file else None
        else:
            n_graph = None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise CommandError(f"cannot read {path}: {_one_line(err)}") from None
    if n_graph is not None:
        if args.affinity == "features":
            raise CommandError(f"{path} is a sparse graph (a precomputed affinity), not features")
        return path, "precomputed", n_graph, None
    if ext == ".npy" and args.affinity != "precomputed":
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError) as err:
            raise CommandError(f"cannot read {path}: {_one_line(err)}") from None
        if args.affinity == "features" or len(shape) != 2 or shape[0] != shape[1]:
            if len(shape) != 2:
                raise CommandError(f"{path} holds a {len(shape)}-D array; features are (n_samples, n_features)")
            return path, "nearest_neighbors", shape[0], None  # each rank maps the file and reads its own rows
    matrix, labels = load_matrix(path, key=args.key)
    affinity = args.affinity
    if affinity == "auto":
        affinity = "precomputed" if _looks_like_affinity(matrix) else "features"
    if affinity == "precomputed" and matrix.shape[0] != matrix.shape[1]:
        raise CommandError(f"--affinity precomputed needs a square n x n matrix, got shape {matrix.shape}")
    return matrix, "precomputed" if affinity == "precomputed" else "nearest_neighbors", matrix.shape[0], labels


def _check_labels(labels_true, n):
    """CommandError for true labels that cannot score a clustering of n samples: another length, or NaN (which
    np.unique would count as a class of its own, and the scores refuse after the whole fit)."""
    if labels_true is None:
        return
    if len(labels_true) != n:
        raise CommandError(f"--labels has {len(labels_true)} entries but the input has {n} rows")
    if np.asarray(labels_true).dtype.kind in "fc" and not np.all(np.isfinite(labels_true)):
        raise CommandError("the true labels have NaN or infinite entries: every sample needs a label")


def _n_clusters(args, labels_true, n):
    """-k, or the number of classes in the labels; CommandError without either, or outside [1, n]."""
    k = args.n_clusters
    if k is None:
        if labels_true is None:
            raise CommandError("pass the number of clusters with -k/--n-clusters (no labels to count classes from)")
        k = int(len(np.unique(labels_true)))
    if k < 1 or k > n:
        raise CommandError(f"--n-clusters = {k} must be between 1 and the number of nodes n = {n}")
    return k


def _scores(labels_true, labels):
    from .metrics import accuracy, nmi, purity

    return {"acc": accuracy(labels_true, labels), "nmi_max": nmi(labels_true, labels, "max"),
            "nmi_arithmetic": nmi(labels_true, labels, "arithmetic"), "purity": purity(labels_true, labels)}


def _print_scores(result):
    print(f"ACC {result['acc']:.4f}  NMI (MI/max H) {result['nmi_max']:.4f}  "
          f"NMI (MI/mean H) {result['nmi_arithmetic']:.4f}  purity {result['purity']:.4f}")


def _max_iter(args):
    """The fit's max_iter: --max-iter, or for SymNMF-Net its training steps (--epochs, or --max-iter as SymNMF's
    max_iter is for the net)."""
    if args.solver == "net" and args.epochs is not None:
        return args.epochs
    return args.max_iter


def _cluster_sharded(args, threads):
    """`symnmf cluster` under torchrun: each rank reads its own rows of the graph, or of the features and
    builds its rows of the kNN graph with the other ranks (symnmf.distributed, symnmf.distributed_graph)."""
    from . import distributed

    if args.solver not in distributed.SOLVERS:
        raise CommandError(f"--solver {args.solver} is not sharded; under torchrun use one of "
                           f"{', '.join(sorted(distributed.SOLVERS))}")
    if args.n_init != 1:
        raise CommandError("--n-init is for one process; under torchrun each solver runs from one start")
    source, affinity, n, labels_true = _sharded_source(args)
    if affinity == "precomputed" and args.save_graph:
        raise CommandError("--save-graph saves a graph built from features; the input is already a graph")
    if affinity == "nearest_neighbors" and args.neighbors == "faiss":
        raise CommandError("under torchrun the ranks search the neighbours exactly; --neighbors faiss is for one "
                           "process (or build the graph first and pass the .npz)")
    if args.labels is not None:
        labels_true = _load_labels(args.labels)
    _check_labels(labels_true, n)
    k = _n_clusters(args, labels_true, n)
    options = {}
    if args.solver == "net":  # the same recipe and settings as the single-process fit
        options = {"recipe": args.recipe, **{name: value for name, value in
                                             (("lr", args.lr), ("relative_lr", args.relative_lr), ("beta", args.beta),
                                              ("n_restarts", args.restarts))
                                             if value is not None}}
    try:
        run = distributed.cluster(source, k, args.solver, seed=args.seed, max_iter=_max_iter(args),
                                  tol=args.tol, dtype=args.dtype, device=args.device, threads=threads, out=args.out,
                                  return_fit=True, affinity=affinity, n_neighbors=args.n_neighbors,
                                  metric=args.metric, save_graph=args.save_graph, **options)
    except ValueError as err:  # bad input, found by every rank alike
        raise CommandError(_one_line(err)) from None
    if run is None:  # not rank 0
        return 0
    graph = (f"kNN graph ({args.metric}) built on {run.world_size} ranks in {run.params['graph_seconds']:.2f} s, "
             if affinity == "nearest_neighbors" else "")
    print(f"{args.solver}: rank {k}, {graph}{run.n_iter} iterations, {run.seconds:.2f} s on "
          f"{run.world_size} ranks, relative error {run.rel_error:.4f}, modularity of the labels {run.modularity:.4f}")
    if labels_true is not None:
        scores = _scores(labels_true, run.labels)
        _print_scores(scores)
        if args.out is not None:  # rank 0 wrote metrics.json: add the scores
            path = os.path.join(args.out, "metrics.json")
            with open(path) as f:
                metrics = json.load(f)
            metrics.update(scores)
            with open(path, "w") as f:
                json.dump(metrics, f, indent=2)
    return 0


def _cluster(args):  # torch is imported here, not at the top: `symnmf --help` stays fast
    from . import datasets
    from .fitting import SOLVERS, build_affinity, fit_affinity, resolve_node_order

    # Every argument and the input are checked before any fit.
    if (args.input is None) == (args.dataset is None):
        raise CommandError("give either an input file or --dataset NAME (not both)")
    if args.solver not in SOLVERS:
        raise CommandError(f"--solver must be one of {', '.join(SOLVERS)}, got {args.solver!r}")
    for name in ("n_neighbors", "n_init", "restarts"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    _check_numbers(args)
    if args.n_init != 1 and args.solver == "net":
        raise CommandError("--n-init applies to the classical solvers; SymNMF-Net's restarts are --restarts")
    if args.restarts is not None and args.solver != "net":
        raise CommandError("--restarts applies to SymNMF-Net; the classical solvers' starts are --n-init")
    if args.solver != "net":  # SymNMF-Net's settings would be ignored
        given = [flag for flag, value in (("--epochs", args.epochs), ("--lr", args.lr), ("--beta", args.beta),
                                          ("--absolute-lr", args.relative_lr)) if value is not None]
        if given:
            raise CommandError(f"{', '.join(given)} applies to SymNMF-Net (--solver net), not to --solver "
                               f"{args.solver}")
    elif args.epochs is not None and args.max_iter is not None and args.epochs != args.max_iter:
        raise CommandError("--max-iter and --epochs both set SymNMF-Net's training steps: give one")
    threads = _threads(args.threads)
    _check_out(args.out, args.overwrite, CLUSTER_FILES)
    if args.save_graph:
        _check_save_graph(args.save_graph, args.overwrite)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _cluster_sharded(args, threads)
    labels_true = None
    if args.dataset is not None:
        try:
            matrix, labels_true = datasets.load(args.dataset)
        except ValueError as err:
            raise CommandError(f"--dataset: {err}") from None
        source = f"data set {args.dataset}"
    else:
        matrix, labels_true = load_matrix(args.input, key=args.key)
        source = args.input
    if args.labels is not None:
        labels_true = _load_labels(args.labels)
    _check_labels(labels_true, matrix.shape[0])

    affinity = args.affinity
    if affinity == "auto":
        affinity = "precomputed" if (args.dataset is None and _looks_like_affinity(matrix)) else "features"
    if affinity == "precomputed" and matrix.shape[0] != matrix.shape[1]:
        raise CommandError(f"--affinity precomputed needs a square n x n matrix, got shape {matrix.shape}")
    if affinity == "features" and matrix.shape[0] < 2:
        raise CommandError(f"{source} has {matrix.shape[0]} sample; clustering needs at least 2")
    if affinity == "precomputed" and args.save_graph:
        raise CommandError("--save-graph saves a graph built from features; the input is already a graph")

    k = _n_clusters(args, labels_true, matrix.shape[0])
    device = _device(args.device)

    start = time.perf_counter()
    try:
        X = build_affinity(
            matrix, "precomputed" if affinity == "precomputed" else "nearest_neighbors",
            n_neighbors=args.n_neighbors, metric=args.metric, device=device, dtype=args.dtype,
            neighbors=args.neighbors,
        )
    except ValueError as err:
        raise CommandError(_one_line(err)) from None
    graph_seconds = time.perf_counter() - start
    node_order = None if args.node_order == "none" else args.node_order
    try:
        resolve_node_order(node_order, X)
    except ValueError as err:
        raise CommandError("--node-order: " + _one_line(err).replace("node_order=None", "--node-order none")) from None
    if affinity == "features":
        graph_note = (f"kNN graph ({args.metric}) of {matrix.shape[0]} x {matrix.shape[1]} features, "
                      f"nnz {X.values().numel()}")
    else:
        graph_note = f"precomputed affinity {X.shape[0]} x {X.shape[1]}"
    print(f"{source}: {graph_note} ({graph_seconds:.2f} s)")
    if args.save_graph:  # the format the ranks write under torchrun: one shard file
        import scipy.sparse as sp

        from .distributed import save_shards

        csr = X.cpu()
        save_shards(sp.csr_matrix((csr.values().numpy(), csr.col_indices().numpy(), csr.crow_indices().numpy()),
                                  shape=tuple(csr.shape)), args.save_graph, 1)
    _make_out(args.out)

    run = fit_affinity(
        X, k, args.solver, random_state=args.seed,
        max_iter=_max_iter(args), tol=args.tol, threads=threads,
        net_options={"lr": args.lr, "relative_lr": args.relative_lr, "beta": args.beta, "n_restarts": args.restarts},
        recipe=args.recipe,
        n_init=args.n_init,
        node_order=node_order,
    )
    result = {
        "input": source, "affinity": affinity, "solver": args.solver, "n_clusters": k, "n": int(X.shape[0]),
        "device": str(device), "dtype": str(X.dtype).replace("torch.", ""), "rel_error": run.rel_error,
        "scale": run.scale, "modularity": run.modularity, "iterations": run.n_iter, "seconds": run.seconds,
        "graph_seconds": graph_seconds, "node_order": run.node_order, "order_seconds": run.order_seconds,
        "cluster_sizes": np.bincount(run.labels, minlength=k).tolist(),
    }
    if args.n_init > 1:
        result.update(n_init=args.n_init, start=run.start, start_modularity=run.start_modularity)
    if labels_true is not None:
        result.update(_scores(labels_true, run.labels))
    print(f"{args.solver}: rank {k}, {run.n_iter} iterations, {run.seconds:.2f} s, "
          f"relative error ||X - UU^T||^2/||X||^2 = {run.rel_error:.4f}")
    print(f"cluster sizes: {result['cluster_sizes']}; modularity of the labels on the graph "
          f"{result['modularity']:.4f}")
    if labels_true is not None:
        _print_scores(result)

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
        try:
            names = [datasets.resolve(name) for name in args.dataset]
        except ValueError as err:
            raise CommandError(f"--dataset: {err}") from None
        for name in names:
            reason = datasets.why_unavailable(name)
            if reason is not None:
                raise datasets.DatasetUnavailableError(f"data set {name!r} cannot be loaded: {reason}")
    methods = METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CommandError(f"unknown method(s) {unknown} in --methods; choose from {','.join(METHODS)}")
    if not methods:
        raise CommandError(f"--methods names no method; choose from {','.join(METHODS)}")
    if args.runs < 1:
        raise CommandError(f"--runs must be >= 1, got {args.runs}")
    if args.subset is not None and args.subset < 2:  # a graph needs two samples
        raise CommandError(f"--subset must be >= 2, got {args.subset}")
    _check_numbers(args)
    threads = _threads(args.threads)
    device = _device(args.device)
    if args.out:
        _check_out(args.out, args.overwrite, REPRODUCE_FILES)
        _make_out(args.out)
    rows = reproduce(
        datasets=names, methods=methods, max_iter=args.max_iter, epochs=args.epochs, lr=args.lr,
        relative_lr=args.relative_lr, beta=args.beta, tol=args.tol, runs=args.runs, seed=args.seed, device=device,
        subset=args.subset, out_dir=args.out, plot=not args.no_plot, log=print if not args.quiet else None,
        dtype=args.dtype, threads=threads,
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


def _cuda_available():
    import torch

    return torch.cuda.is_available()


def _bench(args):
    folder = _bench_dir(args.bench_dir)
    device = args.device or ("cuda" if importlib.util.find_spec("torch") and _cuda_available() else "cpu")
    names = list(BENCH_ALL[device]) if args.which == "all" else [args.which]
    passthrough = list(args.args)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    if args.device:
        # bench_cpu.py and bench_graph.py measure the CPU only; the others take --device.
        passthrough_for = {name: passthrough if name in ("cpu", "graph") else ["--device", args.device, *passthrough]
                           for name in names}
    else:
        passthrough_for = {name: passthrough for name in names}
    status = 0
    for name in names:
        script = os.path.join(folder, BENCHMARKS[name])
        if not os.path.isfile(script):
            print(f"skipping {name}: {script} is not there", file=sys.stderr)
            status = status or 1
            continue
        command = [sys.executable, script, *passthrough_for[name]]
        print("$ " + " ".join(command), flush=True)
        rc = subprocess.call(command)
        if rc != 0:
            print(f"{BENCHMARKS[name]} exited with status {rc}", file=sys.stderr)
            status = rc
    return status


# ----------------------------------------------------------------------- parser
def _net_arguments(p, recipe=True):
    from .net import RECIPES

    if recipe:
        p.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                       help="SymNMF-Net's training recipe (default: the library's, 4 restarts, each finished by "
                            "SymHALS, the one whose labels have the highest modularity kept; paper: the paper's "
                            "settings); the options below override it")
    p.add_argument("--lr", type=float, default=None,
                   help="SymNMF-Net learning rate, relative to each weight's initial scale (default: the recipe's)")
    p.add_argument("--absolute-lr", dest="relative_lr", action="store_const", const=False, default=None,
                   help="SymNMF-Net: the paper's absolute Adam step instead (the paper uses --lr 0.5 for images, "
                        "0.3 for text; on normalised graphs that step is far larger than the weights)")
    p.add_argument("--beta", type=float, default=None,
                   help="SymNMF-Net regulariser weight (default: the recipe's)")


def _run_arguments(p):
    p.add_argument("--device", help="cpu or cuda (default cuda when available)")
    p.add_argument("--dtype", choices=("auto", "float32", "float64"), default="auto",
                   help="precision (default auto: the input's float precision, float64 for integer data, as SymNMF)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch during each fit (default 0: one thread when n * k, times the net's "
                        "restarts or the starts, < 2^18, torch's default above; the policy of SymNMF, see "
                        "symnmf.fitting)")


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
                   help="auto: square sparse or square symmetric non-negative input is an affinity, anything else "
                        "features")
    c.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean",
                   help="graph of features: euclidean (self-tuning Gaussian) or cosine (text)")
    c.add_argument("--n-neighbors", type=int, help="kNN of the graph (default floor(log2 n) + 1)")
    c.add_argument("--save-graph", metavar="DIR",
                   help="also save the kNN graph built from features as shard files in DIR (any number of ranks, "
                        "or one process, can cluster DIR again without rebuilding it)")
    c.add_argument("--neighbors", choices=("auto", "exact", "faiss"), default="auto",
                   help="the neighbour search: exact blocked products, FAISS's approximate HNSW index, or auto "
                        "(FAISS for 200,000 CPU rows or more when it is installed; always exact under torchrun)")
    c.add_argument("--labels", help="true labels (.npy or one per line) to score the clustering against")
    c.add_argument("--key", help="array name inside an .npz")
    c.add_argument("--max-iter", type=int,
                   help="iterations of a classical solver (default: symnmf.fitting.DEFAULT_MAX_ITER, as SymNMF), "
                        "or SymNMF-Net's training steps, as --epochs")
    c.add_argument("--n-init", type=int, default=1,
                   help="classical solvers: random starts, the one whose labels have the highest modularity kept "
                        "(the rule SymNMF-Net keeps its restarts by; SymHALS runs them side by side; default 1)")
    c.add_argument("--epochs", type=int, help="SymNMF-Net's most training steps (default: the recipe's)")
    c.add_argument("--restarts", type=int,
                   help="SymNMF-Net's restarts trained side by side (default: the recipe's; each holds its own "
                        "weights and optimiser state, so fewer need less memory)")
    _net_arguments(c)
    c.add_argument("--tol", type=float, help="stopping tolerance: the classical solvers' projected-gradient norm "
                                             "relative to its start; the net's plateau tolerance (default: the "
                                             "solver's or the recipe's)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random start (SymNMF's random_state; default 0)")
    c.add_argument("--node-order", choices=("auto", "rcm", "degree", "none"), default="auto",
                   help="renumber a sparse graph's nodes before the fit so that its products read nearby rows, "
                        "and map the result back (default auto: reverse Cuthill-McKee for a graph of 100,000 nodes "
                        "or more on the CPU; SymNMF's node_order)")
    _run_arguments(c)
    c.add_argument("--out", default="symnmf-cluster", help="output folder (default ./symnmf-cluster)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace the results already in --out (and a graph already in --save-graph)")
    c.set_defaults(func=_cluster)

    r = sub.add_parser("reproduce", help="the paper's comparison table on the digit data sets",
                       description="SymNMF-Net against SymANLS, SymHALS, PGD, SymNewton and ADMM on each data set: "
                                   "relative error, ACC, NMI, purity, iterations and time; convergence PNGs.")
    r.add_argument("--dataset", nargs="+", help="digits, mnist5k, mfeat-pix, or all (default: all available)")
    r.add_argument("--methods", help=f"comma-separated subset of {methods}, hals-restarts, net-paper (default all; "
                                     "net-paper is SymNMF-Net by the paper's settings, hals-restarts SymHALS from as "
                                     "many starts as the net's restarts, the highest modularity kept)")
    r.add_argument("--max-iter", type=int,
                   help="iterations of every classical solver (default: symnmf.fitting.DEFAULT_MAX_ITER per solver)")
    r.add_argument("--epochs", type=int, help="SymNMF-Net's most training steps (default: the recipe's)")
    _net_arguments(r, recipe=False)  # the table has both recipes: methods net and net-paper
    r.add_argument("--tol", type=float, help="stopping tolerance passed to every method")
    r.add_argument("--runs", type=int, default=1, help="seeds per method; the table shows mean +- std")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--subset", type=int, help="use only this many samples of each data set")
    _run_arguments(r)
    r.add_argument("--out", default="symnmf-results", help="folder for results.md, results.json and PNGs")
    r.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    r.add_argument("--no-plot", action="store_true", help="skip the convergence PNGs")
    r.add_argument("--quiet", action="store_true", help="print only the table")
    r.set_defaults(func=_reproduce)

    b = sub.add_parser("bench", help="run the benchmarks in bench/",
                       description="Run bench/bench_<name>.py; the arguments after the name go to the script "
                                   "(e.g. `symnmf bench block --sizes tiny`).")
    b.add_argument("--bench-dir", help="the bench/ folder (default: ./bench or the checkout's bench/)")
    b.add_argument("--device", choices=("cuda", "cpu"),
                   help="cpu: `all` runs the CPU backend's benchmark (bench_cpu.py, every op against eager torch "
                        "and torch.compile); the other scripts get --device (default: cuda when available)")
    b.add_argument("which", nargs="?", default="all", choices=(*BENCHMARKS, "all"),
                   help="which benchmark (default all: block, spmm and solvers on a GPU, cpu on the CPU)")
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script")
    b.set_defaults(func=_bench)
    return parser


def main(argv=None):
    """Run the command; every error is one line on stderr and a non-zero exit status.

    2: bad arguments or input (checked before any fit); 1: a failure during the
    run; 130: interrupted. SYMNMF_DEBUG=1 shows the traceback of a failure instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, DatasetUnavailableError) as err:
        print(f"symnmf {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"symnmf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one-line report of the command line
        if os.environ.get("SYMNMF_DEBUG") == "1":
            raise
        print(f"symnmf {args.command}: error: {type(err).__name__}: {_one_line(err)} "
              "(SYMNMF_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
