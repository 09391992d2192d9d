"""The classical SymNMF solvers: descent, stationarity, planted clusters, dense vs sparse, errors.

These tests check the algorithms, so the symnmf_kernels ops run their torch
path here even under TRITON_INTERPRET=1 (the interpreter would take seconds
per op); the kernels themselves are checked against the torch path in their
own tests, and test_hals.py runs SymHALS end to end through the
Triton sweep.
"""
import numpy as np
import pytest
import scipy.optimize
import scipy.sparse
import torch

from symnmf.solvers import SOLVERS, SolverResult, init_factor, solve

ALL = sorted(SOLVERS)
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


@pytest.fixture(autouse=True)
def torch_path_ops(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    # Problems this small run fastest on one thread, and a second OpenMP thread
    # spinning against other processes can make each tiny product 1000x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def accuracy(labels, predicted):
    """Fraction of nodes correctly clustered under the best matching of clusters to classes."""
    k = int(max(labels.max(), predicted.max())) + 1
    counts = np.zeros((k, k))
    np.add.at(counts, (labels, predicted), 1)
    rows, cols = scipy.optimize.linear_sum_assignment(-counts)
    return counts[rows, cols].sum() / len(labels)


def stochastic_block_model(sizes, p_in, p_out, seed, dtype=torch.float64):
    """Normalised adjacency D^{-1/2} A D^{-1/2} of a planted-partition graph, and its labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    n = len(labels)
    P = torch.where(labels[:, None] == labels[None, :], p_in, p_out)
    A = torch.triu((torch.rand(n, n, generator=g) < P).double(), 1)
    A = A + A.T
    d = A.sum(1).clamp_min(1)
    return (A / torch.sqrt(d[:, None] * d[None, :])).to(dtype), labels.numpy()


@pytest.fixture(scope="module")
def sbm():
    return stochastic_block_model([23, 31, 37], 0.35, 0.03, seed=0)


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("solver", ALL)
@pytest.mark.parametrize("sparse", [False, True])
def test_recovers_planted_clusters(solver, sparse, sbm):
    X, labels = sbm
    X = X.to_sparse_csr() if sparse else X
    result = solve(X, 3, solver, random_state=1)
    assert isinstance(result, SolverResult)
    assert result.converged
    assert result.U.shape == (X.shape[0], 3) and bool((result.U >= 0).all())
    assert accuracy(labels, result.U.argmax(1).numpy()) >= 0.95


@pytest.mark.parametrize("solver", ALL)
def test_objective_descends_to_a_stationary_point(solver):
    X, _ = stochastic_block_model([17, 21, 26], 0.4, 0.05, seed=2)
    tol = 1e-5
    result = solve(X, 3, solver, random_state=3, tol=tol, max_iter=3000)
    h = result.history
    obj = np.array(h["objective"])
    assert result.converged and h["pg_norm"][-1] <= tol * h["pg_norm"][0]
    assert obj[-1] < 0.9 * obj[0]
    increases = np.diff(obj)
    if solver in ("pgd", "newton"):
        # Armijo steps: the objective never rises.
        assert increases.max() <= 1e-12 * obj[0]
    else:
        # ANLS/HALS descend on the penalised objective and ADMM on its Lagrangian:
        # ||X - U U^T||^2 of the returned factor may rise a little on the way.
        assert increases.max() <= 0.02 * obj[0]
    # The history's relative error and objective agree, and the factor reported is the history's last.
    norm_sq = float(X.pow(2).sum())
    assert abs(h["rel_error"][-1] - obj[-1] / norm_sq) <= 1e-12
    assert abs(float(((X - result.U @ result.U.T) ** 2).sum()) - obj[-1]) <= 1e-9 * obj[-1]


@pytest.mark.parametrize("solver", ALL)
def test_exact_factorisation_is_found(solver):
    """X = U* U*^T with disjoint supports: every solver drives the relative error to ~0."""
    g = torch.Generator().manual_seed(7)
    n, r = 47, 3
    U_star = torch.zeros(n, r, dtype=torch.float64)
    U_star[torch.arange(n), torch.arange(n) % r] = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    result = solve(U_star @ U_star.T, r, solver, random_state=2, tol=1e-6, max_iter=3000)
    assert result.history["rel_error"][-1] <= 1e-6


@pytest.mark.parametrize("solver", ALL)
def test_dense_and_sparse_give_the_same_iterates(solver):
    X, _ = stochastic_block_model([13, 19, 24], 0.4, 0.05, seed=4)
    U0 = init_factor(X, 3, torch.Generator().manual_seed(5))
    dense = solve(X, 3, solver, U0=U0, max_iter=12, tol=0.0)
    sparse = solve(X.to_sparse_csr(), 3, solver, U0=U0, max_iter=12, tol=0.0)
    assert dense.n_iter == sparse.n_iter == 12
    assert rel(sparse.U, dense.U) <= 1e-9
    np.testing.assert_allclose(sparse.history["objective"], dense.history["objective"], rtol=1e-9)
    np.testing.assert_allclose(sparse.history["pg_norm"], dense.history["pg_norm"], rtol=1e-7)


def test_newton_forms_agree_on_the_solution(sbm):
    X, labels = sbm
    exact = solve(X, 3, "newton", random_state=1, method="exact")
    cg = solve(X.to_sparse_csr(), 3, "newton", random_state=1, method="cg")
    assert exact.params["method"] == "exact" and cg.params["method"] == "cg"
    assert exact.converged and cg.converged
    assert abs(exact.history["objective"][-1] - cg.history["objective"][-1]) <= 1e-6 * exact.history["objective"][-1]
    assert accuracy(labels, cg.U.argmax(1).numpy()) >= 0.95


def test_newton_cg_checks_for_its_end_at_any_interval(sbm):
    """CG's steps after its end change nothing (their step length is 0): checking for the end every step (the
    default) or every fifth gives the same iterates."""
    X, _ = sbm
    runs = [solve(X.to_sparse_csr(), 3, "newton", random_state=1, method="cg", max_iter=15, tol=0.0,
                  cg_check_every=every) for every in (1, 5)]
    assert runs[0].n_iter == runs[1].n_iter == 15
    assert torch.equal(runs[0].U, runs[1].U)


@pytest.mark.parametrize("solver", ["hals", "anls"])
def test_zhu_penalty_converges_to_a_symmetric_factor(solver, sbm):
    X, labels = sbm
    result = solve(X, 3, solver, lam="zhu", random_state=1, max_iter=2000)
    # 1/2 (||X||_2 + ||X - U0 U0^T||_F) with ||X||_2 = 1 for a normalised connected graph.
    U0 = init_factor(X, 3, torch.Generator().manual_seed(1))
    expected = 0.5 * (1.0 + float(torch.linalg.norm(X - U0 @ U0.T)))
    assert abs(result.params["lam"] - expected) <= 1e-6 * expected
    assert result.converged and accuracy(labels, result.U.argmax(1).numpy()) >= 0.95


def test_float32_and_history_layout(sbm):
    X, labels = sbm
    result = solve(X.float(), 3, "hals", random_state=1, check_every=4, max_iter=50, tol=0.0)
    h = result.history
    assert result.U.dtype == torch.float32
    assert set(h) == {"iteration", "objective", "rel_error", "pg_norm", "time"}
    assert h["iteration"] == list(range(0, 50, 4)) + [50]
    assert all(len(v) == len(h["iteration"]) for v in h.values())
    assert all(b >= a for a, b in zip(h["time"], h["time"][1:]))
    assert result.n_iter == 50 and not result.converged


def test_init_factor_kuang_scale():
    g = torch.Generator().manual_seed(8)
    A = torch.rand(301, 301, generator=g, dtype=torch.float64)
    A = torch.where(A > 0.9, A, torch.zeros_like(A))
    X = A + A.T
    U_dense = init_factor(X, 4, torch.Generator().manual_seed(9))
    U_sparse = init_factor(X.to_sparse_csr(), 4, torch.Generator().manual_seed(9))
    assert rel(U_sparse, U_dense) <= 1e-14
    bound = 2 * (float(X.mean()) / 4) ** 0.5
    assert float(U_dense.min()) >= 0 and float(U_dense.max()) <= bound
    assert abs(float(U_dense.mean()) - bound / 2) <= 0.05 * bound


def test_random_state_reproducible_and_inputs_accepted(sbm):
    X, _ = sbm
    a = solve(X.numpy(), 3, "pgd", random_state=11, max_iter=5)
    b = solve(scipy.sparse.csr_matrix(X.numpy()), 3, "pgd", random_state=np.random.RandomState(11), max_iter=5)
    c = solve(X, 3, "pgd", random_state=11, max_iter=5)
    d = solve(X, 3, "pgd", random_state=12, max_iter=5)
    assert torch.equal(a.U, c.U)
    assert b.U.shape == a.U.shape
    assert not torch.equal(c.U, d.U)


def test_callback_can_stop(sbm):
    X, _ = sbm
    seen = []

    def callback(it, U, history):
        seen.append(it)
        return it >= 3

    result = solve(X, 3, "admm", random_state=1, callback=callback)
    assert seen == [0, 1, 2, 3] and result.n_iter == 3 and not result.converged


def test_bad_input(sbm):
    X, _ = sbm
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(X, 3, "mu")
    with pytest.raises(ValueError, match="exceeds the number of nodes"):
        solve(X, X.shape[0] + 1)
    with pytest.raises(ValueError, match="not symmetric"):
        solve(X + torch.triu(torch.ones_like(X), 1), 3)
    with pytest.raises(ValueError, match="negative"):
        solve(X - 1, 3)
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        solve(bad, 3)
    with pytest.raises(ValueError, match="U0 must have shape"):
        solve(X, 3, U0=torch.rand(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="U0 has negative"):
        solve(X, 3, U0=-torch.rand(X.shape[0], 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="no penalty"):
        solve(X, 3, "pgd", lam=1.0)
    with pytest.raises(ValueError, match="positive"):
        solve(X, 3, "hals", lam=-1.0)
    with pytest.raises(ValueError, match='"kuang" or "zhu"'):
        solve(X, 3, "anls", lam="big")
    with pytest.raises(ValueError, match="max_iter"):
        solve(X, 3, "pgd", max_iter=-1)
    with pytest.raises(ValueError, match="method"):
        solve(X, 3, "newton", method="bfgs")
    with pytest.raises(ValueError, match="max_iter"):
        solve(X, 3, "pgd", max_iter=True)
    with pytest.raises(ValueError, match="tol"):
        solve(X, 3, "pgd", tol=True)
    with pytest.raises(TypeError, match="scipy.sparse"):
        solve(X, 3, U0=scipy.sparse.csr_matrix(np.ones((X.shape[0], 3))))
    assert solve(X, 3, "pgd", tol=np.float32(1e-3), max_iter=np.int32(3)).n_iter == 3  # numpy numbers are numbers


@pytest.mark.parametrize("solver", ["pgd", "newton", "admm", "anls", "hals"])
def test_float32_objective_of_an_exact_fit_is_not_negative(solver):
    """X = 1 1^T is rank 1: the fit is exact, and the float64 sum of float32 terms, which cancel, rounded below 0
    (-1.2e-4 for PGD). The objective and E are not negative."""
    run = solve(torch.ones(20, 20), 1, solver, random_state=0)
    assert min(run.history["objective"]) >= 0 and min(run.history["rel_error"]) >= 0
    assert run.history["rel_error"][-1] < 1e-4


def test_bench_solvers_runs(tmp_path):
    """bench/bench_solvers.py at a toy size writes its table with a finite time for every solver and for
    SymNMF-Net's training step."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import bench_solvers

    path = bench_solvers.main([
        "--device", "cpu", "--n", "300", "--r", "3", "--cpu-k2", "4",
        "--tol-cap-s", "0.5", "--warmup", "0", "--rep", "1", "--out", str(tmp_path),
    ])
    lines = open(path).read().splitlines()
    columns = [c.strip() for c in next(line for line in lines if line.startswith("| graph")).split("|")[1:-1]]
    rows = [dict(zip(columns, (c.strip() for c in line.split("|")[1:-1])))
            for line in lines if line.startswith("| knn_like")]
    assert sorted(row["solver"] for row in rows) == sorted(["hals_sweep", "net"] + ALL)
    for row in rows:
        assert row["notes"] == "" or row["solver"] == "hals_sweep", row
        assert not float(row["ms_per_iter"]) <= 0, row  # a time, or nan when host noise hid it
        if row["solver"] not in ("hals_sweep", "net"):  # the net's row is its training step alone
            assert int(row["iters"]) >= 1 and 0 < float(row["rel_error"]) < 1, row


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", ALL)
def test_cuda_matches_cpu(solver, sbm, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    X, labels = sbm
    U0 = init_factor(X, 3, torch.Generator().manual_seed(1))
    cpu = solve(X.to_sparse_csr(), 3, solver, U0=U0, max_iter=20, tol=0.0)
    gpu = solve(X.to_sparse_csr(), 3, solver, U0=U0, max_iter=20, tol=0.0, device="cuda", check_every=1)
    assert gpu.U.is_cuda
    assert rel(gpu.U.cpu(), cpu.U) <= 1e-6
    full = solve(X, 3, solver, random_state=1, device="cuda")
    assert accuracy(labels, full.U.argmax(1).cpu().numpy()) >= 0.95


@pytest.mark.parametrize("solver", ALL)
def test_all_zero_similarity_is_refused(solver):
    for X in (torch.zeros(6, 6, dtype=torch.float64), torch.zeros(6, 6, dtype=torch.float64).to_sparse_csr()):
        with pytest.raises(ValueError, match="all zero"):
            solve(X, 2, solver)


def test_random_state_none_follows_numpys_global_state():
    from symnmf.solvers import make_generator

    np.random.seed(3)
    a = torch.rand(4, generator=make_generator(None))
    np.random.seed(3)
    b = torch.rand(4, generator=make_generator(None))
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(4, generator=make_generator(5)), torch.rand(4, generator=make_generator(np.int64(5))))


