"""SymNMFNet: Algorithm-1 initialisation, training, the lam bound, dense/sparse/batched X, save/load,
the recipes (starts, lam handling, beta decay, loss over the last block, early stopping), restart
selection, fit_net, checkpoint integrity and an all-zero X.

Shapes stay small: under TRITON_INTERPRET=1 every block runs through Triton's interpreter.
"""
import numpy as np
import pytest
import torch

from symnmf.metrics import accuracy, modularity
from symnmf.net import (CHECKPOINT_VERSION, RECIPES, SymNMFNet, fit_net, kuang_init, polish_restarts,
                        restart_modularity, select_restart, sparse_factor, spectral_init)


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def planted_graph(sizes, p_in, p_out, seed, dtype=torch.float64):
    """Normalised adjacency D^{-1/2} A D^{-1/2} of a stochastic block model, and its labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    same = labels[:, None] == labels[None, :]
    A = torch.triu((torch.rand(len(labels), len(labels), generator=g) < torch.where(same, p_in, p_out)).double(), 1)
    A = A + A.T
    d = A.sum(1).clamp_min(1)
    return (A / torch.sqrt(d[:, None] * d[None, :])).to(dtype), labels.numpy()


def random_similarity(n, seed, batch=(), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(*batch, n, n, generator=g, dtype=dtype)
    return (A + A.mT) / 2


def classical_iterates(X, U0, lam, steps):
    """U_k = max((X + lam I) U_{k-1} (U_{k-1}^T U_{k-1} + lam I)^{-1}, 0) in plain float64 torch."""
    X, U = X.double(), U0.double()
    eye = torch.eye(U.shape[-1], dtype=torch.float64)
    out = [U]
    for _ in range(steps):
        U = torch.relu((X @ U + lam * U) @ torch.linalg.inv(U.mT @ U + lam * eye))
        out.append(U)
    return out


def test_initial_net_reproduces_classical_scheme():
    n, r, L = 37, 3, 4
    X = random_similarity(n, seed=1)
    net = SymNMFNet(r, n_layers=L, random_state=0, recipe="paper").initialize(X)
    lam = float(net.lam.detach())
    # Algorithm 1: lam starts at ||X||_F raised to lam_min, lam_min = (||X|| + ||X - U0 U0^T||) / 2
    x_norm = float(X.norm())
    lam_min = 0.5 * (x_norm + float((X - net.U0 @ net.U0.T).norm()))
    assert abs(float(net.lam_min) - lam_min) <= 1e-10 * lam_min
    assert abs(lam - max(x_norm, lam_min)) <= 1e-10 * lam
    # Kuang's start: 2 sqrt(mean(X) / r) * uniform(0, 1)
    assert net.U0.shape == (n, r) and bool((net.U0 >= 0).all())
    assert float(net.U0.max()) <= 2 * (float(X.mean()) / r) ** 0.5
    expected = classical_iterates(X, net.U0, lam, L)
    with torch.no_grad():
        got = net(return_all=True)
    assert len(got) == L + 1
    for k in range(1, L + 1):
        assert rel(got[k], expected[k]) < 1e-9, k
        assert rel(net.P[k - 1], X @ expected[k - 1] + lam * expected[k - 1]) < 1e-9
    assert torch.equal(net(), got[-1])


def test_same_start_as_the_classical_solvers():
    from symnmf.solvers import init_factor, make_generator

    X, _ = planted_graph([10, 13], 0.5, 0.1, seed=23)
    for Xi in (X, X.to_sparse_csr()):
        net = SymNMFNet(2, n_layers=1, random_state=5, recipe="paper").initialize(Xi)
        assert rel(net.U0, init_factor(Xi, 2, make_generator(5))) < 1e-12


def test_initialize_from_given_start_and_lam():
    n, r = 29, 2
    X = random_similarity(n, seed=2)
    U0 = torch.rand(n, r, dtype=torch.float64)
    big = 10 * float(X.norm())
    net = SymNMFNet(r, n_layers=2, lam=big).initialize(X, U0=U0)
    assert torch.equal(net.U0, U0) and float(net.lam) == pytest.approx(big)
    expected = classical_iterates(X, U0, big, 2)
    assert rel(net(), expected[-1]) < 1e-9
    # a lam below the bound starts at the bound
    low = SymNMFNet(r, n_layers=2, lam=1e-3).initialize(X, U0=U0)
    assert float(low.lam) == pytest.approx(float(low.lam_min))


def test_training_lowers_loss_and_keeps_lam_bound():
    X, _ = planted_graph([13, 17, 21], 0.5, 0.05, seed=3, dtype=torch.float32)
    lam_seen = []

    def watch(net, epoch, record):
        lam_seen.append((net.lam.detach().clone(), net.lam_min.clone()))

    # lam starts on its bound, and an absolute lr of 0.05 pushes it below the bound at every step
    net = SymNMFNet(3, n_layers=3, lam=1e-6, random_state=4, recipe="paper")
    net.fit(X, epochs=12, lr=0.05, callback=watch)
    h = net.history_
    assert net.n_iter_ == 12 and h["epoch"] == list(range(13))
    assert len(lam_seen) == 12
    for lam, lam_min in lam_seen:
        assert bool((lam >= lam_min).all())
    assert any(bool((lam == lam_min).all()) for lam, lam_min in lam_seen)  # the projection was active
    assert np.isfinite(h["loss"]).all()
    assert h["loss"][-1] < 0.95 * h["loss"][0]
    assert h["relative_error"][-1] < h["relative_error"][0]
    assert float(net.loss(X)) == pytest.approx(h["loss"][-1], rel=1e-4)
    assert float(net.relative_error(X)) == pytest.approx(h["relative_error"][-1], rel=1e-3)
    assert 0 < h["sparse_factor"][-1] <= 1
    assert all(b >= a for a, b in zip(h["time"], h["time"][1:]))


def test_loss_matches_its_definition_with_l1():
    n, r, L = 23, 3, 3
    X = random_similarity(n, seed=5)
    beta, mu = 0.3, 0.7
    net = SymNMFNet(r, n_layers=L, beta=beta, mu=mu, random_state=6, recipe="paper").initialize(X)
    with torch.no_grad():  # move the weights off the classical iterates, so the regulariser is not zero
        for P in net.P:
            P.mul_(1 + 0.2 * torch.rand_like(P))
        net.lam.add_(0.5)
    Us = net(return_all=True)
    lam = net.lam
    expected = sum(
        (X - Us[i] @ Us[i].T).pow(2).sum() + beta * (net.P[i - 1] - X @ Us[i - 1] - lam * Us[i - 1]).pow(2).sum()
        for i in range(1, L + 1)
    ) + mu * Us[-1].abs().sum()
    assert rel(net.loss(X), expected) < 1e-10


def test_gradients_match_plain_torch():
    n, r, L = 21, 3, 3
    X = random_similarity(n, seed=19)
    beta, mu = 0.05, 0.01
    net = SymNMFNet(r, n_layers=L, beta=beta, mu=mu, random_state=20, recipe="paper").initialize(X)
    with torch.no_grad():
        for P in net.P:
            P.mul_(1 + 0.3 * torch.rand_like(P))
    net.loss(X).backward()
    # the same loss written with plain torch ops (explicit inverse, dense residual)
    P = [p.detach().clone().requires_grad_() for p in net.P]
    lam = net.lam.detach().clone().requires_grad_()
    eye = torch.eye(r, dtype=X.dtype)
    U, loss = net.U0, 0.0
    for Pi in P:
        loss = loss + beta * (Pi - X @ U - lam * U).pow(2).sum()
        U = torch.relu(Pi @ torch.linalg.inv(U.T @ U + lam * eye))
        loss = loss + (X - U @ U.T).pow(2).sum()
    (loss + mu * U.sum()).backward()
    assert rel(net.lam.grad, lam.grad) < 1e-8 and float(lam.grad.abs()) > 0
    for mine, theirs in zip(net.P, P):
        assert rel(mine.grad, theirs.grad) < 1e-8 and float(theirs.grad.norm()) > 0


def test_dense_and_sparse_give_same_loss_and_gradients():
    X, _ = planted_graph([9, 11, 14], 0.6, 0.1, seed=7)
    grads = {}
    for name, Xi in (("dense", X), ("sparse", X.to_sparse_csr())):
        net = SymNMFNet(3, n_layers=3, beta=0.01, random_state=8, recipe="paper").initialize(Xi)
        with torch.no_grad():
            for P in net.P:
                P.mul_(1 + 0.1 * torch.linspace(0, 1, P.numel(), dtype=P.dtype).reshape(P.shape))
        loss = net.loss(Xi)
        loss.backward()
        grads[name] = (loss.detach(), net.lam.grad.clone(), [P.grad.clone() for P in net.P])
    (ld, gl_d, gP_d), (ls, gl_s, gP_s) = grads["dense"], grads["sparse"]
    assert rel(ls, ld) < 1e-10
    assert rel(gl_s, gl_d) < 1e-8
    assert float(gl_d.abs()) > 0
    for a, b in zip(gP_s, gP_d):
        assert rel(a, b) < 1e-8 and float(b.norm()) > 0


def test_a_sparse_graph_symmetric_to_rounding_is_made_exactly_symmetric():
    """A sparse X whose X^T differs by rounding is accepted and trained on as (X + X^T) / 2, whose losses take
    the symmetric path; the losses and gradients are those of the dense (X + X^T) / 2."""
    from symnmf_kernels.sparse import as_csr

    X, _ = planted_graph([9, 11, 14], 0.6, 0.1, seed=7)
    noise = 1 + 1e-7 * torch.rand(X.shape, generator=torch.Generator().manual_seed(1), dtype=X.dtype)
    X_near = X * noise  # no longer exactly symmetric, well within check_similarity's tolerance
    assert not torch.equal(X_near, X_near.T)
    net = SymNMFNet(3, n_layers=3, beta=0.01, random_state=8, recipe="paper")
    Xp = net._prepare(X_near.to_sparse_csr())
    assert as_csr(Xp).is_symmetric()
    assert torch.equal(Xp.to_dense(), (X_near + X_near.T) / 2)
    X_sparse = X.to_sparse_csr()
    assert net._prepare(X_sparse) is X_sparse  # an exactly symmetric X is taken as it is
    grads = {}
    for name, Xi in (("dense", (X_near + X_near.T) / 2), ("sparse", X_near.to_sparse_csr())):
        net = SymNMFNet(3, n_layers=3, beta=0.01, random_state=8, recipe="paper").initialize(Xi)
        loss = net.loss(Xi)
        loss.backward()
        grads[name] = (loss.detach(), net.lam.grad.clone(), [P.grad.clone() for P in net.P])
    (ld, gl_d, gP_d), (ls, gl_s, gP_s) = grads["dense"], grads["sparse"]
    assert rel(ls, ld) < 1e-10 and rel(gl_s, gl_d) < 1e-8
    for a, b in zip(gP_s, gP_d):
        assert rel(a, b) < 1e-8 and float(b.norm()) > 0


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("restarts", [None, 2])
def test_training_objective_with_the_start_product_cached(layout, restarts):
    # fit computes X U_0 once (U_0 is fixed); the loss and every gradient must be those of the plain objective.
    X, _ = planted_graph([7, 10, 13], 0.6, 0.1, seed=23)
    Xi = X.to_sparse_csr() if layout == "sparse" else X
    net = SymNMFNet(3, n_layers=4, beta=0.2, mu=0.01, n_restarts=restarts, random_state=24).initialize(Xi)
    with torch.no_grad():
        for P in net.P:
            P.mul_(1 + 0.2 * torch.rand(P.shape, generator=torch.Generator().manual_seed(25), dtype=P.dtype))
    X_norm2 = X.pow(2).sum()
    out = {}
    for cached in (False, True):
        net.zero_grad()
        S0 = net._start_product(Xi) if cached else None
        loss, residual, U = net._objective(Xi, X_norm2, S0)
        loss.sum().backward()
        out[cached] = (loss.detach(), residual.detach(), net.lam.grad.clone(), [P.grad.clone() for P in net.P])
    (l0, e0, gl0, gP0), (l1, e1, gl1, gP1) = out[False], out[True]
    assert rel(l1, l0) < 1e-12 and rel(e1, e0) < 1e-12
    assert rel(gl1, gl0) < 1e-10 and float(gl0.abs().min()) > 0
    for a, b in zip(gP1, gP0):
        assert rel(a, b) < 1e-10 and float(b.norm()) > 0


def test_batch_of_graphs_equals_separate_nets():
    n, r = 19, 2
    X = random_similarity(n, seed=9, batch=(2,), dtype=torch.float32)
    U0 = kuang_init(X, r, generator=torch.Generator().manual_seed(10))
    assert U0.shape == (2, n, r)
    batched = SymNMFNet(r, n_layers=2, recipe="paper").fit(X, epochs=3, lr=0.01, U0=U0)
    assert batched.lam.shape == (2,) and len(batched.history_["relative_error"][0]) == 2
    for b in range(2):
        single = SymNMFNet(r, n_layers=2, recipe="paper").fit(X[b], epochs=3, lr=0.01, U0=U0[b])
        assert rel(batched()[b], single()) < 1e-4
        assert float(batched.lam[b]) == pytest.approx(float(single.lam), rel=1e-5)
        assert batched.history_["relative_error"][-1][b] == pytest.approx(single.history_["relative_error"][-1], rel=1e-4)


def test_restarts_on_one_sparse_graph():
    X, _ = planted_graph([8, 9, 12], 0.6, 0.1, seed=11, dtype=torch.float32)
    Xs = X.to_sparse_csr()
    net = SymNMFNet(3, n_layers=2, n_restarts=3, random_state=12, recipe="paper").fit(Xs, epochs=2, lr=0.01)
    U = net()
    assert U.shape == (3, X.shape[0], 3) and net.lam.shape == (3,)
    assert rel(U[0], U[1]) > 1e-3  # different starts
    for k in range(3):
        single = SymNMFNet(3, n_layers=2, recipe="paper").fit(X, epochs=2, lr=0.01, U0=net.U0[k])
        assert rel(U[k], single()) < 1e-4
    assert net.labels().shape == (3, X.shape[0])


def test_save_and_load_round_trip(tmp_path):
    X = random_similarity(17, seed=13, dtype=torch.float32).to_sparse_csr()
    net = SymNMFNet(2, n_layers=2, beta=1e-3, mu=1e-4, n_restarts=2, random_state=14, recipe="paper").fit(X, epochs=2, lr=0.01)
    path = tmp_path / "net.pt"
    net.save(path)
    loaded = SymNMFNet.load(path)
    assert loaded.get_config() == net.get_config()
    assert torch.equal(loaded(), net()) and torch.equal(loaded.lam, net.lam) and torch.equal(loaded.lam_min, net.lam_min)
    assert loaded.history_ == net.history_ and loaded.n_iter_ == net.n_iter_
    assert float(loaded.loss(X).sum()) == pytest.approx(float(net.loss(X).sum()), rel=1e-6)
    # training goes on from the loaded weights
    loaded.fit(X, epochs=1, lr=0.01, warm_start=True)
    assert torch.equal(loaded.U0, net.U0)


def test_relative_lr_training_is_scale_invariant_without_regulariser():
    # X -> cX with U_0 -> sqrt(c) U_0: every iterate scales by sqrt(c), lam by c, the
    # weights by c^(3/2), so Adam steps relative to the weights' size give U -> sqrt(c) U
    n, r, c = 19, 3, 7.0
    X = random_similarity(n, seed=31)
    U0 = torch.rand(n, r, generator=torch.Generator().manual_seed(32), dtype=torch.float64)
    small = SymNMFNet(r, n_layers=3, beta=0.0, recipe="paper").fit(X, epochs=6, lr=0.05, relative_lr=True, U0=U0)
    large = SymNMFNet(r, n_layers=3, beta=0.0, recipe="paper").fit(c * X, epochs=6, lr=0.05, relative_lr=True, U0=c ** 0.5 * U0)
    with torch.no_grad():
        assert rel(small(), small.U0) > 1e-3  # training moved the factor
        assert rel(large(), c ** 0.5 * small()) < 1e-6
        assert rel(large.lam, c * small.lam) < 1e-9


def test_recovers_planted_clusters():
    X, labels = planted_graph([19, 23, 27], 0.45, 0.04, seed=15, dtype=torch.float32)
    net = SymNMFNet(3, n_layers=6, random_state=16, recipe="paper").fit(X, epochs=30, lr=0.1, relative_lr=True)
    h = net.history_
    assert h["loss"][-1] < h["loss"][0]
    assert accuracy(labels, net.labels().numpy()) >= 0.95


def test_sparse_factor():
    U = torch.tensor([[0.0, 1.0], [0.001, 2.0]])
    # mean |u| = 0.75025; threshold 0.0075: two entries above it
    assert float(sparse_factor(U)) == pytest.approx(0.5)


def test_bad_input_and_usage():
    X = random_similarity(11, seed=17)
    with pytest.raises(ValueError, match="n_components"):
        SymNMFNet(0)
    with pytest.raises(ValueError, match="exceeds"):
        SymNMFNet(12).fit(X, epochs=1)
    with pytest.raises(ValueError, match="symmetric"):
        SymNMFNet(2).fit(X + torch.triu(torch.ones_like(X), 1), epochs=1)
    with pytest.raises(ValueError, match="negative"):
        SymNMFNet(2).fit(X - 1, epochs=1)
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SymNMFNet(2).fit(bad, epochs=1)
    with pytest.raises(RuntimeError, match="initialise"):
        SymNMFNet(2)()
    net = SymNMFNet(2, n_layers=1, recipe="paper").initialize(X)
    with pytest.raises(ValueError, match="does not match"):
        net.fit(random_similarity(12, seed=18), epochs=1, warm_start=True)
    with pytest.raises(ValueError, match="U0"):
        SymNMFNet(2).initialize(X, U0=-torch.ones(11, 2))


def test_early_stop_progress_bar_and_log_every(capsys):
    X = random_similarity(13, seed=21, dtype=torch.float32)
    net = SymNMFNet(2, n_layers=1, random_state=22, recipe="paper").fit(X, epochs=50, lr=0.01, tol=1.0, progress=True)
    assert net.n_iter_ == 2 and net.history_["epoch"] == [0, 1, 2]  # the loss changes by less than its own size
    net.fit(X, epochs=5, lr=0.01, log_every=2, verbose=True, progress=False)
    assert net.history_["epoch"] == [0, 2, 4, 5]
    assert "epoch 4" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ recipes


def test_recipes_fill_unset_arguments_and_explicit_ones_win():
    assert set(RECIPES["paper"]) == set(RECIPES["default"])
    paper = RECIPES["paper"]
    assert (paper["n_layers"], paper["beta"], paper["lr"], paper["relative_lr"]) == (10, 5e-6, 0.5, False)
    assert (paper["init"], paper["lam"], paper["learn_lam"], paper["loss_blocks"]) == ("random", "fro", True, "all")
    default = RECIPES["default"]
    net = SymNMFNet(3)
    assert net.recipe == "default"
    assert (net.n_layers, net.beta, net.init, net.init_iter, net.loss_blocks, net.learn_lam) == (
        default["n_layers"], default["beta"], default["init"], default["init_iter"], default["loss_blocks"],
        default["learn_lam"])
    mine = SymNMFNet(3, n_layers=2, beta=0.5, init="random", recipe="paper")
    assert (mine.n_layers, mine.beta, mine.init, mine.mu) == (2, 0.5, "random", 0.0)
    with pytest.raises(ValueError, match="recipe"):
        SymNMFNet(3, recipe="fast")
    with pytest.raises(ValueError, match="init"):
        SymNMFNet(3, init="kmeans")
    with pytest.raises(ValueError, match="loss_blocks"):
        SymNMFNet(3, loss_blocks="first")
    with pytest.raises(ValueError, match="lam"):
        SymNMFNet(3, lam="max")


def test_hals_start_is_symhals_from_each_restarts_random_start():
    from symnmf.solvers import make_generator, solve

    X, _ = planted_graph([10, 12, 14], 0.5, 0.05, seed=41)
    net = SymNMFNet(3, n_layers=1, n_restarts=2, init="hals", init_iter=7, random_state=3).initialize(X)
    random_starts = kuang_init(X, 3, (2,), make_generator(3))
    assert rel(random_starts[0], random_starts[1]) > 1e-3
    for k in range(2):
        expected = solve(X, 3, solver="hals", U0=random_starts[k], max_iter=7, tol=0.0).U
        assert rel(net.U0[k], expected) < 1e-12


def test_spectral_start_finds_planted_blocks():
    X, labels = planted_graph([15, 20, 25], 0.6, 0.02, seed=42)
    U = spectral_init(X, 3, generator=torch.Generator().manual_seed(0))
    assert U.shape == (60, 3) and bool((U >= 0).all()) and bool(torch.isfinite(U).all())
    assert accuracy(labels, U.argmax(-1).numpy()) >= 0.95
    noisy = spectral_init(X.to_sparse_csr(), 3, (2,), torch.Generator().manual_seed(0), noise=0.1)
    assert noisy.shape == (2, 60, 3) and rel(noisy[0], noisy[1]) > 1e-3
    assert accuracy(labels, noisy[0].argmax(-1).numpy()) >= 0.95
    net = SymNMFNet(3, n_layers=1, init="spectral", random_state=0, recipe="paper").initialize(X)
    assert accuracy(labels, net.U0.argmax(-1).numpy()) >= 0.95


def test_spectral_start_has_no_dead_column():
    # Two blocks of ones: two positive eigenvalues, the rest 0. Rank 4 leaves two columns of the spectrum all zero,
    # which the net would keep at zero; they take Kuang's start, and the spectral columns stay as they were.
    X = torch.block_diag(torch.ones(6, 6), torch.ones(4, 4)).double()
    U = spectral_init(X, 4, generator=torch.Generator().manual_seed(0))
    assert U.shape == (10, 4) and bool((U >= 0).all()) and bool((U > 0).any(0).all())
    assert U[:, :2].argmax(1).tolist() == [0] * 6 + [1] * 4  # the leading columns, one per block, as they were
    batched = spectral_init(X, 4, (3,), torch.Generator().manual_seed(0))
    assert bool((batched > 0).any(-2).all()) and rel(batched[0, :, 2:], batched[1, :, 2:]) > 1e-3
    net = SymNMFNet(4, n_layers=2, init="spectral", random_state=0, recipe="paper").fit(X, epochs=3, lr=0.01)
    U = net().detach()
    assert bool((U.amax(-2) > 1e-3 * U.max()).all())


def test_fixed_lam_stays_and_spectral_lam_uses_the_spectral_norm():
    X, _ = planted_graph([9, 11, 13], 0.5, 0.1, seed=43)
    net = SymNMFNet(3, n_layers=2, learn_lam=False, random_state=1, recipe="paper")
    net.fit(X, epochs=5, lr=0.05, relative_lr=True)
    lam0 = float(net.lam)
    assert not net.lam.requires_grad
    assert lam0 == pytest.approx(max(float(X.norm()), float(net.lam_min)), rel=1e-12)
    spec = SymNMFNet(3, n_layers=1, lam="spectral", random_state=1, recipe="paper").initialize(X)
    two_norm = float(torch.linalg.matrix_norm(X, ord=2))
    residual = float((X - spec.U0 @ spec.U0.T).norm())
    assert float(spec.lam_min) == pytest.approx(0.5 * (two_norm + residual), rel=1e-4)
    assert float(spec.lam) == pytest.approx(max(two_norm, float(spec.lam_min)), rel=1e-4)


def test_last_block_loss_and_beta_decay():
    n, r, L = 19, 2, 3
    X = random_similarity(n, seed=44)
    beta = 0.2
    net = SymNMFNet(r, n_layers=L, beta=beta, loss_blocks="last", random_state=2, recipe="paper").initialize(X)
    with torch.no_grad():
        for P in net.P:
            P.mul_(1 + 0.2 * torch.rand_like(P))
    Us = net(return_all=True)
    expected = (X - Us[-1] @ Us[-1].T).pow(2).sum() + beta * sum(
        (net.P[i - 1] - X @ Us[i - 1] - net.lam * Us[i - 1]).pow(2).sum() for i in range(1, L + 1))
    assert rel(net.loss(X), expected) < 1e-10
    decayed = SymNMFNet(r, n_layers=1, beta=0.1, beta_final=1e-3, random_state=2, recipe="paper")
    decayed.fit(X, epochs=5, lr=0.01)
    assert decayed._beta_now == pytest.approx(1e-3, rel=1e-9)
    with pytest.raises(ValueError, match="beta_final"):
        SymNMFNet(2, beta_final=0.0)


def test_plateau_early_stopping():
    X, _ = planted_graph([12, 14], 0.6, 0.05, seed=45, dtype=torch.float32)
    # tol 1 on a plateau window of 3: the best loss of 3 steps never beats the earlier best by 100%
    net = SymNMFNet(2, n_layers=1, random_state=3, recipe="paper").fit(X, epochs=40, lr=0.01, tol=1.0, patience=3)
    assert net.n_iter_ == 4 and len(net.history_["loss"]) == 5
    # without tol the same run goes on to the end
    full = SymNMFNet(2, n_layers=1, random_state=3, recipe="paper").fit(X, epochs=40, lr=0.01, patience=3)
    assert full.n_iter_ == 40
    with pytest.raises(ValueError, match="patience"):
        SymNMFNet(2, recipe="paper").fit(X, epochs=2, patience=-1)
    with pytest.raises(ValueError, match="lr_schedule"):
        SymNMFNet(2, recipe="paper").fit(X, epochs=2, lr_schedule="step")


def test_select_restart_rules():
    n, r = 12, 3
    base = torch.zeros(n, r)
    base[torch.arange(n), torch.arange(n) % r] = 1.0
    other = torch.zeros(n, r)
    other[torch.arange(n), (torch.arange(n) // 4) % r] = 1.0  # a different partition
    U = torch.stack([other, base, base[:, [1, 2, 0]] * 2])  # restarts 1 and 2 agree (relabelled)
    assert select_restart(U, "consensus") in (1, 2)
    assert select_restart(U, "loss", [3.0, 1.0, 2.0]) == 1
    assert select_restart(U, "error", [0.5, float("nan"), 0.7]) == 0  # NaN is never the best
    assert select_restart(U, "modularity", [0.2, 0.4, 0.3]) == 1  # the highest modularity
    assert select_restart(U, "modularity", [0.2, float("nan"), 0.1]) == 0
    # restarts at one partition score equal up to rounding: the first is kept, whatever the rounding
    q = 0.5633059465021742
    assert select_restart(U, "modularity", [0.1, q, q * (1 + 1e-15)]) == 1
    assert select_restart(U, "modularity", [0.1, q * (1 + 1e-15), q]) == 1
    assert select_restart(U, "modularity", [0.1, q, q * (1 + 1e-6)]) == 2  # a real difference wins
    scores = torch.tensor([[0.1, 0.3], [q, 0.3], [q, 0.2]])
    batched = select_restart(U[:, None].expand(3, 2, n, r), "modularity", scores)
    assert batched.tolist() == [1, 0]
    bad = U.clone()
    bad[1, 0, 0] = float("nan")
    assert select_restart(bad, "consensus") in (0, 2)
    with pytest.raises(ValueError, match="rule"):
        select_restart(U, "acc")
    with pytest.raises(ValueError, match="scores"):
        select_restart(U, "loss")


def test_fit_net_recovers_planted_blocks_with_each_recipe():
    X, labels = planted_graph([16, 20, 24], 0.5, 0.03, seed=46, dtype=torch.float32)
    small = dict(n_layers=2, epochs=15, polish_iter=10)  # the recipes' mechanics at a size the interpreter runs fast
    for recipe, overrides in (("default", dict(small, n_restarts=2)), ("paper", dict(small, lr=0.1, polish_iter=0))):
        result = fit_net(X.to_sparse_csr(), 3, recipe=recipe, random_state=0, **overrides)
        assert result.U.shape == (60, 3) and result.labels.shape == (60,)
        assert accuracy(labels, result.labels.numpy()) >= 0.95, recipe
        assert np.isfinite(result.relative_error) and 0 < result.relative_error < 1
        assert 1 <= result.n_iter <= 15 and result.seconds > 0
        assert len(result.relative_errors) == overrides.get("n_restarts", 1)
        if overrides.get("polish_iter"):  # SymHALS from the kept restart lowers its E
            assert result.relative_error <= result.relative_errors[result.index] + 1e-6
    assert result.index == 0  # one restart
    with pytest.raises(ValueError, match="unknown recipe settings"):
        fit_net(X, 3, epochs=2, depth=3)


def test_fit_net_does_not_depend_on_the_scale_of_x(monkeypatch):
    """fit_net trains one graph at largest eigenvalue 1 (as the fit path) and scales the factor back: the
    labels of X at any scale, U(c X) = sqrt(c) U(X); a normalised graph is trained as it is."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the fit path's scaling, on the torch path
    X, _ = planted_graph([16, 20, 24], 0.5, 0.03, seed=46)
    small = dict(n_layers=2, epochs=10, polish_iter=10, n_restarts=2)
    base = fit_net(X, 3, random_state=0, **small)
    assert base.scale == 1.0
    for c in (1e-3, 1e3):
        fit = fit_net(X * c, 3, random_state=0, **small)
        assert fit.scale == pytest.approx(c, rel=1e-6)
        assert torch.equal(fit.labels, base.labels) and fit.index == base.index
        assert rel(fit.U, base.U * c**0.5) < 1e-6
        assert fit.relative_error == pytest.approx(base.relative_error, rel=1e-6)
    assert fit_net(X * 1e3, 3, random_state=0, scale=1.0, **small).scale == 1.0  # as given: no estimate


