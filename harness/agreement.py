"""Seed agreement: do runs that differ only in their seed find the same partition? (label-free)

Each run folder keeps `assignments.npz` (harness.layout.ASSIGNMENTS_FILE), written at every
evaluation: one integer array per split and facet, `val_facet1`, `test_facet1`, ..., the argmax of
q(c_j | x) over the images of that split in their stored order, and `epoch`. Two runs of the same
config see the same images in the same order (the splits depend on dataset.split_seed only), so
their arrays are partitions of one set and can be compared with ARI and NMI, which ignore how the
clusters are numbered.

With the ladder architecture facet j sits at depth j of every seed, so facet j is compared with
facet j ("aligned"). A shared architecture has no such order: `matched_facets` pairs the facets of
two runs by the Hungarian algorithm on their pairwise ARI.

Pure functions on arrays and run folders; no torch. Used by the searcher (`val/agreement` as an
Optuna objective over a suggestion's replicates) and by reports.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from harness.layout import ASSIGNMENTS_FILE

SPLITS = ("val", "test")
AGREEMENT_OBJECTIVE = "val/agreement"  # mean over facets of the aligned mean pairwise ARI on validation images


def partition_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """ARI and NMI between two partitions of the same points (1 for identical up to relabelling,
    about 0 for independent random partitions).

    0 when either puts every point into one cluster: sklearn scores two such collapsed partitions 1
    (they are identical), but seeds that all collapse have found no clustering to agree on, and a
    search on agreement must not steer towards collapse.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"partitions of different sets: {a.shape} vs {b.shape} points")
    if len(np.unique(a)) < 2 or len(np.unique(b)) < 2:
        return {"ari": 0.0, "nmi": 0.0}
    return {"ari": float(adjusted_rand_score(a, b)), "nmi": float(normalized_mutual_info_score(a, b))}


def read_assignments(run_dir: str | Path, split: str) -> list[np.ndarray] | None:
    """Facet 1..J assignments of `split` in a run folder, or None when the run kept none."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(run_dir) / ASSIGNMENTS_FILE
    if not path.exists():
        return None
    with np.load(path) as saved:
        facets = []
        while f"{split}_facet{len(facets) + 1}" in saved:
            facets.append(saved[f"{split}_facet{len(facets) + 1}"])
    return facets or None


def aligned_pairs(runs: list[list[np.ndarray]], facet: int) -> list[dict]:
    """Facet `facet` (1-based) of every pair of runs: [{"a", "b", "ari", "nmi"}] with a < b run indices."""
    return [{"a": i, "b": k, **partition_agreement(runs[i][facet - 1], runs[k][facet - 1])}
            for i, k in itertools.combinations(range(len(runs)), 2)]


def matched_facets(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The Hungarian pairing of the facets of run a with those of run b that maximises total ARI:
    ([(facet of a, facet of b)], 1-based) and the J_a x J_b ARI matrix."""
    from scipy.optimize import linear_sum_assignment

    scores = np.array([[partition_agreement(x, y)["ari"] for y in b] for x in a])
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return [(int(r) + 1, int(c) + 1) for r, c in zip(rows, cols)], scores


def suggestion_agreement(run_dirs: list[str | Path], split: str = "val") -> dict[str, float]:
    """`val/agreement/facet<j>` (aligned mean pairwise ARI) and `val/agreement` (their mean over
    facets) for runs of one config that differ in their seed; {} with fewer than two runs that
    kept assignments of the same number of facets."""
    runs = [facets for facets in (read_assignments(d, split) for d in run_dirs) if facets]
    if len(runs) < 2 or len({len(r) for r in runs}) != 1:
        return {}
    per_facet = {f"{split}/agreement/facet{j}": float(np.mean([p["ari"] for p in aligned_pairs(runs, j)]))
                 for j in range(1, len(runs[0]) + 1)}
    return {f"{split}/agreement": float(np.mean(list(per_facet.values()))), **per_facet}
