"""Feature recovery under correlated weights: Li and Liang's alternating updates (symnmf.alternating)
against ANLS, HALS, multiplicative updates and scikit-learn's NMF, and their CPU times
(docs/alternating_nmf.md).

    OMP_NUM_THREADS=1 python bench/study_alternating.py            # study + timings, writes the table and plot
    OMP_NUM_THREADS=1 python bench/study_alternating.py --quick    # a small smoke run, nothing written

Semi-synthetic data in the manner of the paper: the ground-truth features A* (d x k) are learned from
real data (NMF of 2,000 MNIST digits from the `mnist5k` data set, or of scikit-learn's digits where it
is missing; columns scaled to sum 1, like topic-word distributions), the weights are synthetic with a
chosen correlation, and Y = X A*^T + noise (samples are rows).

- Weights: x_ij = max(sqrt(rho) c_i + sqrt(1 - rho) e_ij - tau, 0) with c_i, e_ij standard normal and
  tau such that each weight is active with probability 0.3: a shared factor c_i switches many
  features on together. The study reports the measured mean pairwise (Pearson) correlation of the
  columns of X, not rho.
- Noise: Gaussian, clipped at zero so that Y stays non-negative (every method, scikit-learn's
  included, gets the same Y), scaled so that ||Y - X A*^T||_F = level ||X A*^T||_F after clipping.
- Start: A_0 = A* (I + E), E uniform in [-1/2, 1/2] scaled so that ||A_0 - A*||_F = 0.3 ||A*||_F
  (the paper's multiplicative perturbation). The NMF baselines start from H_0 = max(A_0, 0)^T and
  W_0 = argmin_{W >= 0} ||Y - W H_0||, the non-negative decode of the same start.
- Error: columns matched to A*'s by the Hungarian method on cosine similarity, each matched column
  scaled by its least-squares factor onto A*'s (NMF fixes features only up to scale), then
  ||A - A*||_F / ||A*||_F.
"""
import argparse
import datetime
import os
import platform
import time
import warnings

import numpy as np
import torch
from scipy.stats import norm

from symnmf import datasets
from symnmf.alternating import alternating_nmf
from symnmf.metrics import recovery_error
from symnmf.solvers.nnls import nnls_gram

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ACTIVE = 0.3          # probability that a weight is non-zero
START_ERROR = 0.3     # ||A_0 - A*|| / ||A*||
METHODS = ("alternating", "alternating-floor0", "anls", "hals", "mu", "sklearn-cd")


# ------------------------------------------------------------------------------------------------ data
def ground_truth_features(k, seed=0):
    """A* (784 x k or 64 x k): NMF features of 2,000 digit images, columns scaled to sum 1."""
    from sklearn.decomposition import NMF

    name = "mnist5k" if "mnist5k" in datasets.available() else "digits"
    images, _ = datasets.load(name)
    images = images[:2000] / images.max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H = NMF(k, init="nndsvda", solver="cd", max_iter=300, random_state=seed).fit(images).components_
    A = H.T.copy()
    return A / A.sum(0), name


def correlated_weights(n, k, rho, rng):
    c = rng.standard_normal((n, 1))
    e = rng.standard_normal((n, k))
    return np.maximum(np.sqrt(rho) * c + np.sqrt(1 - rho) * e - norm.ppf(1 - ACTIVE), 0.0)


def mean_correlation(X):
    C = np.corrcoef(X.T)
    return float(C[~np.eye(len(C), dtype=bool)].mean())


def add_noise(Y0, level, rng):
    """max(Y0 + s N, 0) with N standard normal and s set (by bisection) so the relative noise after clipping is `level`."""
    if level == 0:
        return Y0.copy()
    N = rng.standard_normal(Y0.shape)
    target = level * np.linalg.norm(Y0)
    lo, hi = 0.0, 10 * target / np.linalg.norm(N)
    for _ in range(50):
        s = (lo + hi) / 2
        lo, hi = (s, hi) if np.linalg.norm(np.maximum(Y0 + s * N, 0) - Y0) < target else (lo, s)
    return np.maximum(Y0 + s * N, 0)


