"""Sweeps at scale: one seed per Tune trial, the "failed" result contract, report cadence, configs by
index, no Tune checkpoints or loggers by default, --retry-errored resuming in the same run folder."""
import json
import math
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from harness.trial.config import ConfigError
from harness.sweep.load import load_sweep

from ray_helpers import BIN, kill_all, processes_of, run, short_temp_dir, ray_env, start_two_node_cluster, wait_until
from sweep_helpers import long_trial_base, trial_runs, write_sweep


# -- the trainable, in this process with Tune's session replaced -------------------------------------

def _grid(tmp_path, **fields):
    sweep, trials = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0, 1]}, **fields))
    return trials


def _fake_trainer(monkeypatch, evaluations: list[dict], error: str | None = None):
    """harness.trial.single.run_trial replaced: reports the given evaluations, then fails or completes."""
    import harness.trial.single as trainer
    from harness.trial.errors import TrialFailed

    def run_trial(config, run_dir, resume=False, reporter=None, log=print, progress=False):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        for metrics in evaluations:
            reporter(metrics, Path(run_dir))
        if error:
            raise TrialFailed(error)
        return {"status": "completed", "final": evaluations[-1]}

    monkeypatch.setattr(trainer, "run_trial", run_trial)


def _evaluation(epoch: int, elbo=-100.0) -> dict:
    return {"epoch": epoch, "step": epoch * 7, "alphas": [1.0, float("nan")], "elbo": elbo, "train_loss": None,
            "acc/facet1/digit": 0.5, "kl_z/facet1": float("inf")}


def test_every_evaluation_reported_without_non_finite_values_and_the_last_as_completed(
        tmp_path, monkeypatch, tune_session):
    from harness.sweep.tune.worker import trainable

    trials = _grid(tmp_path)  # TINY_BASE: 2 epochs
    _fake_trainer(monkeypatch, [_evaluation(1), _evaluation(2)])
    trainable({"trial_index": 1, "cpus": 1, "experiment_dir": str(tmp_path / "exp")}, grid_trials=trials)
    assert [(r["epoch"], r["mfcbench_status"]) for r in tune_session] == [(1, "running"), (2, "completed")]
    for report in tune_session:
        assert report["seed"] == 1 and report["variant"] == "base" and report["node_id"] == "node-1"
        assert "train_loss" not in report and "kl_z/facet1" not in report and "alpha/facet2" not in report
        assert report["alpha/facet1"] == 1.0 and report["elbo"] == -100.0
        assert all(isinstance(v, str) or math.isfinite(v) for v in report.values())
    meta = json.loads((tmp_path / "exp" / "trial_abc_00000" / "mfcbench-trial.json").read_text())
    assert meta["trial_index"] == 1 and meta["config"]["training"]["seed"] == 1 and len(meta["starts"]) == 1
    assert (tmp_path / "exp" / "trial_abc_00000" / "runs" / "seed1").is_dir()


def test_final_cadence_reports_once(tmp_path, monkeypatch, tune_session):
    from harness.sweep.tune.worker import trainable

    trials = _grid(tmp_path)
    _fake_trainer(monkeypatch, [_evaluation(1, elbo=-120.0), _evaluation(2, elbo=-110.0)])
    trainable({"trial_index": 0, "cpus": 1, "experiment_dir": str(tmp_path / "exp")}, grid_trials=trials,
              report="final")
    assert len(tune_session) == 1
    assert tune_session[0]["mfcbench_status"] == "completed" and tune_session[0]["elbo"] == -110.0


def test_trial_failure_ends_the_trial_with_a_failed_report(tmp_path, monkeypatch, tune_session):
    from harness.sweep.tune.worker import trainable

    trials = _grid(tmp_path)
    _fake_trainer(monkeypatch, [_evaluation(1)], error="non-finite loss in epoch 2")
    trainable({"trial_index": 0, "cpus": 1, "experiment_dir": str(tmp_path / "exp")}, grid_trials=trials)
    assert [r["mfcbench_status"] for r in tune_session] == ["running", "failed"]
    assert tune_session[-1]["error"] == "non-finite loss in epoch 2"


