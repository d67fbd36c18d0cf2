"""One driver per experiment, on one machine or many.

Two drivers on one experiment (a second `mfcbench sweep`, or a resume while the first still runs)
would both write Ray's experiment state and the Optuna study. `mfcbench-driver.lock` in the experiment
folder is created atomically (O_EXCL) and holds {host, pid, started, lease_s}. While its driver runs,
a thread renews the lease by touching the file every lease_s / 4 seconds. A lock is stale, and taken
over, when its driver is gone: at once on the same host (no such process), and on any host once the
file has not been touched for lease_s seconds (a node that was lost, a SLURM job that was requeued).
Hosts' clocks must agree to well within the lease, as NTP keeps them. A lock written by an mfcbench
from before leases carries no lease_s: from another host it is never judged stale.
"""
from __future__ import annotations

import _thread
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from harness.layout import LOCK_FILE
from harness.sweep.errors import SweepError

LEASE_S = 120.0


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
    """The lock's holder {host, pid, started, lease_s}, or None when there is no lock."""
    try:
        text = (experiment_dir / LOCK_FILE).read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:  # a storage error: judged as an unreadable lock, never as none
        text = f"<{error}>"
    return _parse_lock(text)


def _parse_lock(text: str) -> dict:
    try:
        holder = json.loads(text)
        if isinstance(holder, dict) and isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int):
            return holder
    except json.JSONDecodeError:
        pass
    # Empty (a driver killed between creating and writing it) or garbled: stale once the file has not
    # changed for a lease, as a lock nobody renews.
    return {"host": "?", "pid": -1, "started": f"unreadable lock ({text[:80]!r})", "lease_s": LEASE_S}


def lease_left(experiment_dir: Path, holder: dict) -> float | None:
    """Seconds until the holder's lease runs out (negative once it has), or None for a lock without one."""
    lease = holder.get("lease_s")
    if not isinstance(lease, (int, float)) or isinstance(lease, bool):
        return None
    try:
        renewed = (experiment_dir / LOCK_FILE).stat().st_mtime
    except OSError:
        return None
    return renewed + lease - time.time()


def is_stale(holder: dict, experiment_dir: Path | None = None) -> bool:
    """Whether the holder is gone: a driver on this host that no longer runs, or (on any host, a reused
    pid here included) a lease not renewed in time."""
    if holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"]):
        return True
    left = lease_left(experiment_dir, holder) if experiment_dir is not None else None
    return left is not None and left < 0


def _is_mine(holder: dict | None) -> bool:
    return holder is not None and (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())


def lock_problem(experiment_dir: Path) -> str | None:
    """Why another driver holds this experiment (a lock that is not stale), or None; reads only."""
    holder = read_lock(experiment_dir)
    if holder is None or is_stale(holder, experiment_dir) or _is_mine(holder):
        return None
    path = experiment_dir / LOCK_FILE
    left = lease_left(experiment_dir, holder)
    lease = (f" Its lease runs out {left:.0f} s from now unless that driver renews it (`--resume-if-exists` "
             "waits for that)." if left is not None else "")
    return (f"{experiment_dir} is being run by another driver: host {holder['host']}, pid {holder['pid']}, "
            f"started {holder.get('started', '?')} (lock file {path}).{lease} Wait for it to finish, or, if that "
            f"driver is gone (its machine was lost or restarted), remove the stale lock: rm {path}")


def held_under_lease(experiment_dir: Path) -> bool:
    """Whether another host's driver holds the experiment under a lease that has not run out yet."""
    holder = read_lock(experiment_dir)
    return (holder is not None and holder["host"] != socket.gethostname()
            and (lease_left(experiment_dir, holder) or -1.0) >= 0)