def test_fit_net_keeps_the_polished_restart_of_highest_modularity(monkeypatch):
    from symnmf.solvers import solve

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the selection rule, on the torch path

    X, _ = planted_graph([14, 17, 21], 0.4, 0.08, seed=51, dtype=torch.float64)
    X = X.to_sparse_csr()
    result = fit_net(X, 3, random_state=2, n_layers=2, epochs=6, n_restarts=3, polish_iter=8)
    assert result.settings["select"] == "modularity"  # the default recipe's rule
    with torch.no_grad():
        U_all = result.net()
    polished = [solve(X, 3, solver="hals", U0=U_all[k], max_iter=8) for k in range(3)]
    scores = [modularity(X, p.U.argmax(-1), 3) for p in polished]
    assert result.index == int(np.argmax(scores))
    assert result.scores == pytest.approx(scores, rel=1e-12)  # what the rule compared, kept for the user
    assert torch.equal(result.U, polished[result.index].U)
    assert result.relative_error == polished[result.index].history["rel_error"][-1]
    # without the polish the trained labels are scored; SymNMFNet.select does the same
    unpolished = fit_net(X, 3, random_state=2, n_layers=2, epochs=6, n_restarts=3, polish_iter=0)
    with torch.no_grad():
        U_all = unpolished.net()
    trained = [modularity(X, U.argmax(-1), 3) for U in U_all]
    assert unpolished.index == int(np.argmax(trained)) == unpolished.net.select(X, "modularity")
    assert unpolished.scores == pytest.approx(trained, rel=1e-12)
    by_loss = fit_net(X, 3, random_state=2, n_layers=2, epochs=6, n_restarts=3, polish_iter=0, select="loss")
    assert by_loss.scores == by_loss.losses and by_loss.index == int(np.argmin(by_loss.losses))
    with pytest.raises(ValueError, match="needs X"):
        unpolished.net.select(None, "modularity")
    # a restart that is not finite scores NaN and is never kept, whatever its argmax labels would score
    U_bad = U_all.clone()
    U_bad[unpolished.index, 0, 0] = float("nan")
    scores = restart_modularity(X, U_bad)
    assert torch.isnan(scores[unpolished.index]) and torch.isfinite(scores).sum() == 2
    assert select_restart(U_bad, "modularity", scores) != unpolished.index
    # nor polished: SymHALS would stop with an error on it
    runs = polish_restarts(X, U_bad, 4)
    assert runs[unpolished.index] is None and all(r is not None for k, r in enumerate(runs) if k != unpolished.index)