def test_non_finite_objective_fails_the_trial(tmp_path, monkeypatch, tune_session):
    """ASHA or the searcher would get no value: the trainer stops, records it, and Tune hears "failed"."""
    from harness.sweep.tune.worker import trainable

    trials = _grid(tmp_path)
    calls = []

    def trainer_that_reports_nan(config, run_dir, resume=False, reporter=None, log=print, progress=False):
        calls.append(run_dir)
        reporter(_evaluation(1, elbo=None), Path(run_dir))  # the trainer turns NaN into None
        pytest.fail("the reporter should have stopped the trial")

    import harness.trial.single as trainer
    monkeypatch.setattr(trainer, "run_trial", trainer_that_reports_nan)
    trainable({"trial_index": 0, "cpus": 1, "experiment_dir": str(tmp_path / "exp")}, grid_trials=trials,
              required_metrics=["elbo"])
    assert len(calls) == 1
    assert [r["mfcbench_status"] for r in tune_session] == ["failed"]
    assert tune_session[0]["error"] == "elbo not finite at epoch 1"


def test_search_trial_params_carry_their_config_and_record_overrides(tmp_path, monkeypatch, tune_session):
    """The searcher's shape: the full config (seed set) in params; overrides only recorded."""
    from harness.sweep.tune.worker import trainable

    trial = _grid(tmp_path)[0]["trial"]
    trial["training"]["seed"] = 7
    trial["training"]["lr"] = 0.003
    seen = []

    def trainer(config, run_dir, resume=False, reporter=None, log=print, progress=False):
        seen.append(config)
        return {"status": "completed", "final": {"epoch": 2, "elbo": -1.0}}

    import harness.trial.single
    monkeypatch.setattr(harness.trial.single, "run_trial", trainer)
    trainable({"grid_point": {"variant": "search", "trial": trial}, "overrides": {"training.lr": 0.003},
               "cpus": 1, "experiment_dir": str(tmp_path / "exp")})
    assert seen[0].training.seed == 7 and seen[0].training.lr == 0.003
    meta = json.loads((tmp_path / "exp" / "trial_abc_00000" / "mfcbench-trial.json").read_text())
    assert meta["variant"] == "search" and meta["overrides"] == {"training.lr": 0.003}
    assert tune_session == [{"epoch": 2, "elbo": -1.0, "variant": "search", "seed": 7, "node_id": "node-1",
                             "host": tune_session[0]["host"], "pid": tune_session[0]["pid"],
                             "mfcbench_status": "completed"}]


def test_report_final_refused_with_a_scheduler(tmp_path):
    with pytest.raises(ConfigError, match="report: final cannot be combined with a scheduler"):
        load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}, report="final",
                               scheduler={"metric": "val/elbo"}))


def test_failed_trials_print_as_failed_and_count_as_errored(capsys):
    import harness.sweep.tune.progress as runner

    printer = runner.event_printer(total=2, grid_trials=[{"variant": "ok", "trial": {}},
                                                          {"variant": "bad", "trial": {}}])
    printer.setup()
    ok = SimpleNamespace(trial_id="t0", status="RUNNING", config={"trial_index": 0},
                         last_result={"epoch": 2, "mfcbench_status": "completed"})
    bad = SimpleNamespace(trial_id="t1", status="TERMINATED", config={"trial_index": 1},
                          last_result={"mfcbench_status": "failed", "error": "non-finite loss in epoch 1"})
    printer.on_trial_complete(iteration=1, trials=[ok, bad], trial=bad)
    out = capsys.readouterr().out
    assert "FAILED   t1 [bad]: non-finite loss in epoch 1\n" in out
    assert re.search(r"1 of 2 trials done \(1 errored\), 1 running, ETA \d\d:\d\d:\d\d\n$", out), out
    ok.status = "TERMINATED"
    printer.on_trial_complete(iteration=2, trials=[ok, bad], trial=ok)
    assert capsys.readouterr().out.endswith("2 of 2 trials done (1 errored), 0 running, ETA 00:00:00\n")


