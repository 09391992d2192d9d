"""NeuralNMF: the layers, their gradients, the estimator and its baselines.

The model runs the ops' torch path here (the kernel itself is tested in tests/test_nnls.py under the
interpreter, which would make a training loop far too slow).
"""
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import symnmf_kernels as sk
from symnmf.neural_nmf import (
    RIDGE, NeuralNMF, _forward_with_errors, _gram_nnls, _ops_nnls, _reconstruction_grads, deep_nmf, forward,
    hierarchical_nmf, nnls_layer, relative_errors,
)
from symnmf_kernels.ops import _common
from conftest import rel_err


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.setattr(_common, "interpreting", lambda: False)


def rank9(n=60, d=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 9)) @ rng.random((9, d))


def two_groups(n_per=20, d=24, seed=0):
    """Two groups of samples on disjoint halves of the features, plus a little noise: (X, y)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((2 * n_per, d))
    X[:n_per, : d // 2] = rng.random((n_per, d // 2)) + 0.5
    X[n_per:, d // 2:] = rng.random((n_per, d // 2)) + 0.5
    return X + 0.01 * rng.random(X.shape), np.repeat([0, 1], n_per)


def test_layer_is_the_nnls_solution():
    import scipy.optimize

    rng = np.random.default_rng(1)
    S_prev, A = rng.random((25, 7)), rng.random((7, 3))
    S = nnls_layer(torch.tensor(S_prev), torch.tensor(A)).numpy()
    expected = np.stack([scipy.optimize.nnls(A, s)[0] for s in S_prev])
    assert rel_err(S, expected) <= 1e-8  # the relative ridge 1e-12 on A^T A is all that differs


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("m,k_prev,k", [(1, 3, 1), (37, 11, 5), (90, 84, 9)])
def test_one_node_layer_matches_the_ops(dtype, tol, m, k_prev, k):
    """The layer's single autograd node (the CPU kernel) against gram + nnls, forward and gradients,
    cold and warm-started from a nearby solution."""
    if not _ops_nnls._native_runs(torch.empty(0)):
        pytest.skip("the extension's CPU NNLS kernel is not built")
    gen = torch.Generator().manual_seed(m + k)
    S_prev = torch.rand(m, k_prev, generator=gen, dtype=dtype)
    A = torch.rand(k_prev, k, generator=gen, dtype=dtype).requires_grad_()
    C = (S_prev @ A).detach().requires_grad_()
    upstream = torch.randn(m, k, generator=gen, dtype=dtype)
    with torch.no_grad():
        warm = _gram_nnls(A * 1.01, S_prev @ A, None)
    for x0 in (None, warm):
        S = _gram_nnls(A, C, x0)
        assert S.grad_fn is not None and type(S.grad_fn).__name__.startswith("_GramNnlsCpu")
        dA, dC = torch.autograd.grad((S * upstream).sum(), (A, C))
        lam = RIDGE * (A.detach() ** 2).sum() / k
        S_ops = sk.nnls(sk.gram(A, lam), C, x0)
        dA_ops, dC_ops = torch.autograd.grad((S_ops * upstream).sum(), (A, C))
        assert rel_err(S, S_ops) <= tol
        assert rel_err(dC, dC_ops) <= tol
        assert rel_err(dA, dA_ops) <= tol


def test_one_node_layer_keeps_nan():
    if not _ops_nnls._native_runs(torch.empty(0)):
        pytest.skip("the extension's CPU NNLS kernel is not built")
    A = torch.rand(6, 3, dtype=torch.float64)
    C = torch.rand(5, 3, dtype=torch.float64)
    C[2, 1] = float("nan")
    S = _gram_nnls(A, C, None)
    assert torch.isnan(S[2]).all() and torch.isfinite(S[[0, 1, 3, 4]]).all()
    A[0, 0] = float("inf")
    assert torch.isnan(_gram_nnls(A, C, None)).all()


@pytest.mark.parametrize("path", ["native", "torch", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("ranks,labelled", [([5], False), ([9, 4, 2], False), ([7, 3], True), ([6, 5, 3, 1], True)])
def test_written_out_backward_matches_autograd(monkeypatch, path, ranks, labelled):
    """The reconstruction step without autograd against autograd through the layers: loss and gradients,
    cold and warm-started, on the CPU kernel, on the ops' torch path, and on CUDA (the Triton kernels)."""
    if path == "native" and not _ops_nnls._native_runs(torch.empty(0)):
        pytest.skip("the extension's CPU NNLS kernel is not built")
    if path == "torch":
        monkeypatch.setattr(_ops_nnls, "_native_runs", lambda C: False)
    device = "cuda" if path == "cuda" else "cpu"
    gen = torch.Generator().manual_seed(len(ranks))
    X = torch.rand(31, 13, generator=gen, dtype=torch.float64).to(device)
    sizes = [X.shape[1], *ranks]
    As = [torch.rand(sizes[i], k, generator=gen, dtype=torch.float64).to(device) for i, k in enumerate(ranks)]
    X_norm2 = X.pow(2).sum()
    Y = torch.nn.functional.one_hot(torch.randint(0, 3, (31,), generator=gen), 3).to(torch.float64).to(device)
    mask = (torch.rand(31, generator=gen) < 0.6).to(device)
    model = NeuralNMF(ranks, label_weight=0.7)

    def extra(S):
        B = model._classifier(S, Y, mask)
        residual = Y[mask] - S[mask] @ B.mT
        dS = torch.zeros_like(S)
        dS[mask] = (-2 * 0.7 / Y[mask].pow(2).sum()) * (residual @ B)
        return 0.7 * residual.pow(2).sum() / Y[mask].pow(2).sum(), dS

    warm = None
    for _ in range(2):
        Ss, e2, value, grads = _reconstruction_grads(X, X_norm2, As, warm, extra if labelled else None)
        leaves = [A.clone().requires_grad_() for A in As]
        Ss_ag, errors2 = _forward_with_errors(X, X_norm2, leaves, warm)
        loss = errors2[-1] / X_norm2
        if labelled:
            B = model._classifier(Ss_ag[-1].detach(), Y, mask)
            loss = loss + 0.7 * (Y[mask] - Ss_ag[-1][mask] @ B.mT).pow(2).sum() / Y[mask].pow(2).sum()
        expected = torch.autograd.grad(loss, leaves)
        assert rel_err(e2, errors2[-1].detach()) <= 1e-12
        assert abs(float(value) - float(loss.detach())) <= 1e-12 * abs(float(loss.detach()))
        assert any(bool((S == 0).any()) for S in Ss)  # an active set to differentiate through
        for S, S_ag in zip(Ss, Ss_ag):
            assert rel_err(S, S_ag.detach()) <= 1e-12
        for g, g_ag in zip(grads, expected):
            assert torch.isfinite(g).all() and rel_err(g, g_ag) <= 1e-10
        warm = Ss
        As = [(A * 1.02).clamp_min(0) for A in As]


