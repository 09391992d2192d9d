"""SymNMF losses for a sparse X, never forming an n x n matrix (docs/design.md, "The sparse losses").

    sparse_sym_loss(X, U)             ||X - U U^T||_F^2
    sparse_layer_loss(X, U, P, lam)   (||X - U U^T||_F^2, ||P - (X U + lam U)||_F^2)

both through one SpMM S = X U per call:

    ||X - U U^T||^2 = ||X||^2 - 2 <S, U> + ||U^T U||^2       d/dU = -4 S + 4 U (U^T U)
    ||R||^2, R = P - S - lam U                               d/dP = 2 R, d/dlam = -2 <R, U>,
                                                             d/dU = -2 (X^T R + lam R)

(the first gradient for a symmetric X; a general X adds X^T U - S). A layer of
SymNMF-Net needs the loss of its output U_i and the regulariser of the next
block's weight P_{i+1} against U_i: `sparse_layer_loss(X, U_i, P_{i+1}, lam)`
serves both with one SpMM forward and at most one backward (X^T (2 b R), and
none at all for the loss alone with a symmetric X).

The passes over n x r data around the SpMM are fused Triton kernels
(symnmf_kernels.triton.sparse_loss) on CUDA and under TRITON_INTERPRET=1, plain
torch otherwise. The expansion of ||X - U U^T||^2 cancels when the fit is
good: its scalar sums run in float64, but a float32 S = X U still limits the
loss to about 1e-7 ||X||^2 absolute accuracy.
"""
import math
from typing import Optional

import torch

from . import _common, _launch
from ._common import as_lam, dot64, first_order_only, needs_grad, use_triton
from .._extension import has_cpu_op
from .gram import tall_gram, tall_mm
from .spmm import _check_dense, host_side, layout

__all__ = ["sparse_sym_loss", "sparse_layer_loss"]


# ---- the torch path of the passes (CPU, and r beyond the fused kernels) ----------------------------------------
# Plain torch functions, called directly by the autograd below when the Triton kernels do not run (a custom
# op's dispatch costs more than the work at small n), and by the custom ops' own torch branches.


def _col(t):
    """A (B,) tensor as (B, 1, 1), to scale (B, n, r) tensors."""
    return t[:, None, None]


def sparse_loss_terms_torch(U, S, P, lam, with_gram=True):
    su = dot64(U, S)
    if P is None:
        rr = ru = torch.zeros_like(su)
    else:
        R = torch.addcmul(P - S, _col(lam), U, value=-1)
        rr = dot64(R, R)
        ru = dot64(R, U)
    return torch.stack([su, rr, ru], dim=-1), (tall_gram(U, U) if with_gram else _no_gram(U))


def _no_gram(U):
    """The Gram slot of sparse_loss_terms without with_gram: an empty (B, 0, 0) tensor."""
    return U.new_empty((U.shape[0], 0, 0))


def sparse_reg_grad_torch(U, S, P, lam, coef):
    W = torch.addcmul(P - S, _col(lam), U, value=-1)
    return W.mul_(_col(coef))


def sparse_loss_grad_torch(U, S, G, W, Y, lam, coef_s, coef_g):
    """sparse_loss_grad's torch twin; coef_g None: no U G term (its product is not formed)."""
    if coef_g is None:
        dU = S * _col(coef_s)
    else:
        dU = tall_mm(U, _col(coef_g) * G)
        dU.addcmul_(_col(coef_s), S)
    if W is not None:
        dU.addcmul_(_col(lam), W, value=-1)
    if Y is not None:
        dU.sub_(Y)
    return dU


# ---- the fused passes as custom ops (opaque to torch.compile, checked by opcheck) -----------------------------


def _vec(t, B):
    """A per-problem scalar as a contiguous (B,) tensor."""
    return t.reshape(-1).expand(B).contiguous()