# -- real Ray ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_diverging_trials_under_asha_never_end_the_sweep_and_storage_stays_small(tmp_path, local_ray):
    from harness.layout import GRID_TRIALS_FILE
    from harness.sweep.tune.driver import run_sweep

    path = write_sweep(tmp_path / "grid.yaml", variants={"ok": {}, "bad": {"training.lr": 1e12}},
                       grid={"training.seed": [0, 1]},
                       # the grace period is the whole run: ASHA reads every result but stops no "ok" trial
                       scheduler={"metric": "val/elbo", "grace_period": 2})
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, tmp_path / "results")
    assert len(results) == 4 and all(r.error is None for r in results)  # no Tune error: no retries spent
    by_status = {}
    for r in results:
        by_status.setdefault(r.metrics["mfcbench_status"], []).append(r.metrics)
        assert all(v is None or isinstance(v, (str, bool)) or math.isfinite(v)
                   for v in r.metrics.values() if not isinstance(v, dict)), r.metrics
    assert len(by_status["failed"]) == 2 and all("non-finite loss" in m["error"] for m in by_status["failed"])
    assert {m["variant"] for m in by_status["failed"]} == {"bad"}
    experiment = tmp_path / "results" / "t"
    runs = trial_runs(experiment)
    assert sorted((r["variant"], r["seed"], r["status"]) for r in runs) == [
        ("bad", 0, "failed"), ("bad", 1, "failed"), ("ok", 0, "completed"), ("ok", 1, "completed")]
    # Tune's params hold an index, and Tune writes no checkpoints, result copies or loggers' files
    assert [r.config["trial_index"] for r in sorted(results, key=lambda r: r.config["trial_index"])] == [0, 1, 2, 3]
    assert len(json.loads((experiment / GRID_TRIALS_FILE).read_text())) == 4
    for trial_dir in experiment.glob("trial_*"):
        outside_run = [p for p in trial_dir.rglob("*") if p.is_file() and "runs" not in p.relative_to(trial_dir).parts]
        assert [p.name for p in outside_run] == ["mfcbench-trial.json"], outside_run
    assert not list(experiment.rglob("checkpoint_*"))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grid", "search"])
def test_retry_errored_resumes_a_lost_trial_in_its_own_run_folder(tmp_path, kind):
    """A trial's actor is killed mid-run (retries: 0, so it errors); --resume --retry-errored continues
    it under the same id, in the same run folder, from checkpoint.pt: epochs 1..N exactly once. In a
    search, the study keeps the FAIL it was told and gets the finished suggestion as a new trial."""
    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = ray_env(home)
    epochs = 40
    base = long_trial_base(epochs)
    path = tmp_path / "r.yaml"
    trials = {"grid": {"training.seed": [0]}} if kind == "grid" else {"search": {
        "space": {"training.lr": {"type": "categorical", "choices": [0.0005]}}, "num_samples": 1,
        "sampler": {"type": "random"}}}
    path.write_text(yaml.safe_dump({"name": "r", "base": base, **trials, "storage": str(tmp_path / "results")}))
    cmd = [str(BIN / "mfcbench"), "sweep", str(path), "--ray-temp-dir", temp]
    experiment = tmp_path / "results" / "r"
    try:
        driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)

        def early_in_its_run() -> Path | None:  # so it cannot finish before the kill lands
            metrics = next(experiment.glob("trial_*/runs/seed0/metrics.jsonl"), None)
            return metrics if metrics and 3 <= len(metrics.read_text().splitlines()) <= 20 else None

        metrics = wait_until(driver, early_in_its_run, "the trial was early in its run", timeout=180)
        trial_dir = metrics.parents[2]
        worker = json.loads((trial_dir / "mfcbench-trial.json").read_text())["starts"][-1]["pid"]
        kill_all({worker})
        out, _ = driver.communicate(timeout=120)
    finally:
        kill_all(processes_of(temp))
    assert driver.returncode == 0, out[-3000:]
    assert re.search(r"^\d\d:\d\d:\d\d ERROR    \w+ \[(base|search)\]", out, re.M), out[-3000:]
    assert not (metrics.parent / "result.json").exists()

    resumed = run(cmd + ["--resume", "--retry-errored"], env, timeout=300)
    try:
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        kill_all(processes_of(temp))
    assert [p.name for p in experiment.glob("trial_*")] == [trial_dir.name]  # same id, no second folder
    result = json.loads((metrics.parent / "result.json").read_text())
    assert result["status"] == "completed" and result["resumed_at_epoch"]
    logged = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert logged == list(range(1, epochs + 1))
    starts = json.loads((trial_dir / "mfcbench-trial.json").read_text())["starts"]
    assert len(starts) == 2 and starts[0]["pid"] == worker
    if kind == "search":
        import optuna

        study = optuna.load_study(study_name="r", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(experiment / "optuna.journal"))))
        assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
        assert study.trials[1].value == result["final"]["val/elbo"]


