"""Tile sweep of the split-n Triton kernels on a GPU: (BLOCK_N, num_warps) per kernel family and rank.

For each family of symnmf_kernels.ops._common._GPU_TILES and each r, every
candidate (BLOCK_N, num_warps) is installed in the table and timed through the
op's own launcher (triton.testing.do_bench median, fresh torch.rand inputs,
n = 1M rows), next to plain torch on the same inputs. Then, with the fastest
tiles installed, the script measures

  - the error of each float32 dot precision (ieee, tf32x3, tf32) and of torch's
    float32 (TF32 off) against a float64 oracle, per family;
  - the block forward and forward + backward (sk.symnmf_block) at n = 1M and 4M
    with the tuned tiles and the default ("auto") precision, with the previous
    table in ieee, and in plain torch, side by side.

    python bench/tune_tiles.py --warm-jobs 16 --out $OUT     # on a GPU machine

--warm-jobs compiles every candidate first, in parallel processes sharing
Triton's disk cache, so the timed pass pays no compile time. The best tiles go
to <out>/<name>-<date>-<device>.json (--name, tune_tiles by default); the tables to the .md beside it.
"""
import argparse
import concurrent.futures
import copy
import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from symnmf_kernels import reference  # noqa: E402
from symnmf_kernels.ops import _common, _launch  # noqa: E402

FAMILIES = ["gram", "apply", "apply_backward", "apply_backward_h", "sparse_terms", "sparse_grad", "block_small",
            "block_small_backward"]
RANKS = [16, 32, 64, 128]
BLOCK_NS = [16, 32, 64, 128, 256]
WARPS = [4, 8]
SMALL_B, SMALL_N = 4096, 256  # the batched small-problem families
# One program per problem with an in-register r x r step: fewer warps make its reductions shorter (one warp:
# no barrier), more give its tiles more registers; both ends are candidates.
SMALL_WARPS = [1, 2, 4, 8, 16]
SMALL_FAMILIES = ("block_small", "block_small_backward")
# Widths each family runs at (the small backward up to ops._launch.SMALL_BACKWARD_MAX_BLOCK_R).
MAX_R = {"block_small": 64, "block_small_backward": _launch.SMALL_BACKWARD_MAX_BLOCK_R}


def candidates(family, r):
    out = []
    for bn in BLOCK_NS:
        for w in (SMALL_WARPS if family in SMALL_FAMILIES else WARPS):
            if bn * _common.block_r(r) > 256 * 64:  # a tile of more than 16k floats spills whatever the warps
                continue
            out.append((bn, w))
    return out


