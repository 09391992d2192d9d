"""The comparison of the SymNMF-Net paper (its Tables 1-3) on the offline digit data sets.

For every available data set: build Kuang's similarity graph of the images
(`similarity_graph`), factorise it at rank r = number of classes with
SymNMF-Net and each classical solver from the same kind of random start, label
node i by argmax_j U[i, j], and report per method

- E: relative error ||X - U U^T||_F^2 / ||X||_F^2 of the final factor,
- ACC (Hungarian matching), NMI (MI / max(H1, H2), as in the paper), purity,
- iterations (epochs for SymNMF-Net) and wall-clock seconds.

With ``runs > 1`` every method runs from ``runs`` seeds and the table shows
mean +- standard deviation. Every fit goes through `symnmf.fitting` (the path of
`SymNMF.fit` and `symnmf cluster`), with its defaults: the iteration counts of
`DEFAULT_MAX_ITER` / `DEFAULT_EPOCHS` (digits on a 2-core CPU in about a
minute), the input's precision, and one thread for problems this small. Data
sets whose package is not installed are skipped, and the log says so.

Convergence curves (E against iteration and against time, one PNG per data
set) are written when matplotlib is installed.
"""
import json
import os
import time

import numpy as np
import torch

from . import datasets as _datasets
from .fitting import (
    DEFAULT_MAX_ITER, SOLVER_NAMES, SOLVERS, FitResult, build_affinity, fit_affinity,
    resolve_device, resolve_dtype, sync_device,
)
from .metrics import accuracy, nmi, purity
from .net import RECIPES
from .solvers.base import as_seed

__all__ = [
    "METHODS", "METHOD_NAMES", "MethodRun", "run_method", "score", "reproduce", "format_table", "plot_convergence",
]

# SymNMF-Net twice: with the library's default recipe ("net") and with the paper's settings ("net-paper");
# and SymHALS from as many starts as the default recipe's restarts, kept by the same modularity rule
# ("hals-restarts"): what the restarts and the rule give without the trained net.
METHODS = (*SOLVERS, "hals-restarts", "net-paper")
_STARTS = {"hals-restarts": ("hals", RECIPES["default"]["n_restarts"])}
METHOD_NAMES = {**SOLVER_NAMES, "net": "SymNMF-Net", "hals-restarts": f"SymHALS x{_STARTS['hals-restarts'][1]}",
                "net-paper": "Net(paper)"}
_RECIPE = {"net": "default", "net-paper": "paper"}
MethodRun = FitResult


