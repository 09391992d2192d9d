"""Projected gradient descent for SymNMF (Kuang, Yun, Park, "SymNMF: nonnegative low-rank
approximation of a similarity matrix for graph clustering", J. Glob. Optim. 2015).

    H <- max(H - a grad, 0),   grad = 4 (H H^T H - X H),

with a from Armijo backtracking on the projection arc (a = 1, beta, beta^2, ...;
sigma = 0.1, beta = 0.1). One iteration costs one product with X per Armijo
trial; the accepted trial's product serves the next gradient and loss.
"""
import symnmf_kernels as sk

from .base import Monitor, Problem, projected_gradient_sq
from .linesearch import armijo_projected, check_search

DEFAULTS = {"max_iter": 10000, "tol": 1e-4}


def pgd(X, U0, *, lam=None, max_iter=None, tol=None, callback=None, verbose=False, check_every=1,
        sigma=0.1, beta=0.1, max_trials=30):
    """PGD from H = U0 on a validated torch similarity X (dense or sparse CSR).

    max_iter: default 10000, tol: default 1e-4 (Kuang et al.'s settings).
    Stops early, not converged, when no Armijo trial in max_trials is accepted
    (the step fell below what the working precision resolves).
    """
    if lam is not None:
        raise ValueError("pgd has no penalty: leave lam=None (lam is for anls, hals, admm and the net)")
    check_search(sigma, beta, max_trials)
    problem = Problem(X)
    monitor = Monitor(
        "pgd", problem,
        DEFAULTS["tol"] if tol is None else tol,
        DEFAULTS["max_iter"] if max_iter is None else max_iter,
        check_every, callback, verbose,
    )
    H = U0.clone()
    XH = problem.matmul(H)
    it = 0
    while True:
        G = sk.gram(H, 0.0)
        grad = 4 * (H @ G - XH)
        if monitor.due(it) and monitor.check(it, H, problem.loss(H, XH, G), projected_gradient_sq(grad, H)):
            break
        H, XH, accepted = armijo_projected(problem, H, XH, G, grad, grad, sigma=sigma, beta=beta, max_trials=max_trials)
        if not accepted:
            monitor.record_last(it, H, problem.loss(H, XH, G), projected_gradient_sq(grad, H))
            break
        it += 1
    return monitor.result(H, solver="pgd", sigma=sigma, beta=beta)