@torch.library.custom_op("symnmf_kernels::sparse_loss_terms", mutates_args=())
def sparse_loss_terms(U: torch.Tensor, S: torch.Tensor, P: Optional[torch.Tensor], lam: torch.Tensor,
                      with_gram: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Reductions of the forward for U, S, P of shape (B, n, r) and lam (B,).

    Returns sums (B, 3) float64 = (<S, U>, ||R||^2, <R, U>) with R = P - S - lam U
    (zeros without P), and the Gram U^T U (B, r, r) in U's dtype; with_gram=False (the caller has the Gram)
    leaves its products out and returns an empty (B, 0, 0) in its place.
    """
    r = U.shape[-1]
    if use_triton(U, r):
        sums, G = _launch.sparse_loss_terms(U, S, P, lam, with_gram)
        return sums, (G if with_gram else _no_gram(U))
    return sparse_loss_terms_torch(U, S, P, lam, with_gram)


@sparse_loss_terms.register_fake
def _(U, S, P, lam, with_gram=True):
    B, _, r = U.shape
    return U.new_empty((B, 3), dtype=torch.float64), U.new_empty((B, r, r) if with_gram else (B, 0, 0))


@torch.library.custom_op("symnmf_kernels::sparse_reg_grad", mutates_args=())
def sparse_reg_grad(U: torch.Tensor, S: torch.Tensor, P: torch.Tensor, lam: torch.Tensor, coef: torch.Tensor
                    ) -> torch.Tensor:
    """W = coef (P - S - lam U) for (B, n, r) tensors and (B,) lam, coef."""
    r = U.shape[-1]
    if use_triton(U, r):
        return _launch.sparse_reg_grad(U, S, P, lam, coef)
    return sparse_reg_grad_torch(U, S, P, lam, coef)


@sparse_reg_grad.register_fake
def _(U, S, P, lam, coef):
    return torch.empty_like(U, memory_format=torch.contiguous_format)


@torch.library.custom_op("symnmf_kernels::sparse_loss_grad", mutates_args=())
def sparse_loss_grad(U: torch.Tensor, S: torch.Tensor, G: torch.Tensor, W: Optional[torch.Tensor],
                     Y: Optional[torch.Tensor], lam: torch.Tensor, coef_s: torch.Tensor,
                     coef_g: Optional[torch.Tensor]) -> torch.Tensor:
    """dU = coef_s S + coef_g U G - lam W - Y for (B, n, r) U, S, W, Y, (B, r, r) G and (B,) scalars; without
    coef_g the U G term is left out (neither pass forms the product)."""
    r = U.shape[-1]
    if use_triton(U, r):
        return _launch.sparse_loss_grad(U, S, G, W, Y, lam, coef_s, coef_g)
    return sparse_loss_grad_torch(U, S, G, W, Y, lam, coef_s, coef_g)


@sparse_loss_grad.register_fake
def _(U, S, G, W, Y, lam, coef_s, coef_g):
    return torch.empty_like(U, memory_format=torch.contiguous_format)


def _fused(op, launcher):
    """The Triton path of one of the ops above inside the layer loss's autograd node: the launcher itself in
    eager mode, where the custom op's dispatch would cost host time a small call on a GPU cannot hide; the
    custom op under torch.compile."""
    def call(*args):
        return op(*args) if torch.compiler.is_compiling() else launcher(*args)

    return call


def _fused_terms(U, S, P, lam, x_sq, gram):
    """(sums (B, 3), loss, reg, G) of the Triton path's forward around S = X U; the caller's Gram (gram, or None)
    leaves the terms pass's own products out. In eager mode the terms pass (and the reduction of its Gram, when
    it forms one) and one program per problem for the scalars; under torch.compile the custom op and torch's
    scalar operations."""
    with_gram = gram is None
    if torch.compiler.is_compiling():
        sums, G = sparse_loss_terms(U, S, P, lam, with_gram)
        G = G if with_gram else gram
        loss = (x_sq - 2 * sums[:, 0] + G.to(torch.float64).pow(2).sum((-2, -1))).to(U.dtype)
        return sums, loss, sums[:, 1].to(U.dtype), G
    partials, G = _launch.sparse_loss_terms(U, S, P, lam, with_gram, reduce=False)
    G = G if with_gram else gram
    sums, loss, reg = _launch.sparse_loss_values(partials, G, x_sq, U.dtype)
    return sums, loss, reg, G


_reg_grad_fused = _fused(sparse_reg_grad, _launch.sparse_reg_grad)
_loss_grad_fused = _fused(sparse_loss_grad, _launch.sparse_loss_grad)


# ---- autograd --------------------------------------------------------------------------------------------------


_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _spmm_no_autograd(crow, col, values, M):
    """The SpMM operator called below autograd: inside a forward that records nothing, a CPU call skips the
    Python autograd wrapper of the op (a few tens of microseconds, as much as the product at n = 1000)."""
    if M.device.type == "cpu" and not torch.compiler.is_compiling():
        return torch.ops.symnmf_kernels.spmm_csr.default.redispatch(_CPU_KEYS, crow, col, values, M, None, None, None)
    return torch.ops.symnmf_kernels.spmm_csr(crow, col, values, M)


def _times_x(crow, col, values, M, blockdiag):
    """X @ M[b] for every b of M (B, n, r): one shared X, or the b-th block of a block-diagonal X."""
    B, n, r = M.shape
    if blockdiag:
        return _spmm_no_autograd(crow, col, values, M.reshape(B * n, r)).reshape(B, n, r)
    return _spmm_no_autograd(crow, col, values, M)


def _has_native_loss(U):
    """Whether the extension's fused CPU kernels of this loss run for U (they exist only on the CPU)."""
    return _NATIVE_LOSS and U.is_cpu and not torch.compiler.is_compiling()


