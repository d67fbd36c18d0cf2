"""Finished sweeps and runs -> tidy pandas frames. Reads files only; imports no training code.

A run folder is any folder with `config.yaml` and `result.json` (what `mfcbench train` and every
sweep trial write). Ray Tune trials that died before their run folder existed are found by
their `error.txt`. Partially finished sweeps load with what exists.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from harness.layout import STOPPED_EARLY_FILE, SUGGESTION_FILE, TRIAL_META

IDENTITY = ["experiment", "variant", "dataset", "model", "architecture", "seed"]
REPORT_MARKER = "mfcbench-report.json"  # marks every folder `mfcbench report` writes (and its staging folders)


def find_files(root: Path, name: str) -> list[Path]:
    """Files called `name` under root, skipping report folders: a report kept inside an experiment
    (`--out EXPERIMENT/report`) is output, never runs to read back."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if REPORT_MARKER in files:
            subfolders[:] = []
            continue
        subfolders.sort()
        if name in files:
            found.append(Path(folder) / name)
    return found


def run_folders(root: Path) -> list[Path]:
    root = Path(root)
    if (root / "config.yaml").exists() and ((root / "result.json").exists() or (root / "metrics.jsonl").exists()):
        return [root]
    found = {p.parent for p in find_files(root, "config.yaml")
             if ((p.parent / "result.json").exists() or (p.parent / "metrics.jsonl").exists())
             and not any(part.startswith("checkpoint_") for part in p.relative_to(root).parts)}
    return sorted(found)  # Ray's checkpoint_* folders hold copies of run folders: not runs


def _variant_of(run_dir: Path, config: dict) -> str:
    for parent in list(run_dir.parents)[:3]:
        meta = parent / TRIAL_META
        if meta.exists():
            return json.loads(meta.read_text())["variant"]
    m = config["model"]
    if m["name"] in ("kmeans", "gmm"):
        return m["name"]
    return f"{m['name']} {m['architecture']} z={m['latent_dims']} K={m['n_clusters']}"


# Written by the sweep driver (harness.sweep.tune.searcher) into trial_<id>/ when the scheduler stopped that trial.


def _unfinished_status(run_dir: Path) -> str:
    """A run without result.json: "stopped early" by a sweep's scheduler (Ray ends such a trial inside
    its report, so it never writes one), else "incomplete" (killed, or still running)."""
    if any((parent / STOPPED_EARLY_FILE).exists() for parent in list(run_dir.parents)[:2]):
        return "stopped early"
    return "incomplete"


def _experiment_of(run_dir: Path, roots: list[Path]) -> str:
    for root in roots:
        if run_dir == root or root in run_dir.parents:
            return root.name
    return run_dir.name


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: the rest is still good
                continue
    return rows


def flat_config(config: dict, prefix: str = "") -> dict:
    """{"model.init": "data", ...}: a run's config as dotted keys (lists as JSON), one column each in runs.csv."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def load_runs(paths: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, evaluations): one row per run, and one row per run x evaluation."""
    roots = [Path(p).expanduser().resolve() for p in paths]
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such folder")
    runs, evaluations = [], []
    for run_dir in sorted({d for root in roots for d in run_folders(root)}):
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
        history = _read_jsonl(run_dir / "metrics.jsonl")
        identity = {
            "experiment": _experiment_of(run_dir, roots), "variant": _variant_of(run_dir, config),
            "dataset": config["dataset"]["name"], "model": config["model"]["name"],
            "architecture": config["model"]["architecture"], "seed": config["training"]["seed"],
        }
        status = result.get("status") or _unfinished_status(run_dir)
        final = result.get("final") or (history[-1] if history else {})
        runs.append({**identity, "status": status, "error": result.get("error"), "run_dir": str(run_dir),
                     "wall_time_s": result.get("wall_time_s"), "samples_per_s": result.get("samples_per_s"),
                     "machine": result.get("host"), "device": result.get("device"), "commit": result.get("commit"),
                     "likelihood": result.get("likelihood") or config["model"]["likelihood"],
                     "config": json.dumps(config, sort_keys=True), **flat_config(config),
                     **{k: v for k, v in final.items() if _is_metric(k, v)}})
        for row in history:
            evaluations.append({**identity, "run_dir": str(run_dir), "status": status,
                                **{k: v for k, v in row.items() if _is_metric(k, v)}})
    runs += _errored_without_runs(roots, {r["run_dir"] for r in runs})
    return pd.DataFrame(runs), pd.DataFrame(evaluations)


def _errored_without_runs(roots: list[Path], known: set[str]) -> list[dict]:
    """Tune trials that failed before the trainer wrote anything (bad install, OOM at start, ...)."""
    rows = []
    for root in roots:
        for error in find_files(root, "error.txt"):
            trial = error.parent
            if any(Path(k).is_relative_to(trial) for k in known):
                continue
            meta = trial / TRIAL_META  # written by the trial before it trains
            params = json.loads((trial / "params.json").read_text()) if (trial / "params.json").exists() else {}
            recorded = json.loads(meta.read_text()) if meta.exists() else {}
            suggestion = trial / SUGGESTION_FILE  # a search trial's, written before it started
            if "config" in recorded:
                config, variant = recorded["config"], recorded["variant"]
            elif suggestion.exists():
                point = json.loads(suggestion.read_text())
                config, variant = point["trial"], point["variant"]
            else:  # a trial that never started, with Ray's loggers on, or from before trials recorded their config
                config = (params.get("grid_point") or params).get("trial", {})
                variant = (params.get("grid_point") or {}).get("variant", "search")
            rows.append({"experiment": root.name, "variant": variant,
                         "dataset": config.get("dataset", {}).get("name"), "model": config.get("model", {}).get("name"),
                         "architecture": config.get("model", {}).get("architecture"),
                         "seed": config.get("training", {}).get("seed"), "status": "failed",
                         "error": error.read_text().strip().splitlines()[-1][:500], "run_dir": str(trial)})
    return rows


