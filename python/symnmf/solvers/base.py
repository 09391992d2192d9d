"""What every SymNMF solver shares: the result type, the initial factor, the problem
wrapper (products with X, losses, projected gradients) and the stopping monitor.

Every solver minimises f(U) = ||X - U U^T||_F^2 over U >= 0 (ANLS and HALS
through the penalised two-factor form) and stops when its projected-gradient
norm falls below tol times its value at the start, or after max_iter
iterations. The monitor checks that criterion every `check_every` iterations:
reading a norm back to the host synchronises with the device, so on CUDA the
solvers that need no other synchronisation check every few iterations.
"""
import contextlib
import contextvars
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import symnmf_kernels as sk
from symnmf_kernels.ops._common import dot64

from ..validation import is_int

__all__ = [
    "SolverResult", "init_factor", "Problem", "Monitor", "projected_gradient_sq", "make_generator", "as_seed",
    "renumbered_start", "draw_node_rows",
]

# The renumbering of the graph being fitted (see `renumbered_start`), or None.
_START_ROWS = contextvars.ContextVar("symnmf_start_rows", default=None)


@contextlib.contextmanager
def renumbered_start(perm):
    """Within the block, random starts are drawn in a graph's original node numbering and their rows taken in
    the order perm (node perm[i] of the original graph is node i of the renumbered one, as
    `symnmf_kernels.sparse.permute` numbers it). A fit of the renumbered graph then starts where the fit of the
    original would, rows renumbered, and ends at the same factor up to rounding."""
    token = _START_ROWS.set(perm)
    try:
        yield
    finally:
        _START_ROWS.reset(token)


def draw_node_rows(draw, shape, generator, dtype, device):
    """draw(shape) of a torch random function (torch.rand, torch.randn) whose dimension -2 runs over the nodes:
    from `generator` on its own device, moved to device; rows renumbered inside `renumbered_start`."""
    gen_device = generator.device if generator is not None else device
    out = draw(shape, generator=generator, dtype=dtype, device=gen_device)
    perm = _START_ROWS.get()
    if perm is not None:
        if perm.shape != (shape[-2],):
            raise ValueError(f"the start's renumbering has {perm.shape[0]} nodes, the graph {shape[-2]}")
        out = out.index_select(-2, perm.to(out.device))
    return out.to(device)


@dataclass
class SolverResult:
    """Outcome of a solver run.

    U: the n x r non-negative factor.
    history: dict of equally long lists, one entry per check of the stopping
      criterion (every iteration unless `check_every` says otherwise):
      "iteration" (iterations done), "objective" (||X - U U^T||_F^2 of the
      returned factor), "rel_error" (objective / ||X||_F^2), "pg_norm" (the
      projected-gradient norm the stopping rule uses) and "time" (seconds since
      the solver started, measured after synchronising the device).
    n_iter: iterations done.
    converged: whether the projected-gradient tolerance was met.
    params: the settings used (lam, tol, max_iter, ...), defaults filled in.
    """

    U: torch.Tensor
    history: dict
    n_iter: int
    converged: bool
    params: dict = field(default_factory=dict)


