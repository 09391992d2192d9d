"""Microbenchmark of the sparse kernels: sk.spmm against torch.sparse.mm (cuSPARSE on CUDA), and the sparse loss step.

Graphs (symmetric, weights normalised D^{-1/2} A D^{-1/2}, node order random
unless the graph is banded by construction):

    knn_gauss   k = 16 nearest neighbours of Gaussian-mixture points (d = 16,
                10 clusters), approximate search: exact among the 1024 nearest
                points in a sort by (cluster, a random projection); nodes in
                random order, as a data set would come
    knn_like    docs/design.md, "Measuring performance": 16 out-neighbours, half within +-500 of the
                node's index, half uniform; A + A^T
    random      a uniformly random pattern with knn_gauss's number of entries

Rows:

    spmm        X @ U: ours (sk.spmm, C++/CUDA kernel), torch.sparse.mm, and the
                dense product X_dense @ U where X fits in memory
    sparse_loss value and gradients of ||X - U U^T||^2 + ||P - (X U + lam U)||^2
                (sparse_layer_loss; one SpMM forward, one backward) against the same
                step written in plain torch (torch.sparse.mm + autograd)

Each row gives median times (triton.testing.do_bench on CUDA), the ideal
traffic of the SpMM (indices and values once, U read once, the result written
once), achieved fractions of the measured copy bandwidth and speed-ups. The
table goes to bench/results/bench_spmm-<date>-<device>.md, rewritten after
every row.

    python bench/bench_spmm.py                  # CUDA: --sizes full; CPU: --sizes small
    python bench/bench_spmm.py --sizes tiny --rep 5 --out /tmp/results
"""
import argparse
import gc
import importlib
import math
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import symnmf_kernels as sk  # noqa: E402
from bench.common import (  # noqa: E402
    add_run_args,
    bench,
    copy_bandwidth,
    host_ms,
    resolve_run_args,
    roofline_fraction,
    write_table,
)
from symnmf_kernels.ops.sparse_loss import sparse_layer_loss  # noqa: E402
from symnmf_kernels.sparse import CSR  # noqa: E402

GRAPHS = ("knn_gauss", "knn_like", "random")
SIZES = {
    "tiny": {"n": [2_000], "r": [4, 16]},
    "small": {"n": [10_000, 100_000], "r": [16, 64]},
    "full": {"n": [100_000, 1_000_000, 4_000_000], "r": [16, 32, 64, 128]},
}
DENSE_LIMIT_BYTES = 4 << 30  # the dense product runs when X_dense fits in this much memory
COLUMNS = [
    "graph", "n", "nnz", "r", "op",
    "ours_ms", "ours1_ms", "ours4_ms", "torch_ms", "dense_ms", "host_ours_ms", "host_torch_ms",
    "ideal_MB", "copy_GB/s",
    "frac_ours", "frac_torch", "gather_frac_ours", "x_torch", "x1_torch", "x4_torch", "x_dense", "rel_err", "notes",
]
LAM = 0.5
K = 16


# ---- graphs -----------------------------------------------------------------------------------------------------


def _normalised_csr(rows, cols, weights, n):
    """Symmetrised (A + A^T), duplicates summed, D^{-1/2} A D^{-1/2}; a CSR with int32 indices."""
    rows, cols = torch.cat([rows, cols]), torch.cat([cols, rows])
    weights = torch.cat([weights, weights])
    A = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (n, n), check_invariants=False).coalesce()
    (r, c), w = A.indices(), A.values()
    deg = torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, r, w)
    inv_sqrt = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    w = w * inv_sqrt[r] * inv_sqrt[c]
    crow = torch.zeros(n + 1, dtype=torch.int64, device=w.device)
    torch.cumsum(torch.bincount(r, minlength=n), 0, out=crow[1:])
    X = CSR(crow, c.to(torch.int32), w.float(), (n, n), name="X")
    X._symmetric = True  # symmetric by construction
    return X


