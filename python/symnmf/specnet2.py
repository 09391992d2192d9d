"""SpecNet2: a spectral embedding learned by a network, without an orthogonalisation layer.

Chen, Li and Cheng, "SpecNet2: Orthogonalization-free spectral embedding by
neural networks" (MSML 2022). For a symmetric non-negative affinity W with
degrees D = diag(W 1), the objective

    f(Y) = -2 tr(Y^T W Y) + ||Y^T D Y||_F^2,        Y (n x k),

has, with S = D^{-1/2} W D^{-1/2} = V Lambda V^T, its minimisers at
Y = D^{-1/2} V_k Lambda_k^{1/2} Q for any orthogonal Q (when lambda_k > 0):
the columns of Y span the leading k eigenvectors of D^{-1} W, and
f = -sum_{i <= k} lambda_i^2 there. No constraint Y^T D Y = I is imposed:
the quartic term keeps Y's scale, so the network needs no QR or Cholesky
layer, and its output on a new sample is the out-of-sample extension.

Y is the output of an MLP applied to the features (`transform` applies it to
new rows) or, for a precomputed affinity without features, a free n x k
table. The gradient with respect to row i is

    g_i = -4 (W Y)_i + 4 d_i Y_i (Y^T D Y),

so a mini-batch of rows B needs the rows W[B, :] (the only part of W a step
forms), the network's outputs on the batch's neighbours (evaluated without a
gradient), and Y^T D Y. The last is a sum over all n rows; it is tracked
incrementally as in the paper: a cache holds the last output seen for every
row, and each step replaces the rows it evaluates, M += Y_new^T D Y_new -
Y_old^T D Y_old. Each epoch ends with one pass over all rows that refreshes
the cache and M exactly and records the objective. The products are the
library's kernels: `symnmf_kernels.spmm` for W[B, N] Y_N (and W Y in the
full-batch variant) and `symnmf_kernels.gram` for the D-weighted Grams.

The network has p more outputs than the k eigenvectors asked for, and the embedding is the
leading k Ritz vectors of the span of its output: as in a block eigensolver, the leading k then
converge at a rate set by lambda_k - lambda_{k+p+1}, not by the often tiny lambda_k - lambda_{k+1}.

Scaling: W is divided by its mean degree and the network's target is
sqrt(n) times the minimiser, so its outputs are O(1) and the learning rate
does not depend on n or on W's scale; `history_["objective"]` is f of the
rescaled minimiser, whose optimum -sum lambda_i^2 does not depend on them
either.

docs/specnet2.md has the accuracy study on digits and the timings at scale.
"""
import math
import numbers
import time

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

import symnmf_kernels as sk
from symnmf_kernels.sparse import CSR, as_csr

from .fitting import resolve_device, unchanged_on_error
from .solvers.base import as_seed
from .validation import as_similarity, check_rank, check_similarity, power_of_two_scale

__all__ = ["SpecNet2", "specnet2_objective"]

_CHUNK_ROWS = 1 << 16  # rows per forward pass outside training: bounds the activations' memory


# ---------------------------------------------------------------------------------------------- the graph


class _Graph:
    """W / mean(d) as CSR arrays on one device, its degrees, and the row slices a mini-batch needs."""

    def __init__(self, W, dtype):
        crow, col = W.crow_indices(), W.col_indices()
        # W's own values, first times a power of two, in float64: cast to dtype first, a W of any float64 scale
        # that float32 cannot hold became inf or 0, and its degrees NaN
        val = W.values().double()
        val = val * power_of_two_scale(val)
        self.n = W.shape[0]
        degree = torch.zeros(self.n, dtype=torch.float64, device=val.device)
        degree.index_add_(0, torch.repeat_interleave(torch.arange(self.n, device=val.device), crow.diff()), val)
        scale = degree.mean()
        self.crow, self.col = crow, col
        self.val = (val / scale).to(dtype)
        self.degree = (degree / scale).to(dtype)
        self.full = CSR(crow, col, self.val, (self.n, self.n), symmetric=True, name="W")

    def batch_rows(self, rows):
        """(W[rows, N] as a CSR over the columns N, N): N is the sorted union of `rows` and their
        neighbours. Only the stored entries of the batch's rows are gathered."""
        start, count = self.crow[rows], self.crow[rows + 1] - self.crow[rows]
        sub_crow = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=rows.device)
        sub_crow[1:] = torch.cumsum(count, 0)
        nnz = int(sub_crow[-1])
        # entry j of the sub-matrix is entry start[row(j)] + (j - sub_crow[row(j)]) of W
        owner = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
        entries = start[owner] + torch.arange(nnz, device=rows.device) - sub_crow[owner]
        cols = self.col[entries].to(torch.int64)
        # N includes the batch rows themselves: their cached outputs are refreshed with the neighbours'.
        # torch.unique sorts, so the relabelled columns stay sorted within each row.
        N, inverse = torch.unique(torch.cat([cols, rows]), return_inverse=True)
        sub = CSR(sub_crow, inverse[:nnz], self.val[entries], (rows.numel(), N.numel()), symmetric=False, name="W")
        return sub, N, inverse[nnz:]