def perturbed_start(A, rng, rel=START_ERROR):
    k = A.shape[1]
    E = rng.uniform(-0.5, 0.5, (k, k))
    E *= rel * np.linalg.norm(A) / np.linalg.norm(A @ E)
    return A @ (np.eye(k) + E)


def problem(A_true, n, rho, noise, seed):
    rng = np.random.default_rng(seed)
    X = correlated_weights(n, A_true.shape[1], rho, rng)
    Y = add_noise(X @ A_true.T, noise, rng)
    return Y, X, perturbed_start(A_true, rng)


# ------------------------------------------------------------------------------------------------ the NMF baselines
# Y (n x d) ~ W H with W, H >= 0, in torch float64, one "iteration" = one update of W and one of H.
def nnls_decode(Y, H):
    return nnls_gram(H @ H.mT, Y @ H.mT)


def anls(Y, W, H, iters, record):
    for t in range(1, iters + 1):
        W = nnls_gram(H @ H.mT, Y @ H.mT, W)
        H = nnls_gram(W.mT @ W, Y.mT @ W, H.mT).mT
        record(t, H)
    return W, H


def _hals_sweep(F, C, B):
    """One HALS sweep over the columns of F for min ||R - F G^T||: C = R G, B = G^T G (F is updated in place)."""
    for j in range(F.shape[1]):
        if B[j, j] > 0:
            F[:, j] = torch.clamp(F[:, j] + (C[:, j] - F @ B[:, j]) / B[j, j], min=0)
    return F


def hals(Y, W, H, iters, record):
    W, A = W.clone(), H.mT.contiguous()
    for t in range(1, iters + 1):
        _hals_sweep(W, Y @ A, A.mT @ A)
        _hals_sweep(A, Y.mT @ W, W.mT @ W)
        record(t, A.mT)
    return W, A.mT


def mu(Y, W, H, iters, record, eps=1e-12):
    # Lee and Seung's multiplicative updates need a positive start: zeros of the clipped start stay zero
    W, H = W.clamp(min=eps), H.clamp(min=eps)
    for t in range(1, iters + 1):
        W = W * (Y @ H.mT) / (W @ (H @ H.mT) + eps)
        H = H * (W.mT @ Y) / ((W.mT @ W) @ H + eps)
        record(t, H)
    return W, H


def sklearn_cd(Y, W, H, iters):
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = NMF(W.shape[1], init="custom", solver="cd", max_iter=iters, tol=0.0)
        model.fit_transform(Y.numpy(), W=W.numpy().copy(), H=H.numpy().copy())
    return model.components_


def run_method(method, Y, A0, A_true, iters, every):
    """Final recovery error, the errors every `every` iterations and the seconds taken (errors excluded)."""
    Yt, A0t = torch.as_tensor(Y), torch.as_tensor(A0)
    curve, spent = [], [0.0]

    def record(t, H):
        if t % every == 0:
            tic = time.perf_counter()
            curve.append(recovery_error((H.mT if H.shape[0] != A_true.shape[0] else H).numpy(), A_true))
            spent[0] += time.perf_counter() - tic

    start = time.perf_counter()
    if method.startswith("alternating"):
        floor = 0.0 if method == "alternating-floor0" else 1.0  # 0: the paper's schedule down to zero
        result = alternating_nmf(Yt, A0t, max_iter=iters, noise_floor=floor, callback=lambda t, A: record(t, A))
        final = result.A.numpy()
    else:
        H0 = A0t.clamp(min=0).mT.contiguous()
        W0 = nnls_decode(Yt, H0)
        if method == "sklearn-cd":
            final = sklearn_cd(Yt, W0, H0, iters).T
        else:
            _, H = {"anls": anls, "hals": hals, "mu": mu}[method](Yt, W0, H0, iters, record)
            final = H.mT.numpy()
    seconds = time.perf_counter() - start - spent[0]
    return recovery_error(final, A_true), curve, seconds