def test_expanded_errors_equal_the_residuals():
    X = torch.tensor(rank9())
    gen = torch.Generator().manual_seed(0)
    As = [torch.rand(30, 6, generator=gen, dtype=torch.float64), torch.rand(6, 3, generator=gen, dtype=torch.float64)]
    Ss, errors2 = _forward_with_errors(X, X.pow(2).sum(), As, None)
    direct = relative_errors(X, As, Ss)
    for e2, e in zip(errors2, direct):
        assert abs(float(e2.sqrt() / X.norm()) - e) <= 1e-10 * max(e, 1e-3)
    for S, S_plain in zip(Ss, forward(X, As)):
        assert rel_err(S, S_plain) <= 1e-12


def test_gradient_through_the_layers_matches_finite_differences():
    """The loss of two layers differentiated through both NNLS active sets."""
    gen = torch.Generator().manual_seed(3)
    X = torch.rand(12, 7, generator=gen, dtype=torch.float64)
    A1 = torch.rand(7, 4, generator=gen, dtype=torch.float64).requires_grad_()
    A2 = torch.rand(4, 2, generator=gen, dtype=torch.float64).requires_grad_()

    def loss(A1, A2):
        Ss, errors2 = _forward_with_errors(X, X.pow(2).sum(), [A1, A2], None)
        return errors2[0] + 2 * errors2[1] + Ss[1].sum()

    with torch.no_grad():
        Ss = forward(X, [A1, A2])
        assert int((Ss[0] == 0).sum()) > 0  # an active set is there to differentiate through
    assert torch.autograd.gradcheck(loss, (A1, A2))


