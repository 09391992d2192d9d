"""SymNMFNet: Algorithm-1 initialisation, training, the lam bound, dense/sparse/batched X, save/load.

Shapes stay small: under TRITON_INTERPRET=1 every block runs through Triton's interpreter.
"""
import numpy as np
import pytest
import torch

from symnmf.metrics import accuracy
from symnmf.net import SymNMFNet, kuang_init, sparse_factor


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
    net = SymNMFNet(r, n_layers=L, random_state=0).initialize(X)
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
        net = SymNMFNet(2, n_layers=1, random_state=5).initialize(Xi)
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
    net = SymNMFNet(3, n_layers=3, lam=1e-6, random_state=4)
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
    net = SymNMFNet(r, n_layers=L, beta=beta, mu=mu, random_state=6).initialize(X)
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
    net = SymNMFNet(r, n_layers=L, beta=beta, mu=mu, random_state=20).initialize(X)
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
        net = SymNMFNet(3, n_layers=3, beta=0.01, random_state=8).initialize(Xi)
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


def test_batch_of_graphs_equals_separate_nets():
    n, r = 19, 2
    X = random_similarity(n, seed=9, batch=(2,), dtype=torch.float32)
    U0 = kuang_init(X, r, generator=torch.Generator().manual_seed(10))
    assert U0.shape == (2, n, r)
    batched = SymNMFNet(r, n_layers=2).fit(X, epochs=3, lr=0.01, U0=U0)
    assert batched.lam.shape == (2,) and len(batched.history_["relative_error"][0]) == 2
    for b in range(2):
        single = SymNMFNet(r, n_layers=2).fit(X[b], epochs=3, lr=0.01, U0=U0[b])
        assert rel(batched()[b], single()) < 1e-4
        assert float(batched.lam[b]) == pytest.approx(float(single.lam), rel=1e-5)
        assert batched.history_["relative_error"][-1][b] == pytest.approx(single.history_["relative_error"][-1], rel=1e-4)


def test_restarts_on_one_sparse_graph():
    X, _ = planted_graph([8, 9, 12], 0.6, 0.1, seed=11, dtype=torch.float32)
    Xs = X.to_sparse_csr()
    net = SymNMFNet(3, n_layers=2, n_restarts=3, random_state=12).fit(Xs, epochs=2, lr=0.01)
    U = net()
    assert U.shape == (3, X.shape[0], 3) and net.lam.shape == (3,)
    assert rel(U[0], U[1]) > 1e-3  # different starts
    for k in range(3):
        single = SymNMFNet(3, n_layers=2).fit(X, epochs=2, lr=0.01, U0=net.U0[k])
        assert rel(U[k], single()) < 1e-4
    assert net.labels().shape == (3, X.shape[0])


def test_save_and_load_round_trip(tmp_path):
    X = random_similarity(17, seed=13, dtype=torch.float32).to_sparse_csr()
    net = SymNMFNet(2, n_layers=2, beta=1e-3, mu=1e-4, n_restarts=2, random_state=14).fit(X, epochs=2, lr=0.01)
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
    small = SymNMFNet(r, n_layers=3, beta=0.0).fit(X, epochs=6, lr=0.05, relative_lr=True, U0=U0)
    large = SymNMFNet(r, n_layers=3, beta=0.0).fit(c * X, epochs=6, lr=0.05, relative_lr=True, U0=c ** 0.5 * U0)
    with torch.no_grad():
        assert rel(small(), small.U0) > 1e-3  # training moved the factor
        assert rel(large(), c ** 0.5 * small()) < 1e-6
        assert rel(large.lam, c * small.lam) < 1e-9


def test_recovers_planted_clusters():
    X, labels = planted_graph([19, 23, 27], 0.45, 0.04, seed=15, dtype=torch.float32)
    net = SymNMFNet(3, n_layers=6, random_state=16).fit(X, epochs=30, lr=0.1, relative_lr=True)
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
    net = SymNMFNet(2, n_layers=1).initialize(X)
    with pytest.raises(ValueError, match="does not match"):
        net.fit(random_similarity(12, seed=18), epochs=1, warm_start=True)
    with pytest.raises(ValueError, match="U0"):
        SymNMFNet(2).initialize(X, U0=-torch.ones(11, 2))


def test_early_stop_progress_bar_and_log_every(capsys):
    X = random_similarity(13, seed=21, dtype=torch.float32)
    net = SymNMFNet(2, n_layers=1, random_state=22).fit(X, epochs=50, lr=0.01, tol=1.0, progress=True)
    assert net.n_iter_ == 2 and net.history_["epoch"] == [0, 1, 2]  # the loss changes by less than its own size
    net.fit(X, epochs=5, lr=0.01, log_every=2, verbose=True, progress=False)
    assert net.history_["epoch"] == [0, 2, 4, 5]
    assert "epoch 4" in capsys.readouterr().out
