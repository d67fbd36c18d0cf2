"""Inside a Ray worker: one Tune trial trains one seed with the single-trial trainer, into the experiment folder.

What a trial trains comes in one of two shapes of Tune params:
  {"trial_index": i, ...}     grid trials: entry i of the expanded trial list, which the driver hands
                              over once through tune.with_parameters (so Tune's params, results,
                              experiment_tag and folder names stay small)
  {"grid_point": {"variant", "trial"}, "overrides": {...}, ...}
                              a point built elsewhere (harness.search's suggestions, and grid trials of
                              experiments started before configs went by index): "trial" is the full
                              config, seed included; "overrides" only records what was searched
plus "cpus" and "experiment_dir". A run folder that already has a checkpoint resumes with its own
config.yaml (only RESUME_SAFE_KEYS come from the params): an experiment started before a change of
defaults, such as the validation split, finishes as it began.

The result contract the driver, the EventPrinter and the searcher rely on: every report carries
`mfcbench_status`, "running" while training, and on the trial's final report "completed" or
"failed" (with `error`: the message). A deterministic failure (TrialFailed: non-finite loss, bad
data, a run folder that cannot resume) ends the Tune trial normally with that "failed" report, so
Tune's retries (FailureConfig.max_failures) are spent only on lost actors and nodes. No report ever
holds a None or non-finite value: such keys are dropped, and a trial whose scheduler or search
metric is non-finite fails.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Sequence

from .config import RESUME_SAFE_KEYS, TrialConfig, differences, read_run_config, with_legacy_defaults
from .files import write_json_atomic
from .layout import TRIAL_META, run_folder
from .trial_device import trial_device

STATUS = "mfcbench_status"  # the key of the result contract above


def reported_status(result: dict | None) -> str | None:
    """The status a trial's result reports: running, completed or failed (None: it never reported)."""
    return (result or {}).get(STATUS)



