"""The one fit path shared by `SymNMF.fit`, `symnmf cluster` and `symnmf reproduce`.

    A = build_affinity(features, "nearest_neighbors")     # validated torch similarity
    result = fit_affinity(A, rank=10, solver="hals", random_state=0)
    result.labels, result.U, result.rel_error

Everything that decides the outcome of a fit lives here, once: the device and
precision, the similarity graph, the checks of X (run once, up front), the
random start, the default iteration counts, the thread count and the progress
bar. The estimator, the CLI and `reproduce` only translate their arguments, so
for the same data, solver and seed they return the same labels.

Defaults
--------
- device: CUDA when available, else the CPU (a torch input keeps its device).
- dtype: the input's float precision (float64 for anything else, as scikit-learn).
- iterations: `DEFAULT_MAX_ITER[solver]` for a classical solver, each also
  stopping at its own tolerance; `DEFAULT_EPOCHS` Adam steps for SymNMF-Net.
- threads (`default_threads`): on the CPU, one thread when n * rank (times the
  factors every op works on at once: SymNMF-Net's restarts, SymHALS's starts
  with n_init) is below `SMALL_PROBLEM`, torch's own setting above it. Below it every op is
  tens of microseconds of work: a second thread gains nothing, and on a
  loaded machine a descheduled thread stalls every op at its barrier (digits with
  SymNMF-Net: 3.1 s on one thread, 57.6 s on two busy cores). The count is set
  for the fit only and restored afterwards.
- progress: a tqdm bar on stderr when stderr is a terminal or verbose is set.
- node order (`node_order`): "auto" renumbers a sparse graph of `AUTO_ORDER_MIN_NODES` nodes or more on the
  CPU by reverse Cuthill-McKee before the fit, so that the SpMM's gathers stay near each other in memory, and
  maps the factor back; the start is drawn in the original numbering, so the fit ends at the same factor up
  to rounding. On a kNN graph of 200,000 nodes in random order a SymHALS iteration took 1.7x less time
  (docs/cpu_backend.md, "Renumbering the nodes").
"""
import contextlib
import functools
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

import symnmf_kernels as sk

from .metrics import first_best, modularity
from .solvers.base import as_seed, check_lam, init_factor, make_generator, renumbered_start
from .validation import as_similarity, check_device, check_rank, check_similarity, is_int

__all__ = [
    "SOLVERS", "SOLVER_NAMES", "AFFINITIES", "DEFAULT_MAX_ITER", "DEFAULT_EPOCHS", "DEFAULT_RECIPE", "NET_DEFAULTS",
    "SMALL_PROBLEM", "SCALE_TOL", "NODE_ORDERS", "AUTO_ORDER_MIN_NODES", "AUTO_ORDER_COPIES", "resolve_node_order",
    "FitResult", "resolve_device", "resolve_dtype", "build_affinity", "fit_affinity", "similarity_scale",
    "snapped_scale",
    "default_threads", "thread_limit", "show_progress", "sync_device", "unchanged_on_error",
]

SOLVERS = ("net", "anls", "hals", "pgd", "newton", "admm")
SOLVER_NAMES = {
    "net": "SymNMF-Net", "anls": "SymANLS", "hals": "SymHALS", "pgd": "PGD", "newton": "SymNewton", "admm": "ADMM",
}
AFFINITIES = ("nearest_neighbors", "precomputed")

# Iteration caps per classical solver (one iteration updates the whole factor once); each
# solver also stops at its own tolerance. On digits ANLS, HALS and ADMM meet their
# tolerances within these caps; PGD and SymNewton (tol 1e-4) take thousands of iterations
# more for changes in the 5th digit of the relative error.
DEFAULT_MAX_ITER = {"anls": 300, "hals": 500, "pgd": 500, "newton": 200, "admm": 1000}
DEFAULT_EPOCHS = None  # the net's training steps: None leaves them to the recipe (at most 400, plateau stop)

# SymNMF-Net's settings used by the estimator, `symnmf cluster` and `symnmf reproduce` alike
# (SymNMF's parameters of the same names default to these values).
# SymNMF-Net's settings come from a named recipe (symnmf.net.RECIPES, see docs/symnmf_net_study.md);
# a value given here or by the caller overrides the recipe's, None keeps it.
DEFAULT_RECIPE = "default"
NET_DEFAULTS = {"n_layers": None, "beta": None, "mu": None, "lr": None, "relative_lr": None}

# n * rank below which a CPU fit runs on one thread (see the module docstring).
SMALL_PROBLEM = 1 << 18

