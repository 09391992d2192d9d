"""symnmf.distributed: row-sharded SymHALS, PGD, SymANLS, SymNewton and ADMM on 1, 2 and 3 gloo ranks against one
process.

The ranks are spawned once inside pytest (torch.multiprocessing), with torchrun's variables
(WORLD_SIZE, RANK, MASTER_ADDR, a free MASTER_PORT) so that `init_from_env` forms the group as
under torchrun; each runs torch on one thread and the torch path of the ops (TRITON_INTERPRET=0:
the kernels themselves are tested elsewhere; here the sharding, the halo and the reductions are).
The GPU case runs the same comparison with NCCL on one GPU per rank (marked `gpu`).
"""
import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.multiprocessing as tmp

from symnmf import distributed as sd

SOLVERS = ("hals", "pgd", "anls", "newton", "admm")
K = 6
ITERS = 20


def clustered_graph(n=2400, k=K, deg=8, cross=0.1, seed=0):
    """k clusters of consecutive nodes; each node has deg random neighbours in its cluster and, with
    probability `cross`, one anywhere; symmetrised and normalised D^-1/2 A D^-1/2."""
    rng = np.random.default_rng(seed)
    size = n // k
    cluster = np.minimum(np.arange(n) // size, k - 1)
    start = cluster * size
    count = np.where(cluster == k - 1, n - start, size)
    rows = np.repeat(np.arange(n), deg)
    cols = start[rows] + (rng.random(rows.size) * count[rows]).astype(np.int64)
    extra = np.nonzero(rng.random(n) < cross)[0]
    rows = np.concatenate([rows, extra])
    cols = np.concatenate([cols, rng.integers(0, n, extra.size)])
    keep = rows != cols
    A = sp.coo_matrix((rng.uniform(0.5, 1.0, keep.sum()), (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    A = (A + A.T).tocsr()
    d = 1 / np.sqrt(np.asarray(A.sum(1)).ravel())
    A = sp.csr_matrix(sp.diags(d) @ A @ sp.diags(d))
    A.sort_indices()
    return A, cluster


def _fit_all(graph, root, tag, solvers, iters):
    """Fit every solver on a sharded graph; rank 0 of the group saves the labels, every rank its rows of U."""
    me = graph.comm.rank
    out = {"halo_rows": graph.plan.halo_rows, "rows_sent": graph.plan.rows_sent, "rows": [graph.lo, graph.hi]}
    for solver in solvers:
        run = sd.fit(graph, K, solver, seed=0, max_iter=iters)
        out[solver] = {
            "objective": run.objective, "n_iter": run.n_iter, "traffic": run.traffic,
            "history": run.history["objective"],
        }
        np.save(os.path.join(root, f"{tag}-{solver}-U-{me}.npy"), run.U_local.cpu().numpy())
        if me == 0:
            np.save(os.path.join(root, f"{tag}-{solver}-labels.npy"), run.labels)
    with open(os.path.join(root, f"{tag}-rank-{me}.json"), "w") as f:
        json.dump(out, f)


RESTART_SEEDS = (1, 2, 3)


def restart_starts(starts):
    """The starts of the side-by-side SymHALS test from Kuang's starts of RESTART_SEEDS (R, n, r): the last
    one scaled down, so that the restarts stop at different iterations."""
    return torch.cat([starts[:-1], 0.3 * starts[-1:]])


def _restarts(graph, root, tag):
    """SymHALS from 3 starts side by side (sd.hals_restarts) and one after another (sd.hals): each rank saves
    its rows of both and the iterations."""
    starts = restart_starts(torch.stack([sd.init_factor(graph, K, seed=s) for s in RESTART_SEEDS]))
    side = sd.hals_restarts(graph, starts, max_iter=80, tol=1e-4)
    alone = [sd.hals(graph, U0, max_iter=80, tol=1e-4) for U0 in starts]
    me = graph.comm.rank
    np.save(os.path.join(root, f"{tag}-restarts-U-{me}.npy"), torch.stack([run.U for run in side]).cpu().numpy())
    np.save(os.path.join(root, f"{tag}-alone-U-{me}.npy"), torch.stack([run.U for run in alone]).cpu().numpy())
    with open(os.path.join(root, f"{tag}-restarts-rank-{me}.json"), "w") as f:
        json.dump({"side": [run.n_iter for run in side], "alone": [run.n_iter for run in alone],
                   "side_exchanges": side[0].params["exchanges"],
                   "alone_exchanges": sum(run.params["exchanges"] for run in alone)}, f)


def bipartite_csr():
    """tests/test_solvers.py's bipartite graph, where the two-factor form converges with W and V apart."""
    from test_solvers import bipartite_graph

    return sp.csr_matrix(bipartite_graph().numpy())


def _apart(root, tag):
    """SymHALS and SymANLS on the bipartite graph, and SymHALS side by side from two starts: every rank saves
    its rows and the iterations of the symmetric restart."""
    graph = sd.ShardedGraph.from_matrix(bipartite_csr())
    runs = {s: sd.SOLVERS[s](graph, sd.init_factor(graph, 4, seed=0), max_iter=2000) for s in ("hals", "anls")}
    starts = torch.stack([sd.init_factor(graph, 4, seed=s) for s in (0, 1)])
    for k, run in enumerate(sd.hals_restarts(graph, starts, max_iter=2000)):
        runs[f"restart{k}"] = run
    me = graph.comm.rank
    np.savez(os.path.join(root, f"{tag}-apart-U-{me}.npz"), **{k: run.U.cpu().numpy() for k, run in runs.items()})
    with open(os.path.join(root, f"{tag}-apart-rank-{me}.json"), "w") as f:
        json.dump({k: [run.n_iter, run.params["symmetric_restart"]] for k, run in runs.items()}, f)


def as_torchrun_rank(rank, world, port):
    """This spawned process as torchrun starts a rank: its variables, one thread, the torch path of the ops
    (TRITON_INTERPRET=0)."""
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _worker(rank, world, root, port, solvers, iters, device):
    """One rank as torchrun starts it: the group from the environment (`sd.init_from_env`); then the
    fits on all `world` ranks, the same on a subgroup of the first two, and `sd.cluster` with outputs."""
    as_torchrun_rank(rank, world, port)
    import torch.distributed as dist

    device_used = sd.init_from_env("nccl" if device == "cuda" else "gloo")
    assert device_used.type == device
    try:
        path = os.path.join(root, "graph.npz")
        graph = sd.ShardedGraph.from_npz(path)
        # The shard files (4 of them, for any number of ranks) give this rank the same rows.
        other = sd.ShardedGraph.from_shards(os.path.join(root, "shards"))
        assert torch.equal(other.local.col_indices, graph.local.col_indices)
        assert torch.equal(other.local.values, graph.local.values)
        _fit_all(graph, root, f"w{world}", solvers, iters)
        _restarts(graph, root, f"w{world}")
        _apart(root, f"w{world}")
        # Blocks of equal stored entries: the same rows from the .npz and from the shard files.
        by_nnz = sd.ShardedGraph.from_npz(path, balance="nnz")
        other = sd.ShardedGraph.from_shards(os.path.join(root, "shards"), balance="nnz")
        assert by_nnz.offsets == other.offsets
        assert torch.equal(other.local.values, by_nnz.local.values)
        run = sd.fit(by_nnz, K, solvers[0], seed=0, max_iter=iters)
        if rank == 0:
            np.save(os.path.join(root, "nnz-labels.npy"), run.labels)
        with open(os.path.join(root, f"nnz-rank-{rank}.json"), "w") as f:
            json.dump({"offsets": by_nnz.offsets, "nnz": by_nnz.nnz_local, "objective": run.objective}, f)
        # Shards renumbered by reverse Cuthill-McKee: the same start and labels in the graph's own order.
        rcm = sd.ShardedGraph.from_shards(os.path.join(root, "shards-rcm"))
        run = sd.fit(rcm, K, solvers[0], seed=0, max_iter=iters)
        if rank == 0:
            np.save(os.path.join(root, "rcm-labels.npy"), run.labels)
            np.save(os.path.join(root, "rcm-U.npy"), run.U.cpu().numpy())
        with open(os.path.join(root, f"rcm-rank-{rank}.json"), "w") as f:
            json.dump({"halo_rows": rcm.plan.halo_rows, "objective": run.objective}, f)
        if world > 2:
            pair = dist.new_group([0, 1])
            if rank < 2:
                _fit_all(sd.ShardedGraph.from_npz(path, group=pair), root, "w2", solvers, iters)
        labels = sd.cluster(path, K, solvers[0], seed=0, max_iter=iters, out=os.path.join(root, "out"))
        assert (labels is None) == (rank != 0)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(root, world, A, solvers=SOLVERS, iters=ITERS, device="cpu"):
    sp.save_npz(os.path.join(root, "graph.npz"), A)  # compressed: the reader streams it
    sd.save_shards(A, os.path.join(root, "shards"), 4)
    sd.save_shards(A, os.path.join(root, "shards-rcm"), 2, order="rcm")
    tmp.spawn(_worker, args=(world, root, _free_port(), solvers, iters, device), nprocs=world, join=True)


def _ranks(root, tag, world):
    out = []
    for p in range(world):
        with open(os.path.join(root, f"{tag}-rank-{p}.json")) as f:
            out.append(json.load(f))
    return out


@pytest.fixture(scope="module")
def graph():
    return clustered_graph()


@pytest.fixture(scope="module")
def single(graph):
    """One-process fits through the library's single fit path (symnmf.fitting), on the torch path."""
    from symnmf.fitting import build_affinity, fit_affinity

    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        A, _ = graph
        X = build_affinity(A, "precomputed")
        return {s: fit_affinity(X, K, s, random_state=0, max_iter=ITERS, threads=1) for s in SOLVERS}
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


def test_read_npz_rows(tmp_path):
    A, _ = clustered_graph(n=500)
    for compressed in (True, False):
        path = tmp_path / f"g{int(compressed)}.npz"
        sp.save_npz(path, A, compressed=compressed)
        for a, b in ((0, 500), (0, 1), (137, 333), (499, 500), (200, 200)):
            indptr, indices, data, shape = sd.read_npz_rows(path, a, b)
            block = A[a:b]
            assert shape == (500, 500)
            assert np.array_equal(indptr, block.indptr) and np.array_equal(indices, block.indices)
            assert np.array_equal(data, block.data)
    sp.save_npz(tmp_path / "coo.npz", A.tocoo())
    with pytest.raises(ValueError, match="CSR"):
        sd.read_npz_rows(tmp_path / "coo.npz", 0, 10)


def test_command_line_one_process(tmp_path, graph, single, monkeypatch, capsys):
    """`python -m symnmf.distributed` without torchrun: --save-shards, then a fit of the shards."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    A, _ = graph
    sp.save_npz(tmp_path / "g.npz", A)
    shards = str(tmp_path / "shards")
    assert sd.main([str(tmp_path / "g.npz"), "-k", "1", "--save-shards", shards, "--parts", "3", "--order", "rcm"]) == 0
    out = str(tmp_path / "out")
    assert sd.main([shards, "-k", str(K), "--solver", "hals", "--max-iter", str(ITERS), "--out", out]) == 0
    assert "halo: 0 rows" in capsys.readouterr().out
    assert np.array_equal(np.loadtxt(os.path.join(out, "labels.txt"), dtype=np.int64), single["hals"].labels)


def test_refusals(tmp_path, graph):
    A, _ = graph
    g = sd.ShardedGraph.from_matrix(A[:300, :300])
    with pytest.raises(ValueError, match="sharded solvers"):
        sd.fit(g, 3, "lbfgs")
    with pytest.raises(ValueError, match="exact.*cg"):
        sd.fit(g, 3, "newton", method="exact")
    with pytest.raises(ValueError, match="no penalty"):
        sd.fit(g, 3, "newton", lam=1.0)
    with pytest.raises(ValueError, match="rho"):
        sd.fit(g, 3, "admm", lam=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        sd.fit(g, 0, "hals")
    with pytest.raises(ValueError, match="negative"):
        sd.ShardedGraph.from_matrix(-A[:300, :300])
    with pytest.raises(ValueError, match="square"):
        sd.ShardedGraph.from_matrix(A[:300, :200])
    with pytest.raises(ValueError, match="ranks"):
        sd.row_offsets(2, 3)


def test_symmetry_and_scale_refusals(graph):
    """A non-symmetric X is refused with the single-process message; the randomised check of the sharded readers
    passes symmetric graphs, float32 too; a power iteration that finds ||X||_2 = 0 is a ValueError in fit."""
    A, _ = graph
    upper = sp.triu(A, 1).tocsr()
    with pytest.raises(ValueError, match=r"not symmetric \(max \|X - X\^T\|"):
        sd.ShardedGraph.from_matrix(upper)
    for X in (A, A.astype(np.float32), A * 1e-30, A * 1e30):
        sd.ShardedGraph(X.indptr, X.indices, X.data, X.shape[0]).check_symmetric()
    bare = sd.ShardedGraph(upper.indptr, upper.indices, upper.data, upper.shape[0])  # no symmetry check here
    with pytest.raises(ValueError, match="not symmetric.*symmetrise it"):
        bare.check_symmetric()
    nilpotent = sp.csr_matrix(np.triu(np.ones((4, 4)), 1))  # its power iteration reaches the zero vector
    bare = sd.ShardedGraph(nilpotent.indptr, nilpotent.indices, nilpotent.data, 4)
    with pytest.raises(ValueError, match=r"\|\|X\|\|_2 = 0"):
        sd.fit(bare, 2, "hals")
    with pytest.raises(ValueError, match="all zero"):
        sd.ShardedGraph.from_matrix(np.zeros((4, 4)))


def _refusals_worker(rank, world, root, port):
    """Each case as `sd` is called under torchrun; every rank records the ValueError it raised (None: none)."""
    import datetime

    as_torchrun_rank(rank, world, port)
    import torch.distributed as dist

    # A rank left waiting by another's lone failure ends the run here instead of hanging it.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    cases = {
        "columns": lambda: sd.ShardedGraph.from_shards(os.path.join(root, "columns")),
        "missing": lambda: sd.ShardedGraph.from_shards(os.path.join(root, "missing")),
        "missing-nnz": lambda: sd.ShardedGraph.from_shards(os.path.join(root, "missing"), balance="nnz"),
        "upper": lambda: sd.ShardedGraph.from_npz(os.path.join(root, "upper.npz")),
        "upper-shards": lambda: sd.ShardedGraph.from_shards(os.path.join(root, "upper")),
        "float32": lambda: sd.ShardedGraph.from_npz(os.path.join(root, "float32.npz")),
        "out": lambda: sd.cluster(os.path.join(root, "float32.npz"), K, max_iter=5, out=os.path.join(root, "a-file")),
    }
    errors = {}
    try:
        for name, action in cases.items():
            try:
                action()
                errors[name] = None
            except ValueError as err:
                errors[name] = str(err)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    with open(os.path.join(root, f"refusals-{rank}.json"), "w") as f:
        json.dump(errors, f)


def test_a_bad_input_raises_the_same_error_on_every_rank(tmp_path):
    """On 2 ranks: a part file that one rank alone reads (wrong columns, or missing), a graph that is not
    symmetric, and an `out` that is a file raise the same ValueError on both ranks, before any fit."""
    A, _ = clustered_graph(n=600)
    root = str(tmp_path)
    for name in ("columns", "missing"):  # 4 parts of 150 rows: rank 0 reads parts 0 and 1, rank 1 parts 2 and 3
        sd.save_shards(A, os.path.join(root, name), 4)
    sp.save_npz(os.path.join(root, "columns", "part-00003.npz"), A[450:, :599], compressed=False)
    os.remove(os.path.join(root, "missing", "part-00000.npz"))
    upper = sp.triu(A, 1).tocsr()
    sp.save_npz(os.path.join(root, "upper.npz"), upper)
    sd.save_shards(upper, os.path.join(root, "upper"), 2)
    sp.save_npz(os.path.join(root, "float32.npz"), A.astype(np.float32))
    open(os.path.join(root, "a-file"), "w").close()
    tmp.spawn(_refusals_worker, args=(2, root, _free_port()), nprocs=2, join=True)
    ranks = []
    for p in range(2):
        with open(os.path.join(root, f"refusals-{p}.json")) as f:
            ranks.append(json.load(f))
    assert ranks[0] == ranks[1]  # the same outcome, word for word, on both ranks
    errors = ranks[0]
    assert "columns: rank 1 could not read its rows 300:600: part-00003.npz has 599 columns" in errors["columns"]
    assert "rank 0 could not read its rows 0:300: " in errors["missing"] and "part-00000.npz" in errors["missing"]
    assert "could not read the row pointers" in errors["missing-nnz"]
    assert errors["upper"].startswith("upper.npz is not symmetric (|<u, X v> - <X u, v>| = ")
    assert errors["upper-shards"].startswith("upper is not symmetric")  # the shards folder's name
    assert errors["float32"] is None
    assert errors["out"] == f"out {os.path.join(root, 'a-file')!r} is an existing file; give a folder for the results"


def test_one_process_is_the_single_process_solver(graph, single, monkeypatch):
    """World size 1 (no torch.distributed) runs the sharded code: bit-for-bit the single-process result, but for
    ADMM, whose default penalty comes from a power iteration that sums its squares in float64 when sharded."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    A, _ = graph
    g = sd.ShardedGraph.from_matrix(A)
    assert g.plan.halo_rows == 0 and g.plan.rows_sent == 0
    for solver in SOLVERS:
        run = sd.fit(g, K, solver, seed=0, max_iter=ITERS)
        assert np.array_equal(run.labels, single[solver].labels)
        if solver == "admm":
            assert torch.allclose(run.U, single[solver].U, rtol=1e-12, atol=1e-15)
        else:
            assert torch.equal(run.U, single[solver].U), solver
        assert run.n_iter == single[solver].n_iter


def test_one_process_refuses_what_the_single_process_path_refuses(tmp_path, monkeypatch):
    """In one process (no group), the values one process refuses up front are refused up front, by name and as
    given: max_iter, lam (before the scale divides it), the net's lr and tol, dtype, threads, a matrix of another
    dimension, an `out` whose result name is a folder. cluster restores torch's thread count."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    A, _ = clustered_graph(n=120, k=3)
    G = sd.ShardedGraph.from_matrix(A * 3.0)  # ||X||_2 = 3: the fit runs on X / 3
    for bad in (True, 2.5, "5", -1):
        with pytest.raises(ValueError, match="max_iter"):
            sd.fit(G, 3, "hals", max_iter=bad)
    with pytest.raises(ValueError, match=r"got -1\.0"):
        sd.fit(G, 3, "hals", lam=-1.0, max_iter=2)
    for name, bad in (("lr", True), ("lr", float("inf")), ("tol", float("inf"))):
        with pytest.raises(ValueError, match=name):
            sd.fit(G, 3, "net", epochs=2, n_restarts=1, polish_iter=0, **{name: bad})
    with pytest.raises(ValueError, match="dtype"):
        sd.ShardedGraph.from_matrix(A, dtype=torch.int64)
    assert sd.ShardedGraph.from_matrix(A, dtype="float32").local.values.dtype == torch.float32
    for X in (np.ones(5), np.ones((2, 5, 5))):
        with pytest.raises(ValueError, match=r"got shape \(" + str(X.shape[0])):
            sd.ShardedGraph.from_matrix(X)
    for bad in (True, -1, 1.5):
        with pytest.raises(ValueError, match="threads"):
            sd.cluster(A, 3, "hals", max_iter=2, threads=bad)
    before = torch.get_num_threads()
    sd.cluster(A, 3, "hals", max_iter=2, threads=1)
    assert torch.get_num_threads() == before
    (tmp_path / "out" / "labels.txt").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a file"):
        sd.cluster(A, 3, "hals", max_iter=2, out=str(tmp_path / "out"))


def test_int64_column_indices(graph, monkeypatch):
    """A local block of 2^31 columns or more numbers them in int64 (a graph of billions of nodes); forced here on a
    small graph, the fit is bit for bit the int32 one."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    A, _ = graph
    narrow = sd.ShardedGraph.from_matrix(A)
    monkeypatch.setattr(sd, "INT32_COLUMNS", 0)
    wide = sd.ShardedGraph.from_matrix(A)
    assert narrow.local.col_indices.dtype == torch.int32 and wide.local.col_indices.dtype == torch.int64
    for solver in ("hals", "newton"):
        a, b = (sd.fit(g, K, solver, seed=0, max_iter=5) for g in (narrow, wide))
        assert torch.equal(a.U, b.U) and np.array_equal(a.labels, b.labels), solver


def test_sharded_fit_rescales_as_the_single_process_fit(graph, single, monkeypatch):
    """A similarity in other units (37 X) is fitted as X / its largest eigenvalue on both paths, and its factor
    scaled back: the labels of X, and U times sqrt(37)."""
    from symnmf.fitting import build_affinity, fit_affinity

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    A, _ = graph
    g = sd.ShardedGraph.from_matrix(A * 37.0)
    assert sd.similarity_scale(sd.ShardedGraph.from_matrix(A)) == 1.0
    one = fit_affinity(build_affinity(A * 37.0, "precomputed"), K, "hals", random_state=0, max_iter=ITERS, threads=1)
    run = sd.fit(g, K, "hals", seed=0, max_iter=ITERS)
    assert run.scale == pytest.approx(37.0, rel=1e-6) and one.scale == pytest.approx(run.scale, rel=1e-9)
    assert np.array_equal(run.labels, single["hals"].labels) and np.array_equal(one.labels, run.labels)
    assert torch.allclose(run.U, single["hals"].U * 37.0**0.5, rtol=1e-6, atol=1e-9)
    assert run.rel_error == pytest.approx(single["hals"].rel_error, rel=1e-9)


@pytest.fixture(scope="module")
def spawned(graph, tmp_path_factory):
    """Three gloo ranks spawned once: fits on the 3 ranks and on a subgroup of 2, and `cluster` outputs."""
    root = str(tmp_path_factory.mktemp("ranks"))
    _spawn(root, 3, graph[0])
    return root


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_matches_one_process(spawned, graph, single, world):
    A, _ = graph
    root = spawned
    ranks = _ranks(root, f"w{world}", world)
    n = A.shape[0]
    r = K
    for solver in SOLVERS:
        ref = single[solver]
        labels = np.load(os.path.join(root, f"w{world}-{solver}-labels.npy"))
        assert np.array_equal(labels, ref.labels), f"{solver}: labels differ from one process"
        U = np.concatenate([np.load(os.path.join(root, f"w{world}-{solver}-U-{p}.npy")) for p in range(world)])
        assert np.allclose(U, ref.U.numpy(), rtol=1e-8, atol=1e-12)
        objective = ranks[0][solver]["objective"]
        assert objective == pytest.approx(ref.reconstruction_err ** 2, rel=1e-10)
        assert all(rk[solver]["objective"] == objective for rk in ranks)  # every rank agrees
        assert ranks[0][solver]["n_iter"] == ref.n_iter
        assert np.allclose(ranks[0][solver]["history"], ref.history["objective"], rtol=1e-10)
        # The halo: far below an all_gather of U, and the bytes counted are the rows sent times r.
        halo = sum(rk[solver]["traffic"]["bytes_per_exchange"] for rk in ranks)
        allgather = (world - 1) * n * r * 8
        assert 0 < halo < 0.1 * allgather, (halo, allgather)
        for rk in ranks:
            traffic = rk[solver]["traffic"]
            assert traffic["bytes_per_exchange"] == rk["rows_sent"] * r * 8
            assert traffic["bytes_sent"] == traffic["exchanges"] * rk["rows_sent"] * r * 8
    # What the ranks receive is what their peers send; the blocks are the balanced row split.
    assert sum(rk["halo_rows"] for rk in ranks) == sum(rk["rows_sent"] for rk in ranks)
    offsets = sd.row_offsets(n, world)
    assert [rk["rows"] for rk in ranks] == [[a, b] for a, b in zip(offsets, offsets[1:])]


def test_restarts_side_by_side_on_three_ranks(spawned, graph, monkeypatch):
    """sd.hals_restarts on 3 ranks: each restart as sd.hals from it alone on the same ranks (its iterations and
    factor), as the single-process side-by-side run, with the halo exchanges of one run instead of three."""
    from symnmf.solvers import init_factor
    from symnmf.solvers.hals import hals_restarts
    from symnmf.validation import as_similarity

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    root, world = spawned, 3
    ranks = [json.load(open(os.path.join(root, f"w{world}-restarts-rank-{p}.json"))) for p in range(world)]
    side = np.concatenate([np.load(os.path.join(root, f"w{world}-restarts-U-{p}.npy")) for p in range(world)], 1)
    alone = np.concatenate([np.load(os.path.join(root, f"w{world}-alone-U-{p}.npy")) for p in range(world)], 1)
    assert ranks[0]["side"] == ranks[0]["alone"] and len(set(ranks[0]["side"])) > 1
    assert all(rk["side"] == ranks[0]["side"] for rk in ranks)
    assert np.allclose(side, alone, rtol=1e-12, atol=1e-15)
    assert all(rk["side_exchanges"] < rk["alone_exchanges"] / 2 for rk in ranks)
    X = as_similarity(graph[0])
    starts = restart_starts(torch.stack([init_factor(X, K, torch.Generator().manual_seed(s)) for s in RESTART_SEEDS]))
    one = hals_restarts(X, starts, max_iter=80, tol=1e-4)
    assert [run.n_iter for run in one] == ranks[0]["side"]
    assert np.allclose(side, torch.stack([run.U for run in one]).numpy(), rtol=1e-8, atol=1e-12)


def test_sharded_restart_from_w_equal_v_as_one_process(spawned, monkeypatch):
    """A run that converges with W and V apart goes on from W = V on 3 ranks as in one process: the same
    iteration of the restart, the same iterations and factor; SymHALS side by side as well."""
    from symnmf.solvers import init_factor, solve
    from symnmf.solvers.hals import hals_restarts

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    root, world = spawned, 3
    ranks = [json.load(open(os.path.join(root, f"w{world}-apart-rank-{p}.json"))) for p in range(world)]
    parts = [np.load(os.path.join(root, f"w{world}-apart-U-{p}.npz")) for p in range(world)]
    assert all(rk == ranks[0] for rk in ranks)
    X = torch.from_numpy(bipartite_csr().toarray())
    one = {s: solve(X, 4, s, random_state=0, max_iter=2000) for s in ("hals", "anls")}
    starts = torch.stack([init_factor(X, 4, torch.Generator().manual_seed(s)) for s in (0, 1)])
    one.update({f"restart{k}": run for k, run in enumerate(hals_restarts(X, starts, max_iter=2000))})
    for key, ref in one.items():
        assert ref.params["symmetric_restart"] is not None
        assert ranks[0][key] == [ref.n_iter, ref.params["symmetric_restart"]], key
        U = np.concatenate([part[key] for part in parts])
        assert np.allclose(U, ref.U.numpy(), rtol=1e-8, atol=1e-12), key


def test_renumbered_shards_map_back(spawned, graph, single):
    """Shards renumbered by RCM: the factor and labels come back in the graph's own node order and
    match one process on the original numbering (the SpMM adds each row's terms in another order)."""
    ref = single[SOLVERS[0]]
    labels = np.load(os.path.join(spawned, "rcm-labels.npy"))
    U = np.load(os.path.join(spawned, "rcm-U.npy"))
    assert np.array_equal(labels, ref.labels)
    assert np.allclose(U, ref.U.numpy(), rtol=1e-8, atol=1e-12)
    ranks = _ranks(spawned, "rcm", 3)
    assert ranks[0]["objective"] == pytest.approx(ref.reconstruction_err ** 2, rel=1e-10)


def test_balanced_by_stored_entries(spawned, graph, single):
    A, _ = graph
    ranks = _ranks(spawned, "nnz", 3)
    offsets = ranks[0]["offsets"]
    assert offsets == sd.row_offsets(A.shape[0], 3, A.indptr)
    assert sum(rk["nnz"] for rk in ranks) == A.nnz
    assert max(rk["nnz"] for rk in ranks) - min(rk["nnz"] for rk in ranks) <= A.getnnz(1).max()
    assert np.array_equal(np.load(os.path.join(spawned, "nnz-labels.npy")), single[SOLVERS[0]].labels)
    assert ranks[0]["objective"] == pytest.approx(single[SOLVERS[0]].reconstruction_err ** 2, rel=1e-10)


def test_row_offsets():
    assert sd.row_offsets(10, 3) == [0, 3, 6, 10]
    indptr = np.concatenate([[0], np.cumsum([100, 1, 1, 1, 1, 1, 1, 1, 1, 1])])
    assert sd.row_offsets(10, 2, indptr) == [0, 1, 10]  # the heavy row alone
    assert sd.row_offsets(3, 3, [0, 5, 5, 5]) == [0, 1, 2, 3]  # at least one row each
    with pytest.raises(ValueError, match="balance"):
        sd.ShardedGraph.from_matrix(sp.eye(4, format="csr"), balance="edges")


def test_cluster_writes_the_cli_outputs_on_rank_0(spawned, graph, single):
    """cluster() under torchrun's variables: rank 0 writes labels.txt, embedding.npy and metrics.json."""
    A, _ = graph
    out = os.path.join(spawned, "out")
    labels = np.loadtxt(os.path.join(out, "labels.txt"), dtype=np.int64)
    U = np.load(os.path.join(out, "embedding.npy"))
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    ref = single[SOLVERS[0]]
    assert np.array_equal(labels, ref.labels)
    assert np.allclose(U, ref.U.numpy(), rtol=1e-8, atol=1e-12)
    assert metrics["world_size"] == 3 and metrics["n"] == A.shape[0]
    assert metrics["rel_error"] == pytest.approx(ref.rel_error, rel=1e-10)
    from symnmf.metrics import modularity

    assert metrics["modularity"] == pytest.approx(modularity(A, ref.labels), rel=1e-10)
    assert 0 < metrics["halo_bytes_sent_total"] < 0.1 * metrics["allgather_bytes_equivalent"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the NCCL test needs a GPU")
def test_nccl_matches_one_process(tmp_path, graph, single):
    """NCCL, one rank per GPU (2 where there are 2 GPUs, else 1: the collectives without the halo): SymHALS, and
    SymNewton and ADMM, whose CG and penalty steps add scalar all_reduces on the device."""
    A, _ = graph
    world = min(2, torch.cuda.device_count())
    root = str(tmp_path)
    solvers = ("hals", "newton", "admm")
    _spawn(root, world, A, solvers=solvers, device="cuda")
    ranks = _ranks(root, f"w{world}", world)
    for solver in solvers:
        labels = np.load(os.path.join(root, f"w{world}-{solver}-labels.npy"))
        assert np.array_equal(labels, single[solver].labels), solver
        assert ranks[0][solver]["objective"] == pytest.approx(single[solver].reconstruction_err ** 2, rel=1e-8)


def run_one_and_two_ranks(tmp_path, args):
    """`python -m symnmf <args>` in one process (--out tmp_path / "one") and under torchrun on 2 ranks
    (tmp_path / "two"); asserts both succeed and the sharded one says so. Returns the sharded one's stdout."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    one = subprocess.run([sys.executable, "-m", "symnmf", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    # --standalone: torchrun binds its own free port (a port picked here beforehand could be taken by the
    # gloo groups of tests running beside this one before torchrun binds it)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run([*torchrun, "-m", "symnmf", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-6000:]
    assert "on 2 ranks" in two.stdout
    return two.stdout


def run_cluster_commands(tmp_path, A, args):
    """`python -m symnmf cluster GRAPH <args>` for the graph A, in one process and on 2 ranks
    (`run_one_and_two_ranks`)."""
    path = tmp_path / "graph.npz"
    sp.save_npz(path, sp.csr_matrix(A))
    return run_one_and_two_ranks(tmp_path, ["cluster", str(path), *args])


def test_symnmf_cluster_under_torchrun_gives_the_single_process_labels(tmp_path, graph):
    # The command itself, sharded over 2 ranks by torchrun, against the same command in one process.
    A, _ = graph
    run_cluster_commands(tmp_path, A, ["-k", str(K), "--solver", "hals", "--seed", "0", "--max-iter", "30"])
    labels_one = np.loadtxt(tmp_path / "one" / "labels.txt", dtype=np.int64)
    labels_two = np.loadtxt(tmp_path / "two" / "labels.txt", dtype=np.int64)
    np.testing.assert_array_equal(labels_two, labels_one)


def test_bad_shards_and_shard_counts_are_refused(tmp_path, capsys):
    """Column indices outside 0..n-1 crashed in the halo code with a shape error; --parts 0 divided by zero and
    -1 wrote an unreadable shards.json; --save-shards needed a -k it never uses."""
    import scipy.sparse as sp

    A = sp.csr_matrix(np.ones((4, 4)) - np.eye(4))
    with pytest.raises(ValueError, match=r"column indices outside 0..3"):
        sd.ShardedGraph(A.indptr, np.where(A.indices == 3, 7, A.indices), A.data, 4)
    for parts in (0, -1, 5, 2.0):
        with pytest.raises(ValueError, match="parts must be an int from 1 to n = 4"):
            sd.save_shards(A, str(tmp_path / "shards"), parts)
    assert not (tmp_path / "shards").exists()
    with pytest.raises(ValueError, match="positive int"):
        sd.row_offsets(4, 0)
    sp.save_npz(tmp_path / "g.npz", A)
    with pytest.raises(SystemExit) as err:
        sd.main([str(tmp_path / "g.npz"), "--save-shards", str(tmp_path / "bad"), "--parts", "0"])
    assert err.value.code == 2 and "--parts must be at least 1" in capsys.readouterr().err
    assert sd.main([str(tmp_path / "g.npz"), "--save-shards", str(tmp_path / "ok"), "--parts", "2"]) == 0
    assert (tmp_path / "ok" / "shards.json").exists()
    with pytest.raises(SystemExit) as err:
        sd.main([str(tmp_path / "g.npz")])
    assert err.value.code == 2 and "-k/--n-clusters" in capsys.readouterr().err


def test_extreme_scales_diverged_nets_and_dtype_names(tmp_path, graph):
    """A graph at 1e-170 was refused as all zero (||X||^2 underflowed), one at 1e170 overflowed in the power
    iteration and the symmetry check (a bare OverflowError); one process fits both. The sharded net returned NaN
    labels where the one-process net raises; from_npz took a dtype name as a raw to() argument."""
    import scipy.sparse as sp
    from symnmf.fitting import build_affinity, fit_affinity

    A, _ = graph
    A = A[:200, :200]
    single = fit_affinity(build_affinity(A, "precomputed"), 4, "hals", random_state=0, max_iter=5, node_order=None,
                          threads=None)
    for s in (1e-170, 1e170):
        sp.save_npz(tmp_path / "g.npz", (A * s).tocsr())
        for g in (sd.ShardedGraph.from_matrix(A * s), sd.ShardedGraph.from_npz(str(tmp_path / "g.npz"))):
            run = sd.fit(g, 4, "hals", seed=0, max_iter=5)
            assert run.rel_error == pytest.approx(single.rel_error, rel=1e-9)
    sp.save_npz(tmp_path / "g.npz", A.tocsr())
    assert sd.ShardedGraph.from_npz(str(tmp_path / "g.npz"), dtype="float32").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        sd.ShardedGraph.from_npz(str(tmp_path / "g.npz"), dtype=torch.int64)
    g = sd.ShardedGraph.from_matrix(A)
    for opts in (dict(recipe="paper", n_layers=3), dict(n_restarts=2, init_iter=0, polish_iter=0, select="consensus")):
        with pytest.raises(FloatingPointError, match="diverged"):
            sd.fit(g, 4, "net", seed=0, max_iter=30, lr=1e200, relative_lr=False, **opts)
