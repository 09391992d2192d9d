"""SymNMF as a scikit-learn clustering estimator.

    from symnmf import SymNMF
    model = SymNMF(n_components=10, solver="net", random_state=0).fit(features)
    model.labels_, model.embedding_, model.reconstruction_err_

Conventions follow sklearn.cluster.SpectralClustering: ``affinity`` says
whether X holds feature vectors (a similarity graph is built from them) or a
precomputed n x n similarity matrix; ``fit`` stores ``labels_`` and
``affinity_matrix_``; parameters are stored untouched by ``__init__`` and
checked by ``fit``, so ``get_params``, ``set_params`` and ``clone`` work.
"""
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .fitting import (
    AFFINITIES, SOLVERS, build_affinity, fit_affinity, resolve_device, resolve_dtype, unchanged_on_error,
)
from .net import RECIPES
from .validation import as_similarity, is_scipy_sparse

__all__ = ["SymNMF"]

_ACCEPT_SPARSE = ("csr", "csc", "coo")


def _to_numpy_or_scipy(A):
    """A torch dense / sparse CSR matrix as a numpy array / scipy CSR matrix (on the host)."""
    if A.layout == torch.strided:
        return A.detach().cpu().numpy()
    import scipy.sparse as sp

    A = A.detach().cpu()
    return sp.csr_matrix((A.values().numpy(), A.col_indices().numpy(), A.crow_indices().numpy()), shape=tuple(A.shape))


def _row_keys(M):
    """One key per row of M (dense, or scipy sparse): a digest of its nonzero columns and their values in float64,
    so rows equal as vectors get the same key whatever their storage or dtype. A lookup by key finds an equal
    fitted row exactly, where a nearest-neighbour or projection candidate can be a near twin."""
    import hashlib

    def key(cols, values):
        data = np.asarray(cols, dtype=np.int64).tobytes() + np.asarray(values, dtype=np.float64).tobytes()
        return hashlib.blake2b(data, digest_size=16).digest()

    if is_scipy_sparse(M):
        import scipy.sparse as sp

        M = sp.csr_matrix(M, dtype=np.float64, copy=True)
        M.sum_duplicates()
        M.eliminate_zeros()
        M.sort_indices()
        return [key(M.indices[M.indptr[i]:M.indptr[i + 1]], M.data[M.indptr[i]:M.indptr[i + 1]])
                for i in range(M.shape[0])]
    M = np.asarray(M)
    return [key(np.flatnonzero(row), row[row != 0]) for row in M]


def _first_rows(M):
    """{row key: the index of the first row of M with it}."""
    first = {}
    for i, k in enumerate(_row_keys(M)):
        first.setdefault(k, i)
    return first


