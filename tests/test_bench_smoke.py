"""The benchmark harness works on a CPU-only machine: bench/bench_block.py runs at tiny sizes and
writes a table with the expected columns and finite positive numbers; bench/common.py's helpers."""
import glob
import math
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import common  # noqa: E402

BLOCK_COLUMNS = [
    "kernel", "B", "n", "r", "ours_ms", "eager_ms", "compile_ms", "triton_ms", "host_ours_ms", "host_eager_ms",
    "ideal_MB", "copy_GB/s",
    "frac_ours", "frac_eager", "frac_compile", "x_eager", "x_compile", "x_triton", "rel_err", "notes",
]
POSITIVE = ["ours_ms", "eager_ms", "ideal_MB", "copy_GB/s", "frac_ours", "frac_eager", "x_eager"]
KERNELS = {"gram", "spd_inverse", "apply_relu", "symnmf_block", "symnmf_block_fwd_bwd", "sym_loss"}


def read_table(path):
    """Header lines and rows (dicts of strings) of a markdown table written by common.write_table."""
    lines = open(path).read().splitlines()
    table = [line for line in lines if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    columns, rows = cells[0], [dict(zip(cells[0], row)) for row in cells[2:]]
    return [line for line in lines if not line.startswith("|")], columns, rows


def run_tiny(device, out_dir):
    """Run bench/bench_block.py at tiny sizes on device; return the table's header text and rows."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # the harness is under test here, not the kernels in the interpreter
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_block.py"), "--device", device, "--sizes", "tiny",
           "--no-compile", "--warmup", "0", "--rep", "1", "--out", str(out_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    files = glob.glob(os.path.join(str(out_dir), "bench_block-*.md"))
    assert len(files) == 1, files
    assert re.fullmatch(r"bench_block-\d{4}-\d{2}-\d{2}-%s\.md" % re.escape(common.device_slug(device)),
                        os.path.basename(files[0]))
    header, columns, rows = read_table(files[0])
    assert columns == BLOCK_COLUMNS
    text = "\n".join(header)
    assert "torch %s" % torch.__version__ in text and "- date: " in text and "- device: " in text

    # tiny: 2 single problems (spd_inverse: one row per r, also 2) and 1 batch, for each of 6 kernels
    assert len(rows) == 18
    assert {row["kernel"] for row in rows} == KERNELS
    for row in rows:
        for column in POSITIVE:
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (column, row)
        assert row["compile_ms"] == "" and row["x_compile"] == "", row
        assert row["host_ours_ms"] == "" or device == "cuda", row  # measured on a GPU only
        assert row["notes"] == "", row
    for row in rows:
        if row["kernel"] == "symnmf_block" and row["B"] == "1":  # 3 n r float32 elements
            assert float(row["ideal_MB"]) == pytest.approx(3 * int(row["n"]) * int(row["r"]) * 4 / 1e6, rel=1e-3)
    return text, rows


def test_bench_block_tiny_cpu(tmp_path):
    text, rows = run_tiny("cpu", tmp_path)
    assert "- device: CPU" in text and "ours and eager coincide" in text
    for row in rows:
        assert float(row["rel_err"]) <= 1e-5, row  # the same torch path, up to summation order


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_block_tiny_cuda(tmp_path):
    text, rows = run_tiny("cuda", tmp_path)
    assert "triton.testing.do_bench" in text
    for row in rows:
        assert float(row["rel_err"]) <= 1e-4, row  # the Triton kernels against plain torch, float32


def test_bench_block_refuses_interpreter_at_large_sizes(monkeypatch, capsys):
    from bench import bench_block

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit):
        bench_block.parse_args(["--device", "cpu", "--sizes", "small"])
    assert "--sizes tiny" in capsys.readouterr().err


def test_bench_median_and_grad_reset():
    x = torch.rand(7, requires_grad=True)

    def step():
        assert x.grad is None  # reset before every run
        (x * 2).sum().backward()

    ms = common.bench(step, warmup=0, rep=1, grad_to_none=[x], device="cpu")
    assert math.isfinite(ms) and ms > 0


def test_roofline_fraction():
    assert common.roofline_fraction(3e9, 1.0, 6e12) == pytest.approx(0.5)
    assert math.isnan(common.roofline_fraction(1e6, float("nan"), 1e12))
    assert math.isnan(common.roofline_fraction(1e6, 0.0, 1e12))


def test_copy_bandwidth_cpu():
    bw = common.copy_bandwidth("cpu", nbytes=1 << 20)
    assert math.isfinite(bw) and bw > 1e6


def test_write_table(tmp_path):
    path = common.write_table("demo", [{"a": 1.5, "b": float("nan")}, [2, "x|y"]], ["a", "b"], ["extra line"],
                              out_dir=str(tmp_path), device="cpu", echo=False)
    info = common.device_info("cpu")
    assert os.path.basename(path) == "demo-%s-cpu.md" % info["date"]
    header, columns, rows = read_table(path)
    assert columns == ["a", "b"]
    assert rows == [{"a": "1.5", "b": "nan"}, {"a": "2", "b": "x/y"}]
    assert "- extra line" in header and "- device: %s" % info["device"] in header


def _run_script(args, out_dir, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, *args, "--out", str(out_dir)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    files = glob.glob(os.path.join(str(out_dir), "*.md"))
    assert len(files) == 1, files
    return read_table(files[0])


def test_bench_net_fit_cpu(tmp_path):
    """The whole-fit benchmark times SymHALS, the default net, the net with the earlier restart rule, the net
    with BLAS's products and the net with its objective op by op on one small graph; no CUDA-graph row on CPU."""
    _, _, rows = _run_script([os.path.join("bench", "bench_net_fit.py"), "--device", "cpu", "--graphs", "planted",
                              "--repeats", "1"], tmp_path)
    assert [row["variant"] for row in rows] == ["hals", "net", "net_loss", "net_blas", "net_ops"]
    for row in rows:
        assert row["note"] == "", row
        assert float(row["seconds"]) > 0 and int(row["steps"]) > 0 and 0 < float(row["acc"]) <= 1, row
    assert float(rows[1]["x_hals"]) == pytest.approx(float(rows[1]["seconds"]) / float(rows[0]["seconds"]), rel=1e-3)


def test_bench_host_counts_the_launches(tmp_path):
    """The host-cost benchmark: every row timed, and the launches of each path as the ops make them on a GPU.
    The block: one launch each way for a small problem; on the split-n kernels four each way, three at r <= 16
    (one program per problem adds up the partial sums and does the r x r algebra too). The chain form: the
    inverse, the product and its Gram's reduction forward, the product's backward and its reduction. The other
    ops' forward: the Gram two (partial sums, then their reduction), the others one. A SymNMF-Net step (L = 5) on
    the GPU's eager path: 51."""
    _, _, rows = _run_script([os.path.join("bench", "bench_host.py"), "--rounds", "1"], tmp_path)
    assert len(rows) == 5 * 2 * 3 + 2 * 2 + 4 * 2 + 1
    for row in rows:
        assert float(row["host_us"]) > 0, row
        if row["op"].startswith("net step"):  # five blocks and five layer losses, each way
            assert float(row["launches"]) == 51, row
            continue
        if row["op"] == "symnmf_block_from_gram":
            assert float(row["launches"]) == (3 if row["work"] == "forward" else 5), row
            continue
        if row["op"] != "symnmf_block":
            assert row["work"] == "forward" and row["variant"] in ("default", "custom_op"), row
            assert float(row["launches"]) == (2 if row["op"] == "gram" else 1), row
            continue
        if int(row["n"]) <= 1024 and row["variant"] != "split":
            forward = backward = 1
        else:
            forward = backward = 3 if int(row["r"]) <= 16 else 4
        assert float(row["launches"]) == (forward if row["work"] == "forward" else forward + backward), row


def test_bench_net_step_plain_torch_is_the_same_network():
    """The plain-torch network of bench_net_step computes the library's objective: loss and every gradient agree
    in float64 at the start's weights."""
    from bench import bench_net_step
    from bench.bench_cpu import planted_graph
    from symnmf import SymNMFNet

    X, _ = planted_graph(300, 4, 16, seed=1)
    X = X.double()
    net = SymNMFNet(4, n_layers=3, loss_blocks="all", mu=0.0, random_state=1)
    net.initialize(X)
    Xp = net._prepare(X)
    gap = bench_net_step.objective_gap(net, Xp, Xp.values().pow(2).sum(), net._start_product(Xp))
    assert gap <= 1e-10


def test_bench_net_step_cpu(tmp_path):
    """The step benchmark times ours against plain torch on the CPU (no CUDA-graph column there)."""
    _, _, rows = _run_script([os.path.join("bench", "bench_net_step.py"), "--device", "cpu", "--sizes", "400,4,2",
                              "--rounds", "1", "--rep", "1", "--warmup", "0"], tmp_path)
    assert len(rows) == 1 and rows[0]["notes"] == "", rows
    row = rows[0]
    assert float(row["ours_ms"]) > 0 and float(row["torch_ms"]) > 0 and row["ours_graph_ms"] == ""
    assert float(row["ops_ms"]) > 0 and row["ops_graph_ms"] == ""  # the op-by-op objective beside the chain
    assert float(row["x_torch"]) == pytest.approx(float(row["torch_ms"]) / float(row["ours_ms"]), rel=1e-3)
    assert float(row["rel_diff"]) <= 1e-4  # float32: the same network


def test_net_step_traffic_counts_the_gpu_step(tmp_path):
    """The step's traffic model records the Triton launches a GPU would make (one forward kernel per block) and
    charges fused Adam seven passes over each of the L weights, for the chain and the op-by-op objective; each
    variant's total is the sum of its rows, and the chain moves less: no pass of its own sums a weight's two
    gradients, and the regulariser's residual is formed once."""
    L = 3
    _, _, rows = _run_script([os.path.join("bench", "net_step_traffic.py"), "--size", f"400,16,{L}"], tmp_path)
    totals = {row["variant"]: row for row in rows if row["kind"] == "all"}
    assert set(totals) == {"chain", "ops"}
    for variant, total in totals.items():
        mine = [row for row in rows if row["variant"] == variant and row["kind"] != "all"]
        by_name = {row["name"]: row for row in mine}
        assert int(by_name["apply_kernel"]["calls"]) == L
        assert float(by_name["aten._fused_adam_.default"]["units"]) == pytest.approx(7 * L)
        assert float(total["units"]) == pytest.approx(sum(float(row["units"]) for row in mine), rel=1e-3)
    chain = {row["name"] for row in rows if row["variant"] == "chain"}
    assert "sparse_reg_grad_kernel" not in chain and "aten.add.Tensor" not in chain
    assert float(totals["chain"]["units"]) < float(totals["ops"]["units"]) - 5 * (L - 1)


def test_bench_nnls_symanls_cpu(tmp_path):
    """SymANLS's NNLS calls timed on each CPU path: the same solutions, and the first call's positive start
    leaves larger passive sets than a later call's."""
    _, columns, rows = _run_script([os.path.join("bench", "bench_nnls_symanls.py"), "--device", "cpu", "--quick",
                                    "--max-runs", "1"], tmp_path)
    assert [row["call"] for row in rows] == ["0", "3"]
    assert all(float(row["torch_ms"]) > 0 and float(row["rel_err"]) <= 1e-5 for row in rows)
    assert float(rows[0]["passive"]) > float(rows[1]["passive"]) > 0
    if "native_ms" in columns:
        assert all(float(row["x_torch"]) == pytest.approx(float(row["torch_ms"]) / float(row["native_ms"]), rel=1e-3)
                   for row in rows)


def test_profile_net_step_cpu(tmp_path):
    """The step's profile adds up: the groups' and the listed names' times lie within the total, the shares
    sum to 1, and the library's ops of the step are among the groups."""
    _, _, rows = _run_script([os.path.join("bench", "profile_net_step.py"), "--device", "cpu", "--size", "400,4,2",
                              "--steps", "2", "--top", "5"], tmp_path)
    groups = [row for row in rows if row["level"] == "group"]
    total, = [row for row in rows if row["level"] == "total"]
    kernels = [row for row in rows if row["level"] == "kernel"]
    assert len(kernels) == 5
    total_ms = float(total["ms_per_step"])
    assert total_ms > 0 and float(total["share"]) == pytest.approx(1.0)
    assert sum(float(row["ms_per_step"]) for row in groups) == pytest.approx(total_ms, rel=1e-3)
    assert sum(float(row["share"]) for row in groups) == pytest.approx(1.0, rel=1e-3)
    assert all(0 < float(row["ms_per_step"]) <= total_ms for row in kernels)
    assert {"op: sparse_loss_terms_csr", "op: sparse_loss_grad_csr", "adam"} <= {row["group"] for row in groups}


def test_load_tiles_installs_a_tune_json(tmp_path, monkeypatch):
    """A tune_tiles JSON's tiles replace the library's for the process; an unknown family is refused."""
    import copy
    import json

    from symnmf_kernels.ops import _common

    monkeypatch.setattr(_common, "_GPU_TILES", copy.deepcopy(_common._GPU_TILES))
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps({"apply_backward_h": {"64": [32, 8]}, "gram": {"16": [64, 4], "64": [64, 8]}}))
    text = common.load_tiles(str(path))
    assert _common._GPU_TILES["apply_backward_h"][64] == (32, 8)
    assert _common._GPU_TILES["gram"][16] == (64, 4) and _common._GPU_TILES["gram"][64] == (64, 8)
    assert _common.tiles("gram", 64, torch.device("cuda")) == (64, 8)
    assert "apply_backward_h 64: (32, 8)" in text
    path.write_text(json.dumps({"no_such_kernel": {"64": [32, 8]}}))
    with pytest.raises(ValueError, match="no_such_kernel"):
        common.load_tiles(str(path))


