"""symnmf.distributed_graph: the kNN graph built row-sharded on 1, 2 and 3 gloo ranks against
`symnmf.similarity_graph` in one process.

Each rank writes its rows of the graph (the product of its block with the identity, so the whole
sharded path, halo plan included, is what is compared) and the labels of a sharded fit on it; the
test compares them with the single-process graph and fit. The ranks are spawned inside pytest with
torchrun's variables, as in tests/test_distributed.py.
"""
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp

from symnmf import distributed as sd
from symnmf import distributed_graph as sg
from symnmf.graph import similarity_graph
from test_distributed import _free_port, as_torchrun_rank, run_one_and_two_ranks

K = 5

# name: (n, dtype, options of similarity_graph, and "d" the number of features (12 if absent)); "array" passes
# the features in memory, not as the .npy path
CASES = {
    "euclid64": (701, "float64", {}),
    "euclid32": (701, "float32", {}),
    "cosine": (701, "float64", {"metric": "cosine"}),
    "k4s3": (701, "float64", {"n_neighbors": 4, "scale_neighbor": 3}),
    "chunks": (701, "float64", {"chunk_size": 7}),
    "array": (701, "float64", {}),
    "tiny": (7, "float64", {}),  # blocks of 2 or 3 rows: fewer candidates in a block than neighbours wanted
    "wide32": (1500, "float32", {"d": 64}),  # float32 in 64 dimensions: expanded distances round differently
    "ties": (301, "float64", {"d": 4}),  # features in {0, 1, 2}: 81 distinct points, distances tied at every k
}


