"""Plain-torch implementation of every op: the oracle for every kernel test.

One function per public op of symnmf_kernels.ops, under the same name and
with the same arguments (the tuning arguments of an op, such as gram's
`deterministic` or hals_sweep's `backend`, excepted), written the obvious way:
no fusion, no custom op, no kernel. tests/test_layout.py checks that every
name in symnmf_kernels.ops.__all__ has its twin here.

Shapes follow the public API: leading dimensions are independent problems.
U and P are (..., n, r), G and Ginv are (..., r, r), dense X is (..., n, n).
lam is a float or a tensor broadcastable to the batch shape (...).

Nothing here synchronises with the host: a failed Cholesky writes NaN into
that matrix's inverse instead of raising.
"""
import torch

__all__ = [
    "gram",
    "spd_inverse",
    "apply_relu",
    "apply_relu_gram",
    "symnmf_block",
    "symnmf_block_from_gram",
    "block_backward",
    "spmm",
    "sym_loss",
    "sparse_sym_loss",
    "sparse_layer_loss",
    "hals_sweep",
    "hals_sweep_",
    "revive_zero_columns_",
    "nnls",
    "projected_gradient_sq",
]


def _lam_matrix(lam, like):
    """lam as a tensor of shape (..., 1, 1) that broadcasts against (..., r, r)."""
    if isinstance(lam, torch.Tensor) and lam.is_complex():  # the cast would drop the imaginary part
        raise TypeError(f"lam must be a float or a float tensor, got a complex tensor ({lam.dtype})")
    lam = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    return lam[..., None, None]


def _plus_lam_eye(G, lam):
    """G + lam I with lam on the diagonal alone, as the ops add it: lam * I would make a non-finite lam's 0 * inf
    NaN off the diagonal too."""
    lam = _lam_matrix(lam, G)[..., 0]
    return G + torch.diag_embed(lam.expand(torch.broadcast_shapes(G.shape[:-1], lam.shape)))


def gram(U, lam=0.0):
    """G = U^T U + lam I."""
    return _plus_lam_eye(U.mT @ U, lam)


def spd_inverse(G):
    """Inverse of each symmetric positive definite r x r matrix, through Cholesky.

    Only the lower triangle of G is read. A matrix that is not positive definite, or with a non-finite diagonal
    entry, gets an all-NaN inverse.
    """
    L, info = torch.linalg.cholesky_ex(G)
    # Cholesky accepts an infinite pivot and the inverse then has a finite zero row and column.
    failed = ((info != 0) | ~G.diagonal(dim1=-2, dim2=-1).isfinite().all(-1))[..., None, None]
    # A failed factor may hold zeros on its diagonal, which cholesky_inverse refuses: invert I there instead.
    L = torch.where(failed, torch.eye(G.shape[-1], dtype=G.dtype, device=G.device), L)
    return torch.where(failed, torch.full_like(G, float("nan")), torch.cholesky_inverse(L))


def apply_relu(P, Ginv):
    """ReLU(P @ Ginv)."""
    return torch.relu(P @ Ginv)


def apply_relu_gram(P, Ginv):
    """(Y, Y^T Y) with Y = ReLU(P @ Ginv)."""
    Y = apply_relu(P, Ginv)
    return Y, Y.mT @ Y


def symnmf_block(U, P, lam):
    """One SymNMF-Net block: ReLU(P (U^T U + lam I)^{-1})."""
    return apply_relu(P, spd_inverse(gram(U, lam)))


def symnmf_block_from_gram(UtU, P, lam):
    """One block from the Gram U^T U of its input: (Y, Y^T Y), Y = ReLU(P (U^T U + lam I)^{-1})."""
    return apply_relu_gram(P, spd_inverse(_plus_lam_eye(UtU, lam)))


def block_backward(grad_out, U, P, Ginv, U_out):
    """Gradients of one block (docs/design.md, "The block and its backward"), for checking the fused backward.

    Returns (dU, dP, dG), dG the gradient of G = U^T U + lam I; that of lam is
    trace(dG) per problem.
    """
    Zb = grad_out * (U_out > 0)
    dP = Zb @ Ginv.mT
    dG = -(Ginv.mT @ (P.mT @ Zb) @ Ginv.mT)
    dU = U @ (dG + dG.mT)
    return dU, dP, dG


def spmm(X, U):
    """X @ U for a sparse (CSR/COO) or dense X of shape (n, n)."""
    if X.layout != torch.strided:
        return torch.sparse.mm(X, U) if U.dim() == 2 else torch.stack([torch.sparse.mm(X, u) for u in U])
    return X @ U


def sym_loss(X, U):
    """||X - U U^T||_F^2, per problem (shape (...)).

    Dense X forms the residual; sparse X uses ||X||^2 - 2 <X U, U> + ||U^T U||^2.
    """
    if X.layout != torch.strided:
        values = X.coalesce().values() if X.layout == torch.sparse_coo else X.values()
        XU = spmm(X, U)
        G = U.mT @ U
        return values.pow(2).sum() - 2 * (XU * U).sum((-2, -1)) + G.pow(2).sum((-2, -1))
    R = X - U @ U.mT
    return R.pow(2).sum((-2, -1))


def _dense(X):
    """X as a dense tensor: a torch sparse tensor is densified, a dense one returned as is."""
    return X.to_dense() if X.layout != torch.strided else X


def sparse_sym_loss(X, U):
    """||X - U U^T||_F^2 per problem (shape U.shape[:-2]) for a sparse or dense X (n, n) shared by every problem.

    The residual is formed densely: this is the oracle of the op's expansion
    ||X||^2 - 2 <X U, U> + ||U^T U||^2, not a copy of it.
    """
    R = _dense(X) - U @ U.mT
    return R.pow(2).sum((-2, -1))


