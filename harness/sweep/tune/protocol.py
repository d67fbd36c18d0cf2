"""What a Tune trial reports, as the worker writes it and the driver, its progress printer and the
searcher read it: every report carries `mfcbench_status` ("running", then "completed" or "failed"),
and a packed trial adds its seeds' own values under `seed<s>/<key>` (harness.sweep.tune.worker's
docstring has the whole contract). Imports nothing of training, so the driver side stays free of it."""
from __future__ import annotations

STATUS = "mfcbench_status"
PER_SEED_METRICS = ("train_loss",)  # reported per seed by a packed trial, besides the objectives


def seed_key(seed: int, key: str) -> str:
    """A packed trial's per-seed result key: `seed3/val/elbo`, `seed3/mfcbench_status`."""
    return f"seed{seed}/{key}"


def reported_status(result: dict | None) -> str | None:
    """The status a trial's result reports: running, completed or failed (None: it never reported)."""
    return (result or {}).get(STATUS)
