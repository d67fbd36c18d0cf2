"""Inside a Ray worker: one Tune trial is the single-trial trainer, run into the experiment folder.

A grid point {variant, trial config}, or a base trial config plus searched keys; with
`replicates` > 1 the suggestion's seeds train one after another and Tune sees their mean.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .config import TrialConfig
from .sweep import with_overrides

RESERVED = ("grid_point", "trial", "cpus", "replicates", "experiment_dir")
MARKER = "mfcbench-checkpoint.json"


def trainable(params: dict) -> None:
    """One Tune trial: a grid point {variant, trial config}, or a base trial config plus searched keys.

    With `replicates` > 1 the suggestion is trained with seeds seed, seed+1, ... one after
    another, and the final report is their mean (what Optuna optimises).
    """
    import ray
    from ray import tune

    from .trainer import run_trial

    point = params.get("grid_point") or {"variant": "search", "trial": params["trial"]}
    overrides = {k: v for k, v in params.items() if k not in RESERVED}
    config_dict = with_overrides(point["trial"], overrides)
    if config_dict["training"].get("threads") is None:
        config_dict["training"]["threads"] = max(1, int(params.get("cpus", 1)))
    config = TrialConfig.model_validate(config_dict)
    replicates = int(params.get("replicates", 1))
    # Not tune.get_context().get_trial_dir(): that is Ray's local staging folder, which a reused
    # actor does not sync to storage. Run folders go straight into the experiment folder (for a
    # multi-node cluster, storage must be a shared filesystem, as Ray requires anyway).
    runs_root = Path(params["experiment_dir"]) / f"trial_{tune.get_context().get_trial_id()}" / "runs"
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            marker = json.loads((Path(saved) / MARKER).read_text())
        print(f"restored by Tune after seed {marker['seed']} epoch {marker['epoch']}; continuing from the run "
              f"folders in {runs_root}", flush=True)
    runs_root.mkdir(parents=True, exist_ok=True)
    (runs_root.parent / "mfcbench-trial.json").write_text(json.dumps({"variant": point["variant"], "overrides": overrides}))
    identity = {"variant": point["variant"], "node_id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "pid": os.getpid(),
                "overrides": json.dumps(overrides, sort_keys=True, default=str)}

    finals = []
    for r in range(replicates):
        seed = config.training.seed + r
        trial_config = config.model_copy(update={"training": config.training.model_copy(update={"seed": seed})})
        run_dir = runs_root / f"seed{seed}"
        final = _completed_final(run_dir)
        if final is not None:  # finished before the driver died: not run again
            finals.append(final)
            if replicates == 1:
                tune.report({**_numeric(final), **identity, "seed": seed, "replicate": 0})
            else:
                _report_mean(finals, identity, config.training.seed)
            continue

        def report(metrics: dict, _run_dir: Path, seed=seed) -> None:
            with _marker_checkpoint(seed, metrics["epoch"]) as checkpoint:
                tune.report({**_numeric(metrics), **identity, "seed": seed, "replicate": 0}, checkpoint=checkpoint)

        # With replicates, Tune sees one result per finished replicate (the running mean) instead.
        result = run_trial(trial_config, run_dir, resume=(run_dir / "checkpoint.pt").exists(),
                           reporter=report if replicates == 1 else None,
                           log=lambda line, seed=seed: print(f"[seed {seed}] {line}", flush=True))
        finals.append(result["final"])
        if replicates > 1:  # checkpoint after each finished replicate; report the running mean
            _report_mean(finals, identity, config.training.seed)


def _completed_final(run_dir: Path) -> dict | None:
    """The final metrics of a run that finished, else None."""
    done = run_dir / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if result.get("status") == "completed":
            return result["final"]
    return None


@contextmanager
def _marker_checkpoint(seed: int, epoch: int):
    """A Tune checkpoint that records where the trial is (seed, epoch), not the weights.

    The state itself is the run folder in storage (checkpoint.pt, written atomically, and
    metrics.jsonl, cut back to it on resume), so restoring never depends on which checkpoint
    folders Ray has kept: Ray snapshots its experiment state lazily, and after a killed driver
    that state can name checkpoints Ray had already deleted. Markers are tiny, so all are kept.
    """
    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MARKER).write_text(json.dumps({"seed": seed, "epoch": epoch}))
        yield tune.Checkpoint.from_directory(tmp)


def _report_mean(finals: list[dict], identity: dict, seed: int) -> None:
    from ray import tune

    with _marker_checkpoint(seed, -1) as checkpoint:
        tune.report({**_mean_metrics(finals), **identity, "seed": seed, "replicate": "mean",
                     "replicates_done": len(finals)}, checkpoint=checkpoint)


def _numeric(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if key == "alphas":
            out.update({f"alpha/facet{j}": a for j, a in enumerate(value, start=1)})
        elif isinstance(value, (int, float)) or value is None:
            out[key] = value
    return out


def _mean_metrics(finals: list[dict]) -> dict:
    rows = [_numeric(f) for f in finals]
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return {k: statistics.fmean(row[k] for row in rows if row.get(k) is not None) for k in keys}