def _loss_from_terms(x_sq, su, G, dtype):
    """||X||^2 - 2 <S, U> + ||U^T U||^2 per problem in float64 (||U^T U|| from G upcast, then squared),
    returned in dtype."""
    g = torch.linalg.vector_norm(G, dim=(-2, -1), dtype=torch.float64)
    return torch.addcmul(x_sq, g, g).sub_(su, alpha=2).to(dtype)


_NATIVE_LOSS = has_cpu_op("sparse_loss_terms_csr")


def _native_terms(crow, col, values, U, P, lam):
    return torch.ops.symnmf_kernels.sparse_loss_terms_csr(crow, col, values, U, P, lam)


if _NATIVE_LOSS:
    @torch.library.register_fake("symnmf_kernels::sparse_loss_terms_csr")
    def _(crow_indices, col_indices, values, U, P, lam):
        B, n, r = U.shape
        R = U.new_empty((B, n, r)) if P is not None else U.new_empty((0,))
        return U.new_empty((B, n, r)), R, U.new_empty((B, 3), dtype=torch.float64)

    @torch.library.register_fake("symnmf_kernels::sparse_loss_grad_csr")
    def _(crow_indices, col_indices, values, T, S, R, lam, coef_s, coef_r):
        return torch.empty_like(S, memory_format=torch.contiguous_format)


