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
import torch


def objective_change(S, XS, H, XH, G):
    """f(H + S) - f(H) for f(H) = ||X - H H^T||_F^2, from XS = X S, XH = X H and G = H^T H."""
    SH = S.mT @ H
    delta = SH + SH.mT + S.mT @ S
    return -4 * (S * XH).sum() - 2 * (S * XS).sum() + 2 * (G * delta).sum() + delta.pow(2).sum()


def armijo_projected(problem, H, XH, G, grad, direction, *, sigma=0.1, beta=0.1, max_trials=30):
    """Returns (H_new, X H_new, accepted). Not accepted after max_trials: (H, X H, False)."""
    a = 1.0
    for _ in range(max_trials):
        Hn = torch.clamp(H - a * direction, min=0)
        XHn = problem.matmul(Hn)
        S = Hn - H
        if bool(objective_change(S, XHn - XH, H, XH, G) <= sigma * (grad * S).sum()):
            return Hn, XHn, True
        a *= beta
    return H, XH, False
