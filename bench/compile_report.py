"""Compile every Triton kernel of symnmf_kernels for a Hopper GPU (sm_90) without one, and report its resources.

Triton's compiler needs no GPU to go from Python to a cubin, so this catches
what the interpreter cannot (a construct the GPU compiler rejects, a dtype
mismatch) on any machine, and reports each configuration's registers per
thread, spill (local memory) bytes and shared memory, read off the cubin by
cuobjdump. Run with TRITON_INTERPRET unset:

    python bench/compile_report.py            # print the table
    python bench/compile_report.py --out bench/results
    python bench/compile_report.py --as-launched --out bench/results   # each kernel as the ops launch it
"""
import argparse
import datetime
import itertools
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from symnmf_kernels.ops._common import (  # noqa: E402
    block_n, block_r, dgram_warps, get_dot_precision, hals_tiles, inverse_warps, num_warps, tiles,
)
from symnmf_kernels.ops._launch import (  # noqa: E402
    FINALIZE_CHUNK, FINALIZE_SPLITS, PG_BLOCK, PG_STEPS, SMALL_BACKWARD_MAX_BLOCK_R, SWEEP_MIN_BLOCK_R,
)
from symnmf_kernels.triton import (  # noqa: E402
    apply_relu, gram, hals, projected_gradient, sparse_loss, spd_inverse, sym_loss, symnmf_block,
)

TARGET = GPUTarget("cuda", 90, 32)
INT_ARGS = {"n", "m", "r", "tiles", "rows_per_split", "num_splits", "problems", "numel"}
# Arguments whose type does not follow the problem's dtype.
SPECIAL_TYPES = {"info": "*i32", "sums": "*fp64", "totals": "*fp64", "x_sq": "*fp64"}
SCALAR_LAM = {"hals_sweep_kernel"}  # lam passed by value, not as a per-problem tensor


def signature(fn, dtype):
    """Triton signature of fn's runtime arguments: strides i64, sizes i32, pointers of the problem's dtype."""
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.startswith("stride_"):
            sig[p.name] = "i64"
        elif p.name in INT_ARGS:
            sig[p.name] = "i32"
        elif p.name == "lam" and fn.fn.__name__ in SCALAR_LAM:
            sig[p.name] = dtype
        else:
            sig[p.name] = SPECIAL_TYPES.get(p.name, "*" + dtype)
    return sig


def configs(quick):
    """(kernel, dtype, r, constexpr flags, warps) to compile: every flag combination at r = 64 in float32,
    the smallest and largest r, and float64."""
    kernels = [
        (gram.gram_partials_kernel, ["ATOMIC"]),
        (gram.gram_finalize_kernel, ["HAS_LAM"]),
        (spd_inverse.spd_inverse_kernel, []),
        (apply_relu.apply_kernel, ["RELU", "EMIT_GRAM"]),
        (apply_relu.apply_backward_kernel, ["HAS_H", "RELU", "HAS_T"]),
        (symnmf_block.symnmf_block_small_kernel, []),
        (symnmf_block.symnmf_block_small_backward_kernel, []),
        (symnmf_block.symnmf_block_dgram_kernel, ["FROM_PARTIALS", "HALF"]),
        (symnmf_block.symnmf_block_gram_inverse_kernel, []),
        (sym_loss.sym_loss_partials_kernel, []),
        (sparse_loss.sparse_loss_terms_kernel, ["HAS_P", "HAS_GRAM", "WRITE_R"]),
        (sparse_loss.sparse_loss_values_kernel, []),
        (sparse_loss.sparse_loss_coefs_kernel, ["HAS_DGRAM"]),
        (sparse_loss.sparse_reg_grad_kernel, []),
        (sparse_loss.sparse_loss_grad_kernel, ["HAS_W", "HAS_Y", "HAS_CW"]),
        (hals.hals_sweep_kernel, ["HAS_V"]),
        (hals.fill_zero_columns_kernel, []),
        (projected_gradient.projected_gradient_partials_kernel, []),
    ]
    shapes = [("fp32", 64)] if quick else [("fp32", 64), ("fp32", 16), ("fp32", 128), ("fp64", 32)]
    for fn, flags in kernels:
        for dtype, r in shapes:
            if block_r(r) > MAX_BLOCK_R.get(fn.fn.__name__, 128):
                continue
            combos = itertools.product([True, False], repeat=len(flags)) if (dtype, r) == ("fp32", 64) else [
                (True,) * len(flags)]
            for values in combos:
                yield fn, dtype, r, dict(zip(flags, values))


