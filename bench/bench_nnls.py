"""The batched NNLS op against scipy.optimize.nnls called once per column.

Each row solves min_{S >= 0} ||B - A S||_F for A (a x k) and B (a x m): the
columns of B are m independent NNLS problems sharing A. Variants:

    scipy        scipy.optimize.nnls(A, b) for every column b of B (Lawson-Hanson, float64): the way the
                 NeuralNMF package solves its layers
    ours         sk.nnls(gram(A), B^T A): the Gram formed once, all columns solved together, cold start
    ours_warm    the same started from the passive sets of a nearby solution (that of B + 1% noise), as
                 between two training steps of Neural NMF
    ours_fb      ours plus the backward of a random upstream gradient, through the active set

x_scipy is scipy's time / ours (above 1: ours is faster); rel_err is ||S - S_scipy|| / ||S_scipy||.
Data: A and B uniform in [0, 1) (non-negative, as in NMF layers), so many entries of S are zero.
On CUDA the op runs its Triton kernel; scipy runs on the host.

    python bench/bench_nnls.py            # writes bench/results/bench_nnls-<date>-<device>.md
    python bench/bench_nnls.py --quick    # a smoke run
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.common import bench, write_table  # noqa: E402

COLUMNS = ["k", "a", "m", "dtype", "scipy_ms", "ours_ms", "ours_warm_ms", "ours_fb_ms", "x_scipy", "x_scipy_warm",
           "rel_err"]


def scipy_nnls(A, B):
    return np.stack([scipy.optimize.nnls(A, B[:, j])[0] for j in range(B.shape[1])], axis=1)


def nnls(k=9, a=500, m=1000, dtype=torch.float64, device="cpu", rep=200, seed=0, scipy_runs=5):
    """One row of the table: (the dict, the op's solution)."""
    rng = np.random.default_rng(seed)
    A_np, B_np = rng.random((a, k)), rng.random((a, m))
    A, B = (torch.tensor(t, dtype=dtype, device=device) for t in (A_np, B_np))
    S_ref = scipy_nnls(A_np, B_np)
    scipy_ms = bench(lambda: scipy_nnls(A_np, B_np), warmup=0, rep=rep, device="cpu", max_runs=scipy_runs)

    def ours():
        return sk.nnls(sk.gram(A), B.mT @ A)

    near = sk.nnls(sk.gram(A), (B + 0.01 * torch.rand_like(B)).mT @ A)
    ours_ms = bench(ours, warmup=rep / 4, rep=rep, device=device)
    warm_ms = bench(lambda: sk.nnls(sk.gram(A), B.mT @ A, near), warmup=rep / 4, rep=rep, device=device)
    Ag = A.clone().requires_grad_()
    dS = torch.randn(m, k, dtype=dtype, device=device)

    def forward_backward():
        S = sk.nnls(sk.gram(Ag), B.mT @ Ag)
        S.backward(dS)

    fb_ms = bench(forward_backward, warmup=rep / 4, rep=rep, grad_to_none=[Ag], device=device)
    S = ours().mT.double().cpu().numpy()
    err = float(np.linalg.norm(S - S_ref) / np.linalg.norm(S_ref))
    row = dict(k=k, a=a, m=m, dtype=str(dtype).removeprefix("torch."), scipy_ms=scipy_ms, ours_ms=ours_ms,
               ours_warm_ms=warm_ms, ours_fb_ms=fb_ms, x_scipy=scipy_ms / ours_ms, x_scipy_warm=scipy_ms / warm_ms,
               rel_err=err)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    parser.add_argument("--quick", action="store_true", help="two small rows, not written to bench/results")
    parser.add_argument("--m", type=int, nargs="+", help="only the rows with these numbers of columns")
    parser.add_argument("--scipy-runs", type=int, default=5, help="timed runs of the scipy loop (its median)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        shapes = [(4, 50, 200, torch.float64), (9, 100, 300, torch.float32)]
    else:
        shapes = [(k, 500, m, torch.float64) for k in (2, 4, 9, 16, 32) for m in (1000, 10000)]
        shapes += [(k, 500, 10000, torch.float32) for k in (9, 32)]
    if args.m:
        shapes = [shape for shape in shapes if shape[2] in args.m]
    rows = []
    for k, a, m, dtype in shapes:
        row = nnls(k, a, m, dtype, args.device, rep=50 if args.quick else 300, scipy_runs=args.scipy_runs)
        print(row, flush=True)
        rows.append(row)
    if args.quick:
        return rows
    header = [
        f"threads: {torch.get_num_threads()} (torch.set_num_threads); scipy single-threaded",
        "S = argmin_{S >= 0} ||B - A S||_F, A (a x k), B (a x m) uniform in [0, 1); times in ms, medians",
        "ours = sk.nnls(gram(A), B^T A) cold; ours_warm from the passive sets of the solution for B + 1% noise; "
        "ours_fb = ours + backward",
        "x_scipy = scipy_ms / ours_ms, x_scipy_warm = scipy_ms / ours_warm_ms; rel_err against scipy's solution",
    ]
    write_table("bench_nnls", rows, COLUMNS, header, device=args.device)
    return rows


if __name__ == "__main__":
    main()
