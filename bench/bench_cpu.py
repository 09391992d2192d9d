"""The CPU backend against the plain torch it replaces: every public op, forward and forward + backward.

Each row times three variants of one op on CPU tensors:

    ours      the library's public function (symnmf_kernels), its CPU path
    eager     the same maths in a few lines of eager torch, with torch's own autograd
    compile   that eager function under torch.compile (inductor, C++ codegen)

and the SpMM against torch.sparse.mm (MKL on x86 builds). The variants run
interleaved, one call of each per round, so that a busy host slows all of them
alike; each time is the median over the rounds (at least 9). x_eager and
x_compile are speed-ups of ours (the other's time / ours: above 1 means ours is
faster). The thread count is set with torch.set_num_threads and printed in the
table; the SpMM rows also run with --spmm-threads (default 1 and 2).

Sizes: n = 1,000 and n = 100,000 (r = 16) for the n x r ops; a batch of 1 and of
1,000 r x r matrices for spd_inverse; dense sym_loss at n = 1,000 and 4,000 (an
n x n X at n = 1e5 would take 40 GB); the sparse sym_loss and the SpMM on random
symmetric graphs (every entry (i, j) with j uniform, symmetrised as A + A^T,
about `--nnz-per-row` stored entries per row) of 100,000 and 300,000 nodes, r
from 8 to 128.

    python bench/bench_cpu.py                       # writes bench/results/bench_cpu-<date>-cpu.md
    python bench/bench_cpu.py --quick --no-compile  # a smoke run
"""
import argparse
import gc
import math
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.common import tall_loops, write_table  # noqa: E402
from symnmf_kernels.ops.spmm import extension_status  # noqa: E402
from symnmf_kernels.sparse import as_csr  # noqa: E402

COLUMNS = ["op", "mode", "threads", "n", "r", "ours_ms", "eager_ms", "compile_ms", "x_eager", "x_compile", "notes"]


# ---- timing ----------------------------------------------------------------------------------------------------


