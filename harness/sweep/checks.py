"""Checks of a sweep that need no Ray, shared by `mfcbench sweep` and `--dry-run`: the sweep file
(harness.sweep.load.load_sweep), then where it would run (storage, name, resume state, another driver's
lock, tracker; on a resume, what the sweep file changed since the experiment started). The lock itself
is harness.sweep.lock."""
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from harness.layout import (GRID_TRIALS_FILE, LOCK_FILE, MLFLOW_ARTIFACTS, MLFLOW_FILE, SWEEP_FILE,
                            SWEEP_FILE_EXPANSION)
from harness.paths import folder_problem
from harness.storage import Bucket, bucket_problem, is_bucket, join, local_copy
from harness.sweep.describe import describe
from harness.sweep.errors import SweepError
from harness.sweep.load import load_sweep
from harness.sweep.lock import held_under_lease, lock_problem
from harness.sweep.overrides import REMOTE_STORAGE, absolute_path
from harness.sweep.spec import SweepConfig, experiment_name_problem
from harness.trial.config_io import flat


# Files Ray un-pickles on --resume: tuner.pkl, searcher-state-*.pkl, callback-states-*.pkl,
# basic-variant-state-*.json (a cloudpickle despite its name), experiment_state-*.json (embeds
# cloudpickle blobs) and each trial's error.pkl; untrusted_state also checks the folders holding them.
PICKLED_STATE = ("*.pkl", "experiment_state-*.json", "basic-variant-state-*.json")
TRACKERS = ("mlflow",)


@dataclass
class SweepPlan:
    """A sweep file and where it would run, every check passed; what `sweep` and `sweep --dry-run` share."""

    sweep: SweepConfig
    trials: list[dict]
    experiment_dir: Path  # on a bucket: the driver's node-local copy of its top-level files
    resume: bool
    source_text: str
    storage: str  # a folder (absolute) or a bucket URI
    name: str

    @property
    def location(self) -> str:
        """Where the experiment is: its folder, or its URI on a bucket."""
        return join(self.storage, self.name) if is_bucket(self.storage) else str(self.experiment_dir)

    def describe(self) -> str:
        action = "resume" if self.resume else "new"
        return f"{describe(self.sweep, self.trials)}\nexperiment folder ({action}): {self.location}"


# On bucket storage, what stays in the driver's local copy and is never uploaded: its lock (a bucket
# offers no atomic create-if-absent) and the MLflow store (SQLite wants a local disk; for a history
# across hosts point MLFLOW_TRACKING_URI at a tracking server).
LOCAL_ONLY = (LOCK_FILE, MLFLOW_FILE, MLFLOW_ARTIFACTS)
# What the driver writes into a new experiment folder before Tune's first state (tuner.pkl).
BEFORE_TUNE = (LOCK_FILE, SWEEP_FILE, GRID_TRIALS_FILE, MLFLOW_FILE, MLFLOW_ARTIFACTS)


def address_problem(address: str | None) -> str | None:
    """Ray Client (`ray://`) would run this driver here and the trials on the cluster: its storage
    checks, its lock and its reads of run folders would act on this machine's disk, and the
    environment it sets would not reach the Tuner. Refused, naming the launches that work."""
    if address and address.startswith("ray://"):
        return (f"--address {address}: Ray Client (ray://) is not supported, because the driver checks storage, "
                "holds its lock and reads run folders on the machine it runs on. Run the driver on the cluster: "
                "`ray job submit --address http://HEAD:8265 --working-dir . -- mfcbench sweep FILE --address auto`, "
                "or `mfcbench sweep FILE --address HEAD:6379` on a node that mounts the storage")
    return None


def plan_sweep(file: str | Path, storage: str | None = None, name: str | None = None, resume: bool = False,
               retry_errored: bool = False, trust_experiment_dir: bool = False,
               tracker: str | None = None, resume_if_exists: bool = False) -> SweepPlan:
    """Every check of a sweep that needs no Ray: the file (harness.sweep.load.load_sweep), then where it would
    run (check_before_start). With resume_if_exists the plan resumes when the experiment holds Ray Tune's
    state and starts it otherwise (what a requeued job needs). Raises ConfigError or SweepError; creates and
    changes nothing."""
    if resume and resume_if_exists:
        raise SweepError("--resume and --resume-if-exists: give one (--resume-if-exists resumes a sweep that "
                         "exists and starts one otherwise)")
    sweep, trials = load_sweep(file)
    storage = storage or sweep.storage
    source_text = Path(file).read_text()
    name = sweep.name if name is None else name
    if resume_if_exists:
        resume = tune_state_at(storage, name)
        retry_errored = retry_errored and resume
    experiment_dir = check_before_start(sweep, storage, name, resume, retry_errored, trust_experiment_dir, tracker,
                                        source_text=source_text, wait_for_lease=resume_if_exists)
    storage = storage if is_bucket(storage) else str(experiment_dir.parent)
    return SweepPlan(sweep, trials, experiment_dir, resume, source_text, storage, name)


