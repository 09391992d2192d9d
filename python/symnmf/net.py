"""SymNMF-Net: the classical SymNMF update unfolded into a trainable network.

The classical scheme for min_{U >= 0} ||X - U U^T||_F^2 with a penalty lam,

    U_k = max((X + lam I) U_{k-1} (U_{k-1}^T U_{k-1} + lam I)^{-1}, 0),

becomes L blocks. Block i keeps (X + lam I) U_{i-1} as a free n x r weight P_i
and a learnable lam shared by all blocks:

    U_i = ReLU(P_i (U_{i-1}^T U_{i-1} + lam I)^{-1})     (sk.symnmf_block)

The net is transductive: P_i has one row per node, so a net belongs to one
graph size n (and one batch shape). `fit(X)` initialises it from X by the
paper's Algorithm 1 and trains P_i and lam on

    sum_i ||X - U_i U_i^T||_F^2 + beta ||P_i - (X + lam I) U_{i-1}||_F^2  (+ mu ||U_L||_1),

projecting lam onto lam >= lam_min = (||X||_F + ||X - U_0 U_0^T||_F) / 2 after
every step (the lower bound of the paper's Proposition 1).

X may be dense (..., n, n) or a torch sparse CSR (n, n); a sparse X is only
ever multiplied by n x r factors. Leading batch dimensions are independent
problems: a dense X of shape (B, n, n) is B graphs, and `n_restarts=R` adds a
leading dimension of R random starts (U_0 of shape (R, ..., n, r)) on the same X.
Independent but for two scalars with relative_lr and beta_relative (the default
recipe): the learning rates and the regulariser's weight come from means over the
whole batch (an optimiser's lr is one number per tensor), so a problem trains as
it would alone only when the batch's problems share a scale: restarts of one graph
moved by a few 1e-3 of their factor's size in a test, while a graph batched with
one ten times its scale trained to E 0.709 instead of 0.567. Fit graphs of
different scales apart (`fit_net` trains one graph at X / ||X||_2, a batch as
it is). The early stop (tol, patience) is a third coupling: it reads the loss
summed over the batch, so the whole batch stops at one step.

Training recipes
----------------
Every setting of the start, the loss and the optimiser is named in `RECIPES`:
"paper" is the paper's (Kuang's random start, L = 10, beta = 5e-6, lam from
||X||_F, Adam at the absolute lr 0.5); "default" is the library's, chosen by
the study in docs/symnmf_net_study.md (bench/study_net.py). A recipe fills in
every argument left at None but n_restarts (None there is one start, so that
the net's shapes are those of X); explicit arguments win. `fit_net(X, r)` runs
a whole recipe, its restarts and label-free selection included, and returns
one factor: the entry point for the estimator, the CLI and `symnmf reproduce`.
"""
import contextlib
import copy
import hashlib
import io
import json
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import symnmf_kernels as sk
from symnmf_kernels.ops._common import dot64, first_order_only
from symnmf_kernels.ops.sparse_loss import sparse_layer_loss
from symnmf_kernels.sparse import as_csr

from .metrics import first_best, modularity
from .net_chain import NetChain
from .solvers.base import draw_node_rows, init_factor, make_generator
from .validation import as_similarity, check_rank, check_similarity, is_int

__all__ = ["SymNMFNet", "RECIPES", "NetResult", "fit_net", "kuang_init", "spectral_init", "sparse_factor",
           "select_restart", "CHECKPOINT_VERSION", "CudaGraphCaptureError"]


# The settings of a training recipe; every None argument of SymNMFNet / fit takes its recipe's value.
#   init: the start U_0: "random" (Kuang et al.), "hals" (Kuang's start refined by init_iter SymHALS
#         iterations, each restart from its own random start) or "spectral" (the top-r eigenvectors
#         of X, signs fixed and clipped at 0, plus init_noise times Kuang's random start).
#   lam: "fro" (||X||_F, the paper's), "spectral" (||X||_2) or a float; learn_lam: train it (projected
#         onto lam >= lam_min) or keep it fixed.
#   beta -> beta_final: the regulariser's weight, decayed geometrically over the epochs (None: constant);
#         with beta_relative it is divided by lam^2 (lam at the start): the regulariser then weighs the
#         change of U, ||P - (X + lam I) U||^2 / lam^2, and one beta suits graphs of any size (beta = 0.1
#         suits the 2,000-node graphs but pins a 20,000-node graph, where lam is 2.4x larger, to its start).
#   loss_blocks: "all" (the paper's sum over the L blocks) or "last" (the last block's residual only).
#   lr, relative_lr, lr_schedule ("constant" or "cosine"): Adam's step.
#   tol, patience: stop once the best loss of the last `patience` steps gains at most tol times the
#         whole decrease so far on the best before them (patience 0 or None: the older rule, two
#         consecutive records within tol times the first loss).
#   n_restarts, select: restarts trained side by side by `fit_net`, and the label-free rule that keeps
#         one ("loss", "error", "consensus" or "modularity"; see `select_restart`). With "modularity" and a
#         polish, every restart is polished and the one whose labels score the highest modularity on X kept.
#   polish_iter: SymHALS iterations `fit_net` runs from the kept U_L (0: none), which take the
#         factor to the nearest stationary point of ||X - U U^T|| (lower E, same clusters as a rule).
RECIPES = {
    "paper": {
        "n_layers": 10, "beta": 5e-6, "beta_relative": False, "beta_final": None, "mu": 0.0,
        "lam": "fro", "learn_lam": True, "init": "random", "init_iter": 0, "init_noise": 0.0, "loss_blocks": "all",
        "epochs": 100, "lr": 0.5, "relative_lr": False, "lr_schedule": "constant",
        "tol": None, "patience": None, "n_restarts": 1, "select": "loss", "polish_iter": 0,
    },
    "default": {
        "n_layers": 5, "beta": 4.0, "beta_relative": True, "beta_final": None, "mu": 0.0,
        "lam": "spectral", "learn_lam": True, "init": "random", "init_iter": 0, "init_noise": 0.0, "loss_blocks": "all",
        "epochs": 400, "lr": 0.1, "relative_lr": True, "lr_schedule": "constant",
        "tol": 2e-3, "patience": 50, "n_restarts": 4, "select": "modularity", "polish_iter": 100,
    },
}
_INITS = ("random", "hals", "spectral")
# Eager steps before `fit(cuda_graph=True)` captures one: the first compiles the kernels and creates Adam's
# state, the next ones run on warm caches (capture needs every allocation pattern seen once). A capture costs
# about as much as a few eager steps: by default a fit with fewer steps than _MIN_REPLAYS after them stays eager.
_EAGER_STEPS_BEFORE_CAPTURE = 3
_MIN_REPLAYS = 5
# What a new start replaces (`fit`, a load into a new net), put back when the call fails after it
_FIT_STATE = ("U0", "lam_min", "lam", "P", "_beta_scale", "_beta_now", "history_", "n_iter_", "cuda_graph_")
_LOSS_BLOCKS = ("all", "last")
_LR_SCHEDULES = ("constant", "cosine")
SELECTION_RULES = ("loss", "error", "consensus", "modularity")
CHECKPOINT_VERSION = 3
# Version 2 files lack the regulariser's scale (the state dict's extra state); `load` recovers it from the weights.
_READABLE_VERSIONS = (2, 3)
_CHECKPOINT_MAGIC = b"SYMNMF-NET\n"


def _recipe(name):
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name]


def _is_finite(value, low, strict=False):
    """value is a finite real number (or a one-element real tensor) >= low (> low when strict); False for NaN,
    infinities, bools and anything that is not a real number, so that the caller's error names the argument."""
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            return False
        value = float(value)
    elif not isinstance(value, numbers.Real):
        return False
    return bool((value > low if strict else value >= low) and math.isfinite(value))


def _check_lam(lam):
    """lam as SymNMFNet takes it: "fro", "spectral" or a positive finite number (None: the recipe's)."""
    if isinstance(lam, str) and lam in ("fro", "spectral"):
        return
    if isinstance(lam, str) or not _is_finite(lam, 0, strict=True):
        raise ValueError(f'lam must be a finite number > 0, "fro", "spectral" or None (None: the recipe\'s), '
                         f"got {lam!r}")


def _is_sparse(X):
    return X.layout != torch.strided


def _exactly_symmetric(X):
    """A sparse X that is symmetric only to rounding (check_similarity allows a relative 1e-5) as the exactly
    symmetric (X + X^T) / 2. The layer losses take their symmetric path only for an exactly symmetric X (the
    backward's SpMM then is X R in one fused pass, and no transpose of X is kept): with four restarts on a
    2,000-node graph symmetric to rounding, a training step took 1.4x as long without this."""
    A = as_csr(X)
    if A.is_symmetric():  # computed once per X, and remembered with it
        return X
    return (X + A.transpose().to_torch()) * 0.5  # the transpose is_symmetric formed, kept with A


def _frob2(X):
    """||X||_F^2 per problem: shape X.shape[:-2] for dense X, () for sparse X."""
    return X.values().pow(2).sum() if _is_sparse(X) else X.pow(2).sum((-2, -1))


def _times(X, U):
    """X @ U for a dense (..., n, n) or sparse (n, n) X and U of shape (..., n, r)."""
    return sk.spmm(X, U) if _is_sparse(X) else X @ U


