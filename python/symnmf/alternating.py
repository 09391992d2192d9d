"""Alternating-update NMF that recovers features under strongly correlated weights.

Li and Liang, "Provable alternating gradient descent for non-negative matrix
factorization with strong correlations" (ICML 2017). Samples are rows:

    Y (n x d)  ~  W H,    W >= 0 (n x k) the weights,  H (k x d) the features.

The algorithm works on the paper's feature matrix A = H^T (d x k) and, from a
start A_0 near the true features, repeats for t = 1, ..., max_iter:

    alpha_t = alpha_0 / decay^t
    W  = max(Y A (A^T A)^{-1} - alpha_t, 0)        decode: thresholded pseudo-inverse
    A <- A + eta (Y^T W - A W^T W)   (inner_iter times, W fixed)

The decode is the SymNMF block's pattern
(docs/design.md, "The block and its backward"): a Gram G = A^T A, its small inverse, and ReLU(P G^{-1}) with
P = Y A. It runs on `symnmf_kernels` (sk.gram, sk.spd_inverse, sk.apply_relu),
fused on a GPU, and every tensor may carry leading batch dimensions of
independent problems. The threshold is folded into P, because apply_relu
computes ReLU(P G^{-1}) and has no offset: with g = G 1 (G is symmetric),

    (P - alpha 1 g^T) G^{-1} = P G^{-1} - alpha 1 1^T,

so ReLU((P - alpha 1 g^T) G^{-1}) is the thresholded decode.

The inner gradient steps keep W, hence C = Y^T W and B = W^T W, fixed, so
they are linear in A: with Q = I - eta B, m steps give

    A_m = A Q^m + eta C (I + Q + ... + Q^{m-1}),

a handful of k x k products and one pass over A, whatever m is.

docs/alternating_nmf.md has the semi-synthetic study (recovery error against
iterations, correlation and noise, next to ANLS, HALS, multiplicative updates
and scikit-learn's NMF) and the timings.
"""
import math
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

import symnmf_kernels as sk

from .fitting import resolve_device, unchanged_on_error
from .solvers.base import as_seed
from .validation import power_of_two_scale, real_array

__all__ = ["AlternatingNMF", "AlternatingResult", "alternating_nmf", "decode"]


# ---------------------------------------------------------------------------------------------- the algorithm


def _gram_ridge(A):
    """A ridge for G = A^T A of eps(dtype) times its mean diagonal: it changes nothing the precision
    resolves, and keeps G positive definite when two columns of A coincide exactly."""
    k = A.shape[-1]
    return torch.finfo(A.dtype).eps * A.pow(2).sum((-2, -1)) / k


def decode(Y, A, alpha):
    """The weights W = max(Y A (A^T A)^{-1} - alpha, 0) of samples Y (..., n, d) for features A (..., d, k).

    alpha: the threshold, a float, a tensor of the batch shape (...) or one per feature (..., k).
    Returns (W, P, Ginv) with P = Y A and Ginv = (A^T A)^{-1}, which the residuals are computed from.
    """
    G = sk.gram(A, _gram_ridge(A))
    Ginv = sk.spd_inverse(G)
    P = Y @ A
    alpha = torch.as_tensor(alpha, dtype=A.dtype, device=A.device)
    if alpha.dim() < A.dim() - 1:  # one threshold per problem: the same for every feature
        alpha = alpha[..., None].expand(*A.shape[:-2], A.shape[-1])
    # apply_relu has no offset: subtracting 1 (alpha^T G) from P subtracts alpha from every row of P G^{-1}
    shift = alpha[..., None, :] @ G
    return sk.apply_relu(P - shift, Ginv), P, Ginv


def _gradient_steps(A, C, B, lr, steps):
    """`steps` gradient steps A <- A + eta (C - A B) in closed form, eta = lr / (largest row sum of B).

    B = W^T W has non-negative entries, so its largest row sum bounds its largest eigenvalue: eta B has
    eigenvalues in [0, lr] and the steps are stable for lr < 2 on every problem of a batch, whatever
    the scale of Y. A problem whose weights all decode to zero (B = 0) keeps its A.
    """
    row_max = B.sum(-1).amax(-1)
    eta = torch.where(row_max > 0, lr / row_max.clamp(min=torch.finfo(B.dtype).tiny), torch.zeros_like(row_max))
    eta = eta[..., None, None]
    eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
    Q = eye - eta * B
    power, total = eye.expand_as(B), eye.expand_as(B)  # Q^j and I + Q + ... + Q^j
    for _ in range(steps - 1):
        power = power @ Q
        total = total + power
    power = power @ Q
    return A @ power + (eta * C) @ total


