"""The benchmark table: one row per (dataset, variant, facet, factor), reference rows beside it.

Besides each facet j, two headline rows per (dataset, variant, factor) (reports.load.with_best_facet):
facet "val", each run's facet chosen on validation labels (protocol "validation"), and facet "max",
each run's best facet on test labels (protocol "authors-protocol", as the paper reports).
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from . import reference
from .load import AUTHORS_PROTOCOL, FIXED_FACET, PROTOCOLS, facet_factor, headline_columns, metric_columns, \
    with_best_facet
from .stats import describe, probability_of_improvement

BEST_HIGHER = ("acc_mean", "nmi_mean", "ari_mean", "elbo_mean")


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return pd.DataFrame()
    done = with_best_facet(runs[runs["status"] == "completed"])
    failed = runs[runs["status"] == "failed"].groupby(["dataset", "variant"]).size()
    incomplete = runs[runs["status"] == "incomplete"].groupby(["dataset", "variant"]).size()
    one_facet = {dataset: single_facet(done, dataset) for dataset in done["dataset"].unique()}
    rows = []
    for (dataset, variant), group in done.groupby(["dataset", "variant"], sort=True):
        for column in metric_columns(group, "acc"):
            facet, factor = facet_factor(column)
            if group[column].isna().all() or (facet in PROTOCOLS and one_facet[dataset]):
                continue  # with one facet per run, both headline rows would repeat facet 1
            acc = describe(group[column].tolist())
            rows.append({
                "dataset": dataset, "variant": variant, "facet": facet, "factor": factor,
                "protocol": PROTOCOLS.get(facet, FIXED_FACET),
                "n": acc["n"], "n_failed": int(failed.get((dataset, variant), 0)),
                "n_incomplete": int(incomplete.get((dataset, variant), 0)),
                **{f"acc_{k}": v for k, v in acc.items() if k != "n"},
                "nmi_mean": group[f"nmi/facet{facet}/{factor}"].mean(),
                "ari_mean": group[f"ari/facet{facet}/{factor}"].mean(),
                "elbo_mean": group["elbo"].mean() if "elbo" in group else np.nan,
                "wall_time_s_mean": group["wall_time_s"].mean(),
                "likelihood": ",".join(sorted(group["likelihood"].dropna().astype(str).unique())),
                "source": "measured",
            })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["best"] = ""
    for _, block in table.groupby(["dataset", "facet", "factor"]):
        for column in BEST_HIGHER:
            if column == "elbo_mean" and block["likelihood"].nunique() > 1:
                continue  # ELBOs under different likelihoods are not comparable
            if block[column].notna().any() and len(block) > 1:
                table.loc[block[column].idxmax(), "best"] += column.removesuffix("_mean") + " "
    table["best"] = table["best"].str.strip()
    return table.sort_values(["dataset", "factor", "facet", "variant"], key=_facets_in_order).reset_index(drop=True)


def single_facet(runs: pd.DataFrame, dataset: str) -> bool:
    """Whether every run of `dataset` has one facet (no acc/facet2/... column holds a value)."""
    of_dataset = runs[runs["dataset"] == dataset]
    return not any(of_dataset[c].notna().any() for c in metric_columns(of_dataset, "acc")
                   if facet_factor(c)[0].isdigit() and facet_factor(c)[0] != "1")


def _facets_in_order(column: pd.Series) -> pd.Series:
    """Sort key: facets 1, 2, ... (as numbers), then the one chosen on validation, then the authors' protocol."""
    if column.name != "facet":
        return column
    headline = list(PROTOCOLS)  # after any facet number
    return column.map(lambda f: int(f) if str(f).isdigit() else 1e9 + headline.index(f))


def reference_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's numbers for the datasets and factors that were measured (marked as reported): its
    headline is the best facet on test labels, the authors' protocol."""
    if table.empty:
        return pd.DataFrame()
    ref = reference.accuracy_frame()
    measured = set(zip(table["dataset"], table["factor"]))
    ref = ref[[(d, f) in measured for d, f in zip(ref["dataset"], ref["factor"])]]
    return pd.DataFrame({"dataset": ref["dataset"], "variant": ref["method"] + " (reported)",
                         "facet": AUTHORS_PROTOCOL, "protocol": PROTOCOLS[AUTHORS_PROTOCOL], "factor": ref["factor"],
                         "acc_mean": ref["mean"], "acc_std": ref["std"], "source": "reported: " + ref["source"]})


def pairwise(runs: pd.DataFrame) -> pd.DataFrame:
    """P(variant A's headline accuracy > variant B's) per dataset, factor and headline protocol (facet
    chosen on validation labels, and the authors' protocol), with 95% CIs."""
    done = with_best_facet(runs[runs["status"] == "completed"])
    rows = []
    for column, factor, facet in headline_columns(done):
        for dataset, group in done.groupby("dataset"):
            values = {v: g[column].dropna().to_numpy() for v, g in group.groupby("variant")}
            for a, b in itertools.permutations(sorted(values), 2):
                if len(values[a]) and len(values[b]):
                    p = probability_of_improvement(values[a], values[b])
                    rows.append({"dataset": dataset, "factor": factor, "protocol": PROTOCOLS[facet], "A": a, "B": b,
                                 "P(A>B)": p["p"], "ci_low": p["ci_low"], "ci_high": p["ci_high"],
                                 "n_A": len(values[a]), "n_B": len(values[b])})
    return pd.DataFrame(rows)


def failures(runs: pd.DataFrame) -> pd.DataFrame:
    """Failed runs with their messages, runs a sweep's scheduler stopped early, and incomplete ones."""
    cols = ["experiment", "dataset", "variant", "seed", "status", "error", "last_epoch", "run_dir"]
    bad = runs[runs["status"].isin(["failed", "stopped early", "incomplete"])].copy()
    if bad.empty:
        return pd.DataFrame(columns=cols)
    bad["last_epoch"] = bad["epoch"] if "epoch" in bad else None
    bad.loc[bad["status"] == "stopped early", "error"] = "stopped early by the sweep's scheduler (ASHA)"
    bad.loc[bad["status"] == "incomplete", "error"] = "no result: killed, or still running"
    return bad[cols].reset_index(drop=True)
