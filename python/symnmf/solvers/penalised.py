"""The alternating loop shared by SymANLS and SymHALS on the penalised two-factor form

    ||X - W V^T||_F^2 + lam ||W - V||_F^2,   W, V >= 0.

With B = V^T V + lam I and C = X V + lam V, W's subproblem is
min_{W >= 0} tr(W B W^T) - 2 tr(C^T W) (then V's with the roles swapped): the
solvers differ only in how they update a factor from (B, C), exactly (ANLS) or
by one sweep of coordinate minimisation (HALS).

Each iteration costs two products with X, and everything the stopping rule
needs comes from them: the gradient in W at (W, V) uses the B, C that W's next
update needs, the gradient in V uses the B, C of V's last update, and the
objective of W uses X W from that update.

A small penalty (Kuang et al.'s max(X)^2, the default) can let the pair
converge to a stationary point of the two-factor form with W far from V,
which is no stationary point of SymNMF: on a graph with a strongly negative
eigenvalue (a bipartite one, or the kNN graph of repeated points) W and V
end up nearly orthogonal and ||X - W W^T|| above ||X||. A run that converges
with ||W - V|| above SYMMETRY_GAP ||W|| therefore starts again, once, from
W = V = the better of the two, with Zhu et al.'s penalty at that point, which
guarantees W = V in the limit; its result's params say at which iteration
("symmetric_restart", None where it did not).
"""
import torch

import symnmf_kernels as sk

from .base import Monitor, Problem, penalty, projected_gradient_sq, symmetry_penalty

# ||W - V||_F / ||W||_F above which a converged run has not reached W = V. Converged runs on kNN graphs end
# 6e-5 to 3e-4 apart (digits, iris, wine, breast cancer); one at a two-factor stationary point, about 1.
SYMMETRY_GAP = 1e-2


def alternate(name, X, U0, update, *, lam, max_iter, tol, check_every, callback, verbose):
    """Run update(F, B, XO, O, lam) -> new F alternately on W and V from W = V = U0.

    update gets the factor F to update, B = O^T O + lam I and X O for the other
    factor O, and forms C = X O + lam O itself (HALS's fused sweep never writes
    it out); it may work in place and must return the updated factor.
    lam: a positive float, "kuang" or "zhu" (`base.penalty`).
    Returns the SolverResult of W.
    """
    problem = Problem(X)
    XU0 = problem.matmul(U0)
    lam = penalty(lam, problem, U0, XU0)
    monitor = Monitor(name, problem, tol, max_iter, check_every, callback, verbose)
    return _alternate_from(name, problem, U0, XU0, update, lam, monitor, 0)


def _alternate_from(name, problem, U0, XU0, update, lam, monitor, it, restarted=False):
    """`alternate`'s loop from W = V = U0 (X U0 given) at iteration `it` of `monitor`'s run. With `restarted`
    the run's symmetric restart is behind it, and its check at `it` is already recorded."""
    W = U0.clone()
    V = U0.clone()
    XW = XV = XU0
    # At W = V the penalty's gradient vanishes and V's gradient is that of W.
    pgV_sq = projected_gradient_sq(2 * (V @ sk.gram(V, 0.0) - XV), V)
    first = it
    while True:
        BV = sk.gram(V, lam)
        if monitor.due(it) and not (restarted and it == first):
            # The gradients are 2 (F B - X O - lam O); the factor 2 is applied to the norm (4 = 2^2).
            half_gW = half_gradient(W, BV, XV, V, lam)
            if monitor.check(it, W, problem.loss(W, XW), 4 * projected_gradient_sq(half_gW, W) + pgV_sq):
                if restarted or not monitor.converged or not asymmetric(W, V):
                    break
                monitor.converged = False  # W far from V: not a stationary point of SymNMF
                if it >= monitor.max_iter or monitor.stopped_by_callback:
                    break
                return restart_symmetric(name, problem, *better_factor(problem, W, XW, V, XV), update, monitor, it)
        W = update(W, BV, XV, V, lam)
        XW = problem.matmul(W)
        BW = sk.gram(W, lam)
        V = update(V, BW, XW, W, lam)
        it += 1
        if monitor.due(it):
            pgV_sq = 4 * projected_gradient_sq(half_gradient(V, BW, XW, W, lam), V)
        XV = problem.matmul(V)
    return monitor.result(W, solver=name, lam=lam, symmetric_restart=first if restarted else None)


def asymmetric(W, V):
    """Whether ||W - V|| > SYMMETRY_GAP ||W|| (for one pair; a NaN makes the monitor raise before this)."""
    return bool((W - V).double().pow(2).sum() > SYMMETRY_GAP ** 2 * W.double().pow(2).sum())


