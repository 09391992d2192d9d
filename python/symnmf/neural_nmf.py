"""Neural NMF: hierarchical NMF whose factors are trained jointly by backpropagation.

    from symnmf.neural_nmf import NeuralNMF
    model = NeuralNMF(ranks=[9, 4, 2], random_state=0).fit(X)       # X: (n_samples, n_features) >= 0
    model.relative_errors_, model.A_, model.S_
    model = NeuralNMF([9, 4, 2], n_classes=2).fit(X, y, label_mask=known)   # (semi-)supervised

The model (Will, Zhang, Sadovnik, Gao, Vendrow, Haddock, Molitor and Needell,
"Neural nonnegative matrix factorization for hierarchical multilayer topic
modeling"). With the samples as the columns of D = X^T (n_features x n_samples):

    D ~ A_1 S_1,  S_1 ~ A_2 S_2,  ...,  S_{L-1} ~ A_L S_L,
    S_l = q(S_{l-1}, A_l) = argmin_{S >= 0} ||S_{l-1} - A_l S||_F,   S_0 = D.

Only the A_l are parameters. Each layer q is one call of the batched NNLS op
`symnmf_kernels.nnls` on the Gram `gram(A_l)`, warm-started from the previous
step's S_l, and the gradient flows through its active set. After every step
each A_l is projected back onto A_l >= 0. Losses:

- "reconstruction": ||D - A_1 ... A_L S_L||_F^2 (the loss of Deep NMF);
- "layers": sum_l ||D - A_1 ... A_l S_l||_F^2, every layer's reconstruction;
- "energy": sum_l ||S_{l-1} - A_l S_l||_F^2;

both divided by ||D||_F^2, plus, with labels, label_weight times the
classification loss ||M (Y - B S_L)||_F^2 / ||M Y||_F^2, where Y is one-hot,
the mask M keeps the labelled samples and B (n_classes x k_L) is refit by
least squares at every step.

The baselines on the same kernels are here too: `hierarchical_nmf` (each layer
an NMF of the previous S, by alternating NNLS) and `deep_nmf` (that
factorisation fine-tuned on the reconstruction loss with S_L free).

Arrays are sample-major as in scikit-learn: `S_[l]` and `transform` hold
S_l^T (n_samples x k_l); `A_[0]` is n_features x k_1 and `A_[l]` is
k_l x k_{l+1}.
"""
import contextlib
import importlib
import math
import numbers
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

import symnmf_kernels as sk

from .fitting import resolve_device, resolve_dtype, unchanged_on_error
from .solvers.base import as_seed
from .validation import array_as_tensor, power_of_two_scale, real_array

__all__ = ["NeuralNMF", "nnls_layer", "forward", "relative_errors", "nmf", "hierarchical_nmf", "deep_nmf"]

# The module of the NNLS op (its name is shadowed by the op itself in symnmf_kernels.ops).
_ops_nnls = importlib.import_module("symnmf_kernels.ops.nnls")

# A relative ridge on each Gram A^T A: a column of A that reaches zero leaves it positive definite.
RIDGE = 1e-12


# ---- the layers, on the NNLS op ---------------------------------------------------------------------------------


class _GramNnlsCpu(torch.autograd.Function):
    """nnls(gram(A, lam), C, x0) as one autograd node on the extension's CPU kernel. At 90 samples a
    training step's time went to the autograd and dispatch of the small ops around each layer (the
    ridge, the Gram, the solve), not to the solve itself.

    With P = {S > 0} row by row, Z_P = G_PP^{-1} dS_P solves the backward (`_passive_solve`),
    dC = Z, dG = -sym(Z^T S), and G = A^T A + lam I (lam a constant) gives dA = 2 A dG.
    """

    @staticmethod
    def forward(ctx, A, C, x0):
        S, G = _solve_rows(A, C, x0)
        ctx.save_for_backward(A, G, S)
        return S

    @staticmethod
    def backward(ctx, dS):
        A, G, S = ctx.saved_tensors
        Z = _passive_solve(G, dS, S)
        dA = None
        if ctx.needs_input_grad[0]:
            dG = Z.mT @ S
            dA = -(A @ (dG + dG.mT))
        return dA, Z, None


def _gram_nnls(A, C, x0):
    """argmin_{X >= 0} rows of 1/2 x^T G x - c^T x with G = A^T A + RIDGE ||A||_F^2 / k I, differentiable
    in A and C (the ridge a constant: a column of A that reaches zero leaves G positive definite)."""
    if _ops_nnls._native_runs(C) and A.dim() == 2 and C.dim() == 2 and A.dtype == C.dtype:
        return _GramNnlsCpu.apply(A, C.contiguous(), None if x0 is None else x0.detach().contiguous())
    return sk.nnls(sk.gram(A, _ridge(A)), C, x0)