def test_fit_net_on_a_batch_of_graphs_needs_no_polish():
    X = random_similarity(9, seed=52, batch=(2,))
    with pytest.raises(ValueError, match="polish_iter needs one graph"):
        fit_net(X, 2, random_state=0, n_layers=2, epochs=2)  # refused before any training
    result = fit_net(X, 2, random_state=0, n_layers=2, epochs=2, polish_iter=0)
    assert result.U.shape == (2, 9, 2) and result.index.shape == (2,)
    with torch.no_grad():
        U_all = result.net()
    expected = torch.stack([torch.tensor([modularity(X[b], U_all[k, b].argmax(-1), 2) for k in range(4)]).argmax()
                            for b in range(2)])
    assert torch.equal(result.index, expected)


def test_all_zero_similarity_is_refused():
    Z = torch.zeros(10, 10)
    for X in (Z, Z.to_sparse_csr(), torch.zeros(2, 10, 10)):
        with pytest.raises(ValueError, match="all zero"):
            SymNMFNet(2, recipe="paper").fit(X, epochs=1)
    with pytest.raises(ValueError, match="all zero"):
        fit_net(Z, 2, epochs=1)
    partly = random_similarity(10, seed=47, batch=(2,))
    partly[1] = 0
    with pytest.raises(ValueError, match="all zero"):
        SymNMFNet(2, recipe="paper").initialize(partly)