# Kernels the ops launch only up to a padded width below 128 (ops._launch: SMALL_BACKWARD_MAX_BLOCK_R, and
# FINALIZE_CHUNK = 16 x 16 entries for the forward's reduction with the inverse).
MAX_BLOCK_R = {"symnmf_block_small_backward_kernel": SMALL_BACKWARD_MAX_BLOCK_R,
               "symnmf_block_dgram_kernel": SMALL_BACKWARD_MAX_BLOCK_R,
               "symnmf_block_gram_inverse_kernel": 16}


class _Cuda:
    type = "cuda"


# The kernel family whose launch geometry (symnmf_kernels.ops._common.tiles) each kernel runs with.
FAMILY = {
    "gram_partials_kernel": "gram",
    "apply_kernel": "apply",
    "apply_backward_kernel": "apply_backward",
    "sym_loss_partials_kernel": "loss",
    "symnmf_block_small_kernel": "block_small",
    "symnmf_block_small_backward_kernel": "block_small_backward",
    "sparse_loss_terms_kernel": "sparse_terms",
    "sparse_loss_grad_kernel": "sparse_grad",
}


def launch(fn, r):
    """(BLOCK_N, BLOCK_R, num_warps) the ops launch fn with on a GPU at rank r."""
    name = fn.fn.__name__
    if name in FAMILY:
        BN, warps = tiles(FAMILY[name], r, _Cuda())
        return BN, block_r(r), warps
    if name in ("gram_finalize_kernel", "sparse_loss_values_kernel", "sparse_loss_coefs_kernel"):
        return None, block_r(r), 4
    if name in ("spd_inverse_kernel", "symnmf_block_gram_inverse_kernel"):
        return None, block_r(r), inverse_warps(r)
    if name == "symnmf_block_dgram_kernel":
        return None, block_r(r), dgram_warps(r)
    if name in ("hals_sweep_kernel", "fill_zero_columns_kernel"):
        return hals_tiles(r, _Cuda())
    if name == "projected_gradient_partials_kernel":
        return None, None, 4
    return block_n(r, _Cuda()), block_r(r), num_warps(r)


def constexprs(fn, dtype, r, flags):
    names = {p.name for p in fn.params if p.is_constexpr}
    BN, BR, _ = launch(fn, r)
    values = dict(flags)
    if "BLOCK_R" in names:
        values["BLOCK_R"] = BR
    if "BLOCK_N" in names:
        values["BLOCK_N"] = BN
    if "ACC" in names:
        values["ACC"] = tl.float64 if dtype == "fp64" else tl.float32
    if "SWEEP" in names:  # the in-register inverse's form, as ops._launch picks it
        values["SWEEP"] = BR >= SWEEP_MIN_BLOCK_R
    if "CHUNK" in names:  # gram_finalize_kernel, as ops._launch.reduce_partials launches it
        values["CHUNK"] = min(BR * BR, FINALIZE_CHUNK)
    if "SPLITS" in names:
        values["SPLITS"] = FINALIZE_SPLITS
    if "STEPS" in names:  # the projected-gradient measure's runs, as ops._launch launches it
        values["BLOCK"], values["STEPS"] = PG_BLOCK, PG_STEPS
    if "PRECISION" in names:
        # As ops._common.input_precision resolves it on a GPU ("auto": ieee for the n-length sums at BLOCK_R <= 32).
        reduction = fn.fn.__name__ not in PRODUCT_KERNELS or flags.get("EMIT_GRAM", False)
        values["PRECISION"] = "ieee" if dtype == "fp64" else (
            ("ieee" if reduction and BR <= 32 else "tf32x3") if PRECISION[0] == "auto" else PRECISION[0])
    return values


# The float32 dot precision compiled (ops._common.get_dot_precision() unless --precision says otherwise).
PRECISION = [get_dot_precision()]
# Kernels whose n-length dots are products, not sums over the rows (apply_kernel too, unless EMIT_GRAM).
PRODUCT_KERNELS = {"apply_kernel", "sparse_loss_grad_kernel", "sym_loss_partials_kernel"}