def _layer_terms(X, X_norm2, U, P, lam, UtU=None):
    """(||X - U U^T||_F^2, ||P - (X + lam I) U||_F^2 or None) per problem, from one product X U.

    These are the residual of a block's output U and the regulariser of the next
    block's weight P. A sparse X goes to the fused sparse kernels; a dense X
    uses the same expansion ||X||^2 - 2 <X U, U> + ||U^T U||^2, which never
    forms U U^T. UtU: U^T U where the chain form made it already.
    """
    if _is_sparse(X):
        return sparse_layer_loss(X, U, P, lam, gram=UtU)
    S = X @ U
    residual = X_norm2 - 2 * (S * U).sum((-2, -1)) + (U.mT @ U if UtU is None else UtU).pow(2).sum((-2, -1))
    regulariser = None if P is None else (P - S - _batch_view(lam) * U).pow(2).sum((-2, -1))
    return residual, regulariser


class _StartRegulariser(torch.autograd.Function):
    """||P_1 - (X U_0 + lam U_0)||_F^2 per problem from the product S0 = X U_0, computed once per fit (U_0 is
    fixed and needs no gradient). Written out: autograd's own backward of a float64 norm of float32 data
    took as long as the SpMM that S0 saves."""

    @staticmethod
    def forward(ctx, P, S0, U0, lam):
        R = torch.addcmul(P - S0, _batch_view(lam), U0, value=-1)
        batch = R.shape[:-2]
        R3 = R.reshape(-1, *R.shape[-2:])
        ctx.save_for_backward(R3, U0.reshape(R3.shape))
        ctx.batch = batch
        return dot64(R3, R3).to(R.dtype).reshape(batch)

    @staticmethod
    @first_order_only
    def backward(ctx, grad):
        R3, U3 = ctx.saved_tensors
        g = grad.reshape(-1).to(R3.dtype)
        dP = dlam = None
        if ctx.needs_input_grad[0]:
            dP = (R3 * (2 * g)[:, None, None]).reshape(*ctx.batch, *R3.shape[-2:])
        if ctx.needs_input_grad[3]:
            dlam = (-2 * g.double() * dot64(R3, U3)).to(R3.dtype).reshape(ctx.batch)
        return dP, None, None, dlam


def _check_range(X, what, values, low=None):
    """Refuse a quantity that training forms from X when X's dtype cannot hold it (values: a tensor).

    Far from unit scale the squared norms of X and of the weights (which scale like ||X||^3) or the regulariser's
    weight (like 1 / ||X||^2) over- or underflow, and the loss turns into Inf or NaN a few steps later.
    """
    finfo = torch.finfo(X.dtype)
    low = finfo.tiny if low is None else low
    values = values.detach().double()
    bad = ~(torch.isfinite(values) & (values >= low) & (values <= finfo.max))
    if bool(bad.any()):
        value = float(values[bad].flatten()[0])
        raise ValueError(
            f"training on X in {X.dtype} would form {what} = {value:.3g}, outside [{low:.3g}, {finfo.max:.3g}]: X "
            "(or lam, given as a number) is too far from unit scale; fit_net(X, r) trains X / ||X||_2 "
            "(symnmf.fitting.similarity_scale), or pass X rescaled (e.g. X / X.max()) or in float64"
        )


def _batch_view(t):
    """A per-problem tensor of shape (...) as (..., 1, 1), to scale (..., n, r) factors."""
    return t[..., None, None]


def kuang_init(X, rank, batch_shape=(), generator=None):
    """Kuang et al.'s random start U_0 = 2 sqrt(mean(X) / r) * rand(..., n, r): the package's one random
    start, `symnmf.solvers.init_factor`, under the net's argument order (batch_shape = restarts)."""
    return init_factor(X, rank, generator, batch_shape=batch_shape)


def spectral_norm(X, iters=50, unit=1.0):
    """||X||_2 per problem by power iteration from the all-ones vector (X >= 0: the Perron root).

    unit: each product is divided by it and the result multiplied back; a unit near max(X) keeps a float32 X
    of any scale from over- or underflowing in the squared norms.
    """
    n = X.shape[-1]
    shape = (n, 1) if _is_sparse(X) else (*X.shape[:-2], n, 1)
    v = torch.ones(shape, dtype=X.dtype, device=X.device) / math.sqrt(n)
    est = None
    for _ in range(iters):
        w = _times(X, v)
        if unit != 1.0:
            w.div_(unit)  # not times 1 / unit, which overflows X's dtype for a subnormal unit
        est = w.pow(2).sum((-2, -1)).sqrt()
        v = w / _batch_view(torch.clamp(est, min=torch.finfo(X.dtype).tiny))
    return est if unit == 1.0 else est * unit


@torch.no_grad()
def spectral_init(X, rank, batch_shape=(), generator=None, noise=0.0, iters=30):
    """A start from X's spectrum: Y = V_r sqrt(Lambda_r) of the r leading eigenpairs, each column's
    sign chosen so its positive part carries the larger mass, clipped at 0, plus noise times
    Kuang's random start (different for every restart in batch_shape).

    The eigenpairs come from a subspace iteration on X + s I, s = max row sum of X (so that the
    leading eigenvalues of X lead), with r + 4 vectors and `iters` steps: only products X V.
    Where X has fewer than `rank` eigenvalues above rounding (sqrt(eps) times the largest), the
    columns of the others take Kuang's random start.
    """
    n = X.shape[-1]
    k = min(n, rank + 4)
    base = () if _is_sparse(X) else tuple(X.shape[:-2])
    ones = torch.ones((*base, n, 1), dtype=X.dtype, device=X.device)
    shift = _times(X, ones).amax((-2, -1))
    Q = draw_node_rows(torch.randn, (*base, n, k), generator, X.dtype, X.device)
    Q = torch.linalg.qr(Q)[0]
    for _ in range(iters):
        Q = torch.linalg.qr(_times(X, Q) + _batch_view(shift) * Q)[0]
    T = Q.mT @ _times(X, Q)
    w, V = torch.linalg.eigh((T + T.mT) / 2)
    w, V = w[..., -rank:].flip(-1), V[..., -rank:].flip(-1)
    Y = (Q @ V) * torch.sqrt(torch.clamp(w, min=0))[..., None, :]
    flip = torch.clamp(Y, min=0).pow(2).sum(-2, keepdim=True) < torch.clamp(-Y, min=0).pow(2).sum(-2, keepdim=True)
    U = torch.clamp(torch.where(flip, -Y, Y), min=0)
    # A column of an eigenvalue that is 0 up to rounding (rank above the count of positive eigenvalues) is zero or
    # rounding noise, and training keeps it so (its P column is as small): it takes Kuang's random start instead.
    dead = (w <= torch.finfo(X.dtype).eps ** 0.5 * w[..., :1])[..., None, :] | ~(U > 0).any(-2, keepdim=True)
    U = U.expand((*batch_shape, *U.shape)).clone()
    if bool(dead.any()):
        U = torch.where(dead, kuang_init(X, rank, batch_shape, generator), U)
    if noise:
        U = U + noise * kuang_init(X, rank, batch_shape, generator)
    return U


def _hals_refine(X, U0, iters, tol=0.0):
    """Each (n, r) start in U0 refined by `iters` SymHALS iterations (side by side on one graph X, else one
    problem at a time)."""
    from .solvers import solve
    from .solvers.hals import hals_restarts

    if iters <= 0:
        return U0
    flat = U0.reshape(-1, *U0.shape[-2:])
    if X.dim() == 2:
        runs = hals_restarts(check_similarity(as_similarity(X)), flat, max_iter=int(iters), tol=tol)
        return torch.stack([run.U for run in runs]).reshape(U0.shape)
    Xs = X if _is_sparse(X) else X.expand((*U0.shape[:-2], *X.shape[-2:])).reshape(-1, *X.shape[-2:])
    out = []
    for b in range(flat.shape[0]):
        Xb = X if _is_sparse(X) else Xs[b]
        out.append(solve(Xb, flat.shape[-1], solver="hals", U0=flat[b], max_iter=int(iters), tol=tol).U)
    return torch.stack(out).reshape(U0.shape)


def sparse_factor(U):
    """SF = #{|u| > 0.01 mean(|u|)} / #u per problem (the paper's sparsity measure)."""
    a = U.abs()
    threshold = 0.01 * a.mean((-2, -1), keepdim=True)
    return (a > threshold).to(U.dtype).mean((-2, -1))


