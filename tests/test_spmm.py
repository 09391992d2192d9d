"""sk.spmm and the symnmf_kernels::spmm_csr operator against torch.sparse.mm and a dense float64 product."""
import importlib
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import symnmf_kernels as sk
from symnmf_kernels.sparse import CSR, as_csr, block_diag

from conftest import rel_err

spmm_mod = importlib.import_module("symnmf_kernels.ops.spmm")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def random_graph(n, m=None, nnz_per_row=4.0, seed=0, symmetric=False, empty_rows=3):
    """A scipy CSR (n, m) with a duplicate-free random pattern, positive values and some empty rows."""
    m = n if m is None else m
    rng = np.random.default_rng(seed)
    density = min(1.0, nnz_per_row / max(m, 1))
    A = sp.random(n, m, density=density, format="csr", random_state=rng, data_rvs=lambda k: rng.uniform(0.1, 1, k))
    if symmetric:
        A = (A + A.T).tocsr()
    if empty_rows and n > 1:
        rows = rng.choice(n, size=min(empty_rows, n - 1), replace=False)
        keep = np.ones(n)
        keep[rows] = 0
        A = sp.diags(keep) @ A
        if symmetric:
            A = A @ sp.diags(keep)
        A = A.tocsr()
    A.eliminate_zeros()
    A.sort_indices()
    return A


def torch_csr(A, dtype=torch.float64, device="cpu"):
    return as_csr(A, device=device, dtype=dtype).to_torch()


def dense_product(A, U):
    return torch.from_numpy(A.toarray()) @ U.detach().double().cpu()


# ---- values -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (37, 37), (61, 45), (300, 300)])
@pytest.mark.parametrize("r", [1, 3, 8, 10, 14, 16, 20, 33, 100, 130])
def test_matches_dense_and_torch_sparse(device, dtype, shape, r):
    A = random_graph(*shape, seed=shape[0] + r)
    U = torch.randn(shape[1], r, dtype=dtype, device=device)
    X = torch_csr(A, dtype, device)
    out = sk.spmm(X, U)
    assert out.shape == (shape[0], r) and out.dtype == dtype and out.device == U.device
    assert rel_err(out, dense_product(A, U)) < TOL[dtype]
    assert rel_err(out, torch.sparse.mm(X, U)) < TOL[dtype]


def test_empty_rows_are_zero(device):
    A = random_graph(50, empty_rows=10, seed=1)
    U = torch.rand(50, 8, dtype=torch.float64, device=device)
    out = sk.spmm(torch_csr(A, device=device), U)
    empty = torch.from_numpy(np.diff(A.indptr) == 0)
    assert empty.sum() >= 10
    assert torch.equal(out.cpu()[empty], torch.zeros(int(empty.sum()), 8, dtype=torch.float64))
    assert rel_err(out, dense_product(A, U)) < 1e-12


def test_all_empty_and_zero_width(device):
    X = CSR(torch.zeros(6, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0), (5, 4)).to(device)
    out = sk.spmm(X, torch.rand(4, 3, device=device))
    assert out.shape == (5, 3) and not out.abs().sum()
    assert sk.spmm(X, torch.rand(4, 0, device=device)).shape == (5, 0)


def test_large_random_graph_cpu():
    n, r = 100_000, 16
    A = random_graph(n, nnz_per_row=16, seed=7)
    X = torch_csr(A, torch.float32)
    U = torch.rand(n, r)
    out = sk.spmm(X, U)
    assert rel_err(out, torch.sparse.mm(X.to(torch.float64), U.double())) < 1e-5


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_index_dtypes(index_dtype):
    A = random_graph(40, seed=3)
    X = CSR(torch.from_numpy(A.indptr).to(index_dtype), torch.from_numpy(A.indices).to(index_dtype),
            torch.from_numpy(A.data), A.shape)
    U = torch.randn(40, 5, dtype=torch.float64)
    assert rel_err(sk.spmm(X, U), dense_product(A, U)) < 1e-12


