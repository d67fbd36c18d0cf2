"""Sweeps: validation without Ray, and real local / two-node Ray Tune runs on loopback."""
import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError
from harness.sweep import load_sweep

from ray_helpers import BIN, free_port, kill_all, processes_of, run, short_temp_dir, ray_env

SWEEPS = Path(__file__).parent.parent / "sweeps"
TINY_BASE = {
    "dataset": {"name": "digits"},
    "model": {"latent_dims": [3], "n_clusters": [10], "hidden_sizes": [32]},
    "training": {"epochs_per_step": [2], "batch_size": 256, "threads": 1},
}


def write_sweep(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump({"name": "t", "base": TINY_BASE, **fields}))
    return path


# -- validation, no Ray ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in SWEEPS.glob("*.yaml")))
def test_shipped_sweeps_validate(name):
    sweep, trials = load_sweep(SWEEPS / name)
    if sweep.search is None:
        assert trials and all(t["trial"] for t in trials)


def test_seed_stability_sweep_is_fig10():
    sweep, trials = load_sweep(SWEEPS / "seed-stability.yaml")
    assert len(trials) == 40
    assert {t["variant"] for t in trials} == {"ladder-progressive", "ladder-no-progressive", "shared", "vade"}
    by_variant = {t["variant"]: t["trial"] for t in trials if t["trial"]["training"]["seed"] == 3}
    assert by_variant["ladder-no-progressive"]["training"]["progressive"] is False
    assert by_variant["shared"]["model"]["architecture"] == "shared-mlp"
    assert by_variant["vade"]["model"]["name"] == "vade"


def test_bad_sweep_reports_every_problem_before_ray(tmp_path):
    path = write_sweep(tmp_path / "bad.yaml", grid={"training.seed": [0, 1], "model.covariance": ["ful"]},
                       variants={"x": {"model.latent_dims": [5, 5]}},
                       resources={"cpu": 1, "gpus": 1})
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    text = str(info.value)
    assert "resources.gpus: unknown key" in text
    path = write_sweep(tmp_path / "bad2.yaml", grid={"model.covariance": ["ful", "full"]},
                       variants={"x": {"model.latent_dims": [5, 5]}})
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    text = str(info.value)
    assert "model.covariance: Input should be 'diagonal' or 'full'" in text
    assert "latent_dims has 2 facets but n_clusters has 1" in text  # both problems at once
    path = write_sweep(tmp_path / "bad3.yaml", search={"space": {"model.latent_dims.4": {"type": "int", "low": 1,
                                                                                        "high": 3}},
                                                       "metrics": ["acc/facet1/digit", "elbo"], "modes": ["max"]})
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert "metrics (2) and modes (1)" in str(info.value)


def test_dry_run_prints_trials_without_ray(tmp_path, capsys):
    from harness.cli import main

    path = write_sweep(tmp_path / "s.yaml", variants={"a": {}, "b": {"model.n_clusters": [5]}},
                       grid={"training.seed": [0, 1, 2]})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 trials, 1 CPU each" in out and "model.n_clusters=[5] training.seed=2" in out
    assert not (tmp_path / "results").exists()


# -- real Ray -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray for the in-process sweep tests, ended with its processes afterwards."""
    import os

    import ray

    from harness.tune_runner import start_ray

    home = tmp_path_factory.mktemp("home")
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    temp = short_temp_dir()
    start_ray(None, num_cpus=2, object_store_mb=128, temp_dir=temp)
    yield
    ray.shutdown()
    kill_all(processes_of(temp))
    if old_home is not None:
        os.environ["HOME"] = old_home


def trial_runs(experiment: Path) -> list[dict]:
    rows = []
    for result in sorted(experiment.glob("trial_*/runs/seed*/result.json")):
        meta = json.loads((result.parents[2] / "mfcbench-trial.json").read_text())
        rows.append({**json.loads(result.read_text()), **meta, "dir": result.parent})
    return rows