def cuobjdump(cubin, flag):
    """The output of Triton's own cuobjdump with `flag` on a cubin."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True).stdout


def tensor_core_ops(cubin, sass=None):
    """The tensor-core instructions in the cubin's SASS: "HGMMA" (wgmma), "HMMA" (mma) or "none"."""
    sass = cuobjdump(cubin, "-sass") if sass is None else sass
    found = [op for op in ("HGMMA", "HMMA", "DMMA") if re.search(r"\b" + op + r"\.", sass)]
    return "+".join(found) if found else "none"


def loop_body(sass):
    """'instructions (shuffles)' of the SASS's longest loop body (from a backward branch's target to the
    branch), or '-' without a loop: what one trip costs the kernel's main loop, before any GPU runs it."""
    address = re.compile(r"/\*([0-9a-f]{4,})\*/")
    lines = [(int(m.group(1), 16), line) for line in sass.splitlines() if (m := address.search(line))]
    best = None
    for at, line in lines:
        branch = re.search(r"\bBRA\b[^;]*?(0x[0-9a-f]+)", line)
        if branch and int(branch.group(1), 16) < at:
            body = [text for a, text in lines if int(branch.group(1), 16) <= a <= at]
            if best is None or len(body) > len(best):
                best = body
    if best is None:
        return "-"
    shuffles = sum(1 for text in best if re.search(r"\bSHFL", text))
    return f"{len(best)} ({shuffles})"


def resources(cubin):
    """(registers, stack bytes, local bytes, shared bytes) of the cubin's kernel, from cuobjdump."""
    out = cuobjdump(cubin, "--dump-resource-usage")
    field = lambda name: int(re.search(name + r":(\d+)", out).group(1)) if re.search(name + r":(\d+)", out) else -1
    return field("REG"), field("STACK"), field("LOCAL"), field("SHARED")


# ---- --as-launched: the kernels as the ops launch them on a GPU, with the runtime's specialisations ----------