def mixture(n, dtype, seed=0, d=12, k=K):
    """Points around k random centres, a new draw per case."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.normal(size=(k, d))
    return (rng.normal(size=(n, d)) + centres[rng.integers(0, k, n)]).astype(dtype)


def _options(name):
    return {key: value for key, value in CASES[name][2].items() if key != "d"}


def _worker(rank, world, root, port, backend="gloo", names=tuple(CASES)):
    as_torchrun_rank(rank, world, port)
    import torch.distributed as dist

    sd.init_from_env(backend)
    try:
        for name in names:
            path = os.path.join(root, f"{name}.npy")
            source = np.load(path) if name == "array" else path
            save_to = os.path.join(root, f"w{world}-{name}-saved") if name == "euclid64" and backend == "gloo" else None
            graph = sg.similarity_graph(source, **_options(name), save_to=save_to)
            eye = torch.eye(graph.n, dtype=graph.dtype, device=graph.device)[graph.lo:graph.hi]
            tag = f"w{world}" if backend == "gloo" else f"{backend}{world}"
            np.save(os.path.join(root, f"{tag}-{name}-rows-{rank}.npy"), graph.matmul(eye).cpu().numpy())
            if name == "euclid64" and backend == "gloo":
                run = sd.fit(graph, K, "hals", seed=0, max_iter=30)
                if rank == 0:
                    np.save(os.path.join(root, f"w{world}-labels.npy"), run.labels)
                info = graph.construction
                assert info["n_neighbors"] == int(np.log2(graph.n)) + 1
                assert (info["feature_bytes_sent"] > 0) == (world > 1)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """The features of every case on disk."""
    root = str(tmp_path_factory.mktemp("knn"))
    for i, (name, (n, dtype, options)) in enumerate(CASES.items()):
        d = options.get("d", 12)
        if name == "ties":
            features = np.random.default_rng(i).integers(0, 3, (n, d)).astype(dtype)
        else:
            features = mixture(n, dtype, seed=i, d=d)
        np.save(os.path.join(root, f"{name}.npy"), features)
    return root


@pytest.fixture(scope="module")
def root(features):
    """The sharded graphs of every case on 2 and 3 spawned gloo ranks, beside the features."""
    root = features
    for world in (2, 3):
        tmp.spawn(_worker, args=(world, root, _free_port()), nprocs=world, join=True)
    return root


def _single(root, name):
    features = np.load(os.path.join(root, f"{name}.npy"))
    options = _options(name)
    options.pop("chunk_size", None)
    dtype = torch.float32 if features.dtype == np.float32 else torch.float64
    return similarity_graph(features, dtype=dtype, neighbors="exact", **options)


def _sharded(root, name, world, tag="w"):
    return np.concatenate([np.load(os.path.join(root, f"{tag}{world}-{name}-rows-{p}.npy")) for p in range(world)])


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_sharded_graph_is_the_single_process_graph(root, name, world):
    expected = _single(root, name).to_dense().numpy()
    got = _sharded(root, name, world)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got != 0, expected != 0)  # the same union kNN pattern
    err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    # only the degree sums are added in another order
    assert err <= (1e-6 if expected.dtype == np.float32 else 1e-13), err
    np.testing.assert_allclose(got, got.T, rtol=0, atol=0)  # exactly symmetric, as in one process


@pytest.mark.parametrize("world", [2, 3])
def test_saved_shards_are_the_graph(root, world):
    """The shard files the ranks wrote, read back in one process (any number of ranks can read them)."""
    saved = sd.ShardedGraph.from_shards(os.path.join(root, f"w{world}-euclid64-saved"))
    got = saved.matmul(torch.eye(saved.n, dtype=saved.dtype)).numpy()
    np.testing.assert_array_equal(got, _sharded(root, "euclid64", world))


def test_one_process_without_a_group(root):
    """World size 1 (no torchrun): the same code, no ring, no exchange."""
    graph = sg.similarity_graph(os.path.join(root, "euclid64.npy"))
    assert graph.comm.world_size == 1 and graph.construction["feature_bytes_sent"] == 0
    expected = _single(root, "euclid64")
    got = graph.matmul(torch.eye(graph.n, dtype=graph.dtype))
    assert torch.equal(got != 0, expected.to_dense() != 0)
    assert float((got - expected.to_dense()).norm() / expected.to_dense().norm()) <= 1e-13


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_one_process_graph_at_any_feature_scale(metric):
    """Features at a scale where squared distances or norms overflow or underflow give the graph of one process
    (which scales them by a power of two first), as at unit scale."""
    X = np.random.default_rng(3).normal(size=(40, 5)).astype(np.float32)
    expected = similarity_graph(X, metric=metric).to_dense()
    for c in (1e20, 1e-25):
        graph = sg.similarity_graph(X * np.float32(c), metric=metric)
        got = graph.matmul(torch.eye(graph.n, dtype=graph.dtype))
        assert torch.equal(got != 0, expected != 0)
        assert float((got - expected).norm() / expected.norm()) <= 1e-5


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_fit_on_the_sharded_graph_gives_the_single_process_labels(root, world):
    from symnmf.fitting import fit_affinity

    single = fit_affinity(_single(root, "euclid64"), K, "hals", random_state=0, max_iter=30, threads=1)
    np.testing.assert_array_equal(np.load(os.path.join(root, f"w{world}-labels.npy")), single.labels)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the NCCL test needs a GPU")
def test_nccl_ring_builds_the_single_process_graph(features):
    """NCCL, one rank per GPU (2 where there are 2 GPUs, else 1): the search on the GPU, the blocks and the
    choices sent by NCCL."""
    world = min(2, torch.cuda.device_count())
    names = ("euclid32", "cosine", "wide32")
    tmp.spawn(_worker, args=(world, features, _free_port(), "nccl", names), nprocs=world, join=True)
    for name in names:
        expected = _single(features, name).to_dense().numpy()
        got = _sharded(features, name, world, tag="nccl")
        np.testing.assert_array_equal(got != 0, expected != 0)
        # the GPU's products and sums round differently from the CPU's
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= (1e-5 if got.dtype == np.float32 else 1e-12)


def test_bad_features(tmp_path):
    bad = mixture(50, "float64")
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        sg.similarity_graph(bad)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sg.similarity_graph(np.ones((1, 3)))
    with pytest.raises(ValueError, match="no columns"):
        sg.similarity_graph(np.ones((5, 0)))
    with pytest.raises(ValueError, match="2-D"):
        sg.similarity_graph(np.ones(5))
    with pytest.raises(ValueError, match="metric"):
        sg.similarity_graph(mixture(20, "float64"), metric="manhattan")
    with pytest.raises(ValueError, match="chunk_size"):
        sg.similarity_graph(mixture(20, "float64"), chunk_size=0)
    text = tmp_path / "features.csv"
    np.savetxt(text, mixture(20, "float64"), delimiter=",")
    with pytest.raises(ValueError, match=r"\.npy"):
        sg.similarity_graph(str(text))
    with pytest.raises(ValueError, match="all zero"):
        sg.similarity_graph(np.zeros((10, 3)), metric="cosine")


def _one_and_two_ranks(tmp_path, args):
    """The command in one process and on 2 ranks: the same labels; both runs' metrics."""
    import json

    stdout = run_one_and_two_ranks(tmp_path, args)
    assert "kNN graph (euclidean) built on 2 ranks" in stdout
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "two" / "labels.txt", dtype=np.int64),
                                  np.loadtxt(tmp_path / "one" / "labels.txt", dtype=np.int64))
    metrics = []
    for name in ("one", "two"):
        with open(tmp_path / name / "metrics.json") as f:
            metrics.append(json.load(f))
    return metrics


