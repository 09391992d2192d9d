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
import hashlib
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

import symnmf_kernels as sk

from .validation import as_similarity, check_rank, check_similarity

__all__ = ["SymNMF"]

SOLVERS = ("net", "anls", "hals", "pgd", "newton", "admm")
AFFINITIES = ("nearest_neighbors", "precomputed")
DEFAULT_EPOCHS = 200


def _is_scipy_sparse(X):
    import scipy.sparse as sp

    return sp.issparse(X)


def _fingerprint(X):
    """A digest of X's shape, dtype and values, to recognise the fitted data in `transform`."""
    digest = hashlib.sha1()
    if _is_scipy_sparse(X):
        X = X.tocsr()
        parts, meta = (X.indptr, X.indices, X.data), ("scipy", X.shape, str(X.dtype))
    elif isinstance(X, torch.Tensor):
        X = X.detach()
        if X.layout != torch.strided:
            X = X.to_sparse_csr() if X.layout != torch.sparse_csr else X
            parts = (X.crow_indices(), X.col_indices(), X.values())
        else:
            parts = (X,)
        parts = tuple(p.cpu().contiguous().numpy() for p in parts)
        meta = ("torch", tuple(X.shape), str(X.dtype), str(X.layout))
    else:
        X = np.asarray(X)
        parts, meta = (X,), ("numpy", X.shape, str(X.dtype))
    digest.update(repr(meta).encode())
    for part in parts:
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


def _shape(X):
    return tuple(X.shape) if hasattr(X, "shape") else np.shape(X)


def _to_numpy_or_scipy(A):
    """A torch dense / sparse CSR matrix as a numpy array / scipy CSR matrix (on the host)."""
    if A.layout == torch.strided:
        return A.detach().cpu().numpy()
    import scipy.sparse as sp

    A = A.detach().cpu()
    return sp.csr_matrix((A.values().numpy(), A.col_indices().numpy(), A.crow_indices().numpy()), shape=tuple(A.shape))