def test_strided_and_vector_operands():
    A = random_graph(30, seed=4)
    X = torch_csr(A)
    base = torch.randn(30, 12, dtype=torch.float64)
    for U in (base[:, ::3], base.T.contiguous().T, base[:, 2:7]):
        assert rel_err(sk.spmm(X, U), dense_product(A, U)) < 1e-12
    # float32 rows of 10 and 20 inside wider rows: the masked row loop reads only each row's own r values
    wide, X32 = torch.randn(30, 41), torch_csr(A, torch.float32)
    for U in (wide[:, :10], wide[:, 3:23], wide[:, 21:]):
        assert rel_err(sk.spmm(X32, U), dense_product(A, U)) < 1e-6
    v = base[:, 0]
    out = sk.spmm(X, v)
    assert out.shape == (30,) and rel_err(out, dense_product(A, v[:, None])[:, 0]) < 1e-12


def test_batched_u_shares_x(device):
    A = random_graph(29, seed=5)
    U = torch.randn(2, 3, 29, 6, dtype=torch.float64, device=device)
    out = sk.spmm(torch_csr(A, device=device), U)
    assert out.shape == (2, 3, 29, 6)
    assert rel_err(out, torch.from_numpy(A.toarray()).to(device) @ U) < 1e-12


def test_block_diagonal_batch(device):
    graphs = [random_graph(17, seed=s, symmetric=True) for s in range(4)]
    U = torch.randn(4, 17, 5, dtype=torch.float64, device=device)
    ref = torch.stack([torch.from_numpy(g.toarray()).to(device) @ U[b] for b, g in enumerate(graphs)])
    X = block_diag([torch_csr(g, device=device) for g in graphs])
    assert X.shape == (68, 68)
    assert rel_err(sk.spmm(X, U), ref) < 1e-12


def test_batched_torch_csr(device):
    # A batched torch CSR tensor has one nnz for all graphs: one pattern, different values.
    pattern = torch.from_numpy(random_graph(19, seed=21).toarray() != 0)
    dense = torch.rand(3, 19, 19, dtype=torch.float64) * pattern
    X = dense.to(device).to_sparse_csr()
    assert X.dim() == 3
    U = torch.randn(3, 19, 4, dtype=torch.float64, device=device)
    assert rel_err(sk.spmm(X, U), dense.to(device) @ U) < 1e-12


@pytest.mark.parametrize("fmt", ["csr", "coo", "csc"])
def test_scipy_input(fmt):
    A = random_graph(33, seed=6).asformat(fmt)
    U = torch.randn(33, 4)  # float32: float64 scipy data is converted to U's dtype
    out = sk.spmm(A, U)
    assert out.dtype == torch.float32 and rel_err(out, dense_product(A, U)) < 1e-5


def test_scipy_duplicates_are_summed():
    A = sp.coo_matrix((np.array([1.0, 2.0, 3.0]), (np.array([0, 0, 1]), np.array([1, 1, 0]))), shape=(2, 2))
    U = torch.tensor([[1.0], [10.0]], dtype=torch.float64)
    assert torch.equal(sk.spmm(A, U), torch.tensor([[30.0], [3.0]], dtype=torch.float64))


def test_torch_coo_and_dense_input():
    A = random_graph(25, seed=8)
    U = torch.randn(25, 3, dtype=torch.float64)
    Xd = torch.from_numpy(A.toarray())
    assert rel_err(sk.spmm(Xd.to_sparse_coo(), U), Xd @ U) < 1e-12
    assert rel_err(sk.spmm(Xd, U), Xd @ U) < 1e-12


def test_matches_reference_module():
    A = random_graph(40, seed=9)
    X = torch_csr(A)
    U = torch.randn(40, 7, dtype=torch.float64)
    assert rel_err(sk.spmm(X, U), sk.reference.spmm(X, U)) < 1e-12