# A similarity whose largest eigenvalue is within this of 1 is factorised as it is (see `similarity_scale`).
SCALE_TOL = 1e-3

# node_order: "auto", a method of symnmf_kernels.sparse.locality_order, or None (keep the numbering).
NODE_ORDERS = ("auto", "rcm", "degree", None)
# From this many nodes "auto" renumbers a sparse graph on the CPU: below it the factor (n x r floats) stays in the
# caches in any order. On a GPU "auto" keeps the numbering until a GPU run has measured what renumbering buys there.
AUTO_ORDER_MIN_NODES = 100_000
# "auto" renumbers only while this many copies of the graph fit in the memory still available: the renumbering
# holds about three at its peak, and the fit keeps the renumbered one beside the caller's.
AUTO_ORDER_COPIES = 4


@dataclass
class FitResult:
    """One factorisation: the factor, labels, errors, iterations and convergence curve.

    U: the factor (torch, on the fit's device); labels: argmax of each row of U
    (numpy int64); rel_error: ||A - U U^T||_F^2 / ||A||_F^2; reconstruction_err:
    ||A - U U^T||_F; n_iter: iterations (epochs for the net); converged: the
    stopping tolerance was met; seconds: wall-clock of the solver (device
    synchronised); history: the solver's or the net's own history; curve_*:
    the relative error against iteration and time, for plots; net: the trained
    SymNMFNet (solver "net" only); modularity: the labels' modularity on A
    (`symnmf.metrics.modularity`); start: the kept start (n_init > 1); start_modularity:
    with n_init > 1, the modularity of every start's labels (the kept start's is the highest);
    scale: A was factorised as A / scale and U multiplied by sqrt(scale) (`similarity_scale`; 1.0
    for normalised graphs), so history, curves and the net are those of A / scale.
    node_order: the renumbering of A's nodes the fit ran on ("rcm", "degree" or None); U, labels and the
    net's weights are in A's own numbering either way. order_seconds: wall-clock of that renumbering (not in
    seconds).
    """

    method: str
    U: torch.Tensor
    labels: np.ndarray
    rel_error: float
    reconstruction_err: float
    n_iter: int
    converged: bool
    seconds: float
    history: dict = field(default_factory=dict)
    curve_iter: list = field(default_factory=list)
    curve_rel_error: list = field(default_factory=list)
    curve_time: list = field(default_factory=list)
    net: object = None
    modularity: float = float("nan")
    start: int = 0
    start_modularity: list = field(default_factory=list)
    scale: float = 1.0
    node_order: object = None
    order_seconds: float = 0.0


# ----------------------------------------------------------------- settings
def similarity_scale(A, iters=30):
    """The scale the solvers see A at: ||A||_2 (power iteration), or exactly 1.0 when that is within SCALE_TOL of 1.

    The classical solvers' constants come from their papers, which fit normalised graphs
    D^{-1/2} W D^{-1/2} (largest eigenvalue 1, as every graph `similarity_graph` builds):
    Kuang's penalty max(A)^2 has the units of A squared where the penalty term needs those of A,
    and PGD's Armijo search starts from a unit step. So a fit on c A is not the fit on A scaled:
    on sklearn's digits graph, SymANLS scored ACC 0.81 at c = 1, 0.73 at c = 0.5 and 0.76 at c = 2,
    and SymHALS ran into its iteration cap at c = 100 (docs/design.md, "Numerics and robustness").
    `fit_affinity` therefore divides A by this scale, fits, and multiplies the factor by its square
    root, so that U(c A) = sqrt(c) U(A).
    The power iteration (`symnmf.net.spectral_norm`) divides each product by max(A), so that no scale
    of a float32 A over- or underflows, and it never copies A.
    """
    from .net import spectral_norm

    values = A.values() if A.layout != torch.strided else A
    top = float(values.max()) if values.numel() else 0.0
    if not (top > 0 and math.isfinite(top)):  # zero, NaN or Inf: the caller's checks refuse such an A
        return 1.0
    return snapped_scale(float(spectral_norm(A, iters, unit=top)))


def snapped_scale(s):
    """s, or exactly 1.0 when it is within SCALE_TOL of 1 (a graph normalised to largest eigenvalue 1)."""
    return 1.0 if abs(s - 1.0) <= SCALE_TOL else s