@pytest.mark.slow
def test_grid_sweep_with_a_failing_trial(tmp_path, local_ray):
    from harness.tune_runner import run_sweep

    path = write_sweep(tmp_path / "grid.yaml", variants={"ok": {}, "bad": {"training.lr": 1e12,
                                                                           "training.epochs_per_step": [3]}},
                       grid={"training.seed": [0, 1]})
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, tmp_path / "results", verbose=0)
    assert len(results) == 4
    errored = [r for r in results if r.error is not None]
    assert len(errored) == 2 and all("non-finite" in str(r.error) for r in errored)
    finished = [r for r in results if r.error is None]
    for r in finished:
        m = r.metrics
        assert m["variant"] == "ok" and m["epoch"] == 2 and m["node_id"] and m["host"] and m["pid"]
        assert 0.0 <= m["acc/facet1/digit"] <= 1.0
    runs = trial_runs(tmp_path / "results" / "t")
    assert sorted((r["variant"], r["seed"], r["status"]) for r in runs) == [
        ("bad", 0, "failed"), ("bad", 1, "failed"), ("ok", 0, "completed"), ("ok", 1, "completed")]
    for r in runs:
        assert r["versions"]["torch"] and r["device"] == "cpu" and r["config"]["training"]["seed"] == r["seed"]
    assert (tmp_path / "results" / "t" / "mfcbench-sweep.yaml").exists()


@pytest.mark.slow
def test_optuna_search_concurrent_multi_objective(tmp_path, local_ray):
    import optuna

    from harness.tune_runner import run_sweep

    path = write_sweep(tmp_path / "search.yaml", max_concurrent=2, search={
        "space": {"model.latent_dims.0": {"type": "int", "low": 2, "high": 6},
                  "model.n_clusters.0": {"type": "int", "low": 5, "high": 15}},
        "metrics": ["elbo", "acc/facet1/digit"], "modes": ["max", "max"], "num_samples": 4, "replicates": 2,
        "sampler": {"type": "tpe", "seed": 1, "n_startup_trials": 2}})
    base = yaml.safe_load(path.read_text())
    base["base"]["training"]["epochs_per_step"] = [6]
    path.write_text(yaml.safe_dump(base))
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, tmp_path / "results", verbose=0)
    assert len(results) == 4 and all(r.error is None for r in results)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'results' / 't' / 'optuna.db'}")
    assert len(study.directions) == 2
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and all(len(t.values) == 2 for t in complete)
    suggested = {(t.params["model.latent_dims.0"], t.params["model.n_clusters.0"]) for t in complete}
    runs = trial_runs(tmp_path / "results" / "t")
    assert {(r["config"]["model"]["latent_dims"][0], r["config"]["model"]["n_clusters"][0]) for r in runs} == suggested
    # replicates: every suggestion trained with seeds 0 and 1; Optuna saw the mean of the two
    assert sorted(r["seed"] for r in runs) == [0, 0, 0, 0, 1, 1, 1, 1]
    for t in complete:
        mine = [r for r in runs if (r["config"]["model"]["latent_dims"][0], r["config"]["model"]["n_clusters"][0])
                == (t.params["model.latent_dims.0"], t.params["model.n_clusters.0"])]
        assert len(mine) == 2
        assert t.values[0] == pytest.approx(sum(r["final"]["elbo"] for r in mine) / 2)
    # the report reads the study
    from reports.report import ReportOptions, build_report

    index = build_report([tmp_path / "results" / "t"], tmp_path / "report",
                         ReportOptions(lpips_samples=0, probes=False, run_figures=False), log=lambda s: None)
    text = index.read_text()
    assert "Optuna search: t" in text and "Best trials" in text and "spearman rho" in text
    spans = sorted((datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"]))
                   for r in runs if r["seed"] == 0)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two trials overlapped in time"


@pytest.mark.slow
def test_kill_driver_then_resume_finishes_each_trial_once(tmp_path):
    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = ray_env(home)
    base = {**TINY_BASE, "model": {**TINY_BASE["model"], "hidden_sizes": [256]},
            "training": {**TINY_BASE["training"], "epochs_per_step": [80], "batch_size": 64}}
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "base": base, "grid": {"training.seed": [0, 1, 2, 3]},
                                    "storage": str(tmp_path / "results")}))
    cmd = [str(BIN / "mfcbench"), "sweep", str(path), "--ray-temp-dir", temp]
    experiment = tmp_path / "results" / "k"
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    finished_before: dict[str, str] = {}
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            done = [p for p in experiment.glob("trial_*/runs/seed*/result.json")]
            # early in a run (>= 60 epochs to go), so it cannot finish while the kill is under way
            partial = [p for p in experiment.glob("trial_*/runs/seed*/metrics.jsonl")
                       if not (p.parent / "result.json").exists() and 3 <= len(p.read_text().splitlines()) <= 20]
            if done and partial:
                break
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished in time")
    finally:
        kill_all(processes_of(temp, roots=[driver.pid]))
    finished_before = {str(p): p.read_text() for p in experiment.glob("trial_*/runs/seed*/result.json")}
    interrupted = {p.parent for p in experiment.glob("trial_*/runs/seed*/checkpoint.pt")
                   if not (p.parent / "result.json").exists()}
    assert 1 <= len(finished_before) < 4 and interrupted

    resumed = run(cmd + ["--resume"], env, timeout=300)
    try:
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        kill_all(processes_of(temp))
    runs = trial_runs(experiment)
    assert sorted(r["seed"] for r in runs) == [0, 1, 2, 3] and all(r["status"] == "completed" for r in runs)
    for p, text in finished_before.items():
        assert Path(p).read_text() == text, f"{p} was run again"
    state = {str(r["dir"]): (r["seed"], r["resumed_at_epoch"]) for r in runs}
    for run_dir in interrupted:
        assert state[str(run_dir)][1], f"{run_dir} started again instead of resuming; all runs: {state}"
    for r in runs:
        epochs = [json.loads(line)["epoch"] for line in (r["dir"] / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 81)), f"seed {r['seed']}: evaluations {epochs}"