def better_factor(problem, W, XW, V, XV):
    """(F, X F) of whichever of W and V fits X better as F F^T."""
    return (W, XW) if problem.loss(W, XW) <= problem.loss(V, XV) else (V, XV)


def restart_symmetric(name, problem, F, XF, update, monitor, it):
    """The run of `monitor`, converged with W far from V at iteration `it`, from W = V = F on, with Zhu et al.'s
    penalty at F, which drives W to V."""
    lam = symmetry_penalty(problem, F, XF)
    if monitor.verbose:
        print(f"{monitor.name}: W and V converged apart at iteration {it}; from W = V again, lam = {lam:.4g}")
    return _alternate_from(name, problem, F, XF, update, lam, monitor, it, restarted=True)


def half_gradient(F, B, XO, O, lam):
    """F B - X O - lam O (half the gradient in F), in one new tensor: the product, then two subtractions in place."""
    g = F @ B
    g.sub_(XO)
    return g.sub_(O, alpha=float(lam))


def alternate_restarts(name, X, U0, update, *, lam, max_iter, tol, check_every, verbose):
    """`alternate` from each of R starts U0 (R, n, r) on one X, side by side.

    Each half-iteration takes one product of X with the factors of every restart still running (one
    SpMM of R r columns instead of R of r) and one batch of Grams; on a GPU the launches no longer grow
    with R. Each restart keeps its own monitor and stops where `alternate` from it alone would stop; it
    then leaves the batch. update(F, B, XO, O, lam) gets (A, n, r) factors and (A, r, r) Grams of the A
    restarts still running, and one (n, r) factor and its (r, r) Gram for a restart that converges with W far
    from V, which goes on alone (`restart_symmetric`). lam: a positive float or "kuang" (max(X)^2, the same for
    every restart; "zhu" depends on the start).
    Returns R SolverResults in the order of U0.
    """
    if U0.dim() != 3:
        raise ValueError(f"U0 must hold R starts of shape (R, n, r), got shape {tuple(U0.shape)}")
    if isinstance(lam, str) and lam == "zhu":
        raise ValueError('lam="zhu" depends on the start; give each restart its own solve, or lam="kuang" or a float')
    problem = Problem(X)
    lam = penalty(lam, problem, None)
    R = U0.shape[0]
    if R == 0:
        return []
    monitors = [Monitor(name if R == 1 else f"{name} (start {k})", problem, tol, max_iter, check_every, None, verbose)
                for k in range(R)]
    results = [None] * R
    running = list(range(R))
    W = U0.clone(memory_format=torch.contiguous_format)
    V = W.clone()
    XV = problem.matmul(V)
    XW = XV
    pgV_sq = [projected_gradient_sq(g, v) for g, v in zip(2 * (V @ sk.gram(V, 0.0) - XV), V)]
    it = 0
    while True:
        BV = sk.gram(V, lam)
        if monitors[running[0]].due(it):  # every monitor has the same check_every and max_iter
            half_gW = half_gradient(W, BV, XV, V, lam)
            stop = [monitors[k].check(it, W[i], problem.loss(W[i], XW[i]),
                                      4 * projected_gradient_sq(half_gW[i], W[i]) + pgV_sq[i])
                    for i, k in enumerate(running)]
            for i, k in enumerate(running):
                if not stop[i]:
                    continue
                if monitors[k].converged and asymmetric(W[i], V[i]):  # see the module's notes
                    monitors[k].converged = False
                    if it < monitors[k].max_iter:  # it goes on alone
                        F, XF = better_factor(problem, W[i], XW[i], V[i], XV[i])
                        results[k] = restart_symmetric(name, problem, F, XF, update, monitors[k], it)
                        continue
                results[k] = monitors[k].result(W[i].clone(), solver=name, lam=lam, symmetric_restart=None)
            keep = [i for i, s in enumerate(stop) if not s]
            if not keep:
                break
            if len(keep) < len(running):
                rows = torch.tensor(keep, device=W.device)
                W, V, XV, XW, BV = (t.index_select(0, rows) for t in (W, V, XV, XW, BV))
                pgV_sq = [pgV_sq[i] for i in keep]
                running = [running[i] for i in keep]
        W = update(W, BV, XV, V, lam)
        XW = problem.matmul(W)
        BW = sk.gram(W, lam)
        V = update(V, BW, XW, W, lam)
        it += 1
        if monitors[running[0]].due(it):
            pgV_sq = [4 * projected_gradient_sq(g, v) for g, v in zip(half_gradient(V, BW, XW, W, lam), V)]
        XV = problem.matmul(V)
    return results
