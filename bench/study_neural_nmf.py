"""Neural NMF against sequential hierarchical NMF and Deep NMF, and against the NeuralNMF package's speed.

Three parts, each a table of bench/results/study_neural_nmf-<date>-cpu.md:

1. Errors per layer (the pattern of Table 1 of Will et al.): ranks 9, 4, 2, the relative error
   ||X^T - A_1 ... A_l S_l||_F / ||X||_F at each layer l, for hierarchical NMF, Deep NMF and Neural NMF,
   unsupervised, semi-supervised (40 % of the labels) and supervised, on
   - "hierarchical": synthetic data of 9 subclasses in 4 classes in 2 superclasses (below), 2 labels;
   - "fortunes": a real text corpus, the fortune cookies of Debian's `fortunes` package
     (apt-get install fortunes; /usr/share/games/fortunes): 6 categories in 2 groups, 2 labels.
   Every method's S_l is the NNLS forward pass S_l = argmin_{S >= 0} ||S_{l-1} - A_l S|| of its own A_l;
   Deep NMF's own last factor (free S_L) is given too. The baselines use no labels. Mean over seeds.
2. The target: on non-negative rank-9 data (uniform random factors, and the hierarchical set), Neural NMF's
   3-layer error over hierarchical NMF's, next to the best any rank-2 model can do (the truncated SVD).
3. Speed: the NeuralNMF package (scipy NNLS per column, pseudo-inverses per column in its backward) and
   this library's NeuralNMF, same data, same number of epochs, same random start, float64, one thread.
   The package is imported from --peer (a folder holding it, e.g. pip install --no-deps --target DIR
   neuralnmf fnnls); without it that table is skipped.

    python bench/study_neural_nmf.py [--quick] [--peer DIR]

The hierarchical synthetic set: 84 features in blocks, 8 per superclass, 8 per class and 4 per subclass;
subclass j's topic vector is uniform in [0.5, 1.5) on its three blocks and zero elsewhere; each of its
10 samples is that vector times a uniform weight in [0.5, 1.5), plus |N(0, 0.01^2)| noise.
"""
import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import write_table  # noqa: E402
from symnmf.neural_nmf import NeuralNMF, deep_nmf, forward, hierarchical_nmf, relative_errors  # noqa: E402

RANKS = [9, 4, 2]
FORTUNE_DIR = "/usr/share/games/fortunes"
# Two groups of three categories: (category, group).
FORTUNE_CATEGORIES = [("computers", 0), ("linux", 0), ("science", 0), ("love", 1), ("food", 1), ("kids", 1)]
DOCS_PER_CATEGORY = 150


# ---- data -------------------------------------------------------------------------------------------------------


def hierarchical_data(seed=0, per_subclass=10, noise=0.01):
    """(X (90, 84), superclass labels (90,)): 9 subclasses -> classes {0,1} {2,3} {4,5,6} {7,8} -> superclasses
    {0..3} {4..8}."""
    rng = np.random.default_rng(seed)
    classes = [0, 0, 1, 1, 2, 2, 2, 3, 3]
    supers = [0, 0, 0, 0, 1, 1, 1, 1, 1]
    d = 2 * 8 + 4 * 8 + 9 * 4
    W = np.zeros((9, d))
    for j in range(9):
        for start, width in ((8 * supers[j], 8), (16 + 8 * classes[j], 8), (48 + 4 * j, 4)):
            W[j, start:start + width] = rng.uniform(0.5, 1.5, width)
    X, y = [], []
    for j in range(9):
        weights = rng.uniform(0.5, 1.5, (per_subclass, 1))
        X.append(weights * W[j] + np.abs(noise * rng.standard_normal((per_subclass, d))))
        y += [supers[j]] * per_subclass
    return np.vstack(X), np.array(y)


def uniform_rank9(seed=0, n=300, d=100):
    rng = np.random.default_rng(seed)
    return rng.random((n, 9)) @ rng.random((9, d))