def race(variants, rounds, min_time_s=0.0, warmup=2):
    """Median ms of each variant (name -> fn), the variants called in turn within every round."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times = {name: [] for name in names}
    start = time.perf_counter()
    done = 0
    while done < rounds or (time.perf_counter() - start < min_time_s and done < 10 * rounds):
        for name in names[done % len(names):] + names[:done % len(names)]:  # rotate who goes first
            t0 = time.perf_counter()
            variants[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
        done += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


def forward(fn, *args):
    def run():
        with torch.no_grad():
            fn(*args)
    return run


def forward_backward(fn, inputs, args):
    """fn(*args) then backward from fixed random output gradients; the inputs' .grad is reset every call."""
    with torch.no_grad():
        outs = fn(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [torch.randn_like(o) for o in outs]

    def run():
        for x in inputs:
            x.grad = None
        outs = fn(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, grads)
    return run


# ---- the eager twins -------------------------------------------------------------------------------------------


def eager_gram(U, lam):
    return U.mT @ U + lam * torch.eye(U.shape[-1], dtype=U.dtype)


def eager_spd_inverse(G):
    return torch.cholesky_inverse(torch.linalg.cholesky(G))


def eager_apply_relu(P, Ginv):
    return torch.relu(P @ Ginv)


def eager_block(U, P, lam):
    G = U.mT @ U + lam * torch.eye(U.shape[-1], dtype=U.dtype)
    return torch.relu(P @ torch.cholesky_inverse(torch.linalg.cholesky(G)))


def eager_block_from_gram(UtU, P, lam):
    G = UtU + lam * torch.eye(P.shape[-1], dtype=P.dtype)
    Y = torch.relu(P @ torch.cholesky_inverse(torch.linalg.cholesky(G)))
    return Y, Y.mT @ Y


def eager_sym_loss(X, U):
    return (X - U @ U.mT).pow(2).sum()


def eager_sparse_sym_loss(Xt, x_sq, U):
    return x_sq - 2 * (torch.sparse.mm(Xt, U) * U).sum() + (U.mT @ U).pow(2).sum()


def eager_spmm(Xt, U):
    return torch.sparse.mm(Xt, U)


# ---- inputs ----------------------------------------------------------------------------------------------------


def random_graph(n, per_row, seed):
    """A random symmetric graph with about per_row stored entries per row: (torch CSR, sk CSR)."""
    gen = torch.Generator().manual_seed(seed)
    m = n * per_row // 2
    i = torch.randint(0, n, (m,), generator=gen)
    j = torch.randint(0, n, (m,), generator=gen)
    w = torch.rand(m, generator=gen)
    idx = torch.cat([torch.stack([i, j]), torch.stack([j, i])], 1)
    X = torch.sparse_coo_tensor(idx, torch.cat([w, w]), (n, n)).coalesce()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xt = X.to_sparse_csr()
    A = as_csr(Xt)
    A.validate()
    A.is_symmetric()
    A.row_sq_norms()
    return Xt, A


def rand(*shape, grad=False, gen=None):
    t = torch.rand(*shape, generator=gen)
    return t.requires_grad_(grad)


def spd(r, batch=(), gen=None):
    A = torch.randn(*batch, 2 * r, r, generator=gen)
    return A.mT @ A / (2 * r) + 0.1 * torch.eye(r)


# ---- the cases -------------------------------------------------------------------------------------------------


def dense_cases(sizes, r):
    """(op, n, make) where make(grad) returns (ours, eager, inputs, args): the n x r and r x r ops."""
    gen = torch.Generator().manual_seed(0)
    cases = []
    for n in sizes:
        def gram_case(grad, n=n):
            U, lam = rand(n, r, grad=grad, gen=gen), torch.tensor(0.5, requires_grad=grad)
            return (lambda U, lam: sk.gram(U, lam)), eager_gram, [U, lam], (U, lam)

        def apply_case(grad, n=n):
            P, Ginv = rand(n, r, grad=grad, gen=gen) - 0.3, spd(r, gen=gen).requires_grad_(grad)
            return sk.apply_relu, eager_apply_relu, [P, Ginv], (P, Ginv)

        def block_case(grad, n=n):
            U, P = rand(n, r, grad=grad, gen=gen), rand(n, r, grad=grad, gen=gen) - 0.3
            lam = torch.tensor(0.5, requires_grad=grad)
            return sk.symnmf_block, eager_block, [U, P, lam], (U, P, lam)

        def from_gram_case(grad, n=n):
            U, P = rand(n, r, gen=gen), rand(n, r, grad=grad, gen=gen) - 0.3
            UtU = (U.mT @ U).requires_grad_(grad)
            lam = torch.tensor(0.5, requires_grad=grad)
            return sk.symnmf_block_from_gram, eager_block_from_gram, [UtU, P, lam], (UtU, P, lam)

        cases += [("gram", n, gram_case), ("apply_relu", n, apply_case), ("symnmf_block", n, block_case),
                  ("symnmf_block_from_gram", n, from_gram_case)]
    for batch in (1, 1000):
        def inverse_case(grad, batch=batch):
            G = spd(r, (batch,) if batch > 1 else (), gen=gen).requires_grad_(grad)
            return sk.spd_inverse, eager_spd_inverse, [G], (G,)
        cases.append(("spd_inverse (batch)", batch, inverse_case))
    return cases


def solver_cases(sizes, r):
    """(op, n, make) for the solvers' per-iteration ops, forward only: the SymHALS sweep against the torch
    column loop it replaces, and the stopping measure against its torch form."""
    from symnmf_kernels.ops.hals import _sweep_torch_
    from symnmf_kernels.ops.projected_gradient import _torch as eager_projected_gradient_sq

    gen = torch.Generator().manual_seed(3)
    cases = []
    for n in sizes:
        def sweep_case(grad, n=n):
            V, W = rand(n, r, gen=gen), rand(n, r, gen=gen)
            XV, B = rand(n, r, gen=gen) * r, spd(r, gen=gen)
            ours = (lambda W, XV, B, V: sk.hals_sweep_(W, XV, B, V=V, lam=0.5, revive=False, backend="torch"))
            return ours, (lambda W, XV, B, V: _sweep_torch_(W, XV, B, V, 0.5)), [], (W, XV, B, V)

        def projected_gradient(grad, n=n):  # the case of the op of that name
            U = rand(n, r, gen=gen)
            U[U < 0.3] = 0
            return sk.projected_gradient_sq, eager_projected_gradient_sq, [], (torch.randn(n, r, generator=gen), U)
        cases += [("hals_sweep_", n, sweep_case), ("projected_gradient_sq", n, projected_gradient)]
    return cases


def loss_cases(dense_sizes, sparse_sizes, r, per_row):
    gen = torch.Generator().manual_seed(1)
    cases = []
    for n in dense_sizes:
        def dense_case(grad, n=n):
            A = torch.rand(n, n, generator=gen)
            X = (A + A.mT) / 2
            U = rand(n, r, grad=grad, gen=gen)
            return (lambda X, U: sk.sym_loss(X, U)), eager_sym_loss, [U], (X, U)
        cases.append(("sym_loss dense", n, dense_case))
    for n in sparse_sizes:
        Xt, A = random_graph(n, per_row, seed=n)
        x_sq = Xt.values().pow(2).sum()

        def sparse_case(grad, Xt=Xt, A=A, x_sq=x_sq, n=n):
            U = rand(n, r, grad=grad, gen=gen)
            return (lambda U: sk.sym_loss(A, U)), (lambda U: eager_sparse_sym_loss(Xt, x_sq, U)), [U], (U,)
        cases.append(("sym_loss sparse", n, sparse_case))
    return cases


# ---- main ------------------------------------------------------------------------------------------------------


def tall_cases(sizes, ranks):
    """The extension's tall-skinny products (ops/gram.py: tall_mm, tall_gram) against torch's products, float32
    and float64, forward only. Not rows of the default table: --only tall_mm tall_gram."""
    op = torch.ops.symnmf_kernels
    cases = []
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).replace("torch.", "")
        for n in sizes:
            for r in ranks:
                def mm_case(grad, n=n, r=r, dtype=dtype):
                    A, M = torch.rand(n, r, dtype=dtype), torch.rand(r, r, dtype=dtype)
                    return op.tall_mm, torch.mm, [], (A, M)

                def gram_case(grad, n=n, r=r, dtype=dtype):
                    A, B = torch.rand(n, r, dtype=dtype), torch.rand(n, r, dtype=dtype)
                    return op.tall_gram, lambda A, B: torch.mm(A.mT, B), [], (A, B)

                cases += [("tall_mm %s" % name, n, r, mm_case), ("tall_gram %s" % name, n, r, gram_case)]
    return cases