def as_seed(random_state):
    """An int seed from sklearn-style random_state: None (numpy's global random state, as in
    scikit-learn), an int (itself, within the range a torch generator takes), or a numpy RandomState /
    Generator (one draw from it)."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if not -2**63 <= int(random_state) < 2**64:
            raise ValueError(f"random_state must be an int in [-2**63, 2**64 - 1], got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if random_state is None or isinstance(random_state, np.random.RandomState):
        from sklearn.utils import check_random_state

        return int(check_random_state(random_state).randint(0, 2**31 - 1))
    raise TypeError(
        f"random_state must be None, an int, a numpy RandomState/Generator or a torch.Generator, "
        f"got {type(random_state).__name__}"
    )


def make_generator(random_state):
    """A torch.Generator from random_state: a torch.Generator is used as is, anything else
    seeds a CPU generator with `as_seed(random_state)` (the same int gives the same start on
    every device, for every solver and for SymNMF-Net)."""
    if isinstance(random_state, torch.Generator):
        return random_state
    return torch.Generator().manual_seed(as_seed(random_state))


def _values(X):
    return X.values() if X.layout != torch.strided else X


def init_factor(X, rank, generator=None, *, batch_shape=()):
    """Kuang et al.'s random start U_0 = 2 sqrt(mean(X) / r) * rand(..., n, r).

    The scale makes the entries of U_0 U_0^T match the mean of X; the mean runs
    over all n^2 entries of X, stored or not, for sparse X too. X is dense
    (..., n, n) (leading dimensions: independent problems, each with its own
    mean) or sparse (n, n); batch_shape adds leading dimensions in front
    (restarts). The uniform draws come from `generator` on its own device (a CPU
    generator gives the same start on every device) and move to X's device and
    dtype. This is the one random start of the package: the solvers and
    SymNMF-Net draw theirs here.
    """
    n = X.shape[-1]
    if X.layout != torch.strided:
        mean = X.values().sum() / (n * n)
        problems = ()
    else:
        mean = X.sum((-2, -1)) / (n * n)
        problems = tuple(X.shape[:-2])
    scale = 2 * torch.sqrt(torch.clamp(mean, min=0) / rank)
    U = draw_node_rows(torch.rand, (*batch_shape, *problems, n, rank), generator, X.dtype, X.device)
    return U * scale[..., None, None]


def projected_gradient_sq(grad, U):
    """Squared norm of the projected gradient: grad where U > 0, min(grad, 0) where U = 0 (NaN stays NaN)."""
    return sk.projected_gradient_sq(grad, U)


class Problem:
    """X with the products and losses the solvers need.

    matmul(U) = X U through sk.spmm for sparse X (dense: X @ U). loss(U, XU)
    is ||X - U U^T||_F^2: when X U is at hand (every solver needs it for its
    gradient anyway) it is ||X||^2 - 2 <X U, U> + ||U^T U||^2 and costs no pass
    over X; otherwise sk.sym_loss.
    """

    def __init__(self, X):
        if X.dim() != 2:
            raise ValueError(f"the solvers take one n x n similarity matrix, got shape {tuple(X.shape)}")
        self.X = X
        self.sparse = X.layout != torch.strided
        self.n = X.shape[-1]
        self.dtype = X.dtype
        self.device = X.device
        self.norm_sq = _values(X).double().pow(2).sum()

    def matmul(self, U):
        return sk.spmm(self.X, U) if self.sparse else self.X @ U

    def loss(self, U, XU=None, G=None):
        """||X - U U^T||^2, from X U and U^T U where the caller has them."""
        if XU is None:
            return sk.sym_loss(self.X, U)
        G = sk.gram(U, 0.0) if G is None else G
        # The three terms nearly cancel near a good fit: sum them in float64. X U and U^T U in float32 still carry
        # float32 rounding, which at an exact fit can make the sum a little negative: it is 0 to that rounding.
        return (self.norm_sq - 2 * dot64(XU[None], U[None])[0] + G.double().pow(2).sum()).clamp_min(0)

    def dense(self):
        return self.X.to_dense() if self.sparse else self.X

    def spectral_norm(self, iters=50):
        """||X||_2 by power iteration from the all-ones vector (X >= 0: the Perron root), a float."""
        v = torch.ones((self.n, 1), dtype=self.dtype, device=self.device)
        v = v / v.norm()
        est = v.new_zeros(())
        for _ in range(iters):
            w = self.matmul(v)
            est = w.norm()
            v = w / torch.clamp(est, min=torch.finfo(self.dtype).tiny)
        return float(est)


def default_check_every(device, syncs_anyway):
    """1 where checking is free (CPU, or a solver that synchronises every iteration anyway), else 10."""
    return 1 if (syncs_anyway or torch.device(device).type != "cuda") else 10


class Monitor:
    """Records the history and applies the stopping rule at check points.

    due(it) says whether iteration count `it` is a check point (every
    check_every iterations, and at max_iter). check(it, U, objective, pg_sq)
    reads the two scalars back (one host synchronisation), records them, calls
    the callback and returns True when the solver should stop: the
    projected-gradient norm is at most tol times the first one, max_iter is
    reached, or the callback returned True (then stopped_by_callback is True).
    """

    def __init__(self, name, problem, tol, max_iter, check_every, callback=None, verbose=False):
        if not (is_int(max_iter) and max_iter >= 0):
            raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
        if isinstance(tol, bool) or not (isinstance(tol, numbers.Real) and tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be a non-negative finite float, got {tol!r}")
        if not (is_int(check_every) and check_every >= 1):
            raise ValueError(f"check_every must be a positive int, got {check_every!r}")
        self.name = name
        self.problem = problem
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.check_every = int(check_every)
        self.callback = callback
        self.verbose = verbose
        self.history = {"iteration": [], "objective": [], "rel_error": [], "pg_norm": [], "time": []}
        self.pg0 = None
        self.converged = False
        self.stopped_by_callback = False
        self.n_iter = 0
        self._norm_sq = float(problem.norm_sq)
        self._start = time.perf_counter()

    def due(self, it):
        return it % self.check_every == 0 or it >= self.max_iter

    def check(self, it, U, objective, pg_sq):
        if self.problem.device.type == "cuda":
            torch.cuda.synchronize(self.problem.device)
        elapsed = time.perf_counter() - self._start
        pg = math.sqrt(max(float(pg_sq), 0.0))
        obj = float(objective)
        rel = obj / self._norm_sq if self._norm_sq > 0 else float("nan")
        if self.pg0 is None:
            self.pg0 = pg
        h = self.history
        h["iteration"].append(int(it))
        h["objective"].append(obj)
        h["rel_error"].append(rel)
        h["pg_norm"].append(pg)
        h["time"].append(elapsed)
        self.n_iter = int(it)
        if self.verbose:
            print(f"{self.name}: iteration {it:5d}  rel_error {rel:.6e}  pg_norm {pg:.3e}  {elapsed:8.3f} s")
        if not math.isfinite(pg) or not math.isfinite(obj):
            raise FloatingPointError(
                f"{self.name} diverged at iteration {it} (objective {obj}, projected gradient {pg}); "
                "check X's scale or use float64"
            )
        self.converged = pg <= self.tol * self.pg0
        stop = self.converged or it >= self.max_iter
        # a copy: SymHALS updates its factor in place, and a U kept by the callback would change under it
        if self.callback is not None and self.callback(it, U.detach().clone(), h):
            stop = self.stopped_by_callback = True
        return stop

    def record_last(self, it, U, objective, pg_sq):
        """Record iteration `it` unless it already is the last entry (for a solver that stops early)."""
        if not self.history["iteration"] or self.history["iteration"][-1] != it:
            self.check(it, U, objective, pg_sq)

    def result(self, U, **params):
        params.update(tol=self.tol, max_iter=self.max_iter, check_every=self.check_every)
        return SolverResult(U=U, history=self.history, n_iter=self.n_iter, converged=self.converged, params=params)


def check_lam(lam, name="lam"):
    """lam as a positive float, or a clear error."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive float, got {type(lam).__name__}")
    lam = float(lam)
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"{name} must be a positive finite float, got {lam}")
    return lam