def scaled_similarity(A, scale):
    """A / scale; a sparse A keeps its index tensors (only the values are new). Divided, not multiplied by
    1 / scale: for an A of subnormal scale 1 / scale overflows A's dtype (and 0 * inf is NaN)."""
    if A.layout == torch.strided:
        return A / scale
    with warnings.catch_warnings():  # torch's "sparse CSR is beta" notice
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(A.crow_indices(), A.col_indices(), A.values() / scale, A.shape,
                                       check_invariants=False)


def resolve_device(device=None, X=None):
    """device as a torch.device; None: a torch input's device, else CUDA when available, else the CPU."""
    if device is not None:
        return check_device(device)
    if isinstance(X, torch.Tensor):
        return X.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype):
    """None, torch.float32 / float64 or their names, as None or a torch dtype."""
    if dtype is None or dtype in (torch.float32, torch.float64):
        return dtype
    names = {"float32": torch.float32, "float64": torch.float64, "auto": None}
    if isinstance(dtype, str) and dtype in names:
        return names[dtype]
    raise ValueError(f"dtype must be torch.float32, torch.float64 or None, got {dtype!r}")


def _input_dtype(X):
    """The precision of a fit on X when none is asked for: float32 input stays float32, anything
    else is float64 (scikit-learn's conversion of integer and other input)."""
    dtype = getattr(X, "dtype", None)
    if dtype in (torch.float32, np.float32) or (dtype is not None and str(dtype) == "float32"):
        return torch.float32
    return torch.float64


def default_threads(n, rank, device, problems=1):
    """The thread count of a fit: None (leave torch's setting) off the CPU or for a large problem, else 1.

    problems: how many factors of n x rank every op works on at once (SymNMF-Net's restarts).
    """
    if torch.device(device).type != "cpu":
        return None
    return 1 if n * rank * problems < SMALL_PROBLEM else None


def _net_restarts(recipe, net_options):
    """The restarts SymNMF-Net trains side by side with this recipe and these overrides."""
    from .net import RECIPES

    restarts = (net_options or {}).get("n_restarts")
    if restarts is None:
        restarts = RECIPES.get(recipe, {}).get("n_restarts", 1)
    return restarts if isinstance(restarts, int) and restarts > 0 else 1


@contextlib.contextmanager
def thread_limit(threads):
    """torch's CPU thread count set to `threads` inside the block (None: unchanged), restored after it."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def unchanged_on_error(fit):
    """An estimator's fit that leaves the estimator as it was when it raises.

    A refit that is refused, or interrupted, after it has set some of its attributes (n_features_in_ by the input
    check, a history by the training) would otherwise leave a mix of two fits: the previous fit's factors read
    against the new input's width. The fits replace their attributes rather than change them in place, so a
    shallow copy of the instance's fields is enough to put the previous fit back.
    """
    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        before = dict(vars(self))
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            vars(self).clear()
            vars(self).update(before)
            raise

    return wrapper


def show_progress(verbose=False):
    """Whether to draw a progress bar: verbose, or stderr is a terminal."""
    if verbose:
        return True
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def _progress_bar(total, description, show):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, leave=False, file=sys.stderr)


# ----------------------------------------------------------------- affinity
def build_affinity(X, affinity="nearest_neighbors", *, n_neighbors=None, metric="euclidean", device=None,
                   dtype=None, return_graph=False, neighbors="auto"):
    """The similarity to factorise, checked once: a torch dense or sparse CSR tensor on device.

    affinity "nearest_neighbors": X holds features (n_samples, n_features), and
    the similarity is Kuang's normalised self-tuning kNN graph
    (`symnmf.similarity_graph`); "precomputed": X is the similarity itself.
    Raises ValueError for a non-square, asymmetric, negative, non-finite or
    all-zero similarity. return_graph: also return the graph's GraphScales and
    features as used (for embedding new samples), or None for "precomputed".
    neighbors: the neighbour search of `similarity_graph` ("auto", "exact" or "faiss").
    """
    if affinity not in AFFINITIES:
        raise ValueError(f"affinity must be one of {AFFINITIES}, got {affinity!r}")
    device = resolve_device(device, X)
    dtype = resolve_dtype(dtype)
    if dtype is None:
        dtype = _input_dtype(X)
    graph = None
    if affinity == "precomputed":
        shape = tuple(np.shape(X))  # array-likes too (nested lists); a tensor's or scipy matrix's own shape
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(
                f"affinity='precomputed' needs a square (n_samples, n_samples) similarity matrix, got shape "
                f"{shape}; for feature vectors use affinity='nearest_neighbors'"
            )
        A = check_similarity(as_similarity(X, device=device, dtype=dtype), name="the precomputed affinity")
    else:
        from .graph import similarity_graph

        A, scales, used = similarity_graph(X, n_neighbors=n_neighbors, metric=metric, device=device, dtype=dtype,
                                           return_scales=True, neighbors=neighbors)
        graph = (scales, used)
        values = A.values()
        if not bool((values != 0).any()):
            raise ValueError(
                "the kNN similarity graph of the features is all zero: no two samples are similar "
                f"(metric={metric!r}; all-zero feature rows have no cosine similarity), nothing to cluster"
            )
    return (A, graph) if return_graph else A


# ---------------------------------------------------------------------- fit
def sync_device(device):
    """Wait for the device's queued work (CUDA), so that a wall-clock time covers it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _frob2(A):
    return float(A.values().double().pow(2).sum()) if A.layout != torch.strided else float(A.double().pow(2).sum())


