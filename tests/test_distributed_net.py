"""SymNMF-Net row-sharded (symnmf.distributed_net) on 1, 2 and 3 gloo ranks against `symnmf.net.fit_net`.

The ranks are spawned once (torch.multiprocessing, torchrun's variables, one thread each, the
torch path of the ops) as in tests/test_distributed.py, whose test graph is used here at 600
nodes. Every case trains for a few dozen Adam steps so the comparison is of the whole recipe
(start, Algorithm 1, training, selection, polish) and stays fast.
"""
import contextlib
import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.multiprocessing as tmp

from symnmf import distributed as sd
from symnmf.distributed_net import init_restarts, net
from test_distributed import _free_port, as_torchrun_rank, clustered_graph, run_cluster_commands

K = 4
# (recipe, overrides): the library's recipe shortened (3 restarts polished and kept by modularity, a HALS
# start; without the polish, the trained labels scored), and the paper's (one random start, lam = ||X||_F,
# absolute lr, no polish).
CASES = {
    "default": ("default", {"epochs": 25, "n_restarts": 3, "init": "hals", "init_iter": 5, "polish_iter": 10}),
    "modularity": ("default", {"epochs": 20, "n_restarts": 3, "polish_iter": 0}),
    "paper": ("paper", {"epochs": 15, "n_layers": 4}),
    "loss": ("default", {"epochs": 20, "n_restarts": 2, "init_iter": 0, "polish_iter": 0, "select": "loss",
                         "loss_blocks": "last", "mu": 0.01, "beta_final": 0.5, "lr_schedule": "cosine"}),
}
CLUSTER_EPOCHS, CLUSTER_OPTIONS = 20, {"n_restarts": 2, "init_iter": 3, "polish_iter": 5}


@contextlib.contextmanager
def _torch_path():
    """The ops' torch path in this process, as the spawned ranks run them (TRITON_INTERPRET=0)."""
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


def _single(X, case, dtype=torch.float64):
    """fit_net in one process."""
    from symnmf.net import fit_net

    recipe, overrides = CASES[case]
    with _torch_path():
        return fit_net(X.to(dtype), K, recipe=recipe, random_state=0, **overrides)


def _run_cases(graph, root, tag, cases):
    me = graph.comm.rank
    for case in cases:
        recipe, overrides = CASES[case]
        result = net(graph, K, seed=0, recipe=recipe, **overrides)
        np.save(os.path.join(root, f"{tag}-{case}-U-{me}.npy"), result.U.cpu().numpy())
        params = {key: result.params[key] for key in ("index", "relative_error", "bytes_sent_per_iteration",
                                                       "exchanges_per_iteration", "allreduce_bytes_per_iteration",
                                                       "bytes_per_exchange", "halo_rows")}
        with open(os.path.join(root, f"{tag}-{case}-rank-{me}.json"), "w") as f:
            json.dump({"history": result.history, "n_iter": result.n_iter, "params": params,
                       "rows_sent": graph.plan.rows_sent}, f)


def _refuse_on_rank_one(graph, root):
    """Training whose step cannot fit in rank 1's memory (its MemAvailable reported as 1 kB): every rank refuses,
    with the same message."""
    import symnmf.net as net_module

    real = net_module._host_memory
    if graph.comm.rank == 1:
        net_module._host_memory = lambda: (1000, 10**9)
    try:
        net(graph, K, seed=0, recipe="paper", epochs=2)
        message = "trained"
    except torch.OutOfMemoryError as err:
        message = str(err)
    finally:
        net_module._host_memory = real
    with open(os.path.join(root, f"refused-{graph.comm.rank}.txt"), "w") as f:
        f.write(message)