@pytest.mark.slow
def test_sweep_on_two_node_loopback_cluster(tmp_path):
    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = ray_env(home)
    port = free_port()
    address = f"127.0.0.2:{port}"
    common = ["--node-ip-address=127.0.0.2", "--num-cpus=1", "--disable-usage-stats"]
    try:
        token = run([str(BIN / "ray"), "get-auth-token", "--generate"], env, timeout=60)
        assert token.returncode == 0, token.stderr[-2000:]
        head = run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
                    f"--temp-dir={temp}", "--object-store-memory=100000000"] + common, env, timeout=120)
        assert head.returncode == 0, head.stderr[-2000:]
        worker = run([str(BIN / "ray"), "start", f"--address={address}", "--object-store-memory=100000000"]
                     + common, env, timeout=120)
        assert worker.returncode == 0, worker.stderr[-2000:]
        base = {**TINY_BASE, "model": {**TINY_BASE["model"], "hidden_sizes": [256]},
                "training": {**TINY_BASE["training"], "epochs_per_step": [30], "batch_size": 64}}
        path = tmp_path / "n.yaml"
        path.write_text(yaml.safe_dump({"name": "n", "base": base, "grid": {"training.seed": [0, 1]},
                                        "storage": str(tmp_path / "results")}))
        sweep = run([str(BIN / "mfcbench"), "sweep", str(path), "--address", address], env, timeout=300)
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    finally:
        kill_all(processes_of(temp))
    nodes = set()
    for result in (tmp_path / "results" / "n").glob("trial_*/result.json"):
        nodes |= {json.loads(line)["node_id"] for line in result.read_text().splitlines() if line.strip()}
    assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s)"
