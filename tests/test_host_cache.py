"""The CPU kernels' output cache (csrc/cpu/host_cache.h; docs/cpu_backend.md, "The host cache"): a freed large
output's buffer is reused by the next output of its size, every output is written in full, the limit holds, and
the cache can be emptied or turned off."""
import os
import subprocess
import sys

import pytest
import torch

import symnmf_kernels as sk
from symnmf_kernels.ops.spmm import extension_status
from conftest import rel_err

pytestmark = pytest.mark.skipif(not extension_status()["cpu"], reason="the extension is not built")

N = 40_000  # an n x 8 float32 output of 1.28 MB: past the cache's 1 MiB threshold


@pytest.fixture(autouse=True)
def fresh_cache():
    before = sk.set_host_cache_limit(256 << 20)
    sk.empty_host_cache()
    yield
    sk.set_host_cache_limit(before)


def tall_mm(A, M):
    return torch.ops.symnmf_kernels.tall_mm(A, M)


def test_a_freed_output_is_reused_and_written_in_full():
    A, M = torch.rand(N, 8), torch.rand(8, 8)
    out = tall_mm(A, M)
    ptr, nbytes = out.data_ptr(), out.untyped_storage().nbytes()
    out.fill_(float("nan"))  # what the next output must not show
    del out
    assert sk.host_cache_bytes() == nbytes
    A2 = torch.rand(N, 8)
    again = tall_mm(A2, M)
    assert again.data_ptr() == ptr and sk.host_cache_bytes() == 0
    assert rel_err(again, A2.double() @ M.double()) <= 1e-6


@pytest.mark.parametrize("restarts", [1, 3])
def test_every_cached_kernel_writes_its_whole_output(restarts):
    """Each kernel that takes its outputs from the cache, run on buffers left full of NaN by the call before."""
    n, r = 5_000, 64  # (restarts, n, r) float32: 1.28 MB per problem
    gen = torch.Generator().manual_seed(0)
    A = (torch.rand(n, n, generator=gen) < 0.002) * torch.rand(n, n, generator=gen)
    A[:100] = 0  # rows without entries, whose output rows are zeros the kernels must write too
    A[:, :100] = 0
    X = ((A + A.T) / 2).to_sparse_csr()
    crow, col, val = X.crow_indices(), X.col_indices(), X.values()
    U, P, T = (torch.rand(restarts, n, r, generator=gen) for _ in range(3))
    lam = torch.rand(restarts, generator=gen)
    ops = torch.ops.symnmf_kernels

    def calls():
        S, R, _ = ops.sparse_loss_terms_csr(crow, col, val, U, P, lam)
        dU = ops.sparse_loss_grad_csr(crow, col, val, T, S, R, lam, lam, lam)
        return [sk.spmm(X, U), S, R, dU]

    first = calls()
    want = [t.clone() for t in first]
    for t in first:
        t.fill_(float("nan"))
    del first
    assert sk.host_cache_bytes() > 0
    for got, expected in zip(calls(), want):
        assert torch.equal(got, expected)


def test_fused_relu_outputs_are_written_in_full():
    P, Ginv, grad = torch.randn(N, 8), torch.eye(8) + 0.1, torch.randn(N, 8)
    ops = torch.ops.symnmf_kernels
    Y, YtY = ops.tall_apply_relu_gram(P, Ginv)
    dP, _ = ops.tall_apply_relu_backward(grad, Y, P, Ginv)
    want = Y.clone(), dP.clone()
    Y.fill_(float("nan"))
    dP.fill_(float("nan"))
    del Y, dP
    Y, _ = ops.tall_apply_relu_gram(P, Ginv)
    dP, _ = ops.tall_apply_relu_backward(grad, Y, P, Ginv)
    assert torch.equal(Y, want[0]) and torch.equal(dP, want[1])


def test_the_limit_holds_and_zero_turns_the_cache_off():
    A, M = torch.rand(N, 8), torch.rand(8, 8)
    nbytes = N * 8 * 4
    outs = [tall_mm(A, M) for _ in range(3)]
    assert sk.set_host_cache_limit(2 * nbytes) == 256 << 20
    del outs
    assert sk.host_cache_bytes() == 2 * nbytes  # the third buffer went back to the system
    assert sk.set_host_cache_limit(0) == 2 * nbytes
    assert sk.host_cache_bytes() == 0
    out = tall_mm(A, M)
    del out
    assert sk.host_cache_bytes() == 0
    sk.set_host_cache_limit(256 << 20)
    small = tall_mm(torch.rand(1000, 8), M)  # under the 1 MiB threshold: never cached
    del small
    assert sk.host_cache_bytes() == 0


def test_a_cached_output_can_be_resized():
    out = tall_mm(torch.rand(N, 8), torch.rand(8, 8))
    nbytes = out.untyped_storage().nbytes()
    out.resize_(2 * N, 8)  # new storage from torch's allocator; the old buffer goes back to the cache
    out.fill_(1.0)
    assert sk.host_cache_bytes() == nbytes
    del out
    assert sk.host_cache_bytes() == nbytes


def test_empty_host_cache_keeps_the_limit():
    sk.set_host_cache_limit(64 << 20)
    del_me = tall_mm(torch.rand(N, 8), torch.rand(8, 8))
    del del_me
    assert sk.host_cache_bytes() > 0
    sk.empty_host_cache()
    assert sk.host_cache_bytes() == 0
    assert sk.set_host_cache_limit(256 << 20) == 64 << 20


def test_bad_limit_is_refused():
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        sk.set_host_cache_limit(-1)


@pytest.mark.parametrize("value, limit", [("0", 0), ("64", 64 << 20)])
def test_the_environment_sets_the_starting_limit(value, limit):
    code = "import symnmf_kernels as sk; print(sk.set_host_cache_limit(0))"
    env = dict(os.environ, SYMNMF_HOST_CACHE_MB=value, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert int(out.stdout.strip()) == limit
