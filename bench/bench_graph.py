"""Similarity-graph construction at scale: time, peak memory and neighbour recall of
symnmf.similarity_graph with the exact blocked search and with FAISS's HNSW index.

Data: Gaussian mixtures (10 centres, unit noise, centres at distance about 3 sigma), float32.
"fashion-sized" is 70,000 x 784 (the size of Fashion-MNIST); "1M" is 1,000,000 x 32. The size
"fashion" is Fashion-MNIST itself: its 70,000 images (60,000 training and 10,000 test), pixels in
[0, 1], read from Zalando's idx files (bench/study_net.py `load_fashion`; SYMNMF_FASHION_MNIST=DIR).
recall: the share of the exact k nearest neighbours that the search found, on 2,000 rows
(the exact neighbours of those rows against all n, computed apart from the timed run).
peak_rss_gb: the process's peak resident memory after the row (ru_maxrss; it never falls, so
rows run from small to large).

    OMP_NUM_THREADS=2 python bench/bench_graph.py                  # both sizes
    python bench/bench_graph.py --sizes 70000x784 --searches exact faiss
    python bench/bench_graph.py --device cuda --sizes 200000x784 1000000x32 --searches exact --exact-max-n 0 \
        --chunk-sizes 0 256
    SYMNMF_FASHION_MNIST=DIR python bench/bench_graph.py --sizes fashion --name bench_graph_fashion
"""
import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import write_table  # noqa: E402
from symnmf.graph import knn_search, similarity_graph  # noqa: E402

COLUMNS = ["data", "n", "d", "neighbors", "k", "seconds", "stored_entries", "recall", "peak_rss_gb", "peak_gpu_gb",
           "threads", "notes"]


def mixture(n, d, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, d)) * (3.0 / np.sqrt(2))
    return (centres[rng.integers(0, 10, n)] + rng.normal(size=(n, d))).astype(np.float32)


def recall_of(A, X, k, sample=2000, seed=0):
    """Share of the exact k nearest neighbours of `sample` rows that are stored in A's rows."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(X.shape[0], size=min(sample, X.shape[0]), replace=False)
    Xt = torch.from_numpy(X)
    crow, col = A.crow_indices(), A.col_indices()
    hits = 0
    for start in range(0, len(rows), 256):
        block = torch.from_numpy(rows[start:start + 256])
        D = torch.cdist(Xt[block], Xt) ** 2
        D[torch.arange(len(block)), block] = float("inf")
        exact = torch.topk(D, k, largest=False).indices
        for i, near in zip(block.tolist(), exact.tolist()):
            stored = set(col[crow[i]:crow[i + 1]].tolist())
            hits += len(stored & set(near))
    return hits / (len(rows) * k)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["70000x784", "1000000x32"], help="n x d of each mixture")
    p.add_argument("--searches", nargs="+", default=["exact", "faiss"], choices=["exact", "faiss"])
    p.add_argument("--exact-max-n", type=int, default=100_000, help="skip the exact search above this n (0: never)")
    p.add_argument("--device", default="cpu", help="where the features are, and so where the exact search runs")
    p.add_argument("--chunk-sizes", nargs="+", type=int, default=[0],
                   help="rows per block of the exact search, one row of the table each (0: the library's default)")
    p.add_argument("--out", help="results folder (default bench/results)")
    p.add_argument("--name", default="bench_graph", help="table name (file <name>-<date>-cpu.md)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    header = ["Gaussian mixtures (10 centres) or Fashion-MNIST, float32; k = floor(log2 n) + 1 neighbours, "
              "Kuang's self-tuning weights; recall of the exact k nearest neighbours on 2,000 rows",
              f"seconds: similarity_graph end to end (search, weights, normalisation, CSR), features on {device}"]
    rows = []
    for size in args.sizes:
        if size == "fashion":
            from bench.study_net import load_fashion

            X = np.concatenate([load_fashion("train")[0], load_fashion("t10k")[0]])
            n, d = X.shape
        else:
            n, d = (int(v) for v in size.split("x"))
            X = mixture(n, d)
        k = int(np.floor(np.log2(n))) + 1
        runs = [(search, chunk) for search in args.searches
                for chunk in (args.chunk_sizes if search == "exact" else [0])]
        for search, chunk in runs:
            if search == "exact" and args.exact_max_n and n > args.exact_max_n:
                continue
            features = torch.from_numpy(X).to(device)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            A = similarity_graph(features, neighbors=search, chunk_size=chunk or None)
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            A = A.cpu()
            row = {"data": "Fashion-MNIST" if size == "fashion" else "mixture", "n": n, "d": d, "neighbors": search,
                   "k": k, "seconds": seconds, "stored_entries": int(A.values().numel()),
                   "threads": torch.get_num_threads(),
                   "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                   "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
                   "notes": f"chunk_size {chunk}" if chunk else ""}
            row["recall"] = recall_of(A, X, k)
            rows.append(row)
            print(row, flush=True)
            del A, features
            # after every row: a run cut short keeps the rows it finished
            write_table(args.name, rows, COLUMNS, header, out_dir=args.out, device=device, echo=False)
    write_table(args.name, rows, COLUMNS, header, out_dir=args.out, device=device)


if __name__ == "__main__":
    main()
