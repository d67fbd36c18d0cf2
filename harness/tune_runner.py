"""Running a sweep on Ray Tune: each trial is the single-trial trainer as a function trainable.

Experiment folder (`storage/name/`):
  mfcbench-sweep.yaml     the sweep file as run, with the expanded trial list
  optuna.db               the Optuna study (search sweeps): `optuna-dashboard sqlite:///optuna.db`
  trial_<id>/mfcbench-trial.json   the trial's variant and searched overrides
  trial_<id>/runs/seed<s>/   each trial's run folder(s): config.yaml, metrics.jsonl, result.json
  trial_<id>/...          Ray Tune's own files (params.json, result.json, checkpoints, error.txt)
Run folders are written straight into storage, so on a multi-node cluster `storage` must be a
filesystem every node mounts (Ray's own rule for multi-node storage).
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .config import TrialConfig
from .sweep import SweepConfig, resolved_base, with_overrides

RESERVED = ("grid_point", "trial", "cpus", "replicates", "experiment_dir")
MARKER = "mfcbench-checkpoint.json"
SWEEP_FILE = "mfcbench-sweep.yaml"


class SweepError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Inside a Ray worker

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


# ---------------------------------------------------------------------------------------------
# On the driver

def _event_printer():
    from ray.tune import Callback

    class EventPrinter(Callback):
        """One line per trial event, readable in a terminal or a log file."""

        def _tag(self, trial) -> str:
            return f"{trial.trial_id} [{trial.config.get('grid_point', {}).get('variant', 'search')}]"

        def on_trial_start(self, iteration, trials, trial, **info):
            trial_config = trial.config.get("grid_point", trial.config).get("trial", {})
            seed = trial_config.get("training", {}).get("seed")
            print(f"{time.strftime('%H:%M:%S')} start    {self._tag(trial)} seed={seed}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            accs = " ".join(f"{k.removeprefix('acc/')}={v:.3f}" for k, v in result.items()
                            if k.startswith("acc/") and isinstance(v, float))
            elbo = result.get("elbo")
            elbo_text = f"elbo={elbo:.2f} " if isinstance(elbo, float) else ""
            print(f"{time.strftime('%H:%M:%S')} result   {self._tag(trial)} epoch={result.get('epoch')} "
                  f"{elbo_text}{accs} host={result.get('host')}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            print(f"{time.strftime('%H:%M:%S')} done     {self._tag(trial)}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"{time.strftime('%H:%M:%S')} ERROR    {self._tag(trial)}: see {trial.path}/error.txt", flush=True)

    return EventPrinter()


# Ray rewrites exactly "127.0.0.1" to the host's outward address (services.resolve_ip_for_localhost),
# so a local Ray that must stay on loopback takes another address of 127.0.0.0/8.
LOOPBACK_NODE_IP = "127.0.0.2"


def start_ray(address: str | None, num_cpus: int | None = None, object_store_mb: int = 512,
              temp_dir: str | None = None) -> None:
    """Join `address`, or start a local Ray whose node address is on loopback (127.0.0.2), with the
    dashboard and usage stats off and a 512 MB object store (trials load their own data).
    Ray's gRPC servers still listen on every interface; Ray 2.60 has no option to narrow that."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    kwargs: dict[str, Any] = dict(_node_ip_address=LOOPBACK_NODE_IP, include_dashboard=False,
                                  object_store_memory=object_store_mb * 1024 * 1024, log_to_driver=True)
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    ray.init(**kwargs)


def _optuna_search(sweep: SweepConfig, experiment_dir: Path):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    search = sweep.search
    space = {}
    for key, p in search.space.items():
        if p.type == "categorical":
            space[key] = optuna.distributions.CategoricalDistribution(p.choices)
        elif p.type == "int":
            space[key] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log,
                                                              step=int(p.step or 1))
        else:
            space[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    s = search.sampler
    if s.type == "tpe":  # every default spelled out: Optuna 5 changed several
        sampler = optuna.samplers.TPESampler(seed=s.seed, multivariate=s.multivariate,
                                             n_startup_trials=s.n_startup_trials, constant_liar=s.constant_liar)
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    storage = optuna.storages.RDBStorage(f"sqlite:///{experiment_dir / 'optuna.db'}")
    metrics = search.metrics if len(search.metrics) > 1 else search.metrics[0]
    modes = search.modes if len(search.modes) > 1 else search.modes[0]
    return OptunaSearch(space=space, metric=metrics, mode=modes, sampler=sampler, storage=storage,
                        study_name=sweep.name)


def run_sweep(sweep: SweepConfig, trials: list[dict], storage: str | Path, name: str | None = None,
              address: str | None = None, resume: bool = False, retry_errored: bool = False,
              source_text: str = "", ray_temp_dir: str | None = None, verbose: int = 1):
    """Run (or resume) a validated sweep; returns Tune's ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    name = name or sweep.name
    storage = Path(storage).expanduser().resolve()
    experiment_dir = storage / name
    run_trainable = tune.with_resources(trainable, {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})
    if resume:
        if not tune.Tuner.can_restore(str(experiment_dir)):
            raise SweepError(f"--resume: no sweep to resume at {experiment_dir}")
    elif experiment_dir.exists() and any(experiment_dir.iterdir()):
        raise SweepError(f"{experiment_dir} already holds a sweep; pass --resume to finish it, or --name/--storage "
                         "for a new one (nothing was changed)")

    start_ray(address, temp_dir=ray_temp_dir)
    if resume:
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=run_trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=retry_errored)
        return tuner.fit()

    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / SWEEP_FILE).write_text(
        source_text + "\n# --- expanded by mfcbench ---\n"
        + yaml.safe_dump({"trials": [{"variant": t["variant"], "overrides": t["overrides"]} for t in trials]}))
    search_alg, scheduler, num_samples = None, None, 1
    param_space: dict[str, Any] = {"cpus": sweep.resources.cpu, "experiment_dir": str(experiment_dir)}
    if sweep.search is None:
        param_space["grid_point"] = tune.grid_search([{"variant": t["variant"], "trial": t["trial"]} for t in trials])
    else:
        param_space.update({"trial": resolved_base(sweep.base), "replicates": sweep.search.replicates})
        search_alg = _optuna_search(sweep, experiment_dir)
        if sweep.max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=sweep.max_concurrent)
        num_samples = sweep.search.num_samples
    if sweep.scheduler:
        scheduler = ASHAScheduler(metric=sweep.scheduler.metric, mode=sweep.scheduler.mode, time_attr="epoch",
                                  grace_period=sweep.scheduler.grace_period,
                                  reduction_factor=sweep.scheduler.reduction_factor)
    tuner = tune.Tuner(
        run_trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=sweep.max_concurrent or None, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                  failure_config=tune.FailureConfig(max_failures=sweep.retries),
                                  # Keep every (tiny) marker: see _marker_checkpoint.
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                                  callbacks=[_event_printer()], verbose=verbose))
    return tuner.fit()

