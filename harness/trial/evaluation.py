"""One evaluation of a model on the test and validation images: ELBO terms, clustering metrics per
facet and factor, the label-free silhouette, and each image's cluster (assignments.npz)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from harness.data import Dataset
from harness.trial.metrics import clustering_metrics, silhouette
from models import ClusteringBaseline

EVAL_SEED_OFFSET = 7919  # evaluation draws its own samples, so evaluating never shifts training


@dataclass
class SplitEvaluation:
    """One split's evaluation: ELBO terms averaged over its images (none for baselines), q(c_j | x)
    per facet, and the posterior means of z_j (none for baselines)."""

    terms: dict[str, float]
    probs: list[np.ndarray]
    means: Optional[list[np.ndarray]]


@torch.no_grad()
def _evaluate_split(model, x: torch.Tensor, batch_size: int, seed: int) -> SplitEvaluation:
    """ELBO and its terms (all facets active), q(c_j | x) and the posterior means of z_j over `x`.

    Also `elbo/training_alphas`: eq. (89) at the model's current alphas, the objective that
    progressive step s optimises. During a step s < J the all-facets ELBO counts facets that are
    not yet trained (alpha 0) or still fading in, so it sits far below the objective and jumps at
    step boundaries; within a step this is the curve to compare. With every alpha 1 the two are
    the same and it is not recomputed; otherwise it is the same draw's ELBO at the training alphas
    (`MFCVAE.elbo_at`: the decoder runs again, the encoder does not).

    The one-sample ELBO draws from its own generator, so evaluating never shifts training's RNG.
    Evaluation runs in fp32 whatever training.precision is.
    """
    if isinstance(model, ClusteringBaseline):
        return SplitEvaluation({}, [p.numpy() for p in model.cluster_probs(x)], None)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed + EVAL_SEED_OFFSET)
    sums: dict[str, float] = {}
    probs: list[list[torch.Tensor]] = [[] for _ in range(model.n_facets)]
    means: list[list[torch.Tensor]] = [[] for _ in range(model.n_facets)]
    ones = torch.ones_like(model.alphas)
    faded = not torch.equal(model.alphas, ones)
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        terms = model.loss_terms(batch, alphas=ones, generator=generator)
        batch_sums = {"elbo": terms["elbo"].sum(), "log_px": terms["log_px"].sum()}
        training = model.elbo_at(batch, terms, model.alphas) if faded else terms["elbo"]
        batch_sums["elbo/training_alphas"] = training.sum()
        for j, (prior, facet, (mean, _)) in enumerate(zip(model.priors, terms["facets"], terms["params"]), start=1):
            batch_sums[f"kl_z/facet{j}"] = facet.kl_z.sum()
            batch_sums[f"kl_c/facet{j}"] = facet.kl_c.sum()
            probs[j - 1].append(prior.cluster_log_probs(mean).exp().cpu())  # eq. (12) at the posterior mean
            means[j - 1].append(mean.cpu())
        for key, value in batch_sums.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    model.train(was_training)
    return SplitEvaluation({key: value / len(x) for key, value in sums.items()},
                           [torch.cat(p).numpy() for p in probs], [torch.cat(m).numpy() for m in means])


@torch.no_grad()
def evaluate(model, data: Dataset, batch_size: int, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, assignments) of one evaluation.

    metrics: on the test set under their own names (ELBO terms with every facet on, the ELBO at the
    training alphas `elbo/training_alphas`, clustering metrics per facet and factor); on the
    validation set the same prefixed `val/`, plus the label-free `val/silhouette/facet<j>` of the
    posterior means under their own clusters. Baselines have no ELBO and no silhouette;
    without a validation split there are no `val/` metrics.
    assignments: `<split>_facet<j>`, argmax_c q(c_j | x) of each image of that split in stored order.
    """
    metrics: dict = {}
    assignments: dict[str, np.ndarray] = {}
    splits = [("test", "", data.x_test, data.y_test)]
    if len(data.x_val):
        splits.append(("val", "val/", data.x_val, data.y_val))
    for split, prefix, x, y in splits:
        result = _evaluate_split(model, x, batch_size, seed)
        found = dict(result.terms)
        found.update(clustering_metrics(result.probs, {f: v.numpy() for f, v in y.items()}, data.factors))
        for j, p in enumerate(result.probs, start=1):
            assignments[f"{split}_facet{j}"] = p.argmax(axis=1)
            if split == "val" and result.means is not None:
                found[f"silhouette/facet{j}"] = silhouette(result.means[j - 1], assignments[f"{split}_facet{j}"],
                                                           seed + EVAL_SEED_OFFSET)
        metrics.update({prefix + key: value for key, value in found.items()})
    return metrics, assignments


def finite_or_none(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None