def test_unsupervised_fit_improves_on_hierarchical_nmf():
    X = rank9()
    model = NeuralNMF([9, 4, 2], max_iter=60, random_state=0).fit(X)
    Xt = torch.tensor(X)
    As, _ = hierarchical_nmf(Xt, [9, 4, 2], 100, torch.Generator().manual_seed(0))
    hier = relative_errors(Xt, As, forward(Xt, As))
    assert model.relative_errors_[-1] <= 0.95 * hier[-1]  # measured 0.44 hier[-1] at 60 steps
    # No model with k_3 = 2 beats the truncated SVD at rank 2: the error cannot be too good to be true.
    s = np.linalg.svd(X, compute_uv=False)
    assert model.relative_errors_[-1] >= np.linalg.norm(s[2:]) / np.linalg.norm(s) - 1e-9
    assert model.history_["loss"][-1] < model.history_["loss"][0]
    assert len(model.history_["loss"]) == len(model.history_["relative_error"]) == 60 == model.n_iter_
    # the reconstruction loss is the last layer's squared relative error, step by step
    np.testing.assert_allclose(np.square(model.history_["relative_error"]), model.history_["loss"], rtol=1e-9)
    untrained = NeuralNMF([9, 4, 2], max_iter=0, random_state=0).fit(X)
    assert untrained.history_ == {"loss": [], "relative_error": []} and untrained.n_iter_ == 0
    with pytest.raises(NotFittedError, match="fitted without labels"):  # fitted, but with no classifier
        model.predict(X)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        NeuralNMF([9, 4, 2]).predict(X)


def test_attributes_are_consistent():
    X = rank9(seed=2)
    model = NeuralNMF([5, 3], loss="energy", max_iter=10, random_state=1).fit(X)
    A1, A2 = model.A_
    S1, S2 = model.S_
    assert A1.shape == (30, 5) and A2.shape == (5, 3) and S1.shape == (60, 5) and S2.shape == (60, 3)
    assert (A1 >= 0).all() and (A2 >= 0).all() and (S1 >= 0).all() and (S2 >= 0).all()
    norm = np.linalg.norm(X)
    expected = [np.linalg.norm(X - S1 @ A1.T) / norm, np.linalg.norm(X - S2 @ (A1 @ A2).T) / norm]
    assert np.allclose(model.relative_errors_, expected, rtol=1e-10, atol=0)
    assert rel_err(model.transform(X), S2) <= 1e-12
    layers = model.transform(X, all_layers=True)
    assert rel_err(layers[0], S1) <= 1e-12 and rel_err(layers[1], S2) <= 1e-12


@pytest.mark.parametrize("loss", ["reconstruction", "layers", "energy"])
def test_each_loss_trains(loss):
    X = rank9(seed=3)
    model = NeuralNMF([6, 2], loss=loss, max_iter=15, init="random", random_state=0).fit(X)
    assert np.isfinite(model.history_["loss"]).all()
    assert model.history_["loss"][-1] < model.history_["loss"][0]


def test_semi_supervised_and_supervised():
    X, y = two_groups()
    mask = np.zeros(len(y), dtype=bool)
    mask[::3] = True  # a third of the labels
    semi = NeuralNMF([4, 2], max_iter=30, random_state=0).fit(X, y, label_mask=mask)
    assert semi.classifier_.shape == (2, 2) and list(semi.classes_) == [0, 1]
    assert (semi.predict(X)[~mask] == y[~mask]).mean() >= 0.95
    full = NeuralNMF([4, 2], max_iter=30, random_state=0).fit(X, np.array(["a", "b"])[y])
    assert (full.predict(X) == np.array(["a", "b"])[y]).all()


