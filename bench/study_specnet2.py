"""SpecNet2 study: accuracy on the digits graph, out-of-sample clustering, and time and memory at scale.

    python bench/study_specnet2.py digits            # eigsh vs SpecNet2 (mini-batch, full batch) vs SpectralNet
    python bench/study_specnet2.py scale --n 100000  # a kNN graph of n Gaussian-mixture points: SpecNet2, eigsh, lobpcg

Each part appends its table to bench/results/study_specnet2-<date>-cpu.md and its raw numbers to
bench/results/study_specnet2-runs.jsonl; `plot` draws docs/specnet2.png from the latter. Run with
OMP_NUM_THREADS set: the timings are meant for one thread. The scale part runs every method in
a subprocess of its own so that each reports its own peak resident memory.

Accuracy measures: the sine of the largest principal angle between a method's embedding and the
leading k eigenvectors of D^-1 W (eigsh on D^-1/2 W D^-1/2 at tol 0, mapped back by D^-1/2);
clustering accuracy (symnmf.metrics.accuracy) against the classes.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(RESULTS, "study_specnet2-runs.jsonl")


def _stamp():
    return datetime.date.today().isoformat()


def _machine():
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch {torch.__version__} CPU, "
            f"torch threads {torch.get_num_threads()}")


def _record(row):
    row = {"date": _stamp(), **row}
    with open(RUNS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _append_table(title, header, rows, notes=()):
    path = os.path.join(RESULTS, f"study_specnet2-{_stamp()}-cpu.md")
    with open(path, "a") as f:
        f.write(f"\n## {title}\n\n{_machine()}\n\n")
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for r in rows:
            f.write("| " + " | ".join(str(x) for x in r) + " |\n")
        for note in notes:
            f.write(f"\n{note}\n")
    print(open(path).read())


def leading(W, k, tol=0.0):
    """(lambda, V): k leading eigenpairs of D^-1 W by eigsh on the symmetric form, descending."""
    d = np.asarray(W.sum(1)).ravel()
    s = 1 / np.sqrt(d)
    S = sp.diags(s) @ W @ sp.diags(s)
    lam, V = sla.eigsh(S, k=k, which="LA", tol=tol, v0=np.full(W.shape[0], 1 / np.sqrt(W.shape[0])))
    order = np.argsort(lam)[::-1]
    return lam[order], s[:, None] * V[:, order]


def sines(A, B):
    """Sines of the principal angles between span(A) and span(B), largest first (1 where A has NaN)."""
    if not np.isfinite(A).all():
        return np.ones(B.shape[1])
    qa, _ = np.linalg.qr(A)
    qb, _ = np.linalg.qr(B)
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.sqrt(np.clip(1 - np.sort(cos) ** 2, 0, 1))


def _row_kmeans(E, k, seed=0):
    from sklearn.cluster import KMeans

    E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-300)
    return KMeans(k, n_init=10, random_state=seed).fit_predict(E)


# ---------------------------------------------------------------------------------------------- digits


def digits(args):
    import torch
    from sklearn.cluster import SpectralClustering
    from sklearn.model_selection import train_test_split

    from symnmf.datasets import load
    from symnmf.metrics import accuracy, nmi
    from symnmf.specnet2 import SpecNet2

    X, y = load("digits")
    k = 10
    study = datetime.datetime.now().isoformat(timespec="seconds")
    rows, table = [], []
    t = time.perf_counter()
    base = SpecNet2(k, epochs=1, random_state=0, device="cpu").fit(X)  # the graph: the library's kNN graph
    W = base.affinity_matrix_
    t = time.perf_counter()
    lam, V = leading(W, k + 1)
    t_eigsh = time.perf_counter() - t
    V = V[:, :k]
    print("leading eigenvalues of D^-1 W:", np.round(lam, 4))
    t = time.perf_counter()
    sc = SpectralClustering(k, affinity="precomputed", random_state=0).fit(W)
    t_sc = time.perf_counter() - t
    acc_sc = accuracy(y, sc.labels_)
    acc_eig_rownorm = accuracy(y, _row_kmeans(V, k))
    table.append(["eigsh (tol 0) + k-means, row-normalised", f"{t_eigsh:.2f}", "0", "", f"{acc_eig_rownorm:.4f}", ""])
    table.append(["sklearn SpectralClustering (precomputed W)", f"{t_sc:.2f}", "", "", f"{acc_sc:.4f}",
                  f"{nmi(y, sc.labels_):.4f}"])
    rows.append(_record({"part": "digits", "method": "eigsh", "time": t_eigsh, "acc": acc_eig_rownorm,
                         "lambda": lam.tolist()}))
    rows.append(_record({"part": "digits", "method": "SpectralClustering", "time": t_sc, "acc": acc_sc}))

    variants = [
        ("defaults (300 epochs, b = 128, lr 2e-3, 6 extra outputs)", dict(), (0, 1, 2)),
        ("defaults but 100 epochs", dict(epochs=100), (0,)),
        ("defaults but no extra outputs", dict(n_oversamples=0), (0,)),
        ("full batch, 2000 steps, lr 3e-3, 6 extra outputs", dict(batch_size=None, epochs=2000, lr=3e-3), (0,)),
    ]
    for name, params, seeds in variants:
        for seed in seeds:
            t, cpu = time.perf_counter(), time.process_time()
            m = SpecNet2(k, random_state=seed, device="cpu", **params).fit(X)
            elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
            s = sines(m.embedding_, V)
            acc = accuracy(y, m.labels_)
            table.append([f"SpecNet2 {name}, seed {seed}", f"{elapsed:.1f} ({cpu:.1f})", f"{s[0]:.3f}", f"{s[1]:.3f}",
                          f"{acc:.4f}", f"{nmi(y, m.labels_):.4f}"])
            rows.append(_record({"part": "digits", "study": study, "method": "SpecNet2", "variant": name,
                                 "seed": seed, "time": elapsed, "cpu_time": cpu, "sines": s.tolist(), "acc": acc,
                                 "ritz": m.eigenvalues_.tolist(), "history": m.history_,
                                 "width": m.network_.net[-1].out_features}))

    # SpectralNet (orthogonalisation layer), if installed: its own affinity on each batch of features
    try:
        from spectralnet import SpectralNet
    except ImportError as e:
        SpectralNet = None
        table.append(["SpectralNet", "not installed", "", "", "", str(e).replace("|", "/")])
    if SpectralNet is not None and not args.no_spectralnet:
        torch.manual_seed(0)
        np.random.seed(0)
        t, cpu = time.perf_counter(), time.process_time()
        net = SpectralNet(n_clusters=k)
        Xt = torch.tensor(X, dtype=torch.float32)
        net.fit(Xt)
        labels = net.predict(Xt)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        s = sines(net.embeddings_, V)
        acc = accuracy(y, labels)
        table.append(["SpectralNet 1.1.0 (package defaults, its own graph)", f"{elapsed:.1f} ({cpu:.1f})", f"{s[0]:.3f}",
                      f"{s[1]:.3f}", f"{acc:.4f}", f"{nmi(y, labels):.4f}"])
        rows.append(_record({"part": "digits", "study": study, "method": "SpectralNet", "time": elapsed,
                             "cpu_time": cpu, "sines": s.tolist(),
                             "acc": acc}))

    # out-of-sample: fit on 80 % of the rows, cluster the other 20 % by transform + the fitted k-means
    oos = []
    for seed in (0, 1, 2):
        tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
        m = SpecNet2(k, random_state=seed, device="cpu").fit(X[tr])
        acc_in, acc_out = accuracy(y[tr], m.labels_), accuracy(y[te], m.predict(X[te]))
        sc_in = accuracy(y[tr], SpectralClustering(k, affinity="precomputed", random_state=0)
                         .fit(m.affinity_matrix_).labels_)
        oos.append([seed, f"{acc_in:.4f}", f"{acc_out:.4f}", f"{sc_in:.4f}"])
        rows.append(_record({"part": "digits-oos", "study": study, "seed": seed, "acc_in": acc_in, "acc_out": acc_out,
                             "acc_sc_in": sc_in}))

    _append_table(
        "Digits: SpecNet2 against eigsh, SpectralClustering and SpectralNet (k = 10)",
        ["method", "wall (CPU) time, s", "sine, largest angle", "sine, 2nd largest", "ACC", "NMI"], table,
        notes=[f"Graph: the library's kNN graph of sklearn digits (n = 1797, {W.nnz} stored entries); leading "
               f"eigenvalues of D^-1 W: {', '.join(f'{v:.4f}' for v in lam)}. Sines are against the leading 10 "
               "eigenvectors from eigsh. SpecNet2 times include the graph and k-means."])
    _append_table(
        "Digits: out-of-sample clustering (fit on a stratified 80 %, predict the other 20 %)",
        ["split seed", "ACC in-sample (SpecNet2 labels_)", "ACC held-out (SpecNet2 predict)",
         "ACC in-sample, SpectralClustering on the same 80 % graph"], oos)


# ---------------------------------------------------------------------------------------------- scale


def mixture(n, dim=8, centres=10, seed=0):
    """n points of a Gaussian mixture in dim dimensions: unit spread, centres about 8 apart, close enough
    that the kNN graph is connected (no repeated eigenvalue 1) with a clear gap after the 10th eigenvalue."""
    rng = np.random.default_rng(seed)
    C = rng.normal(scale=2.0, size=(centres, dim))
    labels = rng.integers(0, centres, n)
    return (C[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def knn_graph(F, n_neighbors=None, scale_neighbor=7):
    """The library's graph (Kuang's normalised self-tuning kNN graph, `symnmf.similarity_graph`)
    built with a k-d tree: the library's exact search is quadratic in n."""
    from sklearn.neighbors import NearestNeighbors

    n = len(F)
    k = n_neighbors or int(np.floor(np.log2(n))) + 1
    m = max(k, scale_neighbor)
    dist, idx = NearestNeighbors(n_neighbors=m + 1, algorithm="kd_tree").fit(F).kneighbors(F)
    dist, idx = dist[:, 1:].astype(np.float64), idx[:, 1:]  # drop each point itself
    sigma = dist[:, scale_neighbor - 1]
    rows = np.repeat(np.arange(n), k)
    cols = idx[:, :k].ravel()
    w = np.exp(-dist[:, :k].ravel() ** 2 / np.maximum(sigma[rows] * sigma[cols], 1e-300))
    A = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    A = A.maximum(A.T).tocsr()  # the union pattern, each edge's weight from either end
    d = np.asarray(A.sum(1)).ravel()
    s = 1 / np.sqrt(d)
    W = (sp.diags(s) @ A @ sp.diags(s)).tocsr()
    W.sort_indices()
    return W.astype(np.float32)