def captured_launches(quick):
    """[(label, JITFunction, args, kwargs)] of every launch the ops make on a GPU, captured without running any.

    The ops run on CPU tensors with the Triton path forced and the GPU's launch geometry and dot precision
    patched in (bench/gpu_launches.py, as for the launch-grid test); each launch records its arguments instead
    of compiling. Shapes: the block (forward and backward) at n = 1,000,000 and at the small-problem n = 1,000,
    its chain form (SymNMF-Net's block) at n = 1,000,000, the dense loss at n = 2,048, the sparse layer loss at
    n = 100,000 (without and with the caller's Gram), SymNMF-Net's objective in one node (symnmf.net_chain, two
    blocks) at n = 100,000, the SymHALS sweep at n = 1,000,000; r = 16, 64, 128 in
    float32 and 32 in float64 (r = 64 float32 alone with quick). At BLOCK_R = 128 the plain products are torch's
    GEMMs on a GPU (ops._common.cublas_products), and their kernels are not launched.
    """
    import importlib
    import types

    import torch

    import symnmf_kernels as sk
    from bench.gpu_launches import gpu_launches
    from symnmf_kernels.ops import _common, _launch

    records, label = [], [""]

    def record(kernel, args, kwargs, grid):
        records.append((label[0], kernel, args, dict(kwargs)))

    def precision_on_gpu(t, r, reduction, precision=None):
        if t.dtype != torch.float32:
            return "ieee"
        precision = precision or PRECISION[0]
        if precision == "auto":
            return "ieee" if reduction and block_r(r) <= 32 else "tf32x3"
        return precision

    patches = [
        (_launch, "input_precision", precision_on_gpu),
        # the GPU's rule (from BLOCK_R = 128 the plain products are torch's GEMMs there, and launch no kernel),
        # asked of a stand-in for a CUDA tensor of t's dtype
        (_launch, "cublas_products", lambda t, r, precision=None: _common.cublas_products(
            types.SimpleNamespace(is_cuda=True, dtype=t.dtype), r, precision)),
    ]
    for module in ("gram", "spd_inverse", "apply_relu", "symnmf_block", "sym_loss", "sparse_loss", "hals",
                   "projected_gradient"):
        patches.append((importlib.import_module("symnmf_kernels.ops." + module), "use_triton", lambda t, r=None: True))
    patches.append((importlib.import_module("symnmf.net_chain"), "use_triton", lambda t, r=None: True))
    # the measure's CPU kernel would take these CPU tensors first
    patches.append((importlib.import_module("symnmf_kernels.ops.projected_gradient"), "_NATIVE", False))
    with gpu_launches(record, patches):
        shapes = [(torch.float32, 64)] if quick else [(torch.float32, 16), (torch.float32, 64), (torch.float32, 128),
                                                       (torch.float64, 32)]
        for dtype, r in shapes:
            tag = f"{str(dtype)[6:]} r={r}"
            for n in (1_000_000, 1_000):  # the split-n kernels, and the small-problem kernel (n <= SMALL_N)
                label[0] = f"symnmf_block n={n} {tag}"
                U = torch.rand(n, r, dtype=dtype, requires_grad=True)
                P = torch.rand(n, r, dtype=dtype, requires_grad=True)
                lam = torch.tensor(1.0, dtype=dtype, requires_grad=True)
                sk.symnmf_block(U, P, lam).backward(torch.rand(n, r, dtype=dtype))
            label[0] = f"symnmf_block_from_gram n=1000000 {tag}"  # SymNMF-Net's block
            UtU = torch.rand(r, r, dtype=dtype, requires_grad=True)
            P = torch.rand(1_000_000, r, dtype=dtype, requires_grad=True)
            Y, YtY = sk.symnmf_block_from_gram(UtU, P, torch.tensor(1.0, dtype=dtype, requires_grad=True))  # as trained
            ((Y * torch.rand_like(Y)).sum() + YtY.sum()).backward()
            label[0] = f"sym_loss n=2048 {tag}"
            X = torch.rand(2048, 2048, dtype=dtype)
            U = torch.rand(2048, r, dtype=dtype, requires_grad=True)
            sk.sym_loss(X, U).backward()
            label[0] = f"sparse_layer_loss n=100000 {tag}"
            n = 100_000
            rows = torch.arange(n).repeat_interleave(8)
            cols = torch.randint(0, n, (8 * n,))
            A = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                        torch.rand(16 * n, dtype=dtype), (n, n)).coalesce().to_sparse_csr()
            U = torch.rand(n, r, dtype=dtype, requires_grad=True)
            P = torch.rand(n, r, dtype=dtype, requires_grad=True)
            fit, reg = sk.sparse_layer_loss(A, U, P, 0.5, symmetric=True)
            (fit + reg).backward()
            # as SymNMF-Net's chain form calls it: the Gram from the block, so the terms pass forms none
            fit, reg = sk.sparse_layer_loss(A, U, P, 0.5, symmetric=True, gram=U.mT @ U)
            (fit + reg).backward()
            label[0] = f"net_chain n=100000 {tag}"
            from symnmf.net_chain import NetChain

            w = torch.rand(8 * n, dtype=dtype)  # the chain needs an exactly symmetric X
            X = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                        torch.cat([w, w]), (n, n)).coalesce().to_sparse_csr()
            U0 = torch.rand(n, r, dtype=dtype)
            Ps = [torch.rand(n, r, dtype=dtype, requires_grad=True) for _ in range(2)]
            lam = torch.tensor(1.0, dtype=dtype, requires_grad=True)
            loss, _, _ = NetChain(X, U0, torch.rand(n, r, dtype=dtype))(Ps, lam, [1.0, 1.0], 0.5, 0.0)
            loss.sum().backward()
            label[0] = f"hals_sweep_ n=1000000 {tag}"
            W, XV, V = (torch.rand(1_000_000, r, dtype=dtype) for _ in range(3))
            sk.hals_sweep_(W, XV, V.T @ V, V=V, lam=0.5, backend="triton")
            label[0] = f"projected_gradient_sq n=1000000 {tag}"
            sk.projected_gradient_sq(W, V)
    return records