def trainable(params: dict, grid_trials: Sequence[dict] = (), report: str = "every_evaluation",
              required_metrics: Sequence[str] = ()) -> None:
    """One Tune trial: one seed of one trial config, trained (or resumed) in its run folder.

    grid_trials: the expanded grid ({variant, overrides, trial} each), indexed by params["trial_index"].
    report: "every_evaluation" (what ASHA and live progress need) or "final" (one result per trial).
    required_metrics: the scheduler's and searcher's metrics; a trial where one is non-finite fails.
    """
    import ray
    import torch
    from ray import tune

    from . import trainer

    variant, overrides, config_dict = _what_to_train(params, grid_trials)
    try:
        # Ray, not torch, knows whether this trial has a GPU: torch sees every GPU of the node
        config_dict["training"]["device"] = trial_device(config_dict["training"]["device"], ray.get_gpu_ids(),
                                                         torch.cuda.is_available())
        if config_dict["training"].get("threads") is None:
            config_dict["training"]["threads"] = max(1, int(params.get("cpus", 1)))
        config = TrialConfig.model_validate(config_dict)  # on this node: an npz file it cannot read, say
        # Not tune.get_context().get_trial_dir(): that is Ray's local staging folder, which a reused
        # actor does not sync to storage. Run folders go straight into the experiment folder (for a
        # multi-node cluster, storage must be a shared filesystem, as Ray requires anyway).
        seed = config.training.seed
        run_dir = run_folder(params["experiment_dir"], tune.get_context().get_trial_id(), seed)
        trial_dir = run_dir.parent.parent
        resume = (run_dir / "checkpoint.pt").exists()
        if resume:
            config = config_to_resume(run_dir, config, log=lambda line: print(f"[seed {seed}] {line}", flush=True))
    except ValueError as error:  # deterministic (DeviceError, a config this node refuses, an unreadable
        # config.yaml in the run folder): no retry
        tune.report({"variant": variant, "seed": config_dict["training"].get("seed"), STATUS: "failed",
                     "error": str(error)})
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = {"variant": variant, "seed": seed, "node_id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "pid": os.getpid()}
    _record_start(trial_dir, variant, overrides, params.get("trial_index"), config.model_dump(mode="json"), identity)

    done = run_dir / "result.json"
    if done.exists():
        previous = json.loads(done.read_text())
        if previous.get("status") == "completed":  # finished before the driver or actor died: not run again
            tune.report({**finite_metrics(previous["final"]), **identity, STATUS: "completed"})
            return

    last_epoch = config.training.total_epochs
    held: dict = {}  # the last evaluation, reported once the run is known to have completed

    def reporter(metrics: dict, _run_dir: Path) -> None:
        numeric = finite_metrics(metrics)
        missing = [m for m in required_metrics if m not in numeric]
        if missing:  # raised inside the trainer, which records the failure in result.json
            raise trainer.TrialFailed(f"{', '.join(missing)} not finite at epoch {metrics.get('epoch')}")
        if report == "every_evaluation" and 0 < metrics["epoch"] < last_epoch:
            tune.report({**numeric, **identity, STATUS: "running"})
        else:
            held.clear()
            held.update(numeric)

    try:
        result = trainer.run_trial(config, run_dir, resume=resume, reporter=reporter,
                                   log=lambda line: print(f"[seed {seed}] {line}", flush=True))
    except trainer.TrialFailed as error:
        tune.report({**held, **identity, STATUS: "failed", "error": str(error)})
        return
    tune.report({**(held or finite_metrics(result["final"])), **identity, STATUS: "completed"})


def config_to_resume(run_dir: Path, requested: TrialConfig, log=print) -> TrialConfig:
    """The config a run folder with a checkpoint continues with: the run's own config.yaml, with the
    values of RESUME_SAFE_KEYS (device, threads, data_root, ...) from `requested`, the config Tune
    passes now. A sweep started before a key existed (or whose defaults changed since) thus resumes
    its runs as they began, e.g. on the training set without a validation split."""
    recorded = read_run_config(run_dir)
    data = recorded.model_dump(mode="json")
    now = requested.model_dump(mode="json")
    for key in RESUME_SAFE_KEYS:
        section, name = key.split(".")
        data[section][name] = now[section][name]
    config = TrialConfig.model_validate(data)
    kept = differences(config, requested)
    if kept:
        log(f"resuming {run_dir} with its own config.yaml, which differs from the sweep's in "
            + ", ".join(f"{k} (run {old!r}, sweep {new!r})" for k, (old, new) in kept.items()))
    return config


def _what_to_train(params: dict, grid_trials: Sequence[dict]) -> tuple[str, dict, dict]:
    """(variant, overrides, full trial config dict: a copy, the caller fills in threads)."""
    if "trial_index" in params:
        point, overrides = grid_trials[params["trial_index"]], grid_trials[params["trial_index"]]["overrides"]
    else:
        point, overrides = params["grid_point"], params.get("overrides", {})
    # A trial recorded by an experiment started before a key existed (its grid trials, or the base a
    # pickled searcher holds) keeps training as that experiment began: its seeds stay comparable.
    return point["variant"], overrides, with_legacy_defaults(json.loads(json.dumps(point["trial"])))


def _record_start(trial_dir: Path, variant: str, overrides: dict, trial_index: int | None, config: dict,
                  identity: dict) -> None:
    """mfcbench-trial.json: what the trial trains (reports read it, with or without Tune's own
    loggers), and every start of it: a retried trial shows each node it ran on."""
    path = trial_dir / TRIAL_META
    starts = json.loads(path.read_text()).get("starts", []) if path.exists() else []
    starts.append({k: identity[k] for k in ("node_id", "host", "pid")} | {"at": time.time()})
    write_json_atomic(path, {"variant": variant, "overrides": overrides, "trial_index": trial_index,
                             "config": config, "starts": starts})


def finite_metrics(metrics: dict) -> dict:
    """The numeric metrics Tune may see: alphas as alpha/facet<j>, None and non-finite values dropped
    (None in a result raises inside Tune's controller when Optuna or ASHA reads it)."""
    out = {}
    for key, value in metrics.items():
        if key == "alphas":
            out.update({f"alpha/facet{j}": a for j, a in enumerate(value, start=1) if math.isfinite(a)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value
    return out