def _peak_rss_mb():
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not carry the parent's over exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _scale_one(args):
    """One method on the saved graph, in its own process; prints one JSON line."""
    W = sp.load_npz(args.graph).tocsr()
    data = np.load(args.features)
    F, labels = data["F"], data["labels"]
    k = args.k
    out = {"method": args.method, "n": W.shape[0], "nnz": int(W.nnz)}
    rss0 = _peak_rss_mb()
    t, cpu = time.perf_counter(), time.process_time()
    if args.method == "load":
        E = None
    elif args.method == "load-torch":  # SpecNet2's baseline: the graph plus torch and the library imported
        import torch  # noqa: F401

        import symnmf.specnet2  # noqa: F401

        E = None
    elif args.method == "eigsh":
        _, E = leading(W.astype(np.float64), k, tol=args.tol)
    elif args.method == "lobpcg":
        d = np.asarray(W.sum(1)).ravel()
        s = 1 / np.sqrt(d)
        S = (sp.diags(s) @ W.astype(np.float64) @ sp.diags(s)).tocsr()
        X0 = np.random.default_rng(0).standard_normal((W.shape[0], k))
        lam, Vs, res = sla.lobpcg(S, X0, largest=True, tol=args.tol, maxiter=args.maxiter,
                                  retResidualNormsHistory=True)
        out["iterations"] = len(res)
        E = s[:, None] * Vs
    else:
        import torch

        from symnmf.specnet2 import SpecNet2

        torch.set_num_threads(1)
        model = SpecNet2(k, hidden=(64, 64), batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
                         ydy_refresh=args.ydy_refresh, affinity="precomputed", random_state=0,
                         device="cpu").fit(W, features=F)
        E = model.embedding_
        out["history"] = model.history_
        out["acc"] = None
    out["time"] = time.perf_counter() - t
    out["cpu_time"] = time.process_time() - cpu
    out["peak_rss_mb"] = _peak_rss_mb()
    out["rss_before_mb"] = rss0
    if E is not None:
        np.save(args.embedding_out, E)
    print("RESULT " + json.dumps(out))


