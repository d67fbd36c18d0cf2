"""What a cluster does that the local tests used not to see: trials run in their own working directory,
nodes have GPUs a trial did not ask for, a second driver can start, and a node can lack the storage or
the data. Unit tests without Ray, then real runs on local Ray bound to loopback."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.trial.config import ConfigError
from harness.sweep.load import load_sweep
from harness.layout import LOCK_FILE
from harness.sweep.checks import SweepError, check_before_start
from harness.sweep.lock import driver_lock, wait_for_lease
from harness.trial.device import DeviceError, trial_device

from ray_helpers import kill_all, processes_of, short_temp_dir

TINY_TRAINING = {"epochs_per_step": [2], "batch_size": 64, "threads": 1}
TINY_MODEL = {"latent_dims": [3], "n_clusters": [10], "hidden_sizes": [32]}


def write_tiny_npz(path: Path) -> Path:
    """200 random 8x8 images with a 10-valued factor `digit`: digits-sized, made in milliseconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((200, 8, 8), dtype=np.float32), y_digit=np.arange(200) % 10)
    return path


def write_sweep(path: Path, **fields) -> Path:
    base = {"dataset": {"name": "digits"}, "model": TINY_MODEL, "training": TINY_TRAINING}
    path.write_text(yaml.safe_dump({"name": "t", "base": base, **fields}))
    return path