def knn_like(n, device, gen):
    half = K // 2
    rows = torch.arange(n, device=device).repeat_interleave(K)
    near = (torch.arange(n, device=device)[:, None] + torch.randint(-500, 501, (n, half), device=device, generator=gen)) % n
    far = torch.randint(0, n, (n, half), device=device, generator=gen)
    cols = torch.cat([near, far], 1).reshape(-1)
    keep = rows != cols
    w = torch.rand(rows.numel(), device=device, generator=gen) * 0.9 + 0.1
    return _normalised_csr(rows[keep], cols[keep], w[keep], n)


def knn_gauss(n, device, gen, d=16, clusters=10, window=1024, chunk=256):
    centres = 4 * torch.randn(clusters, d, device=device, generator=gen)
    label = torch.randint(0, clusters, (n,), device=device, generator=gen)
    points = centres[label] + torch.randn(n, d, device=device, generator=gen)
    direction = torch.randn(d, device=device, generator=gen)
    key = label.double() * 1e6 + (points @ direction).double()
    order = torch.argsort(key)  # sorted position -> node
    sp = points[order]
    nbr = torch.empty(n, K, dtype=torch.int64, device=device)
    dist = torch.empty(n, K, device=device)
    for q0 in range(0, n, chunk):
        q1 = min(n, q0 + chunk)
        c0 = max(0, min(q0 - (window - chunk) // 2, n - window))
        c1 = min(n, c0 + window)
        D = torch.cdist(sp[q0:q1], sp[c0:c1]).pow_(2)
        D[torch.arange(q1 - q0, device=device), torch.arange(q0, q1, device=device) - c0] = float("inf")
        k = min(K, c1 - c0 - 1)
        vals, idx = torch.topk(D, k, largest=False)
        nbr[q0:q1, :k], dist[q0:q1, :k] = idx + c0, vals
        if k < K:
            nbr[q0:q1, k:], dist[q0:q1, k:] = nbr[q0:q1, :1], vals[:, :1]
    sigma = dist[:, min(6, K - 1)].clamp_min(1e-12).sqrt()  # distance to the 7th neighbour
    w = torch.exp(-dist / (sigma[:, None] * sigma[nbr]))
    rows = order.repeat_interleave(K)
    cols = order[nbr.reshape(-1)]
    return _normalised_csr(rows, cols, w.reshape(-1), n)


def random_pattern(n, nnz, device, gen):
    m = nnz // 2  # symmetrisation doubles the entries
    rows = torch.randint(0, n, (m,), device=device, generator=gen)
    cols = torch.randint(0, n, (m,), device=device, generator=gen)
    keep = rows != cols
    w = torch.rand(m, device=device, generator=gen) * 0.9 + 0.1
    return _normalised_csr(rows[keep], cols[keep], w[keep], n)


def make_graph(kind, n, device, seed, nnz_hint=None):
    gen = torch.Generator(device=device).manual_seed(seed)
    if kind == "knn_like":
        return knn_like(n, device, gen)
    if kind == "knn_gauss":
        return knn_gauss(n, device, gen)
    return random_pattern(n, nnz_hint or 2 * K * n, device, gen)


# ---- measurements -----------------------------------------------------------------------------------------------


def spmm_bytes(X, r, itemsize):
    n_rows, n_cols = X.shape
    return (X.nnz * (X.col_indices.element_size() + itemsize) + (n_rows + 1) * 8 + (n_cols + n_rows) * r * itemsize)


def gather_bytes(X, r, itemsize):
    """Bytes an SpMM moves when no row of U stays in cache: every stored entry reads its index and value and gathers
    its row of U (r values, in whole 32-byte sectors), and X U is written once. Where U is far larger than the L2
    (millions of rows in random order) this, not U read once, is the floor."""
    n_rows, _ = X.shape
    row = -(-r * itemsize // 32) * 32
    return X.nnz * (X.col_indices.element_size() + itemsize + row) + (n_rows + 1) * 8 + n_rows * r * itemsize


def torch_csr(X):
    """torch's CSR of X for torch.sparse.mm, int32 indices like ours (cuSPARSE's fastest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            Y = torch.sparse_csr_tensor(X.crow_indices.to(torch.int32), X.col_indices, X.values, size=X.shape,
                                        check_invariants=False)
            torch.sparse.mm(Y, torch.ones(X.shape[1], 1, device=X.device))
            return Y, ""
        except RuntimeError:
            return X.to_torch(), "torch.sparse.mm with int64 indices"


def rel_err(a, b):
    a, b = a.double(), b.double()
    denom = torch.linalg.vector_norm(b).item()
    err = torch.linalg.vector_norm(a - b).item() / (denom if denom > 0 else 1.0)
    return err if math.isfinite(err) else float("nan")


def short_error(exc):
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, (text[0] if text else "")[:100])


def release(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_spmm(X, Xt, r, args, bw, device, dense_ok):
    U = torch.rand(X.shape[1], r, device=device)
    row, notes = {}, []
    nbytes = spmm_bytes(X, r, 4)
    row["ideal_MB"] = nbytes / 1e6
    if args.ours == "extension":  # the extension's kernel itself, whatever sk.spmm would dispatch to
        def product():
            return torch.ops.symnmf_kernels.spmm_csr(X.crow_indices, X.col_indices, X.values, U, None, None, None)
    else:
        def product():
            return sk.spmm(X, U)
    ours = product()
    ref = torch.sparse.mm(Xt, U)
    row["rel_err"] = rel_err(ours, ref)
    del ours, ref
    row["ours_ms"] = bench(product, warmup=args.warmup, rep=args.rep, device=device)
    if device.type == "cuda":  # the CUDA kernel's two loops forced, side by side with the one it picks
        for gathers in ("1", "4"):
            os.environ["SYMNMF_SPMM_GATHERS"] = gathers
            try:
                row["rel_err"] = max(row["rel_err"], rel_err(product(), torch.sparse.mm(Xt, U)))
                row[f"ours{gathers}_ms"] = bench(product, warmup=args.warmup, rep=args.rep, device=device)
            finally:
                del os.environ["SYMNMF_SPMM_GATHERS"]
    row["torch_ms"] = bench(lambda: torch.sparse.mm(Xt, U), warmup=args.warmup, rep=args.rep, device=device)
    row["dense_ms"] = float("nan")
    if dense_ok:
        try:
            Xd = Xt.to_dense()
            row["dense_ms"] = bench(lambda: Xd @ U, warmup=args.warmup, rep=args.rep, device=device)
            del Xd
        except (RuntimeError, MemoryError) as exc:
            notes.append("dense: " + short_error(exc))
            release(device)
    row["frac_ours"] = roofline_fraction(nbytes, row["ours_ms"], bw)
    row["frac_torch"] = roofline_fraction(nbytes, row["torch_ms"], bw)
    row["gather_frac_ours"] = roofline_fraction(gather_bytes(X, r, 4), row["ours_ms"], bw)
    row["x_torch"] = row["torch_ms"] / row["ours_ms"]
    for gathers in ("1", "4"):
        if f"ours{gathers}_ms" in row:
            row[f"x{gathers}_torch"] = row["torch_ms"] / row[f"ours{gathers}_ms"]
    row["x_dense"] = row["dense_ms"] / row["ours_ms"]
    return row, notes


def torch_sparse_loss(Xt, x_sq, U, P, lam):
    S = torch.sparse.mm(Xt, U)
    loss = x_sq - 2 * (S * U).sum() + (U.mT @ U).pow(2).sum()
    reg = (P - S - lam * U).pow(2).sum()
    return loss, reg


def bench_sparse_loss(X, Xt, r, args, bw, device):
    U = torch.rand(X.shape[1], r, device=device, requires_grad=True)
    P = torch.rand(X.shape[1], r, device=device, requires_grad=True)
    lam = torch.tensor(LAM, device=device, requires_grad=True)
    x_sq = X.values.double().pow(2).sum().float()
    leaves = [U, P, lam]

    def ours():
        loss, reg = sparse_layer_loss(X, U, P, lam, symmetric=True)
        (loss + reg).backward()

    def plain():
        loss, reg = torch_sparse_loss(Xt, x_sq, U, P, lam)
        (loss + reg).backward()

    ours()
    g_ours = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    plain()
    g_ref = [t.grad.clone() for t in leaves]
    row = {"rel_err": max(rel_err(a, b) for a, b in zip(g_ours, g_ref))}
    row["ours_ms"] = bench(ours, warmup=args.warmup, rep=args.rep, grad_to_none=leaves, device=device)
    row["torch_ms"] = bench(plain, warmup=args.warmup, rep=args.rep, grad_to_none=leaves, device=device)
    if device.type == "cuda":  # a step whose device time is close to its host time is bound by the host
        row["host_ours_ms"] = host_ms(ours, grad_to_none=leaves, device=device)
        row["host_torch_ms"] = host_ms(plain, grad_to_none=leaves, device=device)
    # two SpMMs plus the fused passes: forward reads U, S, P; backward writes W, reads P, S, U, W, Y, writes dU
    nbytes = 2 * spmm_bytes(X, r, 4) + 4 * X.shape[0] * r * 11
    row["ideal_MB"] = nbytes / 1e6
    row["frac_ours"] = roofline_fraction(nbytes, row["ours_ms"], bw)
    row["frac_torch"] = roofline_fraction(nbytes, row["torch_ms"], bw)
    row["x_torch"] = row["torch_ms"] / row["ours_ms"]
    return row, []


def header_lines(args, device, bw, stopped):
    status = importlib.import_module("symnmf_kernels.ops.spmm").extension_status()
    lines = [
        ("ours: sk.spmm (symnmf_kernels::spmm_csr, native %s kernel: %s%s)" % (
            device.type, status[device.type],
            "; on the CPU it hands a forward at r <= 8 with int32 indices to torch.sparse.mm"
            if device.type == "cpu" else "")
         if args.ours == "sk.spmm" else "ours: the extension's kernel alone (symnmf_kernels::spmm_csr)")
        + "; torch: torch.sparse.mm (%s); dense: X_dense @ U" % (
            "cuSPARSE" if device.type == "cuda" else "torch's CPU kernel, MKL with int32 indices"),
        "times: median ms, %s; warmup %g ms, rep %g ms" % (
            "triton.testing.do_bench (CUDA events, L2 flushed before each run)" if device.type == "cuda"
            else "time.perf_counter, %d threads" % torch.get_num_threads(), args.warmup, args.rep),
        "float32, TF32 off, int32 column indices; U = torch.rand(n, r), fresh per row",
        "ideal_MB (spmm): nnz (4 + 4) + 8 (n + 1) + 2 n r 4 bytes: entries once, U read once, X U written once",
        "sparse_loss: sparse_layer_loss(X, U, P, lam) forward + backward (U, P, lam) vs the same in plain torch "
        "(torch.sparse.mm + autograd); ideal_MB: two SpMMs + 11 n r floats; host_ours_ms, host_torch_ms (CUDA "
        "only): median host time to issue one call, the device idle at its start (bench.common.host_ms)",
        "copy bandwidth: %.4g GB/s (device-to-device copy, bytes read + written); frac_*: (ideal bytes / time) / copy bandwidth"
        % (bw / 1e9),
        "x_torch, x_dense: speed-up of ours; rel_err: ours vs torch.sparse.mm (sparse_loss: worst gradient)",
        "gather_frac_ours (spmm): the gather floor over ours: every stored entry's index, value and row of U (in "
        "32-byte sectors) read, X U written, at the copy bandwidth; above 1 where rows of U stay in cache",
        "ours1_ms, ours4_ms (CUDA): the kernel's loop with one and with four gathers in flight per lane, forced by "
        "SYMNMF_SPMM_GATHERS; ours_ms is the loop it picks (four from r = 64)",
        "knn_gauss: approximate kNN (exact among a 1024-point window of a (cluster, random projection) sort)",
    ]
    if device.type != "cuda":
        lines.append("CPU run: the C++ OpenMP kernel against torch's CPU sparse kernel on a shared machine; "
                     "no GPU numbers here")
    if stopped:
        lines.append("stopped after --budget-s %g s: %d rows not measured" % (args.budget_s, stopped))
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), help="size preset (default: full on CUDA, small on CPU)")
    parser.add_argument("--graphs", nargs="+", choices=GRAPHS, default=list(GRAPHS))
    parser.add_argument("--r", type=int, nargs="+", help="ranks (default: from --sizes)")
    parser.add_argument("--n", type=int, nargs="+", help="node counts (default: from --sizes)")
    parser.add_argument("--no-loss", action="store_true", help="skip the sparse_loss rows")
    parser.add_argument("--ours", choices=["sk.spmm", "extension"], default="sk.spmm",
                        help="the spmm rows' ours: sk.spmm as users call it, or the extension's kernel alone")
    parser.add_argument("--name", default="bench_spmm", help="table name (file <name>-<date>-<device>.md)")
    add_run_args(parser)  # --budget-s: 60 s on CUDA by default, unlimited on CPU
    args = resolve_run_args(parser, parser.parse_args(argv), cuda_budget_s=60.0)
    args.sizes = args.sizes or ("full" if args.device.type == "cuda" else "small")
    args.n = args.n or SIZES[args.sizes]["n"]
    args.r = args.r or SIZES[args.sizes]["r"]
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    torch.manual_seed(args.seed)
    torch.set_float32_matmul_precision("highest")
    bw = copy_bandwidth(device)
    start = time.perf_counter()
    rows, stopped, path = [], 0, None
    cases = [(n, g) for n in args.n for g in args.graphs]
    for i, (n, kind) in enumerate(cases):
        if time.perf_counter() - start > args.budget_s:
            stopped += len(args.r) * (1 if args.no_loss else 2)
            continue
        t0 = time.perf_counter()
        try:
            nnz_hint = next((r["nnz"] for r in rows if r["graph"] == "knn_gauss" and r["n"] == n and "nnz" in r), None)
            X = make_graph(kind, n, device, args.seed + i, nnz_hint)
            Xt, torch_note = torch_csr(X)
        except Exception as exc:  # e.g. out of memory: the other graphs still run
            rows.append({"graph": kind, "n": n, "op": "spmm", "notes": "graph: " + short_error(exc)})
            release(device)
            continue
        dense_ok = n * n * 4 <= DENSE_LIMIT_BYTES
        for r in args.r:
            for op in ("spmm",) if args.no_loss else ("spmm", "sparse_loss"):
                row = {"graph": kind, "n": n, "nnz": X.nnz, "r": r, "op": op, "copy_GB/s": bw / 1e9}
                try:
                    if op == "spmm":
                        values, notes = measure_spmm(X, Xt, r, args, bw, device, dense_ok)
                    else:
                        values, notes = bench_sparse_loss(X, Xt, r, args, bw, device)
                    row.update(values)
                except Exception as exc:
                    notes = [short_error(exc)]
                    release(device)
                row["notes"] = "; ".join([torch_note] * bool(torch_note) + notes)
                rows.append(row)
                print("%-9s n=%-8d r=%-4d %-9s ours %.4g ms, torch %.4g ms" % (
                    kind, n, r, op, row.get("ours_ms", float("nan")), row.get("torch_ms", float("nan"))), flush=True)
                path = write_table(args.name, rows, COLUMNS, header_lines(args, device, bw, stopped),
                                   out_dir=args.out, device=device, echo=False)
        print("  %s n=%d done in %.1f s" % (kind, n, time.perf_counter() - t0), flush=True)
        del X, Xt
        release(device)
    path = write_table(args.name, rows, COLUMNS, header_lines(args, device, bw, stopped),
                       out_dir=args.out, device=device, echo=True)
    print("wrote", path, flush=True)
    return path


if __name__ == "__main__":
    main()