def wait_for_lease(experiment_dir: Path, log=print, poll_s: float = 5.0) -> None:
    """Wait while another host's driver holds the experiment under a lease that nobody renews, until the
    lease runs out; return at once when there is nothing to wait for. Raises SweepError when the holder
    renews its lease meanwhile (that driver is alive) or holds a lock without a lease."""
    holder = read_lock(experiment_dir)
    if holder is None or is_stale(holder, experiment_dir) or _is_mine(holder):
        return
    left = lease_left(experiment_dir, holder)
    if holder["host"] == socket.gethostname() or left is None:
        raise SweepError(lock_problem(experiment_dir))
    path = experiment_dir / LOCK_FILE
    try:
        renewed = path.stat().st_mtime
    except FileNotFoundError:
        return  # released meanwhile
    log(f"the experiment is locked by host {holder['host']} (pid {holder['pid']}); waiting up to {left:.0f} s "
        "for its lease to run out (a live driver renews it)")
    while True:
        try:
            now = path.stat().st_mtime
        except FileNotFoundError:
            return  # released
        current = read_lock(experiment_dir)
        if current is None:
            return
        if now != renewed or current != holder:
            raise SweepError(lock_problem(experiment_dir) or f"{experiment_dir}: another driver took the lock")
        left = renewed + holder["lease_s"] - time.time()
        if left < 0:
            return
        time.sleep(min(poll_s, left + 0.05))


@contextmanager
def driver_lock(experiment_dir: Path, log=print, lease_s: float = LEASE_S):
    """Hold the experiment's lock while the block runs, renewing its lease, creating the experiment folder
    if needed; raises SweepError when another live driver holds it. On leaving (normally, on an error or
    on Ctrl-C) the lock is removed, and so are the folders this call created if nothing else was written
    into them."""
    created = []
    folder = experiment_dir
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    experiment_dir.mkdir(parents=True, exist_ok=True)
    path = experiment_dir / LOCK_FILE
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "lease_s": lease_s}
    try:
        _create(path, mine, experiment_dir, log)
    except BaseException:
        _remove_empty(created)
        raise
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(experiment_dir, mine, lease_s / 4, stop),
                               name="mfcbench-lock-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if read_lock(experiment_dir) == mine:  # never remove a lock another driver took over
            path.unlink()
        _remove_empty(created)


def _renew(experiment_dir: Path, mine: dict, every_s: float, stop: threading.Event) -> None:
    """Touch the lock every every_s seconds while it is this driver's. If another driver took it over
    (this one failed to renew for a whole lease: a hung filesystem, a suspended job), two drivers would
    write one experiment: this one is interrupted as by Ctrl-C, which Tune ends by saving its state."""
    while not stop.wait(every_s):
        try:
            holder = read_lock(experiment_dir)
            if holder is not None and (holder["host"], holder["pid"]) != (mine["host"], mine["pid"]):
                print(f"mfcbench: the lock of {experiment_dir} was taken over by host {holder['host']}, pid "
                      f"{holder['pid']}, after this driver failed to renew it; stopping this driver",
                      file=sys.stderr, flush=True)
                _thread.interrupt_main()
                return
            os.utime(experiment_dir / LOCK_FILE)
        except Exception:  # a storage hiccup: the next renewal tries again, well within the lease
            continue


def _create(path: Path, mine: dict, experiment_dir: Path, log) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # released between the two calls: try once more
            return _create(path, mine, experiment_dir, log)
        holder = _parse_lock(raw.decode(errors="replace"))
        if not is_stale(holder, experiment_dir) and not _is_mine(holder):  # mine: a reused pid, not written by us
            raise SweepError(lock_problem(experiment_dir)) from None
        # Moved aside, not deleted: of two drivers taking over at once, one rename wins, and a lock
        # created after we looked (moved by mistake) is put back.
        claimed = path.with_name(f"{path.name}.stale-{os.getpid()}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return _create(path, mine, experiment_dir, log)
        try:
            moved = claimed.read_bytes()
        except OSError:
            moved = None
        if moved != raw:
            try:
                os.link(claimed, path)
            except FileExistsError:
                pass
            claimed.unlink()
            return _create(path, mine, experiment_dir, log)
        claimed.unlink()
        dead_here = holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"])
        why = "a driver that no longer runs" if dead_here else f"a driver whose lease ({holder.get('lease_s')} s) ran out"
        log(f"taking over the stale lock of {why} (host {holder['host']}, pid {holder['pid']}, "
            f"started {holder.get('started', '?')})")
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
