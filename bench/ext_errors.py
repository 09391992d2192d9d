"""Does an argument error raised inside the compiled extension reach Python as an exception?

Each case calls torch.ops.symnmf_kernels.spmm_csr with one bad argument in a
fresh subprocess and reports what came back: the exception type and message,
or the signal that killed the process. A control case raises from torch's own
C++ code the same way.

    python bench/ext_errors.py
"""
import os
import signal
import subprocess
import sys

PRELUDE = (
    "import torch, symnmf_kernels\n"
    "op = torch.ops.symnmf_kernels.spmm_csr\n"
    "t = lambda x, **k: torch.tensor(x, **k)\n"
    "dev = {dev!r}\n"
)
CASES = {
    "control: a RuntimeError from torch's own C++": "torch.zeros(2, 3, device=dev) @ torch.zeros(4, 5, device=dev)",
    "metadata check (TORCH_CHECK, header)": "op(t([0, 1], device=dev), t([0], device=dev), torch.ones(1, device=dev, dtype=torch.float64), torch.ones(3, device=dev, dtype=torch.float64))",
    "dtype check (TORCH_CHECK_TYPE, header)": "op(t([0, 1], device=dev), t([0], device=dev), torch.ones(1, device=dev), torch.ones(1, 2, device=dev, dtype=torch.float64))",
    "row pointers (TORCH_CHECK, cpu file)": "op(t([0, 2, 1, 3], device=dev), t([0, 1, 2], device=dev), torch.ones(3, device=dev, dtype=torch.float64), torch.rand(3, 2, device=dev, dtype=torch.float64))",
}


# Environment variants of one crashing case: whether the crash follows the C++ backtrace's symbolisation.
ENV_VARIANTS = ({"TORCH_SHOW_CPP_STACKTRACES": "1"}, {"TORCH_DISABLE_ADDR2LINE": "1"})


def run(code, env=None, timeout=30):
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired:
        return f"hung: no exit within {timeout} s"
    if proc.returncode < 0:
        # faulthandler's report names the Python line that was running when the signal came
        where = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("File ")]
        return f"killed by {signal.Signals(-proc.returncode).name}" + (f" at {where[0][:150]}" if where else "")
    last = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return f"exit {proc.returncode}: " + (last[-1][:150] if last else "no error")


def environment():
    """What the extension was built with and against: the C++ compiler here, torch's own build compiler and
    C++ ABI, and the extension's shared library's runtime dependencies (a mismatch in any of them is a
    way for an exception to lose its way between the two libraries)."""
    import torch

    lines = [f"torch {torch.__version__} (CUDA {torch.version.cuda}), C++11 ABI {torch.compiled_with_cxx11_abi()}"]
    build = [part.strip() for part in torch.__config__.show().split(",") if "CXX_COMPILER" in part]
    lines += build[:1]
    for tool in ("c++", "g++", "nvcc"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if found:
            version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
            lines.append(f"{tool}: {found}: {version[-1] if tool == 'nvcc' and version else (version or [''])[0]}")
    try:
        import importlib.util

        path = importlib.util.find_spec("symnmf_kernels._C").origin  # a library of operators, not a module
        deps = subprocess.run(["ldd", path], capture_output=True, text=True).stdout.splitlines()
        lines.append("extension links: " + ", ".join(d.split()[0] for d in deps if any(
            k in d for k in ("c10", "torch", "stdc++", "gcc_s", "cudart", "gomp"))))
    except Exception as exc:  # the report must still run the cases
        lines.append(f"extension: {type(exc).__name__}: {exc}")
    return lines


def main():
    import torch

    for line in environment():
        print(line, flush=True)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for name, body in CASES.items():
            if "cpu file" in name and dev == "cuda":
                continue
            print(f"{dev:4s} {name}: {run(PRELUDE.format(dev=dev) + body)}", flush=True)
    crash = PRELUDE.format(dev="cpu") + CASES["row pointers (TORCH_CHECK, cpu file)"]
    for env in ENV_VARIANTS:
        print(f"cpu  row pointers with {env}: {run(crash, env)}", flush=True)
    gdb = subprocess.run(["which", "gdb"], capture_output=True, text=True).stdout.strip()
    if gdb:
        code = PRELUDE.format(dev="cpu") + CASES["row pointers (TORCH_CHECK, cpu file)"]
        try:
            out = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c", code],
                                 capture_output=True, text=True, timeout=40).stdout
        except subprocess.TimeoutExpired:
            out = ""
            print("gdb: no exit within 40 s")
        frames = [line for line in out.splitlines() if line.startswith("#") or "signal" in line]
        print("gdb (row pointers case on cpu):\n" + ("\n".join(frames[:30]) or "no signal, no backtrace"))
    else:
        print("gdb: not installed")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    sys.exit(main())