def scale(args):
    from symnmf.metrics import accuracy

    n, k = args.n, args.k
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    graph, feats = os.path.join(work, f"W{n}.npz"), os.path.join(work, f"F{n}.npz")
    F, labels = mixture(n, centres=k)
    t = time.perf_counter()
    if not os.path.exists(graph):
        sp.save_npz(graph, knn_graph(F))
        np.savez(feats, F=F, labels=labels)
    t_graph = time.perf_counter() - t
    W = sp.load_npz(graph)
    print(f"n = {n}: graph {W.nnz} entries, built in {t_graph:.1f} s", flush=True)
    results = {}
    plans = [("load", []), ("load-torch", []), ("eigsh", ["--tol", "0"]), ("eigsh", ["--tol", "1e-4"]),
             ("lobpcg", ["--tol", "1e-4", "--maxiter", str(args.lobpcg_maxiter)]),
             ("specnet2", ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr)])]
    for method, extra in plans:
        key = method + ("" if method not in ("eigsh", "lobpcg") else f" tol {extra[1]}")
        emb = os.path.join(work, f"E{n}-{key.replace(' ', '_')}.npy")
        cmd = [sys.executable, __file__, "_scale_one", "--method", method, "--graph", graph, "--features", feats,
               "--k", str(k), "--embedding-out", emb, *extra]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results[key] = {"method": key, "time": None, "note": f"stopped after {args.timeout} s"}
            print(key, "timed out", flush=True)
            continue
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            results[key] = {"method": key, "time": None, "note": "failed"}
            continue
        r = json.loads(line[0][7:])
        if os.path.exists(emb):
            r["embedding"] = emb
        results[key] = r
        print(key, {a: b for a, b in r.items() if a != "history"}, flush=True)
    ref = np.load(results["eigsh tol 0"]["embedding"]) if "embedding" in results.get("eigsh tol 0", {}) else None
    table = []
    base_rss = results["load"]["peak_rss_mb"]
    torch_rss = results["load-torch"]["peak_rss_mb"]
    for key, r in results.items():
        if key.startswith("load"):
            continue
        s = acc = ""
        if ref is not None and "embedding" in r:
            E = np.load(r["embedding"])
            s = f"{sines(E, ref)[0]:.3f}"
            acc = f"{accuracy(labels, _row_kmeans(E, k)):.4f}"
            r["sine"], r["acc"] = float(s), float(acc)
        t = "-" if r["time"] is None else f"{r['time']:.1f} ({r['cpu_time']:.1f})"
        base = torch_rss if key == "specnet2" else base_rss
        mem = "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f} ({r['peak_rss_mb'] - base:+.0f})"
        extra = ""
        if key.startswith("lobpcg") and "iterations" in r:
            extra = f"{r['iterations']} iterations"
        if key == "specnet2":
            extra = f"{args.epochs} epochs, b = {args.batch_size}, MLP 8-64-64-{k}, lr {args.lr}"
        table.append([key, t, mem, s, acc, extra or r.get("note", "")])
        _record({"part": "scale", "key": key, "n": n, "nnz": int(W.nnz), "graph_time": t_graph,
                 **{a: b for a, b in r.items() if a != "embedding"}})
    _append_table(
        f"Scale: kNN graph of {n:,} Gaussian-mixture points (8-D, {k} components), k = {k}",
        ["method", "wall (CPU) time, s", "peak RSS MB (over the process's baseline)", "sine vs eigsh tol 0", "ACC (row-normalised k-means)",
         "settings"], table,
        notes=[f"Graph: {W.nnz:,} stored entries, built in {t_graph:.0f} s by a k-d tree search (Kuang's self-tuning "
               f"weights, k = floor(log2 n) + 1). Baselines: loading the graph and features peaks at {base_rss:.0f} MB "
               f"(scipy methods), {torch_rss:.0f} MB with torch and the library imported (SpecNet2). Each method "
               "runs in its own process on one thread; times exclude building and loading the graph."])