def _worker(rank, world, root, port, device):
    as_torchrun_rank(rank, world, port)
    import torch.distributed as dist

    assert sd.init_from_env("nccl" if device == "cuda" else "gloo").type == device
    try:
        path = os.path.join(root, "graph.npz")
        _run_cases(sd.ShardedGraph.from_npz(path), root, f"w{world}", ("default", "modularity", "paper", "loss"))
        if world > 2:
            pair = dist.new_group([0, 1])
            if rank < 2:
                _run_cases(sd.ShardedGraph.from_npz(path, group=pair), root, "w2", ("default",))
        if device == "cpu":
            g32 = sd.ShardedGraph.from_npz(path, dtype=torch.float32)
            _run_cases(g32, root, f"w{world}-f32", ("paper",))
            # The restarts' starts, against the single-process draw (checked in the test).
            U0 = init_restarts(g32, K, seed=3, restarts=3, chunk_rows=7)
            np.save(os.path.join(root, f"start-{rank}.npy"), U0.cpu().numpy())
            # Shards renumbered by RCM: each rank's starts are its nodes' rows; fit maps the result back.
            recipe, overrides = CASES["paper"]
            run = sd.fit(sd.ShardedGraph.from_shards(os.path.join(root, "shards-rcm")), K, "net", seed=0,
                         recipe=recipe, **overrides)
            if rank == 0:
                np.save(os.path.join(root, "rcm-U.npy"), run.U.cpu().numpy())
            # cluster() with the net, rank 0 writes the outputs.
            sd.cluster(path, K, "net", seed=0, max_iter=CLUSTER_EPOCHS, device="cpu", out=os.path.join(root, "out"),
                       **CLUSTER_OPTIONS)
            _refuse_on_rank_one(sd.ShardedGraph.from_npz(path), root)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(root, world, A, device="cpu"):
    sp.save_npz(os.path.join(root, "graph.npz"), A)
    sd.save_shards(A, os.path.join(root, "shards-rcm"), 2, order="rcm")
    # Forked ranks start at once, where spawned ones import torch and the library again (10 s each on a
    # loaded 2-core machine); each sets one thread before any torch work (as DataLoader workers do) and,
    # on the CPU, never touches CUDA. CUDA ranks must be spawned.
    tmp.start_processes(_worker, args=(world, root, _free_port(), device), nprocs=world, join=True,
                        start_method="fork" if device == "cpu" else "spawn")


def _load(root, tag, case, world):
    ranks = []
    for p in range(world):
        with open(os.path.join(root, f"{tag}-{case}-rank-{p}.json")) as f:
            ranks.append(json.load(f))
    U = np.concatenate([np.load(os.path.join(root, f"{tag}-{case}-U-{p}.npy")) for p in range(world)])
    return ranks, U


