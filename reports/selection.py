"""Label-free model selection: do the seeds of one config find the same clusters, and do label-free
criteria rank models as validation and test labels would?

A *unit* is a set of completed runs that differ only in their seed (and in where and how they ran):
runs of one experiment and variant whose configs agree once training.seed, training.device,
training.threads, dataset.data_root, dataset.download and evaluation.* are removed. A grid variant
is one unit; so is a search suggestion with its replicates.

Pure pandas/numpy/scipy on the frames of reports.load and on the run folders' assignments.npz, read
and compared by harness.agreement (which imports no training code).
"""
from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import numpy as np
import pandas as pd

from harness.compat import with_legacy_run_defaults
from harness.agreement import AGREEMENT_OBJECTIVE, aligned_pairs, matched_facets, partition_agreement, \
    read_assignments, suggestion_agreement

from .load import facets_by_factor, with_best_facet
from .stats import pairwise_mean, spearman_with_ci

# What the runs of one unit may differ in: None drops the whole section
SEED_FREE_KEYS = {"training": ("seed", "device", "threads"), "dataset": ("data_root", "download"), "evaluation": None}
UNIT = ["dataset", "experiment", "variant", "unit_config"]

CRITERIA = ("val ELBO", "seed agreement", "silhouette")  # label-free; higher is better for each
VAL_ACCURACY = "val accuracy"  # mean over seeds of the best facet's accuracy on validation labels
TEST_ACCURACY = "test accuracy"  # mean over seeds of the test accuracy of the facet chosen on validation labels

NO_VALIDATION = ("no validation metrics in these runs (trained before validation splits, or "
                 "dataset.validation_fraction 0)")
NO_ASSIGNMENTS = ("no unit has two completed seeds with assignments.npz (runs trained before runs kept their "
                  "cluster assignments, or one seed per config)")


def has_validation_metrics(runs: pd.DataFrame) -> bool:
    return any(runs[c].notna().any() for c in runs.columns if str(c).startswith("val/"))


def _unit_config(config_json: str) -> str:
    """The run's config without the keys the runs of a unit may differ in, as sorted JSON. Keys a
    config from before they existed lacks are filled in as it meant them, so a seed trained (or
    resumed) today and one trained before stay one unit."""
    config = with_legacy_run_defaults(json.loads(config_json))
    for section, keys in SEED_FREE_KEYS.items():
        if keys is None:
            config.pop(section, None)
        else:
            for key in keys:
                config.get(section, {}).pop(key, None)
    return json.dumps(config, sort_keys=True)


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """{"model.latent_dims": "[5, 5]", ...}"""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