def fortunes_corpus():
    """(tf-idf X (n_docs, n_words), group labels) of the fortunes categories, or None without the package."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs, y = [], []
    for name, group in FORTUNE_CATEGORIES:
        path = os.path.join(FORTUNE_DIR, name)
        if not os.path.exists(path):
            return None
        text = open(path, encoding="latin-1").read()
        entries = [e.strip() for e in re.split(r"^%$", text, flags=re.M) if len(e.strip()) > 40]
        docs += entries[:DOCS_PER_CATEGORY]
        y += [group] * len(entries[:DOCS_PER_CATEGORY])
    X = TfidfVectorizer(stop_words="english", min_df=3).fit_transform(docs).toarray()
    keep = X.sum(1) > 0
    return X[keep], np.array(y)[keep]


# ---- part 1: errors per layer -----------------------------------------------------------------------------------


def baselines(X, seed, steps):
    """{method: (errors per layer, None)} of the two baselines, which use no labels."""
    Xt = torch.tensor(X)
    out = {}
    As, _ = hierarchical_nmf(Xt, RANKS, 100, torch.Generator().manual_seed(seed))
    out["hierarchical NMF"] = (relative_errors(Xt, As, forward(Xt, As)), None)
    As, S = deep_nmf(Xt, RANKS, steps, 100, torch.Generator().manual_seed(seed))
    P = As[0] @ As[1] @ As[2]
    out["Deep NMF"] = (relative_errors(Xt, As, forward(Xt, As)), None)
    out["Deep NMF, own S_L"] = ([float("nan")] * 2 + [float((Xt - S @ P.mT).norm() / Xt.norm())], None)
    return out


def run_neural(X, y, setting, seed, steps, loss):
    """{method: (errors per layer, accuracy or None)} of Neural NMF in one setting ("unsupervised", "semi",
    "supervised")."""
    out = {}
    mask = None
    if setting == "semi":
        mask = np.random.default_rng(seed).random(len(y)) < 0.4
    model = NeuralNMF(RANKS, loss=loss, max_iter=steps, random_state=seed)
    if setting == "unsupervised":
        model.fit(X)
        acc = None
    else:
        model.fit(X, y, label_mask=mask)
        predicted = model.predict(X)
        test = ~mask if mask is not None else np.ones(len(y), dtype=bool)
        acc = float((predicted[test] == y[test]).mean())
    out[f"Neural NMF ({loss})"] = (model.relative_errors_, acc)
    return out


def layer_table(name, X, y, seeds, steps, losses):
    rows = []
    base = {seed: baselines(X, seed, steps) for seed in seeds}
    for setting in ("unsupervised", "semi", "supervised"):
        results = {}
        for seed in seeds:
            for method, result in base[seed].items():
                results.setdefault(method, []).append(result)
        for loss in losses:
            for seed in seeds:
                t = time.perf_counter()
                for method, result in run_neural(X, y, setting, seed, steps, loss).items():
                    results.setdefault(method, []).append(result)
                print(f"{name} {setting} {loss} seed {seed}: {time.perf_counter() - t:.1f} s", flush=True)
        for method, runs in results.items():
            errors = np.array([e for e, _ in runs])
            accs = [a for _, a in runs if a is not None]
            rows.append(dict(
                data=name, setting=setting, method=method,
                layer1=float(errors[:, 0].mean()), layer2=float(errors[:, 1].mean()), layer3=float(errors[:, 2].mean()),
                layer3_std=float(errors[:, 2].std()),
                accuracy=statistics.mean(accs) if accs else None, runs=len(runs),
            ))
    return rows


# ---- part 2: the target -----------------------------------------------------------------------------------------


def target_rows(seeds, steps):
    rows = []
    for name, make in (("uniform rank 9 (300 x 100)", uniform_rank9), ("hierarchical (90 x 84)",
                                                                       lambda s: hierarchical_data(s)[0])):
        for seed in seeds:
            X = make(seed)
            Xt = torch.tensor(X)
            As, _ = hierarchical_nmf(Xt, RANKS, 100, torch.Generator().manual_seed(seed))
            hier = relative_errors(Xt, As, forward(Xt, As))[-1]
            model = NeuralNMF(RANKS, loss="reconstruction", max_iter=steps, random_state=seed).fit(X)
            s = np.linalg.svd(X, compute_uv=False)
            bound = float(np.linalg.norm(s[2:]) / np.linalg.norm(s))
            rows.append(dict(data=name, seed=seed, hierarchical=hier, neural=model.relative_errors_[-1],
                             ratio=model.relative_errors_[-1] / hier, rank2_bound=bound, bound_ratio=bound / hier))
    return rows


# ---- part 3: speed against the NeuralNMF package ----------------------------------------------------------------


def speed_rows(peer, datasets, epochs, repeats=3, device="cpu"):
    """Both sides on the same data from the same start, after one warm-up fit each (first calls load
    code and fill caches on both sides); each time is the median of `repeats` fits, the two sides taking
    turns so that a change in the machine's load reaches both. device: where this library's fit runs (the
    package runs on the CPU); a fit returns numpy arrays, so its time includes the device's work."""
    if peer is None:
        return []
    sys.path.insert(0, peer)
    from NeuralNMF import Neural_NMF, train

    rows = []
    for name, X in datasets:
        D = torch.tensor(X.T.copy())  # the package's layout: features x samples
        torch.manual_seed(0)
        A0 = [layer.A.data.clone() for layer in Neural_NMF([D.shape[0], *RANKS]).lsqnonneglst]

        def peer_fit(n_epochs):
            torch.manual_seed(0)
            net = Neural_NMF([D.shape[0], *RANKS])
            for layer, A in zip(net.lsqnonneglst, A0):
                layer.A.data.copy_(A)
            t = time.perf_counter()
            train(net, D, loss_func="Recon Loss", epoch=n_epochs, lr=1e-3, supervised=False, verbose=False)
            return time.perf_counter() - t

        replayed = []

        def our_fit(n_epochs):
            model = NeuralNMF(RANKS, loss="reconstruction", max_iter=n_epochs, init=[A.numpy() for A in A0],
                              device=device)
            t = time.perf_counter()
            model.fit(X)
            seconds = time.perf_counter() - t
            replayed.append(model.cuda_graph_)
            return seconds

        peer_fit(1), our_fit(1)
        peer_times, our_times = [], []
        for _ in range(repeats):
            peer_times.append(peer_fit(epochs))
            our_times.append(our_fit(epochs))
        peer_s, ours_s = float(np.median(peer_times)), float(np.median(our_times))
        rows.append(dict(data=name, shape=f"{X.shape[0]} x {X.shape[1]}", epochs=epochs, package_s=peer_s,
                         ours_s=ours_s, speedup=peer_s / ours_s, ours_ms_per_epoch=1e3 * ours_s / epochs,
                         repeats=repeats, cuda_graph=replayed[-1]))
        print(rows[-1], flush=True)
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = sorted({r["data"] for r in rows})
    settings = ["unsupervised", "semi", "supervised"]
    fig, axes = plt.subplots(len(datas), 3, figsize=(12, 3.2 * len(datas)), squeeze=False)
    for i, data in enumerate(datas):
        for j, setting in enumerate(settings):
            ax = axes[i][j]
            sel = [r for r in rows if r["data"] == data and r["setting"] == setting and "own" not in r["method"]]
            width = 0.8 / max(1, len(sel))
            for m, r in enumerate(sel):
                ax.bar(np.arange(3) + m * width, [r["layer1"], r["layer2"], r["layer3"]], width, label=r["method"])
            ax.set_xticks(np.arange(3) + 0.4 - width / 2, ["layer 1", "layer 2", "layer 3"])
            ax.set_title(f"{data}, {setting}")
            ax.set_ylabel("relative error")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def speed_only(args):
    if args.peer is None:
        raise SystemExit("--speed-only needs --peer (the folder holding the NeuralNMF package)")
    corpus = fortunes_corpus()
    datasets = [("hierarchical", hierarchical_data(0)[0])] + ([("fortunes", corpus[0])] if corpus is not None else [])
    speed = [row for epochs in map(int, args.epochs.split(","))
             for row in speed_rows(args.peer, datasets, epochs, device=args.device)]
    header = [f"this library on {args.device}, the package on the CPU",
              "threads: 1 (torch.set_num_threads), float64; the package and this library on the same data from the "
              "same start, unsupervised, reconstruction loss; after one warm-up fit on each side, the median of "
              "`repeats` fits, the sides taking turns; times include each side's setup"]
    write_table("study_neural_nmf_speed", speed,
                ["data", "shape", "epochs", "package_s", "ours_s", "speedup", "ours_ms_per_epoch", "repeats",
                 "cuda_graph"], header,
                device=args.device)
    return speed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, few steps, nothing written")
    parser.add_argument("--peer", default=None, help="folder holding the NeuralNMF package (and fnnls)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--epochs", default="10,50", help="epochs of the speed comparison, comma-separated")
    parser.add_argument("--plot", default=os.path.join("docs", "neural_nmf.png"))
    parser.add_argument("--device", default="cpu", help="where this library's fits of the speed comparison run")
    parser.add_argument("--speed-only", action="store_true",
                        help="only part 3, written to study_neural_nmf_speed-<date>-cpu.md (needs --peer)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.speed_only:
        return speed_only(args)
    seeds = [0] if args.quick else [0, 1, 2]
    steps = 20 if args.quick else args.steps
    losses = ["reconstruction", "layers", "energy"]

    X_h, y_h = hierarchical_data(0)
    corpus = fortunes_corpus()
    rows = layer_table("hierarchical", X_h, y_h, seeds, steps, losses)
    if corpus is not None:
        rows += layer_table("fortunes", *corpus, seeds, steps, losses)
    target = target_rows(seeds, steps)
    datasets = [("hierarchical", X_h)] + ([("fortunes", corpus[0])] if corpus is not None else [])
    speed = [row for epochs in map(int, args.epochs.split(",")) for row in speed_rows(args.peer, datasets, epochs)]
    for r in rows + target + speed:
        print(r)
    if args.quick:
        return rows, target, speed
    plot(rows, args.plot)
    header = [
        "threads: 1 (torch.set_num_threads), float64, CPU only (no GPU numbers)",
        f"ranks {RANKS}; {steps} training steps (Adam, lr 0.01 relative to each A_l's mean) from a hierarchical "
        "NMF start (100 alternating-NNLS sweeps per layer); Deep NMF: the same start and "
        f"{steps} sweeps; seeds {seeds}",
        "fortunes: " + ", ".join(f"{c} (group {g})" for c, g in FORTUNE_CATEGORIES)
        + f", first {DOCS_PER_CATEGORY} entries over 40 characters each, tf-idf (English stop words, min_df 3)"
        + ("" if corpus is None else f": {corpus[0].shape[0]} documents x {corpus[0].shape[1]} words"),
        "accuracy: of the classification layer, on the unlabelled samples (semi) or all samples (supervised)",
        "",
        "## Errors per layer",
    ]
    columns = ["data", "setting", "method", "layer1", "layer2", "layer3", "layer3_std", "accuracy", "runs"]
    path = write_table("study_neural_nmf", rows, columns, header, device="cpu")
    from bench.common import _markdown

    with open(path, "a") as f:
        f.write("\n## The target: 3-layer error, Neural NMF (reconstruction loss) / hierarchical NMF\n\n")
        f.write(_markdown(target, ["data", "seed", "hierarchical", "neural", "ratio", "rank2_bound", "bound_ratio"]))
        f.write("\n\nrank2_bound: the truncated SVD's error at rank 2, below which no 3-layer model with k_3 = 2 can go."
                "\n")
        if speed:
            f.write("\n## Speed: the NeuralNMF package against this library, unsupervised, reconstruction loss\n\n")
            f.write(_markdown(speed, ["data", "shape", "epochs", "package_s", "ours_s", "speedup",
                                      "ours_ms_per_epoch"]))
            f.write("\n")
    print(open(path).read())


if __name__ == "__main__":
    main()