@pytest.mark.ray
@pytest.mark.slow
def test_trial_on_a_lost_node_continues_on_another_from_its_run_folder(tmp_path):
    """Two-node loopback cluster, one trial per node; every process of the worker node is killed (by
    PID) mid-trial. With retries: 1 the trial runs again on the head node, resuming its run folder:
    epochs 1..N exactly once, two starts on two nodes, and the sweep ends without errors."""
    home, head_temp, worker_temp = tmp_path / "home", short_temp_dir(), short_temp_dir()
    home.mkdir()
    env = ray_env(home)
    epochs = 40
    base = long_trial_base(epochs)
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({"name": "n", "base": base, "grid": {"training.seed": [0, 1]}, "retries": 1,
                                    "storage": str(tmp_path / "results")}))
    experiment = tmp_path / "results" / "n"
    driver = None
    try:
        # the worker's own temp dir: every process of that node (raylet, agents, trial workers) names it
        address = start_two_node_cluster(env, head_temp, worker_temp)
        driver = subprocess.Popen([str(BIN / "mfcbench"), "sweep", str(path), "--address", address], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        def early_on_the_worker() -> Path | None:
            worker_pids = processes_of(worker_temp)
            for meta in experiment.glob("trial_*/mfcbench-trial.json"):
                metrics = next(meta.parent.glob("runs/seed*/metrics.jsonl"), None)
                if (json.loads(meta.read_text())["starts"][-1]["pid"] in worker_pids and metrics is not None
                        and 3 <= len(metrics.read_text().splitlines()) <= 20):
                    return meta.parent
            return None

        on_worker = wait_until(driver, early_on_the_worker, "a trial was early in its run on the worker node", timeout=180)
        kill_all(processes_of(worker_temp))
        out, _ = driver.communicate(timeout=400)
    finally:
        kill_all(processes_of(worker_temp) | processes_of(head_temp, roots=[driver.pid] if driver else []))
    assert driver.returncode == 0, out[-3000:]
    assert re.search(r"2 of 2 trials done \(0 errored\), 0 running, ETA 00:00:00$", out, re.M), out[-3000:]
    starts = json.loads((on_worker / "mfcbench-trial.json").read_text())["starts"]
    assert len(starts) == 2 and starts[0]["node_id"] != starts[1]["node_id"], starts
    run_dir = next(on_worker.glob("runs/seed*"))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["resumed_at_epoch"], result
    logged = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, epochs + 1))


def test_reports_name_a_trial_that_ray_lost_before_it_trained_without_ray_logger_files(tmp_path):
    """No params.json (Ray's loggers are off by default): the trial's own mfcbench-trial.json names it."""
    from reports.load import load_runs

    config = _grid(tmp_path)[1]["trial"]
    trial = tmp_path / "results" / "t" / "trial_abc_00001"
    trial.mkdir(parents=True)
    (trial / "mfcbench-trial.json").write_text(json.dumps({"variant": "base", "overrides": {}, "trial_index": 1,
                                                           "config": config, "starts": []}))
    (trial / "error.txt").write_text("Traceback ...\nray.exceptions.ActorDiedError: the actor died\n")
    runs, _ = load_runs([tmp_path / "results" / "t"])
    assert runs[["variant", "seed", "status", "dataset"]].to_dict("records") == [
        {"variant": "base", "seed": 1, "status": "failed", "dataset": "digits"}]
    assert "ActorDiedError" in runs["error"].iloc[0]


@pytest.mark.parametrize("gpu_ids,expected", [([], "cpu"), ([0], "cuda")])
def test_the_trial_trains_on_the_device_ray_assigned(tmp_path, monkeypatch, tune_session, gpu_ids, expected):
    """device auto on a GPU node: CUDA only if Ray gave this trial a GPU (torch sees the node's GPUs)."""
    import ray
    import torch

    import harness.trial.single as trainer
    from harness.sweep.tune.worker import trainable

    trials = _grid(tmp_path)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: gpu_ids)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node
    devices = []

    def run_trial(config, run_dir, resume=False, reporter=None, log=print, progress=False):
        devices.append(config.training.device)
        return {"status": "completed", "final": _evaluation(2)}

    monkeypatch.setattr(trainer, "run_trial", run_trial)
    trainable({"trial_index": 0, "cpus": 1, "experiment_dir": str(tmp_path / "exp")}, grid_trials=trials)
    assert devices == [expected]
