"""One study's variants against earlier studies' variants on the same data: `mfcbench compare`.

Reads only committed per-run rows (`runs.csv` of `mfcbench report`), so every number it gives is
traceable to runs and their commits. Two variants are compared when they trained on the same data
(`DATA_KEYS`). For each pair: n, mean and sample std of each side, the difference of the means,
P(A > B) with its CI (`reports.stats.probability_of_improvement`), and the mean of the differences
seed by seed over the seeds both sides ran (the same seed is the same data split and start).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .stats import describe, probability_of_improvement

DATA_KEYS = ["dataset.name", "dataset.train_images"]
FACET1 = "acc/facet1"  # the default metric: facet 1's accuracy against the one label its data set has
COLUMNS = ["this_study", "against", "n", "mean", "std", "against_n", "against_mean", "against_std", "difference",
           "p_this_better", "p_ci_low", "p_ci_high", "paired_n", "paired_difference"]


class CompareError(ValueError):
    pass


def _completed_runs(study: Path, metric: str) -> pd.DataFrame:
    """The completed runs of one study folder (its runs.csv), keyed by variant and data."""
    source = study / "runs.csv"
    if not source.is_file():
        raise CompareError(f"{study}: no runs.csv there (a study folder written by `mfcbench report` holds one)")
    frame = pd.read_csv(source)
    if "status" in frame.columns:
        frame = frame[frame["status"] == "completed"]
    if metric == FACET1 and FACET1 not in frame.columns:
        frame = _facet1_accuracy(frame, source)
    missing = [c for c in ["variant", "seed", metric, *DATA_KEYS] if c not in frame.columns]
    if missing:
        metrics = sorted(c for c in frame.columns if c.startswith(("acc/", "nmi/", "ari/")))
        raise CompareError(f"{source} has no column {', '.join(map(repr, missing))}; its metrics: "
                           f"{', '.join(metrics) or 'none'}")
    frame = frame.dropna(subset=[metric])
    frame = frame.assign(study=study.name, data=[_data_label(r) for r in frame[DATA_KEYS].itertuples(index=False)])
    return frame[["study", "variant", "seed", "data", metric]]


def _facet1_accuracy(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    """FACET1 for each run: the one `acc/facet1/<label>` column it has a value in (`label` on
    Fashion-MNIST, `digit` on digits), so that one study's data sets compare in one call."""
    columns = [c for c in frame.columns if c.startswith(FACET1 + "/")]
    if not columns:
        return frame  # reported as a missing column
    several = frame[columns].notna().sum(axis=1) > 1
    if several.any():
        labels = [c for c in columns if frame.loc[several, c].notna().any()]
        raise CompareError(f"{source}: runs have facet 1's accuracy against several labels ({', '.join(labels)}); "
                           "name one with --metric")
    return frame.assign(**{FACET1: frame[columns].bfill(axis=1).iloc[:, 0]})


def _data_label(values) -> str:
    name, images = values
    return name if pd.isna(images) else f"{name} ({int(images)} images)"


def compare_studies(study: Path, against: list[Path], metric: str = FACET1,
                    scale: float = 100.0) -> pd.DataFrame:
    """Every variant of `study` against every variant of the `against` studies with the same data, in
    `metric` times `scale` (percent by default; FACET1: each run's one facet-1 accuracy). Raises
    CompareError, before reading anything else, for a folder without runs.csv or a metric a study lacks."""
    mine = _completed_runs(Path(study), metric)
    theirs = pd.concat([_completed_runs(Path(s), metric) for s in against])
    if mine.empty:
        raise CompareError(f"{study}: no completed run with a {metric!r}")
    rows = []
    for (variant, data), a in mine.groupby(["variant", "data"], sort=True):
        for (other_study, other_variant), b in theirs[theirs["data"] == data].groupby(["study", "variant"], sort=True):
            if other_study == Path(study).name and other_variant == variant:
                continue
            x, y = a[metric].to_numpy() * scale, b[metric].to_numpy() * scale
            da, db, p = describe(x), describe(y), probability_of_improvement(x, y)
            paired = pd.merge(a[["seed", metric]], b[["seed", metric]], on="seed", suffixes=("_a", "_b"))
            rows.append({
                "this_study": f"{Path(study).name}/{variant}", "against": f"{other_study}/{other_variant}",
                "n": da["n"], "mean": da["mean"], "std": da["std"],
                "against_n": db["n"], "against_mean": db["mean"], "against_std": db["std"],
                "difference": da["mean"] - db["mean"], "p_this_better": p["p"], "p_ci_low": p["ci_low"],
                "p_ci_high": p["ci_high"], "paired_n": len(paired),
                "paired_difference": (paired[f"{metric}_a"] - paired[f"{metric}_b"]).mean() * scale
                if len(paired) else np.nan})
    return pd.DataFrame(rows, columns=COLUMNS).round(2)
