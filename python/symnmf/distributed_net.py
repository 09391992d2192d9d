"""SymNMF-Net row-sharded on torch.distributed (docs/distributed.md, "SymNMF-Net").

    # torchrun --nproc-per-node 4 my_script.py
    from symnmf import distributed as sd
    from symnmf.distributed_net import net

    graph = sd.ShardedGraph.from_npz("graph.npz")
    result = net(graph, 10, seed=0)         # result.U: this rank's rows of the kept, polished factor

`net` is `symnmf.net.fit_net` on a `ShardedGraph`: the same recipe (read from
`symnmf.net.RECIPES` when called), the same random starts, restarts trained side
by side, the same label-free selection and SymHALS polish, so that it follows
the single-process run up to the order of floating-point reductions.

What is sharded. Every n x r tensor is split by rows as X is: the start U_0,
the weights P_i, the iterates U_i, their products X U_i, the gradients and
Adam's moments (each rank's Adam steps its own rows of P_i, an elementwise
update). lam (one per restart) is replicated: its gradient is all-reduced
before the step, so every rank takes the same step and keeps the same Adam
state for it.

How the loss is split. The loss is the sum of per-rank losses: each rank adds
the terms of its own rows (-2 <X U_i, U_i>, the regulariser, mu ||U_L||_1),
and rank 0 alone the terms of replicated values (||X||^2, ||U_i^T U_i||^2).
With that convention every collective has a simple backward:

- the Gram U_i^T U_i = all_reduce of the local Grams; the backward all-reduces
  the gradients of the ranks' copies (`_AllReduce`);
- X U_i through the halo exchange; for a symmetric X the backward is the same
  product of the gradient, X (dL/dS), through the same exchange (`_Times`).

Every rank builds the same autograd graph (rank 0's extra terms are weighted
by 0 elsewhere, not left out), so the backward runs the collectives in the
same order on every rank.
"""
import math
import time

import numpy as np
import torch
from torch import nn

import symnmf_kernels as sk

from . import distributed as sd
from .net import _check_range, agreement_of_counts, plateaued
from .solvers.base import SolverResult, as_seed

__all__ = ["net", "init_restarts", "STARTS"]

# The starts of the recipes that are sharded; "spectral" needs a distributed QR (not done).
STARTS = ("random", "hals")


class _AllReduce(torch.autograd.Function):
    """The sum over the ranks of a local tensor. The loss being the sum of the ranks' losses, each
    rank's copy of the result feeds its own loss: the gradient of the input is the sum of the
    gradients of all the copies, a second all_reduce."""

    @staticmethod
    def forward(ctx, t, comm, counter):
        ctx.comm, ctx.counter = comm, counter
        counter["allreduce_bytes"] += t.numel() * t.element_size()
        return comm.all_reduce(t.clone(memory_format=torch.contiguous_format))

    @staticmethod
    def backward(ctx, grad):
        ctx.counter["allreduce_bytes"] += grad.numel() * grad.element_size()
        return ctx.comm.all_reduce(grad.clone(memory_format=torch.contiguous_format)), None, None


class _Times(torch.autograd.Function):
    """X U through the halo, differentiable in U. X = X^T, so the backward X^T dS is the same product
    of dS (the same exchange: the gradient rows owned elsewhere come through the halo)."""

    @staticmethod
    def forward(ctx, U, graph):
        ctx.graph = graph
        return graph.matmul(U)

    @staticmethod
    def backward(ctx, grad):
        return ctx.graph.matmul(grad), None


def _dot(A, B):
    """<A[b], B[b]> per restart (A, B of shape (R, m, r)), summed in float64."""
    if A.dtype == torch.float64:  # one BLAS pass per restart
        return torch.stack([torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(A, B)])
    return (A * B).flatten(1).sum(-1, dtype=torch.float64)


