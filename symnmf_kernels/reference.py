"""Plain-torch implementation of every op: the oracle for every kernel test.

Shapes follow the public API: leading dimensions are independent problems.
U and P are (..., n, r), G and Ginv are (..., r, r), dense X is (..., n, n).
lam is a float or a tensor broadcastable to the batch shape (...).

Nothing here synchronises with the host: a failed Cholesky writes NaN into
that matrix's inverse instead of raising.
"""
import torch

__all__ = ["gram", "spd_inverse", "apply_relu", "symnmf_block", "spmm", "sym_loss", "block_backward"]


def _lam_matrix(lam, like):
    """lam as a tensor of shape (..., 1, 1) that broadcasts against (..., r, r)."""
    lam = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    return lam[..., None, None]


def gram(U, lam=0.0):
    """G = U^T U + lam I."""
    G = U.mT @ U
    eye = torch.eye(U.shape[-1], dtype=U.dtype, device=U.device)
    return G + _lam_matrix(lam, U) * eye


def spd_inverse(G):
    """Inverse of each symmetric positive definite r x r matrix, through Cholesky.

    A matrix that is not positive definite gets an all-NaN inverse.
    """
    L, info = torch.linalg.cholesky_ex(G)
    failed = (info != 0)[..., None, None]
    # A failed factor may hold zeros on its diagonal, which cholesky_inverse refuses: invert I there instead.
    L = torch.where(failed, torch.eye(G.shape[-1], dtype=G.dtype, device=G.device), L)
    return torch.where(failed, torch.full_like(G, float("nan")), torch.cholesky_inverse(L))


def apply_relu(P, Ginv):
    """ReLU(P @ Ginv)."""
    return torch.relu(P @ Ginv)


def symnmf_block(U, P, lam):
    """One SymNMF-Net block: ReLU(P (U^T U + lam I)^{-1})."""
    return apply_relu(P, spd_inverse(gram(U, lam)))


def block_backward(grad_out, U, P, Ginv, U_out):
    """Gradients of one block (DESIGN.md section 1), for checking the fused backward.

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