def _ridge(A):
    """The ridge of a layer's Gram, RIDGE ||A||_F^2 / k, a constant of the step (a 0-d tensor, no gradient)."""
    A = A.detach()
    return RIDGE * (A * A).sum() / A.shape[-1]


def nnls_layer(S_prev, A, x0=None):
    """S^T = argmin_{S >= 0} ||S_prev^T - A S||_F for a sample-major S_prev (n, k_prev) and A (k_prev, k): (n, k)."""
    return _gram_nnls(A, S_prev @ A, x0)


def forward(X, As, warm=None):
    """[S_1^T, ..., S_L^T] of X (n_samples, n_features); warm: the previous list, for warm starts."""
    Ss, S = [], X
    for i, A in enumerate(As):
        S = nnls_layer(S, A, None if warm is None else warm[i])
        Ss.append(S)
    return Ss


def relative_errors(X, As, Ss):
    """||D - A_1 ... A_l S_l||_F / ||D||_F for each layer l (D = X^T), as floats."""
    out, P, norm = [], None, X.norm()
    for A, S in zip(As, Ss):
        P = A if P is None else P @ A
        out.append(float((X - S @ P.mT).norm() / norm))
    return out


def _forward_with_errors(X, X_norm2, As, warm):
    """The layers and each layer's ||X - S_l P_l^T||_F^2 (P_l = A_1 ... A_l), without an n x d residual:

        ||X - S P^T||^2 = ||X||^2 - 2 <X P, S> + <S^T S, P^T P>,

    where X P_l = (X A_1) A_2 ... A_l reuses X A_1, the first layer's right-hand sides, and
    P_l^T P_l = A_l^T (P_{l-1}^T P_{l-1}) A_l is k x k. In float64 the expansion loses about
    1e-16 ||X||^2 to cancellation, far below the errors it measures.
    """
    XP = X @ As[0]
    PtP = As[0].mT @ As[0]
    Ss, errors2, S = [], [], None
    for i, A in enumerate(As):
        if i > 0:
            XP, PtP = XP @ A, A.mT @ PtP @ A
        S = _gram_nnls(A, XP if i == 0 else S @ A, None if warm is None else warm[i])
        Ss.append(S)
        errors2.append(X_norm2 - 2 * (XP * S).sum() + ((S.mT @ S) * PtP).sum())
    return Ss, errors2


def _solve_rows(A, C, x0):
    """(S, G): the layer's solution without autograd, and the Gram (ridge included) it solved with. On the CPU
    the op's torch path is called directly (it runs the extension's kernel), without the op's checks and dispatch."""
    k = A.shape[1]
    with torch.no_grad():
        G = A.mT @ A
        G.diagonal().add_(_ridge(A))
        if _ops_nnls._native_runs(C):
            x0 = None if x0 is None else x0.detach().contiguous()[None]
            S = _ops_nnls.nnls_torch(G[None], C.detach().contiguous()[None], x0, _ops_nnls.default_max_rounds(k))
            return S[0], G
        return sk.nnls(G, C.detach(), x0), G


def _passive_solve(G, dS, S):
    """Z with Z_P = G_PP^{-1} dS_P and Z = 0 off P = {S > 0}, row by row: the backward of a layer."""
    if _ops_nnls._native_runs(dS):
        return _ops_nnls.nnls_backward_torch(G[None], S[None], dS.contiguous()[None])[0]
    return _ops_nnls.nnls_passive_solve(G, dS.contiguous(), S)