def _weighted_gram(Y, degree):
    """Y^T D Y through the Gram kernel: (D^{1/2} Y)^T (D^{1/2} Y)."""
    return sk.gram(Y * degree.sqrt()[:, None])


class _RunningGram:
    """Y^T D Y tracked as rows of Y change: a cache of the last output of every row, and the Gram
    of the cache, updated by the rows each step evaluates (the paper's incremental Y^T D Y)."""

    def __init__(self, Y, degree):
        self.cache, self.degree = Y, degree
        self.value = _weighted_gram(Y, degree)

    def update(self, rows, Y_rows):
        """Replace the cached rows (distinct indices) by Y_rows; returns the updated Gram."""
        d = self.degree[rows]
        self.value = self.value + _weighted_gram(Y_rows, d) - _weighted_gram(self.cache[rows], d)
        self.cache[rows] = Y_rows
        return self.value

    def refresh(self, Y):
        """Recompute from all rows Y (the running sum's rounding and staleness go); returns the
        relative error the running value had against the exact one."""
        exact = _weighted_gram(Y, self.degree)
        error = float((self.value - exact).norm() / exact.norm().clamp_min(torch.finfo(exact.dtype).tiny))
        self.cache, self.value = Y, exact
        return error


def specnet2_objective(W, Y):
    """f(Y) = -2 tr(Y^T W Y) + ||Y^T D Y||_F^2 for a sparse symmetric W (torch CSR or scipy) and Y (n x k).

    Differentiable in Y; W Y runs on `symnmf_kernels.spmm`, Y^T D Y on `symnmf_kernels.gram`.
    """
    W = as_csr(W, device=Y.device, dtype=Y.dtype, name="W")
    degree = sk.spmm(W, torch.ones(W.shape[0], 1, dtype=Y.dtype, device=Y.device))[:, 0]
    WY = sk.spmm(W, Y, symmetric=True)
    return -2 * (Y * WY).sum() + _weighted_gram(Y, degree).pow(2).sum()


def _scaled_objective(graph, Y):
    """f at Y / sqrt(n) for the rescaled W: the estimator's objective (optimum -sum lambda_i^2)."""
    n = graph.n
    WY = sk.spmm(graph.full, Y, symmetric=True)
    return -2 * (Y * WY).sum() / n + _weighted_gram(Y, graph.degree).pow(2).sum() / n**2


# ---------------------------------------------------------------------------------------------- the models


class _Table(torch.nn.Module):
    """Y as a free n x k table: the embedding of a graph without features (no out-of-sample extension)."""

    def __init__(self, n, k):
        super().__init__()
        self.Y = torch.nn.Parameter(torch.randn(n, k))

    def forward(self, rows):
        return self.Y[rows]