def test_fallback_matches_native():
    from symnmf_kernels import _extension

    X = as_csr(random_graph(45, seed=10), dtype=torch.float64)
    for U in (torch.randn(45, 6, dtype=torch.float64), torch.randn(3, 45, 6, dtype=torch.float64)):
        native = spmm_mod.spmm_csr(X.crow_indices, X.col_indices, X.values, U)
        _extension._warned.discard("cpu")
        with pytest.warns(UserWarning, match="torch.sparse.mm"):
            fallback = _extension.spmm_csr_torch(X.crow_indices, X.col_indices, X.values, U)
        assert rel_err(fallback, native) < 1e-12


FALLBACK_SCRIPT = """
import warnings, torch, symnmf_kernels as sk, importlib
status = importlib.import_module("symnmf_kernels.ops.spmm").extension_status()
assert not status["cpu"] and "failed to load" in status["error"], status
X = torch.tensor([[0.0, 2.0], [2.0, 1.0]], dtype=torch.float64).to_sparse_csr()
U = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = sk.spmm(X, U)
    sk.spmm(X, U)
assert sum("torch.sparse.mm" in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]
assert torch.equal(out, X.to_dense() @ U)
out.sum().backward()
assert torch.equal(U.grad, X.to_dense().T @ torch.ones(2, 2, dtype=torch.float64))
print("fallback ok")
"""


def test_fallback_when_the_extension_is_missing():
    """Without the extension, symnmf_kernels::spmm_csr is defined in Python on torch.sparse.mm and warns once."""
    env = dict(os.environ, SYMNMF_KERNELS_LIBRARY=os.path.join(ROOT, "no-such-library.so"))
    proc = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "fallback ok" in proc.stdout, proc.stderr[-3000:]


def test_native_cpu_kernel_is_built():
    status = spmm_mod.extension_status()
    assert status["cpu"], status["error"]


# ---- gradients, operator registration ---------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck(symmetric):
    A = random_graph(12, seed=11, symmetric=symmetric, empty_rows=2)
    X = torch_csr(A)
    U = torch.rand(12, 3, dtype=torch.float64, requires_grad=True)
    assert as_csr(X).is_symmetric() == symmetric
    assert torch.autograd.gradcheck(lambda u: sk.spmm(X, u), (U,))
    assert torch.autograd.gradgradcheck(lambda u: sk.spmm(X, u), (U,))
    Ub = torch.rand(2, 12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: sk.spmm(X, u), (Ub,))


def test_gradient_of_rectangular_x():
    A = random_graph(9, 14, seed=12)
    U = torch.rand(14, 4, dtype=torch.float64, requires_grad=True)
    g = torch.rand(9, 4, dtype=torch.float64)
    sk.spmm(A, U).backward(g)
    assert rel_err(U.grad, torch.from_numpy(A.toarray()).T @ g) < 1e-12


def test_block_diagonal_gradcheck():
    X = block_diag([random_graph(6, seed=s) for s in range(3)])
    U = torch.rand(3, 6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: sk.spmm(X, u), (U,))


def test_symmetric_flag_skips_transpose():
    A = random_graph(20, seed=13, symmetric=True)
    X = as_csr(A, dtype=torch.float64)
    U = torch.rand(20, 2, dtype=torch.float64, requires_grad=True)
    sk.spmm(X, U, symmetric=True).sum().backward()
    assert X._transpose is None and X._symmetric is None
    assert rel_err(U.grad, torch.from_numpy(A.toarray()).T @ torch.ones(20, 2, dtype=torch.float64)) < 1e-12


def test_transpose_and_symmetry_cache():
    A = random_graph(31, 23, seed=14)
    X = as_csr(A, dtype=torch.float64)
    T = X.transpose()
    assert T is X.transpose() and T.transpose() is X
    assert (T.to_scipy() != A.T.tocsr()).nnz == 0
    T.validate()
    S = as_csr(random_graph(31, seed=15, symmetric=True))
    assert S.is_symmetric() and S.transpose() is S
    Xt = torch_csr(A)
    assert as_csr(Xt) is as_csr(Xt)  # cached on the tensor


