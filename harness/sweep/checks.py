"""Checks of a sweep that need no Ray, shared by `mfcbench sweep` and `--dry-run`: the sweep file
(harness.sweep.load.load_sweep), then where it would run (storage, name, resume state, another driver's
lock, tracker); and the driver lock itself (driver_lock)."""
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import socket
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.layout import LOCK_FILE
from harness.paths import folder_problem
from harness.sweep.describe import describe
from harness.sweep.load import load_sweep
from harness.sweep.overrides import REMOTE_STORAGE
from harness.sweep.spec import SweepConfig, experiment_name_problem


class SweepError(RuntimeError):
    """A sweep cannot start or go on; the message names what is wrong. Nothing on disk was changed."""


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
    experiment_dir: Path
    resume: bool
    source_text: str

    def describe(self) -> str:
        action = "resume" if self.resume else "new"
        return f"{describe(self.sweep, self.trials)}\nexperiment folder ({action}): {self.experiment_dir}"


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
               tracker: str | None = None) -> SweepPlan:
    """Every check of a sweep that needs no Ray: the file (harness.sweep.load.load_sweep), then where it would
    run (check_before_start). Raises ConfigError or SweepError; creates and changes nothing."""
    sweep, trials = load_sweep(file)
    experiment_dir = check_before_start(sweep, storage or sweep.storage, name, resume, retry_errored,
                                        trust_experiment_dir, tracker)
    return SweepPlan(sweep, trials, experiment_dir, resume, Path(file).read_text())


def check_before_start(sweep: SweepConfig, storage: str | Path, name: str | None = None, resume: bool = False,
                       retry_errored: bool = False, trust_experiment_dir: bool = False,
                       tracker: str | None = None) -> Path:
    """The experiment folder `storage/name`, after checking everything about it that needs no Ray.

    Raises SweepError listing every problem; creates nothing (a storage folder that does not exist yet
    is judged by its nearest existing ancestor).
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
    if REMOTE_STORAGE.match(storage_text):
        problems.append(f"storage {storage_text!r}: remote storage URIs (s3://, gs://, ...) are not supported yet; "
                        "use a local folder or a shared filesystem every node mounts (e.g. NFS)")
        raise SweepError("\n".join(problems))
    storage_dir = Path(os.path.abspath(Path(storage_text).expanduser()))
    storage_problem = folder_problem(storage_dir, "storage")
    if storage_problem:
        problems.append(storage_problem)
    if name_problem or storage_problem:
        raise SweepError("\n".join(problems))
    experiment_dir = storage_dir / name
    held_by_another_driver = lock_problem(experiment_dir)
    if held_by_another_driver:
        raise SweepError(held_by_another_driver)
    if resume:
        if not experiment_dir.is_dir():
            problems.append(f"--resume: there is no experiment folder {experiment_dir}; check --storage and --name")
        elif not (experiment_dir / "tuner.pkl").is_file():
            problems.append(f"--resume: {experiment_dir} holds no sweep to resume (no tuner.pkl from Ray Tune); "
                            "run it without --resume to start one there, or check --storage and --name")
        elif not trust_experiment_dir:
            untrusted = untrusted_state(experiment_dir)
            if untrusted:
                problems.append(
                    f"--resume un-pickles Ray's experiment state in {experiment_dir}, which runs code as you, and "
                    "someone else could have written it:\n" + "\n".join(f"  {line}" for line in untrusted)
                    + "\nmake these yours and not group/world-writable (chmod -R go-w), or pass "
                      "--trust-experiment-dir if you trust everyone who can write there")
    # A folder holding only a lock is a new sweep whose driver died before writing anything.
    elif experiment_dir.exists() and (not experiment_dir.is_dir()
                                      or any(p.name != LOCK_FILE for p in experiment_dir.iterdir())):
        problems.append(f"{experiment_dir} already holds a sweep; pass --resume to finish it, or --name/--storage "
                        "for a new one (nothing was changed)")
    if problems:
        raise SweepError("\n".join(problems))
    return experiment_dir


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


# -- one driver per experiment -------------------------------------------------------------------
# Two drivers on one experiment (a second `mfcbench sweep`, or a --resume while the first still runs)
# would both write Ray's experiment state and the Optuna study. `mfcbench-driver.lock` in the
# experiment folder is created atomically (O_EXCL) and holds {host, pid, started}. A lock left by a
# driver that died on this host (same host, no such process) is stale and taken over; one from another
# host cannot be checked from here, so the message says how to remove it.


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    # A killed driver whose parent has not reaped it yet (a zombie) still answers signal 0.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc here: signal 0 is all we know
        return True
    return state != "Z"


def read_lock(experiment_dir: Path) -> dict | None:
    """The lock's holder {host, pid, started}, or None when there is no lock."""
    try:
        text = (experiment_dir / LOCK_FILE).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        holder = json.loads(text)
        if isinstance(holder, dict) and isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int):
            return holder
    except json.JSONDecodeError:
        pass
    return {"host": "?", "pid": -1, "started": f"unreadable lock ({text[:80]!r})"}


def is_stale(holder: dict) -> bool:
    """Whether the holder is a driver on this host that no longer runs."""
    return holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"])


def lock_problem(experiment_dir: Path) -> str | None:
    """Why another driver holds this experiment (a lock that is not stale), or None; reads only."""
    holder = read_lock(experiment_dir)
    if holder is None or is_stale(holder) or (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid()):
        return None  # none, stale, or this process's own
    path = experiment_dir / LOCK_FILE
    return (f"{experiment_dir} is being run by another driver: host {holder['host']}, pid {holder['pid']}, "
            f"started {holder.get('started', '?')} (lock file {path}). Wait for it to finish, or, if that driver "
            f"is gone (its machine was lost or restarted), remove the stale lock: rm {path}")


@contextmanager
def driver_lock(experiment_dir: Path, log=print):
    """Hold the experiment's lock while the block runs, creating the experiment folder if needed; raises
    SweepError when another live driver holds it. On leaving (normally, on an error or on Ctrl-C) the lock
    is removed, and so are the folders this call created if nothing else was written into them."""
    created = []
    folder = experiment_dir
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    experiment_dir.mkdir(parents=True, exist_ok=True)
    path = experiment_dir / LOCK_FILE
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    try:
        _create(path, mine, experiment_dir, log)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield
    finally:
        if read_lock(experiment_dir) == mine:  # never remove a lock another driver took over
            path.unlink()
        _remove_empty(created)


def _create(path: Path, mine: dict, experiment_dir: Path, log) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        holder = read_lock(experiment_dir)
        if holder is None:  # released between the two calls: try once more
            return _create(path, mine, experiment_dir, log)
        if not is_stale(holder):
            raise SweepError(lock_problem(experiment_dir)) from None
        # Moved aside, not deleted: of two drivers taking over at once, one rename wins, and a lock
        # created after we looked (moved by mistake) is put back.
        claimed = path.with_name(f"{path.name}.stale-{os.getpid()}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return _create(path, mine, experiment_dir, log)
        try:
            moved = json.loads(claimed.read_text())
        except (OSError, ValueError):
            moved = None
        if moved != holder:
            try:
                os.link(claimed, path)
            except FileExistsError:
                pass
            claimed.unlink()
            return _create(path, mine, experiment_dir, log)
        claimed.unlink()
        log(f"taking over the stale lock of a driver that no longer runs (host {holder['host']}, pid "
            f"{holder['pid']}, started {holder.get('started', '?')})")
        return _create(path, mine, experiment_dir, log)
    with os.fdopen(fd, "w") as f:
        json.dump(mine, f)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the given folders (deepest first) that are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
