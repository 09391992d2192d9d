"""The one fit path (symnmf.fitting): thread policy, progress bars, defaults and checks done once."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from symnmf import fitting
from symnmf.fitting import build_affinity, default_threads, fit_affinity, thread_limit


def blocks(sizes, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    A = rng.random((len(labels), len(labels))) * (labels[:, None] == labels[None, :])
    A = A + A.T
    np.fill_diagonal(A, 0)
    return A, labels


def test_thread_policy():
    assert default_threads(1000, 10, "cpu") == 1
    assert default_threads(fitting.SMALL_PROBLEM, 1, "cpu") is None
    assert default_threads(100, 2, "cuda") is None
    # SymNMF-Net's restarts train side by side: every op works on all of them
    assert default_threads(20000, 8, "cpu") == 1 and default_threads(20000, 8, "cpu", problems=4) is None
    assert fitting._net_restarts("default", None) == fitting._net_restarts("default", {"n_restarts": None}) == 4
    assert fitting._net_restarts("paper", None) == 1 and fitting._net_restarts("default", {"n_restarts": 2}) == 2
    before = torch.get_num_threads()
    with thread_limit(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with thread_limit(None):
        assert torch.get_num_threads() == before


def test_fit_runs_on_the_policys_threads(monkeypatch):
    A = build_affinity(blocks([9, 11], 0)[0], "precomputed", device="cpu")
    seen = []
    original = fitting._fit_solver

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(fitting, "_fit_solver", spy)
    before = torch.get_num_threads()
    fit_affinity(A, 2, "hals", random_state=0, max_iter=3)
    assert seen == [1] and torch.get_num_threads() == before


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    A = build_affinity(blocks([9, 11], 1)[0], "precomputed", device="cpu")
    fit_affinity(A, 2, "hals", random_state=0, max_iter=5)
    assert capsys.readouterr().err == ""  # pytest's stderr is no terminal
    fit_affinity(A, 2, "hals", random_state=0, max_iter=5, progress=True)
    assert "SymHALS" in capsys.readouterr().err


def test_defaults_and_result():
    A, labels = blocks([10, 12, 14], 2)
    X = build_affinity(A, "precomputed", device="cpu")
    assert X.dtype == torch.float64
    assert build_affinity(A.astype(np.float32), "precomputed", device="cpu").dtype == torch.float32
    assert build_affinity(np.rint(A * 10).astype(np.int64), "precomputed", device="cpu").dtype == torch.float64
    result = fit_affinity(X, 3, "anls", random_state=0)
    assert result.n_iter <= fitting.DEFAULT_MAX_ITER["anls"] and result.converged
    assert result.labels.dtype == np.int64 and result.labels.shape == (36,)
    assert result.rel_error == pytest.approx(result.reconstruction_err**2 / np.sum(A**2))
    with pytest.raises(ValueError, match="solver must be one of"):
        fit_affinity(X, 3, "sgd")
    with pytest.raises(ValueError, match="exceeds the number of nodes"):
        fit_affinity(X, 37, "hals")
    with pytest.raises(TypeError, match="A must be the torch tensor that build_affinity returns, got ndarray"):
        fit_affinity(A, 3, "hals")


def test_all_zero_graphs_are_refused():
    with pytest.raises(ValueError, match="all zero"):
        build_affinity(np.zeros((5, 5)), "precomputed")
    with pytest.raises(ValueError, match="all zero"):
        build_affinity(np.zeros((8, 3)), "nearest_neighbors", metric="cosine")


@pytest.mark.parametrize("solver", ["hals", "anls"])
def test_several_starts_keep_the_highest_modularity(solver, monkeypatch):
    """n_init: start 0 is the one-start fit's start; the kept start has the highest modularity of the starts'
    labels, and is the fit from that start alone."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the rule that keeps a start, on the CPU's kernels
    from symnmf.metrics import modularity
    from symnmf.solvers import SOLVERS as FUNCTIONS

    A, _ = blocks([13, 17, 19, 11], 4)
    A = A + 0.05  # the blocks joined weakly: starts end in different clusterings
    X = build_affinity(A, "precomputed", device="cpu")
    fits = fit_affinity(X, 4, solver, random_state=3, n_init=5, max_iter=60)
    assert len(fits.start_modularity) == 5 and fits.start_modularity[fits.start] == max(fits.start_modularity)
    assert fits.start_modularity[fits.start] == pytest.approx(modularity(X, fits.labels, 4), rel=1e-12)
    # X is not a normalised graph: the fits run on X / scale (similarity_scale) and scale U back
    assert fits.scale == pytest.approx(torch.linalg.eigvalsh(X)[-1].item(), rel=1e-6)
    X_fit, root = X / fits.scale, fits.scale**0.5
    starts = fitting.init_factor(X_fit, 4, fitting.make_generator(3), batch_shape=(5,))
    alone = FUNCTIONS[solver](X_fit, starts[fits.start], max_iter=60)
    assert torch.allclose(fits.U, alone.U * root, rtol=1e-10, atol=1e-12) and fits.n_iter == alone.n_iter
    first = fit_affinity(X, 4, solver, random_state=3, max_iter=60)
    assert torch.equal(first.U, FUNCTIONS[solver](X_fit, starts[0], max_iter=60).U * root)
    assert first.start == 0 and first.start_modularity == []


