"""Running a sweep on Ray Tune, on the driver: Ray start-up, the searcher and scheduler, progress lines.

The trial itself is harness.tune_trial.trainable; checks that need no Ray are in harness.sweep_checks.

The experiment folder it writes is described in harness.layout.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from .files import write_json_atomic
from .layout import GRID_TRIALS_FILE, MLFLOW_FILE, SWEEP_FILE
from .log_text import clock, significant
from .preflight import alive_nodes, preflight
from .sweep import SweepConfig, data_paths, effective_max_concurrent, pack_grid, reported_objectives, resolved_base, \
    trials_per_suggestion
from .sweep_checks import SweepError, check_before_start, driver_lock
from .tune_trial import reported_status, trainable

PROGRESS_EVERY_S = 60


def _event_printer(total: int, verbose: int = 0, grid_trials: list[dict] = ()):
    """grid_trials: the expanded grid, to name a trial whose Tune params hold only its index."""
    from ray.tune import Callback

    class EventPrinter(Callback):
        """One line per trial event, readable in a terminal or a log file, and progress lines
        "k of N trials done (e errored), m running, ETA hh:mm:ss" on each trial's end and at most
        every PROGRESS_EVERY_S seconds otherwise. Without -v a trial's evaluations print at most
        once a minute; its final metrics print with its `done` line. A trial that ends with
        mfcbench_status "failed" (tune_trial) prints as FAILED with its error and counts as errored."""

        def __init__(self):
            self.total, self.verbose = total, verbose
            self.started = time.monotonic()
            self.last_progress = self.started
            self.last_result: dict[str, float] = {}
            self.completed: set[str] = set()
            self.errored: set[str] = set()

        def setup(self, **info):
            self.started = self.last_progress = time.monotonic()

        def _point(self, trial) -> dict:
            """{variant, trial} of a grid trial (by index, or whole in its params), else {}."""
            if "trial_index" in trial.config:
                return grid_trials[trial.config["trial_index"]]
            return trial.config.get("grid_point", {})

        def _tag(self, trial) -> str:
            return f"{trial.trial_id} [{self._point(trial).get('variant', 'search')}]"

        def _metrics(self, result: dict) -> str:
            parts = []
            if isinstance(result.get("elbo"), float):
                parts.append(f"elbo={significant(result['elbo'])}")
            parts += [f"{k.removeprefix('acc/')}={significant(v)}" for k, v in result.items()
                      if k.startswith("acc/") and isinstance(v, float)]
            alphas = [result[k] for k in sorted((k for k in result if k.startswith("alpha/facet")),
                                                 key=lambda k: int(k.removeprefix("alpha/facet")))]
            if alphas:
                parts.append("alphas=" + ",".join(significant(float(a)) for a in alphas))
            return " ".join(parts)

        def _print(self, text: str) -> None:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

        def _progress(self, trials) -> None:
            self.last_progress = time.monotonic()
            errored = {t.trial_id for t in trials if t.status == "ERROR" or _failed(t)} | self.errored
            finished = ({t.trial_id for t in trials if t.status == "TERMINATED"} | self.completed) - errored
            running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in finished | errored)
            done = len(finished) + len(errored)
            done_here = len(self.completed | self.errored)  # a resumed sweep's earlier trials took no time here
            remaining = max(self.total - done, 0)
            if remaining == 0:
                eta = "00:00:00"
            elif done_here:
                eta = clock((time.monotonic() - self.started) / done_here * remaining)
            else:
                eta = "unknown"
            self._print(f"{done} of {self.total} trials done ({len(errored)} errored), {running} running, ETA {eta}")

        def on_trial_start(self, iteration, trials, trial, **info):
            training = (self._point(trial) or trial.config).get("trial", {}).get("training", {})
            seeds = training.get("seeds")  # a packed trial
            which = f"seeds={','.join(map(str, seeds))}" if seeds else f"seed={training.get('seed')}"
            self._print(f"start    {self._tag(trial)} {which}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if reported_status(result) == "failed":  # printed by on_trial_complete, with its error
                return
            now = time.monotonic()
            if not self.verbose and now - self.last_result.get(trial.trial_id, float("-inf")) < PROGRESS_EVERY_S:
                return
            self.last_result[trial.trial_id] = now
            self._print(f"result   {self._tag(trial)} epoch={result.get('epoch')} {self._metrics(result)} "
                        f"host={result.get('host')}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            if _failed(trial):
                self.errored.add(trial.trial_id)
                self._print(f"FAILED   {self._tag(trial)}: {trial.last_result.get('error')}")
                self._progress(trials)
                return
            self.completed.add(trial.trial_id)
            final = self._metrics(trial.last_result or {})
            self._print(f"done     {self._tag(trial)} epoch={(trial.last_result or {}).get('epoch')} {final}")
            self._progress(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errored.add(trial.trial_id)
            self._print(f"ERROR    {self._tag(trial)}: {_error_summary(trial)} (see {trial.path}/error.txt)")
            self._progress(trials)

        def on_step_end(self, iteration, trials, **info):
            if time.monotonic() - self.last_progress >= PROGRESS_EVERY_S:
                self._progress(trials)

    return EventPrinter()


def _failed(trial) -> bool:
    """The trial ended itself with a failure (tune_trial's "failed" report), not lost by Ray."""
    return reported_status(trial.last_result) == "failed"


def _error_summary(trial) -> str:
    """The last line of the trial's error (the exception and its message), shortened."""
    try:
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        return "failed"
    last = ANSI_CODE.sub("", lines[-1]).strip() if lines else "failed"  # Ray colours its tracebacks
    return last if len(last) <= 300 else last[:297] + "..."


# Ray rewrites exactly "127.0.0.1" to the host's outward address (services.resolve_ip_for_localhost),
# so a local Ray that must stay on loopback takes another address of 127.0.0.0/8.
LOOPBACK_NODE_IP = "127.0.0.2"
# ray.init(address=HOST:PORT) with nothing there retries for minutes (measured on Ray 2.60: still
# retrying after 200 s), so the address is probed first.
CONNECT_WAIT_S = 10


def start_ray(address: str | None, num_cpus: int | None = None, object_store_mb: int = 512,
              temp_dir: str | None = None, quiet: bool = False) -> None:
    """Join `address`, or start a local Ray whose node address is on loopback (127.0.0.2), with the
    dashboard and usage stats off and a 512 MB object store (trials load their own data).
    Ray's gRPC servers still listen on every interface; Ray 2.60 has no option to narrow that.
    `quiet`: Ray's driver logs at WARNING and the workers' output stays in Ray's log files.
    Raises SweepError when no cluster answers at `address`."""
    import logging

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _no_colour_unless_terminal()
    if ray.is_initialized():
        return
    common: dict[str, Any] = dict(log_to_driver=not quiet, logging_level=logging.WARNING if quiet else logging.INFO)
    if address:
        _probe_address(address)
        try:
            ray.init(address=address, **common)
        except ConnectionError as error:
            raise SweepError(f"--address {address}: {error}") from None
        return
    kwargs: dict[str, Any] = dict(_node_ip_address=LOOPBACK_NODE_IP, include_dashboard=False,
                                  object_store_memory=object_store_mb * 1024 * 1024, **common)
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    ray.init(**kwargs)


def _no_colour_unless_terminal() -> None:
    """Ray colours the "(trainable pid=...)" prefix of worker lines and its "[repeated Nx across
    cluster]" summaries with ANSI codes, terminal or not. RAY_DEDUP_LOGS is read when ray is first
    imported, so this runs before that where it can (run_sweep). A user's own setting wins."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        if "ray" in sys.modules:  # the handlers exist once ray is imported; the next call (start_ray) adds it
            _strip_ansi_from_ray_logs()


ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def _strip_ansi_from_ray_logs() -> None:
    """Ray's logged trial tracebacks colour the worker's name (RayTaskError, unconditionally)."""
    import logging

    class StripAnsi(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg = ANSI_CODE.sub("", str(record.msg))
            if record.exc_info and not record.exc_text:
                record.exc_text = ANSI_CODE.sub("", logging.Formatter().formatException(record.exc_info))
            return True

    for handler in logging.getLogger("ray").handlers:
        if not any(type(f).__name__ == "StripAnsi" for f in handler.filters):
            handler.addFilter(StripAnsi())


def _probe_address(address: str) -> None:
    """Raise SweepError unless something accepts TCP connections at the cluster's address within
    CONNECT_WAIT_S. `auto` is resolved as ray.init does (RAY_ADDRESS, then the last `ray start` here)."""
    if address.startswith("ray://"):
        target = address.removeprefix("ray://").split("/")[0]
        target = target if ":" in target else f"{target}:10001"
    else:
        from ray._private.services import canonicalize_bootstrap_address

        try:
            target = canonicalize_bootstrap_address(address)
        except ConnectionError:
            raise SweepError(f"--address {address}: no running Ray cluster found (RAY_ADDRESS is unset and no "
                             "`ray start` ran on this machine); start one with `ray start --head --port=6379` "
                             "or give its HOST:PORT") from None
        except ValueError:
            raise SweepError(f"--address {address!r}: expected HOST:PORT (the head's GCS port, e.g. "
                             "10.0.0.1:6379), auto, or ray://HOST:PORT") from None
        if target is None:  # "local": ray.init starts a new local instance
            return
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise SweepError(f"--address {address!r}: expected HOST:PORT, got port {port!r}")
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise SweepError(
                    f"--address {address}: no Ray cluster answers at {host}:{port} ({error.strerror or error}; "
                    f"tried for {CONNECT_WAIT_S} s). Is the Ray head running there (`ray start --head`) and is that port "
                    "reachable from here?") from None
            time.sleep(1)


def check_cluster_fits(cpu: float, gpu: float, allow_pending: bool = False) -> None:
    """Raise SweepError when no node of the connected cluster could ever hold one trial (a trial's
    resources are one bundle on one node); Tune would otherwise leave every trial pending forever.
    `allow_pending`: an autoscaling cluster will add such nodes, so only say so."""
    import ray

    nodes = alive_nodes()
    if any(n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu for n in nodes):
        return
    shown = [f"{n.get('NodeManagerAddress', '?')}: {n['Resources'].get('CPU', 0):g} CPU, "
             f"{n['Resources'].get('GPU', 0):g} GPU" for n in nodes[:10]]
    if len(nodes) > 10:
        shown.append(f"... and {len(nodes) - 10} more")
    total = ray.cluster_resources()
    text = (f"resources: each trial needs {cpu:g} CPU and {gpu:g} GPU on one node, and no node of this cluster "
            f"has that. Nodes: {'; '.join(shown) or 'none'}. Cluster total: {total.get('CPU', 0):g} CPU, "
            f"{total.get('GPU', 0):g} GPU.")
    if allow_pending:
        print(f"{text} Waiting for the autoscaler to add a node (--allow-pending).", flush=True)
        return
    raise SweepError(f"{text} Lower `resources` in the sweep file, or pass --allow-pending on an autoscaling "
                     "cluster that will add such nodes (nothing was started)")


def run_sweep(sweep: SweepConfig, trials: list[dict], storage: str | Path, name: str | None = None,
              address: str | None = None, resume: bool = False, retry_errored: bool = False,
              source_text: str = "", ray_temp_dir: str | None = None, verbose: int = 0,
              allow_pending: bool = False, trust_experiment_dir: bool = False, tracker: str | None = None):
    """Run (or resume) a validated sweep; returns Tune's ResultGrid.

    verbose 0: mfcbench's own lines only (trial events, progress with ETA); 1 and 2: Ray Tune's
    status tables and result tables too (RunConfig.verbose), with the workers' output and Ray's
    INFO logs. Raises SweepError, before any trial starts, for everything check_before_start and
    check_cluster_fits find.
    """
    _no_colour_unless_terminal()
    from ray import tune

    from .search import ReplicatedOptunaSearch, asha_scheduler, stopped_early_marker

    experiment_dir = check_before_start(sweep, storage, name, resume, retry_errored, trust_experiment_dir, tracker)
    storage, name = experiment_dir.parent, experiment_dir.name
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
        held.enter_context(driver_lock(experiment_dir))
        # Again, now that no other driver can start or finish here: the folder may have changed since
        check_before_start(sweep, storage, name, resume, retry_errored, trust_experiment_dir, tracker)
        # On --resume, the data the experiment was started with (its recorded grid trials, if any).
        nodes, seconds = preflight(experiment_dir, data_paths(sweep, grid_trials or trials))
        print(f"preflight: {nodes} node(s) can write {experiment_dir} and see the data ({seconds:.2f} s)",
              flush=True)
        callbacks = [_event_printer(total, verbose, grid_trials)]
        if sweep.scheduler:
            callbacks.append(stopped_early_marker())
        if resume:
            # resume_errored keeps an errored trial's id, so it continues in its own run folder
            # (restart_errored would start it from scratch under a new id and folder).
            tuner = tune.Tuner.restore(str(experiment_dir), trainable=run_trainable, resume_unfinished=True,
                                       resume_errored=retry_errored, restart_errored=False)
            if tracker == "mlflow":
                callbacks.append(_mlflow_callback(experiment_dir, verbose))
            # tuner.pkl holds the first run's RunConfig, callbacks and verbosity included: this
            # run's flags (-v, --tracker) and a fresh progress count replace them.
            local = getattr(tuner, "_local_tuner", None)
            if local is not None:
                run_config = local.get_run_config()
                run_config.callbacks, run_config.verbose = callbacks, verbose
            return tuner.fit()

        experiment_dir.mkdir(parents=True, exist_ok=True)
        (experiment_dir / SWEEP_FILE).write_text(
            source_text + "\n# --- expanded by mfcbench ---\n"
            # The base as run: every default filled in and every path absolute, as are the overrides.
            + yaml.safe_dump({"resolved_base": resolved_base(sweep.base),
                              "trials": [{"variant": t["variant"], "overrides": t["overrides"]}
                                         for t in grid_trials or trials]}))
        if sweep.search is None:
            write_json_atomic(experiment_dir / GRID_TRIALS_FILE, grid_trials, indent=None)
        if tracker == "mlflow":
            callbacks.append(_mlflow_callback(experiment_dir, verbose))
        search_alg, num_samples = None, 1
        param_space: dict[str, Any] = {"cpus": sweep.resources.cpu, "experiment_dir": str(experiment_dir)}
        if sweep.search is None:
            param_space["trial_index"] = tune.grid_search(list(range(len(grid_trials))))
        else:
            search_alg = ReplicatedOptunaSearch(sweep, experiment_dir)
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
                                      # Spent on lost actors and nodes only: tune_trial ends a trial
                                      # that fails on its own (non-finite loss) as "failed", normally.
                                      failure_config=tune.FailureConfig(max_failures=sweep.retries),
                                      callbacks=callbacks, verbose=verbose))
        return tuner.fit()


def _recorded_grid_trials(experiment_dir: Path) -> list[dict]:
    """The grid trials the experiment was started with; none for an experiment from before configs
    went by index (its Tune params hold each trial's whole config)."""
    path = experiment_dir / GRID_TRIALS_FILE
    return json.loads(path.read_text()) if path.exists() else []


@contextmanager
def _tune_settings(ray_loggers: bool):
    """Tune's automatic JSON/CSV/TensorBoard loggers only when asked for: they write every result of
    every trial a second time (run folders have metrics.jsonl and tensorboard/). Strict metric
    checking off: a trial's "failed" report has no objective values (tune_trial drops non-finite ones),
    and Tune would otherwise stop the whole run on it; ASHA ignores a result without its metric.
    A user's own setting of either variable wins. Without the loggers, the ResultGrid that Tune builds
    at the end warns once per trial that it found no result.json/progress.csv (its metrics come
    from the driver's memory all the same): that warning is dropped."""
    import logging

    settings = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
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


def _mlflow_callback(experiment_dir: Path, verbose: int):
    """Ray Tune's MLflow logger into experiment_dir/mlflow.db (offline; MLflow 3 refuses new runs in
    its old ./mlruns file store, so SQLite), one MLflow run per trial, experiment named as the sweep."""
    import logging

    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    if not verbose:  # MLflow and alembic announce every schema migration at INFO
        for logger_name in ("mlflow", "alembic"):
            logging.getLogger(logger_name).setLevel(logging.WARNING)
    uri = mlflow_tracking_uri(experiment_dir)
    client = MlflowClient(uri)
    # Created here, not by the callback, so artifacts have a place inside the experiment folder
    # instead of ./mlruns under whatever folder the sweep was started from.
    if client.get_experiment_by_name(experiment_dir.name) is None:
        client.create_experiment(experiment_dir.name, artifact_location=(experiment_dir / "mlflow-artifacts").as_uri())
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment_dir.name,
                                tags={"mfcbench.experiment_dir": str(experiment_dir)})


def mlflow_tracking_uri(experiment_dir: Path) -> str:
    return f"sqlite:///{experiment_dir / MLFLOW_FILE}"
