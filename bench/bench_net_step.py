"""SymNMF-Net's training step on a sparse graph against the same network written in plain torch.

One step: the objective of all L blocks (each block's residual ||X - U_i U_i^T||^2 and the regulariser
beta ||P_i - (X U_{i-1} + lam U_{i-1})||^2, X sparse), its backward, Adam's update and lam's projection.
Variants, side by side on the same graph and the same weights:

    ours        SymNMFNet's own step, as SymNMFNet.fit takes it (eager): the objective in one autograd node
                (symnmf.net_chain.NetChain) where it applies (a sparse X on a GPU, or on the CPU's extension)
    ours_graph  the same step replayed from a CUDA graph (fit(cuda_graph=True); CUDA only)
    ops, ops_graph  the step with the objective op by op (a block and a layer loss per layer, each its own
                autograd node), eager and replayed: what the chain saves
    torch       the network in plain torch: torch.sparse.mm for X U, U^T U + lam I inverted by
                torch.linalg.inv, autograd for the backward, the same Adam (`plain_objective`)

Each row gives median times (triton.testing.do_bench on CUDA; on the CPU the variants in turns), the
speed-ups over plain torch, and the step's time against the 2L - 1 SpMMs it cannot do without (L forward,
L - 1 backward; X U_0 is computed once per fit): spmm_floor = (2L - 1) x one SpMM / step, 1 at best.
Graphs: planted partitions (16 clusters, node order random, about 32 stored entries per row).

    python bench/bench_net_step.py               # CUDA: 100k and 1M nodes; CPU: 2,000 and 20,000, one thread
"""
import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.common import add_run_args, bench, load_tiles, resolve_run_args, write_table  # noqa: E402

COLUMNS = ["n", "r", "L", "nnz", "ours_ms", "ours_graph_ms", "ops_ms", "ops_graph_ms", "torch_ms", "x_torch",
           "x_torch_graph", "x_ops_graph", "spmm_ms", "spmm_floor", "spmm_floor_graph", "rel_diff", "notes"]
# The design's own size first (1M nodes, r = 64, L = 10), so a run cut short by --budget-s has it.
SIZES = {"cuda": [(1_000_000, 64, 10), (1_000_000, 16, 5), (100_000, 16, 5)],
         "cpu": [(2_000, 8, 5), (20_000, 8, 5)]}
CLUSTERS = 16  # of the planted graph, whatever r: the cases of one n share one graph


def plain_objective(X, X_norm2, U0, S0, Ps, lam, beta):
    """SymNMF-Net's objective over all blocks in plain torch, for one problem: X a torch sparse CSR (n, n),
    U0 (n, r) and S0 = X U0, Ps the L weights (n, r), lam a 0-d tensor. The loss of every block's output and
    the regulariser of every weight, as the library computes them, without forming U U^T."""
    eye = torch.eye(U0.shape[-1], dtype=U0.dtype, device=U0.device)
    U, S, loss = U0, S0, 0.0
    for P in Ps:
        loss = loss + beta * (P - S - lam * U).pow(2).sum()
        U = torch.relu(P @ torch.linalg.inv(U.mT @ U + lam * eye))
        S = torch.sparse.mm(X, U)
        loss = loss + X_norm2 - 2 * (S * U).sum() + (U.mT @ U).pow(2).sum()
    return loss


@functools.lru_cache(maxsize=1)
def graph(n, seed=0, order=None):
    """The planted graph of n nodes (built on the CPU: about half a minute at 1M nodes), its nodes in random order,
    or renumbered by `symnmf_kernels.sparse.locality_order(X, order)` ("rcm", "degree")."""
    from bench.bench_cpu import planted_graph

    X = planted_graph(n, CLUSTERS, 32, seed=seed)[0]
    if order is not None:
        from symnmf_kernels.sparse import locality_order, permute

        X = permute(X, locality_order(X, order)).to_torch()
    return X


def make_net(n, r, L, device, seed=0, order=None):
    """(net, X prepared, ||X||^2, X U_0) on the planted graph (nodes renumbered by `order`, or in random order)."""
    from symnmf import SymNMFNet

    X = graph(n, seed, order)
    net = SymNMFNet(r, n_layers=L, loss_blocks="all", mu=0.0, random_state=seed)
    net.initialize(X.to(device))
    Xp = net._prepare(X.to(device))
    X_norm2 = Xp.values().pow(2).sum()
    return net, Xp, X_norm2, net._start_product(Xp)


