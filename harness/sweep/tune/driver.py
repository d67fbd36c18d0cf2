"""Running a sweep on Ray Tune, on the driver: Ray start-up, the searcher and scheduler, progress lines.

The trial itself is harness.sweep.tune.worker.trainable; checks that need no Ray are in harness.sweep.checks.

The experiment folder it writes is described in harness.layout.
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from harness.compat import install_legacy_modules
from harness.files import write_json_atomic
from harness.layout import GRID_TRIALS_FILE, SWEEP_FILE, SWEEP_FILE_EXPANSION
from harness.sweep.checks import check_before_start
from harness.sweep.lock import driver_lock, wait_for_lease
from harness.sweep.expand import (
    effective_max_concurrent,
    pack_grid,
    trials_per_suggestion,
)
from harness.sweep.load import data_paths, reported_objectives
from harness.sweep.overrides import resolved_base
from harness.sweep.spec import SweepConfig
from harness.sweep.tune.preflight import preflight
from harness.sweep.tune.progress import event_printer
from harness.sweep.tune.session import check_cluster_fits, no_colour_unless_terminal, start_ray
from harness.storage import Bucket, is_bucket, join

EXPERIMENT_SNAPSHOT_S = 300  # TUNE_GLOBAL_CHECKPOINT_S unless the user sets it


def run_sweep(sweep: SweepConfig, trials: list[dict], storage: str | Path, name: str | None = None,
              address: str | None = None, resume: bool = False, retry_errored: bool = False,
              source_text: str = "", ray_temp_dir: str | None = None, verbose: int = 0,
              allow_pending: bool = False, trust_experiment_dir: bool = False, tracker: str | None = None,
              wait_for_lock: bool = False):
    """Run (or resume) a validated sweep; returns Tune's ResultGrid.

    verbose 0: mfcbench's own lines only (trial events, progress with ETA); 1 and 2: Ray Tune's
    status tables and result tables too (RunConfig.verbose), with the workers' output and Ray's
    INFO logs. Raises SweepError, before any trial starts, for everything check_before_start and
    check_cluster_fits find. wait_for_lock: wait for the lease of a lock that another host's driver
    left (harness.sweep.lock) to run out, as a requeued job must, instead of refusing at once.
    """
    no_colour_unless_terminal()
    from ray import tune

    from harness.sweep.tune.searcher import (
        ReplicatedOptunaSearch,
        asha_scheduler,
        stopped_early_marker,
    )
    if tracker == "mlflow":
        from harness.sweep.tune.tracking import mlflow_callback
    from harness.sweep.tune.worker import (
        trainable,  # handed to Tune, which runs it in the workers
    )

    checks = {"retry_errored": retry_errored, "trust_experiment_dir": trust_experiment_dir, "tracker": tracker,
              "source_text": source_text if resume and source_text else None}
    experiment_dir = check_before_start(sweep, storage, name, resume, wait_for_lease=wait_for_lock, **checks)
    name = experiment_dir.name
    if not is_bucket(storage):
        storage = experiment_dir.parent
    # Where Tune and the trials find the experiment: its folder, or on a bucket its URI (experiment_dir
    # is then the driver's local copy, and what the driver writes there is uploaded).
    location = join(storage, name) if is_bucket(storage) else str(experiment_dir)
    # A resume trains what the first run recorded, whatever the sweep file expands to now (its `pack` too).
    grid_trials = []
    if sweep.search is None:
        grid_trials = _recorded_grid_trials(experiment_dir) if resume else pack_grid(trials, sweep.pack).trials
    run_trainable = tune.with_resources(
        tune.with_parameters(trainable, grid_trials=grid_trials, report=sweep.report,
                             required_metrics=reported_objectives(sweep)),
        {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})
    if sweep.search is None:
        total = len(grid_trials or trials)
    else:
        total = sweep.search.num_samples * trials_per_suggestion(sweep)
    with _owner_only_writes(), _ray_output(verbose), _tune_settings(sweep.ray_loggers), ExitStack() as held:
        start_ray(address, temp_dir=ray_temp_dir, quiet=verbose == 0)
        check_cluster_fits(sweep.resources.cpu, sweep.resources.gpu, allow_pending)
        # Released when run_sweep returns or raises (Ctrl-C included).
        if wait_for_lock:
            wait_for_lease(experiment_dir)
        held.enter_context(driver_lock(experiment_dir))
        # Again, now that no other driver can start or finish here: the folder may have changed since
        check_before_start(sweep, storage, name, resume, **checks)
        # On --resume, the data the experiment was started with (its recorded grid trials, if any).
        nodes, seconds = preflight(location, data_paths(sweep, grid_trials or trials))
        print(f"preflight: {nodes} node(s) can write {location} and see the data ({seconds:.2f} s)", flush=True)
        printer = event_printer(total, verbose, grid_trials)
        callbacks = [printer]
        if sweep.scheduler:
            callbacks.append(stopped_early_marker())
        if resume:
            # resume_errored keeps an errored trial's id, so it continues in its own run folder
            # (restart_errored would start it from scratch under a new id and folder).
            install_legacy_modules()  # tuner.pkl of an experiment an older mfcbench started
            tuner = tune.Tuner.restore(location, trainable=run_trainable, resume_unfinished=True,
                                       resume_errored=retry_errored, restart_errored=False)
            if tracker == "mlflow":
                callbacks.append(mlflow_callback(experiment_dir, verbose))
            # tuner.pkl holds the first run's RunConfig, callbacks and verbosity included: this
            # run's flags (-v, --tracker) and a fresh progress count replace them.
            local = getattr(tuner, "_local_tuner", None)
            if local is not None:
                run_config = local.get_run_config()
                run_config.callbacks, run_config.verbose = callbacks, verbose
            return _fit(tuner, printer)

        experiment_dir.mkdir(parents=True, exist_ok=True)
        (experiment_dir / SWEEP_FILE).write_text(
            source_text + f"\n{SWEEP_FILE_EXPANSION}\n"
            # The base as run: every default filled in and every path absolute, as are the overrides.
            + yaml.safe_dump({"resolved_base": resolved_base(sweep.base),
                              "trials": [{"variant": t["variant"], "overrides": t["overrides"]}
                                         for t in grid_trials or trials]}))
        if sweep.search is None:
            write_json_atomic(experiment_dir / GRID_TRIALS_FILE, grid_trials, indent=None)
        if is_bucket(location):
            Bucket(location).upload(experiment_dir, [p for p in (experiment_dir / SWEEP_FILE,
                                                                 experiment_dir / GRID_TRIALS_FILE) if p.exists()])
        if tracker == "mlflow":
            callbacks.append(mlflow_callback(experiment_dir, verbose))
        search_alg, num_samples = None, 1
        param_space: dict[str, Any] = {"cpus": sweep.resources.cpu, "experiment_dir": location}
        if sweep.search is None:
            param_space["trial_index"] = tune.grid_search(list(range(len(grid_trials))))
        else:
            search_alg = ReplicatedOptunaSearch(sweep, experiment_dir, location)
            # Tune trials: one per seed, or per pack of a suggestion's seeds
            num_samples = sweep.search.num_samples * trials_per_suggestion(search_alg.sweep)
        scheduler = asha_scheduler(sweep, trials) if sweep.scheduler else None
        tuner = tune.Tuner(
            run_trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                        # the one concurrency limit (Tune wraps a Searcher in a ConcurrencyLimiter)
                                        max_concurrent_trials=effective_max_concurrent(sweep) or None,
                                        reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      # Spent on lost actors and nodes only: the worker ends a trial
                                      # that fails on its own (non-finite loss) as "failed", normally.
                                      failure_config=tune.FailureConfig(max_failures=sweep.retries),
                                      callbacks=callbacks, verbose=verbose))
        return _fit(tuner, printer)


class SweepStopped(Exception):
    """The driver stopped before every trial ended (Ctrl-C, SIGUSR1 from SLURM near the time limit,
    its lock taken over): Ray Tune saved the experiment's state, and a resume continues it."""

    def __init__(self, results, unfinished: list[str]):
        super().__init__(f"{len(unfinished)} trial(s) had not ended")
        self.results, self.unfinished = results, unfinished


