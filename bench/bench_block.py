"""Microbenchmark of the SymNMF block kernels: ours (symnmf_kernels) against plain torch and torch.compile.

Kernels: gram (U^T U + lam I), spd_inverse, apply_relu (ReLU(P Ginv)), block
forward (sk.symnmf_block), block forward + backward, each on one tall-skinny
problem (n x r) and on batches of small problems (B x n x r). Every variant runs
side by side on the same fresh random inputs:

    ours      sk.gram / sk.spd_inverse / sk.apply_relu / sk.symnmf_block
    eager     sk.reference.* (plain torch)
    compile   torch.compile(sk.reference.*, dynamic=True)
    triton    ours with every product in the Triton kernels, at the widths (r > 64 on CUDA) where the library
              runs its plain products as torch's GEMMs instead (ops._common.cublas_products)

Each row gives the median time of each variant, the ideal traffic of our kernel
(the bytes it must move at least), each variant's achieved fraction of the
measured copy bandwidth (the roofline) and the speed-ups of ours. The table goes
to bench/results/bench_block-<date>-<device>.md, rewritten after every row so a
run cut short keeps what it measured.

    python bench/bench_block.py                   # GPU: --sizes full; CPU: --sizes small
    python bench/bench_block.py --sizes tiny --rep 5 --out /tmp/results
"""
import argparse
import gc
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.common import (  # noqa: E402
    add_run_args,
    bench,
    copy_bandwidth,
    host_ms,
    resolve_run_args,
    roofline_fraction,
    write_table,
)
from symnmf_kernels import reference  # noqa: E402

KERNELS = ("gram", "spd_inverse", "apply_relu", "symnmf_block", "symnmf_block_fwd_bwd", "sym_loss")

# (n, r) of single problems and (B, n, r) of batches, per size preset.
SIZES = {
    "tiny": {"single": [(257, 5), (257, 16)], "batched": [(8, 64, 4)]},
    "small": {
        "single": [(n, r) for n in (1_000, 10_000) for r in (16, 64)],
        "batched": [(64, 256, 8), (16, 1024, 16)],
    },
    "full": {
        "single": [(n, r) for n in (100_000, 1_000_000, 4_000_000) for r in (16, 32, 64, 128)],
        # B = 1 at n = 1,000: one problem on the one-program-per-problem kernels
        "batched": [(4096, 256, 8), (1024, 1024, 16), (256, 4096, 32), (1, 1_000, 16), (1, 1_000, 64)],
    },
}

# Measurement order (the table keeps KERNELS order): first the rows that
# docs/design.md, "Measuring performance" sets targets for, then the whole block before its parts,
# so a run stopped by --budget-s has what matters most.
MEASURE_ORDER = ("symnmf_block", "symnmf_block_fwd_bwd", "apply_relu", "gram", "spd_inverse", "sym_loss")
TARGETS = {
    ("symnmf_block", 1, 1_000_000, 64),
    ("symnmf_block_fwd_bwd", 1, 1_000_000, 64),
    ("symnmf_block", 1, 4_000_000, 64),
    ("symnmf_block", 4096, 256, 8),
    ("symnmf_block_fwd_bwd", 4096, 256, 8),
}

COLUMNS = [
    "kernel", "B", "n", "r",
    "ours_ms", "eager_ms", "compile_ms", "triton_ms",
    "host_ours_ms", "host_eager_ms",
    "ideal_MB", "copy_GB/s",
    "frac_ours", "frac_eager", "frac_compile",
    "x_eager", "x_compile", "x_triton",
    "rel_err", "notes",
]

LAM = 1.0


def ideal_bytes(kernel, B, n, r, itemsize):
    """The least traffic of our kernel, in bytes: what it must read and write once."""
    per_problem = {
        "gram": n * r + r * r,  # read U, write G
        "spd_inverse": 2 * r * r,  # read G, write Ginv
        "apply_relu": 2 * n * r + r * r,  # read P and Ginv, write U
        "symnmf_block": 3 * n * r,  # read U (Gram pass), read P, write U_out
        # forward 3nr; backward reads g, U_out, P and writes dP (4nr), then reads U and writes dU (2nr)
        "symnmf_block_fwd_bwd": 9 * n * r,
        "sym_loss": n * n + n * r,  # read the dense X once and U (its tiles stay in cache)
    }[kernel]
    return B * per_problem * itemsize