def with_units(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed runs, with their unit: `unit_config` (the config its seeds share, JSON) and
    `unit`, a short label: the variant, then the config keys whose values differ between the units of
    that variant, then the experiment where only that tells two units apart."""
    done = runs[runs["status"] == "completed"].copy()
    if done.empty:
        return done.assign(unit_config=pd.Series(dtype=str), unit=pd.Series(dtype=str))
    done["unit_config"] = done["config"].map(_unit_config)
    # An Optuna search that suggests the same values twice trains seeds base+0..R-1 twice, into one
    # unit: count each seed once, or identical runs would pair up as perfect agreement.
    done = done.sort_values("run_dir").drop_duplicates(subset=UNIT + ["seed"], keep="first")
    labels = {}
    for variant, units in done[UNIT].drop_duplicates().groupby("variant"):
        flat = [_flatten(json.loads(config)) for config in units["unit_config"]]
        differing = [key for key in sorted({k for f in flat for k in f}) if len({f.get(key) for f in flat}) > 1]
        for key, f in zip(units.itertuples(index=False), flat):
            shown = ", ".join(f"{k}={f.get(k, 'unset')}" for k in differing)
            labels[tuple(key)] = f"{variant}: {shown}" if shown else variant
    repeated = Counter(labels.values())
    done["unit"] = [labels[key] + (f" [{key[1]}]" if repeated[labels[key]] > 1 else "")
                    for key in done[UNIT].itertuples(index=False, name=None)]
    return done


def _mean_with_ci(pairs: list[dict], n_seeds: int) -> dict:
    """Mean ARI and NMI over seed pairs ({"a", "b", "ari", "nmi"}, a < b seed indices), each with a 95%
    bootstrap CI that resamples seeds (reports.stats.pairwise_mean)."""
    out = {}
    for metric in ("ari", "nmi"):
        scores = np.full((n_seeds, n_seeds), np.nan)
        for p in pairs:
            scores[p["a"], p["b"]] = scores[p["b"], p["a"]] = p[metric]
        summary = pairwise_mean(scores)
        out.update({f"{metric}_{key}": summary[key] for key in ("mean", "ci_low", "ci_high")})
    return out


def seed_agreement(runs: pd.DataFrame) -> pd.DataFrame:
    """Per unit and facet: how alike the unit's seeds partition the TEST images (label-free).

    Facet j of every seed against facet j of every other ("aligned": the ladder ties facet j to depth
    j): mean pairwise ARI and NMI with 95% bootstrap CIs that resample seeds. With more than one facet also
    a "matched" row: per seed pair, the facets paired by the Hungarian algorithm on their ARI
    (harness.agreement.matched_facets) and the mean ARI and NMI of the pairs, averaged over seed pairs;
    it is the comparison that fits a shared architecture, whose facets have no fixed order. Units with
    fewer than two seeds that kept assignments have no row.
    """
    rows = []
    for (dataset, experiment, variant, _), group in with_units(runs).groupby(UNIT, sort=True):
        kept = [facets for facets in (read_assignments(d, "test") for d in group["run_dir"]) if facets]
        if len(kept) < 2 or len({len(facets) for facets in kept}) != 1:
            continue
        unit = {"dataset": dataset, "experiment": experiment, "variant": variant, "unit": group["unit"].iloc[0],
                "seeds": len(kept), "pairs": len(kept) * (len(kept) - 1) // 2}
        n_facets = len(kept[0])
        for j in range(1, n_facets + 1):
            rows.append({**unit, "facet": str(j), **_mean_with_ci(aligned_pairs(kept, j), len(kept))})
        if n_facets > 1:
            matched = []
            for (first, a), (second, b) in itertools.combinations(enumerate(kept), 2):
                pairing, ari = matched_facets(a, b)
                matched.append({"a": first, "b": second, "ari": float(np.mean([ari[i - 1, k - 1] for i, k in pairing])),
                                "nmi": float(np.mean([partition_agreement(a[i - 1], b[k - 1])["nmi"]
                                                      for i, k in pairing]))})
            rows.append({**unit, "facet": "matched", **_mean_with_ci(matched, len(kept))})
    return pd.DataFrame(rows)


def selection_criteria(runs: pd.DataFrame) -> pd.DataFrame:
    """Per unit and factor: the label-free criteria and the two targets they should predict.

    Criteria (per unit, repeated on each factor's row): `val ELBO`, the mean over seeds of val/elbo;
    `seed agreement`, val/agreement of the unit's run folders (harness.agreement.suggestion_agreement
    on validation assignments, as the searcher computes it); `silhouette`, the mean over seeds and
    facets of val/silhouette/facet<j>. Targets: `val accuracy`, the mean over seeds of the best facet's
    validation accuracy; `test accuracy`, the mean over seeds of acc/facetval/<factor>, the test
    accuracy of the facet chosen on validation labels. Missing values are NaN.
    """
    rows = []
    for (dataset, experiment, variant, _), group in with_best_facet(with_units(runs)).groupby(UNIT, sort=True):
        group = group.dropna(axis=1, how="all")  # other units' columns (other datasets' factors)
        silhouettes = group[[c for c in group if re.fullmatch(r"val/silhouette/facet\d+", str(c))]].to_numpy(float)
        unit = {"dataset": dataset, "experiment": experiment, "variant": variant, "unit": group["unit"].iloc[0],
                "likelihood": ",".join(sorted(group["likelihood"].dropna().astype(str).unique())),
                "seeds": len(group),
                "val ELBO": group["val/elbo"].mean() if "val/elbo" in group else np.nan,
                "seed agreement": suggestion_agreement(list(group["run_dir"]), "val").get(AGREEMENT_OBJECTIVE, np.nan),
                "silhouette": float(np.nanmean(silhouettes)) if np.isfinite(silhouettes).any() else np.nan}
        val_facets = facets_by_factor(group, "val/acc")
        for factor in sorted(set(val_facets) | set(facets_by_factor(group, "acc"))) or [None]:
            rows.append({**unit, "factor": factor,
                         VAL_ACCURACY: group[list(val_facets[factor].values())].max(axis=1).mean()
                         if factor in val_facets else np.nan,
                         TEST_ACCURACY: group[f"acc/facetval/{factor}"].mean()
                         if f"acc/facetval/{factor}" in group else np.nan})
    return pd.DataFrame(rows)


def criterion_quality(units: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (dataset, factor, criterion): how well ranking the units by the criterion ranks them by
    accuracy. Among the units with both targets (`of`), those with the criterion (`units`): Spearman's
    rho against val accuracy and against test accuracy, each with a 95% bootstrap CI over units
    (reports.stats.spearman_with_ci), and the regret: the best test accuracy among all units with both targets minus
    the test accuracy of the unit the criterion ranks first (higher is better for every criterion;
    tied first places count their mean, the expected regret of breaking the tie at random).

    `val accuracy` is a reference row: selection on validation labels, next to the label-free ones.
    The val ELBO is not ranked across units of different likelihoods (their ELBOs are not comparable).
    """
    rows = []
    if units.empty:
        return pd.DataFrame()
    for (dataset, factor), group in units.dropna(subset=[VAL_ACCURACY, TEST_ACCURACY]).groupby(["dataset", "factor"]):
        for criterion in (*CRITERIA, VAL_ACCURACY):
            used, note = group.dropna(subset=[criterion]), ""
            if criterion == "val ELBO" and used["likelihood"].nunique() > 1:
                used, note = used.iloc[:0], "not ranked: ELBOs under different likelihoods are not comparable"
            first = used[used[criterion] == used[criterion].max()]
            row = {"dataset": dataset, "factor": factor, "criterion": criterion,
                   "labels used": "validation" if criterion == VAL_ACCURACY else "none",
                   "units": len(used), "of": len(group)}
            for target, name in ((VAL_ACCURACY, "val_acc"), (TEST_ACCURACY, "test_acc")):
                rho = spearman_with_ci(used[criterion], used[target], seed=seed)
                row.update({f"rho_{name}": rho["rho"], f"rho_{name}_ci_low": rho["ci_low"],
                            f"rho_{name}_ci_high": rho["ci_high"]})
            # against the best unit available, whether or not the criterion could rank it
            row.update({"regret_test_acc": group[TEST_ACCURACY].max() - first[TEST_ACCURACY].mean() if len(used)
                        else np.nan, "ranked_first": "; ".join(first["unit"]), "note": note})
            rows.append(row)
    return pd.DataFrame(rows)