@torch.no_grad()
def _reconstruction_grads(X, X_norm2, As, warm, extra=None):
    """One training step's forward and backward of the reconstruction loss, written out without autograd.

    Returns (Ss, e2, value, grads): the layers; e2 = ||X - S_L P_L^T||_F^2 (`_forward_with_errors`'s
    expansion); the loss value = e2 / X_norm2 (+ the extra term); its gradients in the A_l. At 90 samples
    the autograd graph of a step (about 30 nodes) cost as much as its arithmetic. extra(S_L) -> (value, dS_L) adds a term
    of S_L alone to the loss (the classification term, its B held fixed).

    The backward, with C_1 = X A_1, C_l = S_{l-1} A_l, XP_l = X A_1 ... A_l, Q_l = P_l^T P_l:
    e2's partials are dS_L = 2 (S_L Q_L - XP_L), dXP_L = -2 S_L, dQ_L = S_L^T S_L; each layer's
    solve passes dC_l = Z_l = G_PP^{-1} dS_l (on its passive set) and dG_l = -sym(Z_l^T S_l), and
    the products pass the rest back by the chain rule.
    """
    Ss, Gs, XPs, Qs = [], [], [], []
    for i, A in enumerate(As):
        if i == 0:
            C = XP = X @ A
            Q = A.mT @ A
        else:
            C, XP, Q = Ss[-1] @ A, XPs[-1] @ A, A.mT @ Qs[-1] @ A
        S, G = _solve_rows(A, C, None if warm is None else warm[i])
        Ss.append(S), Gs.append(G), XPs.append(XP), Qs.append(Q)
    S = Ss[-1]
    StS = S.mT @ S
    e2 = X_norm2 - 2 * (XPs[-1] * S).sum() + (StS * Qs[-1]).sum()
    dS, dXP, dQ = 2 * (S @ Qs[-1] - XPs[-1]), -2 * S, StS
    value = e2 / X_norm2
    dS, dXP, dQ = dS / X_norm2, dXP / X_norm2, dQ / X_norm2
    if extra is not None:
        term, dS_extra = extra(S)
        value, dS = value + term, dS + dS_extra
    grads = [None] * len(As)
    for l in range(len(As) - 1, -1, -1):
        A = As[l]
        Z = _passive_solve(Gs[l], dS, Ss[l])
        ZS = Z.mT @ Ss[l]
        dA = -(A @ (ZS + ZS.mT))
        if l > 0:
            dA += Ss[l - 1].mT @ Z + XPs[l - 1].mT @ dXP + 2 * (Qs[l - 1] @ A @ dQ)
            dS, dXP, dQ = Z @ A.mT, dXP @ A.mT, A @ dQ @ A.mT
        else:
            dA += X.mT @ (Z + dXP) + 2 * (A @ dQ)
        grads[l] = dA
    return Ss, e2, value, grads


class _Adam:
    """Adam (Kingma & Ba; torch.optim.Adam's update) over a few tensors with one learning rate each, in a
    handful of foreach calls: at 90 samples torch's optimiser cost a quarter of a training step.

    capturable: the step count lives on the parameters' device (float64) and the bias corrections are
    computed there, so that a step captured in a CUDA graph replays with the count of each replay (the
    host-side count would be frozen into the graph at its capture value).
    """

    def __init__(self, params, lrs, betas=(0.9, 0.999), eps=1e-8, capturable=False):
        self.params, self.lrs, self.betas, self.eps = list(params), list(lrs), betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.capturable = capturable
        self.t = torch.zeros((), dtype=torch.float64, device=self.params[0].device) if capturable else 0

    @torch.no_grad()
    def step(self, grads):
        b1, b2 = self.betas
        self.t += 1
        torch._foreach_lerp_(self.m, grads, 1 - b1)
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, grads, grads, 1 - b2)
        denom = torch._foreach_sqrt(self.v)
        if self.capturable:
            bias1, bias2 = 1 - torch.pow(b1, self.t), 1 - torch.pow(b2, self.t)
            torch._foreach_div_(denom, bias2.sqrt())
            torch._foreach_add_(denom, self.eps)
            updates = torch._foreach_div(self.m, denom)
            for param, update, lr in zip(self.params, updates, self.lrs):
                param.sub_(update.mul_(lr / bias1))
            return
        bias1, bias2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.m, denom, [-lr / bias1 for lr in self.lrs])


# Eager steps before `NeuralNMF.fit` captures one in a CUDA graph: the first compiles the cold-start kernels, the
# second the warm-start ones that every replay runs. A capture costs about as much as a few eager steps, so a fit
# with fewer steps than this many left after them stays eager.
_EAGER_STEPS_BEFORE_CAPTURE = 2
_MIN_REPLAYS = 5
# what a failed capture raises (torch.AcceleratorError, where torch has it, is a RuntimeError or beside one)
_CAPTURE_ERRORS = (RuntimeError, getattr(torch, "AcceleratorError", RuntimeError))


def _capture_step(X, X_norm2, As, warm, optimizer):
    """The unsupervised reconstruction step captured in a CUDA graph: (graph, (loss, e2, warm)), tensors that
    each replay overwrites. The warm starts are static buffers the step reads at its start and overwrites with
    its solutions at its end; the capture records the step without running it."""
    torch.cuda.synchronize(X.device)
    warm = [S.detach().clone() for S in warm]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        Ss, e2, loss, grads = _reconstruction_grads(X, X_norm2, As, warm, None)
        _update(optimizer, As, grads)
        with torch.no_grad():
            torch._foreach_copy_(warm, Ss)
    return graph, (loss, e2, warm)