def _adam(params, device, capturable=False):
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=1e-3, fused=fused or None, capturable=capturable)


def steps(net, Xp, X_norm2, S0, graph, op_by_op=True):
    """{variant: step function} of ours (and its CUDA graph), of the op-by-op objective where the chain applies
    (with op_by_op), and of plain torch; ours and ops train the same weights, plain torch its own."""
    from symnmf.net_chain import NetChain

    device = Xp.device
    chain = NetChain(Xp, net.U0, S0) if NetChain.applies(Xp, net.U0) else None
    opt = _adam(net.parameters(), device, capturable=graph)

    def step(chain):
        def run():
            opt.zero_grad(set_to_none=not graph)
            loss, _, _ = net._objective(Xp, X_norm2, S0, chain)
            loss.sum().backward()
            opt.step()
            net.project_lam()
        return run

    ours = step(chain)

    Ps = [P.detach().clone().requires_grad_() for P in net.P]
    lam = net.lam.detach().clone().requires_grad_()
    lam_min = net.lam_min
    topt = _adam(Ps + [lam], device)
    beta = float(net._beta_now)

    def plain():
        topt.zero_grad(set_to_none=True)
        plain_objective(Xp, X_norm2, net.U0, S0, Ps, lam, beta).backward()
        topt.step()
        with torch.no_grad():
            lam.copy_(torch.maximum(lam, lam_min))

    variants = {"ours": ours, "torch": plain}
    if op_by_op and chain is not None:
        variants["ops"] = step(None)
    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # eager steps first: kernels compiled, Adam's state made
            for _ in range(3):
                for name in ("ours", "ops"):
                    if name in variants:
                        variants[name]()
        torch.cuda.current_stream(device).wait_stream(side)
        variants["ours_graph"] = net._capture_step(Xp, X_norm2, S0, opt, chain)[0].replay
        if "ops" in variants:
            variants["ops_graph"] = net._capture_step(Xp, X_norm2, S0, opt, None)[0].replay
    return variants


def objective_gap(net, Xp, X_norm2, S0, chain=None):
    """||ours - torch|| / ||torch|| over the loss and the gradients of every weight and lam, at the net's
    weights: the two variants compute the same network. chain: a NetChain for ours (None: op by op)."""
    ours_P = [P.detach().clone().requires_grad_() for P in net.P]
    loss = net._objective(Xp, X_norm2, S0, chain)[0].sum()
    got = [loss.detach(), *torch.autograd.grad(loss, [*net.P, net.lam])]
    lam = net.lam.detach().clone().requires_grad_()
    ref_loss = plain_objective(Xp, X_norm2, net.U0, S0, ours_P, lam, float(net._beta_now))
    want = [ref_loss.detach(), *torch.autograd.grad(ref_loss, [*ours_P, lam])]
    return max(float((a.double() - b.double()).norm() / b.double().norm()) for a, b in zip(got, want))