def test_opcheck():
    A = random_graph(15, seed=16)
    X = as_csr(A, dtype=torch.float64)
    T = X.transpose()
    for dense in (torch.rand(15, 4, dtype=torch.float64), torch.rand(2, 15, 3, dtype=torch.float64)):
        args = (X.crow_indices, X.col_indices, X.values, dense)
        torch.library.opcheck(torch.ops.symnmf_kernels.spmm_csr.default, args)
        grad_args = (*args[:3], dense.clone().requires_grad_(), T.crow_indices, T.col_indices, T.values)
        torch.library.opcheck(torch.ops.symnmf_kernels.spmm_csr.default, grad_args)


def test_torch_compile():
    A = random_graph(21, seed=17, symmetric=True)
    X = as_csr(A, dtype=torch.float64)

    def f(crow, col, values, u):
        return (torch.ops.symnmf_kernels.spmm_csr(crow, col, values, u) * u).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    U = torch.rand(21, 5, dtype=torch.float64, requires_grad=True)
    loss = compiled(X.crow_indices, X.col_indices, X.values, U)
    (grad,) = torch.autograd.grad(loss, U)
    Xd = torch.from_numpy(A.toarray())
    assert rel_err(loss, (Xd @ U * U).sum()) < 1e-12
    assert rel_err(grad, 2 * Xd @ U) < 1e-12
    # The public function on a torch sparse tensor: its per-matrix host work runs eagerly (a graph break).
    Xt = Xd.to_sparse_csr()
    public = torch.compile(lambda u: (sk.spmm(Xt, u) * u).sum(), backend="aot_eager")
    loss = public(U)
    assert rel_err(loss, (Xd @ U * U).sum()) < 1e-12
    assert rel_err(torch.autograd.grad(loss, U)[0], 2 * Xd @ U) < 1e-12


# ---- bad input --------------------------------------------------------------------------------------------------


def _csr(crow, col, shape, values=None):
    crow, col = torch.tensor(crow), torch.tensor(col)
    values = torch.ones(len(col), dtype=torch.float64) if values is None else values
    return CSR(crow, col, values, shape)


@pytest.mark.parametrize(
    "crow, col, match",
    [
        ([0, 2, 1, 3], [0, 1, 2], "non-decreasing"),
        ([1, 2, 3, 3], [0, 1, 2], r"crow_indices\[0\] must be 0"),
        ([0, 1, 2, 2], [0, 1, 2], "must equal nnz"),
        ([0, 1, 2, 3], [0, 3, 1], "out of range"),
        ([0, 1, 2, 3], [0, -1, 1], "out of range"),
        ([0, 2, 2, 3], [2, 0, 1], "sorted"),
        ([0, 2, 2, 3], [1, 1, 1], "duplicates"),
    ],
)
def test_bad_indices(crow, col, match):
    X = _csr(crow, col, (3, 3))
    with pytest.raises(ValueError, match=match):
        sk.spmm(X, torch.rand(3, 2, dtype=torch.float64))


@pytest.mark.parametrize(
    "crow, col, match",
    [([0, 2, 1, 3], [0, 1, 2], "non-decreasing"), ([0, 1, 2, 3], [0, 7, 1], "out of range"),
     ([0, 1, 2, 4], [0, 1, 2], "nnz")],
)
@pytest.mark.parametrize("r, dtype", [(2, torch.float64), (8, torch.float32), (8, torch.float64), (10, torch.float32),
                                      (20, torch.float32), (10, torch.float64)])
def test_native_kernel_checks_indices(crow, col, match, r, dtype):
    # The raw op raises RuntimeError (see csrc/spmm.h); sk.spmm raises ValueError before reaching it.
    # r = 8 in float32 has a row loop of its own on AVX2 machines, and r = 10 and 20 (float64: 10) the masked one.
    crow, col = torch.tensor(crow), torch.tensor(col)
    with pytest.raises(RuntimeError, match=match):
        spmm_mod.spmm_csr(crow, col, torch.ones(len(col), dtype=dtype), torch.rand(3, r, dtype=dtype))