def test_symnmf_cluster_of_features_under_torchrun(tmp_path):
    """`symnmf cluster FEATURES.npy --labels L` on 2 ranks builds the graph sharded, gives the one-process
    labels and scores them."""
    path = tmp_path / "features.npy"
    np.save(path, mixture(600, "float64", seed=11))
    np.save(tmp_path / "labels.npy", np.arange(600) % K)
    one, two = _one_and_two_ranks(tmp_path, ["cluster", str(path), "--labels", str(tmp_path / "labels.npy"),
                                             "--solver", "hals", "--seed", "0", "--max-iter", "40"])
    assert two["affinity"] == "features" and two["n_clusters"] == K  # -k from the labels' classes
    assert two["acc"] == one["acc"] and two["nmi_max"] == one["nmi_max"]
    assert two["modularity"] == pytest.approx(one["modularity"], rel=1e-10) and 0 < one["modularity"] < 1


def test_saved_graph_is_clustered_again_without_its_features(tmp_path, capsys):
    from symnmf.cli import main

    np.save(tmp_path / "features.npy", mixture(300, "float64", seed=5))
    common = ["-k", str(K), "--solver", "hals", "--seed", "0", "--max-iter", "40"]
    assert main(["cluster", str(tmp_path / "features.npy"), *common, "--save-graph", str(tmp_path / "graph"),
                 "--out", str(tmp_path / "a")]) == 0
    assert main(["cluster", str(tmp_path / "graph"), *common, "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "b" / "labels.txt"), np.loadtxt(tmp_path / "a" / "labels.txt"))
    assert main(["cluster", str(tmp_path / "graph"), *common, "--save-graph", str(tmp_path / "again")]) == 2
    assert "already a graph" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["cluster", str(tmp_path / "empty"), *common]) == 2
    assert "shards.json" in capsys.readouterr().err


def test_symnmf_cluster_of_a_dataset_under_torchrun(tmp_path):
    pytest.importorskip("sklearn")
    one, two = _one_and_two_ranks(tmp_path, ["cluster", "--dataset", "digits", "--solver", "hals", "--seed", "0",
                                             "--max-iter", "30"])
    assert two["acc"] == one["acc"] > 0.5


def test_features_that_are_not_real_or_too_large_for_the_dtype_are_refused():
    """The sharded graph cast complex features to real with only a warning (one process refuses them); a finite
    1e300 cast to float32 was reported as NaN or infinite data, in both paths."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="real numbers"):
        sg.similarity_graph(rng.normal(size=(20, 3)) + 1j)
    big = rng.normal(size=(20, 3))
    big[0, 0] = 1e300
    with pytest.raises(ValueError, match="too large for torch.float32"):
        sg.similarity_graph(big, dtype=torch.float32)
    with pytest.raises(ValueError, match="too large for torch.float32"):
        similarity_graph(big, dtype=torch.float32)
    big[1, 1] = np.nan  # NaN is named first, as before
    with pytest.raises(ValueError, match="NaN or infinite"):
        sg.similarity_graph(big, dtype=torch.float32)