def test_profile_net_step_groups():
    """Kernel names as a GPU profile shows them fall in their groups."""
    from bench.profile_net_step import group_of

    assert group_of("apply_backward_kernel") == "triton: apply_backward_kernel"
    assert group_of("void spmm_csr_kernel<float, int, 4>(long const*, int const*)") == "spmm"
    assert group_of("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>") \
        == "adam"
    assert group_of("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>") \
        == "elementwise (torch)"
    assert group_of("void at::native::reduce_kernel<512, 1, ReduceOp<float, at::native::func_wrapper_t>>") \
        == "reduction (torch)"
    assert group_of("sm90_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x128x32") == "gemm (cuBLAS)"
    assert group_of("Memcpy DtoD (Device -> Device)") == "copy / fill"
    assert group_of("symnmf_kernels::spmm_csr") == "spmm"


def test_bench_host_cache_small(tmp_path):
    """The host cache benchmark runs its processes in turns and fills every column."""
    _, _, rows = _run_script([os.path.join("bench", "bench_host_cache.py"), "--net-n", "600", "--net-r", "4",
                              "--restarts", "2", "--rounds", "1", "--steps", "2"], tmp_path)
    assert len(rows) == 1 and rows[0]["restarts"] == "2"
    assert float(rows[0]["cache_step_ms"]) > 0 and float(rows[0]["none_step_ms"]) > 0
    assert float(rows[0]["x_cache"]) == pytest.approx(
        float(rows[0]["none_step_ms"]) / float(rows[0]["cache_step_ms"]), rel=1e-3)


