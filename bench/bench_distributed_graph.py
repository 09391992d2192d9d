"""The kNN graph built row-sharded (symnmf.distributed_graph) against the single-process builder.

For each size, a Gaussian mixture (bench/bench_graph.py's, float32) is written to an .npy file, then:
- "single, T threads": `symnmf.similarity_graph(features, neighbors="exact")` in its own process;
- "sharded, P ranks": `torchrun --nproc-per-node P`, one thread per rank, each rank reading only its
  rows of the file (`symnmf.distributed_graph.similarity_graph`).
seconds: the slowest rank's build (reading its rows included); MB sent: every rank's bytes together
(feature blocks round the ring, the choices sent to their rows' owners, the n-vectors gathered);
peak RSS: the largest process. Both graphs are checked against each other through X v for a random
v (rel_diff) and their stored entries.

    python bench/bench_distributed_graph.py --sizes 50000x64 200000x32
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_graph import mixture  # noqa: E402
from bench.common import write_table  # noqa: E402

COLUMNS = ["n", "d", "build", "processes", "threads_each", "seconds", "speedup", "stored_entries", "MB_sent",
           "peak_rss_gb", "rel_diff", "notes"]


def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _single_worker(path, out):
    from symnmf.graph import similarity_graph

    features = np.load(path)
    start = time.perf_counter()
    A = similarity_graph(features, neighbors="exact")
    seconds = time.perf_counter() - start
    v = torch.from_numpy(np.random.default_rng(1).random(A.shape[0]).astype(np.float32))
    np.save(out + ".xv.npy", (A @ v[:, None]).squeeze(1).numpy())
    with open(out, "w") as f:
        json.dump({"seconds": seconds, "nnz": int(A.values().numel()), "peak_rss_gb": _peak_gb()}, f)


def _sharded_worker(path, out):
    import torch.distributed as dist

    from symnmf import distributed as sd
    from symnmf.distributed_graph import similarity_graph

    sd.init_from_env("gloo")
    dist.barrier()
    graph = similarity_graph(path)
    info = graph.construction
    v = torch.from_numpy(np.random.default_rng(1).random(graph.n).astype(np.float32))
    xv = sd.gather_rows(graph, graph.matmul(v[graph.lo:graph.hi, None]))
    stats = torch.tensor([info["seconds"], info["feature_bytes_sent"] + info["choice_bytes_sent"] +
                          info["gather_bytes_sent"], graph.nnz_local, _peak_gb()], dtype=torch.float64)
    every = [torch.zeros_like(stats) for _ in range(graph.comm.world_size)]
    dist.all_gather(every, stats)
    if graph.comm.rank == 0:
        every = torch.stack(every)
        np.save(out + ".xv.npy", xv.squeeze(1).numpy())
        with open(out, "w") as f:
            json.dump({"seconds": float(every[:, 0].max()), "bytes": float(every[:, 1].sum()),
                       "nnz": int(every[:, 2].sum()), "peak_rss_gb": float(every[:, 3].max())}, f)
    dist.destroy_process_group()


def _run(cmd, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["50000x64", "200000x32"], help="n x d of each mixture")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="threads of the single-process builds")
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2], help="ranks of the sharded builds")
    p.add_argument("--out", help="results folder (default bench/results)")
    p.add_argument("--name", default="bench_distributed_graph", help="table name")
    p.add_argument("--worker", choices=["single", "sharded"], help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        (_single_worker if args.worker == "single" else _sharded_worker)(args.features, args.result)
        return
    me = os.path.abspath(__file__)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n, d = (int(v) for v in size.split("x"))
            path = os.path.join(tmp, f"{size}.npy")
            np.save(path, mixture(n, d))
            base, runs = None, []
            for threads in args.threads:
                result = os.path.join(tmp, f"{size}-single-{threads}.json")
                _run([sys.executable, me, "--worker", "single", "--features", path, "--result", result], threads)
                runs.append(("single", 1, threads, result))
            for ranks in args.ranks:
                result = os.path.join(tmp, f"{size}-sharded-{ranks}.json")
                _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                      me, "--worker", "sharded", "--features", path, "--result", result], 1)
                runs.append(("sharded", ranks, 1, result))
            reference = np.load(runs[0][3] + ".xv.npy").astype(np.float64)
            for build, processes, threads, result in runs:
                with open(result) as f:
                    info = json.load(f)
                base = info["seconds"] if base is None else base
                xv = np.load(result + ".xv.npy").astype(np.float64)
                rows.append({
                    "n": n, "d": d, "build": build, "processes": processes, "threads_each": threads,
                    "seconds": info["seconds"], "speedup": base / info["seconds"], "stored_entries": info["nnz"],
                    "MB_sent": info.get("bytes", 0.0) / 1e6, "peak_rss_gb": info["peak_rss_gb"],
                    "rel_diff": float(np.linalg.norm(xv - reference) / np.linalg.norm(reference)),
                })
                print(rows[-1], flush=True)
    header = ["Gaussian mixtures (10 centres), float32; k = floor(log2 n) + 1, Kuang's self-tuning weights, exact search",
              "single: symnmf.similarity_graph(neighbors='exact') in one process with T threads; sharded: "
              "symnmf.distributed_graph.similarity_graph under torchrun, P gloo ranks of one thread each",
              "seconds: the build (the slowest rank's); speedup: against the first row of the size; MB_sent: all ranks; "
              "rel_diff: ||X v - X_1 v|| / ||X_1 v|| against the first row's graph"]
    write_table(args.name, rows, COLUMNS, header, out_dir=args.out, device="cpu")


if __name__ == "__main__":
    main()
