"""Clustering against known labels: ACC (Hungarian matching), NMI, ARI, per-class recall, sizes.

Per-class recall under the matching is reported because on imbalanced data ACC alone rewards a
clustering that puts everything into the majority class.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _contingency(y_true, y_pred):
    classes, yt = np.unique(np.asarray(y_true), return_inverse=True)
    clusters, yp = np.unique(np.asarray(y_pred), return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(table, (yp, yt), 1)
    return table, classes, clusters


def matching(y_true, y_pred) -> dict:
    """Best one-to-one map cluster -> class (Hungarian algorithm on the contingency table)."""
    table, classes, clusters = _contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    return {clusters[r].item(): classes[c].item() for r, c in zip(rows, cols)}


def acc(y_true, y_pred) -> float:
    """Clustering accuracy: the fraction of images whose cluster maps to their class.

    >>> acc([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    """
    table, _, _ = _contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def nmi(y_true, y_pred) -> float:
    return float(normalized_mutual_info_score(y_true, y_pred))


def ari(y_true, y_pred) -> float:
    return float(adjusted_rand_score(y_true, y_pred))


def per_class_recall(y_true, y_pred) -> dict:
    """Recall of each class under the ACC matching (0 for a class no cluster maps to)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    to_class = matching(y_true, y_pred)
    mapped = np.array([to_class.get(c, None) for c in y_pred.tolist()], dtype=object)
    return {c.item(): float(np.mean(mapped[y_true == c] == c.item())) for c in np.unique(y_true)}


def cluster_sizes(y_pred, n_clusters: int | None = None) -> list[int]:
    y_pred = np.asarray(y_pred)
    k = n_clusters if n_clusters is not None else int(y_pred.max()) + 1
    return np.bincount(y_pred, minlength=k).tolist()


def evaluate(y_true, y_pred, n_clusters: int | None = None) -> dict:
    """All of the above in one JSON-ready dict; cluster_sizes lists all n_clusters when given
    (the empty ones too)."""
    return {"acc": acc(y_true, y_pred), "nmi": nmi(y_true, y_pred), "ari": ari(y_true, y_pred),
            "per_class_recall": {str(k): v for k, v in per_class_recall(y_true, y_pred).items()},
            "cluster_sizes": cluster_sizes(y_pred, n_clusters), "n": int(len(y_pred))}
