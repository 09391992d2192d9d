"""How long SymNMF-Net's restarts are polished: 100 SymHALS iterations (the default recipe) against
SymHALS's own stopping rule (up to 500 iterations, tolerance 1e-3), with SymHALS alone beside them.

The data sets and the graph are `symnmf reproduce`'s (Kuang's kNN graph of the raw features), in its
precision (float64 for integer features); every fit is `symnmf.fitting.fit_affinity`, as `reproduce`,
`SymNMF` and `symnmf cluster` run it; one thread. Per data set: mean ACC, mean E and the mean wall time
of a fit over the seeds. The question: does polishing to convergence bring the net's E down to
SymHALS's, and at what cost in ACC and time?

    OMP_NUM_THREADS=1 python bench/study_net_polish.py --data digits mfeat-pix mnist5k --seeds 0 1 2 3 4
"""
import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import write_table  # noqa: E402

VARIANTS = {"polish 100 (default)": {"polish_iter": 100}, "polish to SymHALS's rule": {"polish_iter": 500}}


def run(name, seeds, dtype, runs=None, epochs=None):
    """One JSON-able record per seed: ACC, E and seconds of each variant and of SymHALS (appended to `runs`,
    a JSON lines file, when given)."""
    from symnmf import datasets
    from symnmf.fitting import build_affinity, fit_affinity
    from symnmf.reproduce import score

    features, y = datasets.load(name)
    k = len(np.unique(y))
    X = build_affinity(features, "nearest_neighbors", dtype=dtype)
    for seed in seeds:
        record = {"data": name, "seed": seed}
        for variant, options in [*VARIANTS.items(), ("SymHALS", None)]:
            start = time.perf_counter()
            if options is None:
                fit = fit_affinity(X, k, "hals", random_state=seed, threads=1)
            else:
                fit = fit_affinity(X, k, "net", random_state=seed, max_iter=epochs, net_options=options, threads=1)
            record[variant] = {"acc": score(y, fit.labels)["acc"], "E": fit.rel_error,
                               "seconds": time.perf_counter() - start}
        print(json.dumps(record), flush=True)
        if runs:
            with open(runs, "a") as f:
                f.write(json.dumps(record) + "\n")
        yield record


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=["digits", "mfeat-pix", "mnist5k"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--dtype", choices=("auto", "float32", "float64"), default="auto")
    p.add_argument("--epochs", type=int, help="the net's most training steps (default: the recipe's)")
    p.add_argument("--out", help="results folder (default: bench/results)")
    p.add_argument("--runs", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "study_net_polish-runs.jsonl"),
                   help="JSON lines file every seed's record is appended to ('' for none)")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.set_num_threads(1)
    from symnmf.fitting import resolve_dtype

    rows = []
    for name in args.data:
        records = list(run(name, args.seeds, resolve_dtype(args.dtype), args.runs, args.epochs))
        for variant in [*VARIANTS, "SymHALS"]:
            values = {key: [r[variant][key] for r in records] for key in ("acc", "E", "seconds")}
            rows.append({"data": name, "fit": variant, "acc": np.mean(values["acc"]), "acc_std": np.std(values["acc"]),
                         "E": f"{np.mean(values['E']):.6f}",  # the fits differ in the fifth digit
                         "seconds": np.mean(values["seconds"]), "seeds": len(records)})
    write_table("study_net_polish", rows, ["data", "fit", "acc", "acc_std", "E", "seconds", "seeds"],
                header_lines=[f"dtype {args.dtype} (auto: float64 for integer features, as `symnmf reproduce`), "
                              f"one thread, seeds {' '.join(map(str, args.seeds))}; means over the seeds"],
                out_dir=args.out, device=torch.device("cpu"))


if __name__ == "__main__":
    main()