def _noise_floor(Y, P, Ginv, y_norm2, factor):
    """factor times the noise level of each decoded weight, sigma sqrt((A^T A)^{-1}_jj) (..., k).

    The noise level sigma of an entry of Y is estimated from the residual of Y's projection onto the
    span of A, ||Y||^2 - <P, P G^{-1}>, over its n (d - k) degrees of freedom. Without noise it goes
    to 0 as A reaches the features, and so does the floor.
    """
    n, d, k = Y.shape[-2], Y.shape[-1], P.shape[-1]
    outside = (y_norm2 - (sk.gram(P) * Ginv).sum((-2, -1))).clamp(min=0)
    sigma = (outside / max(n * (d - k), 1)).sqrt()
    return factor * sigma[..., None] * torch.diagonal(Ginv, dim1=-2, dim2=-1).clamp(min=0).sqrt()


@dataclass
class AlternatingResult:
    """Outcome of `alternating_nmf`.

    A: the features (..., d, k) (components_ is its transpose).
    alpha: the final thresholds (..., k), one per feature: the ones transform decodes with.
    n_iter: outer iterations done.
    history: dict of numpy arrays of shape (n_iter, *batch): "alpha" (the schedule's threshold at
      that decode; the noise floor may hold a feature's higher), "rel_residual" (||Y - W A^T||_F /
      ||Y||_F of that decode, against the A it decoded with) and "rel_change" (||A_t - A_{t-1}||_F /
      ||A_{t-1}||_F over the iteration).
    """

    A: torch.Tensor
    alpha: torch.Tensor
    n_iter: int
    history: dict = field(default_factory=dict)