def test_several_starts_refusals():
    X = build_affinity(blocks([9, 11], 0)[0], "precomputed", device="cpu")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_init must be a positive int"):
            fit_affinity(X, 2, "hals", n_init=bad)
    with pytest.raises(ValueError, match="n_restarts"):
        fit_affinity(X, 2, "net", n_init=2)


@pytest.mark.parametrize("solver", ["hals", "anls", "pgd", "newton", "admm", "net"])
def test_a_fit_does_not_depend_on_the_scale_of_the_similarity(solver, monkeypatch):
    """fit_affinity(c A) = sqrt(c) fit_affinity(A): the solvers see every A at the scale of a normalised
    graph (largest eigenvalue 1), whatever units its weights come in, and float32 neither over- nor
    underflows at c = 1e-30 or 1e30, nor at 2^-130, where A's entries are subnormal and 1 / ||A||_2 is beyond
    float32's range. On the torch path: the rule is the fit path's, not a kernel's."""
    from symnmf_kernels.ops import _common

    monkeypatch.setattr(_common, "interpreting", lambda: False)
    A, _ = blocks([13, 17, 19, 11], 4)
    A = A + 0.05
    options = {"max_iter": 30} if solver != "net" else {"max_iter": 15, "net_options": {"n_restarts": 2}}
    base = fit_affinity(build_affinity(A, "precomputed", device="cpu"), 4, solver, random_state=1, **options)
    assert base.scale == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-6)
    for c in (1e-3, 1e3):
        fit = fit_affinity(build_affinity(A * c, "precomputed", device="cpu"), 4, solver, random_state=1, **options)
        assert fit.scale == pytest.approx(c * base.scale, rel=1e-9)
        assert np.array_equal(fit.labels, base.labels)
        assert fit.rel_error == pytest.approx(base.rel_error, rel=1e-9, abs=1e-12)
        assert fit.reconstruction_err == pytest.approx(c * base.reconstruction_err, rel=1e-9)
        assert torch.allclose(fit.U, base.U * c**0.5, rtol=1e-7, atol=1e-9 * c**0.5)
    A32 = A.astype(np.float32)
    small = fit_affinity(build_affinity(A32, "precomputed", device="cpu"), 4, solver, random_state=1, **options)
    for c in (1e-30, 1e30, 2.0**-130):
        fit = fit_affinity(build_affinity(A32 * np.float32(c), "precomputed", device="cpu"), 4, solver,
                           random_state=1, **options)
        assert bool(torch.isfinite(fit.U).all()) and fit.U.dtype == torch.float32
        assert fit.rel_error == pytest.approx(small.rel_error, rel=1e-3)