class _MLP(torch.nn.Module):
    """Y = MLP((F - mean) / std) evaluated on rows of the fitted features, or on new features.

    The features are standardised in float64, after an exact power-of-two scaling, and only then made float32:
    features of any scale float64 holds give the same network input (cast first, 1e39 became inf)."""

    def __init__(self, features, hidden, k):
        super().__init__()
        self.register_buffer("unit", power_of_two_scale(features).double())
        F = features.double() * self.unit
        self.register_buffer("mean", F.mean(0))
        std = F.std(0) if F.shape[0] > 1 else torch.ones_like(F[0])
        # a constant feature (blank pixels) carries nothing: leave it at 0 instead of dividing by 0
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)))
        self.register_buffer("features", self.standardised(features))
        widths = [features.shape[1], *hidden]
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(widths[-1], k))
        self.net = torch.nn.Sequential(*layers)

    def standardised(self, F):
        """(F - mean) / std of features F in the fitted features' units, as the network's float32 input."""
        return ((F.double() * self.unit - self.mean) / self.std).float()

    def embed(self, F):
        return self.net(self.standardised(F))

    def forward(self, rows):
        return self.net(self.features[rows])


def _all_rows(model, n, device):
    """The model's output on every fitted row, without a gradient, in chunks."""
    with torch.no_grad():
        return torch.cat([model(torch.arange(s, min(n, s + _CHUNK_ROWS), device=device))
                          for s in range(0, n, _CHUNK_ROWS)])


# ---------------------------------------------------------------------------------------------- training