class _LayerTerms(torch.autograd.Function):
    """(<S, U>, ||P - S - lam U||^2) per restart over this rank's rows, S = X U: the two sums of the
    sparse layer loss, with the residual R kept from the forward so the backward is a few passes
    (dP = 2 b R, dS = a U - 2 b R, dU = a S - 2 b lam R, dlam = -2 b <R, U> for the gradients a, b
    of the two sums). P None: the first sum only."""

    @staticmethod
    def forward(ctx, U, S, P, lam):
        su = _dot(S, U)
        R = None
        if P is None:
            rr = torch.zeros_like(su)
        else:
            R = P - S
            R.addcmul_(lam[:, None, None], U, value=-1)
            rr = _dot(R, R)
        ctx.save_for_backward(U, S, R, lam)
        return su, rr

    @staticmethod
    def backward(ctx, g_su, g_rr):
        U, S, R, lam = ctx.saved_tensors
        need_u, need_s, need_p, need_lam = ctx.needs_input_grad
        a = torch.zeros_like(U[:, :1, :1]) if g_su is None else g_su.to(U.dtype)[:, None, None]
        dU = a * S if need_u else None
        dS = a * U if need_s else None
        dP = dlam = None
        if R is not None and g_rr is not None:
            R2 = (2 * g_rr).to(U.dtype)[:, None, None] * R
            if need_s:
                dS.sub_(R2)
            if need_u:
                dU.addcmul_(lam[:, None, None], R2, value=-1)
            if need_lam:
                dlam = -_dot(R2, U).to(lam.dtype)
            dP = R2 if need_p else None
        return dU, dS, dP, dlam


def init_restarts(graph, rank, seed=0, restarts=1, *, chunk_rows=1 << 16):
    """This rank's rows of R = `restarts` Kuang starts, shape (R, n_local, rank): the rows of
    `symnmf.solvers.init_factor(X, rank, make_generator(seed), batch_shape=(R,))`.

    The CPU generator's stream holds restart after restart, n x rank values each; every rank walks
    it in chunks of rows and keeps its own (O(R n r) time, O(chunk r) memory beyond its rows).
    """
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise ValueError(f"restarts must be a positive int, got {restarts!r}")
    gen = torch.Generator().manual_seed(as_seed(seed))
    ids = graph.node_ids()
    if ids is None:
        ids = np.arange(graph.lo, graph.hi, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    wanted = ids[order]
    out = torch.empty((int(restarts), graph.n_local, rank), dtype=graph.dtype)
    for b in range(int(restarts)):
        last = graph.n if b < restarts - 1 else int(wanted[-1]) + 1  # the next restart starts at row n
        done = 0
        for c0 in range(0, last, chunk_rows):
            c1 = min(c0 + chunk_rows, graph.n)
            block = torch.rand((c1 - c0, rank), generator=gen, dtype=graph.dtype)
            upto = int(np.searchsorted(wanted, c1, side="left"))
            if upto > done:
                out[b, torch.from_numpy(order[done:upto])] = block[torch.from_numpy(wanted[done:upto] - c0)]
                done = upto
    mean = torch.tensor(graph.value_sum / (graph.n * graph.n), dtype=graph.dtype)
    return (out * (2 * torch.sqrt(torch.clamp(mean, min=0) / rank))).to(graph.device)


def _spectral_norm(graph, iters=50):
    """||X||_2 by power iteration from the all-ones vector, as `symnmf.net.spectral_norm`."""
    v = torch.ones((graph.n_local, 1), dtype=graph.dtype, device=graph.device) / math.sqrt(graph.n)
    est = None
    for _ in range(iters):
        w = graph.matmul(v)
        est = graph.comm.all_reduce(w.pow(2).sum().reshape(1)).sqrt()[0]
        v = w / torch.clamp(est, min=torch.finfo(graph.dtype).tiny)
    return est


def _select_consensus(graph, U):
    """`symnmf.net.select_restart(U, "consensus")` on row-sharded restarts U (R, n_local, r): the
    contingency counts of every pair of restarts are summed over the ranks (one all_reduce)."""
    R, _, r = U.shape
    labels = U.argmax(-1)
    pairs = [(i, j) for i in range(R) for j in range(i + 1, R)]
    counts = [torch.bincount((labels[i] * r + labels[j]).cpu(), minlength=r * r) for i, j in pairs]
    bad = (~torch.isfinite(U)).flatten(1).any(1).cpu()
    packed = torch.cat([torch.stack(counts).reshape(-1) if counts else torch.zeros(0, dtype=torch.int64),
                        bad.to(torch.int64)]).to(torch.float64)
    packed = graph.comm.all_reduce(packed.to(graph.device)).cpu()
    agree = torch.zeros(R, dtype=torch.float64)
    for p, (i, j) in enumerate(pairs):
        v = agreement_of_counts(packed[p * r * r:(p + 1) * r * r].reshape(r, r))
        agree[i] += v
        agree[j] += v
    agree[packed[len(pairs) * r * r:] > 0] = -float("inf")
    return int(agree.argmax())


def _check_training_memory(graph, U0, n_layers):
    """The single-process net's memory check (`symnmf.net.training_factors`) on every rank's rows, agreed: where
    any rank's step cannot fit, every rank raises the same error, naming the fullest rank."""
    from .net import MEMORY_MARGIN, free_memory, training_memory_message, training_memory_needed

    comm = graph.comm
    need = training_memory_needed(U0, n_layers)
    available, total = free_memory(U0.device)
    table = torch.zeros(4, comm.world_size, dtype=torch.float64, device=comm.device)
    table[:, comm.rank] = torch.tensor([need, math.inf if available is None else available, total or 0.0,
                                        U0.shape[-2]], dtype=torch.float64)
    comm.all_reduce(table)
    short = table[0] - MEMORY_MARGIN * table[1]
    worst = int(short.argmax())
    if float(short[worst]) > 0:
        need, available, total, rows = (float(v) for v in table[:, worst])
        shape = (*U0.shape[:-2], int(rows), U0.shape[-1])
        raise torch.OutOfMemoryError(training_memory_message(need, available, total, f"rank {worst}", shape,
                                                             U0.dtype, n_layers))


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _settings(recipe, overrides):
    """The recipe's settings (read from `symnmf.net.RECIPES` now) with the non-None overrides, checked."""
    from .net import _LR_SCHEDULES, RECIPES, SELECTION_RULES, SymNMFNet, _is_finite

    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    settings = dict(RECIPES[recipe])
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"unknown recipe settings {unknown}; known: {sorted(settings)}")
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if settings["init"] not in STARTS:
        raise ValueError(f"init must be one of {STARTS} for the sharded net, got {settings['init']!r} "
                         "(the spectral start needs a distributed QR, not done)")
    # The single-process net's own checks, with their messages, for every setting it takes.
    SymNMFNet(2, n_layers=settings["n_layers"], beta=settings["beta"], mu=settings["mu"], lam=settings["lam"],
              recipe=recipe, init=settings["init"], init_iter=settings["init_iter"],
              init_noise=settings["init_noise"], learn_lam=settings["learn_lam"], beta_final=settings["beta_final"],
              loss_blocks=settings["loss_blocks"], beta_relative=settings["beta_relative"])
    _check_int("n_restarts", settings["n_restarts"], 1)
    _check_int("epochs", settings["epochs"], 0)
    _check_int("polish_iter", settings["polish_iter"], 0)
    if not _is_finite(settings["lr"], 0, strict=True):
        raise ValueError(f"lr must be finite and > 0, got {settings['lr']!r}")
    if settings["tol"] is not None and not _is_finite(settings["tol"], 0):
        raise ValueError(f"tol must be finite and >= 0 or None, got {settings['tol']!r}")
    if settings["patience"] is not None:
        _check_int("patience", settings["patience"], 0)
    if settings["lr_schedule"] not in _LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {_LR_SCHEDULES}, got {settings['lr_schedule']!r}")
    if settings["select"] not in SELECTION_RULES:
        raise ValueError(f"select must be one of {SELECTION_RULES}, got {settings['select']!r}")
    if settings["init_noise"]:
        raise ValueError("init_noise applies to the spectral start only, which is not sharded: leave it 0")
    return settings


