"""The one fit path (symnmf.fitting): thread policy, progress bars, defaults and checks done once."""
import numpy as np
import pytest
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


def test_all_zero_graphs_are_refused():
    with pytest.raises(ValueError, match="all zero"):
        build_affinity(np.zeros((5, 5)), "precomputed")
    with pytest.raises(ValueError, match="all zero"):
        build_affinity(np.zeros((8, 3)), "nearest_neighbors", metric="cosine")


@pytest.mark.parametrize("solver", ["hals", "anls"])
def test_several_starts_keep_the_highest_modularity(solver):
    """n_init: start 0 is the one-start fit's start; the kept start has the highest modularity of the starts'
    labels, and is the fit from that start alone."""
    from symnmf.metrics import modularity
    from symnmf.solvers import SOLVERS as FUNCTIONS

    A, _ = blocks([13, 17, 19, 11], 4)
    A = A + 0.05  # the blocks joined weakly: starts end in different clusterings
    X = build_affinity(A, "precomputed", device="cpu")
    fits = fit_affinity(X, 4, solver, random_state=3, n_init=5, max_iter=60)
    assert len(fits.start_modularity) == 5 and fits.start_modularity[fits.start] == max(fits.start_modularity)
    assert fits.start_modularity[fits.start] == pytest.approx(modularity(X, fits.labels, 4), rel=1e-12)
    starts = fitting.init_factor(X, 4, fitting.make_generator(3), batch_shape=(5,))
    alone = FUNCTIONS[solver](X, starts[fits.start], max_iter=60)
    assert torch.allclose(fits.U, alone.U, rtol=1e-10, atol=1e-12) and fits.n_iter == alone.n_iter
    first = fit_affinity(X, 4, solver, random_state=3, max_iter=60)
    assert torch.equal(first.U, FUNCTIONS[solver](X, starts[0], max_iter=60).U)
    assert first.start == 0 and first.start_modularity == []


def test_several_starts_refusals():
    X = build_affinity(blocks([9, 11], 0)[0], "precomputed", device="cpu")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_init must be a positive int"):
            fit_affinity(X, 2, "hals", n_init=bad)
    with pytest.raises(ValueError, match="n_restarts"):
        fit_affinity(X, 2, "net", n_init=2)