def test_bench_distributed_graph_small(tmp_path):
    """The sharded kNN build against the single-process one, at a small size: every build stores the same
    entries and gives the same X v up to rounding."""
    _, _, rows = _run_script([os.path.join("bench", "bench_distributed_graph.py"), "--sizes", "600x8",
                              "--threads", "1", "--ranks", "1", "2"], tmp_path)
    assert [(row["build"], row["processes"]) for row in rows] == [("single", "1"), ("sharded", "1"), ("sharded", "2")]
    assert len({row["stored_entries"] for row in rows}) == 1
    assert all(float(row["rel_diff"]) < 1e-5 for row in rows)
    assert float(rows[1]["MB_sent"]) == 0 and float(rows[2]["MB_sent"]) > 0  # one rank sends nothing


def test_bench_graph_small_with_chunks(tmp_path):
    _, _, rows = _run_script([os.path.join("bench", "bench_graph.py"), "--sizes", "800x8", "--searches", "exact",
                              "--chunk-sizes", "0", "64"], tmp_path)
    assert [row["notes"] for row in rows] == ["", "chunk_size 64"]
    assert rows[0]["stored_entries"] == rows[1]["stored_entries"] and float(rows[0]["recall"]) == 1.0


def test_bench_scale_small(tmp_path):
    """The end-to-end scale benchmark at a small n: a graph row and a SymHALS row with its memory."""
    _, _, rows = _run_script([os.path.join("bench", "bench_scale.py"), "--n", "3000", "--clusters", "4", "--quiet"],
                             tmp_path)
    assert [row["stage"] for row in rows] == ["graph", "symhals"]
    hals = rows[1]
    assert int(hals["iterations"]) > 0 and float(hals["s_per_iter"]) > 0 and float(hals["peak_rss_gb"]) > 0
    assert 0 < float(hals["acc"]) <= 1 and float(hals["state_mb"]) > 0


