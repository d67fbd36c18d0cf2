"""Unsupervised clustering metrics per facet and factor (appendix E.5).

Accuracy maps clusters to classes: one-to-one by the Hungarian algorithm when a facet has no more
clusters than the factor has values, else each cluster to its most frequent class (majority).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def contingency(y_true: np.ndarray, y_pred: np.ndarray, n_clusters: int, n_classes: int) -> np.ndarray:
    """counts[k, c] = number of points in cluster k with class c."""
    counts = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(counts, (y_pred, y_true), 1)
    return counts


def hungarian_accuracy(y_true, y_pred, n_clusters: int, n_classes: int) -> float:
    counts = contingency(np.asarray(y_true), np.asarray(y_pred), n_clusters, n_classes)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(y_true))


def majority_accuracy(y_true, y_pred, n_clusters: int, n_classes: int) -> float:
    counts = contingency(np.asarray(y_true), np.asarray(y_pred), n_clusters, n_classes)
    return float(counts.max(axis=1).sum() / len(y_true))


def cluster_accuracy(y_true, y_pred, n_clusters: int, n_classes: int) -> float:
    """Hungarian when n_clusters <= n_classes, majority mapping when there are more clusters."""
    if n_clusters <= n_classes:
        return hungarian_accuracy(y_true, y_pred, n_clusters, n_classes)
    return majority_accuracy(y_true, y_pred, n_clusters, n_classes)


def clustering_metrics(probs: list[np.ndarray], factors: dict[str, np.ndarray],
                       cardinalities: dict[str, int]) -> dict[str, float]:
    """acc/nmi/ari for every facet x factor, and clusters in use per facet.

    `probs[j]` is (N, K_j) q(c_j | x); factors with a single value are skipped (nothing to find).
    """
    out: dict[str, float] = {}
    for j, p in enumerate(probs, start=1):
        assignment = p.argmax(axis=1)
        out[f"clusters_used/facet{j}"] = int(len(np.unique(assignment)))
        for factor, y in factors.items():
            n_classes = cardinalities[factor]
            if n_classes < 2:
                continue
            out[f"acc/facet{j}/{factor}"] = cluster_accuracy(y, assignment, p.shape[1], n_classes)
            out[f"nmi/facet{j}/{factor}"] = float(normalized_mutual_info_score(y, assignment))
            out[f"ari/facet{j}/{factor}"] = float(adjusted_rand_score(y, assignment))
    return out


SILHOUETTE_SAMPLE = 2000  # points scored: its cost grows with the square of their number


def silhouette(latents: np.ndarray, assignment: np.ndarray, seed: int) -> float | None:
    """Silhouette score of points `latents` (N, d) under cluster labels `assignment` (label-free: no
    factor is read), on a seeded sample of at most SILHOUETTE_SAMPLE points.

    A facet that puts every point into one cluster scores -1, the worst silhouette: sklearn leaves
    one cluster undefined, but as a selection criterion a collapsed facet must rank last, not make
    its trial fail for a missing objective. None when it is undefined otherwise (as many clusters
    as points, or a sample that drew a single cluster; non-finite latents)."""
    from sklearn.metrics import silhouette_score

    n, used = len(assignment), len(np.unique(assignment))
    if not np.isfinite(latents).all() or used >= n:
        return None
    if used < 2:
        return -1.0
    try:
        return float(silhouette_score(latents, assignment, sample_size=min(SILHOUETTE_SAMPLE, n),
                                      random_state=seed % 2 ** 32))
    except ValueError:  # the sample of a larger set drew fewer than 2 of its clusters
        return None