class SymNMFNet(nn.Module):
    """SymNMF-Net: L unfolded blocks with learnable weights P_i and a shared lam.

    Parameters
    ----------
    n_components : int
        The rank r (number of clusters).
    n_layers : int or None
        Number of blocks L (paper 10). Every argument left at None takes the
        value of `recipe` (see `RECIPES`), but n_restarts.
    beta : float or None
        Weight of the regulariser ||P_i - (X + lam I) U_{i-1}||_F^2 that keeps
        each block close to the classical update (paper default 5e-6). The
        regulariser is also the only path by which X reaches a weight whose
        output is cut by the ReLU: with beta near 0 an entry (or a whole row) of
        U_i that hits zero receives no gradient and stays zero, so training can
        stall at factors that are not stationary points of SymNMF. Relative to
        the residual its weight grows like c under X -> cX (the regulariser
        scales like c^3, the residual like c^2), so a suitable beta depends on
        the scale of X; on Kuang's normalised graphs (||X||_F ~ 10) beta near
        0.1 keeps every entry alive.
    mu : float or None
        Weight of ||U_L||_1, for sparser factors (both recipes: 0).
    lam : float, "fro", "spectral" or None
        Initial lam: ||X||_F ("fro", the paper's choice), ||X||_2 ("spectral";
        the bound lam_min then uses ||X||_2 too, Zhu et al.'s sufficient value
        1/2 (||X||_2 + ||X - U_0 U_0^T||_F)) or a float. Either way the start
        is raised to lam_min when below it.
    n_restarts : int or None
        Number of random starts trained side by side on the same X; None means one
        start and no extra leading dimension.
    random_state : None, int, numpy RandomState / Generator, or torch.Generator
        Seed of the random start U_0 (an int gives the start of
        `symnmf.solvers.solve` with the same random_state).
    recipe : "default" or "paper"
        Where the unset arguments come from (`RECIPES`).
    init : "random", "hals" or "spectral"
        The start U_0: Kuang's random start, that start refined by `init_iter`
        SymHALS iterations, or the spectral start of `spectral_init` (plus
        `init_noise` times Kuang's start).
    learn_lam : bool
        Train lam (projected onto lam >= lam_min) or keep it at its start.
    beta_final : float or None
        Decay beta geometrically to this value over the epochs of `fit`.
    beta_relative : bool
        Divide beta by lam^2 (lam at the start, mean over problems), so that the
        regulariser weighs the change of U and one beta suits graphs of any size.
    loss_blocks : "all" or "last"
        The residual of every block in the loss (the paper's), or of the last only.

    After `initialize(X)` (called by `fit`) the net holds `U0` (..., n, r), the
    weights `P` (L tensors of that shape), `lam` and `lam_min` (shape (...)).
    `forward()` needs no input: U_0 is fixed and X enters only the loss.
    """

    def __init__(self, n_components, n_layers=None, beta=None, mu=None, lam=None, n_restarts=None, random_state=None,
                 *, recipe="default", init=None, init_iter=None, init_noise=None, learn_lam=None, beta_final=None,
                 loss_blocks=None, beta_relative=None):
        super().__init__()
        settings = _recipe(recipe)

        def pick(name, value):
            return settings[name] if value is None else value

        n_layers, beta, mu = pick("n_layers", n_layers), pick("beta", beta), pick("mu", mu)
        lam, init, init_iter = pick("lam", lam), pick("init", init), pick("init_iter", init_iter)
        init_noise, learn_lam = pick("init_noise", init_noise), pick("learn_lam", learn_lam)
        beta_final, loss_blocks = pick("beta_final", beta_final), pick("loss_blocks", loss_blocks)
        beta_relative = pick("beta_relative", beta_relative)
        if not is_int(n_components) or n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if not is_int(n_layers) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        if not (_is_finite(beta, 0) and _is_finite(mu, 0)):
            raise ValueError(f"beta and mu must be finite and >= 0, got beta={beta!r}, mu={mu!r}")
        if beta_final is not None and not (_is_finite(beta_final, 0, strict=True) and beta > 0):
            raise ValueError(f"beta_final must be finite and > 0 (with beta > 0) or None, got {beta_final!r}")
        _check_lam(lam)
        if n_restarts is not None and (not is_int(n_restarts) or n_restarts < 1):
            raise ValueError(f"n_restarts must be a positive int or None, got {n_restarts!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if not is_int(init_iter) or init_iter < 0:
            raise ValueError(f"init_iter must be a non-negative int, got {init_iter!r}")
        if not _is_finite(init_noise, 0):
            raise ValueError(f"init_noise must be finite and >= 0, got {init_noise!r}")
        if loss_blocks not in _LOSS_BLOCKS:
            raise ValueError(f"loss_blocks must be one of {_LOSS_BLOCKS}, got {loss_blocks!r}")
        self.recipe = recipe
        self.n_components = int(n_components)
        self.n_layers = int(n_layers)
        self.beta = float(beta)
        self.beta_final = None if beta_final is None else float(beta_final)
        self.beta_relative = bool(beta_relative)
        self._beta_scale = 1.0
        self.mu = float(mu)
        self.lam_init = lam if isinstance(lam, str) else float(lam)
        self.learn_lam = bool(learn_lam)
        self.init = init
        self.init_iter = int(init_iter)
        self.init_noise = float(init_noise)
        self.loss_blocks = loss_blocks
        self.n_restarts = None if n_restarts is None else int(n_restarts)
        self.random_state = random_state
        self._beta_now = self.beta
        self.P = nn.ParameterList()
        self.lam = None
        self.register_buffer("U0", None)
        self.register_buffer("lam_min", None)
        self.history_ = {}
        self.n_iter_ = 0
        self.cuda_graph_ = False

    # ----------------------------------------------------------------- set-up
    @property
    def initialized(self):
        return self.U0 is not None

    def _restart_shape(self):
        return () if self.n_restarts is None else (self.n_restarts,)

    def _prepare(self, X, like_net=True):
        """X as a validated dense or sparse-CSR tensor (on the net's device and dtype when like_net)."""
        if like_net and self.initialized:
            X = as_similarity(X, device=self.U0.device, dtype=self.U0.dtype)
        else:
            X = as_similarity(X)
        check_similarity(X)
        if _is_sparse(X) and X.dim() != 2:
            raise ValueError("a sparse X must be a single (n, n) graph; pass a batch of graphs as a dense (B, n, n) X")
        check_rank(self.n_components, X.shape[-1])
        return _exactly_symmetric(X) if _is_sparse(X) else X

    def _check_matches(self, X):
        expected = self.U0.shape[:-1]
        got = (*self._restart_shape(), *X.shape[:-1]) if not _is_sparse(X) else (*self._restart_shape(), X.shape[-1])
        if tuple(expected) != tuple(got):
            raise ValueError(
                f"X of shape {tuple(X.shape)} does not match the net, initialised for U0 of shape "
                f"{tuple(self.U0.shape)}; call fit(X) without warm_start to re-initialise on this X"
            )

    def initialize(self, X, U0=None):
        """The paper's Algorithm 1: set U_0, lam, lam_min and P_i from X.

        From U_0 (Kuang's random start, or the given U0) run the classical scheme
        U_i = max((X + lam I) U_{i-1} (U_{i-1}^T U_{i-1} + lam I)^{-1}, 0) for L
        steps, setting P_i = (X + lam I) U_{i-1} along the way, so that the
        untrained net reproduces the classical iterates exactly. The net takes
        X's device and dtype.
        """
        return self._initialize(self._prepare(X, like_net=False), U0)

    @torch.no_grad()
    def _initialize(self, X, U0):
        r = self.n_components
        X_norm2 = _frob2(X)
        if not bool((X_norm2 > 0).all()):
            nonzero = X.values().any() if _is_sparse(X) else X.flatten(-2).any(-1)  # or its squares underflow
            if not bool(nonzero.all()):
                raise ValueError(
                    "X is all zero (every similarity is 0): there is nothing to factorise and the random start, "
                    "lam and the loss would be 0 or NaN; check the graph construction"
                )
        _check_range(X, "||X||_F^2", X_norm2)
        if U0 is None:
            generator = make_generator(self.random_state)
            if self.init == "spectral":
                U0 = spectral_init(X, r, self._restart_shape(), generator, noise=self.init_noise)
            else:
                U0 = kuang_init(X, r, self._restart_shape(), generator)
            if self.init == "hals":
                U0 = _hals_refine(X, U0, self.init_iter)
        else:
            U0 = torch.as_tensor(U0).to(device=X.device, dtype=X.dtype)
            expected = (*self._restart_shape(), *X.shape[:-2], X.shape[-1], r)  # a sparse X is one (n, n) graph
            if tuple(U0.shape) != expected:
                raise ValueError(
                    f"U0 must have shape (*restarts, *X.shape[:-2], n, r) = {expected}, got {tuple(U0.shape)} "
                    f"(restarts = {self._restart_shape()} for n_restarts={self.n_restarts}; X.shape[:-2] = "
                    f"{tuple(X.shape[:-2])}, X's batch of graphs)"
                )
            if bool((U0 < 0).any()) or not bool(torch.isfinite(U0).all()):
                raise ValueError("U0 must be finite and non-negative")
            U0 = U0.clone()
        batch_shape = U0.shape[:-2]
        x_norm = torch.sqrt(X_norm2)
        if self.lam_init == "spectral":
            x_norm = spectral_norm(X)
        x_norm = x_norm.expand(batch_shape)
        residual0 = _layer_terms(X, X_norm2, U0, None, 0.0)[0]
        lam_min = 0.5 * (x_norm + torch.sqrt(torch.clamp(residual0, min=0)))
        lam0 = x_norm if isinstance(self.lam_init, str) else torch.full_like(lam_min, self.lam_init)
        lam = torch.maximum(lam0, lam_min)

        weights = []
        U = U0
        for _ in range(self.n_layers):
            P = _times(X, U) + _batch_view(lam) * U
            weights.append(nn.Parameter(P))
            U = sk.symnmf_block(U, P, lam)
        _check_range(X, "lam^2", lam.pow(2))
        # an underflow here only weakens the regulariser: the weights' squares are refused when they overflow
        _check_range(X, "||P_i||_F^2", torch.stack([P.pow(2).sum((-2, -1)) for P in weights]), low=0.0)
        # a host float, read once per initialisation
        beta_scale = 1.0 / float(lam.pow(2).mean()) if self.beta_relative else 1.0
        _check_range(X, "the regulariser's weight beta / lam^2" if self.beta_relative else "beta",
                     torch.tensor(self.beta * beta_scale, dtype=torch.float64), low=0.0)
        self.U0 = U0
        self.lam_min = lam_min.contiguous()
        self.lam = nn.Parameter(lam.clone(), requires_grad=self.learn_lam)
        self.P = nn.ParameterList(weights)
        self._beta_scale = beta_scale
        self._beta_now = self.beta * self._beta_scale
        self.history_ = {}
        self.n_iter_ = 0
        self.cuda_graph_ = False
        return self

    def _require_initialized(self):
        if not self.initialized:
            raise RuntimeError("the net is not initialised: call fit(X) or initialize(X) first")

    # ------------------------------------------------------------ the network
    def forward(self, return_all=False):
        """U_L, or the list [U_0, U_1, ..., U_L] when return_all is True."""
        iterates, _ = self._chain()
        return iterates if return_all else iterates[-1]

    def _chain(self):
        """([U_0, ..., U_L], [U_0^T U_0, ..., U_L^T U_L]).

        The chain form: each block hands the next the Gram of its output from the same pass, so a forward
        reads each U_i once and each block's backward is a single pass; the layer losses use the same Grams.
        """
        self._require_initialized()
        U = self.U0
        UtU = sk.gram(U, 0.0)
        iterates, grams = [U], [UtU]
        for P in self.P:
            U, UtU = sk.symnmf_block_from_gram(UtU, P, self.lam)
            iterates.append(U)
            grams.append(UtU)
        return iterates, grams

    def _objective(self, X, X_norm2, S0=None, chain=None):
        """(loss per problem, ||X - U_L U_L^T||^2 per problem, U_L).

        One product X U_i per block output serves both the residual of block i
        and the regulariser of block i + 1. S0: X U_0 computed once (`_start_product`);
        U_0 is fixed, so the product the regulariser of P_1 needs is the same at every step.
        chain: a `NetChain` of this fit, which computes the same objective in one autograd node.
        """
        if chain is not None:
            last = self.n_layers - 1
            weights = [1.0 if self.loss_blocks == "all" or i == last else 0.0 for i in range(self.n_layers)]
            return chain(self.P, self.lam, weights, self._beta_now, self.mu)
        iterates, grams = self._chain()
        weights = list(self.P) + [None]
        residuals, regularisers = [], []
        last = len(iterates) - 1
        for i, (U, P_next) in enumerate(zip(iterates, weights)):
            if i == 0 and S0 is not None:  # U_0's residual is not part of the loss: its regulariser alone
                regularisers.append(_StartRegulariser.apply(P_next, S0, U, self.lam))
                continue
            residual, regulariser = _layer_terms(X, X_norm2, U, P_next, self.lam, grams[i])
            if i > 0 and (self.loss_blocks == "all" or i == last):
                residuals.append(residual)
            if regulariser is not None:
                regularisers.append(regulariser)
        # The terms stacked and summed: a few kernels each way, where a running sum took two per term.
        loss = torch.add(torch.stack(residuals).sum(0), torch.stack(regularisers).sum(0), alpha=self._beta_now)
        U = iterates[-1]
        if self.mu:
            loss = loss + self.mu * U.sum((-2, -1))  # U_L >= 0, so this is ||U_L||_1
        return loss, residual, U

    @torch.no_grad()
    def _start_product(self, X):
        """X U_0, the product of the fixed start that every training step would otherwise repeat."""
        return _times(X, self.U0)

    def loss(self, X):
        """The training loss per problem (shape (...)), differentiable in P_i and lam."""
        self._require_initialized()
        X = self._prepare(X)
        self._check_matches(X)
        return self._objective(X, _frob2(X))[0]

    @torch.no_grad()
    def project_lam(self):
        """lam <- max(lam, lam_min), in place and without a host synchronisation."""
        self._require_initialized()
        self.lam.copy_(torch.maximum(self.lam, self.lam_min))

    @torch.no_grad()
    def relative_error(self, X):
        """E = ||X - U_L U_L^T||_F^2 / ||X||_F^2 per problem."""
        self._require_initialized()
        X = self._prepare(X)
        self._check_matches(X)
        U = self.forward()
        return sk.sym_loss(X, U) / _frob2(X)

    @torch.no_grad()
    def labels(self):
        """Cluster label of each node: argmax over the columns of U_L, shape (..., n)."""
        return self.forward().argmax(-1)

    # --------------------------------------------------------------- training
    def fit(self, X, epochs=None, lr=None, relative_lr=None, optimizer=None, tol=None, U0=None, warm_start=False,
            progress=None, verbose=False, log_every=1, callback=None, *, patience=None, lr_schedule=None,
            cuda_graph=None):
        """Initialise from X (Algorithm 1) and train P_i and lam by gradient steps.

        Every argument left at None takes the value of the net's recipe (`RECIPES`).

        Parameters
        ----------
        X : dense (..., n, n) or sparse (n, n) symmetric non-negative similarity
            (torch, numpy or scipy.sparse), not all zero. A sparse X symmetric only
            to rounding is trained on as (X + X^T) / 2. An X so far from unit scale that its squared norm,
            lam^2 or the weights' squared norms (which grow like ||X||^3) leave the range of its dtype is
            refused, which in float32 can happen at scales of 1e12 and beyond: `fit_net` trains X / ||X||_2.
        epochs : int
            Most optimiser steps (one step = one pass through the L blocks).
        lr : float
            Learning rate (paper: 0.5 for images, 0.3 for text). Adam moves every
            weight by about lr per step whatever its size, while P_i scales like
            ||X||_F^{3/2}: an absolute lr suits only graphs of one scale.
        relative_lr : bool
            Scale lr by the root-mean-square of the P_i this fit starts from for the weights (with
            warm_start, the trained ones) and by its starting lam for lam (means over a batch: see the
            module's notes), which makes training with
            beta = 0 invariant to
            the scale of X (X -> cX, U_0 -> sqrt(c) U_0 gives U -> sqrt(c) U; with
            beta > 0 the regulariser's relative weight still grows like c).
            Suggested lr then: 0.01 to 0.1.
        optimizer : a torch.optim.Optimizer class, or None for Adam.
        tol, patience : early stopping. With patience an int: stop once the best loss of
            the last `patience` steps improves on the best loss before them by at most tol
            times the whole decrease since the first step (a plateau; measured at the
            logged steps). With patience 0 (or
            None in a recipe without one): stop once the loss changes by less than tol times the initial loss between
            two logged steps. None takes the recipe's value, as for every argument: the default recipe
            stops at a plateau, the paper's never (its tol is None). To train all `epochs` steps pass
            patience >= epochs (tol=0 still stops after `patience` steps without a new best loss).
        lr_schedule : "constant" or "cosine" (lr decays to 5% of its start over `epochs`).
        cuda_graph : bool or None
            On a CUDA device, capture one training step (zeroing the gradients, forward, backward,
            Adam step, projection of lam) in a CUDA graph after the first few eager steps and replay
            it for the rest: a step then costs one graph launch instead of a few hundred kernel
            launches. Needs the default optimiser, a constant beta and lr_schedule "constant".
            None (the default) does so wherever it can, X on a CUDA device and at least a few steps to
            replay, and should the capture fail, warns and trains on with eager steps; True asks for it
            (a failed capture raises `CudaGraphCaptureError`); False trains with eager steps.
            `cuda_graph_` says whether steps were replayed.
        U0 : tensor (*restarts, *X.shape[:-2], n, r) or None
            The start (restarts: (n_restarts,), or () for n_restarts None); None uses the net's
            `init` from random_state. Not with warm_start on an initialised net.
        warm_start : bool
            Keep the current weights and continue training instead of re-initialising.
        progress : bool or None
            Show a progress bar (tqdm when installed); None follows verbose.
        log_every : int
            Record the history every this many steps (each record synchronises
            with the device).
        callback : callable(net, epoch, record) or None; returning True stops training.

        beta decays geometrically from `beta` to `beta_final` over the epochs when
        the net has a beta_final.

        With a sparse X every step computes the objective in one autograd node
        (`symnmf.net_chain.NetChain`; eager or replayed from a CUDA graph): the values
        and gradients of `loss(X)`, without the per-op costs of its blocks and layer
        losses on the CPU, and with a fifth less memory traffic on a GPU.

        History (`history_`): per record the step ("epoch"), "loss" (summed over
        problems), "loss_per_problem", "relative_error" E and "sparse_factor" SF of
        U_L (a float, or a list with one value per problem), and "time" in seconds
        since the start (the start U_0 included). Record 0 is the initialisation,
        the last record the trained net.
        """
        settings = _recipe(self.recipe)
        epochs = settings["epochs"] if epochs is None else epochs
        lr = settings["lr"] if lr is None else lr
        relative_lr = settings["relative_lr"] if relative_lr is None else relative_lr
        tol = settings["tol"] if tol is None else tol
        patience = settings["patience"] if patience is None else patience
        lr_schedule = settings["lr_schedule"] if lr_schedule is None else lr_schedule
        if not is_int(epochs) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        epochs = int(epochs)
        if not _is_finite(lr, 0, strict=True):
            raise ValueError(f"lr must be finite and > 0, got {lr!r}")
        if tol is not None and not _is_finite(tol, 0):
            raise ValueError(f"tol must be finite and >= 0 or None, got {tol!r}")
        if patience is not None and (not is_int(patience) or patience < 0):
            raise ValueError(f"patience must be a non-negative int or None, got {patience!r}")
        patience = None if patience is None else int(patience)
        if lr_schedule not in _LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_LR_SCHEDULES}, got {lr_schedule!r}")
        if not is_int(log_every) or log_every < 1:
            raise ValueError(f"log_every must be a positive int, got {log_every!r}")
        log_every = int(log_every)
        if cuda_graph and (optimizer is not None or not _capturable(self.beta_final, lr_schedule)):
            raise ValueError("cuda_graph=True needs the default optimizer, beta_final=None and lr_schedule='constant' "
                             "(a captured step replays the same optimiser and the same beta every time)")
        warm = warm_start and self.initialized
        if warm and U0 is not None:
            raise ValueError("U0 starts a new fit, while warm_start=True continues from the net's own weights: pass "
                             "U0 without warm_start, or warm_start without U0")
        start = time.perf_counter()
        X = self._prepare(X) if warm else self._prepare(X, like_net=False)
        # A failed call leaves a trained net and its history as they were: the refusals that need no new start
        # come first, and a refusal after it (the memory, the optimiser) puts the previous state back.
        if warm:
            self._check_matches(X)
        if cuda_graph and not X.is_cuda:
            raise ValueError(f"cuda_graph=True needs the net and X on a CUDA device, got {X.device}")
        if optimizer is not None and not callable(optimizer):
            raise TypeError(f"optimizer must be a torch.optim class (called with the parameter groups and lr), got "
                            f"{optimizer!r}")
        previous = None if warm else self._fit_state()
        try:
            if not warm:
                self._initialize(X, U0)
            graph_requested = bool(cuda_graph)
            if cuda_graph is None:
                # The replayed step did the same training 6-13x faster than eager steps on a GPU
                # (docs/symnmf_net_study.md, "Cost"), where an eager step is bound by its kernel launches.
                cuda_graph = (X.is_cuda and optimizer is None and _capturable(self.beta_final, lr_schedule)
                              and epochs >= _EAGER_STEPS_BEFORE_CAPTURE + _MIN_REPLAYS)
            cuda_graph = bool(cuda_graph)
            _check_training_memory(self, X)

            if optimizer is None:
                # The fused Adam is one kernel for all of the net's weights; the loop-per-tensor Adam took as
                # long as a third of a training step on the CPU at n = 20,000, r = 8, four restarts.
                fused = self.lam.device.type in ("cpu", "cuda")
                optimizer = torch.optim.Adam(self._param_groups(lr, relative_lr), lr=lr, fused=fused or None,
                                             capturable=bool(cuda_graph))
            else:
                optimizer = optimizer(self._param_groups(lr, relative_lr), lr=lr)
        except BaseException:
            if previous is not None:
                self._put_back(previous)
            raise
        scheduler = None
        if lr_schedule == "cosine" and epochs > 0:
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda t: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, epochs) / epochs)))
        X_norm2 = _frob2(X)
        S0 = self._start_product(X)
        # A sparse X: the whole objective in one autograd node (on the CPU a step's per-op costs cut, on a GPU
        # its memory traffic).
        chain = NetChain(X, self.U0, S0) if NetChain.applies(X, self.U0) else None

        history = {"epoch": [], "loss": [], "loss_per_problem": [], "relative_error": [], "sparse_factor": [],
                   "time": []}
        # The record of this fit from its start, so that a fit ended by an exception (a callback's, an interrupt)
        # leaves the history of the weights it leaves.
        self.history_, self.n_iter_, self.cuda_graph_ = history, 0, False

        def record(epoch, loss, residual, U):
            loss = loss.detach()
            entry = {
                "epoch": epoch,
                "loss": float(loss.sum()),
                "loss_per_problem": loss.tolist(),
                "relative_error": (residual.detach() / X_norm2).tolist(),
                "sparse_factor": sparse_factor(U.detach()).tolist(),
                "time": time.perf_counter() - start,
            }
            for key, value in entry.items():
                history[key].append(value)
            self.n_iter_ = epoch
            return entry

        bar = _progress_bar(epochs, progress if progress is not None else verbose)
        steps = 0
        window = max(1, -(-patience // log_every)) if patience else None
        graph = None
        # With cuda_graph the eager steps before the capture run on a side stream, as torch asks of the
        # warm-up before a capture: the captured backward must not wait on work of the legacy stream.
        side = torch.cuda.Stream(X.device) if cuda_graph else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(X.device))
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for epoch in range(epochs):
                    if self.beta_final is not None:
                        self._beta_now = self._beta_scale * self.beta * (self.beta_final / self.beta) ** (
                            epoch / max(epochs - 1, 1))
                    if cuda_graph and epoch == _EAGER_STEPS_BEFORE_CAPTURE:
                        # The last eager step's autograd graph would keep the weights' gradient
                        # accumulators, and the stream they were made on, alive into the capture.
                        loss = residual = U = None
                        try:
                            graph, static = self._capture_step(X, X_norm2, S0, optimizer, chain)
                        except _CAPTURE_ERRORS as exc:
                            if graph_requested:
                                raise CudaGraphCaptureError(f"capturing the training step failed: {exc}") from exc
                            warnings.warn(f"SymNMFNet.fit: capturing the training step in a CUDA graph failed "
                                          f"({type(exc).__name__}: {exc}); training on with eager steps "
                                          "(cuda_graph=False skips the attempt)", RuntimeWarning)
                            cuda_graph = False
                    if graph is not None:
                        graph.replay()
                        loss, residual, U = static
                    else:
                        optimizer.zero_grad(set_to_none=not cuda_graph)
                        loss, residual, U = self._objective(X, X_norm2, S0, chain)
                        loss.sum().backward()
                        optimizer.step()
                        if scheduler is not None:
                            scheduler.step()
                        self.project_lam()
                    steps = epoch + 1
                    if bar is not None:
                        bar.update(1)
                    if epoch % log_every:
                        continue
                    entry = record(epoch, loss, residual, U)
                    if bar is not None:
                        bar.set_postfix(loss=f"{entry['loss']:.4g}", E=_short(entry["relative_error"]))
                    elif verbose:
                        print(f"epoch {epoch}: loss {entry['loss']:.6g}, E {_short(entry['relative_error'])}")
                    if callback is not None and callback(self, epoch, entry):
                        break
                    if plateaued(history["loss"], tol, window):
                        break
        except BaseException:
            # The weights have taken `steps` steps, and the last record may be from before the last of them.
            if history["epoch"][-1:] != [steps]:
                try:
                    with torch.no_grad():
                        record(steps, *self._objective(X, X_norm2, S0, chain))
                except Exception:  # the error to raise is the one that ended the fit
                    pass
            raise
        finally:
            if bar is not None:
                bar.close()
            if side is not None:
                torch.cuda.current_stream(X.device).wait_stream(side)
        with torch.no_grad():
            record(steps, *self._objective(X, X_norm2, S0, chain))
        self.history_ = history
        self.n_iter_ = steps
        self.cuda_graph_ = graph is not None
        return self

    def _capture_step(self, X, X_norm2, S0, optimizer, chain=None):
        """One training step captured in a CUDA graph: (graph, (loss, residual, U_L)), the outputs being
        the tensors each replay overwrites. The eager steps before it compiled the kernels, cached what
        the ops derive from X once, and created Adam's state, none of which may happen during capture."""
        torch.cuda.synchronize(X.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            optimizer.zero_grad(set_to_none=False)  # the gradients must stay the tensors the graph writes
            loss, residual, U = self._objective(X, X_norm2, S0, chain)
            loss.sum().backward()
            optimizer.step()
            self.project_lam()
        return graph, (loss, residual, U)  # capture records the step without running it

    @torch.no_grad()
    def select(self, X=None, rule="loss"):
        """Index of the restart kept by a label-free rule (see `select_restart`), from the last fit.

        "loss" and "error" read the history (X unused); "consensus" compares the restarts' labels;
        "modularity" scores the restarts' labels on X (needed).
        Needs n_restarts; returns an int for one graph, a tensor of indices for a batch of graphs.
        """
        self._require_initialized()
        if self.n_restarts is None:
            raise ValueError("select needs a net with n_restarts (restarts trained side by side)")
        U = self.forward()
        return select_restart(U, rule, self.restart_scores(X, rule, U))

    @torch.no_grad()
    def restart_scores(self, X=None, rule="loss", U=None):
        """What `select` compares for a rule, per restart (shape (R, ...)): the last training loss ("loss"), the
        last E ("error"), or the modularity of the restarts' labels on X ("modularity", X needed; U: the
        restarts' output when already computed); None for "consensus"."""
        if rule in ("loss", "error"):
            if not self.history_:
                raise RuntimeError("select by loss or error needs a fitted net (its history)")
            key = "loss_per_problem" if rule == "loss" else "relative_error"
            return torch.as_tensor(self.history_[key][-1], dtype=torch.float64)
        if rule == "modularity":
            if X is None:
                raise ValueError("select by modularity needs X, the graph the net was fitted on")
            X = self._prepare(X)
            self._check_matches(X)
            return restart_modularity(X, self.forward() if U is None else U)
        return None

    def _param_groups(self, lr, relative_lr):
        if not relative_lr:
            return [p for p in self.parameters() if p.requires_grad]
        with torch.no_grad():
            # Python floats: an optimiser's lr is a host scalar; this reads the device once per fit
            p_scale = float(torch.stack([P.pow(2).mean() for P in self.P]).mean().sqrt())
            lam_scale = float(self.lam.detach().abs().mean())
        groups = [{"params": list(self.P), "lr": lr * p_scale}]
        if self.learn_lam:
            groups.append({"params": [self.lam], "lr": lr * lam_scale})
        return groups

    # ------------------------------------------------------------ persistence
    def get_config(self):
        random_state = int(self.random_state) if isinstance(self.random_state, (int, np.integer)) else None
        return {
            "n_components": self.n_components,
            "n_layers": self.n_layers,
            "beta": self.beta,
            "mu": self.mu,
            "lam": self.lam_init,
            "n_restarts": self.n_restarts,
            "random_state": random_state,
            "recipe": self.recipe,
            "init": self.init,
            "init_iter": self.init_iter,
            "init_noise": self.init_noise,
            "learn_lam": self.learn_lam,
            "beta_final": self.beta_final,
            "beta_relative": self.beta_relative,
            "loss_blocks": self.loss_blocks,
        }

    def get_extra_state(self):
        """The regulariser's weight, part of the state dict: with beta_relative it comes from lam at the start,
        which training moves, so the weights alone do not give it back. Also n_restarts: the leading dimension of
        restarts looks like a batch dimension of X in the weights' shapes."""
        return {"beta_scale": self._beta_scale, "beta_now": self._beta_now, "n_restarts": self.n_restarts}

    def set_extra_state(self, state):
        if not (isinstance(state, dict) and all(isinstance(state.get(k), float) for k in ("beta_scale", "beta_now"))):
            raise ValueError(f"the extra state must be a dict of the floats beta_scale and beta_now, got {state!r}")
        if "n_restarts" in state and state["n_restarts"] != self.n_restarts:  # states saved before it had none
            raise ValueError(
                f"the state dict is of a net with n_restarts={state['n_restarts']!r}, this net has "
                f"n_restarts={self.n_restarts!r}: build the net with the config it was saved with"
            )
        self._beta_scale, self._beta_now = state["beta_scale"], state["beta_now"]

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """nn.Module's, into an initialised net or a new one: an uninitialised net first takes weights of the
        state dict's shapes (so `SymNMFNet(r, n_layers=L).load_state_dict(net.state_dict())` gives net back), and
        stays uninitialised should the load fail; an initialised net keeps its own state then."""
        fresh = not self.initialized and all(key in state_dict for key in ("U0", "lam_min", "lam"))
        previous = self._fit_state() if fresh else None
        # nn.Module copies every tensor whose shape matches before it reports missing or unexpected keys: a copy of
        # an initialised net's state puts it back should the load fail, rather than leave a mix of two nets.
        kept = None if fresh or not self.initialized else copy.deepcopy(self.state_dict())
        try:
            if fresh:
                self._allocate(state_dict)
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except Exception:
            if previous is not None:
                self._put_back(previous)
            elif kept is not None:
                super().load_state_dict(kept)
            raise

    def _fit_state(self):
        """What a new start (`fit`, a load into a new net) replaces, for `_put_back` should it fail."""
        return {name: getattr(self, name) for name in _FIT_STATE}

    def _put_back(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    def save(self, path):
        """Save the config, the weights (state_dict, the regulariser's weight included) and the history to path.

        The file is a header line (format name, `CHECKPOINT_VERSION`, payload size and
        its sha256) followed by the payload (torch.save of the rest), so `load` can
        tell a corrupt or truncated file from a good one.
        """
        self._require_initialized()
        buffer = io.BytesIO()
        torch.save({"config": self.get_config(), "state_dict": self.state_dict(),
                    "history": self.history_, "n_iter": self.n_iter_}, buffer)
        payload = buffer.getvalue()
        header = {"format": "symnmf-net", "version": CHECKPOINT_VERSION, "size": len(payload),
                  "sha256": hashlib.sha256(payload).hexdigest()}
        with open(path, "wb") as f:
            f.write(_CHECKPOINT_MAGIC + json.dumps(header).encode() + b"\n" + payload)

    @classmethod
    def load(cls, path, map_location=None):
        """A net saved by `save`, with its weights, history and device (or map_location).

        Raises ValueError naming the file when it is empty, truncated, corrupt (checksum
        mismatch), of another format or version, or misses a key of the checkpoint.
        Files of the first format (a bare torch.save, no checksum) and of version 2 still load; they lack the
        regulariser's weight, which `_recovered_extra_state` derives from the config and the weights.
        """
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)

        def bad(why):
            return ValueError(f"{name} is not a usable SymNMFNet checkpoint: {why}")

        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise bad("the file is empty")
        if data.startswith(_CHECKPOINT_MAGIC):
            head, sep, payload = data[len(_CHECKPOINT_MAGIC):].partition(b"\n")
            if not sep:
                raise bad("the header is truncated")
            try:
                header = json.loads(head.decode())
                version, size, digest = int(header["version"]), int(header["size"]), str(header["sha256"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise bad(f"the header is unreadable ({exc})") from None
            if header.get("format") != "symnmf-net" or version not in _READABLE_VERSIONS:
                raise bad(f"format {header.get('format')!r} version {version}; this library reads "
                          f"symnmf-net versions {_READABLE_VERSIONS} (and the headerless version 1)")
            if len(payload) != size:
                raise bad(f"truncated: the payload has {len(payload)} bytes, the header says {size}")
            if hashlib.sha256(payload).hexdigest() != digest:
                raise bad("corrupt: the payload's sha256 does not match the header's")
            legacy = False
        else:
            payload, legacy, version = data, True, 1  # version 1: a bare torch.save
        try:
            saved = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises many types on garbage: report them all as one
            raise bad(f"the payload does not unpickle ({type(exc).__name__}: {str(exc)[:120]})") from None
        if not isinstance(saved, dict):
            raise bad(f"the payload is a {type(saved).__name__}, not a dict")
        for key in ("config", "state_dict"):
            if key not in saved:
                raise bad(f"the key {key!r} is missing")
        config, state = saved["config"], saved["state_dict"]
        if not isinstance(config, dict) or not isinstance(state, dict):
            raise bad("config and state_dict must be dicts")
        config = dict(config)
        if legacy:
            config.setdefault("recipe", "paper")
            if config.get("lam") is None:
                config["lam"] = "fro"
        for key in ("n_components", "n_layers"):
            if key not in config:
                raise bad(f"the config misses {key!r}")
        try:
            net = cls(**config)
        except (TypeError, ValueError) as exc:
            raise bad(f"the config is invalid ({exc})") from None
        needed = ["U0", "lam_min", "lam"] + [f"P.{i}" for i in range(net.n_layers)]
        if version >= 3:
            needed.append("_extra_state")
        missing = [key for key in needed if key not in state]
        if missing:
            raise bad(f"the state_dict misses {missing}")
        if version < 3:
            state = dict(state, _extra_state=net._recovered_extra_state(state, name))
        try:
            net.load_state_dict(state)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise bad(f"the weights do not fit the config ({str(exc)[:200]})") from None
        net.history_ = saved.get("history", {})
        net.n_iter_ = saved.get("n_iter", 0)
        return net

    def _recovered_extra_state(self, state, name):
        """The regulariser's weight of a file written before version 3 kept it: beta / lam_start^2 (mean over
        problems) with beta_relative, lam_start = max(lam, lam_min) for a lam given as a number, the saved lam when
        it was not learned, else the saved (trained) lam with a warning; beta_final's decay taken as run to its end.
        """
        beta_scale = 1.0
        if self.beta_relative:
            lam_min, lam = state["lam_min"], state["lam"]
            if not isinstance(self.lam_init, str):
                lam = torch.maximum(torch.full_like(lam_min, self.lam_init), lam_min)
            elif self.learn_lam:
                warnings.warn(f"{name} predates the checkpoints that keep the regulariser's weight beta / lam^2 of "
                              "the start; the trained lam stands in for the starting one, so loss() and a warm "
                              "start may differ from the saved net's (a new fit, without warm_start, sets it anew)",
                              RuntimeWarning, stacklevel=3)
            beta_scale = 1.0 / float(lam.detach().pow(2).mean())  # as `_initialize` computes it
        return {"beta_scale": beta_scale,
                "beta_now": beta_scale * (self.beta if self.beta_final is None else self.beta_final)}

    def _allocate(self, state_dict):
        """Empty parameters and buffers of the shapes in state_dict, so it can be loaded."""
        U0, restarts = state_dict["U0"], self._restart_shape()
        fits = isinstance(U0, torch.Tensor) and U0.dim() >= 2 + len(restarts) and U0.shape[-1] == self.n_components
        if not (fits and tuple(U0.shape[:len(restarts)]) == restarts):
            shape = tuple(U0.shape) if isinstance(U0, torch.Tensor) else type(U0).__name__
            raise ValueError(
                f"the state dict's U0 ({shape}) is not of a net with n_components={self.n_components} and "
                f"n_restarts={self.n_restarts}, whose U0 is (*restarts, *X.shape[:-2], n, {self.n_components}): "
                "build the net with the config it was saved with"
            )
        self.U0 = torch.empty_like(U0)
        self.lam_min = torch.empty_like(state_dict["lam_min"])
        self.lam = nn.Parameter(torch.empty_like(state_dict["lam"]), requires_grad=self.learn_lam)
        self.P = nn.ParameterList([nn.Parameter(torch.empty_like(U0)) for _ in range(self.n_layers)])

    def extra_repr(self):
        shape = "uninitialised" if not self.initialized else f"U0 {tuple(self.U0.shape)}"
        return f"n_components={self.n_components}, n_layers={self.n_layers}, beta={self.beta}, mu={self.mu}, {shape}"


class CudaGraphCaptureError(RuntimeError):
    """The capture of `SymNMFNet.fit(cuda_graph=True)`'s training step failed (the training before it did not).
    With cuda_graph=None the fit warns instead and trains on with eager steps."""


# what a failed capture raises (torch.AcceleratorError, where torch has it, is a RuntimeError or beside one)
_CAPTURE_ERRORS = (RuntimeError, getattr(torch, "AcceleratorError", RuntimeError))


def _capturable(beta_final, lr_schedule):
    """Whether a training step is the same at every epoch, so that one captured CUDA graph can replay it
    (with the default optimiser): no beta decay and a constant learning rate."""
    return beta_final is None and lr_schedule == "constant"


def training_factors(n_layers):
    """How many factors the size of U_0 (every restart and problem) a training step holds at its peak: the weights
    P_i, their gradients and Adam's two moments (4 L); what the step keeps for its backward, each block's output
    and each layer loss's X U_i and residual (about 3 L); U_0, X U_0 and the start's residual (3); and the
    backward's temporaries (about L). On an H200 (r = 64, L = 5, one restart) the measured peaks were 40 and 42
    such factors at 4M and 10M nodes (bench/results/bench_scale_4m-, bench_scale_10m-2026-11-27-NVIDIA-H200.md),
    against 43 here."""
    return 8 * n_layers + 3


def _check_training_memory(net, X):
    """Refuse, before the first step, training that cannot fit in memory, naming what to change.

    Without this a GPU run out of memory fails deep inside a step (or in the CUDA-graph capture, after which the
    fit trains on with eager steps first) with a message that says nothing of the restarts or the layers, and a
    CPU run is ended by the system's out-of-memory killer with no message at all.
    """
    need = training_memory_needed(net.U0, net.n_layers)
    available, total = free_memory(X.device)
    if available is not None and need > MEMORY_MARGIN * available:
        raise torch.OutOfMemoryError(training_memory_message(need, available, total, str(X.device),
                                                             tuple(net.U0.shape), net.U0.dtype, net.n_layers))


# Training is refused only where it needs this many times the free memory: `training_factors` is a few percent
# above the measured peaks, so what is refused is out of reach, not borderline.
MEMORY_MARGIN = 1.1


def training_memory_needed(U0, n_layers):
    """Bytes a training step allocates beyond the weights and U_0, which are there already (`training_factors`)."""
    return (training_factors(n_layers) - n_layers - 1) * U0.numel() * U0.element_size()


def free_memory(device):
    """(available, total) bytes where device's tensors live: the GPU's free memory and what torch's allocator
    holds unused, or the host's MemAvailable; (None, None) where neither can be read."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), total
    return _host_memory()


def training_memory_message(need, available, total, where, shape, dtype, n_layers):
    return (
        f"SymNMF-Net's training would allocate about {need / 1e9:.1f} GB more on {where}, where "
        f"{available / 1e9:.1f} GB of {total / 1e9:.1f} GB are free: a step keeps about "
        f"{training_factors(n_layers)} tensors the size of U_0 {shape} ({dtype}) for "
        f"{n_layers} layers. Train fewer restarts side by side (n_restarts=1 in SymNMF, SymNMFNet or "
        "fit_net, net_options={'n_restarts': 1}, `symnmf cluster --restarts 1`), fewer layers (n_layers), a "
        "smaller rank, or shard the graph over several GPUs or machines (symnmf.distributed)"
    )


def _host_memory():
    """(available, total) bytes of the host's memory from /proc/meminfo, or (None, None) where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024, int(fields["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None, None


def plateaued(losses, tol, window):
    """The early-stopping rule of `SymNMFNet.fit` on the logged losses (tol None: never). With a window
    (records): the best loss of the last `window` records gains at most tol times the whole decrease so
    far on the best before them; without: two consecutive records within tol times the first loss."""
    if tol is None:
        return False
    if window is None:
        return len(losses) >= 2 and abs(losses[-2] - losses[-1]) <= tol * abs(losses[0])
    if len(losses) <= window:
        return False
    # the last window's gain against the whole decrease so far: free of the floor of the loss,
    # which on large sparse graphs stays within a percent of the start
    before, recent = min(losses[:-window]), min(losses[-window:])
    return before - recent <= tol * max(losses[0] - recent, 0.0)


def _short(values):
    if isinstance(values, list):
        return f"[{min(values):.4g}..{max(values):.4g}]" if values else "[]"
    return f"{values:.4g}"


def _progress_bar(total, show):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="SymNMF-Net", leave=False)


def _label_agreement(a, b, r):
    """Normalised mutual information (arithmetic mean of the entropies) of two labellings in 0..r-1."""
    joint = torch.zeros(r * r, dtype=torch.float64)
    joint.index_add_(0, (a * r + b).cpu(), torch.ones(a.numel(), dtype=torch.float64))
    return agreement_of_counts(joint.reshape(r, r))


def agreement_of_counts(counts):
    """The NMI of `_label_agreement` from the r x r contingency counts of two labellings (float64),
    so that counts summed over the shards of a row-sharded factor give the same value."""
    joint = counts / counts.sum()
    pa, pb = joint.sum(1), joint.sum(0)

    def entropy(p):
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    nz = joint > 0
    mi = float((joint[nz] * (joint[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum())
    norm = 0.5 * (entropy(pa) + entropy(pb))
    return 1.0 if norm <= 0 else max(0.0, mi / norm)


@torch.no_grad()
def select_restart(U, rule="loss", scores=None):
    """The restart (leading dimension of U, shape (R, ..., n, r)) kept by a label-free rule.

    - "loss" / "error": the smallest of `scores` (shape (R, ...): the training loss or E per restart);
    - "modularity": the largest of `scores` (the modularity of each restart's labels on X,
      `symnmf.metrics.modularity`), the first of those equal to it up to rounding
      (`symnmf.metrics.first_best`);
    - "consensus": the restart whose labels (argmax of each row) agree most with the other
      restarts' labels, by mean NMI (arithmetic normalisation): the medoid of the restarts.
    NaN never wins. Returns an int for U of shape (R, n, r), else a tensor of indices of shape U.shape[1:-2].
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    R = U.shape[0]
    if rule in ("loss", "error", "modularity"):
        if scores is None:
            raise ValueError(f"rule {rule!r} needs the scores ({'modularity' if rule == 'modularity' else 'loss or E'})"
                             " of the restarts")
        scores = torch.as_tensor(scores, dtype=torch.float64)
        if scores.shape[0] != R:
            raise ValueError(f"scores must have one entry per restart ({R}), got shape {tuple(scores.shape)}")
        if not bool(torch.isfinite(scores).any()):
            raise ValueError("every restart's score is NaN or infinite")
        if rule == "modularity":  # of restarts at one partition (equal up to rounding), the first
            best = first_best(scores)
        else:
            best = torch.nan_to_num(scores, nan=float("inf")).argmin(0)
        return int(best) if best.dim() == 0 else best
    labels = U.argmax(-1)  # (R, ..., n)
    r = U.shape[-1]
    flat = labels.reshape(R, -1, labels.shape[-1])
    picks = []
    for b in range(flat.shape[1]):
        agree = torch.zeros(R, dtype=torch.float64)
        for i in range(R):
            for j in range(i + 1, R):
                v = _label_agreement(flat[i, b], flat[j, b], r)
                agree[i] += v
                agree[j] += v
        if not bool(torch.isfinite(U.reshape(R, flat.shape[1], -1)[:, b]).all()):
            finite = torch.isfinite(U.reshape(R, flat.shape[1], -1)[:, b]).all(-1)
            if not bool(finite.any()):
                raise ValueError("every restart's factor has NaN or infinite entries")
            agree[~finite] = -float("inf")
        picks.append(int(agree.argmax()))
    if labels.dim() == 2:
        return picks[0]
    return torch.tensor(picks).reshape(labels.shape[1:-1])


def restart_modularity(X, U):
    """The modularity on X of each restart's labels (argmax of the rows of U, shape (R, ..., n, r)), shape
    (R, ...); X is one graph (n, n) or a dense batch (..., n, n) matching U's (R, ..., n, r). A restart whose
    factor is not finite scores NaN, so that no rule keeps it (its argmax labels would still score)."""
    labels = U.argmax(-1)
    r = U.shape[-1]
    if X.dim() == 2:
        q = modularity(X, labels.reshape(-1, labels.shape[-1]), r).reshape(labels.shape[:-1])
    else:  # any number of batch dimensions, taken one graph at a time
        graphs = X.reshape(-1, *X.shape[-2:])
        per_graph = labels.reshape(labels.shape[0], graphs.shape[0], labels.shape[-1])
        q = torch.stack([modularity(graphs[b], per_graph[:, b], r) for b in range(graphs.shape[0])], 1)
        q = q.reshape(labels.shape[:-1])
    finite = torch.isfinite(U).flatten(-2).all(-1).cpu()
    return torch.where(finite, q, torch.full_like(q, float("nan")))


def polish_restarts(X, U_all, iters):
    """SymHALS (at most `iters` iterations) from each restart of U_all (R, n, r) on one graph X: a list of
    SolverResult, None for a restart that is not finite (it would stop SymHALS with an error; it scores NaN).

    The restarts run side by side (`symnmf.solvers.hals.hals_restarts`: one product with X per
    half-iteration for all of them), each stopping where `solve(X, r, "hals", U0=U_all[k])` would.
    """
    from .solvers.hals import hals_restarts

    finite = torch.isfinite(U_all).flatten(1).all(1).tolist()
    kept = [k for k, ok in enumerate(finite) if ok]
    if not kept:
        return [None] * len(finite)
    X = check_similarity(as_similarity(X))
    runs = iter(hals_restarts(X, U_all.detach()[kept], max_iter=iters))
    return [next(runs) if ok else None for ok in finite]


@dataclass
class NetResult:
    """What `fit_net` returns: the kept factor and how it was found.

    U: (n, r) factor of the kept restart (for a dense batch of graphs: (B, n, r)); labels: argmax of
    its rows; index: the kept restart; relative_error: its E; relative_errors / losses: every restart's;
    n_iter: training steps; seconds: wall time (start U_0 and polish included); net: the trained SymNMFNet
    (all restarts); settings: the recipe's values used; scores: what the rule compared, per restart (the
    modularity of the polished or trained labels, the training loss or E; None for "consensus" and for one
    restart); scale: one graph X is trained as X / scale and U multiplied by sqrt(scale)
    (`symnmf.fitting.similarity_scale`; 1.0 for normalised graphs), so net, losses and scores are those of
    X / scale.
    """

    U: torch.Tensor
    labels: torch.Tensor
    index: object
    relative_error: object
    relative_errors: list
    losses: list
    n_iter: int
    seconds: float
    net: "SymNMFNet"
    settings: dict = field(default_factory=dict)
    scores: object = None
    scale: float = 1.0


def fit_net(X, n_components, recipe="default", random_state=None, device=None, dtype=None, verbose=False,
            cuda_graph=None, scale=None, **overrides):
    """Train SymNMF-Net on X with a named recipe (`RECIPES`), restarts batched, and keep one restart.

    X: similarity (dense/sparse; numpy, scipy or torch). overrides: any recipe key
    (n_layers, beta, epochs, lr, n_restarts, select, ...). With n_restarts > 1 the
    restarts train side by side (a leading dimension) and `select` (a label-free
    rule: "loss", "error", "consensus" or "modularity") keeps one; with polish_iter > 0 SymHALS
    then refines the kept factor, or, with "modularity", every restart, and the restart whose
    polished labels have the highest modularity on X is kept. cuda_graph: replay each training
    step from a CUDA graph (`SymNMFNet.fit`); None (the default) does so for X on a CUDA device whenever the
    recipe allows it (a constant lr, no beta decay), and trains on with eager steps, with a warning, should
    the capture fail; True raises `CudaGraphCaptureError` then.
    scale: one graph X is trained as X / scale and U multiplied back by sqrt(scale); None (the default) takes
    `symnmf.fitting.similarity_scale(X)`, 1.0 trains X as given (for an X already scaled). A batch of graphs is
    trained as given (scale None or 1.0).
    Returns a `NetResult`.
    """
    settings = dict(_recipe(recipe))
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"unknown recipe settings {unknown}; known: {sorted(settings)}")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    R = settings["n_restarts"]
    if not is_int(R) or R < 1:
        raise ValueError(f"n_restarts must be a positive int, got {R!r}")
    R = settings["n_restarts"] = int(R)
    if settings["select"] not in SELECTION_RULES:
        raise ValueError(f"select must be one of {SELECTION_RULES}, got {settings['select']!r}")
    polish_iter = settings["polish_iter"]
    if not is_int(polish_iter) or polish_iter < 0:
        raise ValueError(f"polish_iter must be a non-negative int (0: no polish), got {polish_iter!r}")
    polish_iter = settings["polish_iter"] = int(polish_iter)
    _check_lam(settings["lam"])  # as given: for one graph it is divided by the scale below
    X = as_similarity(X, device=device, dtype=dtype)
    if settings["polish_iter"] and X.dim() != 2:
        raise ValueError("polish_iter needs one graph (a single n x n X); pass polish_iter=0 for a batch of graphs")
    if scale is not None and not _is_finite(scale, 0, strict=True):
        raise ValueError(f"scale must be a finite number > 0 (X is trained as X / scale) or None (the largest "
                         f"eigenvalue's), got {scale!r}")
    if X.dim() != 2:
        if scale is not None and scale != 1.0:
            raise ValueError(f"scale is for one graph; a batch of graphs is trained as it is (got scale={scale!r}): "
                             "fit graphs of different scales one at a time")
        scale = 1.0
    elif scale is None:
        # As the fit path: one graph is trained at largest eigenvalue 1 (the polish's SymHALS penalty is not
        # scale-free), and a lam given as a number, in X's units, goes with it.
        from .fitting import similarity_scale

        scale = similarity_scale(X)
    if scale != 1.0:
        from .fitting import _per_scale, scaled_similarity

        X = scaled_similarity(X, scale)
        settings["lam"] = _per_scale(settings["lam"], scale)
    start = time.perf_counter()
    net = SymNMFNet(
        n_components, n_layers=settings["n_layers"], beta=settings["beta"], mu=settings["mu"],
        lam=settings["lam"], n_restarts=None if R == 1 else R, random_state=random_state, recipe=recipe,
        init=settings["init"], init_iter=settings["init_iter"], init_noise=settings["init_noise"],
        learn_lam=settings["learn_lam"], beta_final=settings["beta_final"], loss_blocks=settings["loss_blocks"],
        beta_relative=settings["beta_relative"],
    )
    net.fit(X, epochs=settings["epochs"], lr=settings["lr"], relative_lr=settings["relative_lr"],
            tol=settings["tol"], patience=settings["patience"], lr_schedule=settings["lr_schedule"],
            verbose=verbose, cuda_graph=cuda_graph)
    with torch.no_grad():
        U_all = net()
    finite = torch.isfinite(U_all).flatten(-2).all(-1)  # (R, *batch) or batch
    if not bool((finite.any(0) if R > 1 else finite).all()):  # NaN never wins a selection: one finite restart will do
        which = "every restart's factor has" if R > 1 else "its factor has"
        raise FloatingPointError(f"SymNMF-Net's training diverged: {which} NaN or infinite entries; lower lr, or fit "
                                 "in float64")
    errors = net.history_["relative_error"][-1]
    losses = net.history_["loss_per_problem"][-1]
    if R > 1 and settings["select"] == "modularity" and polish_iter:
        # Every restart is polished and the labels of the polished factors are scored: the polish can move a
        # restart to another stationary point, and the kept factor is a polished one.
        polished = polish_restarts(X, U_all, polish_iter)
        scores = restart_modularity(X, torch.stack([U_all[k] if p is None else p.U for k, p in enumerate(polished)]))
        index = select_restart(U_all, "modularity", scores)
        U, error = polished[index].U, polished[index].history["rel_error"][-1]
        polish_iter = 0
    elif R == 1:
        index, U, scores = 0, U_all, None
        error = errors
    else:
        scores = net.restart_scores(X, settings["select"], U_all)
        index = select_restart(U_all, settings["select"], scores)
        if isinstance(index, int):
            U, error = U_all[index], errors[index]
        else:
            idx = index.to(U_all.device)
            U = torch.take_along_dim(U_all, idx[None, ..., None, None], 0)[0]
            # errors: nested lists of shape (R, *batch); the kept restart's E per problem, in the batch's shape
            flat = torch.as_tensor(errors, dtype=torch.float64).reshape(R, -1)
            error = flat[index.reshape(-1), torch.arange(flat.shape[1])].reshape(index.shape).tolist()
    if polish_iter:
        from .solvers import solve

        polished = solve(X, n_components, solver="hals", U0=U.detach(), max_iter=polish_iter)
        U, error = polished.U, polished.history["rel_error"][-1]
    if scale != 1.0:
        U = U * math.sqrt(scale)
    if U.is_cuda:
        torch.cuda.synchronize(U.device)
    seconds = time.perf_counter() - start
    return NetResult(U=U.detach(), labels=U.argmax(-1), index=index, relative_error=error,
                     relative_errors=errors if R > 1 else [errors], losses=losses if R > 1 else [losses],
                     n_iter=net.n_iter_, seconds=seconds, net=net, settings=settings,
                     scores=scores.tolist() if isinstance(scores, torch.Tensor) else scores, scale=scale)