def cases(sizes):
    """(kernel, B, n, r) in table order; B = 1 means one unbatched 2-D problem, n = 0 a kernel without n."""
    preset = SIZES[sizes]
    out = []
    for kernel in KERNELS:
        if kernel == "sym_loss":  # dense X: n x n must fit, so only the sizes up to 8192
            out += [(kernel, 1, n, r) for n, r in preset["single"] if n <= 8192]
            out += [(kernel, 1, n, r) for n in (2048, 8192) for r in sorted({r for _, r in preset["single"]})
                    if sizes == "full"]
            out += [(kernel, B, n, r) for B, n, r in preset["batched"] if B * n * n <= 1 << 28]
            continue
        if kernel == "spd_inverse":
            out += [(kernel, 1, 0, r) for r in sorted({r for _, r in preset["single"]})]
        else:
            out += [(kernel, 1, n, r) for n, r in preset["single"]]
        out += [(kernel, B, 0 if kernel == "spd_inverse" else n, r) for B, n, r in preset["batched"]]
    return list(dict.fromkeys(out))


def make_inputs(kernel, B, n, r, dtype, device):
    """Fresh random inputs of one case (torch.rand: non-negative, never all zeros)."""
    lead = (B,) if B > 1 else ()

    def rand(*shape):
        return torch.rand(*lead, *shape, dtype=dtype, device=device)

    if kernel == "gram":
        return {"U": rand(n, r)}
    if kernel == "spd_inverse":
        # Condition number of about 3r: rank-one dominated plus the lam shift.
        return {"G": reference.gram(rand(max(2 * r, 16), r), LAM)}
    if kernel == "sym_loss":
        X = rand(n, n)
        return {"X": (X + X.mT) / 2, "U": rand(n, r)}
    U, P = rand(n, r), rand(n, r)
    lam = torch.tensor(LAM, dtype=dtype, device=device)
    if kernel == "apply_relu":
        return {"P": P, "Ginv": reference.spd_inverse(reference.gram(U, LAM))}
    if kernel == "symnmf_block":
        return {"U": U, "P": P, "lam": lam}
    return {"U": U.requires_grad_(), "P": P.requires_grad_(), "lam": lam.requires_grad_(), "g": rand(n, r)}


def call(kernel, impl, x):
    """Run one kernel of impl (the namespace sk or sk.reference, or compiled functions)."""
    if kernel == "gram":
        return impl["gram"](x["U"], LAM)
    if kernel == "spd_inverse":
        return impl["spd_inverse"](x["G"])
    if kernel == "apply_relu":
        return impl["apply_relu"](x["P"], x["Ginv"])
    if kernel == "sym_loss":
        return impl["sym_loss"](x["X"], x["U"])
    out = impl["symnmf_block"](x["U"], x["P"], x["lam"])
    if kernel == "symnmf_block":
        return out
    # backward(g) is the gradient of (out * g).sum(): the timed region holds the block's own traffic only.
    out.backward(x["g"])
    return out


def outputs(kernel, impl, x):
    """The outputs to compare: the result, and for forward + backward every gradient too (fresh leaves)."""
    if kernel != "symnmf_block_fwd_bwd":
        with torch.no_grad():
            return [call(kernel, impl, x)]
    leaves = {k: x[k].detach().clone().requires_grad_() for k in ("U", "P", "lam")}
    out = call(kernel, impl, {**leaves, "g": x["g"]})
    return [out.detach()] + [leaves[k].grad for k in ("U", "P", "lam")]


def rel_err(ours, ref):
    """Largest ||a - b|| / ||b|| over the outputs, in float64; NaN when any output is missing or not finite."""
    worst = 0.0
    for a, b in zip(ours, ref):
        if a is None or b is None:
            return float("nan")
        a, b = a.double(), b.double()
        denom = torch.linalg.vector_norm(b).item()
        err = torch.linalg.vector_norm(a - b).item() / (denom if denom > 0 else 1.0)
        if not math.isfinite(err):
            return float("nan")
        worst = max(worst, err)
    return worst


def short_error(exc):
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, (text[0] if text else "")[:100])