def dead_pid(reaped: bool = True) -> int:
    """The pid of a process that has exited; not reaped: a zombie, as a driver killed by its parent is."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    if reaped:
        child.wait()
    else:
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
    return child.pid


def write_lock(experiment: Path, host: str, pid: int, lease_s: float | None = None, renewed_ago: float = 0) -> str:
    """A lock as a driver writes it; with lease_s, last renewed `renewed_ago` seconds ago."""
    experiment.mkdir(parents=True, exist_ok=True)
    holder = {"host": host, "pid": pid, "started": "2026-11-26 01:00:00 +0000"}
    text = json.dumps(holder if lease_s is None else {**holder, "lease_s": lease_s})
    (experiment / LOCK_FILE).write_text(text)
    renewed = time.time() - renewed_ago
    os.utime(experiment / LOCK_FILE, (renewed, renewed))
    return text


# -- relative paths, no Ray -----------------------------------------------------------------------

def test_every_path_in_a_sweep_is_made_absolute_against_the_launch_directory(tmp_path, monkeypatch, capsys):
    launch = tmp_path / "launch"
    for name in ("base", "variant", "grid", "choice"):
        write_tiny_npz(launch / "data" / f"{name}.npz")
    (launch / "roots" / "a").mkdir(parents=True)
    monkeypatch.chdir(launch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    grid_sweep = write_sweep(tmp_path / "grid.yaml", storage="results",
                             base={"dataset": {"name": "npz:data/base.npz", "data_root": "~/mnist"},
                                   "model": TINY_MODEL, "training": TINY_TRAINING},
                             variants={"own-npz": {"dataset.name": "npz:./data/variant.npz"},
                                       "section": {"dataset": {"name": "npz:data/grid.npz", "data_root": "roots/a"}}},
                             grid={"dataset.data_root": ["roots/a", "/already/absolute"]})
    sweep, trials = load_sweep(grid_sweep)
    assert sweep.storage == str(launch / "results")
    assert sweep.base["dataset"] == {"name": f"npz:{launch}/data/base.npz", "data_root": f"{tmp_path}/home/mnist"}
    assert sweep.variants["own-npz"] == {"dataset.name": f"npz:{launch}/data/variant.npz"}
    datasets = sorted((t["trial"]["dataset"]["name"], t["trial"]["dataset"]["data_root"]) for t in trials)
    assert datasets == sorted((f"npz:{launch}/data/{npz}.npz", root) for npz in ("variant", "grid")
                              for root in (f"{launch}/roots/a", "/already/absolute"))
    # --dry-run prints the absolute paths: each data file once, and the experiment folder
    from harness.cli import main

    assert main(["sweep", str(grid_sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for npz in ("variant", "grid"):
        assert f"data: npz {launch}/data/{npz}.npz\n" in out
    assert f"experiment folder (new): {launch}/results/t" in out and "data/base.npz" not in out

    search_sweep = write_sweep(tmp_path / "search.yaml", search={"space": {
        "dataset.name": {"type": "categorical", "choices": ["digits", "npz:data/choice.npz"]}}})
    sweep, _ = load_sweep(search_sweep)
    assert sweep.search.space["dataset.name"].choices == ["digits", f"npz:{launch}/data/choice.npz"]


def test_a_preset_base_gets_an_absolute_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "base": "paper-mnist", "grid": {"training.seed": [0]}}))
    sweep, trials = load_sweep(path)
    assert sweep.base["dataset"]["data_root"] == str(tmp_path / "data")  # the preset says `data`
    assert trials[0]["trial"]["dataset"]["data_root"] == str(tmp_path / "data")


# -- GPU choice, no Ray ---------------------------------------------------------------------------

@pytest.mark.parametrize("requested, gpu_ids, cuda_available, expected", [
    ("auto", [], True, "cpu"),       # a gpu: 0 trial on a GPU node: torch sees GPUs, Ray gave none
    ("auto", [0], True, "cuda"),
    ("auto", ["1"], True, "cuda"),   # Ray may give ids as strings; it makes only that GPU visible
    ("auto", [0], False, "cpu"),
    ("cpu", [0], True, "cpu"),
    ("cuda", [0], True, "cuda"),
])
def test_trial_device_follows_the_gpus_ray_assigned(requested, gpu_ids, cuda_available, expected):
    assert trial_device(requested, gpu_ids, cuda_available) == expected


def test_trial_device_refuses_cuda_without_a_ray_gpu_and_any_fixed_index():
    with pytest.raises(DeviceError, match=r"training.device='cuda' but Ray assigned this trial no GPU.*resources.gpu"):
        trial_device("cuda", [], True)
    with pytest.raises(DeviceError, match=r"training.device='cuda:1' is not allowed in a sweep.*cuda or auto"):
        trial_device("cuda:1", [1], True)


def test_sweep_with_a_cuda_index_is_refused_naming_where(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", variants={"cpu": {}, "pinned": {"training.device": "cuda:1"}},
                       grid={"training.seed": [0, 1]})
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    lines = [line for line in str(info.value).splitlines() if "training.device" in line]
    assert lines == ["  training.device: 'cuda:1' in variant 'pinned' is not allowed in a sweep: Ray assigns each "
                     "trial its GPU (resources.gpu); use cuda or auto (or cpu)"]  # once, not once per seed
    load_sweep(write_sweep(tmp_path / "ok.yaml", grid={"training.device": ["auto", "cuda", "cpu"]},
                           resources={"cpu": 1, "gpu": 0.5}))
    with pytest.raises(ConfigError, match="'cuda' in variant 'base training.device=cuda' needs resources.gpu > 0"):
        load_sweep(write_sweep(tmp_path / "no-gpu.yaml", grid={"training.device": ["auto", "cuda"]}))


# -- the driver lock, no Ray ----------------------------------------------------------------------

def test_a_live_driver_lock_is_refused_naming_its_holder(tmp_path):
    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}))
    experiment = tmp_path / "results" / "t"
    (experiment).mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"not loaded")
    for host, pid in [(socket.gethostname(), os.getppid()),  # a live process here: the test's parent
                      ("gpu-node-7", dead_pid())]:           # another host: its pid cannot be checked here
        text = write_lock(experiment, host, pid)
        before = sorted((p, p.read_bytes()) for p in experiment.iterdir())
        for attempt in (lambda: check_before_start(sweep, tmp_path / "results", resume=True),
                        lambda: check_before_start(sweep, tmp_path / "results"),
                        lambda: driver_lock(experiment).__enter__()):
            with pytest.raises(SweepError) as info:
                attempt()
            message = str(info.value)
            assert f"being run by another driver: host {host}, pid {pid}, started 2026-11-26 01:00:00" in message
            assert f"remove the stale lock: rm {experiment / LOCK_FILE}" in message
        assert sorted((p, p.read_bytes()) for p in experiment.iterdir()) == before
        assert (experiment / LOCK_FILE).read_text() == text


@pytest.mark.parametrize("reaped", [True, False], ids=["exited", "zombie"])
def test_a_stale_lock_is_taken_over_and_every_lock_is_released(tmp_path, reaped):
    experiment = tmp_path / "results" / "t"
    pid = dead_pid(reaped)
    write_lock(experiment, socket.gethostname(), pid)
    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}))
    # a new sweep whose driver died before writing anything: not "already holds a sweep"
    assert check_before_start(sweep, tmp_path / "results") == experiment
    said = []
    with driver_lock(experiment, log=said.append):
        holder = json.loads((experiment / LOCK_FILE).read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
        (experiment / "tuner.pkl").write_bytes(b"state")
    assert said == [f"taking over the stale lock of a driver that no longer runs (host {socket.gethostname()}, "
                    f"pid {pid}, started 2026-11-26 01:00:00 +0000)"]
    assert sorted(p.name for p in experiment.iterdir()) == ["tuner.pkl"]
    # released on Ctrl-C too; the folders it created, still empty, go with it
    fresh = tmp_path / "new-storage" / "x"
    with pytest.raises(KeyboardInterrupt):
        with driver_lock(fresh):
            assert (fresh / LOCK_FILE).exists()
            raise KeyboardInterrupt
    assert not (tmp_path / "new-storage").exists()


def test_a_lease_not_renewed_in_time_frees_the_experiment_on_any_host(tmp_path):
    """A requeued SLURM job or a retried RayJob starts its driver on another node than the lost one."""
    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}))
    experiment = tmp_path / "results" / "t"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"not loaded")
    # renewed 10 s ago, 60 s lease: held, and the message says when it frees itself
    write_lock(experiment, "gpu-node-7", 4242, lease_s=60, renewed_ago=10)
    with pytest.raises(SweepError, match=r"Its lease runs out (4\d|50) s from now .*remove the stale lock"):
        check_before_start(sweep, tmp_path / "results", resume=True)
    with pytest.raises(SweepError, match="being run by another driver: host gpu-node-7, pid 4242"):
        driver_lock(experiment).__enter__()
    # a requeued driver leaves it to the lock, which waits for the lease
    assert check_before_start(sweep, tmp_path / "results", resume=True, wait_for_lease=True) == experiment
    # not renewed for longer than its lease: taken over from here
    write_lock(experiment, "gpu-node-7", 4242, lease_s=60, renewed_ago=61)
    assert check_before_start(sweep, tmp_path / "results", resume=True) == experiment
    said = []
    with driver_lock(experiment, log=said.append, lease_s=0.4):
        holder = json.loads((experiment / LOCK_FILE).read_text())
        assert (holder["host"], holder["lease_s"]) == (socket.gethostname(), 0.4)
        created = (experiment / LOCK_FILE).stat().st_mtime
        deadline = time.time() + 60  # the lease is renewed (touched) while the driver runs
        while (experiment / LOCK_FILE).stat().st_mtime == created and time.time() < deadline:
            time.sleep(0.05)
        assert (experiment / LOCK_FILE).stat().st_mtime > created
    assert said == ["taking over the stale lock of a driver whose lease (60 s) ran out (host gpu-node-7, pid 4242, "
                    "started 2026-11-26 01:00:00 +0000)"]
    assert sorted(p.name for p in experiment.iterdir()) == ["tuner.pkl"]


def test_waiting_for_a_lease_ends_when_it_runs_out_or_refuses_when_it_is_renewed(tmp_path):
    import threading

    experiment = tmp_path / "results" / "t"
    write_lock(experiment, "gpu-node-7", 4242, lease_s=1.0)
    said, started = [], time.time()
    wait_for_lease(experiment, log=said.append, poll_s=0.1)
    assert 0.9 < time.time() - started < 30 and said[0].startswith("the experiment is locked by host gpu-node-7")
    with driver_lock(experiment, log=said.append):
        pass
    # a driver that renews its lease meanwhile is alive: refused, its lock untouched
    text = write_lock(experiment, "gpu-node-7", 4242, lease_s=3.0)
    renewer = threading.Timer(0.3, lambda: os.utime(experiment / LOCK_FILE))
    renewer.start()
    with pytest.raises(SweepError, match="being run by another driver: host gpu-node-7"):
        wait_for_lease(experiment, log=said.append, poll_s=0.1)
    renewer.join()
    assert (experiment / LOCK_FILE).read_text() == text
    # a lock from before leases cannot be waited for: refused at once
    write_lock(experiment, "gpu-node-7", 4242)
    with pytest.raises(SweepError, match="remove the stale lock"):
        wait_for_lease(experiment, log=said.append, poll_s=0.1)


def test_an_empty_or_garbled_lock_frees_the_experiment_after_a_lease(tmp_path):
    """A driver killed between creating its lock and writing it leaves an empty file: a requeue must
    not be blocked by it for ever."""
    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}))
    experiment = tmp_path / "results" / "t"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"not loaded")
    for content in (b"", b"\xff\xfe{garbled"):
        (experiment / LOCK_FILE).write_bytes(content)
        with pytest.raises(SweepError, match="unreadable lock"):
            check_before_start(sweep, tmp_path / "results", resume=True)
        old = time.time() - 200
        os.utime(experiment / LOCK_FILE, (old, old))
        assert check_before_start(sweep, tmp_path / "results", resume=True) == experiment
        said = []
        with driver_lock(experiment, log=said.append):
            assert json.loads((experiment / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert said and "lease (120.0 s) ran out" in said[0]


def test_a_driver_whose_lock_was_taken_over_stops(tmp_path, request):
    """A driver that could not renew for a whole lease (a hung filesystem) and wakes to find another
    driver holding its experiment stops, as on Ctrl-C, and leaves the other's lock alone."""
    import signal

    experiment = tmp_path / "results" / "t"
    # Python's own Ctrl-C handler, whatever an earlier test in this process (Ray, Tune) left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(KeyboardInterrupt):
        with driver_lock(experiment, log=lambda s: None, lease_s=0.4):
            theirs = write_lock(experiment, "gpu-node-7", 4242, lease_s=120)
            deadline = time.time() + 60  # the renewal thread notices within 0.1 s on an idle machine
            while time.time() < deadline:
                time.sleep(0.05)
    assert (experiment / LOCK_FILE).read_text() == theirs


