"""Every Triton kernel compiles for an H100 (sm_90), checked on any machine.

The interpreter runs the kernels' arithmetic but not Triton's GPU compiler;
bench/compile_report.py compiles each kernel, at the launch geometry the ops
use, down to a cubin, which needs no GPU.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_kernel_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "compile_report.py")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith(("| kernel", "| ---"))]
    assert len(rows) >= 60 and all(row.rstrip().endswith("| ok |") for row in rows)


def test_kernels_as_launched_compile_for_sm90(tmp_path):
    """The same, for each kernel as the ops launch it on a GPU: arguments captured from the ops (nothing runs)
    and specialised as Triton's runtime does (unit strides as constants, divisibility by 16)."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "compile_report.py"), "--as-launched", "--quick"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| kernel", "| ---"))]
    assert rows and all(row[-1].strip() == "ok" for row in rows)
    kernels = {row[0].strip() for row in rows}
    assert {"gram_partials_kernel", "apply_kernel", "apply_backward_kernel", "symnmf_block_small_kernel",
            "symnmf_block_small_backward_kernel", "symnmf_block_dgram_kernel", "sparse_loss_terms_kernel",
            "sparse_loss_values_kernel", "sparse_loss_grad_kernel", "hals_sweep_kernel"} <= kernels
    # SymNMF-Net's chain launches its own forms: the terms pass that stores R, the gradient pass that takes R with
    # the regulariser's coefficient, the ReLU product's backward that adds R into dP
    chain_flags = {(row[0].strip(), flag) for row in rows if row[1].strip().startswith("net_chain")
                   for flag in row[2].split()}
    assert {("sparse_loss_terms_kernel", "WRITE_R=1"), ("sparse_loss_grad_kernel", "HAS_CW=1"),
            ("apply_backward_kernel", "HAS_T=1")} <= chain_flags
    # Row-major factors: every kernel that reads one gets its unit stride as a constant.
    assert all(row[3].strip() != "-" for row in rows if row[0].strip() in ("apply_kernel", "hals_sweep_kernel"))
