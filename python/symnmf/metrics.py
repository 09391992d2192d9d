"""Clustering quality against ground-truth classes: accuracy, NMI and purity; and the recovery error of
learned features against true ones.

Labels may be any hashable values (ints, strings); the number of clusters need
not equal the number of classes. NMI names its normalisation: the SymNMF papers'
tables use MI / max(H(true), H(pred)) (``normalization="max"``, the default here),
while scikit-learn's ``normalized_mutual_info_score`` defaults to the arithmetic
mean of the two entropies (``normalization="arithmetic"``).
"""
import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["contingency", "accuracy", "nmi", "purity", "recovery_error", "NMI_NORMALIZATIONS"]

NMI_NORMALIZATIONS = ("max", "arithmetic", "geometric", "min")


def _as_labels(labels, name):
    if hasattr(labels, "detach"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{name} is empty")
    return labels


def contingency(labels_true, labels_pred):
    """Counts C[i, j] of samples of class i (sorted unique true labels) put in cluster j."""
    labels_true = _as_labels(labels_true, "labels_true")
    labels_pred = _as_labels(labels_pred, "labels_pred")
    if labels_true.shape != labels_pred.shape:
        raise ValueError(
            f"labels_true and labels_pred must have the same length, got {labels_true.size} and {labels_pred.size}"
        )
    _, t = np.unique(labels_true, return_inverse=True)
    _, p = np.unique(labels_pred, return_inverse=True)
    counts = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(counts, (t.ravel(), p.ravel()), 1)
    return counts


def accuracy(labels_true, labels_pred):
    """Fraction of samples correctly labelled under the best one-to-one matching of
    clusters to classes (Hungarian algorithm). With more clusters than classes the
    unmatched clusters count as wrong."""
    counts = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def _entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels_true, labels_pred, normalization="max"):
    """Normalised mutual information MI / norm(H(true), H(pred)), natural logarithms.

    normalization: "max" (the SymNMF papers' tables), "arithmetic" (scikit-learn's
    default, equal to its normalized_mutual_info_score), "geometric" or "min".
    Two single-cluster labellings score 1; otherwise a zero normaliser scores 0.
    """
    if normalization not in NMI_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NMI_NORMALIZATIONS}, got {normalization!r}")
    counts = contingency(labels_true, labels_pred)
    if counts.shape[0] == 1 and counts.shape[1] == 1:
        return 1.0
    n = counts.sum()
    joint = counts / n
    p_true = joint.sum(axis=1, keepdims=True)
    p_pred = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / (p_true @ p_pred)[nz])).sum())
    h_true = _entropy(counts.sum(axis=1))
    h_pred = _entropy(counts.sum(axis=0))
    norm = {
        "max": max(h_true, h_pred),
        "arithmetic": (h_true + h_pred) / 2,
        "geometric": float(np.sqrt(h_true * h_pred)),
        "min": min(h_true, h_pred),
    }[normalization]
    if norm <= 0:
        return 0.0
    # MI <= min(H1, H2) exactly; rounding can push it a hair past, or below 0.
    return float(np.clip(mi / norm, 0.0, 1.0))


def purity(labels_true, labels_pred):
    """Fraction of samples that belong to the majority class of their cluster."""
    counts = contingency(labels_true, labels_pred)
    return float(counts.max(axis=0).sum() / counts.sum())


def recovery_error(A_hat, A_true):
    """||A - A*||_F / ||A*||_F of recovered features A_hat (d x k) against A_true (d x k), after matching
    the columns (Hungarian, by cosine) and scaling each matched column onto A*'s: the error of a
    factorisation that is unique only up to a permutation and scaling of its components. inf when A_hat
    is not finite or has a zero column."""
    A_hat, A_true = np.asarray(A_hat, dtype=np.float64), np.asarray(A_true, dtype=np.float64)
    if A_hat.shape != A_true.shape:
        raise ValueError(f"A_hat has shape {A_hat.shape} but A_true {A_true.shape}; pass both as d x k")
    norms = np.linalg.norm(A_hat, axis=0)
    if not np.isfinite(A_hat).all() or (norms == 0).any():
        return float("inf")
    cos = (A_hat / norms).T @ (A_true / np.linalg.norm(A_true, axis=0))
    rows, cols = linear_sum_assignment(-cos)
    matched = np.empty_like(A_true)
    matched[:, cols] = A_hat[:, rows]
    scale = (matched * A_true).sum(0) / (matched * matched).sum(0)
    return float(np.linalg.norm(matched * scale - A_true) / np.linalg.norm(A_true))