def sparse_layer_loss(X, U, P=None, lam=0.0):
    """(||X - U U^T||_F^2, ||P - (X U + lam U)||_F^2) per problem; the second is None without P."""
    Xd = _dense(X)
    loss = (Xd - U @ U.mT).pow(2).sum((-2, -1))
    if P is None:
        return loss, None
    return loss, (P - (Xd @ U + _lam_matrix(lam, U) * U)).pow(2).sum((-2, -1))


ZERO_COLUMN_FILL = 1e-16


def hals_sweep_(W, C, B, *, V=None, lam=0.0, revive=True):
    """One SymHALS sweep over the columns of W (n x r), in place; returns W's column maxima (r,).

    for k in 0..r-1: w_k <- max(0, w_k + (C_k - W B_k) / B_kk), with C + lam V
    in place of C when V is given. With revive, a column left all zero is
    then set to 1e-16 times the largest entry of W. A batch W (P, n, r) with
    B (P, r, r) sweeps each factor with its own B; the maxima are then (P, r).
    """
    if W.dim() == 3:
        return torch.stack([hals_sweep_(W[p], C[p], B[p], V=None if V is None else V[p], lam=lam, revive=revive)
                            for p in range(W.shape[0])])
    if V is not None:
        C = C + lam * V
    for k in range(W.shape[1]):
        W[:, k] = torch.clamp(W[:, k] + (C[:, k] - W @ B[:, k]) / B[k, k], min=0)
    colmax = W.amax(0)
    return revive_zero_columns_(W, colmax) if revive else colmax


def revive_zero_columns_(W, colmax):
    """Set the columns of W (n x r, or each factor of a batch (P, n, r)) whose maximum in colmax ((r,) or (P, r))
    is zero to 1e-16 times the largest entry of colmax (per factor), in place; returns colmax after it."""
    fill = ZERO_COLUMN_FILL * colmax.amax(-1, keepdim=True)
    zero = colmax == 0
    W.copy_(torch.where(zero[..., None, :], fill[..., None], W))
    return torch.where(zero, fill, colmax)


def hals_sweep(W, C, B, *, V=None, lam=0.0, revive=True):
    """Out-of-place `hals_sweep_`: (updated copy of W, its column maxima)."""
    W = W.clone()
    return W, hals_sweep_(W, C, B, V=V, lam=lam, revive=revive)


def projected_gradient_sq(grad, U):
    """||P(grad)||^2 with P(grad) = grad where U > 0, min(grad, 0) where U = 0 (a NaN in grad stays NaN, and a
    NaN or an infinity in U makes it NaN), squared and summed in float64."""
    projected = torch.where(U > 0, grad, torch.minimum(grad, torch.zeros_like(grad))) + (U - U)
    return projected.double().pow(2).sum()


def _passive_solution(G, C, F):
    """x with x_F = G_FF^{-1} c_F, x = 0 off F, for every row: the masked system G * F F^T + diag(1 - F)."""
    Fd = F.to(G.dtype)
    M = G.unsqueeze(-3) * (Fd.unsqueeze(-1) * Fd.unsqueeze(-2)) + torch.diag_embed(1 - Fd)
    x, info = torch.linalg.solve_ex(M, (C * Fd).unsqueeze(-1))
    return torch.where((info != 0).unsqueeze(-1), float("nan"), x.squeeze(-1) * Fd)


def nnls(G, C, x0=None, *, max_rounds=None):
    """Rows of argmin_{x >= 0} 1/2 x^T G x - c^T x for the rows c of C (..., m, k), G (..., k, k) read as its
    symmetric part: block principal pivoting (Kim & Park 2011) over all rows at once, every row re-solved every
    round. The last solve is differentiable, so autograd gives the derivative on the final active set.

    A NaN or Inf in a row of C, or in G, makes that row NaN.
    """
    G = 0.5 * (G + G.mT)
    k = G.shape[-1]
    if max_rounds is None:
        max_rounds = 5 * k + 20
    tol = (2.0 ** -17 if C.dtype == torch.float32 else 2.0 ** -46) * C.detach().abs().amax(-1, keepdim=True)
    F = (x0 > 0) if x0 is not None else torch.zeros(C.shape, dtype=torch.bool, device=C.device)
    alpha = torch.full(C.shape[:-1], 3, device=C.device)
    beta = torch.full(C.shape[:-1], k + 1, device=C.device)
    with torch.no_grad():
        for rounds in range(max_rounds + 1):
            X = _passive_solution(G, C, F)
            Y = (X.unsqueeze(-2) @ G.unsqueeze(-3)).squeeze(-2) - C
            infeasible = (F & (X < 0)) | (~F & (Y < -tol))
            count = infeasible.sum(-1)
            if rounds == max_rounds or not bool(count.any()):
                break
            fewer = count < beta
            full_exchange = fewer | (alpha >= 1)
            beta = torch.where(fewer, count, beta)
            alpha = torch.where(fewer, 3, torch.where(alpha >= 1, alpha - 1, alpha))
            cols = torch.arange(k, device=C.device)
            largest = torch.where(infeasible, cols, -1).amax(-1, keepdim=True)
            F = F ^ torch.where(full_exchange.unsqueeze(-1), infeasible, cols == largest)
    X = _passive_solution(G, C, F)
    poison = (C * 0).sum(-1, keepdim=True) + (G * 0).sum((-2, -1))[..., None, None]
    return torch.where(X < 0, 0.0, X) + poison