class SymNMF(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """Clustering by Symmetric NMF: X ~ U U^T with U >= 0 (n x n_components).

    The label of sample i is argmax_j U[i, j]; U itself is a non-negative
    embedding (``embedding_``).

    Parameters
    ----------
    n_components : int
        Rank of U, i.e. the number of clusters.
    solver : {"net", "anls", "hals", "pgd", "newton", "admm"}
        "net" trains SymNMF-Net (`symnmf.SymNMFNet`); the others are the
        classical solvers of `symnmf.solvers.solve` (SymANLS, SymHALS,
        projected gradient, SymNewton, ADMM).
    affinity : {"nearest_neighbors", "precomputed"}
        "nearest_neighbors": X is (n_samples, n_features) and the similarity is
        Kuang's normalised self-tuning kNN graph (`symnmf.similarity_graph`).
        "precomputed": X is a symmetric non-negative (n_samples, n_samples)
        similarity matrix, dense or sparse.
    random_state : None, int, numpy RandomState or Generator
        Seed of the random start (Kuang et al.'s 2 sqrt(mean(X) / r) U(0, 1));
        the same int gives every solver and the net the same start. None
        draws the seed from numpy's global random state (scikit-learn's rule).
    device : str or torch.device, optional
        Where to compute. Default: the device of a torch input, else CUDA when
        available, else the CPU.
    max_iter : int, optional
        Iterations of a classical solver, or the most training steps of the net;
        None: `symnmf.fitting.DEFAULT_MAX_ITER[solver]` (each solver also stops at
        its tolerance) or the recipe's (400, with a plateau stop) for the net. The
        CLI and `symnmf reproduce` use the same defaults.
    tol : float, optional
        Classical solvers: projected-gradient tolerance (relative to its initial
        value). Net: the tolerance of the recipe's plateau rule (`SymNMFNet.fit`:
        stop once the best loss of the last `patience` steps improves on the best
        before them by at most tol times the decrease so far). None: the solver's
        or the recipe's default.
    lam : float or str, optional
        ANLS/HALS: the penalty lam of ||X - W V^T||^2 + lam ||W - V||^2 (a float,
        "kuang" or "zhu"); ADMM: its penalty rho (a float); the net: the initial
        lam (None: the recipe's, ||X||_2 for "default" and ||X||_F for "paper").
        PGD and SymNewton take none.
    n_init : int
        Classical solvers: random starts (start 0 is the one-start fit's); the
        start whose labels have the highest modularity on the similarity is
        kept, the rule SymNMF-Net keeps its restarts by. SymHALS runs them side
        by side. Must be 1 for the net (its restarts are the recipe's).
    n_neighbors : int, optional
        k of the kNN graph (default floor(log2 n) + 1); "nearest_neighbors" only.
    metric : {"euclidean", "cosine"}
        Similarity of the kNN graph: Gaussian of distances (images, generic
        features) or cosine (text).
    recipe : {"default", "paper"}
        SymNMF-Net's training recipe (`symnmf.net.RECIPES`). "default": L = 5,
        beta relative to lam^2, lam from ||X||_2, relative lr 0.1, a plateau
        stop, 4 restarts trained together, each finished by 100 SymHALS
        iterations, and the one whose labels have the highest modularity on X
        kept (docs/symnmf_net_study.md has the study behind it). "paper": the
        paper's settings (L = 10, beta = 5e-6, Adam at lr 0.5, one start).
    n_layers, beta, mu : int, float, float or None
        SymNMF-Net's depth L, regulariser weight and L1 weight; None keeps the
        recipe's.
    lr : float or None
        SymNMF-Net's Adam learning rate; None keeps the recipe's.
    relative_lr : bool or None
        Whether lr is relative to the scale of the net's weights (then training
        does not depend on the scale of X); with False it is Adam's absolute
        step, as in the paper (lr = 0.5 there). None keeps the recipe's.
    n_restarts : int or None
        SymNMF-Net's restarts, trained side by side (each holds its own
        weights and Adam state: memory grows with them); None keeps the
        recipe's (4 for "default", 1 for "paper").
    dtype : torch.float32, torch.float64, "float32", "float64" or None
        Precision; None keeps a float input's own precision (float64 for
        integer input, as scikit-learn converts it).
    n_threads : int or None
        CPU threads for torch during the fit (restored afterwards). None: one
        thread when n_samples * n_components (times the net's restarts, or
        SymHALS's starts) < 2^18, torch's setting above
        (`symnmf.fitting.default_threads`; the CLI uses the same policy).
    node_order : {"auto", "rcm", "degree"} or None
        Renumber a sparse similarity's nodes before the fit so that its
        products with the factor read nearby rows (`symnmf_kernels.sparse.locality_order`),
        and map the result back. "auto": reverse Cuthill-McKee for a sparse graph
        of 100,000 nodes or more on the CPU (`symnmf.fitting.AUTO_ORDER_MIN_NODES`)
        when four copies of it fit in the memory available, nothing otherwise;
        None keeps the numbering. The start is drawn in the
        input's numbering, so the labels are those of the fit without it, up to
        rounding.
    verbose : bool
        Print the iteration log; a progress bar is drawn when verbose or when
        stderr is a terminal.

    Notes
    -----
    Fitting runs `symnmf.fitting.build_affinity` and
    `symnmf.fitting.fit_affinity`, the path of `symnmf cluster` and
    `symnmf reproduce` too: the same data, solver and seed give the same labels.

    Attributes
    ----------
    labels_ : ndarray (n_samples,)
        Cluster of each sample: the column of its largest entry in U.
    embedding_ : ndarray (n_samples, n_components)
        The factor U (non-negative).
    reconstruction_err_ : float
        ||A - U U^T||_F for the similarity A (not squared, as in sklearn's NMF).
    relative_error_ : float
        ||A - U U^T||_F^2 / ||A||_F^2, the paper's relative error E.
    modularity_ : float
        Modularity of labels_ on A (`symnmf.metrics.modularity`): a quality of the clustering that needs
        no ground truth.
    n_iter_ : int
        Iterations (classical solvers) or epochs (net) run.
    converged_ : bool
        Whether the stopping tolerance was met (the net: whether it stopped before max_iter).
    history_ : dict of lists
        Classical solvers: the objective, relative error and time at each check of the stopping rule. The
        fit runs on A / scale, with scale = ||A||_2 (exactly 1 for a normalised graph:
        `symnmf.fitting.similarity_scale`), so the objective is that of A / scale: reconstruction_err_ ** 2
        is scale ** 2 times the last objective; the relative errors are A's own. The net: its training
        record per epoch (`SymNMFNet.history_`: the loss summed over restarts and blocks, regulariser
        included, and each restart's relative error), before the SymHALS finish that gives
        reconstruction_err_.
    affinity_matrix_ : ndarray or scipy.sparse CSR matrix (n_samples, n_samples)
        The similarity A that was factorised.
    net_ : SymNMFNet
        The trained network (solver="net" only).
    n_features_in_ : int
        Columns of X seen by fit (n_samples for a precomputed affinity).

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from symnmf import SymNMF
    >>> X, _ = make_blobs(n_samples=60, centers=3, random_state=0)
    >>> SymNMF(n_components=3, solver="hals", random_state=0).fit_predict(X).shape
    (60,)
    """

    _parameter_constraints = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "solver": [StrOptions(set(SOLVERS))],
        "affinity": [StrOptions(set(AFFINITIES))],
        "random_state": ["random_state", np.random.Generator],
        "device": [None, str, torch.device],
        "max_iter": [Interval(numbers.Integral, 0, None, closed="left"), None],
        "tol": [Interval(numbers.Real, 0, None, closed="left"), None],
        "lam": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"kuang", "zhu"}), None],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "metric": [StrOptions({"euclidean", "cosine"})],
        "recipe": [StrOptions(set(RECIPES))],
        "n_layers": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "beta": [Interval(numbers.Real, 0, None, closed="left"), None],
        "mu": [Interval(numbers.Real, 0, None, closed="left"), None],
        "lr": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "relative_lr": ["boolean", None],
        "n_restarts": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "dtype": [None, StrOptions({"float32", "float64"}), Options(torch.dtype, {torch.float32, torch.float64})],
        "n_threads": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "node_order": [StrOptions({"auto", "rcm", "degree"}), None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_components=8,
        *,
        solver="net",
        affinity="nearest_neighbors",
        random_state=None,
        device=None,
        max_iter=None,
        tol=None,
        lam=None,
        n_init=1,
        n_neighbors=None,
        metric="euclidean",
        recipe="default",
        n_layers=None,
        beta=None,
        mu=None,
        lr=None,
        relative_lr=None,
        n_restarts=None,
        dtype=None,
        n_threads=None,
        node_order="auto",
        verbose=False,
    ):
        self.n_components = n_components
        self.solver = solver
        self.affinity = affinity
        self.random_state = random_state
        self.device = device
        self.max_iter = max_iter
        self.tol = tol
        self.lam = lam
        self.n_init = n_init
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.recipe = recipe
        self.n_layers = n_layers
        self.beta = beta
        self.mu = mu
        self.lr = lr
        self.relative_lr = relative_lr
        self.n_restarts = n_restarts
        self.dtype = dtype
        self.n_threads = n_threads
        self.node_order = node_order
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.pairwise = self.affinity == "precomputed"
        tags.input_tags.positive_only = self.affinity == "precomputed"  # a similarity with a negative entry is refused
        return tags

    # ------------------------------------------------------------------ input
    def _validate(self, X, reset):
        """X as a validated numpy array or scipy CSR/CSC/COO matrix (torch input moves to the host).

        scikit-learn's `validate_data`: 2-D, numeric (complex and object data refused),
        finite, non-empty, and with as many features as at fit when reset is False.
        """
        if isinstance(X, torch.Tensor):
            X = X.detach()
            if X.layout in (torch.sparse_csr, torch.sparse_coo) and X.dim() == 2:
                X = _to_numpy_or_scipy(X.to_sparse_csr() if X.layout == torch.sparse_coo else X)
            elif X.layout == torch.strided:
                X = X.cpu().numpy()
            else:
                raise ValueError(f"X has layout {X.layout}; pass a dense tensor or a 2-D sparse CSR/COO tensor")
        return validate_data(
            self, X, accept_sparse=_ACCEPT_SPARSE, dtype=[np.float64, np.float32], ensure_min_samples=2 if reset else 1,
            reset=reset,
        )

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    @unchanged_on_error
    def fit(self, X, y=None):
        """Factorise the similarity of X and store labels_, embedding_ and the diagnostics.

        X: features (n_samples, n_features) or, with affinity="precomputed", a
        symmetric non-negative similarity (n_samples, n_samples); numpy,
        scipy.sparse or torch (dense or sparse). y is ignored.
        """
        if self.solver == "net" and isinstance(self.lam, str):
            raise ValueError(f"lam for solver='net' must be a float > 0 or None (None: the recipe's), got {self.lam!r}")
        if self.solver == "admm" and isinstance(self.lam, str):
            raise ValueError(f"lam for solver='admm' is its penalty rho, a float > 0 or None, got {self.lam!r}")
        device = resolve_device(self.device, X)
        X = self._validate(X, reset=True)
        A, graph = build_affinity(
            X, self.affinity, n_neighbors=self.n_neighbors, metric=self.metric, device=device,
            dtype=resolve_dtype(self.dtype), return_graph=True,
        )
        result = fit_affinity(
            A, self.n_components, self.solver, random_state=self.random_state, max_iter=self.max_iter,
            tol=self.tol, lam=self.lam, threads="auto" if self.n_threads is None else self.n_threads,
            verbose=bool(self.verbose), recipe=self.recipe, n_init=self.n_init, node_order=self.node_order,
            net_options=dict(n_layers=self.n_layers, beta=self.beta, mu=self.mu, lr=self.lr,
                             relative_lr=self.relative_lr, n_restarts=self.n_restarts),
        )
        self.embedding_ = result.U.cpu().numpy()
        self.labels_ = result.labels
        self.reconstruction_err_ = result.reconstruction_err
        self.relative_error_ = result.rel_error
        self.modularity_ = result.modularity
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.history_ = result.history
        self.affinity_matrix_ = _to_numpy_or_scipy(A)
        if result.net is not None:
            self.net_ = result.net
        elif hasattr(self, "net_"):
            del self.net_
        self._n_features_out = self.embedding_.shape[1]
        self._device_fit = str(device)
        if graph is not None:
            scales, used = graph
            scales.sigma, scales.degree = scales.sigma.cpu(), scales.degree.cpu()
            if scales.center is not None:
                scales.center = scales.center.cpu()
            self._graph = (scales, used.cpu())
            self._fit_X = X.toarray() if is_scipy_sparse(X) else np.asarray(X)
        else:
            self._graph = None
        self._fit_rows = None  # built by the first transform that needs it (a pass over every fitted row)
        return self

    def fit_predict(self, X, y=None):
        """Fit and return labels_."""
        return self.fit(X).labels_

    def fit_transform(self, X, y=None):
        """Fit and return embedding_ (the factor U)."""
        return self.fit(X).embedding_.copy()

    # ------------------------------------------------------------- transform
    def _is_fitted_data(self, X):
        """Whether X is the fitted data: the feature matrix, or with affinity="precomputed" the similarity."""
        fitted = self._fit_X if self._graph is not None else self.affinity_matrix_
        if X.shape != fitted.shape:
            return False
        if is_scipy_sparse(X) or is_scipy_sparse(fitted):
            import scipy.sparse as sp

            diff = sp.csr_matrix(X, dtype=np.float64) - sp.csr_matrix(fitted, dtype=np.float64)
            return diff.count_nonzero() == 0
        return bool(np.array_equal(np.asarray(X), fitted))

    def _fitted_rows(self):
        """{row key: index of the first fitted sample with it} (`_row_keys`), built once."""
        if getattr(self, "_fit_rows", None) is None:
            self._fit_rows = _first_rows(self._fit_X if self._graph is not None else self.affinity_matrix_)
        return self._fit_rows

    def _match_fitted(self, X):
        """(index of the fitted sample each row of X equals exactly, or -1; the rows' similarities to
        the fitted samples: a torch tensor for feature input, X itself for a precomputed affinity)."""
        if self._graph is not None:
            from .graph import similarity_to_graph

            scales, used = self._graph
            dense = X.toarray() if is_scipy_sparse(X) else np.asarray(X)
            rows, _ = similarity_to_graph(dense, used, scales)
            candidate = np.array([self._fitted_rows().get(k, -1) for k in _row_keys(dense)], dtype=np.int64)
            equal = (candidate >= 0) & np.all(dense == self._fit_X[np.maximum(candidate, 0)], axis=1)
            return np.where(equal, candidate, -1), rows
        # The first fitted row with the same key, then an exact test (a digest can collide, in principle).
        candidate = np.array([self._fitted_rows().get(k, -1) for k in _row_keys(X)], dtype=np.int64)
        fitted = self.affinity_matrix_[np.maximum(candidate, 0)]
        if is_scipy_sparse(fitted) or is_scipy_sparse(X):
            import scipy.sparse as sp

            diff = (sp.csr_matrix(X, dtype=np.float64) - sp.csr_matrix(fitted, dtype=np.float64)).tocsr()
            diff.eliminate_zeros()
            equal = np.diff(diff.indptr) == 0
        else:
            equal = np.all(np.asarray(X) == fitted, axis=1)
        return np.where((candidate >= 0) & equal, candidate, -1), X

    def transform(self, X):
        """The non-negative embedding of the samples X in the fitted factor's columns.

        Row by row (the result for a sample does not depend on the others):

        - X equal to the fitted data as a whole gets embedding_ (with
          affinity="precomputed", equal in the fit's dtype);
        - otherwise, a sample equal to a fitted one (the same feature vector, or
          with affinity="precomputed" the same row of similarities) gets that
          sample's row of embedding_ (of the first such sample: repeated samples
          of the fitted data can have rows of their own);
        - any other sample gets its similarities a to the fitted samples (with
          affinity="precomputed": X's row itself, (m, n_samples_fit); with
          "nearest_neighbors": its row of the fitted kNN graph, see
          `symnmf.graph.similarity_to_graph`) embedded as
          argmin_{h >= 0} ||a - U h||^2, non-negative least squares against the
          fitted factor U (the out-of-sample form of A ~ U U^T).
        """
        check_is_fitted(self, "embedding_")
        X = self._validate(X, reset=False)
        if self._graph is None and bool(((X.data if is_scipy_sparse(X) else X) < 0).any()):
            raise ValueError("Negative values in data: X has negative entries; similarities must be non-negative")
        if self._graph is None:  # compared with the fitted affinity, which is X in the fit's dtype (`dtype`)
            X = X.astype(self.affinity_matrix_.dtype, copy=False)
        if self._is_fitted_data(X):
            return self.embedding_.copy()
        match, rows = self._match_fitted(X)
        H = np.empty((X.shape[0], self.embedding_.shape[1]), dtype=self.embedding_.dtype)
        hit = match >= 0
        H[hit] = self.embedding_[match[hit]]
        if not hit.all():
            device = torch.device(self._device_fit)
            U = torch.as_tensor(self.embedding_, device=device)
            miss = np.flatnonzero(~hit)
            if isinstance(rows, torch.Tensor):
                C = rows[torch.as_tensor(miss)].to(device=device, dtype=U.dtype) @ U
            else:
                A = as_similarity(rows[miss] if not is_scipy_sparse(rows) else rows.tocsr()[miss], device=device,
                                  dtype=U.dtype)
                C = torch.sparse.mm(A, U) if A.layout != torch.strided else A @ U
            H[miss] = _nnls_rows(U, C).cpu().numpy()
        return H

    def predict(self, X):
        """Cluster of each row of transform(X): argmax over the components."""
        return self.transform(X).argmax(axis=1)


def _nnls_rows(U, C):
    """argmin_{h >= 0} h^T (U^T U) h - 2 c^T h for every row c of C."""
    from symnmf.solvers.nnls import nnls_gram

    B = U.mT @ U
    r = B.shape[-1]
    # a column of U that is all zero (an empty cluster) leaves B singular: a tiny ridge keeps it definite
    ridge = 1e-10 * torch.clamp(torch.diagonal(B).sum() / r, min=torch.finfo(B.dtype).tiny)
    B = B + ridge * torch.eye(r, dtype=B.dtype, device=B.device)
    return nnls_gram(B, C.contiguous())