# ---------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def saved_net(tmp_path):
    X = random_similarity(13, seed=48, dtype=torch.float32)
    net = SymNMFNet(2, n_layers=2, random_state=1, recipe="paper").fit(X, epochs=2, lr=0.01)
    path = tmp_path / "net.ckpt"
    net.save(path)
    return net, path


def test_checkpoint_has_version_and_checksum(saved_net):
    import hashlib
    import json

    net, path = saved_net
    data = path.read_bytes()
    magic, header, payload = data.split(b"\n", 2)
    header = json.loads(header)
    assert header["version"] == CHECKPOINT_VERSION and header["format"] == "symnmf-net"
    assert header["size"] == len(payload) and header["sha256"] == hashlib.sha256(payload).hexdigest()
    loaded = SymNMFNet.load(path)
    assert torch.equal(loaded(), net()) and loaded.get_config() == net.get_config()


def _write_checkpoint(path, obj, version=CHECKPOINT_VERSION):
    """A well-formed file (right header and checksum) around an arbitrary payload."""
    import hashlib
    import io
    import json

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    header = {"format": "symnmf-net", "version": version, "size": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest()}
    path.write_bytes(b"SYMNMF-NET\n" + json.dumps(header).encode() + b"\n" + payload)


def test_bad_checkpoints_raise_value_error_naming_the_file(saved_net, tmp_path):
    net, path = saved_net
    good = path.read_bytes()
    cases = {
        "empty": (b"", "empty"),
        "truncated": (good[: len(good) - 50], "truncated"),
        "header_cut": (good[:15], "header"),
        "flipped": (good[:-30] + bytes([good[-30] ^ 0xFF]) + good[-29:], "sha256"),
        "garbage": (b"not a checkpoint at all" * 10, "unpickle"),
        "future": (good.replace(f'"version": {CHECKPOINT_VERSION}'.encode(), b'"version": 99', 1), "version"),
    }
    for name, (data, match) in cases.items():
        bad = tmp_path / f"{name}.ckpt"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=match) as info:
            SymNMFNet.load(bad)
        assert str(bad) in str(info.value), name
    saved = {"config": net.get_config(), "state_dict": dict(net.state_dict()), "history": {}, "n_iter": 0}
    for drop, match in (("config", "config"), ("state_dict", "state_dict")):
        partial = {k: v for k, v in saved.items() if k != drop}
        bad = tmp_path / f"no_{drop}.ckpt"
        _write_checkpoint(bad, partial)
        with pytest.raises(ValueError, match=match):
            SymNMFNet.load(bad)
    no_weight = dict(saved, state_dict={k: v for k, v in saved["state_dict"].items() if k != "P.1"})
    bad = tmp_path / "no_weight.ckpt"
    _write_checkpoint(bad, no_weight)
    with pytest.raises(ValueError, match="P.1"):
        SymNMFNet.load(bad)
    no_rank = dict(saved, config={k: v for k, v in saved["config"].items() if k != "n_components"})
    bad = tmp_path / "no_rank.ckpt"
    _write_checkpoint(bad, no_rank)
    with pytest.raises(ValueError, match="n_components"):
        SymNMFNet.load(bad)
    wrong_shape = dict(saved, state_dict=dict(saved["state_dict"], **{"P.0": torch.zeros(3, 5)}))
    bad = tmp_path / "wrong_shape.ckpt"
    _write_checkpoint(bad, wrong_shape)
    with pytest.raises(ValueError, match="do not fit"):
        SymNMFNet.load(bad)