def _scalar(value):
    """A history entry as a float (the net records one value per problem as a list)."""
    if isinstance(value, (list, tuple)):
        return float(np.mean(value))
    return float(value)


def _fit_net(A, rank, seed, epochs, tol, verbose, net_options, recipe):
    """Train SymNMF-Net on A by `recipe` (restarts batched, one kept, see `symnmf.net.fit_net`);
    returns (U, net, n_iter, converged, history)."""
    from .net import fit_net

    options = {k: v for k, v in (net_options or {}).items() if v is not None}
    # epochs and tol are recipe keys too: max_iter and tol, where given, set them
    for key, value in (("epochs", epochs), ("tol", tol)):
        if value is not None:
            if key in options and options[key] != value:
                given_as = "max_iter" if key == "epochs" else key
                raise ValueError(f"the net's {key} is given twice ({value!r} as {given_as} and {options[key]!r} in "
                                 "net_options): give one")
            options[key] = value
    # A comes at the scale `fit_affinity` chose: scale=1.0 trains it as it is, without a second estimate
    result = fit_net(A, rank, recipe=recipe, random_state=seed, verbose=verbose, scale=1.0, **options)
    converged = result.n_iter < result.settings["epochs"]  # stopped before the cap: by its plateau rule
    return result.U, result.net, int(result.n_iter), bool(converged), result.net.history_


def _fit_starts(A, rank, solver, seed, max_iter, tol, lam, n_init, verbose):
    """A classical solver from n_init Kuang starts of the seed (start 0 is the one-start fit's), the start whose
    labels have the highest modularity on A kept (SymNMF-Net's rule for its restarts); SymHALS runs the starts
    side by side. Returns (U, n_iter, converged, history, the kept start, every start's modularity)."""
    from .solvers import SOLVERS as _FUNCTIONS
    from .solvers.hals import hals_restarts

    U0 = init_factor(A, rank, make_generator(seed), batch_shape=(n_init,))
    if solver == "hals" and lam != "zhu":  # "zhu" depends on the start: one run per start
        results = hals_restarts(A, U0, lam=lam, max_iter=max_iter, tol=tol, verbose=verbose)
    else:
        results = [_FUNCTIONS[solver](A, U0[k], lam=lam, max_iter=max_iter, tol=tol, verbose=verbose)
                   for k in range(n_init)]
    scores = [float(q) for q in modularity(A, torch.stack([result.U.argmax(-1) for result in results]), rank)]
    kept = int(first_best(scores))  # of starts at one partition (equal up to rounding), the first
    result = results[kept]
    return result.U.detach(), int(result.n_iter), bool(result.converged), result.history, kept, scores


def _fit_solver(A, rank, solver, seed, max_iter, tol, lam, progress, verbose):
    from .solvers import SOLVERS as _FUNCTIONS

    U0 = init_factor(A, rank, make_generator(seed))
    bar = _progress_bar(max_iter, SOLVER_NAMES[solver], progress)

    def callback(iteration, U, history):
        if bar is not None:
            bar.update(iteration - bar.n)
            bar.set_postfix(E=f"{history['rel_error'][-1]:.5g}", refresh=False)
        return False

    try:
        result = _FUNCTIONS[solver](A, U0, lam=lam, max_iter=max_iter, tol=tol, callback=callback, verbose=verbose)
    finally:
        if bar is not None:
            bar.close()
    return result.U.detach(), int(result.n_iter), bool(result.converged), result.history


