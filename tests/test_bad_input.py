"""Bad arguments raise errors that name the argument and the fix, before any kernel runs."""
import pytest
import torch

import symnmf_kernels as sk


def test_gram_rejects_bad_u():
    with pytest.raises(TypeError, match="U must be float32 or float64"):
        sk.gram(torch.ones(5, 2, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match="U must have at least 2 dimensions"):
        sk.gram(torch.rand(5), 1.0)
    with pytest.raises(ValueError, match="U has an empty dimension"):
        sk.gram(torch.rand(0, 3), 1.0)
    with pytest.raises(TypeError, match="U must be a torch.Tensor"):
        sk.gram([[1.0, 2.0]], 1.0)


def test_lam_checks():
    U = torch.rand(2, 10, 3)
    with pytest.raises(ValueError, match="lam must be finite"):
        sk.gram(U, float("nan"))
    with pytest.raises(TypeError, match="lam is torch.float64 but U is torch.float32"):
        sk.gram(U, torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="lam of shape \\(3,\\) must broadcast"):
        sk.gram(U, torch.ones(3))
    with pytest.raises(TypeError, match="lam must be a float or a tensor"):
        sk.gram(U, "1.0")


@pytest.mark.parametrize("bad", ["inf 0-d", "inf batch", "bool", "complex"])
def test_an_infinite_bool_or_complex_lam_tensor_is_refused(bad):
    """A lam tensor on the CPU is read as a float lam is checked: +-inf is refused (unchecked, G + inf I would
    only give NaN), a bool tensor is refused as a bool is, and a complex one rather than cast to its real part;
    a NaN lam is let through, to NaN."""
    U, P = torch.rand(2, 10, 3), torch.randn(2, 10, 3)
    lam = {"inf 0-d": torch.tensor(float("inf")), "inf batch": torch.tensor([1.0, -float("inf")]),
           "bool": torch.tensor(True), "complex": torch.tensor(1 + 5j)}[bad]
    error, match = {"bool": (TypeError, "lam must be a float or a float tensor, got a bool tensor"),
                    "complex": (TypeError, "lam must be a float or a float tensor, got a complex tensor")}.get(
        bad, (ValueError, "lam must be finite, got -?inf"))
    for call in (lambda: sk.gram(U, lam), lambda: sk.symnmf_block(U, P, lam),
                 lambda: sk.symnmf_block_from_gram(sk.gram(U), P, lam)):
        with pytest.raises(error, match=match):
            call()
    nan = torch.tensor([1.0, float("nan")])
    out = sk.symnmf_block(U, P, nan)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()


@pytest.mark.parametrize("lam", [-0.5, -100, "cpu tensor", "cpu batch"])
def test_negative_lam_is_refused_unless_opted_out(lam):
    U, P = torch.rand(2, 10, 3), torch.randn(2, 10, 3)
    if lam == "cpu tensor":
        lam = torch.tensor(-1.0, requires_grad=True)
    elif lam == "cpu batch":
        lam = torch.tensor([2.0, -1.0])
    for call in (lambda **kw: sk.gram(U, lam, **kw), lambda **kw: sk.symnmf_block(U, P, lam, **kw),
                 lambda **kw: sk.symnmf_block_from_gram(sk.gram(U), P, lam, **kw)):
        with pytest.raises(ValueError, match=r"lam = -[0-9.]+ is negative.*lam >= 0.*check_lam=False"):
            call()
        call(check_lam=False)  # an expert's explicit opt-out


def test_chain_form_refuses_a_gram_batch_wider_than_p():
    UtU = torch.eye(3).expand(4, 3, 3) * 5.0
    with pytest.raises(ValueError, match=r"UtU's batch shape \(4,\) must broadcast to P's \(2,\)"):
        sk.symnmf_block_from_gram(UtU, torch.rand(2, 10, 3), 1.0)
    with pytest.raises(ValueError, match=r"UtU's batch shape \(4,\) must broadcast to P's \(\)"):
        sk.symnmf_block_from_gram(UtU, torch.rand(10, 3), 1.0)


def test_zero_lam_is_allowed_and_the_sparse_regulariser_takes_any_lam():
    U = torch.rand(10, 3, dtype=torch.float64)
    sk.gram(U, 0.0)
    sk.symnmf_block(U, torch.randn(10, 3, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    X = torch.eye(10, dtype=torch.float64).to_sparse_csr()
    loss, reg = sk.sparse_layer_loss(X, U, U, -2.0)
    assert torch.isfinite(reg)


def test_spd_inverse_rejects_non_square():
    with pytest.raises(ValueError, match="G must be square"):
        sk.spd_inverse(torch.rand(3, 4))


def test_apply_relu_shape_mismatch():
    with pytest.raises(ValueError, match="Ginv must be r x r"):
        sk.apply_relu(torch.rand(10, 4), torch.eye(3))
    with pytest.raises(ValueError, match="Ginv's batch shape"):
        sk.apply_relu(torch.rand(2, 10, 3), torch.eye(3).expand(4, 3, 3))
    with pytest.raises(TypeError, match="Ginv is torch.float64 but P is torch.float32"):
        sk.apply_relu(torch.rand(10, 3), torch.eye(3, dtype=torch.float64))


def test_symnmf_block_mismatch():
    with pytest.raises(ValueError, match="P has r = 4 columns but U has r = 3"):
        sk.symnmf_block(torch.rand(10, 3), torch.rand(10, 4), 1.0)
    with pytest.raises(ValueError, match="batch shape"):
        sk.symnmf_block(torch.rand(2, 10, 3), torch.rand(10, 3), 1.0)


def test_sym_loss_mismatch():
    with pytest.raises(ValueError, match="X must be square"):
        sk.sym_loss(torch.rand(5, 6), torch.rand(5, 2))
    with pytest.raises(ValueError, match="U has n = 4 rows"):
        sk.sym_loss(torch.rand(5, 5), torch.rand(4, 2))


@pytest.mark.gpu
def test_device_mismatch_is_named():
    with pytest.raises(ValueError, match="P is on cuda"):
        sk.symnmf_block(torch.rand(10, 3), torch.rand(10, 3, device="cuda"), 1.0)


def test_large_r_falls_back_with_one_warning(monkeypatch):
    from symnmf_kernels.ops import _common

    monkeypatch.setattr(_common, "_warned", set())
    monkeypatch.setattr(_common, "interpreting", lambda: True)
    U = torch.rand(140, 130, dtype=torch.float64)
    with pytest.warns(UserWarning, match="r = 130 exceeds"):
        G = sk.gram(U, 1.0)
    assert torch.allclose(G, U.mT @ U + torch.eye(130, dtype=torch.float64))


def test_a_device_that_cannot_be_used_is_named_before_any_work():
    import numpy as np

    import symnmf
    import symnmf.distributed
    import symnmf.net

    features = np.random.default_rng(0).random((30, 4))
    graph = symnmf.similarity_graph(features)
    calls = {
        "SymNMF": lambda device: symnmf.SymNMF(2, device=device, random_state=0).fit(features),
        "SymNMF precomputed": lambda device: symnmf.SymNMF(2, affinity="precomputed", device=device).fit(graph),
        "similarity_graph": lambda device: symnmf.similarity_graph(features, device=device),
        "fit_net": lambda device: symnmf.net.fit_net(graph, 2, device=device),
        "NeuralNMF": lambda device: symnmf.NeuralNMF(ranks=[2], device=device).fit(features),
        "AlternatingNMF": lambda device: symnmf.AlternatingNMF(2, device=device).fit(features),
        "SpecNet2": lambda device: symnmf.SpecNet2(2, device=device).fit(features),
        "distributed.cluster": lambda device: symnmf.distributed.cluster(graph, 2, device=device),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="device 'tpu' is not a device torch knows; use 'cpu', 'cuda'"):
            call("tpu")
        # No machine has a hundredth GPU; where torch has no CUDA at all the message says that instead.
        with pytest.raises(ValueError, match=r"device 'cuda:99' cannot be used: (torch sees|this torch build)"):
            call("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' cannot be used: .* here; use 'cpu'"):
            symnmf.SymNMF(2, device="cuda").fit(features)