def _train(graph, model, *, batch_size, epochs, lr, generator, verbose, refresh_every=None):
    """Adam on f; mini-batches of rows with a running Y^T D Y, or full batches (batch_size None).

    refresh_every: mini-batch steps between exact recomputations of Y^T D Y (one pass over all
    rows each) besides the one at every epoch's end; None: only that one, as in the paper.

    Returns the history: per epoch the exact objective, the relative error of the running Y^T D Y
    against the exact one before the refresh (mini-batch), and the time since the start.
    """
    n, device = graph.n, graph.degree.device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (1 if batch_size is None else -(-n // batch_size))
    # The gap lambda_k - lambda_{k+1} sets how finely the subspace is resolved; a cosine decay of the
    # step lets the mini-batch noise (and the running Y^T D Y's lag) die out at the end.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * 1e-2)
    history = {"epoch": [], "objective": [], "ydy_error": [], "time": []}
    ydy = _RunningGram(_all_rows(model, n, device), graph.degree)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        if batch_size is None:
            optimizer.zero_grad(set_to_none=True)
            loss = _scaled_objective(graph, model(torch.arange(n, device=device)))
            loss.backward()
            optimizer.step()
            schedule.step()
        else:
            order = torch.randperm(n, generator=generator).to(device)
            for step, s in enumerate(range(0, n, batch_size), 1):
                rows = order[s:s + batch_size]
                sub, N, at = graph.batch_rows(rows)
                with torch.no_grad():
                    Y_N = model(N)
                    M = ydy.update(N, Y_N)
                    # g_i = -4 (W Y)_i + 4 d_i Y_i (Y^T D Y), with Y at sqrt(n) times the minimiser's scale
                    grad = 4 * (graph.degree[rows, None] * Y_N[at]) @ (M / n) - 4 * sk.spmm(sub, Y_N)
                optimizer.zero_grad(set_to_none=True)
                # the surrogate's gradient in the parameters is the mini-batch mean of <g_i, dY_i>
                ((model(rows) * grad).sum() / rows.numel()).backward()
                optimizer.step()
                schedule.step()
                if refresh_every and step % refresh_every == 0 and s + batch_size < n:
                    ydy.refresh(_all_rows(model, n, device))
        Y = _all_rows(model, n, device)
        drift = ydy.refresh(Y)
        with torch.no_grad():
            objective = float(_scaled_objective(graph, Y))
        history["epoch"].append(epoch)
        history["objective"].append(objective)
        history["ydy_error"].append(drift if batch_size is not None else 0.0)
        history["time"].append(time.perf_counter() - start)
        if verbose:
            print(f"epoch {epoch:5d}  objective {objective:+.6f}  running YDY error {drift:.2e}")
        if not math.isfinite(objective):
            raise FloatingPointError(
                f"SpecNet2 training diverged at epoch {epoch} (objective {objective}); lower lr (now {lr})"
            )
    return history


def _ritz(graph, Y, k):
    """Rayleigh-Ritz on span(Y): C (width x k) with (YC)^T W (YC) = n diag(mu), (YC)^T D (YC) = n I,
    mu descending: the leading k Ritz values of D^{-1} W in span(Y) and the basis of their vectors."""
    n = graph.n
    K = (Y.mT @ sk.spmm(graph.full, Y)).double().cpu().numpy()
    M = _weighted_gram(Y, graph.degree).double().cpu().numpy()
    # D-orthonormalise through M's eigenvectors, dropping the directions a float32 output cannot
    # resolve: outputs that (nearly) coincide would make M singular and the Ritz values spurious.
    s, U = np.linalg.eigh((M + M.T) / 2)
    keep = s > s.max() * 1e-6
    if keep.sum() < k:
        raise FloatingPointError(
            f"the network's output has rank {int(keep.sum())} < n_components = {k} (collapsed outputs). If the "
            "samples hold fewer than n_components distinct points (duplicates), ask for fewer components; else "
            "train longer or with a lower lr, or use more hidden units"
        )
    B = U[:, keep] / np.sqrt(s[keep])
    mu, Q = np.linalg.eigh(B.T @ ((K + K.T) / 2) @ B)
    order = np.argsort(mu)[::-1][:k]
    return mu[order], (B @ Q[:, order]) * math.sqrt(n)


# ---------------------------------------------------------------------------------------------- the estimator


class SpecNet2(ClusterMixin, TransformerMixin, BaseEstimator):
    """Spectral embedding and clustering by SpecNet2: a network trained on f(Y) = -2 tr(Y^T W Y) + ||Y^T D Y||^2.

    The columns of `embedding_` approximate the leading n_components eigenvectors of D^{-1} W
    (the random-walk form of the graph; the symmetric form's eigenvectors times D^{-1/2}), and
    `transform` evaluates the same map on new samples. Labels come from k-means on the
    row-normalised embedding.

    Parameters
    ----------
    n_components : int
        k: the number of eigenvectors, and of clusters.
    n_oversamples : int
        p extra outputs: the network is trained on k + p columns and the embedding keeps the leading
        k Ritz vectors of their span. As in a block eigensolver, the leading k then converge at a
        rate set by the gap lambda_k - lambda_{k+p+1} instead of lambda_k - lambda_{k+1}, which
        matters when the k-th and (k+1)-th eigenvalues are close (docs/specnet2.md). Capped at n - k.
    hidden : tuple of int
        Widths of the MLP's hidden ReLU layers; () is a linear map of the features.
    batch_size : int or None
        Rows per mini-batch. None: full-batch gradient steps on the exact objective (one per epoch).
    epochs : int
        Passes over the rows.
    lr : float or None
        Adam's learning rate (decayed along a cosine to lr / 100 over the training). None: 2e-3 for a
        network, 0.1 for a free table (whose entries are the parameters, each moved by about lr a step).
    ydy_refresh : int or None
        Mini-batch steps between exact recomputations of Y^T D Y, each one pass of the network over
        all rows. None: once per epoch, as in the paper. On large graphs (thousands of steps per
        epoch) the running Y^T D Y lags behind the network while the step is large; refreshing it
        more often costs passes but keeps the gradient right (docs/specnet2.md).
    affinity : {"nearest_neighbors", "precomputed"}
        "nearest_neighbors": X holds features and W is the library's kNN graph of them
        (`symnmf.similarity_graph`). "precomputed": X is W itself (n x n, symmetric,
        non-negative, every node with a neighbour); fit's `features` argument then gives the
        network its input, and without it Y is a free table (no `transform`).
    n_neighbors : int or None
        k of the kNN graph (default floor(log2 n) + 1); "nearest_neighbors" only.
    metric : {"euclidean", "cosine"}
        Similarity of the kNN graph.
    n_init : int
        k-means restarts for the labels.
    random_state : None, int, numpy RandomState or Generator
        Seeds the network's initial weights, the batch order and k-means.
    device : str or torch.device, optional
        Where to train. Default: the device of a torch input, else CUDA when available, else the CPU.
    verbose : bool
        Print the objective after each epoch.

    Attributes
    ----------
    embedding_ : ndarray (n_samples, n_components)
        Ritz vectors of D^{-1} W in the span of the network's output, ordered by `eigenvalues_`
        and scaled to embedding_^T D embedding_ = n I (for W divided by its mean degree).
    eigenvalues_ : ndarray (n_components,)
        The Ritz values, descending: estimates of the leading eigenvalues of D^{-1} W.
    labels_ : ndarray (n_samples,)
        k-means clusters of the row-normalised embedding.
    affinity_matrix_ : scipy.sparse CSR matrix (n_samples, n_samples)
        The graph W.
    history_ : dict of lists
        Per epoch: "epoch", "objective" (the exact objective at the epoch's end; its optimum is
        -sum of the k + p leading eigenvalues squared, p the extra outputs), "ydy_error" (relative error of the running
        Y^T D Y against the exact one, before the epoch's refresh; 0 for full batches) and
        "time" (seconds since training started).
    n_iter_ : int
        Epochs run.
    network_ : torch.nn.Module
        The trained model (n_components + n_oversamples outputs; `transform` rotates them).
    n_features_in_ : int
        Columns of X seen by fit.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from symnmf.specnet2 import SpecNet2
    >>> X, _ = make_blobs(n_samples=200, centers=3, random_state=0)
    >>> model = SpecNet2(3, hidden=(32,), epochs=20, random_state=0, device="cpu").fit(X)
    >>> model.embedding_.shape, model.transform(X[:5]).shape
    ((200, 3), (5, 3))
    """

    _parameter_constraints = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_oversamples": [Interval(numbers.Integral, 0, None, closed="left")],
        "hidden": [tuple, list],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "ydy_refresh": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "affinity": [StrOptions({"nearest_neighbors", "precomputed"})],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "metric": [StrOptions({"euclidean", "cosine"})],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
        "device": [None, str, torch.device],
        "verbose": ["verbose"],
    }

    def __init__(self, n_components=8, *, n_oversamples=6, hidden=(256, 256), batch_size=128, epochs=300, lr=None,
                 ydy_refresh=None, affinity="nearest_neighbors", n_neighbors=None, metric="euclidean", n_init=10,
                 random_state=None, device=None, verbose=False):
        self.n_components = n_components
        self.n_oversamples = n_oversamples
        self.hidden = hidden
        self.batch_size = batch_size
        self.epochs = epochs
        self.lr = lr
        self.ydy_refresh = ydy_refresh
        self.affinity = affinity
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.n_init = n_init
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self.affinity == "precomputed"
        tags.input_tags.sparse = self.affinity == "precomputed"
        tags.input_tags.positive_only = self.affinity == "precomputed"  # a similarity with a negative entry is refused
        return tags

    # ------------------------------------------------------------------ input
    def _hidden(self):
        widths = tuple(self.hidden)
        if not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ValueError(f"hidden must be a tuple of positive ints (layer widths), got {self.hidden!r}")
        return widths

    @staticmethod
    def _features(F, name, device):
        if isinstance(F, torch.Tensor):
            F = F.detach().cpu().numpy()
        F = check_array(F, dtype=[np.float64, np.float32], input_name=name)
        return torch.as_tensor(np.ascontiguousarray(F), device=device)  # float32 only once standardised (_MLP)

    def _graph_and_features(self, X, features, device):
        """(W as a torch sparse CSR tensor, the network's input or None)."""
        from .graph import similarity_graph

        if self.affinity == "nearest_neighbors":
            if features is not None:
                raise ValueError("features is for affinity='precomputed'; with 'nearest_neighbors' X holds them")
            if isinstance(X, torch.Tensor):
                X = X.detach().cpu().numpy()
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
            W = similarity_graph(X, n_neighbors=self.n_neighbors, metric=self.metric, device=device)
            return W, self._features(X, "X", device)
        if isinstance(X, torch.Tensor) and X.layout == torch.strided:
            X = X.detach().cpu().numpy()
        if not isinstance(X, torch.Tensor):
            X = validate_data(self, X, accept_sparse=("csr", "csc", "coo"), dtype=[np.float64, np.float32],
                              ensure_min_samples=2)
        W = check_similarity(as_similarity(X, device=device, name="X"), name="X")
        if W.layout == torch.strided:
            W = W.to_sparse_csr()
        self.n_features_in_ = W.shape[1]
        if features is None:
            return W, None
        F = self._features(features, "features", device)
        if F.shape[0] != W.shape[0]:
            raise ValueError(f"features has {F.shape[0]} rows but X is {W.shape[0]} x {W.shape[0]}: one row per node")
        return W, F

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    @unchanged_on_error
    def fit(self, X, y=None, features=None):
        """Train the network on the graph of X and store embedding_, labels_ and history_.

        X: features (n_samples, n_features), or with affinity="precomputed" the affinity W
        (n_samples, n_samples; dense or sparse, numpy, scipy or torch). features: with a
        precomputed W, the network's input (n_samples, n_features); None trains a free table.
        y is ignored.
        """
        from sklearn.cluster import KMeans

        hidden = self._hidden()
        device = resolve_device(self.device, X)
        W, F = self._graph_and_features(X, features, device)
        n = W.shape[0]
        k = check_rank(self.n_components, n)
        width = k + min(int(self.n_oversamples), n - k)  # the network's outputs
        graph = _Graph(W, torch.float32)
        if not bool((graph.degree > 0).all()):
            i = int(torch.nonzero(~(graph.degree > 0))[0])
            raise ValueError(
                f"X: node {i} has no neighbour (zero degree); D^-1 W is undefined for isolated nodes, so "
                "remove them or add edges"
            )
        seed = as_seed(self.random_state)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _Table(n, width) if F is None else _MLP(F, hidden, width)
        model = model.to(device)
        batch = None if self.batch_size is None else min(int(self.batch_size), n)
        lr = self.lr if self.lr is not None else (1e-1 if F is None else 2e-3)
        self.history_ = _train(graph, model, batch_size=batch, epochs=self.epochs, lr=lr,
                               generator=generator, verbose=bool(self.verbose), refresh_every=self.ydy_refresh)
        model.eval()
        Y = _all_rows(model, n, device)
        self.eigenvalues_, C = _ritz(graph, Y, k)
        self._rotation = torch.as_tensor(C, dtype=Y.dtype, device=device)
        self.embedding_ = (Y @ self._rotation).cpu().numpy()
        self.kmeans_ = KMeans(k, n_init=self.n_init, random_state=seed).fit(_row_normalised(self.embedding_))
        self.labels_ = self.kmeans_.labels_
        self.network_ = model
        self.n_iter_ = self.epochs
        self._has_features = F is not None
        self._n_input_features = None if F is None else F.shape[1]
        values = W.values().detach().cpu().numpy()
        import scipy.sparse as sp

        self.affinity_matrix_ = sp.csr_matrix(
            (values, W.col_indices().cpu().numpy(), W.crow_indices().cpu().numpy()), shape=(n, n))
        return self

    def fit_transform(self, X, y=None, features=None):
        """Fit and return embedding_."""
        return self.fit(X, features=features).embedding_.copy()

    # ------------------------------------------------------------- transform
    def transform(self, X):
        """The embedding of new samples: the network applied to their features (n_new, n_features).

        Rows of the fitted samples get their rows of embedding_ (up to rounding).
        """
        check_is_fitted(self, "embedding_")
        if not self._has_features:
            raise ValueError(
                "this SpecNet2 was fitted on a precomputed affinity without features, so its embedding is a free "
                "table with no out-of-sample extension; fit with features=... to transform new samples"
            )
        device = self._rotation.device
        F = self._features(X, "X", device)
        if F.shape[1] != self._n_input_features:  # scikit-learn's wording, which its estimator checks match
            raise ValueError(
                f"X has {F.shape[1]} features, but {type(self).__name__} is expecting {self._n_input_features} "
                "features as input"
            )
        with torch.no_grad():
            Y = torch.cat([self.network_.embed(F[s:s + _CHUNK_ROWS]) for s in range(0, F.shape[0], _CHUNK_ROWS)])
        return (Y @ self._rotation).cpu().numpy()

    def predict(self, X):
        """Clusters of new samples: the fitted k-means on their row-normalised embedding."""
        check_is_fitted(self, "kmeans_")
        return self.kmeans_.predict(_row_normalised(self.transform(X)))


def _row_normalised(E):
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return E / np.where(norms > 0, norms, 1)
