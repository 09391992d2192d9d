"""Nonconvex splitting ADMM for SymNMF (Lu, Hong, Wang, "A Nonconvex Splitting Method for
Symmetric Nonnegative Matrix Factorization: Convergence Analysis and Optimality",
IEEE Trans. Signal Process. 2017).

SymNMF split as min 1/2 ||X - A Y^T||_F^2 subject to A = Y, Y >= 0, with the
augmented Lagrangian

    L(A, Y; Lam) = 1/2 ||X - A Y^T||^2 + <Lam, Y - A> + rho/2 ||Y - A||^2.

Each iteration:
    A-step, closed form:   A <- (X Y + Lam + rho Y)(Y^T Y + rho I)^{-1}
    Y-step, projected proximal-gradient step on L in Y, with proximal weight
    beta = ||A^T A||_F (at least the Lipschitz constant of Y -> (Y A^T - X) A):
                           Y <- max(0, (rho A + beta Y - Lam - (Y A^T A - X A)) / (rho + beta))
    dual ascent:           Lam <- Lam + rho (Y - A)
Two products with X per iteration (X Y and X A); the r x r inverse goes
through sk.spd_inverse, the rest is elementwise or n x r x r and row-separable.

Returned factor: Y (non-negative). The stopping rule and the history use the
projected gradient and objective of SymNMF, ||X - Y Y^T||^2, at Y.
"""
import torch

import symnmf_kernels as sk

from .base import Monitor, Problem, check_lam, default_check_every, projected_gradient_sq

DEFAULTS = {"max_iter": 1000, "tol": 1e-4}


def default_rho(problem):
    """rho = ||X||_2 / 4.

    The convergence theory asks for a rho well above the curvature of the
    coupling term; on normalised similarity graphs such values converge
    slowly, and rho between ||X||_2 / 10 and ||X||_2 / 2 settles two to four
    times faster while staying stable. rho scales with X, so the choice does
    not depend on X's units. Where r is a large part of n (r = 10 on 20 nodes)
    it can fail to settle: pass a larger rho (||X||_2 / 2 to 2 ||X||_2).
    """
    return 0.25 * max(problem.spectral_norm(), torch.finfo(problem.dtype).tiny)


def admm_step(Y, Lam, XY, GY, rho, matmul, gram):
    """One iteration from Y with X Y = XY and Y^T Y = GY: the new Y, and Lam updated in place.

    matmul(F) = X F and gram(F) = F^T F (over every rank of a row-sharded problem in `symnmf.distributed`).
    Written with in-place and fused operations: the plain formulas make about 14 n x r temporaries an
    iteration, each a pass over memory as large as an SpMM's output.
    """
    eye = torch.eye(GY.shape[0], dtype=GY.dtype, device=GY.device)
    # A = (X Y + Lam + rho Y) (Y^T Y + rho I)^{-1}
    A = torch.add(XY, Y, alpha=rho).add_(Lam) @ sk.spd_inverse(GY + rho * eye)
    XA = matmul(A)
    GA = gram(A)
    beta = GA.norm()
    # Y = max((rho A + beta Y - Lam - (Y A^T A - X A)) / (rho + beta), 0)
    Y_new = torch.addmm(XA, Y, GA, alpha=-1).add_(A, alpha=rho).addcmul_(Y, beta).sub_(Lam)
    Y_new.div_(rho + beta).clamp_(min=0)
    # Lam = Lam + rho (Y - A)
    Lam.add_(Y_new, alpha=rho).sub_(A, alpha=rho)
    return Y_new


def admm(X, U0, *, lam=None, max_iter=None, tol=None, callback=None, verbose=False, check_every=None):
    """ADMM from A = Y = U0, Lam = 0 on a validated torch similarity X (dense or sparse CSR).

    lam: the augmented-Lagrangian penalty rho; default `default_rho`.
    max_iter: default 1000. tol: default 1e-4.
    check_every: iterations between stopping checks (default 1 on CPU, 10 on CUDA).
    """
    problem = Problem(X)
    rho = default_rho(problem) if lam is None else check_lam(lam, "lam (the ADMM penalty rho)")
    monitor = Monitor(
        "admm", problem,
        DEFAULTS["tol"] if tol is None else tol,
        DEFAULTS["max_iter"] if max_iter is None else max_iter,
        default_check_every(X.device, syncs_anyway=False) if check_every is None else check_every,
        callback, verbose,
    )
    Y = U0.clone()
    Lam = torch.zeros_like(Y)
    XY = problem.matmul(Y)
    it = 0
    while True:
        GY = sk.gram(Y, 0.0)
        if monitor.due(it):
            grad = 4 * (Y @ GY - XY)
            if monitor.check(it, Y, problem.loss(Y, XY, GY), projected_gradient_sq(grad, Y)):
                break
        Y = admm_step(Y, Lam, XY, GY, rho, problem.matmul, lambda A: sk.gram(A, 0.0))
        XY = problem.matmul(Y)
        it += 1
    return monitor.result(Y, solver="admm", rho=rho)