def test_bench_scale_planted_with_net_steps(tmp_path):
    """The planted mode the GPU scale runs use, at a small n on the CPU: the graph is symmetric and normalised,
    SymHALS recovers its clusters, the parts of its iteration are timed alone, and the SymNMF-Net stage times
    its steps."""
    _, _, rows = _run_script([os.path.join("bench", "bench_scale.py"), "--graph", "planted", "--n", "4000",
                              "--clusters", "4", "--net-steps", "3", "--hals-phases", "--quiet",
                              "--name", "scale_planted"], tmp_path)
    phases = ["spmm (X U)", "gram (U^T U + lam I)", "sweep (hals_sweep_)", "check: half gradient", "check: loss"]
    assert [row["stage"] for row in rows] == (["graph", "symhals"] + [f"symhals phase: {p}" for p in phases]
                                              + ["symhals phases, one iteration", "symnmf-net steps"])
    assert float(rows[1]["acc"]) > 0.9  # 60 % of the edges inside 4 clusters: an easy graph
    assert all(float(row["seconds"]) > 0 for row in rows[2:7])
    assert float(rows[7]["s_per_iter"]) > 2 * float(rows[2]["seconds"])  # two SpMMs and more an iteration
    net = rows[-1]
    assert int(net["iterations"]) == 3 and float(net["s_per_iter"]) > 0 and 0 < float(net["acc"]) <= 1