def test_a_class_without_labels_is_named_not_merged():
    """n_classes above the labelled classes: classes_ names the class label_mask hides after the largest label,
    and a sample scored highest there is predicted as it, not as the last labelled class."""
    X, y = two_groups()
    y = np.where(np.arange(len(y)) % 2 == 0, y, y + 2)  # four classes; label_mask hides class 3
    model = NeuralNMF([4, 2], n_classes=4, max_iter=10, random_state=0).fit(X, y, label_mask=y != 3)
    assert list(model.classes_) == [0, 1, 2, 3] and model.classifier_.shape == (4, 2)
    model.classifier_ = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert (model.predict(X) == 3).all()
    with pytest.raises(ValueError, match="numeric labels"):
        NeuralNMF([4, 2], n_classes=3, max_iter=2).fit(X, np.array(["a", "b"])[y % 2])
    # names past the largest label in a type that holds them (uint8 255 + 1 wrapped to 0), or a clear error
    model = NeuralNMF([4, 2], n_classes=3, max_iter=2, random_state=0).fit(X, np.where(y % 2, 255, 0).astype(np.uint8))
    assert list(model.classes_) == [0, 255, 256]
    with pytest.raises(ValueError, match="not distinct"):
        NeuralNMF([4, 2], n_classes=3, max_iter=2).fit(X, np.where(y % 2, 1e20, 0.0))
    with pytest.raises(ValueError, match="overflow"):
        NeuralNMF([4, 2], n_classes=3, max_iter=2).fit(X, np.where(y % 2, np.iinfo(np.int64).max, 0))


def test_nan_labels_are_refused_and_a_refit_without_labels_drops_the_classes():
    X, y = two_groups()
    y = y.astype(float)
    y[5] = np.nan
    with pytest.raises(ValueError, match="Input y contains NaN"):
        NeuralNMF([4, 2], max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="Input y contains NaN"):
        NeuralNMF([4, 2], max_iter=2).fit(X, y.astype(object))
    with pytest.raises(ValueError, match="Input y contains infinity"):
        NeuralNMF([4, 2], max_iter=2).fit(X, np.where(np.isnan(y), np.inf, y))
    mask = ~np.isnan(y)  # an unknown label left out of label_mask is no class
    model = NeuralNMF([4, 2], max_iter=2, random_state=0).fit(X, y, label_mask=mask)
    assert list(model.classes_) == [0.0, 1.0]
    model.fit(X)
    assert not hasattr(model, "classes_") and not hasattr(model, "classifier_")


def test_random_state_makes_fits_repeatable():
    X = rank9(seed=4)
    a = NeuralNMF([4, 2], max_iter=5, init="random", random_state=7).fit(X)
    b = NeuralNMF([4, 2], max_iter=5, init="random", random_state=7).fit(X)
    for A, B in zip(a.A_, b.A_):
        assert np.array_equal(A, B)


def test_given_init_and_float32():
    X = rank9(seed=5)
    rng = np.random.default_rng(0)
    init = [rng.random((30, 4)), rng.random((4, 2))]
    model = NeuralNMF([4, 2], max_iter=5, init=init, dtype="float32").fit(X)
    assert model.A_[0].dtype == np.float32 and np.isfinite(model.relative_errors_).all()


def test_deep_nmf_own_factor_fits_better_than_hierarchical():
    Xt = torch.tensor(rank9(seed=6))
    As, _ = hierarchical_nmf(Xt, [9, 4, 2], 50, torch.Generator().manual_seed(0))
    hier = relative_errors(Xt, As, forward(Xt, As))[-1]
    As, S = deep_nmf(Xt, [9, 4, 2], 50, 50, torch.Generator().manual_seed(0))
    own = float((Xt - S @ (As[0] @ As[1] @ As[2]).mT).norm() / Xt.norm())
    assert own < hier
    assert all(bool((A >= 0).all()) for A in As) and bool((S >= 0).all())


def test_check_estimator():
    """scikit-learn's own estimator checks."""
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(NeuralNMF(ranks=[2], max_iter=5, n_init_iter=5, random_state=0), on_fail=None)
    failed = {r["check_name"]: repr(r["exception"]) for r in results if r["status"] == "failed"}
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 45