def test_a_folder_a_driver_left_before_tune_started_is_started_again(tmp_path):
    from harness.layout import GRID_TRIALS_FILE, SWEEP_FILE

    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}))
    experiment = tmp_path / "results" / "t"
    write_lock(experiment, socket.gethostname(), dead_pid())
    (experiment / SWEEP_FILE).write_text("name: t\n")
    (experiment / GRID_TRIALS_FILE).write_text("[]")
    assert check_before_start(sweep, tmp_path / "results") == experiment
    (experiment / "trial_0").mkdir()  # Tune started: a sweep is there
    with pytest.raises(SweepError, match="already holds a sweep"):
        check_before_start(sweep, tmp_path / "results")


# -- real Ray -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_with_a_relative_npz_path_runs_from_another_directory(tmp_path, local_ray, monkeypatch, capsys):
    from harness.layout import SWEEP_FILE
    from harness.sweep.tune.driver import run_sweep

    launch = tmp_path / "launch"
    write_tiny_npz(launch / "data" / "tiny.npz")
    monkeypatch.chdir(launch)
    (tmp_path / "sweeps").mkdir()
    path = write_sweep(tmp_path / "sweeps" / "npz.yaml", storage="results", grid={"training.seed": [0, 1]},
                       base={"dataset": {"name": "npz:data/tiny.npz"}, "model": TINY_MODEL,
                             "training": TINY_TRAINING})
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, sweep.storage, source_text=path.read_text())
    assert len(results) == 2 and all(r.error is None for r in results), [r.error for r in results]
    experiment = launch / "results" / "t"
    npz = f"npz:{launch}/data/tiny.npz"
    for config in experiment.glob("trial_*/runs/seed*/config.yaml"):
        assert yaml.safe_load(config.read_text())["dataset"]["name"] == npz
    assert len(list(experiment.glob("trial_*/runs/seed*/result.json"))) == 2
    recorded = yaml.safe_load((experiment / SWEEP_FILE).read_text())
    assert recorded["resolved_base"]["dataset"]["name"] == npz
    assert re.search(rf"preflight: 1 node\(s\) can write {re.escape(str(experiment))} and see the data "
                     r"\(\d+\.\d\d s\)", capsys.readouterr().out)
    assert not (experiment / LOCK_FILE).exists()