def _is_metric(key: str, value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value is None and "/" in key


def metric_columns(frame: pd.DataFrame, kind: str) -> list[str]:
    """Columns like `acc/facet2/shape` for kind "acc"."""
    return sorted(c for c in frame.columns if c.startswith(kind + "/"))


def facet_factor(column: str) -> tuple[str, str]:
    """`acc/facet2/shape` -> ("2", "shape")."""
    _, facet, factor = column.split("/", 2)
    return facet.removeprefix("facet"), factor


# The two headline facets of a run for a factor, by the name `with_best_facet` gives their columns
# (`acc/facet<name>/<factor>`), with the selection protocol each follows (the sweep key `selection`
# names the same two) and how tables show them, so that no reader takes one for the other.
CHOSEN_ON_VALIDATION = "val"  # the facet with the best accuracy on validation labels: honest
AUTHORS_PROTOCOL = "max"  # the facet with the best accuracy on test labels: the paper's headline, optimistic
PROTOCOLS = {CHOSEN_ON_VALIDATION: "validation", AUTHORS_PROTOCOL: "authors-protocol"}
FIXED_FACET = "fixed-facet"  # the protocol column of a row of one facet j
FACET_LABELS = {CHOSEN_ON_VALIDATION: "chosen on val labels",
                AUTHORS_PROTOCOL: "max on test labels (authors' protocol)"}
KINDS = ("acc", "nmi", "ari")


def facets_by_factor(frame: pd.DataFrame, prefix: str) -> dict[str, dict[int, str]]:
    """{factor: {j: column}} of the per-facet columns `<prefix>/facet<j>/<factor>` (prefix e.g. `acc`,
    `val/acc`), facets in increasing j."""
    pattern = re.compile(rf"{re.escape(prefix)}/facet(\d+)/(.+)")
    found: dict[str, dict[int, str]] = {}
    for column in frame.columns:
        match = pattern.fullmatch(str(column))
        if match:
            found.setdefault(match[2], {})[int(match[1])] = column
    return {factor: dict(sorted(columns.items())) for factor, columns in sorted(found.items())}


def best_facet_columns(frame: pd.DataFrame, kind: str = "acc") -> list[tuple[str, str]]:
    """(column, factor) of the authors'-protocol columns `acc/facetmax/<factor>` added by `with_best_facet`."""
    return [(column, factor) for column, factor, facet in headline_columns(frame, kind) if facet == AUTHORS_PROTOCOL]


def headline_columns(frame: pd.DataFrame, kind: str = "acc") -> list[tuple[str, str, str]]:
    """(column, factor, headline facet) of the columns added by `with_best_facet`: per factor the facet
    chosen on validation labels (where runs have validation metrics), then the authors' protocol."""
    return [(f"{kind}/facet{facet}/{factor}", factor, facet)
            for factor in sorted({facet_factor(c)[1] for c in metric_columns(frame, kind)})
            for facet in PROTOCOLS if f"{kind}/facet{facet}/{factor}" in frame]


def with_best_facet(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the two headline columns per factor for acc, nmi and ari:

    `acc/facetmax/<factor>`: the authors' protocol, each run's best facet on TEST labels (the paper's
    headline; optimistic, since the test labels choose the facet the test metric is reported for);
    `acc/facetval/<factor>`: the test metric of the facet with the highest `val/acc/facet<j>/<factor>`
    in that run (ties: the lowest j), added only where the runs have validation metrics, NaN for a run
    without them. Under the validation choice nmi and ari are those of the facet that accuracy chose;
    under the authors' protocol each is its own maximum over facets, as before.
    """
    added = {}
    for kind in KINDS:
        for factor, columns in facets_by_factor(frame, kind).items():
            added[f"{kind}/facetmax/{factor}"] = frame[list(columns.values())].max(axis=1, skipna=True)
    for factor, val_columns in facets_by_factor(frame, "val/acc").items():
        val = frame[list(val_columns.values())].to_numpy(dtype=float)
        known = ~np.isnan(val).all(axis=1)
        chosen = np.where(np.isnan(val), -np.inf, val).argmax(axis=1)  # argmax takes the first (lowest j) of ties
        for kind in KINDS:
            test = np.column_stack([frame[f"{kind}/facet{j}/{factor}"].to_numpy(dtype=float)
                                    if f"{kind}/facet{j}/{factor}" in frame else np.full(len(frame), np.nan)
                                    for j in val_columns])
            picked = np.take_along_axis(test, chosen[:, None], axis=1)[:, 0]
            added[f"{kind}/facetval/{factor}"] = pd.Series(np.where(known, picked, np.nan), index=frame.index)
    return frame.drop(columns=[c for c in added if c in frame]).assign(**added)  # recomputed if called twice
