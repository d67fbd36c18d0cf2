"""Starting and ending Ray processes that a test owns, by PID (never `ray stop` or pkill)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

BIN = Path(sys.executable).parent


def short_temp_dir() -> str:
    """Ray's socket paths must stay under ~107 characters: pytest's tmp_path is too deep."""
    return tempfile.mkdtemp(prefix="mfcr-", dir="/tmp")


def ray_env(home: Path) -> dict:
    env = dict(os.environ, HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    return env


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def processes_of(marker: str, roots: list[int] = ()) -> set[int]:
    """PIDs whose command line mentions `marker` (Ray's temp dir), the given roots, and all descendants."""
    found = set(roots)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.add(int(entry))
            except OSError:
                continue
    tree, stack = _children(), list(found)
    while stack:
        for child in tree.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(cmd: list[str], env: dict, timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True, **kw)


def start_two_node_cluster(env: dict, head_temp: str, worker_temp: str | None = None) -> str:
    """A head and a worker node on 127.0.0.2, one CPU each, with the token authentication Ray 2.60
    turns on (the token goes to env's HOME); returns the head's address. The caller ends their
    processes by PID: processes_of(head_temp) (and of worker_temp, the worker's own, when given)."""
    address = f"127.0.0.2:{free_port()}"
    common = ["--node-ip-address=127.0.0.2", "--num-cpus=1", "--disable-usage-stats", "--object-store-memory=100000000"]
    ray = str(BIN / "ray")
    for step in ([ray, "get-auth-token", "--generate"],
                 [ray, "start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
                  f"--temp-dir={head_temp}"] + common,
                 [ray, "start", f"--address={address}"] + ([f"--temp-dir={worker_temp}"] if worker_temp else [])
                 + common):
        result = run(step, env, timeout=120)
        assert result.returncode == 0, f"{' '.join(step[1:3])}: {result.stderr[-2000:]}"
    return address


def journal_study(path):
    """The Optuna study of a search as written to `path`/optuna.journal, read back by a fresh storage."""
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path / "optuna.journal")))
    return optuna.load_study(study_name="t", storage=storage)


def wait_until(job: subprocess.Popen, ready: Callable[[], Any], what: str, timeout: float = 240) -> Any:
    """Call `ready` every 0.2 s until it returns something truthy, and return that; fail the test if
    `job` ends first (quoting the end of its output when piped) or after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = ready()
        if value:
            return value
        if job.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{job.stdout.read()[-3000:] if job.stdout else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting until {what}")