def tune_state_at(storage: str | Path, name: str) -> bool:
    """Whether `storage/name` (a folder or a bucket) holds an experiment Ray Tune can resume."""
    if is_bucket(storage):
        if bucket_problem(join(storage, name)) is not None:  # check_before_start names it
            return False
        try:
            return Bucket(join(storage, name)).exists("tuner.pkl")
        except (OSError, ValueError):
            return False
    return has_tune_state(Path(absolute_path(str(storage))) / name)


def has_tune_state(experiment_dir: Path | None) -> bool:
    """Whether Ray Tune started an experiment there (its tuner.pkl), i.e. whether it can be resumed."""
    return experiment_dir is not None and (experiment_dir / "tuner.pkl").is_file()


def check_before_start(sweep: SweepConfig, storage: str | Path, name: str | None = None, resume: bool = False,
                       retry_errored: bool = False, trust_experiment_dir: bool = False,
                       tracker: str | None = None, source_text: str | None = None,
                       wait_for_lease: bool = False) -> Path:
    """The experiment folder `storage/name`, after checking everything about it that needs no Ray.

    On a resume, `source_text` (the sweep file given now) is compared with the file the experiment
    started from, and every change that would be ignored is refused. With wait_for_lease, a lock that
    another host holds under a lease is left to the driver, which waits for the lease to run out.
    Raises SweepError listing every problem; creates nothing (a storage folder that does not exist yet
    is judged by its nearest existing ancestor). On a bucket the experiment folder returned is the
    driver's node-local copy of its top-level files (bucket_copy), downloaded afresh.
    """
    problems = []
    if retry_errored and not resume:
        problems.append("--retry-errored applies only with --resume (it re-runs the errored trials of an "
                        "interrupted sweep)")
    if tracker is not None and tracker not in TRACKERS:
        problems.append(f"--tracker {tracker!r}: unknown; choose one of {', '.join(TRACKERS)}")
    elif tracker == "mlflow" and importlib.util.find_spec("mlflow") is None:
        problems.append("--tracker mlflow needs MLflow installed: pip install 'mfcbench[mlflow]' (mlflow-skinny)")
    name = sweep.name if name is None else name
    name_problem = experiment_name_problem(name)
    if name_problem:
        problems.append(f"--name {name_problem}")
    storage_text = str(storage)
    if is_bucket(storage_text):
        storage_dir, storage_problem = bucket_copy(storage_text, name, download=not name_problem)
    elif REMOTE_STORAGE.match(storage_text):  # file://
        storage_dir, storage_problem = None, (f"storage {storage_text!r}: give a folder as a path, not a file:// URI")
    else:
        storage_dir = Path(absolute_path(storage_text))
        storage_problem = folder_problem(storage_dir, "storage")
    if storage_problem:
        problems.append(storage_problem)
    if name_problem or storage_problem:
        raise SweepError("\n".join(problems))
    experiment_dir = storage_dir / name
    shown = join(storage_text, name) if is_bucket(storage_text) else experiment_dir  # in messages
    held_by_another_driver = lock_problem(experiment_dir)
    if held_by_another_driver and not (wait_for_lease and held_under_lease(experiment_dir)):
        raise SweepError(held_by_another_driver)
    if resume:
        if not experiment_dir.is_dir():
            problems.append(f"--resume: there is no experiment folder {shown}; check --storage and --name")
        elif not has_tune_state(experiment_dir):
            problems.append(f"--resume: {shown} holds no sweep to resume (no tuner.pkl from Ray Tune); "
                            "run it without --resume to start one there, or check --storage and --name")
        elif not trust_experiment_dir:
            untrusted = untrusted_state(experiment_dir)
            if untrusted:
                problems.append(
                    f"--resume un-pickles Ray's experiment state in {experiment_dir}, which runs code as you, and "
                    "someone else could have written it:\n" + "\n".join(f"  {line}" for line in untrusted)
                    + "\nmake these yours and not group/world-writable (chmod -R go-w), or pass "
                      "--trust-experiment-dir if you trust everyone who can write there")
        if has_tune_state(experiment_dir) and source_text is not None and (
                changes := sweep_file_changes(experiment_dir, source_text)):
            problems.append(
                f"--resume: the sweep file differs from the one {shown} started with "
                f"({join(shown, SWEEP_FILE)}); a resume runs the recorded trials only, so these changes "
                "would be ignored:\n" + "\n".join(f"  {line}" for line in changes)
                + "\nundo them to resume, or run the edited file under a new --name (nothing was changed)")
    # A folder holding only what a driver writes before Tune starts is a new sweep whose driver died
    # before training anything: started again, its files are written anew.
    elif experiment_dir.exists() and (not experiment_dir.is_dir()
                                      or any(p.name not in BEFORE_TUNE for p in experiment_dir.iterdir())):
        problems.append(f"{shown} already holds a sweep; pass --resume to finish it, or --name/--storage "
                        "for a new one (nothing was changed)")
    if problems:
        raise SweepError("\n".join(problems))
    return experiment_dir