def test_sparse_symmetry_check_matches_the_dense_one():
    """check_similarity's O(nnz) symmetry test of a sparse X against max |X - X^T| of the dense matrix:
    symmetric and not, unsorted columns, a pattern that is not symmetric."""
    import scipy.sparse as sp

    from symnmf.validation import _sparse_asymmetry, check_similarity

    rng = np.random.default_rng(2026)
    for trial in range(40):
        n = int(rng.integers(1, 40))
        A = sp.random(n, n, density=rng.uniform(0.05, 0.5), random_state=rng, format="csr")
        if trial % 2 == 0:
            A = (A + A.T).tocsr()
        if trial % 3 == 0 and A.nnz:
            A.data[rng.integers(0, A.nnz)] += 0.5
        indices, data = A.indices.copy(), A.data.copy()
        if trial % 4 == 1:  # unsorted columns within each row
            for i in range(n):
                s, e = A.indptr[i], A.indptr[i + 1]
                p = rng.permutation(e - s)
                indices[s:e], data[s:e] = indices[s:e][p], data[s:e][p]
        X = torch.sparse_csr_tensor(torch.from_numpy(A.indptr).long(), torch.from_numpy(indices).long(),
                                    torch.from_numpy(data), size=(n, n))
        D = A.toarray()
        expected = np.abs(D - D.T).max() if n else 0.0
        assert abs(float(_sparse_asymmetry(X)) - expected) <= 1e-12
    A = sp.random(30, 30, density=0.2, random_state=rng, format="csr")
    A = (A + A.T).tocsr()
    off_diagonal = np.flatnonzero(A.indices != np.repeat(np.arange(30), np.diff(A.indptr)))
    A.data[off_diagonal[0]] += 1.0  # an off-diagonal entry: a changed diagonal would leave X symmetric
    X = torch.sparse_csr_tensor(torch.from_numpy(A.indptr).long(), torch.from_numpy(A.indices).long(),
                                torch.from_numpy(A.data), size=(30, 30))
    with pytest.raises(ValueError, match="not symmetric"):
        check_similarity(X)