def test_first_format_checkpoint_still_loads(saved_net, tmp_path):
    net, _ = saved_net
    config = {k: net.get_config()[k] for k in ("n_components", "n_layers", "beta", "mu", "n_restarts", "random_state")}
    config["lam"] = None  # version 1 wrote None for ||X||_F
    old = tmp_path / "v1.pt"
    torch.save({"config": config, "state_dict": net.state_dict(), "history": net.history_, "n_iter": net.n_iter_}, old)
    loaded = SymNMFNet.load(old)
    assert torch.equal(loaded(), net()) and loaded.recipe == "paper" and loaded.lam_init == "fro"


def test_relative_beta_is_divided_by_the_starting_lam_squared():
    n, r = 17, 2
    X = random_similarity(n, seed=49)
    net = SymNMFNet(r, n_layers=2, beta=4.0, beta_relative=True, random_state=5, recipe="paper").initialize(X)
    lam0 = float(net.lam.detach())
    with torch.no_grad():
        for P in net.P:
            P.mul_(1 + 0.2 * torch.rand_like(P))
    Us = net(return_all=True)
    expected = sum(
        (X - Us[i] @ Us[i].T).pow(2).sum()
        + 4.0 / lam0**2 * (net.P[i - 1] - X @ Us[i - 1] - net.lam * Us[i - 1]).pow(2).sum()
        for i in range(1, 3)
    )
    assert rel(net.loss(X), expected) < 1e-10
    assert net.get_config()["beta_relative"] is True and RECIPES["default"]["beta_relative"] is True


def test_cuda_graph_needs_cuda_and_a_fixed_step():
    X, _ = planted_graph([10, 12], 0.6, 0.05, seed=30)
    net = SymNMFNet(2, n_layers=2, random_state=0)
    with pytest.raises(ValueError, match="CUDA device"):
        net.fit(X, epochs=2, cuda_graph=True)
    with pytest.raises(ValueError, match="lr_schedule"):
        net.fit(X, epochs=2, cuda_graph=True, lr_schedule="cosine")
    with pytest.raises(ValueError, match="beta_final"):
        SymNMFNet(2, n_layers=2, random_state=0, beta_final=1e-3).fit(X, epochs=2, cuda_graph=True)


