"""Shared pieces of the benchmarks in bench/: timing, copy bandwidth, roofline, result tables.

Every benchmark script runs from the repository root, as a file or as a module
(`python bench/bench_block.py`, `python -m bench.bench_block`), and imports this
module the same way in both cases:

    import os, sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import bench, copy_bandwidth, roofline_fraction, device_info, write_table

Timing uses triton.testing.do_bench (CUDA events, L2 flushed before every run,
median) on a CUDA device. Without CUDA or Triton it falls back to the median of
time.perf_counter intervals, so every script also runs on a CPU-only machine at
small sizes; such numbers only show that the script works.
"""
import contextlib
import datetime
import functools
import importlib
import math
import os
import platform
import re
import statistics
import time

import torch

__all__ = [
    "bench",
    "copy_bandwidth",
    "roofline_fraction",
    "device_info",
    "device_slug",
    "write_table",
    "format_value",
    "RESULTS_DIR",
]

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _as_device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _do_bench_available(device):
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import triton.testing  # noqa: F401
    except ImportError:
        return False
    return True


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_grads(grad_to_none):
    for x in grad_to_none or ():
        x.grad = None


def _perf_counter_median(fn, warmup, rep, grad_to_none, device, max_runs):
    """Median wall time in ms; the device is synchronised around every run."""

    def run_once():
        _reset_grads(grad_to_none)
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        return (time.perf_counter() - start) * 1e3

    run_once()  # the first run also compiles / loads whatever fn needs
    # The fastest of three: one run slowed by a busy host must not shrink the sample.
    estimate = max(min(run_once() for _ in range(3)), 1e-3)
    for _ in range(min(max_runs, int(warmup / estimate))):
        run_once()
    n_repeat = max(5, min(max_runs, int(rep / estimate)))
    times = [run_once() for _ in range(n_repeat)]
    return statistics.median(times)


def bench(fn, warmup=25, rep=100, grad_to_none=None, device=None, max_runs=1000):
    """Median run time of fn() in milliseconds.

    warmup and rep are time budgets in ms, as in triton.testing.do_bench.
    grad_to_none: tensors whose .grad is reset before every run, so a timed
    backward never accumulates into an existing gradient.
    device: where fn runs (default: CUDA when available). On CUDA with Triton
    installed this is triton.testing.do_bench(return_mode="median"); otherwise
    the median of time.perf_counter intervals over at least 5 and at most
    max_runs runs.
    """
    device = _as_device(device)
    if _do_bench_available(device):
        import triton.testing

        with torch.cuda.device(device):
            return float(
                triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median")
            )
    return float(_perf_counter_median(fn, warmup, rep, grad_to_none, device, max_runs))


def host_ms(fn, grad_to_none=None, device=None, runs=25):
    """Median host time in ms to issue one call of fn, each started with the device idle.

    On a GPU the host returns once the call's work is queued, so this is the Python, dispatch and launch
    cost alone. A device time (`bench`) close to it means the call is bound by the host, not by its kernels:
    its time then says nothing of them. On the CPU it is the call's own time.
    """
    device = _as_device(device)
    times = []
    for i in range(runs + 3):  # the first calls also compile and load
        _reset_grads(grad_to_none)
        _synchronize(device)
        start = time.perf_counter()
        fn()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    _synchronize(device)
    return statistics.median(times)


@functools.lru_cache(maxsize=None)
def _copy_bandwidth_cached(device_str, nbytes):
    device = torch.device(device_str)
    numel = nbytes // 4
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), warmup=10, rep=50, device=device)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # A copy reads nbytes and writes nbytes.
    return 2 * numel * 4 / (ms * 1e-3)


def copy_bandwidth(device=None, nbytes=None):
    """Measured device-to-device copy bandwidth in bytes/s, counting bytes read and written.

    The roofline every kernel is compared with. On CUDA it copies a 1 GiB float32
    tensor (large enough to defeat the L2 cache); on CPU a 64 MiB one. Cached per
    (device, nbytes) for the process.
    """
    device = _as_device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    return _copy_bandwidth_cached(str(device), int(nbytes))


def roofline_fraction(bytes_moved, ms, bw):
    """Achieved bandwidth bytes_moved / time as a fraction of bw (bytes/s); NaN when ms is not a positive number."""
    if ms is None or bw is None or not (ms > 0) or not math.isfinite(ms) or not (bw > 0):
        return float("nan")
    return bytes_moved / (ms * 1e-3) / bw


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(device=None):
    """What a result depends on: device name, library versions, date. Values are strings."""
    device = _as_device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cuda = torch.version.cuda or "unknown"
    else:
        name = "CPU: %s (%d threads)" % (_cpu_name(), torch.get_num_threads())
        cuda = "none"
    return {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": cuda,
        "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "date": datetime.date.today().isoformat(),
    }