def _rel(a, b):
    """Largest relative difference; NaN anywhere makes it infinite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return np.inf
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture(scope="module")
def graph():
    A, _ = clustered_graph(n=600, k=K)
    from symnmf.fitting import build_affinity

    return A, build_affinity(A, "precomputed")


@pytest.fixture(scope="module")
def single(graph):
    _, X = graph
    return {case: _single(X, case) for case in CASES}


@pytest.fixture(scope="module")
def spawned(graph, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("net-ranks"))
    _spawn(root, 3, graph[0])
    return root


def _check_case(ranks, U, ref, rtol):
    history = ranks[0]["history"]
    n = min(len(history["loss"]), len(ref.net.history_["loss"]))
    assert _rel(history["loss"][:n], ref.net.history_["loss"][:n]) < rtol
    assert _rel(history["relative_error"][:n], ref.net.history_["relative_error"][:n]) < rtol
    assert ranks[0]["n_iter"] == ref.n_iter
    assert ranks[0]["params"]["index"] == ref.index
    assert _rel(U, ref.U.numpy()) < rtol * 100
    assert np.array_equal(U.argmax(1), ref.labels.numpy())
    assert ranks[0]["params"]["relative_error"] == pytest.approx(ref.relative_error, rel=rtol * 100)
    for rk in ranks:  # every rank saw the same losses and took the same decisions
        assert rk["history"]["loss"] == history["loss"]
        assert rk["params"]["index"] == ranks[0]["params"]["index"]


@pytest.mark.parametrize("world, case", [(3, "default"), (2, "default"), (3, "modularity"), (3, "paper"), (3, "loss")])
def test_sharded_net_matches_one_process(spawned, single, world, case):
    ranks, U = _load(spawned, f"w{world}", case, world)
    _check_case(ranks, U, single[case], rtol=1e-10)


def test_sharded_net_float32(spawned, graph):
    ranks, U = _load(spawned, "w3-f32", "paper", 3)
    ref = _single(graph[1], "paper", torch.float32)
    history = ranks[0]["history"]
    assert ranks[0]["n_iter"] == ref.n_iter
    assert _rel(history["loss"], ref.net.history_["loss"]) < 1e-4
    assert _rel(U, ref.U.numpy()) < 1e-3
    assert np.mean(U.argmax(1) == ref.labels.cpu().numpy()) > 0.99


def test_training_that_cannot_fit_on_one_rank_is_refused_by_all(spawned):
    messages = []
    for p in range(3):
        with open(os.path.join(spawned, f"refused-{p}.txt")) as f:
            messages.append(f.read())
    assert messages[0] == messages[1] == messages[2], messages
    assert "more on rank 1, where 0.0 GB of 1.0 GB are free" in messages[0] and "n_restarts=1" in messages[0]


def test_traffic_of_a_training_step(spawned, single):
    """Per Adam step: L products X U_i forward and L backward through the halo, each of R r columns."""
    recipe, overrides = CASES["default"]
    from symnmf.net import RECIPES

    L, R = RECIPES[recipe]["n_layers"], overrides["n_restarts"]
    ranks, _ = _load(spawned, "w3", "default", 3)
    for rk in ranks:
        p = rk["params"]
        assert p["exchanges_per_iteration"] == 2 * L
        assert p["bytes_per_exchange"] == rk["rows_sent"] * R * K * 8
        assert p["bytes_sent_per_iteration"] == 2 * L * p["bytes_per_exchange"]
        # the Grams (R r^2, forward and backward) and one packed all_reduce of 3 R numbers
        assert p["allreduce_bytes_per_iteration"] == 2 * L * R * K * K * 8 + 3 * R * 8
    assert sum(rk["params"]["bytes_per_exchange"] for rk in ranks) > 0


def test_renumbered_shards_map_back(spawned, single):
    """RCM-renumbered shards: the factor comes back in the graph's own node order, that of one process."""
    ref = single["paper"]
    U = np.load(os.path.join(spawned, "rcm-U.npy"))
    assert _rel(U, ref.U.numpy()) < 1e-8
    assert np.array_equal(U.argmax(1), ref.labels.numpy())


def test_starts_of_the_restarts(spawned, graph):
    from symnmf.solvers.base import init_factor, make_generator

    _, X = graph
    ref = init_factor(X.to(torch.float32), K, make_generator(3), batch_shape=(3,))
    U0 = np.concatenate([np.load(os.path.join(spawned, f"start-{p}.npy")) for p in range(3)], axis=1)
    assert U0.shape == tuple(ref.shape)
    assert _rel(U0, ref.numpy()) < 1e-6


def test_cluster_with_the_net(spawned, graph):
    from symnmf.fitting import fit_affinity

    _, X = graph
    with _torch_path():
        ref = fit_affinity(X, K, "net", random_state=0, max_iter=CLUSTER_EPOCHS, net_options=CLUSTER_OPTIONS,
                           threads=1)
    out = os.path.join(spawned, "out")
    labels = np.loadtxt(os.path.join(out, "labels.txt"), dtype=np.int64)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert np.array_equal(labels, ref.labels)
    assert metrics["solver"] == "net" and metrics["world_size"] == 3
    assert metrics["iterations"] == ref.n_iter
    assert metrics["rel_error"] == pytest.approx(ref.rel_error, rel=1e-8)
    assert _rel(np.load(os.path.join(out, "embedding.npy")), ref.U.numpy()) < 1e-8