def test_fit_net_cuda_graph_default_and_explicit_request_on_cpu():
    """fit_net's and SymNMFNet.fit's default (None) trains eagerly on the CPU; an explicit cuda_graph=True there is
    an error."""
    X, labels = planted_graph([10, 12], 0.6, 0.05, seed=30)
    result = fit_net(X, 2, random_state=0, epochs=5, n_restarts=1, polish_iter=0)
    assert result.n_iter == 5 and result.net.cuda_graph_ is False
    assert SymNMFNet(2, n_layers=2, random_state=0).fit(X, epochs=12).cuda_graph_ is False
    with pytest.raises(ValueError, match="CUDA device"):
        fit_net(X, 2, random_state=0, epochs=5, n_restarts=1, polish_iter=0, cuda_graph=True)


@pytest.mark.gpu
def test_fit_net_on_cuda_replays_the_graph_and_falls_back_to_eager(monkeypatch):
    """On CUDA the default recipe captures its step (the same training as eager steps); a capture that fails
    is reported by a warning and the fit trains on eagerly; an explicit request re-raises."""
    X, labels = planted_graph([60, 70, 50], 0.3, 0.02, seed=31, dtype=torch.float32)
    X = X.cuda().to_sparse_csr()
    captured = []
    real_capture = SymNMFNet._capture_step

    def spy(self, *args):
        captured.append(True)
        return real_capture(self, *args)

    monkeypatch.setattr(SymNMFNet, "_capture_step", spy)
    eager = fit_net(X, 3, random_state=0, epochs=30, tol=None, polish_iter=0, cuda_graph=False)
    assert not captured
    graphed = fit_net(X, 3, random_state=0, epochs=30, tol=None, polish_iter=0)
    assert captured and graphed.n_iter == eager.n_iter == 30
    assert graphed.net.cuda_graph_ and not eager.net.cuda_graph_
    assert np.allclose(graphed.net.history_["loss"], eager.net.history_["loss"], rtol=1e-4)
    # SymNMFNet.fit's own default captures too; a fit with too few steps to replay stays eager
    captured.clear()
    direct = SymNMFNet(3, n_layers=5, n_restarts=4, random_state=0).fit(X, epochs=12, tol=None)
    assert captured and direct.cuda_graph_ and direct.n_iter_ == 12
    captured.clear()
    short = SymNMFNet(3, n_layers=5, n_restarts=4, random_state=0).fit(X, epochs=7, tol=None)
    assert not captured and not short.cuda_graph_

    def broken(self, *args):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(SymNMFNet, "_capture_step", broken)
    with pytest.warns(RuntimeWarning, match="eager steps"):
        fallback = fit_net(X, 3, random_state=0, epochs=30, tol=None, polish_iter=0)
    # the same training, on with the capturable Adam made for the graph
    assert not fallback.net.cuda_graph_ and fallback.n_iter == 30
    assert np.allclose(fallback.net.history_["loss"], eager.net.history_["loss"], rtol=1e-4)
    with pytest.raises(RuntimeError, match="capture failed"):
        fit_net(X, 3, random_state=0, epochs=30, tol=None, polish_iter=0, cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.parametrize("sparse", [False, True])
def test_cuda_graph_training_equals_eager(sparse):
    """Steps replayed from a captured CUDA graph train the net as eager steps do."""
    X, labels = planted_graph([60, 70, 50], 0.3, 0.02, seed=31, dtype=torch.float32)
    X = X.cuda()
    if sparse:
        X = X.to_sparse_csr()
    nets = []
    for graph in (False, True):
        net = SymNMFNet(3, n_layers=4, n_restarts=2, random_state=0)
        net.fit(X, epochs=12, tol=None, cuda_graph=graph)
        nets.append(net)
    eager, graphed = nets
    assert graphed.n_iter_ == eager.n_iter_ == 12
    for a, b in zip(graphed.parameters(), eager.parameters()):
        assert rel(a, b) < 1e-4
    assert np.allclose(graphed.history_["loss"], eager.history_["loss"], rtol=1e-4)


@pytest.mark.parametrize("n_layers", [2, 5])
def test_training_factors_bounds_what_a_step_holds(n_layers):
    """The count behind the GPU memory check covers what a training step keeps: the weights, their gradients and
    Adam's moments, U_0 and X U_0, and every distinct factor-sized tensor saved for the backward (counted with
    autograd's saved-tensor hooks on a sparse graph, two restarts), and not far more."""
    import symnmf.net as net_module

    X, _ = planted_graph([30, 40, 31], 0.4, 0.05, seed=21, dtype=torch.float32)
    Xs = X.to_sparse_csr()
    net = SymNMFNet(3, n_layers=n_layers, n_restarts=2, random_state=3).fit(Xs, epochs=2, tol=None)
    factor_numel = net.U0.numel()
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved = set()

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if t.numel() == factor_numel and ptr not in params and ptr != net.U0.untyped_storage().data_ptr():
            saved.add(ptr)
        return t

    S0 = net._start_product(Xs)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net._objective(Xs, net_module._frob2(Xs), S0)
    held = 4 * n_layers + 2 + len(saved)  # P_i, gradients, two moments; U_0, X U_0; saved for the backward
    assert len(saved) >= 2 * n_layers  # the count is about something: each layer keeps some
    # the torch path of a small graph keeps fewer than the GPU's kernels: room for those and the temporaries
    assert held <= net_module.training_factors(n_layers) <= held + 2 * n_layers + 3


def test_training_that_cannot_fit_on_the_gpu_is_refused_with_the_fix(monkeypatch):
    """On a CUDA device, fit refuses before the first step training whose factors clearly exceed the free
    memory, with a message naming the sizes and the settings to change; what fits is let through."""
    import symnmf.net as net_module

    X, _ = planted_graph([10, 12], 0.5, 0.1, seed=22, dtype=torch.float32)
    net = SymNMFNet(2, n_layers=3, n_restarts=4, random_state=1).initialize(X.to_sparse_csr())
    factor = net.U0.numel() * 4
    need = (net_module.training_factors(3) - 3 - 1) * factor

    class OnGPU:
        is_cuda = True
        device = torch.device("cuda", 0)

    allocated = 1000
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: allocated + 24)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)
    edge = int(need / net_module.MEMORY_MARGIN)
    for free, refused in ((edge - 100, True), (edge + 100, False), (10 * need, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free: (f, 80 * 10**9))
        if refused:
            with pytest.raises(torch.OutOfMemoryError, match=r"n_restarts=1.*n_layers.*symnmf\.distributed"):
                net_module._check_training_memory(net, OnGPU())
        else:
            net_module._check_training_memory(net, OnGPU())
    net_module._check_training_memory(net, X)  # the host has room for this one


def test_cpu_training_that_cannot_fit_in_the_host_memory_is_refused(monkeypatch):
    """On the CPU the same check reads the host's available memory (/proc/meminfo), and skips where it cannot."""
    import symnmf.net as net_module

    X, _ = planted_graph([10, 12], 0.5, 0.1, seed=23, dtype=torch.float32)
    Xs = X.to_sparse_csr()
    net = SymNMFNet(2, n_layers=3, n_restarts=4, random_state=1).initialize(Xs)
    need = (net_module.training_factors(3) - 3 - 1) * net.U0.numel() * 4
    monkeypatch.setattr(net_module, "_host_memory", lambda: (need // 2, 10**9))
    with pytest.raises(torch.OutOfMemoryError, match=r"on cpu.*n_restarts=1"):
        net.fit(Xs, epochs=1)
    monkeypatch.setattr(net_module, "_host_memory", lambda: (None, None))
    net.fit(Xs, epochs=1)
    monkeypatch.setattr(net_module, "_host_memory", lambda: (10 * need, 10**9))
    net.fit(Xs, epochs=1)


def test_host_memory_reads_meminfo(monkeypatch):
    import builtins
    import io

    import symnmf.net as net_module

    real_open = builtins.open
    text = "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   12000000 kB\n"
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(text) if path == "/proc/meminfo"
                        else real_open(path, *a, **k))
    assert net_module._host_memory() == (12000000 * 1024, 24000000 * 1024)
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO("MemTotal: 5 kB\n")
                        if path == "/proc/meminfo" else real_open(path, *a, **k))
    assert net_module._host_memory() == (None, None)


# ------------------------------------------------------------------------ state, settings and scale


def test_save_and_load_keep_the_relative_regulariser_weight(tmp_path):
    """With beta_relative the regulariser's weight is beta / lam_start^2, and lam moves in training: a loaded
    net reports the same loss and a warm start trains on as the saved net would."""
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=60)
    net = SymNMFNet(2, n_layers=2, random_state=0).fit(X, epochs=3)
    assert net.beta_relative and net._beta_scale != 1.0
    net.save(tmp_path / "net.pt")
    loaded = SymNMFNet.load(tmp_path / "net.pt")
    assert loaded._beta_now == net._beta_now and loaded._beta_scale == net._beta_scale
    assert torch.equal(loaded.loss(X), net.loss(X))
    import copy

    went_on = copy.deepcopy(net).fit(X, epochs=2, warm_start=True)
    loaded.fit(X, epochs=2, warm_start=True)
    assert torch.equal(loaded(), went_on()) and loaded.history_["loss"] == went_on.history_["loss"]