def _update(optimizer, As, grads):
    """The Adam step of the A_l, then their projection onto A_l >= 0."""
    optimizer.step(grads)
    with torch.no_grad():
        torch._foreach_clamp_min_(As, 0.0)


# ---- the baselines ----------------------------------------------------------------------------------------------


def _working_unit(X):
    """1, or where X's largest entry (X: a numpy array) lies outside 2^-20 .. 2^20, the power of two that brings it
    to [0.5, 1). The model is X ~ S_L P^T, so a fit of X times a constant gives the factors of X with S divided by
    it, but the training is not free of X's scale: its losses are sums of squares at that scale (||X||^2 under- or
    overflowed in float32 from about 1e-20 and 1e19, and the fit became NaN), and Adam's epsilon and the step's
    floor are absolute (from the hierarchical start, A_1 stopped training at X * 1e40, and training raised the
    loss at X * 1e-30). Within the window those effects are below a percent of a step, and data in its own units
    (pixels in 0..255, counts) are fitted as they are."""
    unit = float(power_of_two_scale(array_as_tensor(X))) if X.size else 1.0
    return 1.0 if 2.0**-20 <= unit <= 2.0**20 else unit


def _init_factor(n, k, scale, generator, like):
    return scale * torch.rand(n, k, generator=generator, dtype=like.dtype).to(like.device)


def nmf(X, k, n_iter=100, generator=None):
    """X (n, d) ~ W A^T with W (n, k), A (d, k) >= 0 by alternating NNLS (both solves exact, warm-started);
    returns (A, W), W the NNLS solution for the final A."""
    n, d = X.shape
    scale = float((X.mean() / k).clamp_min(1e-30).sqrt())
    W = _init_factor(n, k, scale, generator, X)
    A = None
    for _ in range(n_iter):
        A = sk.nnls(sk.gram(W, _ridge(W)), X.mT @ W, A)  # the ridge as a tensor: no read-back per sweep
        W = nnls_layer(X, A, W)
    return A, W


def hierarchical_nmf(X, ranks, n_iter=100, generator=None):
    """Sequential hierarchical NMF: S_{l-1} ~ A_l S_l one layer after the other. Returns (As, Ss)."""
    As, Ss, S = [], [], X
    for k in ranks:
        A, S = nmf(S, k, n_iter, generator)
        As.append(A)
        Ss.append(S)
    return As, Ss


def deep_nmf(X, ranks, n_iter=100, n_init_iter=100, generator=None):
    """Deep NMF: hierarchical NMF, then n_iter sweeps on ||D - A_1 ... A_L S_L||_F^2 over every factor: an exact
    NNLS for S_L and a projected gradient step of step 1 / Lipschitz for each A_l. Returns (As, S_L)."""
    As, Ss = hierarchical_nmf(X, ranks, n_init_iter, generator)
    S = Ss[-1]
    for _ in range(n_iter):
        for l in range(len(As)):
            P = None  # A_1 ... A_{l-1}, (n_features, k_{l-1}); None: the identity
            for A in As[:l]:
                P = A if P is None else P @ A
            Q = S.mT  # A_{l+1} ... A_L S_L, (k_l, n)
            for A in reversed(As[l + 1:]):
                Q = A @ Q
            PtP = P.mT @ P if P is not None else None
            QQt = Q @ Q.mT
            PtDQt = (Q @ X).mT if P is None else P.mT @ (Q @ X).mT
            A = As[l]
            grad = (A @ QQt if PtP is None else PtP @ A @ QQt) - PtDQt
            lipschitz = torch.linalg.matrix_norm(QQt, 2) * (1.0 if PtP is None else torch.linalg.matrix_norm(PtP, 2))
            As[l] = (A - grad / lipschitz).clamp_(min=0)
        left = As[0]
        for A in As[1:]:
            left = left @ A
        S = nnls_layer(X, left, S)
    return As, S


# ---- the estimator ----------------------------------------------------------------------------------------------


