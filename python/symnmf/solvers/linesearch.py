"""Armijo backtracking along the projection arc (Kuang, Yun, Park 2015), shared by PGD and SymNewton.

Trial points H(a) = max(H - a D, 0) for a = 1, beta, beta^2, ...; the first
with f(H(a)) - f(H) <= sigma <grad, H(a) - H> is taken. Each trial costs one
product with X, which the accepted point hands on to the next gradient, and
one host synchronisation for the test.
"""
import torch


def armijo_projected(problem, H, grad, direction, objective, *, sigma=0.1, beta=0.1, max_trials=30):
    """Returns (H_new, X H_new, f(H_new), accepted). Not accepted after max_trials: H unchanged."""
    a = 1.0
    for _ in range(max_trials):
        Hn = torch.clamp(H - a * direction, min=0)
        XHn = problem.matmul(Hn)
        objn = problem.loss(Hn, XHn)
        if bool(objn - objective <= sigma * (grad * (Hn - H)).sum()):
            return Hn, XHn, objn, True
        a *= beta
    return H, None, objective, False