def fit_affinity(A, rank, solver="hals", *, random_state=None, max_iter=None, tol=None, lam=None,
                 net_options=None, recipe=DEFAULT_RECIPE, threads="auto", progress=None, verbose=False, n_init=1,
                 node_order="auto"):
    """Factorise a similarity A from `build_affinity` at `rank` with one solver; a FitResult.

    solver: "net" (SymNMF-Net) or a classical solver of `symnmf.solvers`.
    random_state: None, an int or a numpy RandomState / Generator; the same int
      gives every solver and the net the same Kuang start.
    max_iter: iterations of a classical solver (default `DEFAULT_MAX_ITER`) or
      the most Adam steps of the net (default: the recipe's). tol: the solver's
      stopping tolerance (None: its own default; for the net, the recipe's plateau rule).
    lam: ANLS/HALS penalty, ADMM's rho, or the net's initial lam.
    net_options: SymNMF-Net settings that override the recipe's (n_layers, beta, mu, lr,
      relative_lr, or any other key of `symnmf.net.RECIPES`); None keeps the recipe's.
    recipe: SymNMF-Net's training recipe, "default" (chosen in docs/symnmf_net_study.md:
      4 restarts, each finished by SymHALS, the one whose labels have the highest modularity on X kept) or
      "paper" (the paper's settings).
    threads: "auto" (`default_threads`), None or 0 (leave torch's setting) or a positive int.
    progress: draw a bar (None: `show_progress(verbose)`).
    n_init: classical solvers: random starts (start 0 is the one-start fit's); the start whose labels have
      the highest modularity on A is kept, the rule SymNMF-Net keeps its restarts by, and
      `FitResult.start_modularity` holds every start's. SymHALS runs them side by side; the others one
      after another, without a progress bar. The net takes 1 (its restarts are the recipe's n_restarts).
    node_order: "auto" (renumber a sparse CPU graph of `AUTO_ORDER_MIN_NODES` nodes or more by reverse
      Cuthill-McKee, when `AUTO_ORDER_COPIES` copies of it fit in the memory available), "rcm" or "degree"
      (`symnmf_kernels.sparse.locality_order`; a sparse A only), or None. The fit runs on the renumbered graph
      from the start drawn in A's numbering; the result is mapped back.
    A is not checked again: build it with `build_affinity`.
    """
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be the torch tensor that build_affinity returns, got {type(A).__name__}; "
                        "call build_affinity(A, 'precomputed') (or 'nearest_neighbors' for features) first")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init must be a positive int, got {n_init!r}")
    if solver == "net" and n_init != 1:
        raise ValueError("n_init applies to the classical solvers; SymNMF-Net's restarts are its recipe's n_restarts "
                         "(net_options={'n_restarts': N})")
    if max_iter is not None and not (is_int(max_iter) and max_iter >= 0):
        raise ValueError(f"max_iter must be a non-negative int or None (the solver's default, the recipe's epochs for "
                         f"the net), got {max_iter!r}")
    if threads not in ("auto", None) and not (is_int(threads) and threads >= 0):
        raise ValueError(f'threads must be "auto", None or an int >= 1 (0 and None: torch\'s own setting), '
                         f"got {threads!r}")
    check_penalty(lam)
    if solver == "net":
        check_penalty((net_options or {}).get("lam"), "net_options['lam']")
    n = A.shape[-1]
    rank = check_rank(rank, n)
    device = A.device
    if threads == "auto":
        # the factors every op works on: the net's restarts, SymHALS's starts side by side
        problems = _net_restarts(recipe, net_options) if solver == "net" else n_init if solver == "hals" else 1
        threads = default_threads(n, rank, device, problems)
    if progress is None:
        progress = show_progress(verbose)
    if max_iter is None and solver != "net":
        max_iter = DEFAULT_MAX_ITER[solver]
    seed = as_seed(random_state)
    net = None
    kept_start, start_modularity = 0, []
    order = resolve_node_order(node_order, A)
    perm, order_seconds = None, 0.0
    with thread_limit(threads), contextlib.ExitStack() as renumbered:
        if order is not None:
            from symnmf_kernels.sparse import locality_order, permute

            sync_device(device)
            t0 = time.perf_counter()
            perm = locality_order(A, order)
            A = permute(A, perm).to_torch()
            sync_device(device)
            order_seconds = time.perf_counter() - t0
            renumbered.enter_context(renumbered_start(perm))
        # The fit runs on A / scale (`similarity_scale`); a penalty given as a number is in A's units.
        scale = similarity_scale(A)
        if scale != 1.0:
            A = scaled_similarity(A, scale)
            lam = _per_scale(lam, scale)
        sync_device(device)
        start = time.perf_counter()
        if solver == "net":
            options = dict(net_options or {})
            if lam is not None:
                options["lam"] = lam
            elif "lam" in options:
                options["lam"] = _per_scale(options["lam"], scale)
            epochs = None if max_iter is None else int(max_iter)
            U, net, n_iter, converged, history = _fit_net(A, rank, seed, epochs, tol, verbose, options, recipe)
            curve_iter = [int(e) for e in history.get("epoch", [])]
            curve_rel = [_scalar(v) for v in history.get("relative_error", [])]
        else:
            if n_init > 1:
                U, n_iter, converged, history, kept_start, start_modularity = _fit_starts(
                    A, rank, solver, seed, int(max_iter), tol, lam, int(n_init), verbose)
            else:
                U, n_iter, converged, history = _fit_solver(A, rank, solver, seed, int(max_iter), tol, lam, progress,
                                                            verbose)
            curve_rel = [float(v) for v in history.get("rel_error", [])]
            curve_iter = [int(i) for i in history.get("iteration", range(len(curve_rel)))]
        sync_device(device)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            err2 = max(float(sk.sym_loss(A, U)), 0.0)
    # Errors and modularity on the A the solver saw: the same numbers, and no overflow of A's own scale.
    a2 = _frob2(A)
    labels = U.argmax(dim=-1).cpu().numpy()
    # the kept start's modularity was computed to keep it
    quality = start_modularity[kept_start] if start_modularity else modularity(A, labels, rank)
    if perm is not None:  # back to A's own numbering: row i of the fit's U is node perm[i]
        rows = torch.argsort(perm).to(U.device)
        U = U.index_select(-2, rows)
        labels = labels[rows.cpu().numpy()]
        if net is not None:
            _renumber_net(net, rows)
    if scale != 1.0:
        U = U * math.sqrt(scale)
    return FitResult(
        method=solver, U=U, labels=labels, rel_error=err2 / a2, modularity=quality,
        reconstruction_err=float(np.sqrt(err2)) * scale, n_iter=n_iter, converged=converged, seconds=seconds,
        history=history, curve_iter=curve_iter, curve_rel_error=curve_rel,
        curve_time=[float(t) for t in history.get("time", [])], net=net, start=kept_start,
        start_modularity=start_modularity, scale=scale, node_order=order, order_seconds=order_seconds,
    )