def ratio(other, ours):
    return other / ours if other is not None and ours else None


def compiled(fn):
    return torch.compile(fn, dynamic=False)


def measure(rows, op, n, r, make, args, emit, modes=("forward", "forward+backward"), compile_it=True):
    for mode in modes:
        grad = mode != "forward"
        ours, eager, inputs, fargs = make(grad)
        wrap = (lambda f: forward_backward(f, inputs, fargs)) if grad else (lambda f: forward(f, *fargs))
        variants = {"ours": wrap(ours), "eager": wrap(eager)}
        note = ""
        if args.compile and compile_it and not op.startswith("sym_loss sparse"):
            try:
                fn = wrap(compiled(eager))
                fn()
                variants["compile"] = fn
            except Exception as e:  # noqa: BLE001 - a row says why compile is missing
                note = "compile failed: %s" % str(e).splitlines()[0][:80]
        elif op.startswith("sym_loss sparse"):
            note = "torch.compile does not trace torch.sparse.mm on CSR"
        t = race(variants, args.rounds, args.min_time)
        rows.append({
            "op": op, "mode": mode, "threads": torch.get_num_threads(), "n": n, "r": r,
            "ours_ms": t["ours"], "eager_ms": t["eager"], "compile_ms": t.get("compile"),
            "x_eager": ratio(t["eager"], t["ours"]), "x_compile": ratio(t.get("compile"), t["ours"]), "notes": note,
        })
        emit()
        del variants
        gc.collect()