@pytest.mark.slow
def test_preflight_names_the_node_and_path_that_fail(tmp_path, local_ray, monkeypatch):
    from harness.sweep.tune.preflight import preflight
    from harness.sweep.tune.driver import run_sweep

    npz = write_tiny_npz(tmp_path / "data" / "tiny.npz")
    path = write_sweep(tmp_path / "s.yaml", storage=str(tmp_path / "results"), grid={"training.seed": [0]},
                       base={"dataset": {"name": f"npz:{npz}"}, "model": TINY_MODEL, "training": TINY_TRAINING})
    sweep, trials = load_sweep(path)
    npz.unlink()  # gone between the check of the sweep file and the run
    with pytest.raises(SweepError) as info:
        run_sweep(sweep, trials, sweep.storage)
    message = str(info.value)
    assert f"node 127.0.0.2 ({socket.gethostname()}): npz {npz}: not found here" in message
    assert "no trial was started" in message
    assert not (tmp_path / "results").exists()  # the lock and the folders it created are gone

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SweepError, match=re.escape(f"node 127.0.0.2 ({socket.gethostname()}): experiment folder "
                                                   f"{tmp_path / 'a-file'}: not writable here (Not a directory)")):
        preflight(tmp_path / "a-file", [])
    assert preflight(tmp_path, [("npz", str(path))])[0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "data", "s.yaml"]  # the probe was removed


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_cluster_preflights_every_node_and_runs_relative_paths(tmp_path):
    from ray_helpers import BIN, ray_env, run, start_two_node_cluster

    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = ray_env(home)
    launch = tmp_path / "launch"
    write_tiny_npz(launch / "data" / "tiny.npz")
    path = write_sweep(tmp_path / "n.yaml", storage="results", grid={"training.seed": [0, 1]},
                       base={"dataset": {"name": "npz:data/tiny.npz"}, "model": TINY_MODEL, "training": TINY_TRAINING})
    try:
        address = start_two_node_cluster(env, temp)
        sweep = run([str(BIN / "mfcbench"), "sweep", str(path), "--address", address], env, timeout=300, cwd=launch)
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    finally:
        kill_all(processes_of(temp))
    experiment = launch / "results" / "t"
    assert re.search(rf"preflight: 2 node\(s\) can write {re.escape(str(experiment))} and see the data", sweep.stdout)
    assert len(list(experiment.glob("trial_*/runs/seed*/result.json"))) == 2
    assert not (experiment / LOCK_FILE).exists()