# ------------------------------------------------------------------------------------------------ the numpy twin
def numpy_reference(Y, A0, iters, inner=50, alpha=0.1, decay=1.1, lr=1.0, noise_floor=1.0, hoisted=False):
    """The same iteration as symnmf.alternating.alternating_nmf, written plainly in numpy (float64).

    The decode uses numpy's pseudo-inverse. hoisted=False takes the inner gradient steps one by one,
    each forming the full gradient (Y^T - A W^T) W as the paper's pseudo-code reads; hoisted=True
    forms Y^T W and W^T W once per decode and takes the steps on them.
    """
    n, d = Y.shape
    k = A0.shape[1]
    A = A0.copy()
    norms0 = np.linalg.norm(A, axis=0)
    y_norm2 = (Y * Y).sum()
    schedule = alpha * np.maximum(Y @ np.linalg.pinv(A).T, 0).max()
    floor = np.zeros(k)
    for _ in range(iters):
        schedule /= decay
        pinv = np.linalg.pinv(A)                     # k x d
        raw = Y @ pinv.T                             # n x k: A^+ y for every sample
        W = np.maximum(raw - np.maximum(schedule, floor), 0)
        if noise_floor > 0:
            G_inv = pinv @ pinv.T                    # (A^T A)^{-1}
            outside = max(y_norm2 - ((Y @ A) * raw).sum(), 0.0)
            floor = noise_floor * np.sqrt(outside / (n * (d - k))) * np.sqrt(np.diag(G_inv))
        B = W.T @ W
        eta = lr / B.sum(1).max()
        if hoisted:
            C = Y.T @ W
            for _ in range(inner):
                A = A + eta * (C - A @ B)
        else:
            for _ in range(inner):
                A = A + eta * (Y.T - A @ W.T) @ W
        A = A * (norms0 / np.linalg.norm(A, axis=0))
    return A


# ------------------------------------------------------------------------------------------------ runs
def study(A_true, n, iters, every, seeds, rhos, noises, rho_main):
    rows = []
    grid = [(rho, noise) for rho in rhos for noise in (0.0, 0.1)] + [(rho_main, z) for z in noises if z not in (0.0, 0.1)]
    for rho, noise in grid:
        for seed in seeds:
            Y, X, A0 = problem(A_true, n, rho, noise, seed)
            corr = mean_correlation(X)
            for method in METHODS:
                err, curve, seconds = run_method(method, Y, A0, A_true, iters, every)
                rows.append(dict(rho=rho, corr=corr, noise=noise, seed=seed, method=method, error=err, curve=curve,
                                 seconds=seconds, start=recovery_error(A0, A_true),
                                 start_clipped=recovery_error(np.maximum(A0, 0), A_true)))
                print(f"rho {rho:.2f} corr {corr:.3f} noise {noise:.2f} seed {seed} {method:12s} "
                      f"error {err:.4g} ({seconds:.1f} s)", flush=True)
    return rows


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - tic)
    return min(times), out


def timings(A_true, n, iters, batch, repeats):
    Y, _, A0 = problem(A_true, n, 0.55, 0.1, seed=100)
    Yt, A0t = torch.as_tensor(Y), torch.as_tensor(A0)
    out = {"shape": (n, A_true.shape[0], A_true.shape[1]), "iters": iters}
    out["numpy, steps one by one"], A_loop = best_of(lambda: numpy_reference(Y, A0, iters), 1)
    out["numpy, hoisted products"], A_np = best_of(lambda: numpy_reference(Y, A0, iters, hoisted=True), repeats)
    out["symnmf float64"], res = best_of(lambda: alternating_nmf(Yt, A0t, max_iter=iters), repeats)
    out["symnmf float32"], res32 = best_of(
        lambda: alternating_nmf(Yt.float(), A0t.float(), max_iter=iters), repeats)
    out["agree"] = (float(np.linalg.norm(res.A.numpy() - A_np) / np.linalg.norm(A_np)),
                    float(np.linalg.norm(A_loop - A_np) / np.linalg.norm(A_np)),
                    recovery_error(res32.A.double().numpy(), A_true), recovery_error(res.A.numpy(), A_true))
    # many small problems: batch x (n_b x d_b) with k_b features, one call against a loop of calls
    nb, db, kb = 500, 100, 10
    rng = np.random.default_rng(7)
    Ab = rng.random((batch, db, kb)) * (rng.random((batch, db, kb)) < 0.3)
    Ab /= Ab.sum(1, keepdims=True)
    Xb = np.stack([correlated_weights(nb, kb, 0.55, rng) for _ in range(batch)])
    Yb = Xb @ Ab.transpose(0, 2, 1)
    A0b = np.stack([perturbed_start(a, rng) for a in Ab])
    Ybt, A0bt = torch.as_tensor(Yb), torch.as_tensor(A0b)
    out["batch"] = (batch, nb, db, kb)
    out["batched call"], resb = best_of(lambda: alternating_nmf(Ybt, A0bt, max_iter=iters), repeats)
    out["loop of calls"], _ = best_of(lambda: [alternating_nmf(Ybt[i], A0bt[i], max_iter=iters) for i in range(batch)], 1)
    out["loop of numpy"], _ = best_of(
        lambda: [numpy_reference(Yb[i], A0b[i], iters, hoisted=True) for i in range(batch)], 1)
    errs = [recovery_error(resb.A[i].numpy(), Ab[i]) for i in range(batch)]
    out["batch errors"] = (float(np.median(errs)), float(np.max(errs)))
    return out