@pytest.mark.parametrize("sparse", [False, True])
def test_hals_restarts_stop_each_where_hals_alone_would(sparse, sbm):
    """SymHALS from several starts side by side gives each start's own run: its iterations, its history and
    its factor, the restarts leaving the batch at different iterations."""
    from symnmf.solvers.hals import hals, hals_restarts

    X, _ = sbm
    X = X.to_sparse_csr() if sparse else X
    U0 = init_factor(X, 3, torch.Generator().manual_seed(4), batch_shape=(4,))
    U0[3] = U0[3] * 0.3  # a start of another scale: it converges after the others
    runs = hals_restarts(X, U0, max_iter=150, tol=1e-4)
    alone = [hals(X, U0[k], max_iter=150, tol=1e-4) for k in range(4)]
    assert len({run.n_iter for run in runs}) > 1
    for run, ref in zip(runs, alone):
        assert (run.n_iter, run.converged) == (ref.n_iter, ref.converged)
        assert rel(run.U, ref.U) <= 1e-12
        assert run.history["iteration"] == ref.history["iteration"]
        assert np.allclose(run.history["rel_error"], ref.history["rel_error"], rtol=1e-12, atol=0)
        assert run.params["lam"] == ref.params["lam"]


def test_hals_restarts_bad_input(sbm):
    from symnmf.solvers.hals import hals_restarts

    X, _ = sbm
    U0 = init_factor(X, 3, torch.Generator().manual_seed(4), batch_shape=(2,))
    with pytest.raises(ValueError, match="zhu"):
        hals_restarts(X, U0, lam="zhu")
    with pytest.raises(ValueError, match=r"\(R, n, r\)"):
        hals_restarts(X, U0[0])
    assert hals_restarts(X, U0[:0]) == []


