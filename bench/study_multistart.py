"""A baseline for SymNMF-Net's restarts: SymHALS from the same number of random starts, the start whose labels
have the highest modularity on the graph kept (the net's own label-free rule), on the data sets of
bench/study_net.py.

SymNMF-Net's default trains 4 restarts and keeps the highest modularity of their polished labels; the
study's comparison (`study_net.py heldout`) runs every classical solver from one start. This part asks how
much of the net's gain the restarts and the rule give by themselves: SymHALS from 4 Kuang starts, side by
side (`symnmf.solvers.hals.hals_restarts`, the library's defaults: up to 500 iterations, tolerance 1e-3),
the graphs and seeds of the study, float32, one thread. The table puts it beside the net's and one-start
SymHALS's ACC from the newest `heldout` records of bench/results/study_net-runs.jsonl for the same data set
and seeds (ACC only: those runs' times come from another machine load).

    SYMNMF_FASHION_MNIST=DIR OMP_NUM_THREADS=1 python bench/study_multistart.py --seeds 0 1 2 3 4
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
from bench.study_net import HELDOUT, STUDY, VALIDATION, load_any  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def multistart(X, k, seed, starts):
    """SymHALS from `starts` Kuang starts of the seed side by side; (labels, E, seconds) of the start whose labels
    have the highest modularity on X, then every start's labels and modularity."""
    from symnmf.metrics import modularity
    from symnmf.solvers.base import init_factor, make_generator
    from symnmf.solvers.hals import hals_restarts

    start = time.perf_counter()
    runs = hals_restarts(X, init_factor(X, k, make_generator(seed), batch_shape=(starts,)))
    labels = torch.stack([run.U.argmax(-1) for run in runs])
    scores = torch.as_tensor(modularity(X, labels, k))
    kept = int(torch.argmax(scores))
    seconds = time.perf_counter() - start
    return labels[kept].numpy(), runs[kept].history["rel_error"][-1], seconds, labels.numpy(), scores.tolist()


def recorded(path):
    """The newest `heldout` record of study_net.py per (data set, seed)."""
    newest = {}
    if os.path.exists(path):
        for line in open(path):
            record = json.loads(line)
            if record.get("part") == "heldout":
                newest[(record["data"], record["seed"])] = record
    return newest


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=[*STUDY, *HELDOUT, *VALIDATION])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--starts", type=int, default=4)
    p.add_argument("--net-runs", default=os.path.join(RESULTS, "study_net-runs.jsonl"),
                   help="study_net.py's records, for the net's and one-start SymHALS's ACC")
    p.add_argument("--runs", default=os.path.join(RESULTS, "study_multistart-runs.jsonl"),
                   help="JSON lines file every seed's record is appended to ('' for none)")
    p.add_argument("--out", help="results folder (default: bench/results)")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
    torch.set_num_threads(1)
    from symnmf.reproduce import score
    from symnmf.validation import as_similarity, check_similarity

    net = recorded(args.net_runs)
    rows = []
    for name in args.data:
        graphs, records = {}, []
        for seed in args.seeds:
            key = seed if name.startswith("planted") else None  # a planted graph is drawn from the seed
            if key not in graphs:
                X, y = load_any(name, seed)[:2]
                graphs[key] = (check_similarity(as_similarity(X)), np.asarray(y))
            X, y = graphs[key]
            labels, E, seconds, every, scores = multistart(X, int(len(np.unique(y))), seed, args.starts)
            record = {"data": name, "seed": seed, "starts": args.starts, "acc": score(y, labels)["acc"], "E": E,
                      "seconds": seconds, "acc_every_start": [score(y, lab)["acc"] for lab in every],
                      "modularity_every_start": scores}
            print(json.dumps(record), flush=True)
            if args.runs:
                with open(args.runs, "a") as f:
                    f.write(json.dumps(record) + "\n")
            records.append(record)
        row = {"data": name, "seeds": len(records),
               f"hals_{args.starts}_starts": np.mean([r["acc"] for r in records]),
               "std": np.std([r["acc"] for r in records]),
               "E": f"{np.mean([r['E'] for r in records]):.5f}", "seconds": np.mean([r["seconds"] for r in records])}
        if all((name, seed) in net for seed in args.seeds):
            old = [net[(name, seed)] for seed in args.seeds]
            row["net"] = np.mean([r["net"]["acc"] for r in old])
            row["net_E"] = f"{np.mean([r['net']['E'] for r in old]):.5f}"
            row["hals_1_start"] = np.mean([r["hals"]["acc"] for r in old])
            row["net_minus"] = row["net"] - row[f"hals_{args.starts}_starts"]
        rows.append(row)
    columns = ["data", "seeds", "net", "hals_1_start", f"hals_{args.starts}_starts", "std", "net_minus", "net_E", "E",
               "seconds"]
    write_table("study_multistart", rows, columns, header_lines=[
        f"SymHALS from {args.starts} Kuang starts side by side, the highest modularity of their labels kept; float32, "
        f"one thread, seeds {' '.join(map(str, args.seeds))}; means over the seeds",
        "net, hals_1_start, net_E: ACC and E of the newest `study_net.py heldout` records of the same data set and "
        "seeds; net_minus: net - the multi-start SymHALS; seconds: the multi-start fit (this run)",
    ], out_dir=args.out, device=torch.device("cpu"))


if __name__ == "__main__":
    main()