def alternating_nmf(Y, A0, *, max_iter=200, inner_iter=50, alpha=0.1, decay=1.1, lr=1.0, noise_floor=1.0,
                    callback=None):
    """Li and Liang's alternating updates from features A0 (..., d, k) for samples Y (..., n, d).

    Leading dimensions are independent problems, run together. Nothing is read back to the host
    inside the loop (the history is gathered at the end), so a batch on a GPU runs without stalls.

    max_iter: outer iterations (decodes); inner_iter: gradient steps per decode.
    alpha: the threshold before the first decay, as a fraction of the largest weight decoded from A0 (the
      reference settings start at 0.1 for weights that are at most 1). decay: the threshold is divided by it at
      every outer iteration, before the decode, so the first decode uses alpha / decay. lr: the bound on eta
      times the largest eigenvalue of W^T W (see `_gradient_steps`).
    noise_floor: no feature's threshold falls below noise_floor times the noise level of its decoded
      weight (`_noise_floor`, measured at the previous decode); 0 follows the schedule down to zero.
    callback(t, A), when given, is called after outer iteration t.

    After the gradient steps every column of A is scaled back to its norm in A0. The decode absorbs
    a column's scale (W's column scales inversely) except through the threshold, which is absolute:
    left free, the steps grow the columns to make up for the weights that the threshold shrinks, the
    decoded weights shrink further against the same threshold, and the iteration can diverge.
    """
    if not (isinstance(inner_iter, numbers.Integral) and inner_iter >= 1 and isinstance(max_iter, numbers.Integral)
            and max_iter >= 0):
        raise ValueError(f"max_iter must be an int >= 0 and inner_iter an int >= 1, got {max_iter!r} and "
                         f"{inner_iter!r}")
    if not (decay >= 1 and 0 < lr < 2 and alpha >= 0 and noise_floor >= 0):
        raise ValueError(f"need decay >= 1 (1 keeps the threshold), 0 < lr < 2, alpha >= 0 and noise_floor >= 0; got "
                         f"decay={decay!r}, lr={lr!r}, alpha={alpha!r}, noise_floor={noise_floor!r}")
    if Y.dim() < 2 or A0.dim() != Y.dim() or A0.shape[-2] != Y.shape[-1] or A0.shape[:-2] != Y.shape[:-2]:
        raise ValueError(f"A0 must have shape (..., d, k) matching Y (..., n, d); got {tuple(A0.shape)} "
                         f"and {tuple(Y.shape)}")
    A = A0.to(dtype=Y.dtype, device=Y.device)
    # The updates of A do not change when Y is multiplied by a constant (the weights and thresholds scale with
    # it), so each problem runs at an exact power of two of its Y, where ||Y||^2 and the noise level neither
    # overflow nor underflow; nor when A is (the decode absorbs it, W scaling inversely), so A runs at a power of
    # two of its own, where A^T A neither overflows nor underflows. The thresholds and A are reported in the
    # units of Y and A0.
    unit = power_of_two_scale(Y, dim=(-2, -1))
    Y = Y * unit
    unit = unit[..., 0, 0]
    a_unit = power_of_two_scale(A, dim=(-2, -1))
    A = (A * a_unit).contiguous()
    a_unit = a_unit[..., 0, 0]
    norms0 = A.norm(dim=-2, keepdim=True)
    y_norm2 = Y.pow(2).sum((-2, -1))
    W0, _, _ = decode(Y, A, torch.zeros(Y.shape[:-2], dtype=Y.dtype, device=Y.device))
    schedule = alpha * W0.amax((-2, -1))
    floor = torch.zeros(A.shape[:-2] + A.shape[-1:], dtype=Y.dtype, device=Y.device)
    records = {"alpha": [], "rel_residual": [], "rel_change": []}
    for t in range(1, max_iter + 1):
        schedule = schedule / decay
        thresholds = torch.maximum(schedule[..., None], floor)
        W, P, Ginv = decode(Y, A, thresholds)
        if noise_floor > 0:
            floor = _noise_floor(Y, P, Ginv, y_norm2, noise_floor)
        B = sk.gram(W)
        C = Y.mT @ W
        # ||Y - W A^T||^2 = ||Y||^2 - 2 <Y A, W> + <W^T W, A^T A>: no n x d residual is formed
        fit = y_norm2 - 2 * (P * W).sum((-2, -1)) + (B * (A.mT @ A)).sum((-2, -1))
        A_next = _gradient_steps(A, C, B, lr, inner_iter)
        A_next = A_next * (norms0 / A_next.norm(dim=-2, keepdim=True))
        records["alpha"].append(schedule)
        records["rel_residual"].append(fit.clamp(min=0).sqrt() / y_norm2.sqrt())
        records["rel_change"].append((A_next - A).norm(dim=(-2, -1)) / A.norm(dim=(-2, -1)))
        A = A_next
        if callback is not None:
            callback(t, A / a_unit[..., None, None])
    to_y = a_unit / unit  # a weight decoded here, in the units of Y and A0
    final = torch.maximum(schedule[..., None], floor) * to_y[..., None]
    records["alpha"] = [a * to_y for a in records["alpha"]]
    A = A / a_unit[..., None, None]
    history = {key: torch.stack(v).cpu().numpy() if v else np.empty((0, *Y.shape[:-2])) for key, v in records.items()}
    return AlternatingResult(A=A, alpha=final, n_iter=max_iter, history=history)


# ---------------------------------------------------------------------------------------------- the estimator