def device_slug(device=None):
    """A file-name-safe name of the device: 'NVIDIA-H100-80GB-HBM3', or 'cpu'."""
    device = _as_device(device)
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", torch.cuda.get_device_name(device)).strip("-") or "cuda"


def format_value(value):
    """Table cell: 4 significant digits for floats, 'nan' for missing numbers, str() otherwise."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0 or math.isinf(value):
            return str(value)
        if 1e-3 <= abs(value) < 1e5:
            return "%.4g" % value
        return "%.3e" % value
    if value is None:
        return ""
    return str(value)


def _markdown(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        cells = [format_value(row.get(c) if isinstance(row, dict) else row[i]) for i, c in enumerate(columns)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_table(name, rows, columns, header_lines=(), out_dir=None, device=None, echo=True):
    """Write rows as a dated markdown table to <out_dir>/<name>-<YYYY-MM-DD>-<device>.md and return its path.

    rows: dicts keyed by column name (missing keys print empty) or sequences in
    column order. The file starts with the device, versions and date (device_info),
    then header_lines, then the table. out_dir defaults to bench/results. echo
    prints the file's text too.
    """
    device = _as_device(device)
    info = device_info(device)
    out_dir = RESULTS_DIR if out_dir is None else out_dir
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "%s-%s-%s.md" % (name, info["date"], device_slug(device)))
    text = [
        "# %s" % name,
        "",
        "- device: %s" % info["device"],
        "- torch %s, triton %s, CUDA %s, Python %s, TRITON_INTERPRET=%s"
        % (info["torch"], info["triton"], info["cuda"], info["python"], info["triton_interpret"]),
        "- date: %s" % info["date"],
    ]
    text += ["- %s" % line if not line.startswith(("-", "#", "|")) and line else line for line in header_lines]
    text += ["", _markdown(rows, list(columns)), ""]
    text = "\n".join(text)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a run cut short leaves the last complete table, never half a file
    if echo:
        print(text, flush=True)
    return path


@contextlib.contextmanager
def tall_loops(allowed):
    """Inside the block, the extension's tall-skinny row loops (symnmf_kernels/ops/gram.py, and the fused ReLU
    that takes the same switch) run where they would (allowed) or not at all: torch's BLAS products instead."""
    gram = importlib.import_module("symnmf_kernels.ops.gram")
    native = gram._NATIVE_TALL
    gram._NATIVE_TALL = native and allowed
    try:
        yield
    finally:
        gram._NATIVE_TALL = native


@contextlib.contextmanager
def net_chain(allowed):
    """Inside the block, SymNMF-Net's fit takes its objective in one autograd node where it would (allowed,
    python/symnmf/net_chain.py) or never: op by op, an autograd node per block and layer loss."""
    chain = importlib.import_module("symnmf.net_chain").NetChain
    applies = chain.__dict__["applies"]
    if not allowed:
        chain.applies = staticmethod(lambda X, U0: False)
    try:
        yield
    finally:
        chain.applies = applies


def load_tiles(path):
    """Install the GPU tiles of a tune_tiles JSON ({family: {BLOCK_R: [BLOCK_N, num_warps]}}) in the library's
    table (ops._common._GPU_TILES) for this process; returns them as "family BLOCK_R: (BLOCK_N, warps)" text."""
    import json

    from symnmf_kernels.ops import _common

    with open(path) as f:
        tiles = json.load(f)
    installed = []
    for family, by_width in tiles.items():
        if family not in _common._GPU_TILES:
            raise ValueError(f"{path}: unknown kernel family {family!r}; known: {sorted(_common._GPU_TILES)}")
        for width, (block_n, warps) in by_width.items():
            _common._GPU_TILES[family][int(width)] = (int(block_n), int(warps))
            installed.append(f"{family} {width}: ({block_n}, {warps})")
    return ", ".join(installed)


def add_run_args(parser):
    """The options every benchmark shares: --device, --warmup, --rep, --budget-s, --seed, --out."""
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--warmup", type=float, help="warm-up budget per measurement, ms (default: 25 on CUDA, 5 on CPU)")
    parser.add_argument("--rep", type=float, help="repetition budget per measurement, ms (default: 100 on CUDA, 20 on CPU)")
    parser.add_argument("--budget-s", type=float,
                        help="stop starting new rows after this many seconds and write what was measured")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="results folder (default: bench/results)")


def resolve_run_args(parser, args, cuda_budget_s=float("inf")):
    """Fill in the defaults of `add_run_args` that depend on the device; CPU runs are short smoke runs."""
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; use --device cpu")
    on_cuda = args.device.type == "cuda"
    args.warmup = (25.0 if on_cuda else 5.0) if args.warmup is None else args.warmup
    args.rep = (100.0 if on_cuda else 20.0) if args.rep is None else args.rep
    args.budget_s = (cuda_budget_s if on_cuda else float("inf")) if args.budget_s is None else args.budget_s
    return args
