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
"""
import time

import numpy as np
import torch
from torch import nn

import symnmf_kernels as sk
from symnmf_kernels.ops.sparse_loss import sparse_layer_loss

from .solvers.base import make_generator
from .validation import as_similarity, check_rank, check_similarity

__all__ = ["SymNMFNet", "kuang_init", "sparse_factor"]


def _is_sparse(X):
    return X.layout != torch.strided


def _frob2(X):
    """||X||_F^2 per problem: shape X.shape[:-2] for dense X, () for sparse X."""
    return X.values().pow(2).sum() if _is_sparse(X) else X.pow(2).sum((-2, -1))


def _times(X, U):
    """X @ U for a dense (..., n, n) or sparse (n, n) X and U of shape (..., n, r)."""
    return sk.spmm(X, U) if _is_sparse(X) else X @ U


def _layer_terms(X, X_norm2, U, P, lam):
    """(||X - U U^T||_F^2, ||P - (X + lam I) U||_F^2 or None) per problem, from one product X U.

    These are the residual of a block's output U and the regulariser of the next
    block's weight P. A sparse X goes to the fused sparse kernels; a dense X
    uses the same expansion ||X||^2 - 2 <X U, U> + ||U^T U||^2, which never
    forms U U^T.
    """
    if _is_sparse(X):
        return sparse_layer_loss(X, U, P, lam)
    S = X @ U
    residual = X_norm2 - 2 * (S * U).sum((-2, -1)) + (U.mT @ U).pow(2).sum((-2, -1))
    regulariser = None if P is None else (P - S - _batch_view(lam) * U).pow(2).sum((-2, -1))
    return residual, regulariser


def _batch_view(t):
    """A per-problem tensor of shape (...) as (..., 1, 1), to scale (..., n, r) factors."""
    return t[..., None, None]


def kuang_init(X, rank, batch_shape=(), generator=None):
    """Kuang et al.'s random start U_0 = 2 sqrt(mean(X) / r) * rand(..., n, r).

    The scale makes the entries of U_0 U_0^T match the mean of X. The draws come
    from `generator` on its own device (a CPU generator gives the same U_0 on
    every device, and the same as `symnmf.solvers.init_factor` for one problem).
    X is dense (..., n, n) or sparse (n, n); batch_shape are extra leading
    dimensions (restarts).
    """
    n = X.shape[-1]
    if _is_sparse(X):
        mean = X.values().sum() / (n * n)
    else:
        mean = X.mean((-2, -1))
    shape = (*batch_shape, *X.shape[:-2], n, rank) if not _is_sparse(X) else (*batch_shape, n, rank)
    draw_device = generator.device if generator is not None else X.device
    U0 = torch.rand(shape, generator=generator, dtype=X.dtype, device=draw_device).to(X.device)
    return 2 * torch.sqrt(_batch_view(mean) / rank) * U0


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
    n_layers : int
        Number of blocks L (paper default 10).
    beta : float
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
    mu : float
        Weight of ||U_L||_1, for sparser factors (default 0).
    lam : float or None
        Initial lam; None means ||X||_F (the paper's choice). Either way the
        start is raised to lam_min when below it.
    n_restarts : int or None
        Number of random starts trained side by side on the same X; None means one
        start and no extra leading dimension.
    random_state : None, int, numpy RandomState / Generator, or torch.Generator
        Seed of the random start U_0 (an int gives the start of
        `symnmf.solvers.solve` with the same random_state).

    After `initialize(X)` (called by `fit`) the net holds `U0` (..., n, r), the
    weights `P` (L tensors of that shape), `lam` and `lam_min` (shape (...)).
    `forward()` needs no input: U_0 is fixed and X enters only the loss.
    """

    def __init__(self, n_components, n_layers=10, beta=5e-6, mu=0.0, lam=None, n_restarts=None, random_state=None):
        super().__init__()
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        if not beta >= 0 or not mu >= 0:
            raise ValueError(f"beta and mu must be >= 0, got beta={beta!r}, mu={mu!r}")
        if lam is not None and not lam > 0:
            raise ValueError(f"lam must be > 0 or None (None: ||X||_F), got {lam!r}")
        if n_restarts is not None and (isinstance(n_restarts, bool) or not isinstance(n_restarts, int) or n_restarts < 1):
            raise ValueError(f"n_restarts must be a positive int or None, got {n_restarts!r}")
        self.n_components = n_components
        self.n_layers = n_layers
        self.beta = float(beta)
        self.mu = float(mu)
        self.lam_init = None if lam is None else float(lam)
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.P = nn.ParameterList()
        self.lam = None
        self.register_buffer("U0", None)
        self.register_buffer("lam_min", None)
        self.history_ = {}
        self.n_iter_ = 0

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
        return X

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
        if U0 is None:
            U0 = kuang_init(X, r, self._restart_shape(), make_generator(self.random_state))
        else:
            U0 = torch.as_tensor(U0).to(device=X.device, dtype=X.dtype)
            if U0.shape[-1] != r or U0.shape[-2] != X.shape[-1]:
                raise ValueError(f"U0 must have shape (..., n, r) = (..., {X.shape[-1]}, {r}), got {tuple(U0.shape)}")
            if bool((U0 < 0).any()) or not bool(torch.isfinite(U0).all()):
                raise ValueError("U0 must be finite and non-negative")
            U0 = U0.clone()
        X_norm2 = _frob2(X)
        batch_shape = U0.shape[:-2]
        x_norm = torch.sqrt(X_norm2).expand(batch_shape)
        residual0 = _layer_terms(X, X_norm2, U0, None, 0.0)[0]
        lam_min = 0.5 * (x_norm + torch.sqrt(torch.clamp(residual0, min=0)))
        lam0 = x_norm if self.lam_init is None else torch.full_like(lam_min, self.lam_init)
        lam = torch.maximum(lam0, lam_min)

        self.U0 = U0
        self.lam_min = lam_min.contiguous()
        self.lam = nn.Parameter(lam.clone())
        weights = []
        U = U0
        for _ in range(self.n_layers):
            P = _times(X, U) + _batch_view(lam) * U
            weights.append(nn.Parameter(P))
            U = sk.symnmf_block(U, P, lam)
        self.P = nn.ParameterList(weights)
        self.history_ = {}
        self.n_iter_ = 0
        return self

    def _require_initialized(self):
        if not self.initialized:
            raise RuntimeError("the net is not initialised: call fit(X) or initialize(X) first")

    # ------------------------------------------------------------ the network
    def forward(self, return_all=False):
        """U_L, or the list [U_0, U_1, ..., U_L] when return_all is True."""
        self._require_initialized()
        U = self.U0
        # The chain form: each block hands the next the Gram of its output from the same pass,
        # so a forward reads each U_i once and each block's backward is a single pass.
        UtU = sk.gram(U, 0.0)
        iterates = [U]
        for P in self.P:
            U, UtU = sk.symnmf_block_from_gram(UtU, P, self.lam)
            iterates.append(U)
        return iterates if return_all else U

    def _objective(self, X, X_norm2):
        """(loss per problem, ||X - U_L U_L^T||^2 per problem, U_L).

        One product X U_i per block output serves both the residual of block i
        and the regulariser of block i + 1.
        """
        iterates = self.forward(return_all=True)
        weights = list(self.P) + [None]
        loss = 0.0
        for i, (U, P_next) in enumerate(zip(iterates, weights)):
            residual, regulariser = _layer_terms(X, X_norm2, U, P_next, self.lam)
            if i > 0:
                loss = loss + residual
            if regulariser is not None:
                loss = loss + self.beta * regulariser
        U = iterates[-1]
        if self.mu:
            loss = loss + self.mu * U.sum((-2, -1))  # U_L >= 0, so this is ||U_L||_1
        return loss, residual, U

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
    def fit(self, X, epochs=100, lr=0.5, relative_lr=False, optimizer=None, tol=None, U0=None, warm_start=False,
            progress=None, verbose=False, log_every=1, callback=None):
        """Initialise from X (Algorithm 1) and train P_i and lam by gradient steps.

        Parameters
        ----------
        X : dense (..., n, n) or sparse (n, n) symmetric non-negative similarity
            (torch, numpy or scipy.sparse).
        epochs : int
            Number of optimiser steps (one step = one pass through the L blocks).
        lr : float
            Learning rate (paper: 0.5 for images, 0.3 for text). Adam moves every
            weight by about lr per step whatever its size, while P_i scales like
            ||X||_F^{3/2}: an absolute lr suits only graphs of one scale.
        relative_lr : bool
            Scale lr by the root-mean-square of the initial P_i for the weights and by
            the initial lam for lam, which makes training with beta = 0 invariant to
            the scale of X (X -> cX, U_0 -> sqrt(c) U_0 gives U -> sqrt(c) U; with
            beta > 0 the regulariser's relative weight still grows like c).
            Suggested lr then: 0.01 to 0.1.
        optimizer : a torch.optim.Optimizer class, or None for Adam.
        tol : float or None
            Stop early once the loss changes by less than tol times the initial
            loss between two logged steps.
        U0 : tensor (..., n, r) or None
            The start; None draws Kuang's random start from random_state.
        warm_start : bool
            Keep the current weights and continue training instead of re-initialising.
        progress : bool or None
            Show a progress bar (tqdm when installed); None follows verbose.
        log_every : int
            Record the history every this many steps (each record synchronises
            with the device).
        callback : callable(net, epoch, record) or None; returning True stops training.

        History (`history_`): per record the step ("epoch"), "loss" (summed over
        problems), "relative_error" E and "sparse_factor" SF of U_L (a float, or a
        list with one value per problem), and "time" in seconds since the start.
        Record 0 is the initialisation, the last record the trained net.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if tol is not None and not tol >= 0:
            raise ValueError(f"tol must be >= 0 or None, got {tol!r}")
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be a positive int, got {log_every!r}")
        if warm_start and self.initialized:
            X = self._prepare(X)
            self._check_matches(X)
        else:
            X = self._prepare(X, like_net=False)
            self._initialize(X, U0)

        optimizer = (optimizer or torch.optim.Adam)(self._param_groups(lr, relative_lr), lr=lr)
        X_norm2 = _frob2(X)

        history = {"epoch": [], "loss": [], "relative_error": [], "sparse_factor": [], "time": []}
        start = time.perf_counter()

        def record(epoch, loss, residual, U):
            entry = {
                "epoch": epoch,
                "loss": float(loss.detach().sum()),
                "relative_error": (residual.detach() / X_norm2).tolist(),
                "sparse_factor": sparse_factor(U.detach()).tolist(),
                "time": time.perf_counter() - start,
            }
            for key, value in entry.items():
                history[key].append(value)
            return entry

        bar = _progress_bar(epochs, progress if progress is not None else verbose)
        steps = 0
        try:
            for epoch in range(epochs):
                optimizer.zero_grad(set_to_none=True)
                loss, residual, U = self._objective(X, X_norm2)
                loss.sum().backward()
                optimizer.step()
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
                if tol is not None and len(history["loss"]) >= 2:
                    if abs(history["loss"][-2] - history["loss"][-1]) <= tol * abs(history["loss"][0]):
                        break
        finally:
            if bar is not None:
                bar.close()
        with torch.no_grad():
            record(steps, *self._objective(X, X_norm2))
        self.history_ = history
        self.n_iter_ = steps
        return self

    def _param_groups(self, lr, relative_lr):
        if not relative_lr:
            return self.parameters()
        with torch.no_grad():
            # Python floats: an optimiser's lr is a host scalar; this reads the device once per fit
            p_scale = float(torch.stack([P.pow(2).mean() for P in self.P]).mean().sqrt())
            lam_scale = float(self.lam.detach().abs().mean())
        return [{"params": list(self.P), "lr": lr * p_scale}, {"params": [self.lam], "lr": lr * lam_scale}]

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
        }

    def save(self, path):
        """Save the config, the weights (state_dict) and the history to path."""
        self._require_initialized()
        torch.save({"config": self.get_config(), "state_dict": self.state_dict(),
                    "history": self.history_, "n_iter": self.n_iter_}, path)

    @classmethod
    def load(cls, path, map_location=None):
        """A net saved by `save`, with its weights, history and device (or map_location)."""
        saved = torch.load(path, map_location=map_location, weights_only=True)
        net = cls(**saved["config"])
        net._allocate(saved["state_dict"])
        net.load_state_dict(saved["state_dict"])
        net.history_ = saved.get("history", {})
        net.n_iter_ = saved.get("n_iter", 0)
        return net

    def _allocate(self, state_dict):
        """Empty parameters and buffers of the shapes in state_dict, so it can be loaded."""
        U0 = state_dict["U0"]
        self.U0 = torch.empty_like(U0)
        self.lam_min = torch.empty_like(state_dict["lam_min"])
        self.lam = nn.Parameter(torch.empty_like(state_dict["lam"]))
        self.P = nn.ParameterList([nn.Parameter(torch.empty_like(U0)) for _ in range(self.n_layers)])

    def extra_repr(self):
        shape = "uninitialised" if not self.initialized else f"U0 {tuple(self.U0.shape)}"
        return f"n_components={self.n_components}, n_layers={self.n_layers}, beta={self.beta}, mu={self.mu}, {shape}"


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