def max_entry_penalty(problem):
    """Kuang et al.'s default penalty for the two-factor form: max(X)^2 (1 for X = 0)."""
    top = float(_values(problem.X).max()) if _values(problem.X).numel() else 0.0
    return top * top if top > 0 else 1.0


def penalty(lam, problem, U0, XU0=None):
    """The penalty lam of the two-factor form: a positive float, "kuang" (max(X)^2) or "zhu" (see below)."""
    if isinstance(lam, str):
        if lam == "kuang":
            return max_entry_penalty(problem)
        if lam == "zhu":
            return symmetry_penalty(problem, U0, XU0)
        raise ValueError(f'lam must be a positive float, "kuang" or "zhu", got {lam!r}')
    return check_lam(lam)


def symmetry_penalty(problem, U0, XU0=None):
    """Zhu et al.'s sufficient penalty for the two-factor form: 1/2 (||X||_2 + ||X - U0 U0^T||_F).

    With lam above it, ANLS and HALS on ||X - W V^T||^2 + lam ||W - V||^2 started
    from W = V = U0 converge to W = V, a critical point of SymNMF (Zhu, Li, Liu,
    Li, NeurIPS 2018, Theorem 2). ||X||_2 comes from a power iteration.
    """
    return 0.5 * (problem.spectral_norm() + math.sqrt(max(float(problem.loss(U0, XU0)), 0.0)))
