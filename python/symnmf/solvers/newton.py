"""SymNewton: projected Newton-like steps for SymNMF (Kuang, Yun, Park, J. Glob. Optim. 2015).

f(H) = ||X - H H^T||_F^2, grad = 4 (H H^T H - X H), free set
F = {H > 0 or grad <= 0} (the entries a step may move). Each iteration takes
H <- max(H - a D, 0) with the Armijo rule of PGD, for a direction D from one of
two forms:

"exact" (Kuang et al.'s algorithm, for n up to a few thousand): column i of D
solves the block of the Hessian that couples column i with itself,
4 [(H H^T - X) + h_i h_i^T + ||h_i||^2 I] restricted to F's rows of column i,
by Cholesky; a block that is not positive definite, or a direction that is not
one of descent, falls back to the gradient. As in Kuang et al.'s code, a
column's factor is reused while its free set is unchanged, and every column is
refactored every `refactor_every` iterations. Needs X dense (n x n).

"cg" (matrix-free, for large or sparse X): D solves the full Hessian system
restricted to F, P_F H P_F D = P_F grad, by truncated conjugate gradients, with
Hessian-vector products

    H[D] = 4 (D H^T H + H (D^T H + H^T D) - X D)

that cost one product with X (SpMM for sparse X) and n x r x r work. CG stops
at a relative residual eta = min(0.5, sqrt(||P_F grad|| / ||grad_0||)) or at
negative curvature; its scalars stay on the device, and the device is asked
whether CG has finished every `cg_check_every` steps.

method="auto" takes "exact" for n <= EXACT_MAX_N, else "cg".
"""
import torch

import symnmf_kernels as sk

from .base import Monitor, Problem, projected_gradient_sq
from .linesearch import armijo_projected, check_search

DEFAULTS = {"max_iter": 10000, "tol": 1e-4}
EXACT_MAX_N = 1000


class _ExactDirections:
    """Kuang et al.'s per-column Newton directions, with their Cholesky factors cached."""

    def __init__(self, X_dense, r, refactor_every):
        self.X = X_dense
        self.refactor_every = refactor_every
        self.free = None
        self.factors = [None] * r  # per column: (row indices, Cholesky factor or None)

    def __call__(self, H, grad, free, it):
        n, r = H.shape
        eps = torch.finfo(H.dtype).eps
        step = torch.empty_like(grad)
        residual = None  # H H^T - X, formed only when some column is refactored
        for i in range(r):
            S = free[:, i]
            stale = (
                self.factors[i] is None
                or it % self.refactor_every == 0
                or not torch.equal(S, self.free[:, i])
            )
            if stale:
                if residual is None:
                    residual = H @ H.mT - self.X
                idx = S.nonzero().squeeze(1)
                h = H[idx, i]
                block = residual.index_select(0, idx).index_select(1, idx) + torch.outer(h, h)
                block.diagonal().add_(H[:, i] @ H[:, i])
                L, info = torch.linalg.cholesky_ex(4 * block)
                self.factors[i] = (idx, L if int(info) == 0 and idx.numel() > 0 else None)
            idx, L = self.factors[i]
            g = grad[:, i]
            if L is None:
                step[:, i] = g
                continue
            part = torch.zeros_like(g)
            part[idx] = torch.cholesky_solve(g[idx, None], L).squeeze(1)
            # Entries at the bound that the step would push further down stay put.
            part[(part > -eps) & (H[:, i] <= eps)] = 0
            cosine = (g @ part) / (g.norm() * part.norm())
            if bool(cosine > eps):
                step[:, i] = part
            else:
                step[:, i] = g
                self.factors[i] = None  # refactor at the next iteration
        self.free = free.clone()
        return step


