"""nnls(G, C, x0=None): many non-negative least-squares problems that share one Gram matrix, exact to KKT.

For every row c of C (..., m, k) and the symmetric positive definite G (..., k, k)
of its problem,

    x = argmin_{x >= 0}  1/2 x^T G x - c^T x,

which is min_{x >= 0} ||A x - b||_2 with G = A^T A and c = A^T b: the columns
of B in min_{S >= 0} ||B - A S||_F are the rows of C = B^T A, and S^T is the
result. G is formed once (`gram(A)`), whatever the number of right-hand sides.

The solve is block principal pivoting (Kim & Park, SIAM J. Sci. Comput. 2011):
each row keeps a passive set F, solves G_FF x_F = c_F, and exchanges all its
infeasible indices at once (one at a time when that stops making progress),
until x >= 0 and G x - c >= 0 off F, the KKT conditions. A warm start x0 gives
the initial passive sets {x0 > 0}; between training steps they barely change,
so most rows are done after one solve.

On a CUDA tensor (and a CPU tensor under TRITON_INTERPRET=1) the Triton kernel
of symnmf_kernels/triton/nnls.py runs, a tile of rows per program with each
row's k x k system in registers, without a host synchronisation, for k <= 32.
On the CPU the extension's kernel (csrc/cpu/nnls_cpu.cpp) runs the same
pivoting row by row, in one call. Without the extension, and on CUDA beyond
k = 32, the torch path runs: each round solves every distinct passive set of a
problem once (one small Cholesky inverse each) and applies it to the rows that
share it, or, where most rows have a set of their own, solves each row's system
gathered to its passive set's size; it reads a flag back per round to drop
finished rows.

The backward goes through the active set: with P = {x > 0},
x_P = G_PP^{-1} c_P, so for an upstream gradient dx

    z_P = G_PP^{-1} dx_P (z = 0 off P),   dC = z,   dG = -sym(sum_rows z x^T),

the gradient of G taken symmetric (G is read as its symmetric part, as in
symnmf_kernels.reference.nnls). A NaN or Inf in a row of C, or in G, makes
that row's solution NaN, never zeros; a G that is not positive definite on a
passive set gives NaN in the rows that meet it.
"""
import torch

from . import _launch
from ._common import check_same, check_square, check_tensor, first_order_only, needs_grad, use_triton, warn_once
from .._extension import has_cpu_op

__all__ = ["nnls"]

# y_j = (G x - c)_j < 0 is an infeasibility only below -TOL_REL * max_i |c_i|: a y_j that is zero in exact
# arithmetic (a degenerate problem) would otherwise flip in and out of the passive set on rounding errors.
TOL_REL = {torch.float32: 2.0 ** -17, torch.float64: 2.0 ** -46}
# Values of the (rows, k, k) systems one torch step gathers: ~32 MiB of float64 on the CPU, within its caches.
# On a GPU (k beyond the kernel's limit) 16 times as many: at k = 64 the CPU's chunk is 1,024 rows, so a solve
# of 1M rows took about a thousand steps of a dozen small kernels each (SymANLS there: 1.19 s an iteration on an
# H200, docs/gpu_performance.md); the GPU's chunk launches 16 times fewer, at a few hundred MiB of temporaries.
_CHUNK_ELEMENTS = 1 << 22
_CHUNK_ELEMENTS_GPU = 1 << 26