# ---------------------------------------------------------------------------------------------- plot


def plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from symnmf import similarity_graph
    from symnmf.datasets import load

    runs = [json.loads(line) for line in open(RUNS)]
    last = max(r["study"] for r in runs if r.get("part") == "digits" and "study" in r)
    # the optimum of f over the network's k + p outputs: -sum of that many leading eigenvalues squared
    G = similarity_graph(load("digits")[0])
    lam, _ = leading(sp.csr_matrix((G.values().numpy(), G.col_indices().numpy(), G.crow_indices().numpy()),
                                   shape=G.shape), 20)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        if r.get("study") == last and r.get("method") == "SpecNet2" and r.get("seed") == 0:
            h = r["history"]
            width = r.get("width", 10 if "no extra outputs" in r["variant"] else 16)
            gap = np.maximum(np.array(h["objective"]) + np.sum(lam[:width] ** 2), 1e-6)
            axes[0].semilogy(h["time"], gap, label=r["variant"])
    axes[0].set_xlabel("training time (s, wall clock on the shared machine), 1 thread")
    axes[0].set_ylabel("f - f* (f*: -sum of the k + p leading eigenvalues squared)")
    axes[0].set_title("digits graph, k = 10")
    axes[0].legend(fontsize=7)
    scale_runs = [r for r in runs if r.get("part") == "scale" and r.get("time") is not None]
    for method in ("eigsh tol 0", "eigsh tol 1e-4", "lobpcg tol 1e-4", "specnet2"):
        latest = {r["n"]: r for r in scale_runs if r.get("key") == method and "cpu_time" in r}
        pts = sorted((n, r["cpu_time"]) for n, r in latest.items())
        if pts:
            axes[1].loglog(*zip(*pts), "o-", label=method)
        if method == "specnet2":  # its cost depends on the epochs run: say how many at each point
            for n, r in latest.items():
                axes[1].annotate(f"{len(r['history']['epoch'])} epochs", (n, r["cpu_time"]), fontsize=7,
                                 textcoords="offset points", xytext=(-10, 6), ha="right")
    axes[1].set_xlabel("nodes n")
    axes[1].set_ylabel("CPU time (s), 1 thread")
    axes[1].set_title("kNN graphs of Gaussian-mixture points, k = 10")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    out = os.path.join(os.path.dirname(HERE), "docs", "specnet2.png")
    fig.savefig(out, dpi=110)
    print("wrote", out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    d = sub.add_parser("digits")
    d.add_argument("--no-spectralnet", action="store_true", help="leave out SpectralNet (slow; needs its package)")
    s = sub.add_parser("scale")
    s.add_argument("--n", type=int, default=100_000)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--lr", type=float, default=3e-3)
    s.add_argument("--lobpcg-maxiter", type=int, default=500)
    s.add_argument("--timeout", type=float, default=1800)
    s.add_argument("--workdir", default="/tmp/study_specnet2")
    one = sub.add_parser("_scale_one")
    for name in ("--method", "--graph", "--features", "--embedding-out"):
        one.add_argument(name)
    one.add_argument("--k", type=int, default=10)
    one.add_argument("--tol", type=float, default=0.0)
    one.add_argument("--maxiter", type=int, default=500)
    one.add_argument("--epochs", type=int, default=10)
    one.add_argument("--batch-size", type=int, default=1024)
    one.add_argument("--lr", type=float, default=3e-3)
    one.add_argument("--ydy-refresh", type=int, default=None)
    sub.add_parser("plot")
    args = p.parse_args(argv)
    {"digits": digits, "scale": scale, "_scale_one": _scale_one, "plot": plot}[args.part](args)


if __name__ == "__main__":
    main()