def release(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(case, variants, args, bw, device):
    kernel, B, n, r = case
    itemsize = torch.empty((), dtype=args.dtype).element_size()
    row = {"kernel": kernel, "B": B, "n": n if n else "-", "r": r, "copy_GB/s": bw / 1e9}
    nbytes = ideal_bytes(kernel, B, n, r, itemsize)
    row["ideal_MB"] = nbytes / 1e6
    notes = []
    x = make_inputs(kernel, B, n, r, args.dtype, device)
    grads = [x[k] for k in ("U", "P", "lam")] if kernel == "symnmf_block_fwd_bwd" else None
    try:
        row["rel_err"] = rel_err(outputs(kernel, variants["ours"], x), outputs(kernel, variants["eager"], x))
    except Exception as exc:  # a broken variant must not cost the other rows
        row["rel_err"] = float("nan")
        notes.append("check: " + short_error(exc))
    for name, impl in variants.items():
        if name == "triton" and not triton_differs(r, device):
            continue
        run = lambda: call(kernel, impl, x)  # noqa: E731
        if name == "triton":
            run = all_triton(run)
        try:
            ms = bench(run, warmup=args.warmup, rep=args.rep, grad_to_none=grads, device=device)
        except Exception as exc:
            ms = float("nan")
            notes.append("%s: %s" % (name, short_error(exc)))
            release(device)
        row[name + "_ms"] = ms
        if name != "triton":
            row["frac_" + name] = roofline_fraction(nbytes, ms, bw)
        if name in ("ours", "eager") and device.type == "cuda" and math.isfinite(ms):
            # 10 calls: the host's time varies little, and each call waits for the device before it starts
            row["host_%s_ms" % name] = host_ms(lambda: call(kernel, impl, x), grad_to_none=grads, device=device,
                                               runs=10)
    for peer in ("eager", "compile", "triton"):
        ours, theirs = row.get("ours_ms", float("nan")), row.get(peer + "_ms")
        if theirs is None:  # not run: a blank cell
            row["x_" + peer] = None
            continue
        row["x_" + peer] = theirs / ours if ours > 0 else float("nan")
    if "compile" not in variants:
        row["compile_ms"] = row["frac_compile"] = row["x_compile"] = None
    row["notes"] = "; ".join(notes)
    del x, grads
    release(device)
    return row


def triton_differs(r, device):
    """Whether the library runs some product of rank r as a torch GEMM on this device (the triton variant then
    times something else than ours)."""
    from symnmf_kernels.ops import _common

    return device.type == "cuda" and _common.block_r(r) >= _common.CUBLAS_MIN_BLOCK_R


def all_triton(fn):
    """fn with the library's GEMM rule switched off during the call: every product in the Triton kernels."""
    from symnmf_kernels.ops import _common

    def call(*args):
        previous = _common.CUBLAS_MIN_BLOCK_R
        _common.CUBLAS_MIN_BLOCK_R = 1 << 20
        try:
            return fn(*args)
        finally:
            _common.CUBLAS_MIN_BLOCK_R = previous

    return call


def make_variants(use_compile):
    names = ("gram", "spd_inverse", "apply_relu", "symnmf_block", "sym_loss")
    variants = {
        "ours": {k: getattr(sk, k) for k in names},
        "eager": {k: getattr(reference, k) for k in names},
    }
    if use_compile:
        # dynamic=True: one compilation per kernel (and input rank) for all sizes, so the
        # run never reaches dynamo's recompile limit and silently falls back to eager.
        variants["compile"] = {k: torch.compile(getattr(reference, k), dynamic=True) for k in names}
    variants["triton"] = variants["ours"]  # timed with the GEMM rule off (all_triton), backward included
    return variants


def disable_tf32():
    """Float32 matmuls in full precision (no TF32), as the kernels compute them.

    The documented switch, not the backend flags: mixing the old allow_tf32 flags
    with the newer fp32_precision ones makes torch raise when either is read.
    """
    torch.set_float32_matmul_precision("highest")


def header_lines(args, device, bw, stopped):
    lines = [
        "ours: symnmf_kernels (sk.*); eager: sk.reference.* (plain torch); compile: torch.compile(sk.reference.*, dynamic=True)",
        "times: median ms, %s; warmup %g ms, rep %g ms" % (
            "triton.testing.do_bench (CUDA events, L2 flushed before each run)" if device.type == "cuda"
            else "time.perf_counter", args.warmup, args.rep),
        "%s, TF32 off, lam = %g, inputs torch.rand (fresh per row, seed %d)" % (str(args.dtype).replace("torch.", ""), LAM, args.seed),
        "ideal_MB: least traffic of our kernel per row: gram n r + r^2, spd_inverse 2 r^2, apply_relu 2 n r + r^2, "
        "symnmf_block 3 n r, symnmf_block_fwd_bwd 9 n r elements, times B",
        "symnmf_block_fwd_bwd: out = symnmf_block(U, P, lam); out.backward(g) (the gradient of (out * g).sum()), "
        "gradients for U, P and lam (lam a 0-d tensor)",
        "copy bandwidth: %.4g GB/s (device-to-device copy, bytes read + written); frac_*: (ideal bytes / time) / copy bandwidth"
        % (bw / 1e9),
        "triton_ms (CUDA, r > 64 only): ours with every product in the Triton kernels, where the library runs its "
        "plain products as torch's GEMMs (ops._common.cublas_products); x_triton: its time / ours",
        "x_eager, x_compile: speed-up of ours over each peer; rel_err: ours vs eager, ||a - b|| / ||b||, worst output or gradient",
        "host_ours_ms, host_eager_ms (CUDA only): median host time to issue one call, the device idle at its start "
        "(bench.common.host_ms); a time close to it is bound by the host, not by the kernels",
        "B = 1: one unbatched 2-D problem",
        "in-register inverse: %s" % {"default": "the library's choice (ops._launch.SWEEP_MIN_BLOCK_R)",
                                     "sweep": "the symmetric sweep at every r", "cholesky": "Cholesky at every r"}[
            args.inverse] + ("" if args.inverse_warps is None else
                             "; %d warp(s) at padded widths 16 and 32" % args.inverse_warps),
    ]
    if device.type != "cuda":
        if os.environ.get("TRITON_INTERPRET") == "1":
            lines.append("CPU run with TRITON_INTERPRET=1: ours runs the Triton kernels in the interpreter; times are meaningless")
        else:
            lines.append("CPU smoke run: without TRITON_INTERPRET, sk.* runs the same plain-torch path as the reference, "
                         "so ours and eager coincide; these numbers only show that the script works")
    if stopped:
        lines.append("stopped after --budget-s %g s: %d rows not measured" % (args.budget_s, stopped))
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), help="size preset (default: full on CUDA, small on CPU)")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS), help="kernels to run")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="include torch.compile (default: on CUDA only)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--inverse", choices=("default", "sweep", "cholesky"), default="default",
                        help="the in-register inverse of spd_inverse and the fused small block: the library's choice "
                             "(the sweep from BLOCK_R = 128, the Cholesky form below, torch's inverse for a CUDA "
                             "G past BLOCK_R = 64), or one form at every r, r = 128 included")
    parser.add_argument("--inverse-warps", type=int, choices=(1, 2, 4, 8), default=None,
                        help="warps of the standalone in-register inverse (spd_inverse, and the block's forward past "
                             "the small-problem size) at padded widths 16 and 32, where one warp compiles without "
                             "spills (default: ops._common's table, 4)")
    parser.add_argument("--name", default="bench_block", help="table name (file <name>-<date>-<device>.md)")
    add_run_args(parser)
    args = resolve_run_args(parser, parser.parse_args(argv))
    on_cuda = args.device.type == "cuda"
    args.sizes = args.sizes or ("full" if on_cuda else "small")
    args.compile = on_cuda if args.compile is None else args.compile
    args.dtype = getattr(torch, args.dtype)
    if os.environ.get("TRITON_INTERPRET") == "1" and args.device.type == "cpu" and args.sizes != "tiny":
        parser.error("TRITON_INTERPRET=1 runs the kernels in Triton's interpreter, far too slowly for "
                     "--sizes %s: use --sizes tiny, or unset TRITON_INTERPRET" % args.sizes)
    return args


