"""MLflow for a sweep (`--tracker mlflow`): Ray Tune's MLflow logger, one MLflow run per Tune trial,
made to show what mfcbench knows: the trial's resolved config as params (Tune's own config holds
only an index into the grid), its variant and mfcbench's status as tags, and a trial that ended
`failed` (a non-finite objective, which Tune sees as a normal end) as FAILED."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from harness.layout import MLFLOW_ARTIFACTS, MLFLOW_FILE, TRIAL_META, trial_folder
from harness.sweep.tune.protocol import STATUS, reported_status
from harness.trial.config_io import flat

# Where SQLite's file locking cannot be trusted (SQLite's own FAQ; MLflow keeps its runs in SQLite here)
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs",
                       "fuse.s3fs", "9p")
PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call
PARAM_VALUE_CHARS = 6000  # MLflow's limit for a param's value


def mlflow_tracking_uri(experiment_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set (an MLflow server, or a database of your choosing), else SQLite in
    the experiment folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(experiment_dir) / MLFLOW_FILE}"


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding path, from /proc/mounts (None where there is none)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    path = Path(os.path.abspath(path))
    best = None
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and (best is None or len(point) > len(best[0])):
            best = (point, kind)
    return best[1] if best else None


def mlflow_callback(experiment_dir: Path, verbose: int, log=print) -> "TrialMLflowLogger":
    if not verbose:  # MLflow and alembic announce every schema migration at INFO
        for logger_name in ("mlflow", "alembic"):
            logging.getLogger(logger_name).setLevel(logging.WARNING)
    uri = mlflow_tracking_uri(experiment_dir)
    if not os.environ.get("MLFLOW_TRACKING_URI") and (kind := filesystem_type(experiment_dir)) in NETWORK_FILESYSTEMS:
        log(f"MLflow: {experiment_dir} is on {kind}, where SQLite's locking is not reliable; the driver is its "
            "only writer, but for a store that is safe there set MLFLOW_TRACKING_URI to an MLflow server "
            "(http://HOST:5000) or to a SQLite file on a local disk (sqlite:////local/path/mlflow.db)")
    client = MlflowClient(uri)
    # Created here, not by the callback, so artifacts have a place inside the experiment folder
    # instead of ./mlruns under whatever folder the sweep was started from.
    if client.get_experiment_by_name(experiment_dir.name) is None:
        client.create_experiment(experiment_dir.name, artifact_location=(experiment_dir / MLFLOW_ARTIFACTS).as_uri())
    return TrialMLflowLogger(experiment_dir, tracking_uri=uri, experiment_name=experiment_dir.name,
                             tags={"mfcbench.experiment_dir": str(experiment_dir)})


class TrialMLflowLogger(MLflowLoggerCallback):
    def __init__(self, experiment_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.experiment_dir = Path(experiment_dir)
        self._status: dict[str, str] = {}  # Tune trial id -> the last mfcbench status it reported
        self._described: set[str] = set()  # trials whose config is logged

    def log_trial_result(self, iteration: int, trial, result: dict):
        super().log_trial_result(iteration, trial, result)
        if status := reported_status(result):
            self._status[trial.trial_id] = status
        self._describe(trial)  # by the first result the worker has written what the trial trains

    def log_trial_end(self, trial, failed: bool = False):
        self._describe(trial)
        status = self._status.get(trial.trial_id, "lost" if failed else "unknown")
        client = MlflowClient(self.tracking_uri)
        client.set_tag(self._trial_runs[trial], STATUS, status)
        super().log_trial_end(trial, failed=failed or status == "failed")

    def _describe(self, trial) -> None:
        """The trial's resolved config as `config.<dotted key>` params, its variant as a tag: once."""
        if trial.trial_id in self._described or trial not in self._trial_runs:
            return
        try:
            meta = json.loads((trial_folder(self.experiment_dir, trial.trial_id) / TRIAL_META).read_text())
        except (OSError, ValueError):
            return
        self._described.add(trial.trial_id)
        params = [Param(f"config.{key}", str(value)[:PARAM_VALUE_CHARS])
                  for key, value in sorted(flat(meta.get("config", {})).items())]
        client, run_id = MlflowClient(self.tracking_uri), self._trial_runs[trial]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[start:start + PARAMS_PER_BATCH])
        client.set_tag(run_id, "mfcbench.variant", str(meta.get("variant")))