def run_method(X, rank, method, max_iter=None, epochs=None, lr=None, relative_lr=None, tol=None, seed=None,
               device=None, beta=None, threads="auto"):
    """Factorise the similarity X (from `symnmf.fitting.build_affinity`) at ``rank``: a FitResult.

    method: "net" (SymNMF-Net by the default recipe), "net-paper" (by the paper's settings;
    see `symnmf.net.RECIPES`; ``epochs``, ``lr``, ``relative_lr`` and ``beta`` override the
    recipe's), a solver name of `symnmf.solvers` (run for ``max_iter`` iterations or to
    ``tol``), or "hals-restarts" (SymHALS from the default recipe's number of starts, the highest
    modularity kept: `fit_affinity(..., n_init=4)`). None takes the defaults of `symnmf.fitting`,
    shared with `SymNMF` and `symnmf cluster`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if device is not None:
        X = X.to(torch.device(device))
    net = method in _RECIPE
    solver, n_init = _STARTS.get(method, ("net" if net else method, 1))
    result = fit_affinity(
        X, rank, solver, random_state=seed, max_iter=epochs if net else max_iter, tol=tol,
        net_options={"lr": lr, "relative_lr": relative_lr, "beta": beta}, recipe=_RECIPE.get(method, "default"),
        threads=threads, n_init=n_init,
    )
    result.method = method
    return result


def score(labels_true, labels_pred):
    """ACC, NMI (max normalisation, the paper's) and purity as a dict."""
    return {
        "acc": accuracy(labels_true, labels_pred),
        "nmi": nmi(labels_true, labels_pred, normalization="max"),
        "purity": purity(labels_true, labels_pred),
    }


def _subsample(features, labels, n, seed):
    """n samples drawn at random class by class in turn, so that every class is kept when n allows."""
    if n is None or n >= len(labels):
        return features, labels
    if n < 1:
        raise ValueError(f"subset must be a positive number of samples, got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # position of each sample among the shuffled samples of its class: take all
    # first-of-class samples, then all second-of-class, ...
    position = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = order[labels[order] == cls]
        position[members] = np.arange(len(members))
    picked = order[np.argsort(position[order], kind="stable")[:n]]
    picked.sort()
    return features[picked], labels[picked]


def reproduce(
    datasets=None,
    methods=METHODS,
    max_iter=None,
    epochs=None,
    lr=None,
    relative_lr=None,
    beta=None,
    tol=None,
    runs=1,
    seed=0,
    device=None,
    subset=None,
    out_dir=None,
    plot=True,
    log=print,
    dtype=None,
    threads="auto",
):
    """Run the comparison and return its rows (one dict per data set and method).

    datasets: names (default: every available one; the others are skipped with a
    log line saying why). max_iter: iterations of every classical solver (default:
    `symnmf.fitting.DEFAULT_MAX_ITER`); epochs: SymNMF-Net's steps (default
    `DEFAULT_EPOCHS`); lr, relative_lr, beta: the net's (default `NET_DEFAULTS`).
    subset: use only this many samples of each data set. dtype: None keeps the
    features' precision. threads: "auto" (`symnmf.fitting.default_threads`), None
    or an int. out_dir: where to write results.md, results.json and the
    convergence PNGs. log: a print-like function for progress lines, or None.
    seed: run k of every method starts from seed + k, and the subset is drawn with seed; None
    draws one seed from numpy's global random state (`symnmf.solvers.base.as_seed`), written to
    results.json, so that the runs stay distinct and can be repeated.
    """
    log = log or (lambda *a, **k: None)
    try:
        seed = as_seed(seed)
    except TypeError:
        raise TypeError(f"seed must be None, an int or a numpy RandomState / Generator, got {type(seed).__name__}"
                        ) from None
    if datasets:
        names = [_datasets.resolve(name) for name in datasets]
    else:
        names = _datasets.available()
        for name in _datasets.names():
            if name not in names:
                log(f"skipping {name}: {_datasets.why_unavailable(name)}")
        if not names:
            raise ValueError("no data set is available")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {METHODS}")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive int, got {runs!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    rows = []
    for name in names:
        features, labels_true = _datasets.load(name)
        features, labels_true = _subsample(features, labels_true, subset, seed)
        rank = int(len(np.unique(labels_true)))
        sync_device(device)
        start = time.perf_counter()
        X = build_affinity(features, "nearest_neighbors", device=device, dtype=dtype)
        sync_device(device)
        graph_seconds = time.perf_counter() - start
        log(f"{name}: n = {X.shape[0]}, r = {rank}, graph nnz = {X.values().numel()} "
            f"({graph_seconds:.2f} s on {device})")
        curves = {}
        for method in methods:
            results = []
            for run in range(runs):
                mrun = run_method(X, rank, method, max_iter=max_iter, epochs=epochs, lr=lr,
                                  relative_lr=relative_lr, tol=tol, seed=seed + run, beta=beta, threads=threads)
                results.append((mrun, score(labels_true, mrun.labels)))
                if run == 0:
                    curves[method] = mrun
            row = _summarise(name, method, X.shape[0], rank, results, graph_seconds)
            rows.append(row)
            log(f"  {METHOD_NAMES[method]:<10} E {row['rel_error']:.4f}  ACC {row['acc']:.4f}  "
                f"NMI {row['nmi']:.4f}  purity {row['purity']:.4f}  iters {row['iterations']}  "
                f"{row['seconds']:.2f} s")
        if out_dir and plot:
            path = plot_convergence(curves, os.path.join(out_dir, f"convergence-{name}.png"), title=name)
            if path:
                log(f"  wrote {path}")
    if out_dir:
        meta = {
            "device": str(device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "dtype": str(X.dtype).replace("torch.", ""), "runs": runs, "seed": seed, "subset": subset,
            "net recipes": {m: r for m, r in _RECIPE.items() if m in methods},
            "net overrides": {"lr": lr, "relative_lr": relative_lr, "beta": beta, "epochs": epochs}, "tol": tol,
            "max_iter": max_iter if max_iter is not None else DEFAULT_MAX_ITER,
        }
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(format_table(rows, markdown=True, meta=meta))
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return rows


def _summarise(dataset, method, n, rank, results, graph_seconds):
    def stat(values):
        values = np.asarray(values, dtype=np.float64)
        return float(values.mean()), float(values.std())

    row = {"dataset": dataset, "method": method, "name": METHOD_NAMES[method], "n": n, "rank": rank,
           "runs": len(results), "graph_seconds": graph_seconds}
    for key, values in (
        ("rel_error", [r.rel_error for r, _ in results]),
        ("acc", [s["acc"] for _, s in results]),
        ("nmi", [s["nmi"] for _, s in results]),
        ("purity", [s["purity"] for _, s in results]),
        ("seconds", [r.seconds for r, _ in results]),
    ):
        row[key], row[key + "_std"] = stat(values)
    row["iterations"] = int(round(np.mean([r.n_iter for r, _ in results])))
    return row


_COLUMNS = (
    ("rel_error", "E", "{:.4f}"),
    ("acc", "ACC", "{:.4f}"),
    ("nmi", "NMI", "{:.4f}"),
    ("purity", "purity", "{:.4f}"),
    ("iterations", "iters", "{}"),
    ("seconds", "time (s)", "{:.2f}"),
)


def format_table(rows, markdown=False, meta=None):
    """The rows as a table in the layout of the paper's Tables 1-3: one block per data set."""
    header = ["data set", "method"] + [title for _, title, _ in _COLUMNS]
    body = []
    for row in rows:
        cells = [f"{row['dataset']} (n={row['n']}, r={row['rank']})", row["name"]]
        for key, _, fmt in _COLUMNS:
            cell = fmt.format(row[key])
            if row["runs"] > 1 and key + "_std" in row:
                cell += " ± " + fmt.format(row[key + "_std"])
            cells.append(cell)
        body.append(cells)
    notes = [
        "E = ||X - U U^T||_F^2 / ||X||_F^2; ACC by Hungarian matching; NMI = MI / max(H(true), H(pred)); "
        "labels = argmax of each row of U; X = Kuang's self-tuning kNN graph of the raw features.",
    ]
    if meta:
        notes.append(", ".join(f"{k} = {v}" for k, v in meta.items()))
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(header)]
    def line(cells):  # text columns left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(header), "  ".join("-" * w for w in widths)] + [line(c) for c in body]
    return "\n".join(lines) + "\n" + "\n".join(notes) + "\n"


def plot_convergence(curves, path, title=None):
    """PNG of E against iteration (left) and seconds (right) per method; None without matplotlib.

    All methods end near the same E, so the curves show the excess E - E_min over
    the smallest E any method reached (log scale), which separates how fast each gets there.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    finals = [v for run in curves.values() for v in run.curve_rel_error if np.isfinite(v)]
    if not finals:
        return None
    best = min(finals)
    floor = max(abs(best), 1e-12) * 1e-7  # float32 resolution of E: a curve at E_min shows here
    fig, (ax_iter, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, run in curves.items():
        if not run.curve_rel_error:
            continue
        label = METHOD_NAMES.get(method, method)
        excess = np.maximum(np.asarray(run.curve_rel_error, dtype=np.float64) - best, floor)
        ax_iter.plot(run.curve_iter[: len(excess)], excess, label=label)
        if len(run.curve_time) == len(excess):
            ax_time.plot(run.curve_time, excess, label=label)
    for ax, xlabel in ((ax_iter, "iteration (epoch for SymNMF-Net)"), (ax_time, "time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"E - E_min   (E_min = {best:.5f})")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax_iter.legend()
    fig.suptitle(("" if title is None else f"{title}: ") + "relative error E = ||X - UU^T||² / ||X||²")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