def _default_start(Y, n_components, random_state, max_iter):
    """Components (k x d) for a start: scikit-learn's NMF, NNDSVDar initialisation and `max_iter`
    coordinate-descent (HALS-type) iterations, run on Y at an exact power of two (NNDSVD's truncation is
    absolute, so the start of c Y was not c times the start of Y: a fit of Y * 1e6 ended at twice the error
    of Y's) and given back in Y's units.

    The alternating updates are a local method: they converge to the true features from a start
    near them and the threshold schedule assumes one. NNDSVD alone is often far from the features;
    a short run of a standard NMF solver from it gets close on data the model fits, cheaply and
    deterministically for a given random_state (NNDSVDar fills its zeros with small random values).
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    model = NMF(n_components, init="nndsvdar", solver="cd", max_iter=max_iter, tol=0.0, random_state=random_state)
    unit = float(power_of_two_scale(torch.as_tensor(Y)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Y * Y.dtype.type(unit))
    return model.components_ / unit


class AlternatingNMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """NMF by Li and Liang's alternating updates: Y ~ W H, recovering H under correlated weights W.

    Samples are rows: Y (n_samples, n_features) ~ W H with non-negative weights W (n_samples x
    n_components) and features H = components_ (n_components x n_features). Each outer iteration
    decodes the weights by a thresholded pseudo-inverse, W = max(Y H^T (H H^T)^{-1} - alpha, 0), with
    alpha decreasing geometrically down to the noise level of the decode, then takes `inner_iter`
    gradient steps on H with W fixed. From a start near the true features it recovers them even when
    the weights are strongly correlated (docs/alternating_nmf.md). H itself is not constrained to be
    non-negative.

    Parameters
    ----------
    n_components : int
        Number of features k; at most min(n_samples, n_features).
    max_iter : int
        Outer iterations (decodes). The reference settings: 200.
    inner_iter : int
        Gradient steps per decode. The reference settings: 50.
    alpha : float
        The threshold before the first decay (the first decode uses alpha / decay), as a fraction of the
        largest weight decoded from the start.
    decay : float
        The threshold is divided by `decay` (>= 1; 1 keeps it) at every outer iteration (1.1: 200
        iterations take it down by a factor of 2e8).
    lr : float
        Step size relative to the largest eigenvalue of W^T W (bounded by its largest row sum);
        in (0, 2) for stable steps.
    noise_floor : float
        No feature's threshold falls below noise_floor times the noise level of its decoded weight,
        estimated from the data at every decode; without noise that level goes to zero. 0 lets the
        threshold follow the schedule down to zero, as in the paper.
    init_iter : int
        Coordinate-descent iterations of the data-driven start when fit gets no init_components (see
        fit); at least 1, as scikit-learn's NMF runs. For any other start pass init_components.
    random_state : None, int, numpy RandomState or Generator
        Seeds the data-driven start (a RandomState or Generator gives it one draw, as elsewhere in the
        package).
    device : str or torch.device, optional
        Where to compute. Default: the device of a torch input, else CUDA when available, else the CPU.

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        The features H.
    n_iter_ : int
        Outer iterations run.
    history_ : dict of ndarrays (n_iter_,)
        Per outer iteration: "alpha" (the decode's threshold), "rel_residual" (||Y - W H||_F / ||Y||_F
        of that decode) and "rel_change" (relative change of H by the gradient steps).
    alpha_ : ndarray (n_components,)
        The final threshold of each feature's weight, the one transform decodes with.
    reconstruction_err_ : float
        ||Y - transform(Y) components_||_F on the training data.
    n_features_in_ : int
        Columns of Y seen by fit.

    Examples
    --------
    >>> import numpy as np
    >>> from symnmf.alternating import AlternatingNMF
    >>> rng = np.random.default_rng(0)
    >>> Y = rng.random((200, 3)) @ rng.random((3, 40))
    >>> AlternatingNMF(3, random_state=0).fit(Y).components_.shape
    (3, 40)
    """

    _parameter_constraints = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "inner_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "decay": [Interval(numbers.Real, 1, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, 2, closed="neither")],
        "noise_floor": [Interval(numbers.Real, 0, None, closed="left")],
        "init_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
        "device": [None, str, torch.device],
    }

    def __init__(self, n_components, *, max_iter=200, inner_iter=50, alpha=0.1, decay=1.1, lr=1.0, noise_floor=1.0,
                 init_iter=100, random_state=None, device=None):
        self.n_components = n_components
        self.max_iter = max_iter
        self.inner_iter = inner_iter
        self.alpha = alpha
        self.decay = decay
        self.lr = lr
        self.noise_floor = noise_floor
        self.init_iter = init_iter
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags

    def _validate(self, Y, reset):
        """Y as a finite, non-negative 2-D float numpy array (torch input moves to the host)."""
        if isinstance(Y, torch.Tensor):
            Y = Y.detach().cpu().numpy()
        Y = validate_data(self, Y, dtype=[np.float64, np.float32], reset=reset)
        if not Y.flags.writeable:  # torch refuses read-only memory
            Y = Y.copy()
        if (Y < 0).any():
            raise ValueError("Negative values in data Y: NMF needs non-negative data (e.g. clip Y at 0)")
        if reset and not Y.any():
            raise ValueError("Y is all zero: there are no features to learn (check the data)")
        return Y

    def _device(self, Y):
        return resolve_device(self.device, Y)

    @_fit_context(prefer_skip_nested_validation=True)
    @unchanged_on_error
    def fit(self, Y, y=None, *, init_components=None):
        """Learn the features of Y (n_samples, n_features); y is ignored.

        init_components: the start H_0 (n_components, n_features). None: a data-driven start,
        scikit-learn's NMF with NNDSVDar initialisation run for `init_iter` coordinate-descent
        iterations (the alternating updates refine a start near the features; they do not find one).
        """
        device = self._device(Y)
        Y = self._validate(Y, reset=True)
        n, d = Y.shape
        k = self.n_components
        if k > min(n, d):
            raise ValueError(f"n_components = {k} exceeds min(n_samples, n_features) = {min(n, d)} "
                             f"for Y of shape {(n, d)}; choose n_components <= {min(n, d)}")
        if init_components is None:
            # scikit-learn's NMF takes no numpy Generator: a seed drawn from it stands in
            H0 = _default_start(Y, k, as_seed(self.random_state), self.init_iter)
        else:
            H0 = real_array(init_components, "init_components")
            if H0.shape != (k, d):
                raise ValueError(f"init_components must have shape (n_components, n_features) = {(k, d)}, "
                                 f"got {H0.shape}")
            if not np.isfinite(H0).all():
                raise ValueError("init_components has NaN or infinite entries")
        Yt = torch.as_tensor(Y, device=device)
        A0 = torch.as_tensor(np.asarray(H0, dtype=Y.dtype).T.copy(), device=device)
        result = alternating_nmf(Yt, A0, max_iter=self.max_iter, inner_iter=self.inner_iter, alpha=self.alpha,
                                 decay=self.decay, lr=self.lr, noise_floor=self.noise_floor)
        if not bool(torch.isfinite(result.A).all()):
            raise ValueError("the features became linearly dependent (a singular H H^T): try another start, "
                             "fewer n_components or a smaller lr")
        self.components_ = result.A.mT.cpu().numpy()
        self.alpha_ = result.alpha.cpu().numpy()
        self.n_iter_ = result.n_iter
        self.history_ = result.history
        self._n_features_out = k
        W = self._decode(Yt)
        residual = Yt - W @ torch.as_tensor(self.components_, device=device)
        unit = power_of_two_scale(residual)  # the norm of a residual of any scale, without under- or overflow
        self.reconstruction_err_ = float(torch.linalg.norm(residual * unit).double() / unit.double())
        if not math.isfinite(self.reconstruction_err_):  # a start that is singular itself, with no step taken
            raise ValueError("the features are linearly dependent (a singular H H^T): try another start, "
                             "fewer n_components or a smaller lr")
        return self

    def _decode(self, Yt):
        """The decode at alpha_, run at exact powers of two of Yt and of the features (W scales with Y and
        inversely with A) so that its products neither overflow nor underflow."""
        A = torch.as_tensor(self.components_.T.copy(), device=Yt.device, dtype=Yt.dtype)
        unit, a_unit = power_of_two_scale(Yt), power_of_two_scale(A)
        to_w = unit / a_unit  # a weight in Y's and A's units, as decoded at those powers of two
        alpha = torch.as_tensor(self.alpha_, device=Yt.device, dtype=Yt.dtype) * to_w
        return decode(Yt * unit, A * a_unit, alpha)[0] / to_w

    def transform(self, Y):
        """The weights W = max(Y H^T (H H^T)^{-1} - alpha_, 0) of the samples Y: the decode at the final threshold."""
        check_is_fitted(self, "components_")
        device = self._device(Y)
        Y = self._validate(Y, reset=False)
        return self._decode(torch.as_tensor(Y, device=device)).cpu().numpy().astype(Y.dtype, copy=False)

    def inverse_transform(self, W):
        """W components_: the samples that the weights W (n_samples, n_components) represent."""
        check_is_fitted(self, "components_")
        if isinstance(W, torch.Tensor):
            W = W.detach().cpu().numpy()
        W = check_array(W, dtype=[np.float64, np.float32], input_name="W")
        if W.shape[1] != self.components_.shape[0]:
            raise ValueError(f"W must have n_components = {self.components_.shape[0]} columns (one weight per "
                             f"component), got {W.shape[1]}")
        return W @ self.components_