def test_sklearn_conventions_and_bad_input():
    model = NeuralNMF([3, 2], loss="energy", random_state=0)
    assert clone(model).get_params() == model.get_params()
    X = rank9(seed=7)
    with pytest.raises(ValueError, match="ranks"):
        NeuralNMF([3, 0]).fit(X)
    with pytest.raises(ValueError, match="ranks\\[0\\]"):
        NeuralNMF([31]).fit(X)
    with pytest.raises(ValueError, match="Negative values"):
        NeuralNMF([3]).fit(-X)
    with pytest.raises(ValueError, match="X is all zero"):  # else NaN factors and errors
        NeuralNMF([3]).fit(np.zeros_like(X))
    with pytest.raises(ValueError, match="loss"):
        NeuralNMF([3], loss="kl").fit(X)
    with pytest.raises(ValueError, match="label_mask"):
        NeuralNMF([3]).fit(X, label_mask=np.ones(60, dtype=bool))
    with pytest.raises(ValueError, match="y must have"):
        NeuralNMF([3]).fit(X, np.zeros(5))
    with pytest.raises(ValueError, match="init"):
        NeuralNMF([3], init=[np.ones((30, 4))]).fit(X)
    with pytest.raises(ValueError, match="NaN|infinity"):
        NeuralNMF([3]).fit(np.where(X > 0.5, np.nan, X))


@pytest.mark.parametrize("capturable", [False, True])
def test_adam_update_is_torch_adams(capturable):
    """The training loop's foreach Adam makes torch.optim.Adam's steps, one learning rate per tensor; the
    capturable form (step count and bias corrections on the device, for a CUDA graph) makes the same."""
    from symnmf.neural_nmf import _Adam

    gen = torch.Generator().manual_seed(3)
    params = [torch.rand(5, 3, dtype=torch.float64, generator=gen), torch.rand(3, 2, dtype=torch.float64, generator=gen)]
    lrs = [1e-2, 3e-3]
    ours = [p.clone() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    reference = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(theirs, lrs)])
    adam = _Adam(ours, lrs, capturable=capturable)
    assert isinstance(adam.t, torch.Tensor) == capturable
    for _ in range(5):
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params]
        adam.step(grads)
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        reference.step()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b.detach(), rtol=1e-12, atol=1e-15)