def choose_inverse(form, warps=None):
    """Install one form of the in-register inverse at every width (ops._launch's module settings), and its warps
    at padded widths 16 and 32."""
    from symnmf_kernels.ops import _common, _launch

    if form != "default":
        _launch.SWEEP_MIN_BLOCK_R = 1 if form == "sweep" else 1 << 20
        _launch.INVERSE_MAX_BLOCK_R = 128
    if warps is not None:
        _common._INVERSE_WARPS.update({16: warps, 32: warps})


def main(argv=None):
    args = parse_args(argv)
    choose_inverse(args.inverse, args.inverse_warps)
    device = args.device
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        disable_tf32()
    bw = copy_bandwidth(device)
    variants = make_variants(args.compile)
    todo = [c for c in cases(args.sizes) if c[0] in args.kernels]
    order = {c: i for i, c in enumerate(todo)}
    start = time.perf_counter()
    rows, stopped = {}, 0
    path = None
    for case in sorted(todo, key=lambda c: (c not in TARGETS, MEASURE_ORDER.index(c[0]))):
        if time.perf_counter() - start > args.budget_s:
            stopped += 1
            continue
        t0 = time.perf_counter()
        try:
            rows[case] = measure(case, variants, args, bw, device)
        except Exception as exc:  # e.g. out of memory while making the inputs: the other rows still run
            rows[case] = {"kernel": case[0], "B": case[1], "n": case[2] or "-", "r": case[3],
                          "ours_ms": float("nan"), "eager_ms": float("nan"), "notes": "inputs: " + short_error(exc)}
            release(device)
        print("%-14s B=%-5d n=%-8s r=%-4d ours %.4g ms, eager %.4g ms (%.1f s)" % (
            case[0], case[1], rows[case]["n"], case[3], rows[case]["ours_ms"], rows[case]["eager_ms"],
            time.perf_counter() - t0), flush=True)
        table = [rows[c] for c in sorted(rows, key=order.get)]
        path = write_table(args.name, table, COLUMNS, header_lines(args, device, bw, stopped),
                           out_dir=args.out, device=device, echo=False)
    table = [rows[c] for c in sorted(rows, key=order.get)]
    path = write_table(args.name, table, COLUMNS, header_lines(args, device, bw, stopped),
                       out_dir=args.out, device=device, echo=True)
    print("wrote", path, flush=True)
    return path


if __name__ == "__main__":
    main()