def cg_direction(H, G, grad, free, g0_norm, max_iter, check_every, matmul, total=torch.sum, across=None):
    """Truncated CG on P_F Hess P_F d = P_F grad, scalars kept on the device.

    matmul(D) = X D; total(t): the sum of t's entries, and across(M): an r x r matrix summed, over every rank
    of a row-sharded problem (`symnmf.distributed`; in one process the plain sum and nothing).
    """
    mask = free.to(H.dtype)
    b = grad * mask
    mask4 = 4 * mask

    def hess(D):
        # 4 (D G + H (D^T H + H^T D) - X D) on F, in one buffer: a CG step is a few passes over n x r data
        # besides its product with X.
        DtH = D.mT @ H if across is None else across(D.mT @ H)
        return torch.addmm(matmul(D), D, G, alpha=1, beta=-1).addmm_(H, DtH + DtH.mT).mul_(mask4)

    bb = total(b.pow(2))
    b_norm = torch.sqrt(bb)
    eta = torch.clamp(torch.sqrt(b_norm / torch.clamp(g0_norm, min=torch.finfo(H.dtype).tiny)), max=0.5)
    stop_rr = (eta * b_norm) ** 2
    x = torch.zeros_like(b)
    res = b.clone()
    p = b.clone()
    rr = bb
    done = rr <= stop_rr
    zero = torch.zeros((), dtype=H.dtype, device=H.device)
    for j in range(max_iter):
        Ap = hess(p)
        pAp = total(p * Ap)
        negative = (pAp <= 0) & ~done
        if j == 0:
            # Negative curvature along the gradient itself: fall back to the gradient.
            x = torch.where(negative, b, x)
        done = done | negative
        alpha = torch.where(done, zero, rr / torch.where(done, torch.ones_like(pAp), pAp))
        x.addcmul_(alpha, p)
        res.addcmul_(alpha, Ap, value=-1)
        rr_new = total(res.pow(2))
        converged = rr_new <= stop_rr
        beta = torch.where(done | converged, zero, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)))
        p = torch.where(done | converged, p, torch.addcmul(res, beta, p))
        rr = torch.where(done, rr, rr_new)
        done = done | converged
        if (j + 1) % check_every == 0 and bool(done):
            break
    return x


def is_descent(grad, direction, total=torch.sum):
    """Whether <grad, direction> > eps ||grad|| ||direction|| (a 0-d bool tensor); total as in cg_direction."""
    eps = torch.finfo(grad.dtype).eps
    return total(grad * direction) > eps * torch.sqrt(total(grad.pow(2))) * torch.sqrt(total(direction.pow(2)))


def newton(X, U0, *, lam=None, max_iter=None, tol=None, callback=None, verbose=False, check_every=1,
           method="auto", sigma=0.1, beta=0.1, max_trials=30, refactor_every=100, cg_max_iter=50,
           cg_check_every=1):
    """SymNewton from H = U0 on a validated torch similarity X (dense or sparse CSR).

    method: "exact" (Kuang et al.'s per-column Hessian blocks; X is densified),
    "cg" (matrix-free projected Newton-CG) or "auto" (exact for n <= 1000).
    max_iter: default 10000, tol: default 1e-4 (Kuang et al.'s settings).
    cg_check_every: CG steps between checks for CG's end (default 1: a step costs a product with X, and a
      step run after CG's end costs far more than the read-back that would have stopped it).
    """
    if lam is not None:
        raise ValueError("newton has no penalty: leave lam=None (lam is for anls, hals, admm and the net)")
    check_search(sigma, beta, max_trials, refactor_every=refactor_every, cg_max_iter=cg_max_iter,
                 cg_check_every=cg_check_every)
    problem = Problem(X)
    n, r = U0.shape
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_N else "cg"
    if method not in ("exact", "cg"):
        raise ValueError(f"method must be 'auto', 'exact' or 'cg', got {method!r}")
    monitor = Monitor(
        "newton", problem,
        DEFAULTS["tol"] if tol is None else tol,
        DEFAULTS["max_iter"] if max_iter is None else max_iter,
        check_every, callback, verbose,
    )
    exact = _ExactDirections(problem.dense(), r, refactor_every) if method == "exact" else None

    H = U0.clone()
    XH = problem.matmul(H)
    g0_norm = None
    it = 0
    while True:
        G = sk.gram(H, 0.0)
        grad = 4 * (H @ G - XH)
        if g0_norm is None:
            g0_norm = torch.sqrt(grad.pow(2).sum())
        if monitor.due(it) and monitor.check(it, H, problem.loss(H, XH, G), projected_gradient_sq(grad, H)):
            break
        free = (H > 0) | (grad <= 0)
        if exact is not None:
            direction = exact(H, grad, free, it)
        else:
            direction = cg_direction(H, G, grad, free, g0_norm, cg_max_iter, cg_check_every, problem.matmul)
            direction = torch.where(is_descent(grad, direction), direction, grad)
        H, XH, accepted = armijo_projected(
            problem, H, XH, G, grad, direction, sigma=sigma, beta=beta, max_trials=max_trials
        )
        if not accepted:
            monitor.record_last(it, H, problem.loss(H, XH, G), projected_gradient_sq(grad, H))
            break
        it += 1
    return monitor.result(H, solver="newton", method=method, sigma=sigma, beta=beta)
