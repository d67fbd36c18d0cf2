"""Which metrics a sweep may name, and where each is measured: test, validation, training, or seed
agreement (computed from the seeds' assignments, not reported by a trial)."""
from __future__ import annotations

import re

from harness.agreement import AGREEMENT_OBJECTIVE

# What harness.trial.evaluation.evaluate reports, measured on the test images (the names of the paper's tables).
TEST_METRIC_PATTERN = re.compile(
    r"^(elbo|log_px|(acc|nmi|ari)/facet\d+/\w+|clusters_used/facet\d+|(kl_z|kl_c)/facet\d+)$")
# The same names prefixed val/ on the validation images (carved from the training set, see
# dataset.validation_fraction), and the label-free silhouette of each facet's clusters there.
VALIDATION_PREFIX = "val/"
SILHOUETTE_PATTERN = re.compile(r"^val/silhouette/facet\d+$")
# Seed agreement: not reported by a trial but computed by the searcher from the assignments.npz of a
# suggestion's seeds (harness.agreement), so a search objective only, with search.replicates >= 2.
AGREEMENT_PATTERN = re.compile(rf"^{re.escape(AGREEMENT_OBJECTIVE)}(/facet\d+)?$")
TRAINING_METRICS = ("train_loss",)
# What harness.trial.evaluation.evaluate reports for k-means / GMM: clustering metrics only (no ELBO terms,
# no silhouette); they keep assignments.npz, so their seed agreement exists too.
BASELINE_MODELS = ("kmeans", "gmm")
TRAINED_MODELS = ("mfcvae", "vade")  # trained by gradient steps: the models whose seeds can be packed
BASELINE_METRIC_PATTERN = re.compile(r"^(val/)?((acc|nmi|ari)/facet\d+/\w+|clusters_used/facet\d+)$")


def check_metric_name(metric: str) -> None:
    if not (metric in TRAINING_METRICS or is_test_metric(metric) or is_validation_metric(metric)):
        raise ValueError(f"unknown metric {metric!r}; use val/<metric> (validation images) or <metric> (test "
                         "images), where <metric> is elbo, log_px, acc|nmi|ari/facet<j>/<factor> or "
                         "kl_z|kl_c|clusters_used/facet<j>; or val/silhouette/facet<j>, val/agreement, "
                         "val/agreement/facet<j> or train_loss")


def is_test_metric(metric: str) -> bool:
    """Whether `metric` is measured on the test images."""
    return bool(TEST_METRIC_PATTERN.match(metric))


def is_validation_metric(metric: str) -> bool:
    """Whether `metric` is measured on the validation images (seed agreement included)."""
    if not metric.startswith(VALIDATION_PREFIX):
        return False
    return (is_test_metric(metric.removeprefix(VALIDATION_PREFIX))
            or bool(SILHOUETTE_PATTERN.match(metric) or AGREEMENT_PATTERN.match(metric)))


def is_agreement_metric(metric: str) -> bool:
    """Whether `metric` is a seed agreement, which the searcher computes instead of a trial reporting it."""
    return bool(AGREEMENT_PATTERN.match(metric))