def measure_spmm(rows, sizes, ranks, threads_list, per_row, args, emit):
    gen = torch.Generator().manual_seed(2)
    fwd_bwd_ranks = (ranks[0], ranks[-1]) if len(ranks) < 3 else (16, 64)
    for n in sizes:
        Xt, A = random_graph(n, per_row, seed=n)
        for r in ranks:
            U = torch.rand(n, r, generator=gen)
            for threads in threads_list:
                torch.set_num_threads(threads)
                # torch.sparse.mm's backward transposes the CSR matrix at every call (seconds at these sizes):
                # forward + backward is timed at the first graph size only, at two ranks.
                modes = ("forward", "forward+backward") if n == sizes[0] and r in fwd_bwd_ranks else ("forward",)
                for mode in modes:
                    grad = mode != "forward"
                    V = U.clone().requires_grad_(grad)
                    if grad:
                        variants = {"ours": forward_backward(lambda V: sk.spmm(A, V), [V], (V,)),
                                    "eager": forward_backward(lambda V: torch.sparse.mm(Xt, V), [V], (V,))}
                    else:
                        variants = {"ours": forward(sk.spmm, A, V), "eager": forward(torch.sparse.mm, Xt, V)}
                    t = race(variants, args.rounds, 0.0)
                    rows.append({
                        "op": "spmm", "mode": mode, "threads": threads, "n": n, "r": r, "ours_ms": t["ours"],
                        "eager_ms": t["eager"], "x_eager": ratio(t["eager"], t["ours"]),
                        "notes": "%.1f entries/row; eager = torch.sparse.mm" % (Xt.values().numel() / n),
                    })
                    emit()
        del Xt, A
        gc.collect()
    torch.set_num_threads(args.threads)


# ---- a SymNMF-Net training step, profiled -----------------------------------------------------------------------


def planted_graph(n, r, per_row, seed, inside=0.8):
    """A planted-partition graph: n nodes in r equal clusters (node order random), about per_row stored entries
    per row, a fraction `inside` of them within the node's cluster; symmetric, weights in (0, 1]; torch CSR."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, r, (n,), generator=gen)
    members = [torch.nonzero(label == c).reshape(-1) for c in range(r)]
    m = n * per_row // 2
    i = torch.randint(0, n, (m,), generator=gen)
    same = torch.rand(m, generator=gen) < inside
    j = torch.randint(0, n, (m,), generator=gen)
    for c in range(r):  # a neighbour in i's own cluster for the `inside` fraction
        pick = same & (label[i] == c)
        k = int(pick.sum())
        j[pick] = members[c][torch.randint(0, len(members[c]), (k,), generator=gen)]
    keep = i != j
    i, j = i[keep], j[keep]
    w = torch.rand(len(i), generator=gen) * 0.9 + 0.1
    idx = torch.cat([torch.stack([i, j]), torch.stack([j, i])], 1)
    X = torch.sparse_coo_tensor(idx, torch.cat([w, w]), (n, n)).coalesce()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return X.to_sparse_csr(), label


def profile_net(args):
    """Time SymNMF-Net training steps on planted graphs (one row per (n, r) of --net-n / --net-r) and profile
    the first; returns (rows, profiler table text)."""
    rows, table = [], None
    for n, r in zip(args.net_n, args.net_r):
        row, prof = _net_step(n, r, args.net_layers, args, profile_it=table is None)
        rows.append(row)
        table = table or prof
    return rows, table


def net_training_step(n, r, L, restarts):
    """(net, its prepared X, step): one SymNMF-Net training step as SymNMFNet.fit takes it, on the planted graph
    of n nodes and r clusters (20 entries per row), L blocks, `restarts` problems side by side. step(None): the
    objective op by op (one autograd node per block and layer loss) instead of fit's one-node chain."""
    from symnmf import SymNMFNet
    from symnmf.net_chain import NetChain

    X, _ = planted_graph(n, r, 20, seed=0)
    net = SymNMFNet(r, n_layers=L, n_restarts=restarts if restarts > 1 else None, random_state=0)
    net.initialize(X)
    Xp = net._prepare(X)
    X_norm2 = (Xp.values().pow(2).sum())
    S0 = net._start_product(Xp)  # X U_0, computed once per fit as SymNMFNet.fit does
    net_chain = NetChain(Xp, net.U0, S0) if NetChain.applies(Xp, net.U0) else None
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)  # the optimiser SymNMFNet.fit uses

    def step(objective_chain=net_chain):
        opt.zero_grad(set_to_none=True)
        loss, _, _ = net._objective(Xp, X_norm2, S0, objective_chain)
        loss.sum().backward()
        opt.step()
        net.project_lam()

    return net, Xp, step