def _seed(random_state):
    """An int seed, or None for a fresh random start, from sklearn-style random_state."""
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise ValueError(
        f"random_state must be None, an int, a numpy RandomState or Generator, got {type(random_state).__name__}"
    )


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
        the same int gives every solver and the net the same start.
    device : str or torch.device, optional
        Where to compute. Default: the device of a torch input, else CUDA when
        available, else the CPU.
    max_iter : int, optional
        Iterations of a classical solver (its own default when None), or training
        epochs of the net (default 200).
    tol : float, optional
        Classical solvers: projected-gradient tolerance (relative to its initial
        value). Net: stop once the loss changes by less than tol times its
        initial value between epochs. None: the solver's default / no early stop.
    lam : float or str, optional
        ANLS/HALS: the penalty lam of ||X - W V^T||^2 + lam ||W - V||^2 (a float,
        "kuang" or "zhu"); ADMM: its penalty rho; the net: the initial lam
        (None: ||X||_F). PGD and SymNewton take none.
    n_neighbors : int, optional
        k of the kNN graph (default floor(log2 n) + 1); "nearest_neighbors" only.
    metric : {"euclidean", "cosine"}
        Similarity of the kNN graph: Gaussian of distances (images, generic
        features) or cosine (text).
    n_layers, beta, mu : SymNMF-Net's depth L, regulariser weight and L1 weight.
    lr : float
        SymNMF-Net's Adam learning rate.
    relative_lr : bool
        Whether lr is relative to the scale of the net's weights (then training
        does not depend on the scale of X); with False it is Adam's absolute
        step, as in the paper (lr = 0.5 there).
    dtype : torch.float32, torch.float64 or None
        Precision; None keeps a float input's own precision (float32 otherwise).
    verbose : bool
        Progress bar / iteration log.

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
    n_iter_ : int
        Iterations (classical solvers) or epochs (net) run.
    converged_ : bool
        Whether the stopping tolerance was met (always False for the net without tol).
    history_ : dict of lists
        Per-iteration (per-epoch) objective, relative error and time of the solver.
    affinity_matrix_ : ndarray or scipy.sparse CSR matrix (n_samples, n_samples)
        The similarity A that was factorised.
    net_ : SymNMFNet
        The trained network (solver="net" only).
    n_features_in_ : int
        Columns of X seen by fit (n_samples for a precomputed affinity).
    """

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
        n_neighbors=None,
        metric="euclidean",
        n_layers=10,
        beta=5e-6,
        mu=0.0,
        lr=0.1,
        relative_lr=True,
        dtype=None,
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
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.n_layers = n_layers
        self.beta = beta
        self.mu = mu
        self.lr = lr
        self.relative_lr = relative_lr
        self.dtype = dtype
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.pairwise = self.affinity == "precomputed"
        return tags

    # ---------------------------------------------------------------- checks
    def _check_params(self):
        if isinstance(self.n_components, bool) or not isinstance(self.n_components, numbers.Integral):
            raise ValueError(f"n_components must be an int >= 1, got {self.n_components!r}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {AFFINITIES}, got {self.affinity!r}")
        if self.max_iter is not None and (
            isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 0
        ):
            raise ValueError(f"max_iter must be a non-negative int or None, got {self.max_iter!r}")
        if self.tol is not None and not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"tol must be a float >= 0 or None, got {self.tol!r}")
        if self.solver == "net" and self.lam is not None and not (isinstance(self.lam, numbers.Real) and self.lam > 0):
            raise ValueError(f"lam for solver='net' must be a float > 0 or None (None: ||X||_F), got {self.lam!r}")
        if self.dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32, torch.float64 or None, got {self.dtype!r}")

    def _device(self, X):
        if self.device is not None:
            return torch.device(self.device)
        if isinstance(X, torch.Tensor):
            return X.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _affinity(self, X, device):
        """The similarity matrix to factorise, as a torch dense or sparse CSR tensor on device."""
        shape = _shape(X)
        if len(shape) != 2:
            raise ValueError(
                f"X must be a 2-D array: (n_samples, n_features) for affinity='nearest_neighbors', or "
                f"(n_samples, n_samples) for affinity='precomputed'; got shape {shape}"
            )
        if self.affinity == "precomputed":
            if shape[0] != shape[1]:
                raise ValueError(
                    f"affinity='precomputed' needs a square (n_samples, n_samples) similarity matrix, got shape "
                    f"{shape}; for feature vectors use affinity='nearest_neighbors'"
                )
            A = as_similarity(X, device=device, dtype=self.dtype)
            return check_similarity(A, name="X (the precomputed affinity)")
        from .graph import similarity_graph

        return similarity_graph(
            X, n_neighbors=self.n_neighbors, metric=self.metric, device=device, dtype=self.dtype
        )

    # ------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Factorise the similarity of X and store labels_, embedding_ and the diagnostics.

        X: features (n_samples, n_features) or, with affinity="precomputed", a
        symmetric non-negative similarity (n_samples, n_samples); numpy,
        scipy.sparse or torch (dense or sparse). y is ignored.
        """
        self._check_params()
        fingerprint = _fingerprint(X)
        device = self._device(X)
        A = self._affinity(X, device)
        n = A.shape[-1]
        rank = check_rank(int(self.n_components), n)
        seed = _seed(self.random_state)

        if self.solver == "net":
            from .net import SymNMFNet

            net = SymNMFNet(
                rank, n_layers=self.n_layers, beta=self.beta, mu=self.mu, lam=self.lam, random_state=seed
            )
            net.fit(
                A,
                epochs=DEFAULT_EPOCHS if self.max_iter is None else int(self.max_iter),
                lr=self.lr,
                relative_lr=self.relative_lr,
                tol=self.tol,
                progress=self.verbose,
            )
            with torch.no_grad():
                U = net().detach()
            self.net_ = net
            self.history_ = net.history_
            self.n_iter_ = net.n_iter_
            self.converged_ = self.tol is not None and net.n_iter_ < (
                DEFAULT_EPOCHS if self.max_iter is None else self.max_iter
            )
        else:
            from .solvers import solve

            result = solve(
                A, rank, solver=self.solver, lam=self.lam, max_iter=self.max_iter, tol=self.tol,
                random_state=seed, verbose=self.verbose,
            )
            U = result.U.detach()
            self.history_ = result.history
            self.n_iter_ = int(result.n_iter)
            self.converged_ = bool(result.converged)

        with torch.no_grad():
            err2 = float(sk.sym_loss(A, U))
            a2 = float(A.values().pow(2).sum() if A.layout != torch.strided else A.pow(2).sum())
        self.embedding_ = U.cpu().numpy()
        self.labels_ = self.embedding_.argmax(axis=1)
        self.reconstruction_err_ = float(np.sqrt(max(err2, 0.0)))
        self.relative_error_ = max(err2, 0.0) / a2 if a2 > 0 else float("nan")
        self.affinity_matrix_ = _to_numpy_or_scipy(A)
        self.n_features_in_ = int(_shape(X)[1])
        self._n_features_out = rank
        self._fit_fingerprint = fingerprint
        return self

    def fit_predict(self, X, y=None):
        """Fit and return labels_."""
        return self.fit(X).labels_

    def fit_transform(self, X, y=None):
        """Fit and return embedding_ (the factor U)."""
        return self.fit(X).embedding_.copy()

    # ------------------------------------------------------------- transform
    def transform(self, X):
        """The non-negative embedding of X in the fitted factor's columns.

        - X is the fitted data (the same values): returns a copy of embedding_,
          the factor U of the fit.
        - affinity="precomputed" and X is (m, n_samples_fit): the similarities of
          m new samples to the fitted ones. Each row a is embedded as
          argmin_{h >= 0} ||a - U h||^2 (non-negative least squares against the
          fitted factor U, the out-of-sample form of A ~ U U^T); for a row of
          the fitted affinity this is close to, not equal to, its row of U.
        - new feature vectors with affinity="nearest_neighbors" have no
          embedding (the kNN graph and its scales exist for the fitted samples
          only): a ValueError says so.
        """
        check_is_fitted(self, "embedding_")
        if _fingerprint(X) == self._fit_fingerprint:
            return self.embedding_.copy()
        if self.affinity != "precomputed":
            raise ValueError(
                "transform of new samples needs their similarities to the fitted ones: fit with "
                "affinity='precomputed' and pass an (m, n_samples_fit) similarity matrix; with "
                "affinity='nearest_neighbors' only the fitted data itself can be transformed"
            )
        n_fit = self.embedding_.shape[0]
        shape = _shape(X)
        if len(shape) != 2 or shape[1] != n_fit:
            raise ValueError(
                f"X must be an (m, {n_fit}) matrix of similarities to the {n_fit} fitted samples, got shape {shape}"
            )
        device = self._device(X)
        A = as_similarity(X, device=device, dtype=self.dtype)
        values = A.values() if A.layout != torch.strided else A
        if not bool(torch.isfinite(values).all()):
            raise ValueError("X has NaN or infinite entries; clean or impute them first")
        if bool((values < 0).any()):
            raise ValueError("X has negative entries; similarities must be non-negative")
        U = torch.as_tensor(self.embedding_, device=device, dtype=A.dtype)
        C = torch.sparse.mm(A, U) if A.layout != torch.strided else A @ U
        return _nnls_rows(U, C).cpu().numpy()

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