def _start(graph, k, seed, settings, U0):
    """U_0 of every restart, (R, n_local, k): Kuang's start from the seed (refined by init_iter sharded
    SymHALS iterations for init "hals"), or the given rows U0."""
    if U0 is None:
        U0 = init_restarts(graph, k, seed, settings["n_restarts"])
        if settings["init"] == "hals" and settings["init_iter"] > 0:
            U0 = torch.stack([run.U for run in sd.hals_restarts(graph, U0, max_iter=settings["init_iter"], tol=0.0)])
        return U0
    U0 = torch.as_tensor(U0).to(device=graph.device, dtype=graph.dtype)
    if U0.dim() == 2:
        U0 = U0[None]
    if U0.dim() != 3 or U0.shape[1:] != (graph.n_local, k):
        raise ValueError(f"U0 must hold this rank's rows, shape ({graph.n_local}, {k}) or (R, {graph.n_local}, "
                         f"{k}), got {tuple(U0.shape)}")
    bad = torch.tensor([float(bool((U0 < 0).any()) or not bool(torch.isfinite(U0).all()))],
                       dtype=torch.float64, device=graph.device)
    if graph.comm.all_reduce(bad, "max")[0] > 0:
        raise ValueError("U0 must be finite and non-negative")
    return U0.clone()