def test_checkpoints_of_version_2_recover_the_regulariser_weight(tmp_path):
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=61)
    for settings, exact in ((dict(lam=20.0), True), (dict(learn_lam=False), True), ({}, False)):
        net = SymNMFNet(2, n_layers=2, random_state=0, **settings).fit(X, epochs=2)
        state = {k: v for k, v in net.state_dict().items() if k != "_extra_state"}
        path = tmp_path / "v2.ckpt"
        _write_checkpoint(path, {"config": net.get_config(), "state_dict": state, "history": {}, "n_iter": 2},
                          version=2)
        if exact:
            loaded = SymNMFNet.load(path)
            assert loaded._beta_scale == net._beta_scale and torch.equal(loaded.loss(X), net.loss(X))
        else:  # lam from ||X||_2, trained: the trained lam stands in for the starting one
            with pytest.warns(RuntimeWarning, match="trained lam stands in"):
                loaded = SymNMFNet.load(path)
            assert loaded._beta_scale == pytest.approx(1 / float(net.lam.detach()) ** 2, rel=1e-12)
        assert torch.equal(loaded(), net())


def test_load_state_dict_into_a_new_net():
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=62)
    net = SymNMFNet(2, n_layers=2, random_state=0, n_restarts=2).fit(X, epochs=2)
    fresh = SymNMFNet(2, n_layers=2, n_restarts=2)
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(), net()) and torch.equal(fresh.loss(X), net.loss(X))
    assert fresh.lam.requires_grad and torch.equal(fresh.lam_min, net.lam_min)
    # a state dict that does not fit leaves the new net uninitialised
    wrong = dict(net.state_dict(), **{"P.1": torch.zeros(3, 5)})
    other = SymNMFNet(2, n_layers=2, n_restarts=2)
    with pytest.raises(RuntimeError, match="P.1"):
        other.load_state_dict(wrong)
    assert not other.initialized and len(other.P) == 0 and other._beta_now == other.beta
    # a net of another config refuses it, and so does a state that fails before the load itself
    for config in (dict(n_restarts=None), dict(n_restarts=3), dict(n_components=3)):
        other = SymNMFNet(**dict(dict(n_components=2, n_layers=2, n_restarts=2), **config))
        with pytest.raises(ValueError, match="config it was saved with"):
            other.load_state_dict(net.state_dict())
        assert not other.initialized and len(other.P) == 0
    other = SymNMFNet(2, n_layers=2, n_restarts=2)
    with pytest.raises(TypeError):
        other.load_state_dict(dict(net.state_dict(), lam=net.lam.tolist()))
    assert not other.initialized and len(other.P) == 0
    # one restart kept as a plain net: the leading dimension of a batch of graphs is not one of restarts
    single = SymNMFNet(2, n_layers=2, random_state=0).fit(X, epochs=2)
    batch = SymNMFNet(2, n_layers=2)
    batch.load_state_dict(single.state_dict())
    assert torch.equal(batch(), single())


def test_a_refused_fit_leaves_the_trained_net_as_it_was(monkeypatch):
    import symnmf.net as net_module

    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=63)
    net = SymNMFNet(2, n_layers=2, random_state=0, recipe="paper").fit(X, epochs=3, lr=0.01)
    before, history = net().clone(), dict(net.history_)
    with pytest.raises(ValueError, match="CUDA device"):
        net.fit(X, epochs=2, cuda_graph=True)
    with pytest.raises(ValueError, match="warm_start"):
        net.fit(X, epochs=2, U0=torch.rand(15, 2, dtype=torch.float64), warm_start=True)
    assert torch.equal(net(), before) and net.history_ == history and net.n_iter_ == 3
    # refused after the new start was made: the optimiser, the memory check
    with pytest.raises(TypeError, match="optimizer"):
        net.fit(X, epochs=2, optimizer="adam")
    def refusing(groups, lr):  # as an optimiser that takes no parameter groups refuses them
        raise ValueError("this optimiser doesn't support per-parameter options")
    with pytest.raises(ValueError, match="per-parameter"):
        net.fit(X, epochs=2, optimizer=refusing)
    with monkeypatch.context() as m:
        m.setattr(net_module, "free_memory", lambda device: (1, 1))
        with pytest.raises(torch.OutOfMemoryError):
            net.fit(X, epochs=2, U0=torch.rand(15, 2, dtype=torch.float64) + 0.1)
    assert torch.equal(net(), before) and net.history_ == history and net.n_iter_ == 3

    def stop(net, epoch, record):  # a fit ended by an exception keeps the record of the weights it leaves
        if epoch >= 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, epochs=5, lr=0.01, warm_start=True, callback=stop)
    assert net.history_["epoch"] == [0, 1, 2, 3] and net.n_iter_ == 3  # three steps taken, the last one recorded


def test_u0_must_match_the_restarts_and_the_batch_of_graphs():
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=64)
    n = X.shape[0]
    for restarts, Xi, shape in ((3, X, (n, 2)), (3, X, (2, n, 2)), (None, X, (4, n, 2)),
                                (None, torch.stack([X, X]), (n, 2)), (None, X.to_sparse_csr(), (2, n, 2))):
        with pytest.raises(ValueError, match=r"U0 must have shape \(\*restarts, \*X.shape\[:-2\], n, r\)"):
            SymNMFNet(2, n_layers=1, n_restarts=restarts).initialize(Xi, U0=torch.rand(shape, dtype=torch.float64))
    net = SymNMFNet(2, n_layers=1, n_restarts=3).initialize(torch.stack([X, X]), U0=torch.rand(3, 2, n, 2))
    assert net.U0.shape == (3, 2, n, 2)