def test_cuda_graph_needs_cuda_and_the_unsupervised_reconstruction_loss():
    X, y = two_groups()
    with pytest.raises(ValueError, match="cuda_graph=True needs X on a CUDA device"):
        NeuralNMF([3, 2], max_iter=5, cuda_graph=True, device="cpu").fit(X)
    model = NeuralNMF([3, 2], max_iter=5, cuda_graph=None, device="cpu", random_state=0).fit(X)  # auto: eager
    assert len(model.history_["loss"]) == 5 and model.cuda_graph_ is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_graph_training_equals_eager(monkeypatch, dtype):
    """The replayed step trains as the eager steps do (same Triton kernels, same order), and a capture that
    fails leaves a warning and an eager fit."""
    monkeypatch.undo()  # the GPU runs the kernels
    import symnmf.neural_nmf as nn_mod

    X = rank9(n=90, d=40, seed=11)
    fits = {}
    calls = []
    capture = nn_mod._capture_step
    monkeypatch.setattr(nn_mod, "_capture_step", lambda *a: calls.append(1) or capture(*a))
    for graph in (False, True):
        fits[graph] = NeuralNMF([9, 4, 2], max_iter=30, random_state=0, device="cuda", dtype=dtype,
                                cuda_graph=graph).fit(X)
    assert calls == [1] and fits[True].cuda_graph_ and not fits[False].cuda_graph_
    tol = 1e-9 if dtype == "float64" else 1e-3
    assert rel_err(np.array(fits[True].history_["loss"]), np.array(fits[False].history_["loss"])) < tol
    for a, b in zip(fits[True].A_, fits[False].A_):
        assert rel_err(a, b) < tol
    assert fits[True].history_["loss"][-1] < fits[True].history_["loss"][0]

    def fail(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(nn_mod, "_capture_step", fail)
    with pytest.warns(RuntimeWarning, match="capturing the training step in a CUDA graph failed"):
        fallback = NeuralNMF([9, 4, 2], max_iter=30, random_state=0, device="cuda", dtype=dtype).fit(X)
    assert rel_err(np.array(fallback.history_["loss"]), np.array(fits[False].history_["loss"])) < tol
    assert not fallback.cuda_graph_
    with pytest.raises(RuntimeError, match="stream is capturing"):
        NeuralNMF([9, 4, 2], max_iter=30, random_state=0, device="cuda", dtype=dtype, cuda_graph=True).fit(X)


def test_seed_types_and_a_non_finite_init(monkeypatch):
    """A numpy integer seed is the same seed as the int; a seed past torch's range and an init holding NaN or an
    infinity are refused up front (NaN passed the check for negative entries and gave an all-NaN model)."""
    from sklearn.utils._param_validation import InvalidParameterError

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rng = np.random.default_rng(0)
    X = rng.random((20, 6))
    a = NeuralNMF([3, 2], max_iter=2, random_state=3).fit(X)
    b = NeuralNMF([3, 2], max_iter=2, random_state=np.int64(3)).fit(X)
    assert all(np.array_equal(p, q) for p, q in zip(a.A_, b.A_))
    with pytest.raises(InvalidParameterError, match="random_state"):
        NeuralNMF([3, 2], max_iter=2, random_state=2 ** 64).fit(X)
    for bad in (np.nan, np.inf):
        A = [rng.random((6, 3)), rng.random((3, 2))]
        A[0][0, 0] = bad
        with pytest.raises(ValueError, match="finite, non-negative"):
            NeuralNMF([3, 2], init=A, max_iter=2).fit(X)


@pytest.mark.parametrize("dtype, scales", [("float32", [1e-25, 1e20, 1e14, 1e-50]),
                                           ("float64", [1e-170, 1e160, 1e14, 1e-30])])
def test_the_scale_of_x_changes_nothing_but_s(dtype, scales, monkeypatch):
    """X whose squares under- or overflow (||X||^2 was 0 or inf, and the fit NaN without an error), or far enough
    from unit scale for Adam's epsilon and the step's floor to matter (1e14, 1e-30: the hierarchical start's A_1
    trained less, or the loss rose), is fitted at a power of two of its scale: the same relative errors and A_,
    S_ and the classifier in X's units. A float64 X is scaled before it is cast to float32 (1e-50 became 0)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rng = np.random.default_rng(0)
    X = rng.random((30, 10))
    y = np.arange(30) % 2
    base = NeuralNMF([3, 2], max_iter=5, n_init_iter=5, random_state=0, dtype=dtype).fit(X, y)
    for s in scales:
        model = NeuralNMF([3, 2], max_iter=5, n_init_iter=5, random_state=0, dtype=dtype).fit(X * s, y)
        assert np.allclose(model.relative_errors_, base.relative_errors_, rtol=1e-3)
        assert np.isfinite(model.history_["loss"]).all()
        if dtype == "float32" and s < 1e-37:
            continue  # S_ at X's own scale is beyond float32's range: the fit itself is all there is to check
        product = model.S_[-1] @ (model.A_[0] @ model.A_[1]).T  # X ~ S_L P^T at X's own scale
        assert rel_err(product / s, base.S_[-1] @ (base.A_[0] @ base.A_[1]).T) < 1e-2
        assert rel_err(model.transform(X * s) / s, model.S_[-1] / s) < 1e-3
        np.testing.assert_array_equal(model.predict(X * s), model.predict(X * s * 2))


def test_random_state_none_follows_numpys_global_state(monkeypatch):
    """As scikit-learn's estimators (and the library's others): None draws the seed from numpy's global state."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    X = np.random.default_rng(0).random((20, 8))
    fits = []
    for _ in range(2):
        np.random.seed(3)
        fits.append(NeuralNMF([3, 2], max_iter=3, n_init_iter=3, init="random").fit(X).A_[0])
    np.testing.assert_array_equal(*fits)


def test_labels_only_on_zero_rows_and_a_start_that_is_not_real_are_refused(monkeypatch):
    """Labelled samples that are all-zero rows of X left the classifier's solve singular (a LinAlgError deep in
    the fit); a complex init was cut to its real part with a warning, and text failed deep in torch."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rng = np.random.default_rng(0)
    X = rng.random((30, 10))
    X[:2] = 0
    mask = np.zeros(30, dtype=bool)
    mask[:2] = True
    with pytest.raises(ValueError, match="all-zero row"):
        NeuralNMF([3], max_iter=3, n_init_iter=3).fit(X, np.arange(30) % 2, label_mask=mask)
    for bad in (rng.random((10, 3)) + 1j, rng.random((10, 3)).astype(str)):
        with pytest.raises(ValueError, match=r"init\[0\] must hold real numbers"):
            NeuralNMF([3], init=[bad], max_iter=2).fit(X)