def test_mismatched_n():
    X = torch_csr(random_graph(10, seed=18))
    with pytest.raises(ValueError, match=r"X is 10 x 10 but U has shape \(11, 3\)"):
        sk.spmm(X, torch.rand(11, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="block-diagonal"):
        sk.spmm(X, torch.rand(3, 4, 2, dtype=torch.float64))


def test_wrong_dtype_and_device():
    X = torch_csr(random_graph(10, seed=19))
    with pytest.raises(TypeError, match="float32 or float64"):
        sk.spmm(X, torch.ones(10, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="use one dtype"):
        sk.spmm(X, torch.rand(10, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="one device"):
        sk.spmm(X, torch.rand(10, 2, dtype=torch.float64, device="meta"))
    with pytest.raises(TypeError, match="sparse CSR/COO"):
        sk.spmm([[1.0]], torch.rand(1, 1))
    with pytest.raises(TypeError, match="int32 or int64"):
        CSR(torch.tensor([0.0, 1.0]), torch.tensor([0]), torch.ones(1), (1, 1))
    with pytest.raises(ValueError, match="n_rows \\+ 1"):
        CSR(torch.tensor([0, 1]), torch.tensor([0]), torch.ones(1), (2, 2))


def test_dense_x_is_checked_like_a_sparse_one():
    """A dense X is multiplied as a sparse one would be, with the same clear errors for shapes that do not fit."""
    U = torch.rand(8, 3)
    for X in (torch.rand(7, 7), torch.rand(7)):
        with pytest.raises(ValueError, match=r"X must be \(n_rows, 8\) to multiply U of shape \(8, 3\)"):
            sk.spmm(X, U)
    with pytest.raises(ValueError, match="does not broadcast with U's"):
        sk.spmm(torch.rand(2, 7, 8), torch.rand(3, 8, 3))
    X = torch.rand(2, 7, 8)
    assert torch.equal(sk.spmm(X, U), X @ U) and torch.equal(sk.spmm(X[0], U[:, 0]), X[0] @ U[:, 0])


def test_values_requiring_grad_are_refused():
    X = torch_csr(random_graph(10, seed=20))
    values = X.values().clone().requires_grad_()
    Xg = torch.sparse_csr_tensor(X.crow_indices(), X.col_indices(), values, size=X.shape, check_invariants=False)
    with pytest.raises(ValueError, match="differentiable in U only"):
        sk.spmm(Xg, torch.rand(10, 2, dtype=torch.float64))


# ---- CUDA -------------------------------------------------------------------------------------------------------

CUDA_KERNEL_TU = """
#include "spmm_kernel.cuh"
using symnmf::cuda::spmm_csr_kernel;
template __global__ void spmm_csr_kernel<float, int, true, 1>(const int64_t*, const int*, const float*,
    const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int);
template __global__ void spmm_csr_kernel<float, int64_t, false, 4>(const int64_t*, const int64_t*, const float*,
    const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int);
template __global__ void spmm_csr_kernel<double, int, true, 4>(const int64_t*, const int*, const double*,
    const double*, double*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int);
template __global__ void spmm_csr_kernel<double, int64_t, false, 1>(const int64_t*, const int64_t*, const double*,
    const double*, double*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int);
"""


def _nvcc():
    path = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    return path if os.path.exists(path) else None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_cuda_kernel_compiles(tmp_path):
    """The CUDA kernel compiles with nvcc (no GPU needed): every template instantiation, sm_80."""
    tu = tmp_path / "instantiate.cu"
    tu.write_text(textwrap.dedent(CUDA_KERNEL_TU))
    cmd = [_nvcc(), "-c", "-std=c++17", "-O3", "-arch=sm_80", "-I", os.path.join(ROOT, "csrc", "cuda"), str(tu),
           "-o", str(tmp_path / "instantiate.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(_nvcc() is None or os.environ.get("SYMNMF_SLOW") != "1", reason="needs nvcc and SYMNMF_SLOW=1")
def test_cuda_extension_source_compiles(tmp_path):
    """The whole CUDA source with torch's headers (minutes on a small machine)."""
    from torch.utils.cpp_extension import include_paths

    shim = tmp_path / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    # CPU builds of torch ship the c10/cuda headers without this generated one.
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [_nvcc(), "-c", "-std=c++20", "-O3", "-arch=sm_90", "--expt-relaxed-constexpr", "-I", str(tmp_path),
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    cmd += [f"-I{p}" for p in include_paths()]
    cmd += [os.path.join(ROOT, "csrc", "cuda", "spmm_cuda.cu"), "-o", str(tmp_path / "spmm_cuda.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.skipif(shutil.which("cmake") is None or os.environ.get("SYMNMF_SLOW") != "1",
                    reason="needs cmake and SYMNMF_SLOW=1")
def test_cmake_build(tmp_path):
    """CMakeLists.txt builds the same library; symnmf_kernels loads it from SYMNMF_KERNELS_LIBRARY."""
    from torch.utils import cmake_prefix_path

    build = tmp_path / "build"
    for cmd in (["cmake", "-S", ROOT, "-B", str(build), f"-DCMAKE_PREFIX_PATH={cmake_prefix_path}", "-DSYMNMF_CUDA=OFF"],
                ["cmake", "--build", str(build), "-j2"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    script = ("import importlib, torch, symnmf_kernels as sk\n"
              "assert importlib.import_module('symnmf_kernels.ops.spmm').extension_status()['cpu']\n"
              "X = torch.eye(3, dtype=torch.float64).to_sparse_csr()\n"
              "U = torch.rand(3, 2, dtype=torch.float64)\n"
              "assert torch.equal(sk.spmm(X, U), U)\n")
    env = dict(os.environ, SYMNMF_KERNELS_LIBRARY=str(build / "_C.so"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", [1, 2, 3, 4, 8, 16, 17, 32, 64, 100, 128, 129, 256])
def test_cuda_matches_cpu(dtype, r):
    assert spmm_mod.extension_status()["cuda"], "the CUDA SpMM was not built"
    A = random_graph(3000, nnz_per_row=20, seed=r)
    X = torch_csr(A, dtype)
    U = torch.randn(3000, r, dtype=dtype)
    ref = sk.spmm(X, U)
    out = sk.spmm(X.cuda(), U.cuda())
    assert rel_err(out, ref) < TOL[dtype]
    if r > 2:  # an unaligned, strided operand takes the element-load path
        Uw = torch.randn(3000, r + 1, dtype=dtype, device="cuda")[:, 1:]
        assert rel_err(sk.spmm(X.cuda(), Uw), sk.spmm(X, Uw.cpu())) < TOL[dtype]
    # a column (or r columns) of a wider U: its rows are 8 apart; at r = 1 the kernel read them 1 apart
    Uc = torch.randn(3000, 8 * r, dtype=dtype, device="cuda")[:, ::8]
    assert rel_err(sk.spmm(X.cuda(), Uc), sk.spmm(X, Uc.cpu())) < TOL[dtype]
    if r == 1:
        W = torch.randn(3000, 8, dtype=dtype, device="cuda")
        assert rel_err(sk.spmm(X.cuda(), W[:, 3]), sk.spmm(X, W[:, 3].cpu())) < TOL[dtype]
    Ub = torch.randn(3, 3000, r, dtype=dtype)
    assert rel_err(sk.spmm(X.cuda(), Ub.cuda()), sk.spmm(X, Ub)) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", [1, 4, 8, 17, 64, 128, 129])
@pytest.mark.parametrize("nnz_per_row", [2.0, 20.0, 150.0])
def test_cuda_four_gathers_in_flight(monkeypatch, dtype, r, nnz_per_row):
    """Both CUDA loops, forced by SYMNMF_SPMM_GATHERS (one gather per lane at a time, and four nonzeros per lane
    gathered before they are multiplied; the kernel picks four from r = 64), give the CPU product, on rows
    shorter than, about as long as and much longer than the lanes that split them."""
    assert spmm_mod.extension_status()["cuda"], "the CUDA SpMM was not built"
    A = random_graph(3000, nnz_per_row=nnz_per_row, seed=r)
    X = torch_csr(A, dtype)
    U = torch.randn(3000, r, dtype=dtype)
    Ub = torch.randn(3, 3000, r, dtype=dtype)
    expected, expected_batch = sk.spmm(X, U), sk.spmm(X, Ub)
    picked = sk.spmm(X.cuda(), U.cuda())
    for gathers in ("1", "4"):
        monkeypatch.setenv("SYMNMF_SPMM_GATHERS", gathers)
        out = sk.spmm(X.cuda(), U.cuda())
        assert rel_err(out, expected) < TOL[dtype]
        assert rel_err(out, picked) < TOL[dtype]
        assert rel_err(sk.spmm(X.cuda(), Ub.cuda()), expected_batch) < TOL[dtype]


@pytest.mark.gpu
def test_cuda_power_law_rows_and_gradient():
    rng = np.random.default_rng(0)
    deg = np.minimum(rng.zipf(1.5, size=5000), 4000)
    rows = np.repeat(np.arange(5000), deg)
    cols = rng.integers(0, 5000, size=rows.size)
    A = sp.coo_matrix((rng.random(rows.size), (rows, cols)), shape=(5000, 5000)).tocsr()
    A.sum_duplicates()
    X = as_csr(A, device="cuda", dtype=torch.float32)
    U = torch.randn(5000, 64, device="cuda", requires_grad=True)
    out = sk.spmm(X, U)
    assert rel_err(out, dense_product(A, U)) < 1e-5
    g = torch.randn_like(out)
    out.backward(g)
    assert rel_err(U.grad, torch.from_numpy(A.toarray()).T @ g.double().cpu()) < 1e-5


def test_bench_spmm_smoke(tmp_path):
    """bench/bench_spmm.py runs on a CPU at a tiny size and writes its table."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_spmm.py"), "--device", "cpu", "--n", "300",
           "--r", "3", "--graphs", "knn_gauss", "random", "--warmup", "0", "--rep", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (table,) = tmp_path.glob("bench_spmm-*.md")
    lines = table.read_text().splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| graph")).strip("|").split("|")]
    rows = [line for line in lines if line.startswith("| knn_gauss") or line.startswith("| random")]
    assert len(rows) == 4
    for line in rows:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        ours_ms, torch_ms, err = float(cells["ours_ms"]), float(cells["torch_ms"]), float(cells["rel_err"])
        assert ours_ms > 0 and torch_ms > 0 and err < 1e-4, line
        if cells["op"] == "spmm":  # the gather floor counts more bytes than U read once
            assert float(cells["gather_frac_ours"]) > float(cells["frac_ours"]) > 0, line


def test_gather_bytes_counts_a_sector_per_stored_entry():
    sys.path.insert(0, ROOT)
    from bench.bench_spmm import gather_bytes

    X = as_csr(random_graph(50, seed=5), dtype=torch.float32)
    # r = 3 floats take one 32-byte sector, r = 9 two; each entry also reads its index and value
    idx = X.col_indices.element_size()
    assert gather_bytes(X, 3, 4) == X.nnz * (idx + 4 + 32) + 51 * 8 + 50 * 3 * 4
    assert gather_bytes(X, 9, 4) == X.nnz * (idx + 4 + 64) + 51 * 8 + 50 * 9 * 4


# ---- layering ---------------------------------------------------------------------------------------------------


def test_csr_matmul_is_spmm():
    A = random_graph(20, seed=21)
    X = as_csr(A, dtype=torch.float64)
    U = torch.rand(20, 3, dtype=torch.float64)
    assert torch.equal(X @ U, sk.spmm(X, U))


def test_the_container_imports_no_op():
    """symnmf_kernels.sparse knows nothing of the ops (ops.spmm attaches CSR's `@`): no import circle."""
    import ast

    for module in ("sparse.py", "_extension.py"):
        tree = ast.parse(open(os.path.join(ROOT, "symnmf_kernels", module)).read())
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [m for m in imported if m.startswith(("ops", ".ops", "symnmf_kernels.ops"))], (module, imported)