# ------------------------------------------------------------------------------------------------ report
def _fmt(x):
    return f"{x:.4f}" if x >= 1e-3 else f"{x:.1e}"


def report(rows, times, meta, path):
    lines = [f"# Alternating-update NMF: feature recovery and CPU time ({meta['date']})", "",
             f"Machine: {meta['machine']}; torch {torch.__version__}, numpy {np.__version__}, 1 thread "
             f"(torch.set_num_threads(1), OMP_NUM_THREADS=1). No GPU numbers: none was available.", "",
             f"Features A*: {meta['features']} (d = {meta['d']}, k = {meta['k']}), n = {meta['n']} samples, "
             f"{meta['iters']} iterations for every method, seeds {meta['seeds']}. Start error "
             f"{meta['start']:.3f} (clipped at 0 for the NMF baselines: {meta['start_clipped']:.3f}).", "",
             "## Recovery error against the weights' correlation (mean over seeds; max in brackets)", "",
             "| rho | mean corr | noise | " + " | ".join(METHODS) + " |",
             "| --- | --- | --- |" + " --- |" * len(METHODS)]
    keys = sorted({(r["rho"], r["noise"]) for r in rows}, key=lambda t: (t[1] not in (0.0, 0.1), t[1], t[0]))
    for rho, noise in keys:
        sel = [r for r in rows if r["rho"] == rho and r["noise"] == noise]
        corr = np.mean([r["corr"] for r in sel if r["method"] == METHODS[0]])
        cells = []
        for m in METHODS:
            e = [r["error"] for r in sel if r["method"] == m]
            cells.append(f"{_fmt(np.mean(e))} ({_fmt(np.max(e))})")
        lines.append(f"| {rho:.2f} | {corr:.3f} | {noise:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per run (mean over every run of the table, recovery-error evaluation excluded):", "",
              "| " + " | ".join(METHODS) + " |", "|" + " --- |" * len(METHODS),
              "| " + " | ".join(f"{np.mean([r['seconds'] for r in rows if r['method'] == m]):.2f}" for m in METHODS)
              + " |", ""]
    t = times
    n, d, k = t["shape"]
    lines += [f"## CPU time of the alternating updates ({t['iters']} outer iterations x 50 steps, "
              f"n = {n}, d = {d}, k = {k}, correlation rho = 0.55, 10% noise)", "",
              "| implementation | seconds | speed-up over numpy (one by one) |", "| --- | --- | --- |"]
    base = t["numpy, steps one by one"]
    for name in ("numpy, steps one by one", "numpy, hoisted products", "symnmf float64", "symnmf float32"):
        lines.append(f"| {name} | {t[name]:.3f} | {base / t[name]:.1f}x |")
    agree = t["agree"]
    lines += ["", f"Agreement: symnmf float64 against numpy (hoisted) {agree[0]:.1e} relative, numpy one by one "
              f"against hoisted {agree[1]:.1e}; recovery error float32 {agree[2]:.4f}, float64 {agree[3]:.4f}.", ""]
    B, nb, db, kb = t["batch"]
    lines += [f"## Many problems at once: {B} problems of n = {nb}, d = {db}, k = {kb} ({t['iters']} iterations, float64)",
              "", "| how | seconds | per problem (ms) |", "| --- | --- | --- |"]
    for name in ("batched call", "loop of calls", "loop of numpy"):
        lines.append(f"| {name} | {t[name]:.3f} | {1000 * t[name] / B:.1f} |")
    lines += ["", f"Recovery error of the batched problems (noiseless): median {t['batch errors'][0]:.2e}, "
              f"max {t['batch errors'][1]:.2e}.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return "\n".join(lines)


def plot(rows, meta, every, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (colour, label, line width): scikit-learn's cd solver is HALS-type and lands on HALS's curve, so
    # HALS is drawn wide underneath it
    styles = {"alternating": ("C3", "alternating (Li-Liang)", 1.5),
              "alternating-floor0": ("C5", "alternating, threshold to 0", 1.0),
              "anls": ("C0", "ANLS", 1.5), "hals": ("C1", "HALS", 4.0), "mu": ("C2", "multiplicative", 1.5),
              "sklearn-cd": ("C4", "scikit-learn NMF (cd)", 1.0)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, noise in zip(axes[:2], (0.0, 0.1)):
        for m in METHODS:
            curves = [r["curve"] for r in rows if r["method"] == m and r["rho"] == meta["rho_main"] and r["noise"] == noise]
            if not curves or not curves[0]:
                continue
            c = np.mean(np.array(curves), axis=0)
            ax.semilogy(every * np.arange(1, len(c) + 1), c, color=styles[m][0], lw=styles[m][2], label=styles[m][1])
        ax.set_title(f"mean corr {meta['corr_main']:.2f}, noise {noise:.0%}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("recovery error")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[2]
    for m in METHODS:
        for noise, ls in ((0.0, "-"), (0.1, "--")):
            sel = sorted({r["rho"] for r in rows if r["noise"] == noise and r["method"] == m})
            if len(sel) < 2:
                continue
            x = [np.mean([r["corr"] for r in rows if r["rho"] == rho and r["noise"] == noise and r["method"] == m])
                 for rho in sel]
            y = [np.mean([r["error"] for r in rows if r["rho"] == rho and r["noise"] == noise and r["method"] == m])
                 for rho in sel]
            ax.semilogy(x, y, ls, marker="o", ms=3, color=styles[m][0], lw=styles[m][2])
    ax.set_title(f"after {meta['iters']} iterations (solid: no noise, dashed: 10%)")
    ax.set_xlabel("mean pairwise correlation of the weights")
    ax.set_ylabel("recovery error")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run; nothing is written")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        k, n, iters, every, rhos, noises, batch, repeats = 6, 300, 30, 10, [0.55], [0.0, 0.1], 4, 1
    else:
        k, n, iters, every, rhos, noises, batch, repeats = 20, 2000, 200, 5, [0.0, 0.3, 0.55, 0.7, 0.85], \
            [0.0, 0.01, 0.05, 0.1], 64, 3
    A_true, source = ground_truth_features(k)
    rho_main = 0.55
    rows = study(A_true, n, iters, every, args.seeds, rhos, noises, rho_main)
    times = timings(A_true, n, min(iters, 50), batch, repeats)
    first = [r for r in rows if r["method"] == METHODS[0]]
    meta = dict(date=datetime.date.today().isoformat(), machine=f"{platform.machine()} CPU, {os.cpu_count()} cores",
                features=f"NMF features of 2,000 {source} images", d=A_true.shape[0], k=k, n=n, iters=iters,
                seeds=args.seeds, start=np.mean([r["start"] for r in first]),
                start_clipped=np.mean([r["start_clipped"] for r in first]), rho_main=rho_main,
                corr_main=np.mean([r["corr"] for r in first if r["rho"] == rho_main]))
    if args.quick:
        print(report(rows, times, meta, os.devnull))
        return rows, times
    out = os.path.join(HERE, "results", f"study_alternating-{meta['date']}-cpu.md")
    print(report(rows, times, meta, out))
    png = plot(rows, meta, every, os.path.join(ROOT, "docs", "alternating_nmf.png"))
    print("wrote", out, png)
    return rows, times


if __name__ == "__main__":
    main()