def net(graph, k, *, seed=0, recipe="default", U0=None, max_iter=None, tol=None, lam=None, verbose=False,
        **overrides):
    """SymNMF-Net on a ShardedGraph, trained and finished as `symnmf.net.fit_net(X, k, scale=1.0)` does, by rows:
    the graph is trained as it is. `fit` divides it by ||X||_2 first, as `fit_net`'s default scale does, and the
    net is not scale-free (the polish's penalty, for one), so call `fit` for `fit_net`'s result on any X.

    k: the rank. seed: the random starts (the same int gives the single-process starts). recipe:
    a name of `symnmf.net.RECIPES`; overrides: any recipe setting (n_layers, beta, lr, n_restarts,
    select, polish_iter, ...); max_iter: the most Adam steps (the recipe's "epochs"); tol: the
    plateau tolerance; lam: the initial lam. U0: this rank's rows of the start, (n_local, k) or
    (R, n_local, k) for R restarts (then init and n_restarts are not used).
    Collective: every rank of the graph's group calls it with the same arguments.

    Returns a SolverResult: U, this rank's rows of the kept restart's factor (after the polish);
    n_iter: Adam steps; converged: stopped by the plateau rule before the last epoch; history: per
    step "epoch", "loss", "loss_per_problem", "relative_error" (of U_L) and "time"; params: the
    settings used, the kept restart ("index"), every restart's "relative_errors" and "losses", lam,
    the polished "relative_error" and the traffic of this rank ("bytes_sent", "exchanges",
    "bytes_sent_per_iteration": halo bytes per training step, forward and backward;
    "allreduce_bytes_per_iteration": the payload of this rank's all_reduces per step).
    """
    from .net import select_restart

    if max_iter is not None:
        overrides["epochs"] = max_iter
    settings = _settings(recipe, dict(overrides, tol=tol, lam=lam))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= graph.n:
        raise ValueError(f"k must be an int in [1, n = {graph.n}], got {k!r}")
    k = int(k)
    comm = graph.comm
    root = comm.rank == 0
    counter = {"allreduce_bytes": 0}

    def all_reduce(t):
        return _AllReduce.apply(t, comm, counter)

    start = time.perf_counter()
    bytes0, exchanges0 = graph.plan.bytes_sent, graph.plan.exchanges
    with torch.no_grad():
        U0 = _start(graph, k, seed, settings, U0)
        R = U0.shape[0]
        norm_sq = graph.norm_sq.to(graph.dtype)
        G0 = all_reduce(sk.gram(U0, 0.0))
        S0 = graph.matmul(U0)
        cross0 = all_reduce((S0 * U0).sum((-2, -1)))
        residual0 = norm_sq - 2 * cross0 + G0.pow(2).sum((-2, -1))
        lam_init = settings["lam"]
        if lam_init == "spectral":
            x_norm = _spectral_norm(graph)
        else:
            x_norm = torch.sqrt(norm_sq)
        x_norm = x_norm.expand(R)
        lam_min = 0.5 * (x_norm + torch.sqrt(torch.clamp(residual0, min=0)))
        lam0 = x_norm if isinstance(lam_init, str) else torch.full_like(lam_min, float(lam_init))
        lam_t = torch.maximum(lam0, lam_min)
        # Algorithm 1: P_i = (X + lam I) U_{i-1} along the classical iterates.
        weights = []
        U, G, S = U0, G0, S0
        for i in range(settings["n_layers"]):
            P = S + lam_t[:, None, None] * U
            weights.append(nn.Parameter(P))
            U, g = sk.symnmf_block_from_gram(G, P, lam_t)
            G = all_reduce(g)
            if i + 1 < settings["n_layers"]:
                S = graph.matmul(U)
        # fit_net's range checks, on every rank from the same global sums: a graph too far from unit scale for
        # its dtype is refused before training, rather than reported as a divergence that no lr cures
        _check_range(U0, "||X||_F^2", norm_sq)
        _check_range(U0, "lam^2", lam_t.pow(2))
        _check_range(U0, "||P_i||_F^2", all_reduce(torch.stack([P.pow(2).sum((-2, -1)) for P in weights])), low=0.0)
    _check_training_memory(graph, U0, settings["n_layers"])
    lam_p = nn.Parameter(lam_t.clone(), requires_grad=bool(settings["learn_lam"]))
    beta_scale = 1.0 / float(lam_t.pow(2).mean()) if settings["beta_relative"] else 1.0
    _check_range(U0, "the regulariser's weight beta / lam^2" if settings["beta_relative"] else "beta",
                 torch.tensor(float(settings["beta"]) * beta_scale, dtype=torch.float64), low=0.0)
    beta, beta_final, epochs = float(settings["beta"]), settings["beta_final"], int(settings["epochs"])
    mu = float(settings["mu"])
    last_only = settings["loss_blocks"] == "last"
    root_weight = 1.0 if root else 0.0  # replicated terms count once, on rank 0
    norm_term = graph.norm_sq.double() * root_weight

    def objective(beta_now):
        """(this rank's share of the loss per restart, this rank's <X U_L, U_L>, U_L, G_L)."""
        loss = 0.0
        U, G, S = U0, G0, S0
        L = len(weights)
        for i in range(L + 1):
            P = weights[i] if i < L else None
            # <X U_i, U_i> for the residual of block i and the regulariser of block i + 1 from one product
            cross, regulariser = _LayerTerms.apply(U, S, P, lam_p)
            if i > 0 and (not last_only or i == L):
                loss = loss - 2 * cross + root_weight * G.pow(2).sum((-2, -1), dtype=torch.float64) + norm_term
            if P is not None:
                loss = loss + beta_now * regulariser
                U, g = sk.symnmf_block_from_gram(G, P, lam_p)
                G = all_reduce(g)
                S = _Times.apply(U, graph)
        if mu:
            loss = loss + mu * U.sum((-2, -1), dtype=torch.float64)  # U_L >= 0: its l1 norm
        return loss, cross, U, G

    groups = [{"params": weights, "lr": settings["lr"]}]
    if settings["learn_lam"]:
        groups.append({"params": [lam_p], "lr": settings["lr"]})
    if settings["relative_lr"]:
        with torch.no_grad():  # the root-mean-square of all the weights, over every rank's rows
            sums = comm.all_reduce(torch.stack([P.pow(2).sum() for P in weights]))
            p_scale = float((sums / (R * graph.n * k)).mean().sqrt())
        groups[0]["lr"] = settings["lr"] * p_scale
        if settings["learn_lam"]:
            groups[1]["lr"] = settings["lr"] * float(lam_p.detach().abs().mean())
    fused = graph.device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(groups, lr=settings["lr"], fused=fused or None)
    scheduler = None
    if settings["lr_schedule"] == "cosine" and epochs > 0:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, epochs) / epochs)))

    def per_problem(t):
        return t.tolist() if R > 1 else float(t[0])

    history = {"epoch": [], "loss": [], "loss_per_problem": [], "relative_error": [], "time": []}

    def record(epoch, loss, residual):
        history["epoch"].append(epoch)
        history["loss"].append(float(loss.sum()))
        history["loss_per_problem"].append(per_problem(loss))
        history["relative_error"].append(per_problem(residual / graph.norm_sq))
        history["time"].append(time.perf_counter() - start)
        if verbose and root:
            print(f"epoch {epoch}: loss {history['loss'][-1]:.6g}, E {history['relative_error'][-1]}")

    def totals(loss, cross, G, lam_grad=None):
        """The loss and ||X - U_L U_L^T||^2 per restart over all ranks (and lam's gradient): one all_reduce."""
        parts = [loss.detach(), cross.detach()] + ([lam_grad.double()] if lam_grad is not None else [])
        packed = torch.cat(parts)
        counter["allreduce_bytes"] += packed.numel() * packed.element_size()
        packed = comm.all_reduce(packed)
        residual = graph.norm_sq - 2 * packed[R:2 * R] + G.detach().double().pow(2).sum((-2, -1))
        return packed[:R], residual, (packed[2 * R:] if lam_grad is not None else None)

    tol, patience = settings["tol"], settings["patience"]
    window = max(1, patience) if patience else None
    train_bytes0, train_exchanges0 = graph.plan.bytes_sent, graph.plan.exchanges
    reduce_bytes0 = counter["allreduce_bytes"]
    steps = 0
    beta_now = beta_scale * beta
    for epoch in range(epochs):
        if beta_final is not None:
            beta_now = beta_scale * beta * (beta_final / beta) ** (epoch / max(epochs - 1, 1))
        optimizer.zero_grad(set_to_none=True)
        loss, cross, _, G = objective(beta_now)
        loss.sum().backward()
        loss, residual, lam_grad = totals(loss, cross, G, lam_p.grad if settings["learn_lam"] else None)
        if lam_grad is not None:
            lam_p.grad.copy_(lam_grad)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            lam_p.copy_(torch.maximum(lam_p, lam_min))
        steps = epoch + 1
        record(epoch, loss, residual)
        if plateaued(history["loss"], tol, window):
            break
    train_bytes = graph.plan.bytes_sent - train_bytes0
    train_exchanges = graph.plan.exchanges - train_exchanges0
    reduce_bytes = counter["allreduce_bytes"] - reduce_bytes0
    with torch.no_grad():
        loss, cross, U_all, G = objective(beta_now)
        loss, residual, _ = totals(loss, cross, G)
    record(steps, loss, residual)
    # as symnmf.net.fit_net: a training that diverged in every restart is an error on every rank, not NaN labels
    bad = graph.comm.all_reduce((~torch.isfinite(U_all)).reshape(R, -1).any(1).to(torch.float64), "max")
    if bool((bad > 0).all()):
        which = "every restart's factor has" if R > 1 else "its factor has"
        raise FloatingPointError(f"SymNMF-Net's training diverged: {which} NaN or infinite entries; lower lr, or fit "
                                 "in float64")

    errors, losses = history["relative_error"][-1], history["loss_per_problem"][-1]
    polish_iter = int(settings["polish_iter"])
    polished = None
    index = 0
    if R > 1:
        if settings["select"] == "consensus":
            index = _select_consensus(graph, U_all)
        elif settings["select"] == "modularity":
            # as symnmf.net.fit_net: every finite restart polished, the polished labels scored; a restart not
            # finite on any rank is not polished and scores NaN
            bad = comm.all_reduce((~torch.isfinite(U_all)).flatten(1).any(1).double()).cpu() > 0
            if polish_iter:  # side by side, as in one process (sd.hals_restarts)
                kept = [j for j in range(R) if not bad[j]]
                runs = iter(sd.hals_restarts(graph, U_all.detach()[kept], max_iter=polish_iter) if kept else ())
                polished = [None if bad[j] else next(runs) for j in range(R)]
                scored = torch.stack([U_all[j] if p is None else p.U for j, p in enumerate(polished)])
            else:
                scored = U_all
            scores = graph.modularity(scored.argmax(-1), k)
            index = select_restart(U_all, "modularity", torch.where(bad, torch.full_like(scores, float("nan")), scores))
        else:
            scores = losses if settings["select"] == "loss" else errors
            index = select_restart(U_all, settings["select"], scores)
    U = U_all[index]
    error = errors[index] if R > 1 else errors
    with torch.no_grad():
        sf_total = comm.all_reduce(U.sum().double().reshape(1))  # U >= 0
        threshold = 0.01 * sf_total / (graph.n * k)
        kept = comm.all_reduce((U > threshold.to(U.dtype)).sum().double().reshape(1))
    sf = float(kept[0]) / (graph.n * k)
    if polish_iter:
        if polished is None:
            polished = {index: sd.hals(graph, U.detach(), max_iter=polish_iter)}
        U, error = polished[index].U, polished[index].history["rel_error"][-1]
    if graph.device.type == "cuda":
        torch.cuda.synchronize(graph.device)
    plan = graph.plan
    params = {
        "recipe": recipe, "settings": settings, "index": index, "relative_error": error,
        "relative_errors": errors if R > 1 else [errors], "losses": losses if R > 1 else [losses],
        "lam": lam_p.detach().tolist(), "lam_min": lam_min.tolist(), "sparse_factor_trained": sf,
        "seconds": time.perf_counter() - start,
        # this rank's traffic: the halo of the whole run (start, training, polish) and of a training step
        "bytes_sent": plan.bytes_sent - bytes0, "exchanges": plan.exchanges - exchanges0,
        "bytes_per_exchange": plan.bytes_per_exchange(R * k, graph.dtype), "exchange_columns": R * k,
        "bytes_sent_per_iteration": train_bytes / max(steps, 1),
        "exchanges_per_iteration": train_exchanges / max(steps, 1),
        "allreduce_bytes_per_iteration": reduce_bytes / max(steps, 1),
        "halo_rows": plan.halo_rows, "world_size": comm.world_size,
    }
    return SolverResult(U=U.detach(), history=history, n_iter=steps, converged=steps < epochs, params=params)