class NeuralNMF(TransformerMixin, BaseEstimator):
    """Hierarchical NMF trained by backpropagation through NNLS layers (see the module docstring).

    Parameters
    ----------
    ranks : list of int
        k_1, ..., k_L, the rank of each layer.
    loss : {"reconstruction", "layers", "energy"}
        The unsupervised part of the loss: the last layer's reconstruction, the sum of every layer's, or the
        sum of each layer's fit to the previous one.
    n_classes : int, optional
        Number of classes of the classification layer; None: taken from y (without y, no classifier).
        More classes than the labelled samples show (label_mask hiding a class) needs numeric labels:
        the classes without a label are named after the largest label seen, max + 1, max + 2, ...
    label_weight : float
        Weight of the classification loss against the (normalised) reconstruction loss.
    max_iter : int
        Training steps (each a forward pass over all samples, a backward and an update of every A_l).
    lr : float
        Adam's learning rate, relative to the mean entry of each A_l at the start.
    init : {"hierarchical", "random"} or list of arrays
        Start from a sequential hierarchical NMF (n_init_iter alternating-NNLS sweeps per layer), from
        uniform random factors in [0, 1), or from the given A_1, ..., A_L.
    n_init_iter : int
        Sweeps of each layer's NMF for init="hierarchical".
    random_state : None or int
        Seed of the initial factors.
    device : str or torch.device, optional
        Where to compute (default: the device of a torch input, else CUDA when available, else the CPU).
    dtype : {"float32", "float64"} or torch dtype, optional
        Precision of the fit; default float64.
    cuda_graph : bool or None
        Replay each training step from a CUDA graph captured after the first few eager steps: a step is
        then one graph launch instead of a few hundred kernel launches, which bound it on a GPU at these
        sizes. Needs X on a CUDA device and the unsupervised "reconstruction" loss. None (the default):
        wherever that holds, continuing with eager steps, with a warning, should the capture fail.
    verbose : bool

    Attributes
    ----------
    A_ : list of ndarray
        A_1 (n_features x k_1), A_2 (k_1 x k_2), ...
    S_ : list of ndarray
        S_l^T (n_samples x k_l) for the fitted X.
    relative_errors_ : list of float
        ||X^T - A_1 ... A_l S_l||_F / ||X||_F for each layer l.
    classifier_ : ndarray (n_classes x k_L), with labels only
        B, the classification layer: the class scores of sample i are S_L^T[i] @ B^T.
    classes_ : ndarray (n_classes,), with labels only
        The labels seen among the labelled samples, sorted, then those named for the classes without a
        labelled sample (see n_classes); predict returns classes_[j] for the highest score j.
    history_ : dict
        "loss" (the training loss per step) and "relative_error" (the last layer's, at each step's forward
        pass, before its update).
    n_iter_ : int
    cuda_graph_ : bool
        Whether the training steps after the first few were replayed from a CUDA graph (see cuda_graph).
    """

    _parameter_constraints = {
        "ranks": [list, tuple],
        "loss": [StrOptions({"reconstruction", "layers", "energy"})],
        "n_classes": [Interval(numbers.Integral, 2, None, closed="left"), None],
        "label_weight": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "init": [StrOptions({"hierarchical", "random"}), list, tuple],
        "n_init_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": [None, Interval(numbers.Integral, 0, 2 ** 63 - 1, closed="both")],  # torch's seed range
        "device": [None, str, torch.device],
        "dtype": [None, StrOptions({"float32", "float64"}), torch.dtype],
        "cuda_graph": [None, "boolean"],
        "verbose": ["boolean"],
    }

    def __init__(
        self,
        ranks=(9, 4, 2),
        *,
        loss="reconstruction",
        n_classes=None,
        label_weight=1.0,
        max_iter=200,
        lr=0.01,
        init="hierarchical",
        n_init_iter=100,
        random_state=None,
        device=None,
        dtype=None,
        cuda_graph=None,
        verbose=False,
    ):
        self.ranks = ranks
        self.loss = loss
        self.n_classes = n_classes
        self.label_weight = label_weight
        self.max_iter = max_iter
        self.lr = lr
        self.init = init
        self.n_init_iter = n_init_iter
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.cuda_graph = cuda_graph
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        # transform computes in the precision of the fit (dtype), whatever the input's.
        tags.transformer_tags.preserves_dtype = ["float64"] if self.dtype in (None, "float64", torch.float64) \
            else ["float32"]
        return tags

    # ------------------------------------------------------------------ input
    def _tensor(self, X, reset):
        """X validated, as a tensor of the fit's dtype and device at the fit's working unit (`_working_unit`, set
        with reset)."""
        device = resolve_device(self.device, X) if reset else torch.device(self._device_fit)
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=reset, ensure_min_samples=1)
        if X.min() < 0:
            raise ValueError(f"Negative values in data passed to NeuralNMF: X must be non-negative (smallest entry {X.min()})")
        if reset and not X.any():  # every NNLS solution and factor would be 0 and every relative error 0 / 0
            raise ValueError("X is all zero: there is nothing to factorise (check the data)")
        dtype = (resolve_dtype(self.dtype) or torch.float64) if reset else self._dtype_fit
        if reset:
            self._unit = _working_unit(X)
        if self._unit != 1.0:  # in float64, before any cast: a float32 X would lose the entries its range cannot hold
            X = X.astype(np.float64) * self._unit
        X = np.ascontiguousarray(X) if X.flags.writeable else X.copy()  # torch refuses read-only memory
        return torch.as_tensor(X, dtype=dtype, device=device)

    def _check_ranks(self, n_features):
        ranks = list(self.ranks)
        if not ranks or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 for k in ranks):
            raise ValueError(f"ranks must be a non-empty list of ints >= 1, got {self.ranks!r}")
        if ranks[0] > n_features:
            raise ValueError(f"ranks[0] = {ranks[0]} exceeds the number of features, n_features = {n_features}")
        return [int(k) for k in ranks]

    def _labels(self, y, label_mask, n):
        """(Y one-hot (n, c), mask (n,) bool, classes (c,)) or (None, None, None) without y."""
        if y is None:
            if label_mask is not None:
                raise ValueError("label_mask is given without y: pass the labels y too")
            if self.n_classes is not None:
                raise ValueError(f"n_classes = {self.n_classes} needs labels: pass y to fit")
            return None, None, None
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"y must have one label per sample, shape ({n},), got {y.shape}")
        mask = np.ones(n, dtype=bool) if label_mask is None else np.asarray(label_mask)
        if mask.shape != (n,) or mask.dtype != bool:
            raise ValueError(f"label_mask must be a boolean array of shape ({n},), got {mask.dtype} {mask.shape}")
        if not mask.any():
            raise ValueError("label_mask keeps no sample: at least one label is needed")
        known = y[mask]
        # NaN is the one value unequal to itself, which finds it in object arrays too
        bad = "NaN" if known.dtype.kind in "fcO" and bool((known != known).any()) else \
            "infinity" if known.dtype.kind in "fc" and bool(np.isinf(known).any()) else None
        if bad:
            raise ValueError(f"Input y contains {bad} among the labelled samples: a label must name a class; "
                             "leave samples without one out of label_mask")
        classes, codes = np.unique(known, return_inverse=True)
        c = len(classes) if self.n_classes is None else self.n_classes
        if len(classes) > c:
            raise ValueError(f"y has {len(classes)} classes among the labelled samples but n_classes = {c}")
        if len(classes) < c:
            # predict must name every class it can return; numbers past the largest label cannot clash
            if classes.dtype.kind not in "iuf":
                raise ValueError(f"n_classes = {c} but the labelled samples show {len(classes)} classes: the other "
                                 "classes are named max(y) + 1, ..., which needs numeric labels; encode y as "
                                 "integers (e.g. sklearn.preprocessing.LabelEncoder)")
            extra = np.arange(1, c - len(classes) + 1)
            if classes.dtype.kind in "iu":  # in a type that holds them: uint8 labels up to 255 would wrap
                wide = np.result_type(classes.dtype, np.int64)
                if int(classes.max()) + len(extra) > np.iinfo(wide).max:
                    raise ValueError(f"n_classes = {c} but the labelled samples show {len(classes)} classes, and the "
                                     "other classes' names max(y) + 1, ... would overflow; encode y as small integers")
                classes = classes.astype(wide)
            made_up = classes.max() + extra.astype(classes.dtype)
            if not bool((made_up > classes.max()).all()) or len(np.unique(made_up)) < len(made_up):
                raise ValueError(f"n_classes = {c} but the labelled samples show {len(classes)} classes, and the other "
                                 f"classes' names max(y) + 1, ... are not distinct at max(y) = {classes.max()}; "
                                 "encode y as integers (e.g. sklearn.preprocessing.LabelEncoder)")
            classes = np.concatenate([classes, made_up])
        Y = np.zeros((n, c))
        Y[np.flatnonzero(mask), codes] = 1.0
        return Y, mask, classes

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    @unchanged_on_error
    def fit(self, X, y=None, label_mask=None):
        """Train the layers on X (n_samples, n_features) >= 0; y (n_samples,) labels, used where label_mask
        (boolean, n_samples) is True (all samples without a mask)."""
        X = self._tensor(X, reset=True)  # at the working unit
        self._device_fit, self._dtype_fit = str(X.device), X.dtype
        ranks = self._check_ranks(X.shape[1])
        Y, mask, classes = self._labels(y, label_mask, X.shape[0])
        if Y is not None and not bool(X[torch.as_tensor(mask, device=X.device)].any()):
            raise ValueError("every labelled sample (label_mask) is an all-zero row of X: the classifier has nothing "
                             "to learn from; label samples whose features are not all zero")
        generator = torch.Generator().manual_seed(as_seed(self.random_state))  # None: numpy's global state
        sizes = [X.shape[1], *ranks]
        if isinstance(self.init, (list, tuple)):
            As = [torch.as_tensor(real_array(A, f"init[{i}]"), dtype=X.dtype, device=X.device)
                  for i, A in enumerate(self.init)]
            shapes = [tuple(A.shape) for A in As]
            if shapes != [(sizes[i], ranks[i]) for i in range(len(ranks))] or not all(
                    bool((A >= 0).all()) and bool(torch.isfinite(A).all()) for A in As):  # NaN is not >= 0
                raise ValueError("init must be finite, non-negative A_l of shapes "
                                 f"{[(sizes[i], k) for i, k in enumerate(ranks)]}, got {shapes}")
        elif self.init == "hierarchical":
            As, _ = hierarchical_nmf(X, ranks, self.n_init_iter, generator)
        else:
            As = [_init_factor(sizes[i], ranks[i], 1.0, generator, X) for i in range(len(ranks))]
        As = [A.clone().requires_grad_() for A in As]
        graphable = X.is_cuda and self.loss == "reconstruction" and Y is None
        if self.cuda_graph and not graphable:
            raise ValueError("cuda_graph=True needs X on a CUDA device and the unsupervised 'reconstruction' loss "
                             f"(got device {X.device}, loss {self.loss!r}, labels {'given' if Y is not None else 'none'})")
        use_graph = graphable and self.cuda_graph is not False and (
            self.cuda_graph or self.max_iter >= _EAGER_STEPS_BEFORE_CAPTURE + _MIN_REPLAYS)
        optimizer = _Adam(As, [self.lr * float(A.detach().mean().clamp_min(1e-12)) for A in As],
                          capturable=use_graph)
        if Y is not None:
            Y = torch.as_tensor(Y, dtype=X.dtype, device=X.device)
            labelled = torch.as_tensor(mask, device=X.device)
            Y_norm2 = Y[labelled].pow(2).sum()
        X_norm2 = X.pow(2).sum()
        x_norm = math.sqrt(float(X_norm2))
        # Per step, the loss and the last layer's squared error stay tensors until the end: reading them back
        # each step would make a GPU wait for every step's work before the next is queued.
        losses, errors2_last = [], []
        warm = None
        B = None

        def classification(S):
            """The classification term of S_L (B refit and held fixed) and its gradient in S_L."""
            B = self._classifier(S, Y, labelled)
            residual = Y[labelled] - S[labelled] @ B.mT
            dS = torch.zeros_like(S)
            dS[labelled] = (-2 * self.label_weight / Y_norm2) * (residual @ B)
            return self.label_weight * residual.pow(2).sum() / Y_norm2, dS

        def classification_loss(S):
            """The classification term for autograd: B refit on S detached, then held fixed."""
            B = self._classifier(S.detach(), Y, labelled)
            return self.label_weight * (Y[labelled] - S[labelled] @ B.mT).pow(2).sum() / Y_norm2

        graph = None
        # The eager steps before a capture run on a side stream, as torch asks of the warm-up before one.
        side = torch.cuda.Stream(X.device) if use_graph else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(X.device))
        stream = torch.cuda.stream(side) if side is not None else contextlib.nullcontext()
        for step in range(self.max_iter):
            if use_graph and step == _EAGER_STEPS_BEFORE_CAPTURE:
                try:
                    with stream:
                        graph, static = _capture_step(X, X_norm2, As, warm, optimizer)
                except _CAPTURE_ERRORS as exc:
                    if self.cuda_graph:
                        raise
                    warnings.warn(f"NeuralNMF: capturing the training step in a CUDA graph failed "
                                  f"({type(exc).__name__}: {exc}); training on with eager steps "
                                  "(cuda_graph=False skips the attempt)", RuntimeWarning)
                    use_graph = False
            if graph is not None:
                with stream:
                    graph.replay()
                    value, e2, warm = static
                    losses.append(value.clone())
                    errors2_last.append(e2.clone())
                continue
            with stream:
                loss, e2, Ss = self._eager_step(X, X_norm2, As, warm, optimizer,
                                                None if Y is None else (classification, classification_loss))
            warm = [S.detach() for S in Ss]
            errors2_last.append(e2.detach())
            losses.append(loss.detach())
            if self.verbose and (step % 10 == 0 or step == self.max_iter - 1):
                print(f"NeuralNMF step {step}: loss {float(loss):.6g}")
        if side is not None:
            torch.cuda.current_stream(X.device).wait_stream(side)
        if self.verbose and graph is not None:
            print(f"NeuralNMF: steps {_EAGER_STEPS_BEFORE_CAPTURE}-{self.max_iter - 1} replayed from a CUDA graph; "
                  f"last loss {float(losses[-1]):.6g}")
        history = {"loss": [], "relative_error": []}
        if losses:
            history["loss"] = torch.stack(losses).tolist()
            history["relative_error"] = (torch.stack(errors2_last).double().clamp_min(0).sqrt() / x_norm).tolist()
        As = [A.detach() for A in As]
        with torch.no_grad():
            Ss = forward(X, As, warm)
            if Y is not None:
                B = self._classifier(Ss[-1], Y, labelled)
        self.relative_errors_ = relative_errors(X, As, Ss)
        self.A_ = [A.cpu().numpy() for A in As]
        self.S_ = [(S / self._unit).cpu().numpy() for S in Ss]  # X ~ S_L P^T at X's own scale
        if B is not None:
            self.classifier_, self.classes_ = (B * self._unit).cpu().numpy(), classes
        else:  # a refit without labels leaves no classifier of an earlier fit behind
            for name in ("classifier_", "classes_"):
                if hasattr(self, name):
                    delattr(self, name)
        self.history_ = history
        self.n_iter_ = self.max_iter
        self.cuda_graph_ = graph is not None
        return self

    def _eager_step(self, X, X_norm2, As, warm, optimizer, labels):
        """One training step without a graph: (loss, e2, Ss), the A_l updated and projected onto A_l >= 0.
        labels: None, or the classification term as (value and gradient in S_L, value for autograd)."""
        if self.loss == "reconstruction":  # the backward written out: no autograd graph per step
            Ss, e2, loss, grads = _reconstruction_grads(X, X_norm2, As, warm, None if labels is None else labels[0])
        else:
            Ss, errors2 = _forward_with_errors(X, X_norm2, As, warm)
            if self.loss == "layers":
                loss = sum(errors2)
            else:
                loss, S_prev = errors2[0], Ss[0]
                for A, S in zip(As[1:], Ss[1:]):
                    loss = loss + (S_prev - S @ A.mT).pow(2).sum()
                    S_prev = S
            loss = loss / X_norm2
            e2 = errors2[-1]
            if labels is not None:
                loss = loss + labels[1](Ss[-1])
            grads = torch.autograd.grad(loss, As)
        _update(optimizer, As, grads)
        return loss, e2, Ss

    @staticmethod
    def _classifier(S, Y, labelled):
        """B = argmin ||Y_m - S_m B^T||_F over the labelled rows m, with a tiny relative ridge."""
        Sm = S[labelled]
        G = Sm.mT @ Sm
        # the ridge's floor keeps the solve defined where every labelled S row is 0 (B is then 0)
        ridge = RIDGE * G.diagonal().sum().clamp_min(torch.finfo(G.dtype).tiny)
        G = G + ridge * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        return torch.linalg.solve(G, Sm.mT @ Y[labelled]).mT

    # ------------------------------------------------------------- inference
    def transform(self, X, all_layers=False):
        """S_L^T (n_samples, k_L) of new samples through the trained layers; all_layers: [S_1^T, ..., S_L^T]."""
        check_is_fitted(self, "A_")
        X = self._tensor(X, reset=False)  # at the fit's working unit
        As = [torch.as_tensor(A, device=X.device, dtype=X.dtype) for A in self.A_]
        with torch.no_grad():
            Ss = [(S / self._unit).cpu().numpy() for S in forward(X, As)]
        return Ss if all_layers else Ss[-1]

    def predict(self, X):
        """Class labels of new samples from the classification layer (needs a fit with labels)."""
        check_is_fitted(self, "A_")
        check_is_fitted(self, "classifier_", msg="This %(name)s was fitted without labels: predict needs a fit with y "
                                                  "(transform gives the embedding of an unsupervised fit)")
        scores = self.transform(X) @ self.classifier_.T
        return self.classes_[scores.argmax(1)]