def measure(n, r, L, args, device):
    graph = device.type == "cuda"
    row = {"n": n, "r": r, "L": L, "notes": ""}
    net, Xp, X_norm2, S0 = make_net(n, r, L, device, order=args.node_order)
    row["nnz"] = Xp.values().numel()
    from symnmf.net_chain import NetChain

    chain = NetChain(Xp, net.U0, S0) if NetChain.applies(Xp, net.U0) else None
    # both forms of ours against torch: the chain and, where it applies, the op-by-op objective
    row["rel_diff"] = max(objective_gap(net, Xp, X_norm2, S0, chain), objective_gap(net, Xp, X_norm2, S0))
    del chain
    variants = steps(net, Xp, X_norm2, S0, graph)
    U = torch.rand(n, r, device=device)
    variants["spmm"] = functools.partial(sk.spmm, Xp, U)
    times = {name: [] for name in variants}
    for _ in range(args.rounds):  # the variants in turns, so a drift of the machine touches them all alike
        for name, fn in variants.items():
            times[name].append(bench(fn, warmup=args.warmup, rep=args.rep, device=device))
    ms = {name: statistics.median(t) for name, t in times.items()}
    row.update({"ours_ms": ms["ours"], "torch_ms": ms["torch"], "x_torch": ms["torch"] / ms["ours"],
                "spmm_ms": ms["spmm"], "spmm_floor": (2 * L - 1) * ms["spmm"] / ms["ours"]})
    if "ours_graph" in ms:
        row.update({"ours_graph_ms": ms["ours_graph"], "x_torch_graph": ms["torch"] / ms["ours_graph"],
                    "spmm_floor_graph": (2 * L - 1) * ms["spmm"] / ms["ours_graph"]})
    row.update({"ops_ms": ms.get("ops"), "ops_graph_ms": ms.get("ops_graph")})
    if "ops_graph" in ms:
        row["x_ops_graph"] = ms["ops_graph"] / ms["ours_graph"]
    del net, Xp, variants
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def parse_step_args(parser, argv, name):
    """Add the options the step's scripts share (--threads, --tiles, --name and bench.common's), parse argv and
    set the run up: torch's threads on the CPU, full-precision float32 products. Returns (args, the tiles
    installed as text, or None)."""
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--tiles", help="a tune_tiles JSON whose GPU tiles the library takes for this run")
    parser.add_argument("--name", default=name, help="the table's name")
    add_run_args(parser)
    args = resolve_run_args(parser, parser.parse_args(argv))
    tiles = load_tiles(args.tiles) if args.tiles else None
    if args.device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")
    return args, tiles


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=None, metavar="N,R,L",
                        help="cases as n,r,L (default: 100k and 1M nodes on CUDA, 2,000 and 20,000 on the CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the variants in turns (median)")
    parser.add_argument("--node-order", choices=("rcm", "degree"),
                        help="renumber the graph's nodes first (both variants get the renumbered graph; default: "
                             "the nodes in random order)")
    args, tiles = parse_step_args(parser, argv, "bench_net_step")
    device = args.device
    cases = [tuple(int(v) for v in s.split(",")) for s in args.sizes] if args.sizes else SIZES[device.type]
    rows, start = [], time.perf_counter()
    header = [
        "one training step of SymNMF-Net (all blocks' losses and regularisers, backward, fused Adam, lam's "
        "projection), float32, one problem, planted graph (16 clusters) with about 32 stored entries per row",
        "ours: SymNMFNet's step as fit takes it (its objective in one autograd node, symnmf.net_chain); ours_graph: "
        "the same step replayed from a CUDA graph; ops, ops_graph: the step with the objective op by op; torch: the "
        "network in plain torch (torch.sparse.mm, torch.linalg.inv, autograd; bench_net_step.plain_objective)",
        "times: median of %d rounds of the variants in turns, each %s" % (
            args.rounds, "triton.testing.do_bench's median" if device.type == "cuda" else "a perf_counter median"),
        "x_torch: torch_ms / ours_ms; x_ops_graph: ops_graph_ms / ours_graph_ms; spmm_floor: (2L - 1) SpMMs "
        "(sk.spmm) / the step, 1 at best; rel_diff: ours against torch, loss and every gradient at the start's "
        "weights, worst ||a - b|| / ||b||",
    ]
    if device.type == "cpu":
        header.append("%d thread(s)" % torch.get_num_threads())
    if args.node_order:
        header.append("the graph's nodes renumbered by symnmf_kernels.sparse.locality_order(X, %r) before the net is "
                      "built (a one-off host pass, not timed)" % args.node_order)
    if tiles:
        header.append("GPU tiles from %s: %s" % (os.path.basename(args.tiles), tiles))
    for n, r, L in cases:
        if time.perf_counter() - start > args.budget_s:
            header.append("stopped after --budget-s %g s" % args.budget_s)
            break
        try:
            rows.append(measure(n, r, L, args, device))
        except Exception as exc:  # one failed size must not cost the others
            rows.append({"n": n, "r": r, "L": L, "notes": "%s: %s" % (type(exc).__name__, str(exc)[:120])})
        print({k: rows[-1].get(k) for k in COLUMNS}, flush=True)
        write_table(args.name, rows, COLUMNS, header, out_dir=args.out, device=device, echo=False)
    return 0 if all(not row["notes"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