def test_planted_graph_is_a_normalised_similarity():
    from bench.bench_scale import planted

    X, labels = planted(500, 5, 12, 0.7, seed=1, device=torch.device("cpu"))
    D = X.to_dense()
    assert torch.equal(D, D.T) and bool((D >= 0).all()) and float(D.diagonal().abs().sum()) == 0
    assert abs(float(torch.linalg.eigvalsh(D.double()).max()) - 1) < 1e-5  # D^-1/2 A D^-1/2: spectral radius 1
    same = torch.tensor(labels)[:, None] == torch.tensor(labels)[None, :]
    assert float(D[same].sum()) > float(D[~same].sum())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_scale_planted_cuda(tmp_path):
    """The GPU scale run's path at a small n: graph drawn on the device, SymHALS, CUDA-graph net steps."""
    _, _, rows = _run_script([os.path.join("bench", "bench_scale.py"), "--graph", "planted", "--device", "cuda",
                              "--n", "20000", "--clusters", "8", "--net-steps", "5", "--quiet", "--name", "scale_cuda"],
                             tmp_path)
    assert [row["stage"] for row in rows] == ["graph", "symhals", "symnmf-net steps"]
    assert float(rows[1]["acc"]) > 0.9 and int(rows[2]["iterations"]) == 5


def test_study_net_polish_small(tmp_path):
    """bench/study_net_polish.py on digits, one seed, a few training steps: both polishes and SymHALS, with
    their records in the JSON lines file."""
    runs = tmp_path / "runs.jsonl"
    _, _, rows = _run_script([os.path.join("bench", "study_net_polish.py"), "--data", "digits", "--seeds", "0",
                              "--epochs", "3", "--runs", str(runs)], tmp_path)
    assert [row["fit"] for row in rows] == ["polish 100 (default)", "polish to SymHALS's rule", "SymHALS"]
    for row in rows:
        assert 0 < float(row["acc"]) <= 1 and 0 < float(row["E"]) < 1 and float(row["seconds"]) > 0, row
    import json

    (record,) = [json.loads(line) for line in open(runs)]
    assert record["data"] == "digits" and record["seed"] == 0 and len(record) == 5


