"""The CPU kernels' output cache (docs/cpu_backend.md, "The host cache"): SymNMF-Net training steps with the
cache and without it (SYMNMF_HOST_CACHE_MB=0), each in fresh processes taking turns, since what glibc does
with freed memory depends on the process's history.

Each process times `--steps` training steps (after 5 to warm up) on the planted graph of bench_cpu.py's
`--profile-net`, one thread, and counts the minor page faults they take. The table gives each setting's median
step and faults per step over the rounds, and every round's step times.

    python bench/bench_host_cache.py                 # bench/results/bench_host_cache-<date>-cpu.md
    python bench/bench_host_cache.py --rounds 2 --net-n 2000 --steps 3
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import write_table  # noqa: E402

COLUMNS = ["n", "r", "restarts", "threads", "cache_step_ms", "none_step_ms", "x_cache", "cache_faults_per_step",
           "none_faults_per_step", "cache_rounds_ms", "none_rounds_ms"]


def child(n, r, restarts, steps):
    """One process: median step time (ms) and minor page faults per step, printed as JSON."""
    from bench.bench_cpu import net_training_step

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, step = net_training_step(n, r, 5, restarts)
    for _ in range(5):
        step()
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"step_ms": statistics.median(times), "faults": faults / steps}))


def run_child(n, r, restarts, steps, cache):
    env = dict(os.environ, TRITON_INTERPRET="0")
    if cache:
        env.pop("SYMNMF_HOST_CACHE_MB", None)
    else:
        env["SYMNMF_HOST_CACHE_MB"] = "0"
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(n), str(r), str(restarts),
                          str(steps)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net-n", type=int, nargs="+", default=[20000, 20000, 200000])
    p.add_argument("--net-r", type=int, nargs="+", default=[8, 8, 8], help="one rank per --net-n")
    p.add_argument("--restarts", type=int, nargs="+", default=[1, 4, 1], help="one count per --net-n")
    p.add_argument("--rounds", type=int, default=5, help="process pairs per row (the two settings in turns)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per process")
    p.add_argument("--out", help="results folder (default bench/results)")
    p.add_argument("--name", default="bench_host_cache")
    p.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(*args.child)
    rows = []
    for n, r, restarts in zip(args.net_n, args.net_r, args.restarts):
        runs = {True: [], False: []}
        for _ in range(args.rounds):
            for cache in (True, False):
                runs[cache].append(run_child(n, r, restarts, args.steps, cache))
        med = {c: statistics.median(x["step_ms"] for x in runs[c]) for c in runs}
        rows.append({
            "n": n, "r": r, "restarts": restarts, "threads": 1, "cache_step_ms": med[True], "none_step_ms": med[False],
            "x_cache": med[False] / med[True],
            "cache_faults_per_step": statistics.median(x["faults"] for x in runs[True]),
            "none_faults_per_step": statistics.median(x["faults"] for x in runs[False]),
            "cache_rounds_ms": " ".join("%.1f" % x["step_ms"] for x in runs[True]),
            "none_rounds_ms": " ".join("%.1f" % x["step_ms"] for x in runs[False]),
        })
    header = [
        "one SymNMF-Net training step (L = 5) on a planted graph (20 entries per row), one thread; each round runs "
        "one process with the cache (the default limit) and one without (SYMNMF_HOST_CACHE_MB=0), in turns",
        f"{args.steps} timed steps per process after 5 to warm up; step_ms: the median over the rounds of each "
        "process's median step; faults_per_step: minor page faults, the median over the rounds; x_cache: "
        "none_step_ms / cache_step_ms",
        "allocator: MALLOC_MMAP_THRESHOLD_=%s, MALLOC_TRIM_THRESHOLD_=%s" % (
            os.environ.get("MALLOC_MMAP_THRESHOLD_", "unset"), os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")),
    ]
    write_table(args.name, rows, COLUMNS, header, out_dir=args.out, device="cpu")


if __name__ == "__main__":
    main()