def test_fit_net_on_two_batch_dimensions_with_restarts(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the batch bookkeeping, on the torch path: the kernels are not its
    Xs = [planted_graph([7, 8], 0.6, 0.1, seed=s)[0] for s in (65, 66, 67, 68)]
    X = torch.stack(Xs).reshape(2, 2, 15, 15)
    for select in ("loss", "consensus", "modularity"):
        result = fit_net(X, 2, random_state=0, n_layers=1, epochs=2, n_restarts=3, polish_iter=0, select=select)
        assert result.U.shape == (2, 2, 15, 2) and result.index.shape == (2, 2)
        errors = np.array(result.relative_errors)  # (R, 2, 2)
        kept = [[errors[result.index[i, j], i, j] for j in range(2)] for i in range(2)]
        assert result.relative_error == kept
        with torch.no_grad():
            U_all = result.net()
        assert torch.equal(result.U, torch.stack([torch.stack([U_all[result.index[i, j], i, j] for j in range(2)])
                                                  for i in range(2)]))
    q = restart_modularity(X, U_all)
    assert q.shape == (3, 2, 2)
    assert torch.equal(q[:, 1, 0], restart_modularity(X[1, 0], U_all[:, 1, 0]))
    # a batch is trained as given: a scale, which is for one graph, is refused rather than dropped
    assert fit_net(X, 2, random_state=0, n_layers=1, epochs=1, polish_iter=0, scale=1.0).scale == 1.0
    with pytest.raises(ValueError, match="scale is for one graph"):
        fit_net(X, 2, random_state=0, n_layers=1, epochs=1, polish_iter=0, scale=25.0)


def test_tol_none_is_the_recipes_and_patience_of_all_epochs_never_stops(monkeypatch):
    import symnmf.net as net_module

    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=69)
    seen = []
    real = net_module.plateaued
    monkeypatch.setattr(net_module, "plateaued",
                        lambda losses, tol, window: seen.append(tol) or real(losses, tol, window))
    SymNMFNet(2, n_layers=1, random_state=0).fit(X, epochs=2, tol=None)
    SymNMFNet(2, n_layers=1, random_state=0, recipe="paper").fit(X, epochs=2, tol=None)
    assert seen == [RECIPES["default"]["tol"]] * 2 + [None] * 2
    # the largest tol stops at the first full window; patience >= epochs never fills one
    assert SymNMFNet(2, n_layers=1, random_state=0).fit(X, epochs=8, tol=1e9, patience=2).n_iter_ < 8
    assert SymNMFNet(2, n_layers=1, random_state=0).fit(X, epochs=8, tol=1e9, patience=8).n_iter_ == 8


def test_numpy_integers_are_integers():
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=70)
    i = np.int64
    net = SymNMFNet(i(2), n_layers=i(2), n_restarts=i(2), random_state=0, init_iter=i(0)).fit(X, epochs=i(2))
    assert net.n_iter_ == 2 and type(net.n_components) is int and type(net.get_config()["n_restarts"]) is int
    result = fit_net(X, i(2), random_state=0, n_layers=i(1), epochs=i(2), n_restarts=i(2), polish_iter=i(3))
    assert result.U.shape == (15, 2) and type(result.settings["n_restarts"]) is int
    for bad in (dict(n_components=True), dict(n_components=2, n_layers=np.bool_(True))):
        with pytest.raises(ValueError, match="positive int"):
            SymNMFNet(**bad)


def test_infinite_settings_are_refused():
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=71)
    inf = float("inf")
    for name, value in (("beta", inf), ("mu", inf), ("lam", inf), ("beta_final", inf), ("init_noise", inf)):
        with pytest.raises(ValueError, match=f"{name} .*must be (a )?finite.*inf"):
            SymNMFNet(2, **{name: value})
    for name in ("lr", "tol"):
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            SymNMFNet(2, n_layers=1).fit(X, epochs=1, **{name: inf})
    with pytest.raises(ValueError, match="lam must be a finite"):
        SymNMFNet(2, lam=True)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_float32_far_from_unit_scale_is_refused_with_the_fix(layout):
    X, labels = planted_graph([7, 8], 0.6, 0.1, seed=72)
    for c, what in ((1e18, "P_i"), (1e-20, "X"), (1e-24, "X"), (1e20, "X")):
        Xc = (X * c).float()
        Xc = Xc.to_sparse_csr() if layout == "sparse" else Xc
        with pytest.raises(ValueError, match=f"{what}.*too far from unit scale.*fit_net"):
            SymNMFNet(2, n_layers=1, random_state=0).fit(Xc, epochs=2)
        with pytest.raises(ValueError, match="too far from unit scale"):
            SymNMFNet(2, n_layers=1, random_state=0, recipe="paper").fit(Xc, epochs=2, lr=1e-3)
        result = fit_net(Xc, 2, random_state=0, n_layers=1, epochs=2, n_restarts=1, polish_iter=0)
        assert bool(torch.isfinite(result.U).all()) and np.isfinite(result.relative_error)


def test_fit_net_checks_its_settings_as_given_before_training(monkeypatch):
    X = random_similarity(12, seed=73) * 5  # a graph fit_net rescales
    monkeypatch.setattr(SymNMFNet, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    for value in (-1, True, 2.5):
        with pytest.raises(ValueError, match=f"polish_iter must be a non-negative int.*got {value!r}"):
            fit_net(X, 2, random_state=0, polish_iter=value)
    with pytest.raises(ValueError, match="lam must be a finite number > 0.*got -1.0"):
        fit_net(X, 2, random_state=0, lam=-1.0)


def test_a_refused_load_into_a_trained_net_keeps_its_state():
    """nn.Module copies every tensor of a matching shape before it reports a missing or unexpected key: the load
    of a deeper net's state changed U0, lam and the shared layers' weights of the net it was refused by."""
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=64)
    net = SymNMFNet(2, n_layers=2, random_state=0).fit(X, epochs=2)
    deeper = SymNMFNet(2, n_layers=3, random_state=1).fit(X, epochs=2)
    before = {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(RuntimeError, match="P.2"):
        net.load_state_dict(deeper.state_dict())
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_an_interrupted_fit_records_the_weights_it_leaves():
    """A fit ended by an exception after the optimiser's step of epoch e left n_iter_ = e and the loss from before
    that step: its history must describe the weights it leaves, as a fit of e + 1 steps does."""
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=65)

    def stop(net, epoch, entry):
        if epoch == 3:
            raise KeyboardInterrupt

    net = SymNMFNet(2, n_layers=2, random_state=0)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, epochs=10, callback=stop, tol=None)
    whole = SymNMFNet(2, n_layers=2, random_state=0).fit(X, epochs=4, tol=None)
    assert net.n_iter_ == whole.n_iter_ == 4 and net.history_["epoch"][-1] == 4
    assert net.history_["loss"][-1] == pytest.approx(float(net.loss(X).sum()), rel=1e-12)
    assert net.history_["loss"][-1] == pytest.approx(whole.history_["loss"][-1], rel=1e-12)


def test_divergence_bad_scales_and_settings_that_are_not_numbers_are_errors():
    """A diverged training returned NaN factors and labels all 0 (or an error about a U0 the caller never passed);
    scale was not checked (0 divided by zero, -2 blamed X's entries); a setting given as text or a complex number
    failed in a comparison with no argument named; consensus kept restart 0 of all-NaN restarts."""
    X, _ = planted_graph([7, 8], 0.6, 0.1, seed=66)
    for restarts, polish in ((1, 0), (1, 20), (3, 20)):
        with pytest.raises(FloatingPointError, match="diverged"):
            fit_net(X, 2, random_state=0, lr=1e30, n_restarts=restarts, polish_iter=polish, epochs=10, tol=None,
                    dtype=torch.float32)
    for scale in (0, -2.0, float("inf"), float("nan"), "2", True):
        with pytest.raises(ValueError, match="scale must be"):
            fit_net(X, 2, random_state=0, epochs=1, scale=scale)
    with pytest.raises(ValueError, match="lam must be"):
        SymNMFNet(2, lam=1 + 0j)
    with pytest.raises(ValueError, match="beta"):
        SymNMFNet(2, beta="1")
    with pytest.raises(ValueError, match="lr must be"):
        SymNMFNet(2, n_layers=2).fit(X, epochs=1, lr="0.1")
    with pytest.raises(ValueError, match="tol must be"):
        SymNMFNet(2, n_layers=2).fit(X, epochs=1, tol="1e-3")
    SymNMFNet(2, n_layers=2).fit(X, epochs=1, lr=torch.tensor(0.01))  # a one-element tensor is a number
    with pytest.raises(ValueError, match="NaN or infinite"):
        select_restart(torch.full((3, 15, 2), float("nan")), "consensus")
