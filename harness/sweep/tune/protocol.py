"""What a Tune trial reports, as the worker writes it and the driver, its progress printer and the
searcher read it: every report carries `mfcbench_status` ("running", then "completed" or "failed"),
and a packed trial adds its seeds' own values under `seed<s>/<key>` (harness.sweep.tune.worker's
docstring has the whole contract). Imports nothing of training, so the driver side stays free of it."""
from __future__ import annotations

import json
from pathlib import Path

from harness.layout import SUGGESTION_FILE, trial_folder

STATUS = "mfcbench_status"
PER_SEED_METRICS = ("train_loss",)  # reported per seed by a packed trial, besides the objectives


def seed_key(seed: int, key: str) -> str:
    """A packed trial's per-seed result key: `seed3/val/elbo`, `seed3/mfcbench_status`."""
    return f"seed{seed}/{key}"


def reported_status(result: dict | None) -> str | None:
    """The status a trial's result reports: running, completed or failed (None: it never reported)."""
    return (result or {}).get(STATUS)


def suggestion_path(experiment_dir, trial_id: str) -> Path:
    """Where the searcher writes what a search trial trains: `trial_<id>/mfcbench-suggestion.json`."""
    return trial_folder(experiment_dir, trial_id) / SUGGESTION_FILE


def trial_point(params: dict, grid_trials, trial_id: str) -> dict:
    """{variant, trial (the full config), overrides} of a Tune trial from its params: a grid trial by
    index, a search trial by its suggestion file, or an older experiment's point held whole in params."""
    if "trial_index" in params:
        return grid_trials[params["trial_index"]]
    if "suggestion" in params:
        point = json.loads(suggestion_path(params["experiment_dir"], trial_id).read_text())
    else:
        point = params["grid_point"]
    return {**point, "overrides": params.get("overrides", {})}