def _chunk_rows(k, device):
    """Rows of (k, k) systems one torch step gathers on this device."""
    return max(1, (_CHUNK_ELEMENTS if device.type == "cpu" else _CHUNK_ELEMENTS_GPU) // (k * k))


def default_max_rounds(k):
    """Pivoting rounds before a row that is still infeasible is clipped (never reached in the tests)."""
    return 5 * k + 20


# ---- the torch path (CPU, and k beyond the kernel) -------------------------------------------------------------


def _symmetric(G):
    return 0.5 * (G + G.mT)


def passive_solve_torch(G, problem, C, F):
    """X with X_F = G_FF^{-1} C_F and X = 0 off F, for rows C (N, k) of the problems `problem` (N,) with
    the Grams G (B, k, k) and passive sets F (N, k, bool).

    Rows of one problem that share a passive set share one Cholesky inverse: at small k there are far
    fewer distinct sets than rows. Otherwise each row solves its own system of its passive set's size.
    """
    N, k = C.shape
    if k + max(1, G.shape[0] - 1).bit_length() > 62:
        return _row_solves(G, problem, C, F)
    # One int64 per (problem, passive set): a 1-d unique, far faster than unique(dim=0) on rows.
    bits = torch.ones((), dtype=torch.int64, device=C.device) << torch.arange(k, device=C.device)
    codes, which = torch.unique((problem << k) | (F.long() * bits).sum(1), return_inverse=True)
    if 2 * codes.shape[0] > N:  # most rows have a passive set of their own: no inverse to share
        return _row_solves(G, problem, C, F)
    set_problem = codes >> k
    Fs = ((codes[:, None] & bits) != 0).to(G.dtype)
    mask = Fs[:, :, None] * Fs[:, None, :]
    M = G[set_problem] * mask + torch.diag_embed(1.0 - Fs)
    L, info = torch.linalg.cholesky_ex(M)
    failed = (info != 0)[:, None, None]
    eye = torch.eye(k, dtype=G.dtype, device=G.device)
    # A failed factor may hold zeros on its diagonal, which cholesky_inverse refuses: invert I there instead.
    inverse = torch.where(failed, float("nan"), torch.cholesky_inverse(torch.where(failed, eye, L)) * mask)
    X = torch.empty_like(C)
    step = _chunk_rows(k, C.device)
    for start in range(0, N, step):
        sl = slice(start, start + step)
        # The inverse is symmetric: x^T = c^T G_FF^{-1}.
        X[sl] = (C[sl, None, :] @ inverse[which[sl]])[:, 0]
    return X


# Rows solve systems of their passive set's size rounded up to a multiple of this: a few launches per round,
# and a 64-wide problem whose rows hold 10-20 passive indices (SymANLS at r = 64) factors 16-24-wide systems,
# not 64-wide ones, at a fraction of the flops and of the gathered bytes.
_WIDTH_STEP = 8


def _row_solves(G, problem, C, F):
    """passive_solve_torch with one Cholesky solve per row, of the row's passive set gathered."""
    N, k = C.shape
    size = F.sum(1)
    width = torch.clamp((size + _WIDTH_STEP - 1) // _WIDTH_STEP * _WIDTH_STEP, max=k)
    if G.shape[0] == 1:
        # Rows whose set is full share one inverse, applied as one product: a start from a positive factor
        # (SymANLS's first solves) has every row there.
        width = torch.where(size == k, k + 1, width)
    counts = torch.bincount(width, minlength=k + 2).tolist()  # one read-back a round; the loop reads one anyway
    by_width = torch.argsort(width, stable=True)
    X = torch.zeros_like(C)
    first = counts[0]  # rows with an empty passive set keep x = 0
    for w in range(1, k + 1):
        rows_w = by_width[first:first + counts[w]]
        first += counts[w]
        step = _chunk_rows(w, C.device)
        for start in range(0, rows_w.numel(), step):
            rows = rows_w[start:start + step]
            # Each row's passive indices first, in order, then the rest: a stable sort of the complement.
            cols = torch.argsort((~F[rows]).to(torch.uint8), dim=1, stable=True)[:, :w]
            X[rows] = _gathered_solve(G, problem[rows], C[rows], cols, size[rows])
    if counts[k + 1]:
        rows = by_width[first:]
        L, info = torch.linalg.cholesky_ex(G[0])
        X[rows] = C[rows] @ torch.cholesky_inverse(L) if int(info) == 0 else float("nan")
    return X


def _gathered_solve(G, problem, C, cols, size):
    """Rows (n, k) of X: x_F = G_FF^{-1} c_F with F the first size[i] of the indices cols (n, w) of row i."""
    n, k = C.shape
    w = cols.shape[1]
    valid = torch.arange(w, device=C.device) < size[:, None]
    # The (n, w, w) systems gathered in one flat index: advanced indexing with three would build three.
    flat = (problem * (k * k))[:, None, None] + cols[:, :, None] * k + cols[:, None, :]
    M = torch.where(valid[:, :, None] & valid[:, None, :], G.reshape(-1)[flat], torch.diag_embed((~valid).to(G.dtype)))
    L, info = torch.linalg.cholesky_ex(M)
    failed = (info != 0)[:, None]
    eye = torch.eye(w, dtype=G.dtype, device=G.device)
    # A failed factor may hold zeros on its diagonal, which cholesky_solve would divide by: solve with I there.
    x = torch.cholesky_solve(torch.where(valid, C.gather(1, cols), 0.0)[:, :, None],
                             torch.where(failed[:, :, None], eye, L))[:, :, 0]
    X = torch.zeros_like(C).scatter_(1, cols, torch.where(valid, x, 0.0))
    return torch.where(failed, float("nan"), X)  # the whole row, as the k x k solve gives it


def _rows_times_gram(X, G, problem):
    """Row i of X (N, k) times the Gram of its problem: (N, k)."""
    if G.shape[0] == 1:
        return X @ G[0]
    out = torch.empty_like(X)
    step = _chunk_rows(X.shape[1], X.device)
    for start in range(0, X.shape[0], step):
        sl = slice(start, start + step)
        out[sl] = (X[sl, None, :] @ G[problem[sl]])[:, 0]
    return out


def _infeasible(G, problem, C, X, F, tol):
    Y = _rows_times_gram(X, G, problem) - C  # G symmetric: row i is (G x_i - c_i)^T
    return (F & (X < 0)) | (~F & (Y < -tol))


def _native_runs(C):
    """Whether the extension's CPU kernel solves these rows (outside torch.compile's tracing)."""
    return _NATIVE_NNLS and C.is_cpu and not torch.compiler.is_compiling()


def _poison(G, C):
    """A NaN (or Inf) in a row of C, or anywhere in its problem's G, as a NaN to add to that row's solution."""
    return (C * 0).sum(-1, keepdim=True) + (G * 0).sum((-2, -1))[:, None, None]


def nnls_torch(G, C, X0, max_rounds, tol_rel=None):
    """Block principal pivoting on the rows of C (B, m, k) with the Grams G (B, k, k).

    tol_rel: y_j < -tol_rel * max_i |c_i| is infeasible (default TOL_REL of C's dtype).
    """
    tol_rel = TOL_REL[C.dtype] if tol_rel is None else tol_rel
    if _native_runs(C):  # it symmetrises G and makes rows with a NaN or Inf NaN itself
        return torch.ops.symnmf_kernels.nnls_rows(G, C, X0, max_rounds, tol_rel, False)
    G = _symmetric(G)
    B, m, k = C.shape
    C = C.reshape(B * m, k)  # flattened rows: finished rows of every problem drop out together
    problem = torch.arange(B, device=C.device).repeat_interleave(m)
    tol = tol_rel * C.abs().amax(-1, keepdim=True)
    F = (X0.reshape(B * m, k) > 0) if X0 is not None else torch.zeros(C.shape, dtype=torch.bool, device=C.device)
    X = passive_solve_torch(G, problem, C, F)
    infeasible = _infeasible(G, problem, C, X, F, tol)
    alpha = torch.full((B * m,), 3, dtype=torch.int64, device=C.device)
    beta = torch.full((B * m,), k + 1, dtype=torch.int64, device=C.device)
    cols = torch.arange(k, device=C.device)
    active = infeasible.any(1).nonzero().squeeze(1)
    rounds = 0
    while active.numel() > 0 and rounds < max_rounds:
        V = infeasible[active]
        count = V.sum(1)
        a, b = alpha[active], beta[active]
        fewer = count < b
        full_exchange = fewer | (a >= 1)
        beta[active] = torch.where(fewer, count, b)
        alpha[active] = torch.where(fewer, torch.full_like(a, 3), torch.where(a >= 1, a - 1, a))
        largest = torch.where(V, cols, -1).amax(1)
        Fa = F[active] ^ torch.where(full_exchange[:, None], V, cols[None, :] == largest[:, None])
        Ca, pa = C[active], problem[active]
        Xa = passive_solve_torch(G, pa, Ca, Fa)
        Ia = _infeasible(G, pa, Ca, Xa, Fa, tol[active])
        F[active], X[active], infeasible[active] = Fa, Xa, Ia
        active = active[Ia.any(1)]
        rounds += 1
    return torch.where(X < 0, 0.0, X).reshape(B, m, k) + _poison(G, C.reshape(B, m, k))


def nnls_backward_torch(G, X, dX):
    """Z with z_P = G_PP^{-1} dx_P and z = 0 off P = {x > 0}, row by row: dC = Z, and dG = -sym(Z^T X).

    A row of X that the forward made NaN (a non-finite G or row of C) has no passive set, so its z would be 0:
    X * 0 puts the NaN back, as in the Triton kernel's backward (and the reference's, for a non-finite G)."""
    B, m, k = X.shape
    if _native_runs(dX):
        Z = torch.ops.symnmf_kernels.nnls_rows(G, dX, X, 0, 0.0, True)
    else:
        problem = torch.arange(B, device=X.device).repeat_interleave(m)
        Z = passive_solve_torch(_symmetric(G), problem, dX.reshape(B * m, k), X.reshape(B * m, k) > 0)
    return Z.reshape(B, m, k) + X * 0


def _dG(Z, X):
    # d(G_PP^{-1} c_P) = -G_PP^{-1} dG_PP x_P: the gradient of G is -Z^T X summed over rows, made symmetric.
    S = Z.mT @ X
    return -0.5 * (S + S.mT)


def _torch_path(G, C, x0, max_rounds):
    k = C.shape[-1]
    X03 = x0.reshape(-1, *C.shape[-2:]) if x0 is not None else None
    return nnls_torch(G.reshape(-1, k, k), C.reshape(-1, *C.shape[-2:]), X03, max_rounds).reshape(C.shape)


class _NnlsTorch(torch.autograd.Function):
    """The torch path with its backward written out, without the custom op's dispatch (a CPU training step of
    small layers spent most of its time there)."""

    @staticmethod
    def forward(ctx, G, C, x0, max_rounds):
        X = _torch_path(G, C, x0, max_rounds)
        ctx.save_for_backward(G, X)
        return X

    @staticmethod
    @first_order_only
    def backward(ctx, dX):
        G, X = ctx.saved_tensors
        k = X.shape[-1]
        Z = nnls_backward_torch(G.reshape(-1, k, k), X.reshape(-1, *X.shape[-2:]), dX.reshape(-1, *X.shape[-2:]))
        Z = Z.reshape(X.shape)
        return (_dG(Z, X) if ctx.needs_input_grad[0] else None), (Z if ctx.needs_input_grad[1] else None), None, None


# The extension's CPU kernel of the torch path (csrc/cpu/nnls_cpu.cpp): the same pivoting in one call.
_NATIVE_NNLS = has_cpu_op("nnls_rows")

if _NATIVE_NNLS:
    @torch.library.register_fake("symnmf_kernels::nnls_rows")
    def _(G, C, x0, max_rounds, tol_rel, solve_only):
        return torch.empty_like(C, memory_format=torch.contiguous_format)


# ---- the custom ops --------------------------------------------------------------------------------------------


def _kernel_runs(C):
    k = C.shape[-1]
    if not use_triton(C):
        return False
    if k > _launch.NNLS_MAX_K:
        warn_once(("nnls-large-k", C.device.type),
                  f"nnls: k = {k} exceeds the kernel's limit of {_launch.NNLS_MAX_K}; the torch path runs, "
                  "which reads a flag back from the device once per pivoting round")
        return False
    return True


@torch.library.custom_op("symnmf_kernels::nnls", mutates_args=())
def nnls_op(G: torch.Tensor, C: torch.Tensor, x0: torch.Tensor | None, max_rounds: int) -> torch.Tensor:
    """Rows of argmin_{X >= 0} 1/2 x^T G x - c^T x for G (..., k, k) and C (..., m, k) of one batch shape."""
    if not _kernel_runs(C):
        return _torch_path(G, C, x0, max_rounds)
    k = C.shape[-1]
    C3 = C.reshape(-1, *C.shape[-2:])
    X03 = x0.reshape(C3.shape) if x0 is not None else None
    return _launch.nnls(G.reshape(-1, k, k), C3, X03, max_rounds, TOL_REL[C.dtype]).reshape(C.shape)


@nnls_op.register_fake
def _(G, C, x0, max_rounds):
    return torch.empty_like(C, memory_format=torch.contiguous_format)


@torch.library.custom_op("symnmf_kernels::nnls_passive_solve", mutates_args=())
def nnls_passive_solve(G: torch.Tensor, D: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Z with Z_P = G_PP^{-1} D_P and Z = 0 off P = {X > 0}, row by row: the backward's solve."""
    k = D.shape[-1]
    G3, D3, X3 = G.reshape(-1, k, k), D.reshape(-1, *D.shape[-2:]), X.reshape(-1, *X.shape[-2:])
    if _kernel_runs(D):
        Z = _launch.nnls(G3, D3, X3, 0, 0.0, solve_only=True)
    else:
        Z = nnls_backward_torch(G3, X3, D3)
    return Z.reshape(D.shape)


@nnls_passive_solve.register_fake
def _(G, D, X):
    return torch.empty_like(D, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    G, C, x0, max_rounds = inputs
    ctx.save_for_backward(G, output)


def _backward(ctx, dX):
    G, X = ctx.saved_tensors
    Z = nnls_passive_solve(G, dX.contiguous(), X)
    return (_dG(Z, X) if ctx.needs_input_grad[0] else None), (Z if ctx.needs_input_grad[1] else None), None, None


nnls_op.register_autograd(_backward, setup_context=_setup)


def _check(G, C, x0, max_rounds):
    check_square(G, "G")
    check_tensor(C, "C")
    check_same(C, G, "C", "G")
    k = G.shape[-1]
    if C.shape[-1] != k:
        raise ValueError(f"C must be (..., m, k) with k = {k} (the size of G), got shape {tuple(C.shape)}")
    if C.shape[:-2] != G.shape[:-2]:
        raise ValueError(
            f"C's batch shape {tuple(C.shape[:-2])} must equal G's {tuple(G.shape[:-2])} (one Gram per problem)"
        )
    if x0 is not None:
        check_tensor(x0, "x0")
        check_same(x0, C, "x0", "C")
        if x0.shape != C.shape:
            raise ValueError(f"x0 must have C's shape {tuple(C.shape)}, got {tuple(x0.shape)}")
    if max_rounds is not None and (isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0):
        raise ValueError(f"max_rounds must be an int >= 0, got {max_rounds!r}")


def nnls(G, C, x0=None, *, max_rounds=None):
    """X (..., m, k) whose rows solve min_{x >= 0} 1/2 x^T G x - c^T x for the rows c of C (..., m, k).

    G (..., k, k) is symmetric positive definite (read as its symmetric part), one per problem of the
    batch shape (...). For min_{S >= 0} ||B - A S||_F pass G = gram(A) and C = B^T A; then S = X^T.
    x0 (C's shape) warm-starts the passive sets at {x0 > 0}. max_rounds caps the pivoting rounds
    (default 5 k + 20, far more than it takes in practice); a row still infeasible then is clipped at 0.
    Differentiable in G and C, through the active set of the solution.
    """
    _check(G, C, x0, max_rounds)
    max_rounds = default_max_rounds(G.shape[-1]) if max_rounds is None else int(max_rounds)
    x0 = None if x0 is None else x0.detach()
    if not _kernel_runs(C):
        if needs_grad(G, C):
            return _NnlsTorch.apply(G, C, x0, max_rounds)
        return _torch_path(G, C, x0, max_rounds)
    return nnls_op(G, C, x0, max_rounds)