def bipartite_graph(m=30, seed=0):
    """The normalised adjacency of a random bipartite graph (2m nodes): eigenvalue -1, where the two-factor form
    under Kuang's penalty max(X)^2 converges with W and V apart."""
    g = torch.Generator().manual_seed(seed)
    B = torch.rand(m, m, generator=g, dtype=torch.float64) * (torch.rand(m, m, generator=g) < 0.3)
    A = torch.zeros(2 * m, 2 * m, dtype=torch.float64)
    A[:m, m:] = B
    A[m:, :m] = B.T
    d = A.sum(1).clamp_min(1e-300)
    return A / torch.sqrt(d[:, None] * d[None, :])


@pytest.mark.parametrize("solver", ["hals", "anls"])
def test_penalised_run_converging_apart_restarts_symmetric(solver):
    """Converged with W far from V (a stationary point of the two-factor form, ||X - W W^T|| > ||X||), the run goes
    on from W = V with Zhu et al.'s penalty and ends at PGD's fit, W = V (in more iterations than the default
    500: the bound is a worst case)."""
    X = bipartite_graph()
    run = solve(X, 4, solver, random_state=0, max_iter=2000)
    pgd = solve(X, 4, "pgd", random_state=0)
    restart = run.params["symmetric_restart"]
    assert run.converged and restart is not None and 0 < restart < run.n_iter
    assert run.params["lam"] > 10 * float(X.max()) ** 2  # Zhu's bound, not Kuang's max(X)^2
    assert run.history["rel_error"][-1] < 1.0
    assert abs(run.history["rel_error"][-1] - pgd.history["rel_error"][-1]) <= 1e-3
    assert run.history["iteration"] == sorted(set(run.history["iteration"]))  # one entry per check
    assert len(run.history["iteration"]) == run.n_iter + 1
    # converged apart at its last iteration: not converged (not a stationary point of SymNMF), no iteration more
    capped = solve(X, 4, solver, random_state=0, max_iter=restart)
    assert (capped.n_iter, capped.converged, capped.params["symmetric_restart"]) == (restart, False, None)
    # likewise where the callback asks to stop there: the run stops, it does not restart
    calls = []
    stopped = solve(X, 4, solver, random_state=0, max_iter=2000,
                    callback=lambda it, U, h: calls.append(it) or it >= restart)
    assert (stopped.n_iter, stopped.converged, stopped.params["symmetric_restart"]) == (restart, False, None)
    assert calls[-1] == restart and torch.equal(stopped.U, capped.U)