def test_a_normalised_graph_is_factorised_as_it_is():
    """A graph normalised as `similarity_graph` builds them (largest eigenvalue 1) is not rescaled: its fit is
    the solver's own on it, bit for bit."""
    from symnmf import similarity_graph
    from symnmf.solvers import SOLVERS as FUNCTIONS

    features = np.random.default_rng(0).normal(size=(90, 3)) + np.repeat(np.eye(3) * 4, 30, axis=0)
    X = build_affinity(similarity_graph(features), "precomputed", device="cpu")
    fit = fit_affinity(X, 3, "hals", random_state=0, max_iter=40)
    assert fit.scale == 1.0
    start = fitting.init_factor(X, 3, fitting.make_generator(0))
    assert torch.equal(fit.U, FUNCTIONS["hals"](X, start, max_iter=40).U)


def shuffled_sparse_blocks(n_blocks, size, seed):
    """A sparse graph of n_blocks dense-ish blocks, its nodes in random order (a renumbering has locality to find)."""
    A, labels = blocks([size] * n_blocks, seed)
    order = np.random.default_rng(seed + 1).permutation(len(labels))
    return build_affinity(A[order][:, order], "precomputed", device="cpu").to_sparse_csr(), labels[order]


@pytest.mark.parametrize("solver", ["hals", "net", "anls", "hals-starts"])
def test_a_renumbered_fit_ends_where_the_fit_without_it_does(solver, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the renumbering and its inverse, on the CPU's kernels
    A, _ = shuffled_sparse_blocks(3, 40, 0)
    kwargs = dict(random_state=3, max_iter=4 if solver == "net" else 40, tol=0.0)
    if solver == "hals-starts":  # several starts side by side, the one of highest modularity kept
        solver, kwargs["n_init"] = "hals", 3
    if solver == "net":  # the spectral start: its random draws are renumbered too
        kwargs["net_options"] = {"n_restarts": 2, "polish_iter": 3, "init": "spectral", "init_noise": 0.1}
    plain = fit_affinity(A, 3, solver, node_order=None, **kwargs)
    renumbered = fit_affinity(A, 3, solver, node_order="rcm", **kwargs)
    assert plain.node_order is None and renumbered.node_order == "rcm" and renumbered.order_seconds > 0
    # the start drawn in A's numbering, the factor mapped back: the same fit up to rounding
    assert torch.allclose(renumbered.U, plain.U, rtol=1e-6, atol=1e-8)
    assert np.array_equal(renumbered.labels, plain.labels)
    assert renumbered.rel_error == pytest.approx(plain.rel_error, rel=1e-9)
    assert renumbered.modularity == pytest.approx(plain.modularity, rel=1e-9)
    assert renumbered.start == plain.start
    if solver == "net":  # the trained net's node-indexed state is in A's numbering too
        assert torch.allclose(renumbered.net.U0, plain.net.U0, rtol=1e-6, atol=1e-8)
        for P_renumbered, P_plain in zip(renumbered.net.P, plain.net.P):
            assert torch.allclose(P_renumbered, P_plain, rtol=1e-5, atol=1e-7)


def test_starts_at_one_partition_keep_the_first_whatever_the_rounding(monkeypatch):
    """float32: the starts end at one partition, whose modularity the renumbered graph rounds differently in its
    last bits; the first start is kept either way, so the fits agree (they kept starts 0 and 1 before)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 120)
    A = np.triu(rng.random((120, 120)) < np.where(labels[:, None] == labels[None], 0.4, 0.03), 1).astype(float)
    A = A + A.T
    A *= rng.random((120, 120))
    A = (A + A.T) / 2
    d = np.maximum(A.sum(1), 1e-12)
    X = build_affinity(sp.csr_matrix(A / np.sqrt(d[:, None] * d[None])), "precomputed", device="cpu",
                       dtype=torch.float32)
    plain = fit_affinity(X, 4, "hals", random_state=3, n_init=3, node_order=None)
    renumbered = fit_affinity(X, 4, "hals", random_state=3, n_init=3, node_order="degree")
    assert plain.start == renumbered.start == 0 and np.array_equal(plain.labels, renumbered.labels)
    assert max(plain.start_modularity) - min(plain.start_modularity) < 1e-9


def test_node_order_rules(monkeypatch):
    A, _ = shuffled_sparse_blocks(2, 30, 1)
    dense = A.to_dense()
    assert fitting.resolve_node_order("auto", A) is None  # below AUTO_ORDER_MIN_NODES
    monkeypatch.setattr(fitting, "AUTO_ORDER_MIN_NODES", 60)
    assert fitting.resolve_node_order("auto", A) == "rcm"
    monkeypatch.setattr(fitting, "_available_memory", lambda: 3 * fitting._graph_bytes(A))
    assert fitting.resolve_node_order("auto", A) is None  # no room for the copies the renumbering makes
    assert fitting.resolve_node_order("rcm", A) == "rcm"  # asked for: done
    monkeypatch.undo()
    monkeypatch.setattr(fitting, "AUTO_ORDER_MIN_NODES", 60)
    assert fitting.fit_affinity(A, 2, "hals", random_state=0, max_iter=5).node_order == "rcm"
    assert fitting.resolve_node_order("auto", dense) is None  # a dense similarity keeps its numbering
    assert fitting.resolve_node_order("degree", A) == "degree" and fitting.resolve_node_order(None, dense) is None
    with pytest.raises(ValueError, match="dense similarity gains nothing"):
        fitting.resolve_node_order("rcm", dense)
    with pytest.raises(ValueError, match="node_order must be one of"):
        fit_affinity(A, 2, "hals", node_order="cuthill")


def test_a_start_drawn_for_a_renumbered_graph():
    from symnmf.solvers.base import init_factor, make_generator, renumbered_start

    A, _ = shuffled_sparse_blocks(2, 30, 2)
    perm = torch.randperm(60)
    plain = init_factor(A, 3, make_generator(5), batch_shape=(2,))
    with renumbered_start(perm):
        renumbered = init_factor(A, 3, make_generator(5), batch_shape=(2,))
    assert torch.equal(renumbered, plain[:, perm])
    with renumbered_start(torch.arange(7)), pytest.raises(ValueError, match="renumbering has 7 nodes"):
        init_factor(A, 3, make_generator(5))


def test_a_precomputed_similarity_may_be_a_nested_list():
    A = [[0.0, 1.0, 0.5], [1.0, 0.0, 0.25], [0.5, 0.25, 0.0]]
    assert torch.equal(build_affinity(A, "precomputed", device="cpu"),
                       build_affinity(np.array(A), "precomputed", device="cpu"))
    with pytest.raises(ValueError, match="square"):
        build_affinity([[1.0, 0.5]], "precomputed")


@pytest.mark.parametrize("solver", ["hals", "net"])
def test_settings_are_refused_as_given_before_the_fit(solver, monkeypatch):
    A = build_affinity(blocks([9, 11], 0)[0] * 5, "precomputed", device="cpu")  # a graph the fit rescales
    assert fitting.similarity_scale(A) != 1.0
    monkeypatch.setattr(fitting, "_fit_net", lambda *a, **k: pytest.fail("fitted before refusing"))
    monkeypatch.setattr(fitting, "_fit_solver", lambda *a, **k: pytest.fail("fitted before refusing"))
    for bad, match in ((dict(threads=-3), "threads must be"), (dict(threads="many"), "threads must be"),
                       (dict(max_iter=-1), "max_iter must be"), (dict(max_iter=2.5), "max_iter must be"),
                       (dict(lam=-1.0), r"lam must be a positive finite float, got -1.0"),
                       (dict(lam=float("inf")), "lam must be a positive finite float, got inf")):
        with pytest.raises(ValueError, match=match):
            fit_affinity(A, 2, solver, random_state=0, **bad)
    if solver == "net":
        with pytest.raises(ValueError, match=r"net_options\['lam'\] must be a positive finite float, got -2.0"):
            fit_affinity(A, 2, solver, random_state=0, net_options={"lam": -2.0})


def test_zero_threads_and_numpy_integers_are_accepted():
    A = build_affinity(blocks([9, 11], 0)[0], "precomputed", device="cpu")
    base = fit_affinity(A, 2, "hals", random_state=0, max_iter=5)
    same = fit_affinity(A, 2, "hals", random_state=0, max_iter=np.int64(5), threads=0)
    assert torch.equal(base.U, same.U) and same.n_iter == base.n_iter


def _refused_refits():
    """(estimator fitted once, a refit it refuses after its input check has run) for each estimator."""
    from symnmf import SymNMF
    from symnmf.alternating import AlternatingNMF
    from symnmf.neural_nmf import NeuralNMF
    from symnmf.specnet2 import SpecNet2

    rng = np.random.default_rng(0)
    X = rng.random((30, 5))
    W = rng.random((30, 30))
    W = W + W.T
    yield SymNMF(3, solver="hals", max_iter=5).fit(X), lambda m: m.fit(rng.random((2, 2)))  # rank 3 > 2 samples
    yield NeuralNMF([3], max_iter=2, n_init_iter=2, random_state=0).fit(X), lambda m: m.fit(rng.random((30, 2)))
    yield (AlternatingNMF(3, max_iter=3, inner_iter=2, random_state=0).fit(X),
           lambda m: m.set_params(max_iter=0).fit(X, init_components=np.zeros((3, 5))))
    # a refit whose network collapses to rank 2 (two distinct feature rows) is refused after training
    yield (SpecNet2(3, hidden=(8,), epochs=2, batch_size=None, random_state=0, device="cpu").fit(X),
           lambda m: m.set_params(affinity="precomputed", n_oversamples=0).fit(W, features=np.repeat(np.eye(2), 15, 0)))


def test_a_refused_refit_leaves_the_estimator_as_it_was(monkeypatch):
    """A refit refused after it had set some attributes (n_features_in_ by the input check, a history by the
    training) left the previous fit's factors beside the refused input's width: transform of the fitted data
    then failed. Every field is now the previous fit's, the same objects."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for model, refit in _refused_refits():
        before = dict(vars(model))
        with pytest.raises((ValueError, FloatingPointError)):
            refit(model)
        after = vars(model)
        changed = sorted(k for k in before.keys() | after.keys()
                         if k not in before or k not in after or after[k] is not before[k])
        assert changed in ([], ["max_iter"], ["affinity", "n_oversamples"]), (type(model).__name__, changed)


def test_the_nets_epochs_and_tol_may_come_in_net_options():
    """epochs and tol are recipe keys, which net_options documents, but fit_affinity passed its own as well: a
    TypeError (multiple values for 'epochs'). max_iter and tol set them where given; two values are refused."""
    A = build_affinity(blocks([10, 12], seed=3)[0], "precomputed")
    options = {"n_restarts": 1, "polish_iter": 0}
    assert fit_affinity(A, 2, "net", random_state=0, net_options={**options, "epochs": 3}).n_iter == 3
    assert fit_affinity(A, 2, "net", random_state=0, net_options={**options, "tol": 0.1, "epochs": 3}).n_iter <= 3
    with pytest.raises(ValueError, match="epochs is given twice"):
        fit_affinity(A, 2, "net", random_state=0, max_iter=4, net_options={**options, "epochs": 3})
