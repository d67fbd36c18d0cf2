import numpy as np
import pytest

from harness.trial.metrics import cluster_accuracy, clustering_metrics, hungarian_accuracy, majority_accuracy, silhouette


def test_hungarian_hand_checked():
    # clusters are a relabelling of classes except one point: 5/6 correct
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([2, 2, 0, 0, 1, 0])
    assert hungarian_accuracy(y_true, y_pred, 3, 3) == pytest.approx(5 / 6)
    # two clusters may not both map to class 0: the best one-to-one map gets 3/5, majority 4/5
    y_true = np.array([0, 0, 0, 0, 1])
    y_pred = np.array([0, 0, 1, 1, 1])
    assert hungarian_accuracy(y_true, y_pred, 2, 2) == pytest.approx(3 / 5)
    assert majority_accuracy(y_true, y_pred, 2, 2) == pytest.approx(4 / 5)


def test_majority_with_more_clusters_than_classes():
    y_true = np.array([0, 0, 1, 1, 1, 0])
    y_pred = np.array([0, 1, 2, 2, 3, 3])  # cluster 3 holds one of each: counts 1
    assert majority_accuracy(y_true, y_pred, 4, 2) == pytest.approx(5 / 6)
    assert cluster_accuracy(y_true, y_pred, 4, 2) == pytest.approx(5 / 6)  # K > classes -> majority
    assert cluster_accuracy(y_true, np.array([1, 1, 0, 0, 0, 1]), 2, 2) == 1.0  # K == classes -> Hungarian


def test_clustering_metrics_keys_and_values():
    probs = [np.eye(3)[[0, 0, 1, 1, 2, 2]], np.eye(2)[[0, 1, 0, 1, 0, 1]]]
    factors = {"shape": np.array([0, 0, 1, 1, 2, 2]), "hue": np.array([0, 1, 0, 1, 0, 1]), "fixed": np.zeros(6, int)}
    m = clustering_metrics(probs, factors, {"shape": 3, "hue": 2, "fixed": 1})
    assert m["acc/facet1/shape"] == 1.0 and m["nmi/facet1/shape"] == pytest.approx(1.0)
    assert m["acc/facet2/hue"] == 1.0 and m["ari/facet2/hue"] == pytest.approx(1.0)
    # each of the 2 clusters holds one of each shape: one-to-one onto 2 of 3 classes gets 2/6
    assert m["acc/facet2/shape"] == pytest.approx(1 / 3)
    assert m["clusters_used/facet1"] == 3 and m["clusters_used/facet2"] == 2
    assert not any("fixed" in k for k in m)


def test_silhouette_separated_clusters_score_near_one_collapsed_minus_one_undefined_none():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(10, 0.1, (50, 2))])
    truth = np.repeat([0, 1], 50)
    assert silhouette(blobs, truth, seed=0) > 0.95
    assert silhouette(blobs, rng.permutation(truth), seed=0) < 0.1  # clusters that cut across the blobs
    assert silhouette(blobs, np.zeros(100, int), seed=0) == -1.0  # a collapsed facet ranks last
    assert silhouette(blobs[:3], np.arange(3), seed=0) is None  # every point its own cluster
    assert silhouette(np.full((100, 2), np.nan), truth, seed=0) is None


def test_silhouette_samples_large_sets_deterministically():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(5000, 3))
    labels = (points[:, 0] > 0).astype(int)
    first = silhouette(points, labels, seed=3)
    assert first == silhouette(points, labels, seed=3)  # the same seed scores the same sample
    assert first != silhouette(points, labels, seed=4)  # at most 2000 of the 5000 points are scored
