"""Clustering quality against ground-truth classes: accuracy, NMI and purity; the label-free quality of a
clustering on its own graph: modularity; and the recovery error of learned features against true ones.

Labels may be any hashable values (ints, strings); the number of clusters need
not equal the number of classes. NMI names its normalisation: the SymNMF papers'
tables use MI / max(H(true), H(pred)) (``normalization="max"``, the default here),
while scikit-learn's ``normalized_mutual_info_score`` defaults to the arithmetic
mean of the two entropies (``normalization="arithmetic"``).
"""
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

import symnmf_kernels as sk

__all__ = ["contingency", "accuracy", "nmi", "purity", "modularity", "recovery_error", "NMI_NORMALIZATIONS"]

NMI_NORMALIZATIONS = ("max", "arithmetic", "geometric", "min")


def _as_labels(labels, name):
    if hasattr(labels, "detach"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{name} is empty")
    # NaN is unequal to itself (so also found in object arrays): np.unique would make it a class, or several
    if labels.dtype.kind in "fcO" and bool((labels != labels).any()):
        raise ValueError(f"{name} contains NaN; every sample needs a label")
    return labels


def _codes(labels):
    """Each label's index among the distinct labels: sorted ones, or where they do not sort (None beside ints,
    strings beside ints) in order of first appearance."""
    try:
        return np.unique(labels, return_inverse=True)[1]
    except TypeError:
        index = {}
        return np.array([index.setdefault(label, len(index)) for label in labels.tolist()])


def contingency(labels_true, labels_pred):
    """Counts C[i, j] of samples of class i put in cluster j, classes and clusters numbered by `_codes` (sorted
    unique labels, or for labels that do not sort their order of first appearance)."""
    labels_true = _as_labels(labels_true, "labels_true")
    labels_pred = _as_labels(labels_pred, "labels_pred")
    if labels_true.shape != labels_pred.shape:
        raise ValueError(
            f"labels_true and labels_pred must have the same length, got {labels_true.size} and {labels_pred.size}"
        )
    t, p = _codes(labels_true), _codes(labels_pred)
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


def modularity(X, labels, n_clusters=None):
    """Newman's modularity of hard labellings on the weighted graph X, which needs no ground truth:

        Q = sum_c [ w_c / w - (v_c / w)^2 ],

    w = 1^T X 1 the graph's total weight, w_c = h_c^T X h_c the weight inside cluster c and v_c = h_c^T X 1
    its volume (h_c: the indicator of c). Q is the fraction of weight inside the clusters minus what a random
    graph with the same degrees would put there; higher is better, at most 1.

    X: n x n similarity, dense or sparse (numpy, scipy or torch), entries >= 0. labels: (n,) or a batch
    (..., n) of labellings, ints in [0, n_clusters) (default: their maximum + 1).
    Returns a float for one labelling, else a float64 tensor of the batch's shape. One product of X with
    the clusters' indicators of the whole batch.
    """
    from .validation import as_similarity

    X = as_similarity(X)
    n = X.shape[0]
    if X.dim() != 2 or X.shape[1] != n:
        raise ValueError(f"X must be a square n x n similarity, got shape {tuple(X.shape)}")
    values = X.values() if X.layout != torch.strided else X
    if bool((values < 0).any()):  # Q compares weights with what their degrees predict: at most 1 only for X >= 0
        raise ValueError("X has negative entries; modularity is defined for a graph's non-negative weights")
    labels = torch.as_tensor(labels.detach() if hasattr(labels, "detach") else np.asarray(labels),
                             device=X.device)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() < 1 or labels.shape[-1] != n:
        raise ValueError(f"labels must hold integer labels with last dimension n = {n}, "
                         f"got {labels.dtype} of shape {tuple(labels.shape)}")
    low, high = torch.stack(torch.aminmax(labels)).tolist() if labels.numel() else (0, -1)  # one host read
    if low < 0:
        raise ValueError("labels must be >= 0")
    k = high + 1 if n_clusters is None else int(n_clusters)
    if high >= k:
        raise ValueError(f"labels must be < n_clusters = {k}, got {high}")
    batch = labels.shape[:-1]
    if batch and labels.numel() == 0:  # a batch of no labellings
        return torch.empty(batch, dtype=torch.float64)
    H = cluster_indicators(labels.reshape(-1, n), k, X.dtype)
    XH = sk.spmm(X, H) if X.layout != torch.strided else X @ H  # one product for the whole batch
    q = modularity_from_sums(modularity_sums(H, XH, k), k)
    return float(q[0]) if not batch else q.reshape(batch).cpu()


def cluster_indicators(labels, k, dtype):
    """The indicators of B labellings (B, n) into k clusters side by side: an n x (B k) 0/1 matrix."""
    return torch.nn.functional.one_hot(labels.long().t(), k).to(dtype).reshape(labels.shape[1], -1)


# Relative gap under which two modularities count as equal: starts that end at the same partition score equal up
# to rounding, which a renumbered graph or another thread count changes.
MODULARITY_TIE_RTOL = 1e-9


def first_best(scores, rtol=MODULARITY_TIE_RTOL):
    """Index along dim 0 of the first score within rtol |best| of the largest (NaN never wins), so that of starts
    or restarts with the same score up to rounding the first is kept, whatever the rounding."""
    s = torch.nan_to_num(torch.as_tensor(scores, dtype=torch.float64), nan=-math.inf)
    best = s.amax(0)
    return (s >= best - rtol * best.abs()).to(torch.int8).argmax(0)  # argmax: the first of the maxima


def modularity_sums(H, XH, k):
    """What modularity needs from the indicators H (rows x B k, `cluster_indicators`) and X H over the same
    rows, in float64: each cluster's inner weight h_c^T X h_c and volume h_c^T X 1 (both B x k), and the
    total weight 1^T X 1, stacked in one vector. The sums over disjoint blocks of rows add up to the sums
    over all rows (across ranks: one all_reduce)."""
    rows = H.shape[0]
    H, XH = H.double().reshape(rows, -1, k), XH.double().reshape(rows, -1, k)
    degree = XH[:, 0].sum(-1)  # X 1: the indicators of any one labelling sum to the ones vector
    within = (H * XH).sum(0)
    volume = (H * degree[:, None, None]).sum(0)
    return torch.cat([within.reshape(-1), volume.reshape(-1), degree.sum().reshape(1)])


def modularity_from_sums(sums, k):
    """Modularity (one per labelling) from `modularity_sums` (summed over every row)."""
    half = (sums.numel() - 1) // 2
    within, volume, total = sums[:half].reshape(-1, k), sums[half:2 * half].reshape(-1, k), sums[-1]
    if not (bool(torch.isfinite(total)) and bool(total > 0)):
        raise ValueError(f"X must have a positive, finite total weight for modularity, got {float(total)}")
    return (within / total - (volume / total) ** 2).sum(-1)


def recovery_error(A_hat, A_true):
    """||A - A*||_F / ||A*||_F of recovered features A_hat (d x k) against A_true (d x k), after matching
    the columns (Hungarian, by cosine) and scaling each matched column onto A*'s: the error of a
    factorisation that is unique only up to a permutation and scaling of its components. inf when A_hat
    is not finite or has a zero column."""
    A_hat, A_true = np.asarray(A_hat, dtype=np.float64), np.asarray(A_true, dtype=np.float64)
    if A_hat.shape != A_true.shape:
        raise ValueError(f"A_hat has shape {A_hat.shape} but A_true {A_true.shape}; pass both as d x k")
    true_norms = np.linalg.norm(A_true, axis=0)
    if not (np.isfinite(A_true).all() and (true_norms > 0).all()):
        raise ValueError("A_true must be finite with no all-zero column: a true feature has a direction to match")
    norms = np.linalg.norm(A_hat, axis=0)
    if not np.isfinite(A_hat).all() or (norms == 0).any():
        return float("inf")
    cos = (A_hat / norms).T @ (A_true / true_norms)
    rows, cols = linear_sum_assignment(-cos)
    matched = np.empty_like(A_true)
    matched[:, cols] = A_hat[:, rows]
    scale = (matched * A_true).sum(0) / (matched * matched).sum(0)
    return float(np.linalg.norm(matched * scale - A_true) / np.linalg.norm(A_true))