def inputs(family, n, r, device, seed=0, dtype=torch.float32):
    """(ours, eager) callables of one family's launch on fresh operands.

    The operands are drawn in float32 and derived in float64, then cast to dtype,
    so the float32 and float64 versions hold the same numbers (the float64 eager
    version is the oracle of the float32 runs).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, device=device).double()  # noqa: E731
    cast = lambda *ts: [t.to(dtype).contiguous() for t in ts]  # noqa: E731
    if family == "block_small":
        U, P = cast(rand(SMALL_B, SMALL_N, r), rand(SMALL_B, SMALL_N, r))
        (lam,) = cast(torch.ones(SMALL_B, device=device))
        return (lambda: _launch.symnmf_block(U, P, lam)[0]), (lambda: reference.symnmf_block(U, P, lam))
    if family == "block_small_backward":
        U, P, g = (rand(SMALL_B, SMALL_N, r) for _ in range(3))
        Ginv = torch.linalg.inv(U.mT @ U + torch.eye(r, device=device, dtype=torch.float64))
        Z = P @ Ginv
        Y = torch.relu(Z - Z.mean((1, 2), keepdim=True))  # about half the entries active
        U, P, g, Ginv, Y = cast(U, P, g, Ginv, Y)

        def eager():
            dU, dP, dG = reference.block_backward(g, U, P, Ginv, Y)
            return [dU, dP, dG]

        return (lambda: list(_launch.symnmf_block_backward(g, Y, P, Ginv, U))), eager
    U, P, S, grad, W, Y2 = (rand(1, n, r) for _ in range(6))
    M = torch.linalg.inv(U[0].mT @ U[0] + torch.eye(r, device=device, dtype=torch.float64))[None]
    Z = P @ M
    Y = torch.relu(Z - Z.mean())  # about half the entries active
    G = U[0].mT @ U[0] / n
    U, P, S, grad, W, Y2, M, Y, G = cast(U, P, S, grad, W, Y2, M, Y, G[None])
    lam, one = cast(torch.ones(1, device=device), torch.ones(1, device=device))
    eye = torch.eye(r, device=device, dtype=dtype)
    if family == "gram":
        return (lambda: [_launch.gram(U, lam)]), (lambda: [U.mT @ U + eye])
    if family == "apply":
        return (lambda: list(_launch.apply(P, M, relu=True, emit_gram=True))[:1]), (lambda: [torch.relu(P @ M)])
    if family == "apply_backward":
        def eager():
            Zb = grad * (Y > 0)
            return [Zb @ M.mT, P.mT @ Zb]

        return (lambda: list(_launch.apply_backward(grad, Y, P, M))), eager
    # The last three as SymNMF-Net's step launches them (symnmf.net_chain, the objective in one node).
    if family == "apply_backward_h":  # the gradient G of Y^T Y joins grad through G + G^T, the regulariser's in dP
        def eager():
            Zb = (grad + Y @ (G + G.mT)) * (Y > 0)
            return [Zb @ M.mT + W, P.mT @ Zb]

        # G as it comes, G + G^T formed as the kernel loads it (SYM_H); W added to dP as it is stored (HAS_T)
        return (lambda: list(_launch.apply_backward(grad, Y, P, M, G, sym_h=True, dp_extra=(W, one)))), eager
    if family == "sparse_terms":  # R stored beside the sums, the Gram left to the block
        def eager():
            R = P - S - lam * U
            return [R, torch.stack([(U * S).sum(), (R * R).sum(), (R * U).sum()]).double()[None]]

        return (lambda: list(_launch.sparse_loss_terms(U, S, P, lam, with_gram=False, write_r=True))[::-2]), eager
    if family == "sparse_grad":  # R and X R with the regulariser's coefficient, no U G term
        return (lambda: [_launch.sparse_loss_grad(S, S, None, W, Y2, lam, one, None, one)]), (
            lambda: [S - (lam * W + Y2)])
    raise ValueError(family)


def traffic(family, n, r):
    """Least bytes of our kernel (float32)."""
    per = {"gram": 1, "apply": 2, "apply_backward": 4, "apply_backward_h": 5, "sparse_terms": 4, "sparse_grad": 4}
    if family == "block_small":
        return 4 * 3 * SMALL_B * SMALL_N * r
    if family == "block_small_backward":  # reads grad, Y, P, U; writes dP, dU
        return 4 * 6 * SMALL_B * SMALL_N * r
    return 4 * per[family] * n * r


def set_tile(family, r, bn, warps):
    _common._GPU_TILES[family][_common.block_r(r)] = (bn, warps)


def warm_one(family, r, n, part=0, parts=1):
    """Compile the candidates of (family, r) by running each once on a small problem: every `parts`-th of
    them from the `part`-th on, so that several processes share one (family, r). The sweep times the kernels
    with tf32x3 dots, a compile-time constant of theirs: the warm-up must compile those, not "auto"'s."""
    _common.set_dot_precision("tf32x3")
    for bn, w in candidates(family, r)[part::parts]:
        set_tile(family, r, bn, w)
        try:
            ours, _ = inputs(family, n, r, torch.device("cuda"))
            ours()
        except Exception as exc:  # a candidate that does not compile is reported by the timed pass
            print(f"warm {family} r={r} ({bn}, {w}): {type(exc).__name__}", file=sys.stderr)
    torch.cuda.synchronize()


def rel_err(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).norm() / b.norm())