def resolve_node_order(node_order, A):
    """The renumbering a fit of A runs on: "rcm", "degree" or None (see `NODE_ORDERS`)."""
    if node_order not in NODE_ORDERS:
        raise ValueError(f"node_order must be one of {NODE_ORDERS}, got {node_order!r}")
    sparse = A.layout != torch.strided
    if node_order == "auto":
        large = sparse and A.is_cpu and A.shape[-1] >= AUTO_ORDER_MIN_NODES
        return "rcm" if large and AUTO_ORDER_COPIES * _graph_bytes(A) <= _available_memory() else None
    if node_order is not None and not sparse:
        raise ValueError(f"node_order={node_order!r} renumbers the nodes of a sparse graph so that its products "
                         "gather nearby rows; a dense similarity gains nothing from it: pass node_order=None")
    return node_order


def _graph_bytes(A):
    """Bytes of a sparse A's index and value arrays (CSR, as `build_affinity` makes it; else two int64 indices an
    entry)."""
    if A.layout == torch.sparse_csr:
        return sum(t.numel() * t.element_size() for t in (A.crow_indices(), A.col_indices(), A.values()))
    return A._nnz() * (A.dtype.itemsize + 16)


def _available_memory():
    """Physical memory still available to this process, in bytes (unbounded where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - a system without these sysconf names
        return float("inf")


def _renumber_net(net, rows):
    """The trained net's node-indexed state (U_0 and the weights P_i) with its rows taken in the order rows."""
    with torch.no_grad():
        net.U0 = net.U0.index_select(-2, rows)
        for P in net.P:
            P.data = P.data.index_select(-2, rows)


def check_penalty(lam, name="lam"):
    """A penalty given as a number, checked as the caller gave it: the fit divides it by the graph's scale
    (`_per_scale`), after which a bad value would be reported as another number. Strings and None are the
    solvers' own to check."""
    if _is_number(lam):
        check_lam(lam, name)


def _is_number(value):
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def _per_scale(lam, scale):
    """A penalty given as a number, in A's units, for the fit on A / scale; a named rule as it is."""
    return lam / scale if _is_number(lam) else lam