def test_study_multistart_small(tmp_path):
    """bench/study_multistart.py on the planted graph, one seed, 2 starts; without the net's records the table
    has the multi-start columns alone."""
    runs = tmp_path / "runs.jsonl"
    _, _, rows = _run_script([os.path.join("bench", "study_multistart.py"), "--data", "planted", "--seeds", "0",
                              "--starts", "2", "--net-runs", str(tmp_path / "none.jsonl"), "--runs", str(runs)],
                             tmp_path)
    (row,) = rows
    assert row["data"] == "planted" and 0 < float(row["hals_2_starts"]) <= 1 and row["net"] == ""
    import json

    (record,) = [json.loads(line) for line in open(runs)]
    assert len(record["acc_every_start"]) == 2 and record["acc"] in record["acc_every_start"]


def test_study_net_restarts_heldout_and_report(tmp_path):
    """bench/study_net.py's restarts and heldout parts on the 2,000-node planted graph, a few steps, then the
    report's tables, all on files under tmp_path."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    script = os.path.join(ROOT, "bench", "study_net.py")
    runs, out, png = tmp_path / "runs.jsonl", tmp_path / "report.md", tmp_path / "plot.png"
    common_args = ["--seeds", "0", "--runs", str(runs)]
    for part in (["restarts", "--data", "planted", "--set", "epochs=3", "n_layers=2", "polish_iter=5"],
                 ["restarts", "--data", "planted", "--set", "epochs=3", "n_layers=2"],
                 ["heldout", "--data", "planted", "--solvers", "hals"],
                 ["report", "--out", str(out), "--plot", str(png)]):
        proc = subprocess.run([sys.executable, script, *part, *common_args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    import json

    records = [json.loads(line) for line in open(runs)]
    assert [r["part"] for r in records] == ["restarts epochs=3 n_layers=2 polish_iter=5",
                                           "restarts epochs=3 n_layers=2", "heldout"]
    for r in records[:2]:
        assert len(r["acc_polished"]) == len(r["modularity_polished"]) == len(r["E_trained"]) == 4
        assert all(-0.5 <= q <= 1 for q in r["modularity_polished"] + r["modularity_trained"])
    text = open(out).read()
    assert "| planted (2000) | study | 1 |" in text  # the heldout row
    assert "## Variants of the default's settings" in text and "epochs=3 n_layers=2 polish_iter=5" in text


def test_bench_batch_rows_kernels_small(tmp_path):
    """bench/bench_batch_rows.py's kernels at a tiny size, one round: both variants run in their own processes
    and the table has a finite, positive time and speed-up per kernel."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_batch_rows.py"), "kernels", "--n", "300", "--r", "8",
           "--rounds", "1", "--calls", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (path,) = glob.glob(os.path.join(str(tmp_path), "bench_batch_rows_kernels_1t-*.md"))
    _, columns, rows = read_table(path)
    assert columns[:4] == ["case", "one_after_another_ms", "side_by_side_ms", "speed_up"]
    assert [row["case"] for row in rows] == ["spmm 300 8", "terms 300 8", "grad 300 8"]
    for row in rows:
        for column in ("one_after_another_ms", "side_by_side_ms", "speed_up"):
            assert math.isfinite(float(row[column])) and float(row[column]) > 0, row


def test_bench_cpu_net_step_small(tmp_path):
    """The CPU net-step benchmark times fit's step, the op-by-op step, the BLAS step and the SpMM in turns."""
    _, _, rows = _run_script([os.path.join("bench", "bench_cpu.py"), "--profile-net", "--net-n", "300",
                              "--net-r", "4", "--net-restarts", "2", "--rounds", "2", "--min-time", "0"], tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert int(row["n"]) == 300 and int(row["restarts"]) == 2 and int(row["spmm_per_step"]) == 9
    for key in ("step_ms", "step_ops_ms", "step_blas_ms", "spmm_ms"):
        assert float(row[key]) > 0, key
    assert float(row["x_ops"]) == pytest.approx(float(row["step_ops_ms"]) / float(row["step_ms"]), rel=1e-2)
