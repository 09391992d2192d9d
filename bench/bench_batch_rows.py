"""A batch of problems on one sparse X, side by side or one after another, on the CPU.

The CPU kernels that multiply a sparse X by a batch of n x r factors (the SpMM, and the two fused kernels of the
sparse layer loss) take float32 r = 8 side by side: each nonzero of X read once for up to four problems,
gathering their rows from an interleaved copy (docs/cpu_backend.md, "Problems side by side"). The environment
variable SYMNMF_CPU_SIDE_BY_SIDE=0 turns that off. This script times both, each variant in a fresh process, the
two taking turns round after round so that the machine's drift hits both alike, and writes the medians:

    kernels   spmm_csr, sparse_loss_terms_csr and sparse_loss_grad_csr on 4 problems, planted graphs
    fits      fit_affinity on the net study's planted graphs: SymNMF-Net's default recipe (4 restarts),
              SymHALS, and SymHALS from 4 starts side by side (n_init=4); the thread policy is the library's

    python bench/bench_batch_rows.py kernels --threads 1 --n 2000 20000 200000 --r 8
    python bench/bench_batch_rows.py fits
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {"one after another": "0", "side by side": "1"}


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def _time(fn, calls):
    fn()
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _median(times) * 1e3


def run_kernels(args):
    import torch

    from bench.bench_cpu import planted_graph

    torch.set_num_threads(args.threads)
    ops = torch.ops.symnmf_kernels
    out = {}
    for n in args.n:
        X, _ = planted_graph(n, 8, 20, seed=0)
        X = X.to_sparse_csr()
        csr = (X.crow_indices().int(), X.col_indices().int(), X.values())
        for r in args.r:
            gen = torch.Generator().manual_seed(1)
            U, P = torch.rand(4, n, r, generator=gen), torch.rand(4, n, r, generator=gen)
            lam = torch.rand(4, generator=gen) + 0.5
            S, R, _ = ops.sparse_loss_terms_csr(*csr, U, P, lam)
            out[f"spmm {n} {r}"] = _time(lambda: ops.spmm_csr(*csr, U), args.calls)
            out[f"terms {n} {r}"] = _time(lambda: ops.sparse_loss_terms_csr(*csr, U, P, lam), args.calls)
            out[f"grad {n} {r}"] = _time(lambda: ops.sparse_loss_grad_csr(*csr, None, S, R, lam, lam, lam), args.calls)
    return out


def run_fits(args):
    from bench.study_net import load
    from symnmf.fitting import fit_affinity

    out = {}
    for name in args.graphs:
        X, _ = load(name)
        for label, solver, extra in (("net", "net", {}), ("hals", "hals", {}), ("hals, n_init=4", "hals", {"n_init": 4})):
            start = time.perf_counter()
            fit = fit_affinity(X, 8, solver, random_state=0, **extra)
            out[f"{name} {label}"] = (time.perf_counter() - start) * 1e3
            out[f"{name} {label} E"] = float(fit.rel_error)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["kernels", "fits"])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000, 200000], help="kernels: graph sizes")
    parser.add_argument("--r", type=int, nargs="+", default=[8], help="kernels: columns of each problem")
    parser.add_argument("--threads", type=int, default=1, help="kernels: torch threads")
    parser.add_argument("--calls", type=int, default=9, help="kernels: timed calls per process (median)")
    parser.add_argument("--graphs", nargs="+", default=["planted", "planted20k"], help="fits: bench/study_net.py graphs")
    parser.add_argument("--rounds", type=int, default=3, help="processes per variant, taking turns")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_kernels(args) if args.what == "kernels" else run_fits(args)))
        return

    runs = {name: [] for name in VARIANTS}
    for k in range(args.rounds):
        order = list(VARIANTS) if k % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            env = dict(os.environ, SYMNMF_CPU_SIDE_BY_SIDE=VARIANTS[name])
            if args.what == "kernels":
                env["OMP_NUM_THREADS"] = str(args.threads)
            done = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child"], env=env,
                                  capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))

    from bench.common import write_table

    rows = []
    for key in runs["one after another"][0]:
        if key.endswith(" E"):
            continue
        before = [run[key] for run in runs["one after another"]]
        after = [run[key] for run in runs["side by side"]]
        row = {"case": key, "one_after_another_ms": _median(before), "side_by_side_ms": _median(after),
               "speed_up": _median(before) / _median(after),
               "range_ms": "%.3g-%.3g / %.3g-%.3g" % (min(before), max(before), min(after), max(after))}
        if key + " E" in runs["side by side"][0]:
            errors = {run[key + " E"] for variant in runs.values() for run in variant}
            row["E"] = "%.10f" % errors.pop() if len(errors) == 1 else "differs: " + ", ".join(map(str, errors))
        rows.append(row)
    threads = f"{args.threads} thread(s)" if args.what == "kernels" else "the library's thread policy"
    header = [f"{args.what}: {args.rounds} processes per variant, taking turns; {threads}",
              "one_after_another: SYMNMF_CPU_SIDE_BY_SIDE=0; side_by_side: the default; medians (ms)",
              "kernels: 4 problems on planted graphs (20 entries per row), int32 indices, float32",
              "E: the fit's relative error, the same to the last digit in every run of both variants, or listed"]
    name = f"bench_batch_rows_{args.what}" + (f"_{args.threads}t" if args.what == "kernels" else "")
    write_table(name, rows, ["case", "one_after_another_ms", "side_by_side_ms", "speed_up", "range_ms", "E"], header,
                out_dir=args.out, device="cpu")


if __name__ == "__main__":
    main()