def _net_step(n, r, L, args, profile_it):
    from torch.profiler import ProfilerActivity, profile

    from symnmf.net_chain import NetChain

    net, Xp, step = net_training_step(n, r, L, args.net_restarts)
    with tall_loops(False):  # a chain made here keeps torch's BLAS products for the whole run
        blas_chain = NetChain(Xp, net.U0, net._start_product(Xp)) if NetChain.applies(Xp, net.U0) else None

    def step_blas():  # the same step with the tall-skinny products on torch's BLAS (ops/gram.py)
        with tall_loops(False):
            step(blas_chain)

    def step_ops():  # the objective op by op: an autograd node per block and per layer loss
        step(None)

    A = as_csr(Xp)
    U = torch.rand_like(net.U0)  # (restarts, n, r) when the recipe runs several restarts
    for _ in range(3):
        step()
        step_ops()
        step_blas()
    t = race({"step": step, "step_ops": step_ops, "step_blas": step_blas, "spmm": forward(sk.spmm, A, U)},
             args.rounds, args.min_time)
    # Forward: one SpMM per block output U_1 ... U_L (L; X U_0 is computed once per fit). Backward: one per
    # regulariser whose U needs a gradient, U_1 ... U_{L-1} (L - 1): U_0 is fixed, and the loss terms reuse
    # the forward's X U.
    n_spmm = 2 * L - 1
    # The race above times each SpMM after a step or another SpMM, so it starts from a cache the step may have
    # filled; the same SpMM run back to back (a warm cache) is the other bound a step can be compared with.
    spmm = forward(sk.spmm, A, U)
    warm = []
    for _ in range(max(args.rounds, 9)):
        t0 = time.perf_counter()
        for _ in range(5):
            spmm()
        warm.append((time.perf_counter() - t0) / 5 * 1e3)
    spmm_warm = statistics.median(warm)
    table = None
    if profile_it:
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        profiled_ms = (time.perf_counter() - t0) / 5 * 1e3
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=48)
        # The profiler's own cost lands in the self time of the step's first Python autograd node.
        table = ("a step took %.1f ms under the profiler (step_ms without it: %.1f ms); the difference shows as self "
                 "time of the first Python autograd node\n\n%s" % (profiled_ms, t["step"], table))
    row = {"n": n, "r": r, "L": L, "restarts": math.prod(net.U0.shape[:-2]), "nnz": Xp.values().numel(),
           "threads": torch.get_num_threads(), "step_ms": t["step"], "step_ops_ms": t["step_ops"],
           "x_ops": t["step_ops"] / t["step"], "step_blas_ms": t["step_blas"], "x_blas": t["step_blas"] / t["step"],
           "spmm_ms": t["spmm"], "spmm_per_step": n_spmm,
           "step_over_spmms": t["step"] / (n_spmm * t["spmm"]), "spmm_warm_ms": spmm_warm,
           "step_over_warm_spmms": t["step"] / (n_spmm * spmm_warm)}
    return row, table


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads for the op rows (default 1)")
    p.add_argument("--spmm-threads", type=int, nargs="+", default=[1, 2], help="thread counts of the SpMM rows")
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds per row (at least 9 is sensible)")
    p.add_argument("--min-time", type=float, default=0.5, help="keep adding rounds until this many seconds pass")
    p.add_argument("--r", type=int, default=16, help="rank of the op rows")
    p.add_argument("--nnz-per-row", type=int, default=26, help="stored entries per row of the random graphs")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile column")
    p.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    p.add_argument("--only", nargs="+", help="run only these ops (gram, apply_relu, symnmf_block, ..., spmm; "
                   "tall_mm and tall_gram, the extension's tall-skinny products, run only when named here)")
    p.add_argument("--out", help="results folder (default bench/results)")
    p.add_argument("--name", default="bench_cpu", help="table name (file bench_cpu-<date>-cpu.md)")
    p.add_argument("--profile-net", action="store_true",
                   help="instead of the op rows: time and profile SymNMF-Net training steps (bench_cpu_net table)")
    p.add_argument("--net-n", type=int, nargs="+", default=[20_000, 200_000, 200_000])
    p.add_argument("--net-r", type=int, nargs="+", default=[8, 8, 16], help="one rank per --net-n")
    p.add_argument("--net-layers", type=int, default=5)
    p.add_argument("--net-restarts", type=int, default=1, help="restarts trained side by side (fit_net's default: 4)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message=".*[Ss]parse CSR.*")
    tall_sizes = [20_000] if args.quick else [20_000, 200_000]
    if args.quick:
        n_sizes, dense_sizes, sparse_sizes, spmm_sizes, ranks = [1000, 20_000], [500], [5000], [20_000], [8, 64]
    else:
        n_sizes, dense_sizes, sparse_sizes = [1000, 100_000], [1000, 4000], [1000, 100_000]
        spmm_sizes, ranks = [100_000, 300_000], [8, 16, 32, 64, 128]
    if args.profile_net:
        rows, table = profile_net(args)
        header = ["threads: %d; a planted graph (20 entries per row, 80%% within the node's cluster); one step = "
                  "forward of every block and layer loss, backward, Adam step; the profile is of the first row"
                  % args.threads,
                  "step_over_spmms: the step's time over that of the SpMMs it needs (forward and backward), the "
                  "SpMM timed in turns with the steps; step_over_warm_spmms: the same against spmm_warm_ms, the "
                  "SpMM run back to back (5 calls, median of the rounds)",
                  "step_ms: the step as SymNMFNet.fit takes it (on the CPU with a sparse X: the objective in one "
                  "autograd node, python/symnmf/net_chain.py); step_ops_ms: the objective op by op, an autograd "
                  "node per block and layer loss (x_ops: its time over step_ms)",
                  "step_blas_ms: the same step with the n x r by r x r products and the n x r Grams on torch's BLAS "
                  "instead of the extension's tall-skinny row loops (x_blas: its time over step_ms); the four "
                  "timed in turns",
                  "allocator: MALLOC_MMAP_THRESHOLD_=%s, MALLOC_TRIM_THRESHOLD_=%s, THP_MEM_ALLOC_ENABLE=%s"
                  % tuple(os.environ.get(k, "unset") for k in
                          ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "THP_MEM_ALLOC_ENABLE")),
                  "extension: %s" % extension_status()]
        path = write_table(args.name + "_net", rows, list(rows[0]), header, out_dir=args.out, device="cpu")
        with open(path, "a") as f:
            f.write("\n## torch.profiler, 5 steps, by self CPU time\n\n```\n%s\n```\n" % table)
        print(table)
        return rows
    rows = []
    header = [
        "threads: %d for the op rows (torch.set_num_threads); SpMM rows at %s" % (args.threads, args.spmm_threads),
        "median of >= %d interleaved rounds (ours, eager, compile called in turn); x_* = other's time / ours" %
        args.rounds,
        "extension: %s" % extension_status(),
    ]

    def emit():
        write_table(args.name, rows, COLUMNS, header, out_dir=args.out, device="cpu", echo=False)
        row = rows[-1]
        print("%-24s %-17s t=%d n=%-7d r=%-4d ours %9.3f ms  eager %9.3f ms  x_eager %.2f  x_compile %s" % (
            row["op"], row["mode"], row["threads"], row["n"], row["r"], row["ours_ms"], row["eager_ms"],
            row["x_eager"], "%.2f" % row["x_compile"] if row.get("x_compile") else "-"), flush=True)

    want = (lambda op: args.only is None or op.split()[0] in args.only)
    for op, n, make in dense_cases(n_sizes, args.r) + loss_cases(dense_sizes, sparse_sizes, args.r, args.nnz_per_row):
        if want(op):
            measure(rows, op, n, args.r, make, args, emit)
    for op, n, make in solver_cases(n_sizes, args.r):
        if want(op):  # in place or not differentiable: forward only, and no compile column
            measure(rows, op, n, args.r, make, args, emit, modes=("forward",), compile_it=False)
    if want("spmm"):
        measure_spmm(rows, spmm_sizes, ranks, args.spmm_threads, args.nnz_per_row, args, emit)
    if args.only and {"tall_mm", "tall_gram"} & set(args.only):
        for op, n, r, make in tall_cases(tall_sizes, [3, 5, 6, 7, 8, 9, 10, 12, 16, 32]):
            if want(op):
                measure(rows, op, n, r, make, args, emit, modes=("forward",), compile_it=False)
    return rows


if __name__ == "__main__":
    main()