def test_penalised_run_converging_together_keeps_its_penalty(sbm):
    """On a clustered graph W and V converge together (||W - V|| ~ 1e-4 ||W||): no restart, Kuang's penalty."""
    X, _ = sbm
    for solver in ("hals", "anls"):
        run = solve(X, 3, solver, random_state=0)
        assert run.converged and run.params["symmetric_restart"] is None
        assert run.params["lam"] == float(X.max()) ** 2


def test_hals_restarts_restart_symmetric_as_hals_alone():
    """A start of SymHALS side by side that converges apart goes on as `hals` from it alone would."""
    from symnmf.solvers.hals import hals, hals_restarts

    X = bipartite_graph()
    U0 = init_factor(X, 4, torch.Generator().manual_seed(0), batch_shape=(3,))
    runs = hals_restarts(X, U0, max_iter=2000)
    alone = [hals(X, U0[k], max_iter=2000) for k in range(3)]
    assert all(run.params["symmetric_restart"] is not None for run in runs)
    for run, ref in zip(runs, alone):
        assert (run.n_iter, run.params["symmetric_restart"]) == (ref.n_iter, ref.params["symmetric_restart"])
        assert run.converged and rel(run.U, ref.U) <= 1e-12 and run.history["rel_error"][-1] < 1.0