class _SparseLayerLoss(torch.autograd.Function):
    """(loss, reg) per problem for U, P of shape (B, n, r), lam (B,); t_* is X^T (None: X symmetric)."""

    @staticmethod
    def forward(ctx, crow, col, values, t_crow, t_col, t_values, x_sq, U, P, lam, blockdiag, gram):
        # ctx is None when called directly, for a forward without autograd. gram: U^T U from the caller, or None.
        fused = use_triton(U, U.shape[-1])
        native = not fused and not blockdiag and _has_native_loss(U)
        if native:  # the extension's CPU kernels: the SpMM and the passes around it in one
            S, R, sums = _native_terms(crow, col, values, U, P, lam)
            G = tall_gram(U, U) if gram is None else gram
            loss = _loss_from_terms(x_sq, sums[:, 0], G, U.dtype)
            if P is not None:
                reg = sums[:, 1].to(U.dtype)
                P = R
            else:  # no regulariser: a zero for autograd, nothing for a caller without it
                reg = torch.zeros_like(loss) if ctx is not None else None
        elif not fused and P is None:  # the loss alone, in as few torch calls as it takes
            S = _times_x(crow, col, values, U, blockdiag)
            G = tall_gram(U, U) if gram is None else gram
            sums = dot64(U, S)[:, None]
            loss = (x_sq + dot64(G, G)).sub_(sums[:, 0], alpha=2).to(U.dtype)
            reg = torch.zeros_like(loss)
        elif not fused:  # torch path with a regulariser: R is kept for the backward, where dP = 2 greg R
            S = _times_x(crow, col, values, U, blockdiag)
            R = torch.addcmul(P - S, _col(lam), U, value=-1)
            sums = torch.stack([dot64(U, S), dot64(R, R), dot64(R, U)], dim=-1)
            G = tall_gram(U, U) if gram is None else gram
            loss = (x_sq - 2 * sums[:, 0] + dot64(G, G)).to(U.dtype)
            reg = sums[:, 1].to(U.dtype)
            P = R
        else:
            S = _times_x(crow, col, values, U, blockdiag)
            sums, loss, reg, G = _fused_terms(U, S, P, lam, x_sq, gram)
        if ctx is not None:
            ctx.fused = fused
            ctx.native = native
            # On the torch and native paths the slot of P holds R = P - S - lam U (None without P).
            ctx.save_for_backward(crow, col, values, t_crow, t_col, t_values, U, S, P, lam, G, sums)
            ctx.blockdiag = blockdiag
            ctx.has_gram = gram is not None
        return loss, reg

    @staticmethod
    @first_order_only
    def backward(ctx, gloss, greg):
        crow, col, values, t_crow, t_col, t_values, U, S, P, lam, G, sums = ctx.saved_tensors
        need_u, need_p, need_lam = ctx.needs_input_grad[7:10]
        B = U.shape[0]
        want_dgram = ctx.has_gram and ctx.needs_input_grad[11]
        if ctx.fused and t_crow is None and not torch.compiler.is_compiling():
            # symmetric X on the Triton path: every per-problem coefficient below, dlam and dgram in one launch
            coefs, dlam_all, dgram = _launch.sparse_loss_coefs(gloss, greg, sums, G if want_dgram else None, B)
            gloss_s, coef_g, coef_w = coefs
            coef_g = None if ctx.has_gram else coef_g
        else:
            gloss, greg = _vec(gloss.to(U.dtype), B), _vec(greg.to(U.dtype), B)
            # ||U^T U||^2's gradient: 4 U G through U, or 2 G to the caller's gram (whose backward takes it to U)
            dgram = _col(2 * gloss) * G if want_dgram else None
            coef_g = None if ctx.has_gram else 4 * gloss
            coef_w, gloss_s = 2 * greg, (-4 * gloss if t_crow is None else -2 * gloss)
            dlam_all = None
        dU = dP = dlam = None
        # W = 2 greg R is dP and, through X^T W + lam W, the regulariser's part of dU.
        if ctx.native and t_crow is None and P is not None:  # symmetric X: dU in one fused pass, R in P's slot
            if need_u:
                T = None if coef_g is None else U @ (_col(coef_g) * G)  # with gram, dgram carries that term
                dU = torch.ops.symnmf_kernels.sparse_loss_grad_csr(crow, col, values, T, S, P, lam, gloss_s, coef_w)
            if need_p:
                dP = P * _col(coef_w)
            if need_lam:
                dlam = (-2 * greg.to(torch.float64) * sums[:, 2]).to(lam.dtype)
            return None, None, None, None, None, None, None, dU, dP, dlam, None, dgram
        W = None
        if P is not None and (need_u or need_p):
            W = _reg_grad_fused(U, S, P, lam, coef_w) if ctx.fused else P * _col(coef_w)  # P is R there
        loss_grad = _loss_grad_fused if ctx.fused else sparse_loss_grad_torch
        if need_u:
            coef_s = gloss_s
            if t_crow is None:  # symmetric X: -2 (X U + X^T U) = -4 S
                V = W
                Xt = (crow, col, values)
            else:  # general X: -2 S - X^T (2 gloss U), folded into the one backward SpMM
                V = 2 * gloss[:, None, None] * U + (W if W is not None else 0)
                Xt = (t_crow, t_col, t_values)
            Y = _times_x(*Xt, V, ctx.blockdiag) if V is not None else None
            dU = loss_grad(U, S, G, W, Y, lam, coef_s, coef_g)
        if need_p:
            dP = W
        if need_lam and P is not None:
            dlam = dlam_all if dlam_all is not None else (-2 * greg.to(torch.float64) * sums[:, 2]).to(lam.dtype)
        return None, None, None, None, None, None, None, dU, dP, dlam, None, dgram


# ---- public functions ------------------------------------------------------------------------------------------


_NO_LAM = {}  # dtype -> a (1,) zero: the fused kernel's lam argument where there is no regulariser


@torch.compiler.disable  # host reads; a frame that runs eagerly under torch.compile must not be traced into
def _one_problem_loss(A, U, batch):
    """||X - U U^T||^2 of one problem without autograd on the CPU (the extension's kernel): <X U, U> from the
    fused kernel, ||U^T U||^2 and ||X||^2 as float64 host scalars, combined on the host; a tensor of shape batch.

    The general path costs a dozen more small tensor operations, as much as the SpMM at n = 1,000.
    """
    lam = _NO_LAM.get(U.dtype)
    if lam is None:
        lam = _NO_LAM[U.dtype] = torch.zeros(1, dtype=U.dtype)
    U3 = U.reshape(1, *U.shape[-2:])
    _, _, sums = _native_terms(A.crow_indices, A.col_indices, A.values, U3, None, lam)
    g = torch.linalg.vector_norm(torch.mm(U3[0].mT, U3[0]), dtype=torch.float64).item()
    value = A.squared_norm().item() + g * g - 2 * sums.tolist()[0][0]
    return torch.full(batch, value, dtype=U.dtype)


@torch.compiler.disable
def _squared_norm(A, blocks):
    """||X||_F^2 in float64 (per block of a block-diagonal X), cached with X (so eager even under torch.compile)."""
    return A.squared_norm(blocks)