def test_one_process(graph, single, monkeypatch):
    """World size 1 (no torch.distributed): the same code on one shard."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    A, _ = graph
    g = sd.ShardedGraph.from_matrix(A)
    recipe, overrides = CASES["default"]
    result = net(g, K, seed=0, recipe=recipe, **overrides)
    ref = single["default"]
    assert result.n_iter == ref.n_iter and result.params["index"] == ref.index
    assert _rel(result.history["loss"], ref.net.history_["loss"]) < 1e-12
    assert _rel(result.U.numpy(), ref.U.numpy()) < 1e-10


def test_layer_terms_gradient():
    """The hand-written backward of the layer's two sums, against torch's numerical gradient."""
    from symnmf.distributed_net import _LayerTerms

    gen = torch.Generator().manual_seed(0)
    U, S, P = (torch.rand((2, 7, 3), generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    lam = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: _LayerTerms.apply(*a), (U, S, P, lam))
    assert torch.autograd.gradcheck(lambda u, s: _LayerTerms.apply(u, s, None, lam)[0], (U, S))


def test_refusals(graph):
    A, _ = graph
    g = sd.ShardedGraph.from_matrix(A[:100, :100])
    with pytest.raises(ValueError, match="init"):
        net(g, 3, init="spectral")
    with pytest.raises(ValueError, match="unknown recipe settings"):
        net(g, 3, layers=3)
    with pytest.raises(ValueError, match="recipe"):
        net(g, 3, recipe="fast")
    with pytest.raises(ValueError, match="k must be"):
        net(g, 0)
    with pytest.raises(ValueError, match="select"):
        net(g, 3, select="best")
    with pytest.raises(ValueError, match="n_layers"):
        net(g, 3, n_layers=0)
    with pytest.raises(ValueError, match="U0"):
        net(g, 3, U0=torch.ones(99, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="U0"):
        net(g, 3, U0=-torch.ones(100, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="restarts"):
        init_restarts(g, 3, restarts=0)
    # a graph too far from unit scale for its dtype: refused before training, as fit_net(scale=1.0) refuses it
    # (it trained every epoch and then blamed the learning rate)
    far = sd.ShardedGraph.from_matrix((A[:100, :100] * 1e15).astype(np.float32))
    with pytest.raises(ValueError, match="too far from unit scale"):
        net(far, 3, epochs=5)


@pytest.mark.slow
def test_symnmf_cluster_net_under_torchrun(tmp_path, graph):
    """`torchrun -m symnmf cluster --solver net` on 2 ranks against the same command in one process (the
    library's recipe, 20 Adam steps: --epochs is the net's step limit under torchrun as in one process)."""
    A, _ = graph
    run_cluster_commands(tmp_path, A, ["-k", str(K), "--solver", "net", "--seed", "0", "--epochs", "20"])
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "two" / "labels.txt", dtype=np.int64),
                                  np.loadtxt(tmp_path / "one" / "labels.txt", dtype=np.int64))
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two")]
    assert metrics[1]["iterations"] == metrics[0]["iterations"] == 20
    assert metrics[1]["rel_error"] == pytest.approx(metrics[0]["rel_error"], rel=1e-10)
    assert metrics[1]["modularity"] == pytest.approx(metrics[0]["modularity"], rel=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the NCCL test needs a GPU")
def test_nccl_matches_one_process(tmp_path, graph, single):
    """NCCL, one rank per GPU (2 where there are 2 GPUs, else 1: the collectives without the halo)."""
    A, _ = graph
    world = min(2, torch.cuda.device_count())
    root = str(tmp_path)
    _spawn(root, world, A, device="cuda")
    for case in ("default", "paper"):
        ranks, U = _load(root, f"w{world}", case, world)
        # The GPU runs other kernels than the CPU reference (cuBLAS Grams, the CUDA SpMM): looser.
        ref = single[case]
        assert ranks[0]["n_iter"] == ref.n_iter
        assert _rel(ranks[0]["history"]["loss"], ref.net.history_["loss"]) < 1e-8
        assert np.mean(U.argmax(1) == ref.labels.cpu().numpy()) > 0.99
