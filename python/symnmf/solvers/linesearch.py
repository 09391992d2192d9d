"""Armijo backtracking along the projection arc (Kuang, Yun, Park 2015), shared by PGD and SymNewton.

Trial points H(a) = max(H - a D, 0) for a = 1, beta, beta^2, ...; the first
with f(H(a)) - f(H) <= sigma <grad, H(a) - H> is taken. Each trial costs one
product with X, which the accepted point hands on to the next gradient, and
one host synchronisation for the test.

The decrease is computed from the step S = H(a) - H itself,

    f(H + S) - f(H) = -4 <S, X H> - 2 <S, X S> + 2 <G, Delta> + ||Delta||^2,
    G = H^T H,  Delta = S^T H + H^T S + S^T S,

rather than as a difference of two objectives: those are of the size of
||X||^2 and agree to many digits near a solution, so in float32 their
difference drowns in rounding long before the tolerance is met.
"""
import math
import numbers

import torch

from ..validation import is_int


def check_search(sigma, beta, max_trials, **counts):
    """Refuse settings of the search that cannot work: a sigma outside (0, 1) accepts every trial or none, a beta
    of 0 tries a zero step (the search then ran to max_iter without moving) and one of 1 or more never shrinks
    it. counts: other settings that must be positive ints (max_trials too), by name."""
    for name, value in (("sigma", sigma), ("beta", beta)):
        if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(value) and 0 < value < 1):
            raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    for name, value in {"max_trials": max_trials, **counts}.items():
        if not (is_int(value) and value >= 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def objective_change(S, XS, H, XH, G):
    """f(H + S) - f(H) for f(H) = ||X - H H^T||_F^2, from XS = X S, XH = X H and G = H^T H."""
    SH = S.mT @ H
    delta = SH + SH.mT + S.mT @ S
    return -4 * (S * XH).sum() - 2 * (S * XS).sum() + 2 * (G * delta).sum() + delta.pow(2).sum()


def armijo_projected(problem, H, XH, G, grad, direction, *, sigma=0.1, beta=0.1, max_trials=30):
    """Returns (H_new, X H_new, accepted). Not accepted after max_trials: (H, X H, False).

    A trial that clips the whole factor to zero is never taken, however much it decreases f: H = 0 is a saddle
    point of ||X - H H^T||^2 (for X >= 0 and not zero, f decreases from it along X's Perron vector) where the
    gradient vanishes, so a solver that stepped there stopped at once, "converged", with the zero factor. A start
    that fits X worse than zero does (f(H) > ||X||^2) made the unit step do so."""
    a = 1.0
    for _ in range(max_trials):
        Hn = torch.clamp(H - a * direction, min=0)
        XHn = problem.matmul(Hn)
        S = Hn - H
        # one host read a trial: the test and the factor's being non-zero together
        if bool((objective_change(S, XHn - XH, H, XH, G) <= sigma * (grad * S).sum()) & Hn.any()):
            return Hn, XHn, True
        a *= beta
    return H, XH, False