def _fit(tuner, printer):
    """tuner.fit(), raising SweepStopped where Tune's loop ended with trials still live: on a stop
    signal Tune marks its running trials TERMINATED as it cleans up, so only the EventPrinter's
    view from inside the loop tells a stopped sweep from a finished one."""
    results = tuner.fit()
    if printer.unfinished:
        raise SweepStopped(results, sorted(printer.unfinished))
    return results


def _recorded_grid_trials(experiment_dir: Path) -> list[dict]:
    """The grid trials the experiment was started with; none for an experiment from before configs
    went by index (its Tune params hold each trial's whole config)."""
    path = experiment_dir / GRID_TRIALS_FILE
    return json.loads(path.read_text()) if path.exists() else []


@contextmanager
def _tune_settings(ray_loggers: bool):
    """Tune's automatic JSON/CSV/TensorBoard loggers only when asked for: they write every result of
    every trial a second time (run folders have metrics.jsonl and tensorboard/). Strict metric
    checking off: a trial's "failed" report has no objective values (the worker drops non-finite ones),
    and Tune would otherwise stop the whole run on it; ASHA ignores a result without its metric.
    A user's own setting of either variable wins. Without the loggers, the ResultGrid that Tune builds
    at the end warns once per trial that it found no result.json/progress.csv (its metrics come
    from the driver's memory all the same): that warning is dropped. Tune snapshots the experiment's
    state (every trial's, rewritten whole) every few seconds by default; run folders carry what a
    resume needs (a finished run is never trained again), so once every EXPERIMENT_SNAPSHOT_S is
    enough, which keeps a 10,000-trial sweep from rewriting hundreds of MB on shared storage."""
    import logging

    settings = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1", "TUNE_GLOBAL_CHECKPOINT_S": str(EXPERIMENT_SNAPSHOT_S)}
    if not ray_loggers:
        settings["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    added = [key for key in settings if key not in os.environ]
    os.environ.update({key: settings[key] for key in added})
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")

    def no_missing_logger_files(record: logging.LogRecord) -> bool:
        return ray_loggers or not str(record.msg).startswith("Failed to fetch metrics for")

    analysis_log.addFilter(no_missing_logger_files)
    try:
        yield
    finally:
        analysis_log.removeFilter(no_missing_logger_files)
        for key in added:
            os.environ.pop(key, None)


@contextmanager
def _ray_output(verbose: int):
    """verbose 0: Ray Tune prints nothing of its own. Its new output engine (Ray 2.60's default) prints
    the experiment box, TensorBoard hint and per-error blocks even at verbose=0, so the legacy engine
    is chosen, which is silent at 0; Tune's logged traceback per errored trial is off too (the
    EventPrinter names the error and error.txt). A user's own setting of either variable wins."""
    quiet = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"} if verbose == 0 else {}
    added = [key for key in quiet if key not in os.environ]
    os.environ.update({key: quiet[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextmanager
def _owner_only_writes():
    """Files the driver writes (Ray's tuner.pkl and experiment state, which --resume un-pickles) and
    a local Ray's processes it starts get no group/world write bits, whatever the user's umask."""
    previous = os.umask(0o022)
    os.umask(previous | 0o022)
    try:
        yield
    finally:
        os.umask(previous)