@pytest.mark.parametrize("solver", ["hals", "anls", "admm"])
def test_float32_x_of_tiny_scale_is_not_converged_at_the_start(solver, monkeypatch):
    """The stopping measure squared float32 gradients of X ~ 1e-16 to 0: every solver stopped at iteration 0,
    "converged" at its start. It squares in float64 now: the float32 fit runs as long as the float64 one, to
    the same error."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    gen = torch.Generator().manual_seed(0)
    A = torch.rand(15, 15, dtype=torch.float64, generator=gen)
    A = (A + A.T) / 2
    A[A < 0.5] = 0
    X = A * 1e-16
    f32, f64 = solve(X.float(), 3, solver, random_state=0), solve(X, 3, solver, random_state=0)
    assert f32.n_iter > 20 and abs(f32.n_iter - f64.n_iter) <= 0.5 * f64.n_iter
    assert f32.history["rel_error"][-1] == pytest.approx(f64.history["rel_error"][-1], rel=1e-3)


def test_x_requiring_grad_and_the_factor_a_callback_keeps(monkeypatch):
    """solve() left X's autograd graph on: SymHALS refused X, the others recorded a graph over every iteration
    (U came back with a grad_fn). SymHALS handed the callback the factor it then updated in place, so a U kept
    there became the final one."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    gen = torch.Generator().manual_seed(1)
    A = torch.rand(20, 20, dtype=torch.float64, generator=gen)
    X = ((A + A.T) / 2).requires_grad_()
    for name in SOLVERS:
        kept = []
        result = solve(X, 3, name, random_state=0, max_iter=6,
                       callback=lambda it, U, history: kept.append((U, U.clone())), check_every=1)
        assert result.U.grad_fn is None and not result.U.requires_grad, name
        assert all(torch.equal(U, copy) for U, copy in kept), name


@pytest.mark.parametrize("solver", ["pgd", "newton"])
def test_line_search_settings_that_cannot_work_are_refused(solver):
    """beta = 0 tried a zero step at every iteration and ran to max_iter without moving; beta >= 1 never shrank
    the step; refactor_every = 0 divided by zero."""
    X = torch.rand(12, 12, dtype=torch.float64)
    X = X + X.T
    for bad in ({"beta": 0.0}, {"beta": 1.5}, {"sigma": 0.0}, {"sigma": float("nan")}, {"max_trials": 0},
                {"beta": True}):
        with pytest.raises(ValueError, match="sigma|beta|max_trials"):
            solve(X, 2, solver, random_state=0, max_iter=3, **bad)
    if solver == "newton":
        for name in ("refactor_every", "cg_max_iter", "cg_check_every"):
            with pytest.raises(ValueError, match=name):
                solve(X, 2, solver, random_state=0, max_iter=3, **{name: 0})


def test_a_callers_scipy_matrix_is_left_as_it_was(tmp_path):
    """A CSR whose rows are not sorted is canonicalised on a copy: scipy shares the caller's data array with the
    CSR it converts (while copying the index array to int32), so sorting it in place had the caller's arrays
    describe another matrix. The same for the metrics and the sharded graph's files."""
    import symnmf.distributed as sd
    from symnmf.metrics import modularity

    def unsorted():
        indptr = np.array([0, 2, 3, 4])
        indices = np.array([2, 1, 0, 0])  # row 0's columns in descending order: a valid CSR, not canonical
        data = np.array([1.0, 0.5, 0.5, 1.0])
        return (data, indices, indptr), scipy.sparse.csr_matrix((data, indices, indptr), shape=(3, 3))

    for use in (lambda X: solve(X, 1, "hals", random_state=0, max_iter=2), lambda X: modularity(X, [0, 0, 1]),
                lambda X: sd.save_shards(X, str(tmp_path / "shards"), 1)):
        arrays, X = unsorted()
        before = [a.copy() for a in arrays]
        use(X)
        assert all(np.array_equal(a, b) for a, b in zip(arrays, before))
        assert np.array_equal(X.toarray(), scipy.sparse.csr_matrix(arrays, shape=(3, 3)).toarray())


def _k22():
    """The complete bipartite graph K_{2,2}, normalised (||X||_2 = 1): Kuang's rank-1 start from seed 0 fits it
    worse than the zero factor does."""
    A = torch.zeros(4, 4, dtype=torch.float64)
    A[:2, 2:] = A[2:, :2] = 1
    d = A.sum(1).sqrt()
    return A / d[:, None] / d[None, :]