def compile_launch(fn, args, kwargs):
    """The cubin of fn as JITFunction.run would build it for these arguments on an sm_90 device: the same
    binder (stride 1 as a constexpr, divisibility by 16 of sizes, strides and pointers), options and source."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(TARGET)
    kwargs = dict(kwargs, debug=kwargs.get("debug", False))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options.__dict__)
    ones = sorted(fn.arg_names[path[0]] for path, value in constexprs.items()
                  if len(path) == 1 and not fn.params[path[0]].is_constexpr and value == 1)
    flags = {fn.arg_names[path[0]]: value for path, value in constexprs.items()
             if len(path) == 1 and fn.params[path[0]].is_constexpr and isinstance(value, bool)}
    return compiled.asm["cubin"], ones, len(attrs), flags, options.num_warps


def as_launched(quick):
    """Rows of the --as-launched table: each distinct launch compiled as the runtime would compile it."""
    rows, failures, seen = [], 0, set()
    for label, fn, args, kwargs in captured_launches(quick):
        name = fn.fn.__name__
        try:
            cubin, ones, aligned, flags, warps = compile_launch(fn, args, kwargs)
        except Exception as exc:  # report every failure, not only the first
            failures += 1
            message = " ".join(str(exc).split())[-160:]
            rows.append((name, label, "-", "-", "-", "-", -1, -1, -1, -1, "-", "-", "FAILED: " + message))
            continue
        key = (name, label.split(" ", 2)[-1], tuple(ones), tuple(sorted(flags.items())), warps, aligned)
        if key in seen:
            continue
        seen.add(key)
        flag_text = " ".join(f"{k}={int(v)}" for k, v in sorted(flags.items())) or "-"
        sass = cuobjdump(cubin, "-sass")
        rows.append((name, label, flag_text, ", ".join(ones) or "-", aligned, warps, *resources(cubin),
                     tensor_core_ops(cubin, sass), loop_body(sass), "ok"))
    header = ["kernel", "launched by", "flags", "constexpr 1", "divisible by 16", "warps", "registers",
              "stack bytes", "local bytes", "shared bytes", "tensor cores", "loop body (shuffles)", "compile"]
    return header, rows, failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="r = 64 float32 only (every flag combination)")
    parser.add_argument("--as-launched", action="store_true",
                        help="compile each kernel as the ops launch it on a GPU, with the runtime's specialisations "
                             "(arguments equal to 1 as constexprs, divisibility by 16): compile-sm90-launched-<date>.md")
    parser.add_argument("--out", help="also write the table to this folder as compile-sm90-<date>.md")
    parser.add_argument("--precision", choices=["auto", "ieee", "tf32x3", "tf32"], default=get_dot_precision(),
                        help="input_precision of the float32 n-length dots (default: the library's CUDA default)")
    args = parser.parse_args(argv)
    PRECISION[0] = args.precision
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the compiler this script runs")
    if args.as_launched:
        header, rows, failures = as_launched(args.quick)
        title, stem = "Triton kernels as the ops launch them, compiled for sm_90 (no GPU needed)", "compile-sm90-launched"
        note = (" Each row is a distinct launch captured from the ops on a GPU's launch geometry, compiled with the"
                " runtime's own specialisation of its arguments: `constexpr 1` lists the arguments equal to 1 that"
                " become constants (unit strides), `divisible by 16` counts the sizes, strides and pointers"
                " marked so. `loop body`: the instructions (and shuffles) of the longest loop in the SASS, one trip"
                " of the kernel's main loop (over row tiles, or over the columns in the SymHALS sweep).")
    else:
        header, rows, failures = by_configuration(args.quick)
        title, stem, note = "Triton kernels compiled for sm_90 (no GPU needed)", "compile-sm90", ""
    lines = [
        f"# {title}, {datetime.date.today()}",
        "",
        f"triton {triton.__version__}; float32 n-length dots with input_precision={args.precision!r}; resources"
        " from cuobjdump --dump-resource-usage; stack or local bytes well above zero mean registers spilled to"
        " memory; tensor cores: the matrix instructions in the SASS (HGMMA = wgmma, HMMA = mma)." + note,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"{stem}-{datetime.date.today()}.md"), "w") as f:
            f.write(table)
    return 1 if failures else 0


def by_configuration(quick):
    """Rows of the default table: every kernel and flag combination with generic argument types."""
    rows, failures = [], 0
    for fn, dtype, r, flags in configs(quick):
        warps = launch(fn, r)[2]
        name = fn.fn.__name__ + "".join(f" {k}={int(v)}" for k, v in flags.items())
        try:
            src = ASTSource(fn=fn, signature=signature(fn, dtype), constexprs=constexprs(fn, dtype, r, flags))
            compiled = triton.compile(src, target=TARGET, options={"num_warps": warps})
            cubin = compiled.asm["cubin"]
            rows.append((name, dtype, r, warps, *resources(cubin), tensor_core_ops(cubin), "ok"))
        except Exception as exc:  # report every failure, not only the first
            failures += 1
            message = " ".join(str(exc).split())[-160:]
            rows.append((name, dtype, r, warps, -1, -1, -1, -1, "-", "FAILED: " + message))
    header = ["kernel", "dtype", "r", "warps", "registers", "stack bytes", "local bytes", "shared bytes",
              "tensor cores", "compile"]
    return header, rows, failures


if __name__ == "__main__":
    sys.exit(main())