def sparse_layer_loss(X, U, P=None, lam=0.0, symmetric=None, gram=None):
    """(||X - U U^T||_F^2, ||P - (X U + lam U)||_F^2) per problem, with one SpMM X U.

    X: sparse (n, n) (torch sparse CSR/COO, scipy.sparse or symnmf_kernels.sparse.CSR),
    shared by every problem, or the block-diagonal (B n, B n) matrix of B graphs.
    U: (n, r) or (..., n, r); P: U's shape, or None (then the second value is None).
    lam: float or tensor broadcastable to U's batch shape (learnable).
    symmetric: whether X^T = X (None: found out once per X when U requires grad).
    gram: U^T U (..., r, r) where the caller has it (SymNMF-Net's chain form makes it with each block's
        output): the loss reads ||U^T U||^2 from it and sends that term's gradient to gram, whose own
        backward reaches U, instead of forming U^T U and U (U^T U) again. It must be U^T U: it is not checked.
    Differentiable in U, P, lam and gram. Returns two tensors of shape U.shape[:-2].
    """
    _check_dense(U)
    if U.dim() < 2:
        raise ValueError(f"U must be (n, r) or (..., n, r), got shape {tuple(U.shape)}")
    A, t = host_side(X, U, symmetric)
    batch, (n, r) = U.shape[:-2], U.shape[-2:]
    B = math.prod(batch)
    if (P is None and gram is None and B == 1 and A.shape == (n, n) and _NATIVE_LOSS and _common.torch_path_cpu(U)
            and not needs_grad(U, lam if isinstance(lam, torch.Tensor) else None)):
        if not (type(lam) is float and math.isfinite(lam)):
            as_lam(lam, U, check=False)  # no regulariser to use it in, but a bad lam is still an error
        return _one_problem_loss(A, U, batch), None
    _, _, blockdiag = layout(A, U)
    n_rows, n_cols = A.shape
    if n_rows != n_cols:
        raise ValueError(f"X must be square (n, n) for the SymNMF loss, got {n_rows} x {n_cols}")
    # A tensor already of the batch shape is passed as it is: a reshape's view would put a ViewBackward node
    # between it and its gradient, and autograd then adds that gradient to the block's out of place (a new
    # n x r tensor per step and weight) instead of in place.
    U3 = U if U.shape == (B, n, r) else U.reshape(B, n, r)
    P3 = None
    if P is not None:
        _check_dense(P, "P")
        if P.shape != U.shape:
            raise ValueError(f"P must have U's shape {tuple(U.shape)}, got {tuple(P.shape)}")
        if P.device != U.device or P.dtype != U.dtype:
            raise ValueError(f"P ({P.dtype}, {P.device}) must share U's dtype and device ({U.dtype}, {U.device})")
        P3 = P if P.shape == (B, n, r) else P.reshape(B, n, r)
    # contiguous: the kernels read lam[b] for every b, which an expanded 0-d tensor does not hold.
    # Any finite lam is valid here: the regulariser has no Gram to keep positive definite.
    lam_b = as_lam(lam, U, check=False, shape=(B,))
    if lam_b.shape != (B,) or not lam_b.is_contiguous():
        lam_b = lam_b.expand(batch).reshape(B).contiguous()
    # ||X||^2: per block of a block-diagonal X; else one 0-d sum that broadcasts to every problem
    x_sq = _squared_norm(A, B if blockdiag else 1)
    G3 = None
    if gram is not None:
        _check_dense(gram, "gram")
        if gram.shape != (*batch, r, r) or gram.dtype != U.dtype or gram.device != U.device:
            raise ValueError(f"gram must be U^T U, of shape {(*batch, r, r)} and U's dtype and device, got "
                             f"{tuple(gram.shape)} ({gram.dtype}, {gram.device})")
        G3 = gram if gram.shape == (B, r, r) else gram.reshape(B, r, r)
    args = (A.crow_indices, A.col_indices, A.values, *t, x_sq, U3, P3, lam_b, blockdiag, G3)
    if needs_grad(U3, P3, lam_b, G3):
        loss, reg = _SparseLayerLoss.apply(*args)
    else:  # nothing to differentiate: the forward alone, without an autograd node
        loss, reg = _SparseLayerLoss.forward(None, *args)
    return loss.reshape(batch), (reg.reshape(batch) if P is not None else None)


def sparse_sym_loss(X, U, symmetric=None):
    """||X - U U^T||_F^2 per problem (shape U.shape[:-2]) for a sparse X, differentiable in U.

    X and U as in `sparse_layer_loss`. For a symmetric X the gradient
    -4 X U + 4 U (U^T U) reuses the forward's SpMM: the backward runs none.
    """
    return sparse_layer_loss(X, U, None, 0.0, symmetric)[0]