def bucket_copy(storage: str, name: str, download: bool = True) -> tuple[Path, str | None]:
    """(the driver's node-local stand-in for the bucket storage, a problem or None). The experiment's
    top-level files (mfcbench's and Ray Tune's) are downloaded into it, so the checks below read them
    as in a folder; the driver's lock stays local (a bucket has no atomic create-if-absent through
    pyarrow: one driver per experiment at a time is the launcher's to keep, as a RayJob or a SLURM job does)."""
    uri = join(storage, name)
    local = local_copy(uri, "driver")
    problem = bucket_problem(uri)
    # Not while another driver on this host runs the experiment from this copy (its lock is refused below).
    if problem is None and download and lock_problem(local) is None:
        try:
            local.mkdir(parents=True, exist_ok=True)
            Bucket(uri).download(local, recursive=False, keep=LOCAL_ONLY)
        except OSError as error:
            problem = f"storage {storage}: {error}"
    return local.parent, problem


def untrusted_state(experiment_dir: Path) -> list[str]:
    """'path: why' for each file Ray would un-pickle on resume, or folder holding one, that is group- or
    world-writable or owned by another user."""
    paths = [experiment_dir]
    for pattern in PICKLED_STATE:
        paths += sorted(experiment_dir.glob(pattern))
    for trial_dir in sorted(p for p in experiment_dir.glob("trial_*") if p.is_dir()):
        paths.append(trial_dir)
        paths += sorted(trial_dir.rglob("*.pkl"))
    me = os.getuid()
    lines = []
    for path in paths:
        info = path.stat()
        why = []
        if info.st_mode & 0o022:
            who = " and ".join(w for w, bit in (("group", 0o020), ("world", 0o002)) if info.st_mode & bit)
            why.append(f"{who}-writable (mode {stat.filemode(info.st_mode)}, {oct(info.st_mode & 0o7777)})")
        if info.st_uid != me:
            why.append(f"owned by {_user_name(info.st_uid)}, not by you ({_user_name(me)})")
        if why:
            lines.append(f"{path}: {'; '.join(why)}")
    return lines


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# Keys a resume may change: they describe or locate the experiment and train nothing.
RESUME_FREE_KEYS = ("description", "name", "storage")


def sweep_file_changes(experiment_dir: Path, source_text: str) -> list[str]:
    """'key: recorded -> now' for each top-level setting of the sweep file (nested keys spelled with dots)
    that differs from the file the experiment started with; none when that file is not recorded (an
    experiment from before mfcbench recorded it) or cannot be read."""
    import yaml

    try:
        recorded_text = (experiment_dir / SWEEP_FILE).read_text().split(SWEEP_FILE_EXPANSION)[0]
        if not recorded_text.strip():  # started through the API without its file's text
            return []
        recorded, now = yaml.safe_load(recorded_text) or {}, yaml.safe_load(source_text) or {}
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(recorded, dict) or not isinstance(now, dict):
        return []
    for key in RESUME_FREE_KEYS:
        recorded.pop(key, None)
        now.pop(key, None)
    missing = object()
    old, new = flat(recorded), flat(now)
    return [f"{key}: {_show(old.get(key, missing), missing)} -> {_show(new.get(key, missing), missing)}"
            for key in sorted(old.keys() | new.keys()) if old.get(key, missing) != new.get(key, missing)]


def _show(value, missing) -> str:
    return "(not set)" if value is missing else json.dumps(value)