def accuracy(family, r, device, n=200_003):
    """Worst relative error over the outputs, against the float64 eager formula, of our kernels at each
    dot precision and of torch's float32 (TF32 off): {name: err}."""
    ours, eager = inputs(family, n, r, device, seed=1)
    want = inputs(family, n, r, device, seed=1, dtype=torch.float64)[1]()
    worst = lambda outs: max(rel_err(a, b) for a, b in zip(outs, want))  # noqa: E731
    errs = {"torch_fp32": worst(eager())}
    previous = _common.get_dot_precision()
    try:
        for p in _common.DOT_PRECISIONS:
            _common.set_dot_precision(p)
            errs[p] = worst(ours())
    finally:
        _common.set_dot_precision(previous)
    return errs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--ranks", default=",".join(map(str, RANKS)))
    parser.add_argument("--warm-jobs", type=int, default=0, help="compile the candidates first in this many processes")
    parser.add_argument("--warm-one", nargs=4, metavar=("FAMILY", "R", "PART", "PARTS"), help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop timing candidates after this long")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run through TRITON_INTERPRET=1, tiny sizes")
    parser.add_argument("--block-sizes", default="1000000,4000000", help="n of the block rows")
    parser.add_argument("--name", default="tune_tiles", help="stem of the tables: <name>-<date>-<device>.md / .json")
    args = parser.parse_args(argv)
    families = args.families.split(",")
    ranks = [int(x) for x in args.ranks.split(",")]
    device = torch.device(args.device)

    if args.warm_one:
        family, r, part, parts = args.warm_one
        warm_one(family, int(r), 8192, int(part), int(parts))
        return 0
    t_start = time.time()
    if args.warm_jobs:
        pairs = [(f, r) for f in families for r in ranks]
        # Each process compiles its candidates one after another: split a (family, r) over several processes
        # when there are fewer pairs than jobs (the sweep of the small kernels has 6 pairs of 25 candidates).
        parts = max(1, -(-args.warm_jobs // len(pairs)))
        jobs = [(f, r, part) for f, r in pairs for part in range(parts)]
        with concurrent.futures.ThreadPoolExecutor(args.warm_jobs) as pool:
            list(pool.map(lambda job: subprocess.run(
                [sys.executable, __file__, "--warm-one", job[0], str(job[1]), str(job[2]), str(parts)], check=False),
                jobs))
        print(f"warm: {len(pairs)} (family, r) compiled by {len(jobs)} processes in {time.time() - t_start:.0f} s",
              flush=True)

    if device.type == "cuda":
        from triton.testing import do_bench
    else:
        from bench.common import bench

        def do_bench(fn, warmup, rep, return_mode="median", grad_to_none=None):
            return bench(fn, warmup=1, rep=1, grad_to_none=grad_to_none, device=device, max_runs=2)

    bw = None
    try:
        from bench.common import copy_bandwidth

        bw = copy_bandwidth(device)
    except Exception:  # the table still gives times
        pass

    def write_tables():
        name = torch.cuda.get_device_name().replace(" ", "-") if device.type == "cuda" else "cpu"
        stamp = f"{datetime.date.today()}-{name}"
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"{args.name}-{stamp}.json"), "w") as f:
            json.dump({fam: {str(k): v for k, v in d.items()} for fam, d in best.items()}, f, indent=1)
        import triton

        lines = [f"# tune_tiles, {stamp}", "",
                 f"- torch {torch.__version__}, triton {triton.__version__}, copy bandwidth "
                 f"{f'{bw / 1e9:.0f} GB/s' if bw else 'not measured'}",
                 f"- sweep: n = {args.n} (block_small, block_small_backward: B = {SMALL_B}, n = {SMALL_N}), float32, "
                 "tf32x3 dots, "
                 "do_bench median (warmup 10 ms, rep 40 ms), fresh torch.rand inputs",
                 "- frac: least bytes of our kernel / time / copy bandwidth", "",
                 "## sweep", "", "| family | r | BLOCK_N | warps | ours_ms | eager_ms | frac | note |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in sweep_rows:
            lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
        lines += ["", "## accuracy (rel. error vs float64, n = 200003; worst output)", "",
                  "| family | r | " + " | ".join(["torch_fp32", *_common.DOT_PRECISIONS]) + " |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for family, r, errs in acc_rows:
            lines.append(f"| {family} | {r} | " + " | ".join(
                f"{errs.get(k, float('nan')):.2e}" if isinstance(errs.get(k), float) else str(errs.get(k, errs.get("error")))
                for k in ["torch_fp32", *_common.DOT_PRECISIONS]) + " |")
        keys = [k for k in block_rows[0] if k not in ("n", "r")] if block_rows else []
        lines += ["", "## block (sk.symnmf_block, float32, ms)", "", "| n | r | " + " | ".join(keys) + " |",
                  "|" + " --- |" * (2 + len(keys))]
        for row in block_rows:
            lines.append(f"| {row['n']} | {row['r']} | " + " | ".join(
                f"{row.get(k):.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys) + " |")
        with open(os.path.join(args.out, f"{args.name}-{stamp}.md"), "w") as f:
            f.write("\n".join(lines) + "\n")

    previous_tiles = copy.deepcopy(_common._GPU_TILES)
    _common.set_dot_precision("tf32x3")
    sweep_rows, acc_rows, block_rows, best = [], [], [], {}
    t_sweep = time.time()
    for family in families:
        for r in ranks:
            if r > MAX_R.get(family, 128):
                continue
            n = args.n
            ours_eager = inputs(family, n, r, device)
            eager_ms = do_bench(ours_eager[1], warmup=10, rep=40, return_mode="median")
            results = []
            for bn, w in candidates(family, r):
                if time.time() - t_sweep > args.budget_s:
                    break
                set_tile(family, r, bn, w)
                try:
                    ms = do_bench(ours_eager[0], warmup=10, rep=40, return_mode="median")
                except Exception as exc:
                    sweep_rows.append((family, r, bn, w, "", eager_ms, "", type(exc).__name__))
                    continue
                results.append((ms, bn, w))
                frac = traffic(family, n, r) / (ms * 1e-3) / bw if bw else float("nan")
                sweep_rows.append((family, r, bn, w, ms, eager_ms, frac, ""))
            if results:
                ms, bn, w = min(results)
                best.setdefault(family, {})[_common.block_r(r)] = (bn, w)
                set_tile(family, r, bn, w)
                old = previous_tiles.get(family, {}).get(_common.block_r(r))
                print(f"{family:15s} r={r:4d} best ({bn:3d}, {w}) {ms:.4f} ms  eager {eager_ms:.4f} ms  "
                      f"x_eager {eager_ms / ms:.2f}  (previous table {old})", flush=True)
            else:
                set_tile(family, r, *previous_tiles[family][_common.block_r(r)])

    write_tables()
    for family in families:
        if family in SMALL_FAMILIES:
            continue
        for r in ranks:
            try:
                errs = accuracy(family, r, device, n=200_003 if device.type == "cuda" else 301)
            except Exception as exc:
                errs = {"error": type(exc).__name__ + ": " + str(exc)[:80]}
            acc_rows.append((family, r, errs))
            print(f"accuracy {family:15s} r={r:4d} " + " ".join(
                f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in errs.items()), flush=True)

    write_tables()
    tuned_tiles = copy.deepcopy(_common._GPU_TILES)
    for n in [int(x) for x in args.block_sizes.split(",")]:
        for r in ranks:
            U = torch.rand(n, r, device=device)
            P = torch.rand(n, r, device=device)
            g = torch.rand(n, r, device=device)
            lam = torch.tensor(1.0, device=device, requires_grad=True)
            Ug, Pg = U.clone().requires_grad_(), P.clone().requires_grad_()

            def fwd(f):
                return lambda: f(U, P, lam.detach())

            def fwd_bwd(f):
                def run():
                    out = f(Ug, Pg, lam)
                    out.backward(g)
                return run

            row = {"n": n, "r": r}
            for name, fn, tiles_, prec in [
                ("tuned_auto", sk.symnmf_block, tuned_tiles, "auto"),
                ("previous_ieee", sk.symnmf_block, previous_tiles, "ieee"),
                ("eager", reference.symnmf_block, tuned_tiles, "ieee"),
            ]:
                _common._GPU_TILES.update(copy.deepcopy(tiles_))
                _common.set_dot_precision(prec)
                try:
                    row[name + "_fwd"] = do_bench(fwd(fn), warmup=10, rep=40, return_mode="median")
                    row[name + "_fwdbwd"] = do_bench(fwd_bwd(fn), warmup=10, rep=40, return_mode="median",
                                                     grad_to_none=[Ug, Pg, lam])
                except Exception as exc:
                    row[name + "_error"] = type(exc).__name__
            _common._GPU_TILES.update(copy.deepcopy(tuned_tiles))
            _common.set_dot_precision("tf32x3")
            block_rows.append(row)
            write_tables()
            print("block " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
            del U, P, g, Ug, Pg
            if device.type == "cuda":
                torch.cuda.empty_cache()

    write_tables()
    print(f"tune_tiles: {time.time() - t_start:.0f} s; best tiles {json.dumps(best)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