@pytest.mark.parametrize("solver", ["pgd", "newton"])
def test_the_line_search_never_steps_to_the_zero_factor(solver):
    """From a start with f(U0) > f(0) = ||X||^2 the unit step clips every entry to 0, a decrease that the Armijo
    rule accepts; there the gradient vanishes, and the solver stopped "converged" with U = 0 (a saddle point).
    The search now takes a shorter step, and reaches the rank-1 optimum, E = 1/2, as the other solvers do. The
    same for the row-sharded solver, and for X = [[3]]."""
    import symnmf.distributed as sd

    X = _k22()
    U0 = solve(X, 1, solver, random_state=0, max_iter=0).U
    assert float((X - U0 @ U0.T).pow(2).sum()) > float(X.pow(2).sum())
    result = solve(X, 1, solver, random_state=0)
    assert result.converged and result.history["rel_error"][-1] == pytest.approx(0.5, abs=1e-6)
    assert bool((result.U > 0).all())
    sharded = sd.pgd(sd.ShardedGraph.from_matrix(X.numpy()), U0.clone())
    assert sharded.converged and sharded.history["rel_error"][-1] == pytest.approx(0.5, abs=1e-6)
    one = solve(torch.tensor([[3.0]], dtype=torch.float64), 1, solver, random_state=0)
    assert float(one.U) ** 2 == pytest.approx(3.0, rel=1e-2)  # not 0, within the tolerance tol = 1e-4


def test_zero_starts_reversed_views_and_seeds_out_of_range():
    """An all-zero U0 (where every gradient vanishes) is refused; numpy's reversed views (negative strides, which
    torch does not take) are accepted as the arrays they show; a seed beyond a torch generator's range names the
    argument."""
    X = _k22().numpy()
    with pytest.raises(ValueError, match="U0 is all zero"):
        solve(X, 1, "hals", U0=np.zeros((4, 1)))
    U0 = np.random.default_rng(0).random((4, 2))
    for view in (U0[::-1], np.flip(U0, 1)):
        want = solve(X, 2, "hals", U0=view.copy(), max_iter=5).U
        assert torch.equal(solve(X, 2, "hals", U0=view, max_iter=5).U, want)
    assert torch.equal(solve(X[::-1, ::-1], 2, "hals", random_state=0, max_iter=5).U,
                       solve(X[::-1, ::-1].copy(), 2, "hals", random_state=0, max_iter=5).U)
    for seed in (2**64, -2**63 - 1):
        with pytest.raises(ValueError, match="random_state must be an int in"):
            solve(X, 1, "hals", random_state=seed)


def test_symanls_names_a_penalty_lost_to_rounding():
    """Repeated nodes make V^T V singular, and a lam of 1e-8 is below float32's rounding of its diagonal: the
    NNLS then fails, and the error said a penalty lam > 0 was needed though one was given. float64 fits."""
    g = torch.Generator().manual_seed(0)
    B = torch.rand(6, 6, generator=g)
    X = (B + B.T).repeat_interleave(5, 0).repeat_interleave(5, 1)  # 30 nodes in 6 groups of equal nodes
    with pytest.raises(ValueError, match="lam = 1e-08 is lost to rounding.*dtype=torch.float64"):
        solve(X, 10, "anls", lam=1e-8, random_state=0, dtype=torch.float32, max_iter=300)
    assert solve(X, 10, "anls", lam=1e-8, random_state=0, dtype=torch.float64, max_iter=300).converged


def test_power_of_two_scale_within_the_dtypes_range():
    """The unit that brings data to [0.5, 1) exactly: 1 for zeros, and for a float32 whose largest entry is subnormal
    the largest power of two float32 holds (2^-exponent itself is beyond it: the unit was inf, and X times it NaN
    or inf), which still brings the data into the normal range."""
    from symnmf.validation import power_of_two_scale

    assert float(power_of_two_scale(torch.zeros(3))) == 1.0
    assert power_of_two_scale(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), dim=0).tolist() == [[1.0, 0.25]]
    for dtype, tiny in ((torch.float32, 1e-39), (torch.float64, 1e-310)):
        x = torch.tensor([tiny, tiny / 4], dtype=dtype)
        u = power_of_two_scale(x)
        assert bool(torch.isfinite(u)) and bool((x * u > torch.finfo(dtype).tiny).all())
    x = torch.tensor([3e38, 1.0], dtype=torch.float32)
    assert 0.5 <= float((x * power_of_two_scale(x)).max()) < 1
