"""mfcbench beside another implementation of the same model: per-seed rows and the parity verdict.

`runs.csv` holds one row per (run, facet, factor): who ran it (`code`: mfcbench or the peer's name),
`variant`, `architecture`, `dataset`, `budget`, `seed`, `facet`, `factor`, `acc` (0-1, test set) and the
run's provenance (`commit`, `machine`, `wall_s`). mfcbench's rows come from sweep experiments; a
peer's from a CSV with the same columns (its source named in the study that commits it).

Parity, for one mfcbench variant against the peer on one (dataset, architecture, budget, facet,
factor): the 95% CI of P(ours > theirs) contains 0.5 and the means differ by less than 3 points,
judged only with at least MIN_SEEDS seeds on each side.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .load import facet_factor, flat_config, load_runs, metric_columns
from .stats import MIN_BOOTSTRAP_N, probability_of_improvement, t_interval

COLUMNS = ["code", "variant", "architecture", "dataset", "budget", "seed", "facet", "factor", "acc",
           "commit", "machine", "wall_s"]
KEYS = ["dataset", "architecture", "budget", "facet", "factor"]
PARITY_POINTS = 3.0
MIN_SEEDS = MIN_BOOTSTRAP_N  # fewer seeds on either side: no verdict (P(A > B) gets no interval)


def dataset_label(name: str) -> str:
    """A dataset's name as rows show it: an `npz:` file by its stem."""
    return Path(name[4:]).stem if name.startswith("npz:") else name


def budget_of(config: dict) -> str:
    """Epochs per progressive step and fade-in, as `25+75 epochs, fade-in 500`."""
    training = config["training"]
    epochs = "+".join(str(e) for e in training["epochs_per_step"])
    fade = training.get("fade_in_batches")
    return f"{epochs} epochs" + (f", fade-in {fade}" if fade else "")


def mfcbench_rows(experiments: list[str | Path]) -> pd.DataFrame:
    """One row per (finished run, facet, factor) of mfcbench's experiments: `COLUMNS`, then the run's
    `status` and its config as dotted columns (`model.init`, ...), as in a report's runs.csv."""
    runs, _ = load_runs(experiments)
    if runs.empty:
        raise ValueError(f"no runs in {', '.join(map(str, experiments))}")
    rows = []
    for _, run in runs[runs["status"] == "completed"].iterrows():
        config = json.loads(run["config"])
        for column in metric_columns(runs, "acc"):
            if pd.isna(run.get(column)):
                continue
            facet, factor = facet_factor(column)
            rows.append({"code": "mfcbench", "variant": run["variant"], "architecture": run["architecture"],
                         "dataset": dataset_label(run["dataset"]), "budget": budget_of(config), "seed": run["seed"],
                         "facet": int(facet), "factor": factor, "acc": float(run[column]),
                         "commit": run.get("commit"), "machine": run.get("machine"), "wall_s": run.get("wall_time_s"),
                         "status": run["status"], **flat_config(config)})
    if not rows:
        raise ValueError(f"no completed runs in {', '.join(map(str, experiments))}")
    frame = pd.DataFrame(rows)
    return frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]


def read_peer_rows(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: peer rows need the columns {', '.join(COLUMNS)}; missing {', '.join(missing)}")
    # a peer's CSV lists the runs it finished
    return frame[COLUMNS].assign(status=frame["status"] if "status" in frame.columns else "completed")


def side_by_side(rows: pd.DataFrame, peer: str = "authors") -> pd.DataFrame:
    """Per (KEYS, mfcbench variant): both codes' n, mean, std and 95% t-interval in points, P(ours >
    theirs) with its 95% CI, the difference of means, and whether that is parity."""
    ours, theirs = rows[rows["code"] == "mfcbench"], rows[rows["code"] == peer]
    out = []
    for key, peer_group in theirs.groupby(KEYS):
        b = 100 * peer_group["acc"].to_numpy(dtype=float)
        matching = ours.set_index(KEYS).sort_index()
        if key not in matching.index:
            continue
        for variant, group in matching.loc[[key]].groupby("variant"):
            a = 100 * group["acc"].to_numpy(dtype=float)
            p = probability_of_improvement(a, b)
            (a_low, a_high), (b_low, b_high) = t_interval(a), t_interval(b)
            diff = a.mean() - b.mean()
            out.append({**dict(zip(KEYS, key)), "variant": variant,
                        "n_ours": len(a), "ours_mean": a.mean(), "ours_std": a.std(ddof=1) if len(a) > 1 else np.nan,
                        "ours_ci_low": a_low, "ours_ci_high": a_high,
                        "n_theirs": len(b), "theirs_mean": b.mean(),
                        "theirs_std": b.std(ddof=1) if len(b) > 1 else np.nan,
                        "theirs_ci_low": b_low, "theirs_ci_high": b_high,
                        "difference": diff, "p_ours_better": p["p"], "p_ci_low": p["ci_low"], "p_ci_high": p["ci_high"],
                        "parity": bool(p["ci_low"] <= 0.5 <= p["ci_high"] and abs(diff) < PARITY_POINTS),
                        "enough_seeds": bool(min(len(a), len(b)) >= MIN_SEEDS)})
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame, peer: str = "authors") -> str:
    """The side-by-side table as markdown: accuracy % as mean ± std [95% t-interval] (n)."""
    def cell(prefix, n):
        return lambda r: (f"{r[prefix + '_mean']:.1f} ± {r[prefix + '_std']:.1f} "
                          f"[{r[prefix + '_ci_low']:.1f}, {r[prefix + '_ci_high']:.1f}] (n={r[n]})"
                          if r[n] > 1 else f"{r[prefix + '_mean']:.1f} (n=1: no interval)")
    lines = [f"| dataset | architecture | budget | facet | factor | mfcbench variant | mfcbench | {peer} | "
             f"difference | P(mfcbench > {peer}) [95% CI] | parity |", "|" + "---|" * 11]
    for _, r in table.sort_values(KEYS + ["variant"]).iterrows():
        verdict = ("yes" if r["parity"] else "no") if r["enough_seeds"] else "n too small"
        lines.append(f"| {r['dataset']} | {r['architecture']} | {r['budget']} | {r['facet']} | {r['factor']} | "
                     f"{r['variant']} | {cell('ours', 'n_ours')(r)} | {cell('theirs', 'n_theirs')(r)} | "
                     f"{r['difference']:+.1f} | {r['p_ours_better']:.2f} [{r['p_ci_low']:.2f}, {r['p_ci_high']:.2f}] | "
                     f"{verdict} |")
    return "\n".join(lines) + "\n"


def write_parity(experiments: list[str | Path], peer_csv: str | Path, out: str | Path, peer: str = "authors") -> Path:
    """runs.csv (mfcbench's rows and the peer's), summary.csv and summary.md in `out`."""
    peer_rows = read_peer_rows(peer_csv)
    rows = pd.concat([mfcbench_rows(experiments), peer_rows], ignore_index=True)
    table = side_by_side(rows, peer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "runs.csv", index=False)
    table.to_csv(out / "summary.csv", index=False, float_format="%.4f")
    (out / "summary.md").write_text(markdown(table, peer))
    return out / "summary.md"
