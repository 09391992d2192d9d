"""The CSR container: its conversions, and its node renumbering (locality_order and permute)."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import symnmf_kernels as sk
from symnmf_kernels.sparse import CSR, as_csr, block_diag, locality_order, permute

from conftest import rel_err


def shuffled_band(n, width, seed):
    """A banded symmetric graph (neighbours within `width` of each other) under a random node order."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), 2 * width)
    cols = np.clip(rows + np.tile(np.r_[-width:0, 1:width + 1], n), 0, n - 1)
    A = sp.coo_matrix((rng.uniform(0.1, 1, rows.size), (rows, cols)), shape=(n, n)).tocsr()
    A = ((A + A.T) / 2).tocsr()
    shuffle = rng.permutation(n)
    return A[shuffle][:, shuffle].tocsr()


def bandwidth(X):
    A = as_csr(X).to_scipy().tocoo()
    return int(np.abs(A.row - A.col).max())


@pytest.mark.parametrize("method", ["rcm", "degree"])
def test_renumbered_product_is_the_permuted_product(method):
    A = shuffled_band(503, 4, seed=1)
    X = as_csr(A, dtype=torch.float64)
    perm = locality_order(X, method)
    assert perm.dtype == torch.int64 and torch.equal(torch.sort(perm).values, torch.arange(503))
    Xp = permute(X, perm)
    U = torch.rand(503, 7, dtype=torch.float64)
    # (P X P^T)(P U) = P (X U)
    assert rel_err(sk.spmm(Xp, U[perm]), sk.spmm(X, U)[perm]) < 1e-13
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(503)
    assert rel_err(sk.spmm(Xp, U[perm])[inverse], sk.spmm(X, U)) < 1e-13


def test_rcm_restores_a_narrow_band():
    A = shuffled_band(2000, 3, seed=2)
    assert bandwidth(A) > 1000
    assert bandwidth(permute(A, locality_order(A, "rcm"))) <= 20


def test_bad_arguments():
    A = shuffled_band(20, 2, seed=3)
    with pytest.raises(ValueError, match="method must be one of"):
        locality_order(A, "metis")
    with pytest.raises(ValueError, match="permutation of range"):
        permute(A, torch.zeros(20, dtype=torch.int64))
    with pytest.raises(ValueError, match="square"):
        locality_order(sp.random(5, 6, density=0.5, format="csr"))
    for perm in (torch.tensor([1.9, 0.2] + list(range(2, 20))), torch.tensor([True, False] * 10)):
        with pytest.raises(TypeError, match="perm must hold integers"):
            permute(A, perm)
    with pytest.raises(TypeError, match="real numbers"):
        as_csr(sp.csr_matrix(np.array([[0, 1j], [1j, 0]])))
    assert locality_order(sp.csr_matrix((0, 0))).shape == (0,)


def test_derived_copies_see_changes_made_in_place():
    """to(), permute() and block_diag() carry over what is known of X as it is now: a symmetry found before a
    change in place is found again, and the gradient of X U is that of the changed X. A scipy copy is X's own."""
    D = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0.0]])
    U = torch.rand(3, 2, dtype=torch.float64)
    for derive in (lambda A: A.to(torch.float64), lambda A: permute(A, torch.arange(3)), lambda A: block_diag([A])):
        A = as_csr(sp.csr_matrix(D))
        assert A.is_symmetric()
        A.values[0] += 5.0  # X[0, 1] = 6, X[1, 0] = 1
        B = derive(A)
        assert not B.is_symmetric()
        Ug = U.clone().requires_grad_()
        sk.spmm(B, Ug).sum().backward()
        dense = torch.from_numpy(D).clone()
        dense[0, 1] += 5.0
        assert rel_err(Ug.grad, dense.T @ torch.ones(3, 2, dtype=torch.float64)) < 1e-12
    A = as_csr(sp.csr_matrix(D))
    norm = float(A.squared_norm())
    A.to_scipy().data *= 2  # a copy: A and its cached ||X||^2 stay as they were
    assert float(A.squared_norm()) == norm == float((torch.from_numpy(D) ** 2).sum())


def test_to_takes_a_dtype_first_as_torch_does():
    X = as_csr(shuffled_band(40, 3, seed=2), dtype=torch.float32)
    for Y in (X.to(torch.float64), X.to(dtype=torch.float64), X.to("cpu", torch.float64)):
        assert Y.values.dtype == torch.float64 and Y.device.type == "cpu"
        assert torch.equal(Y.col_indices, X.col_indices) and torch.equal(Y.values, X.values.double())
    assert X.to("cpu").values.dtype == torch.float32
    with pytest.raises(TypeError, match="dtype is given twice"):
        X.to(torch.float64, dtype=torch.float64)


def test_a_tensor_whose_values_require_grad_is_not_kept_alive():
    """The container of a tensor whose values require grad holds those values, and through them the tensor: in the
    weak cache of as_csr the entry kept its own key, and the tensor and its graph stayed for the process's life."""
    import gc
    import weakref

    for requires_grad in (False, True):
        values = torch.rand(3, requires_grad=requires_grad)
        X = torch.sparse_csr_tensor(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2]), values, (3, 3))
        assert as_csr(X).values.requires_grad == requires_grad
        ref = weakref.ref(X)
        del X, values
        gc.collect()
        assert ref() is None


def test_symmetric_is_refused_for_a_rectangular_x():
    """symmetric=True spared a rectangular X's backward its transpose, which then failed with a misleading
    'col_indices out of range' (CPU) or a shape mismatch (CUDA)."""
    A = sp.random(3, 5, density=0.6, format="csr", random_state=np.random.RandomState(0))
    U = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="only a square X can be symmetric"):
        sk.spmm(as_csr(A), U, symmetric=True)
    with pytest.raises(ValueError, match="only a square one can be"):
        CSR(torch.tensor([0, 0, 0, 0]), torch.zeros(0, dtype=torch.int64), torch.zeros(0), (3, 5), symmetric=True)


def test_ops_run_under_inference_mode():
    """Tensors made under torch.inference_mode have no version counter, which the CSR's caches read: every sparse
    op raised there. Their derived data is now formed again at each call; the values are those outside."""
    import symnmf_kernels as sk
    from symnmf_kernels.sparse import locality_order

    A = torch.rand(7, 7, dtype=torch.float64)
    A = (A + A.T) * (torch.rand(7, 7) < 0.5)
    A = (A + A.T).to_sparse_csr()
    U = torch.rand(7, 3, dtype=torch.float64)
    want = (sk.spmm(A, U), sk.sparse_sym_loss(A, U), sk.sparse_layer_loss(A, U, U, 0.1)[1])
    with torch.inference_mode():
        X = A.to_dense().to_sparse_csr()  # an inference tensor
        got = (sk.spmm(X, U), sk.sparse_sym_loss(X, U), sk.sparse_layer_loss(X, U, U, 0.1)[1])
        X.values().mul_(2)  # changed in place: no counter tells, and nothing stale is used
        assert torch.allclose(sk.spmm(X, U), 2 * want[0])
        assert torch.equal(locality_order(X), locality_order(A))
        assert torch.allclose(sk.spmm(sp.csr_matrix(A.to_dense().numpy()), U), want[0])
    for a, b in zip(got, want):
        assert torch.allclose(a, b)
