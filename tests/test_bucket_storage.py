"""Bucket storage (s3://) against a local S3 server that the tests start (moto's server mode): the
filesystem layer (harness.storage), the checks before a sweep, and a sweep killed, resumed and
reported from the bucket as from a folder."""
import csv
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from harness.storage import Bucket, FolderUpload, local_copy
from harness.sweep.checks import SweepError, plan_sweep

from ray_helpers import BIN, kill_all, processes_of, ray_env, run, short_temp_dir, wait_until
from sweep_helpers import TINY_BASE, long_trial_base, trial_runs, write_sweep

moto_server = pytest.importorskip("moto.server", reason="moto[server] comes with the test extras")
AWS_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="module")
def s3_server():
    """A local S3 endpoint for this module; its address and credentials reach pyarrow, boto3 and every
    process started from the tests through the standard AWS_* variables."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    before = {key: os.environ.get(key) for key in AWS_KEYS}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield
    server.stop()
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(s3_server, request, tmp_path, monkeypatch):
    """A new, empty bucket for one test (named after it), and a cache of local copies of its own."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    monkeypatch.setenv("MFCBENCH_CACHE", str(tmp_path / "cache"))
    return f"s3://{name}"


def test_a_folder_goes_up_changed_files_only_with_checkpoint_and_result_last(bucket, tmp_path):
    local = tmp_path / "exp"
    run_dir = local / "trial_a" / "runs" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("there when the upload is made: counts as uploaded (just downloaded)")
    remote = Bucket(f"{bucket}/exp")
    order = []
    original = remote.upload
    remote.upload = lambda root, files: (order.extend(p.name for p in files), original(root, files))[1]
    upload = FolderUpload(remote, local, local / "trial_a", every_s=3600)
    for name in ("result.json", "checkpoint.pt", "metrics.jsonl", "checkpoint.pt.tmp"):
        (run_dir / name).write_text(name)
    assert upload() == 3 and order == ["metrics.jsonl", "checkpoint.pt", "result.json"]
    assert upload() == 0  # not every_s since the last upload, nor final
    (run_dir / "metrics.jsonl").write_text("epoch 2")
    order.clear()
    assert upload(final=True) == 1 and order == ["metrics.jsonl"]
    assert remote.read_text("trial_a/runs/seed0/metrics.jsonl") == "epoch 2"
    assert not remote.exists("trial_a/runs/seed0/checkpoint.pt.tmp")
    assert not remote.exists("trial_a/runs/seed0/config.yaml")
    (run_dir / "result.json").unlink()  # a packed trial clears a seed it trains again
    remote.write_text("trial_a/error.txt", "written by the driver: not this copy's to delete")
    assert upload(final=True) == 0 and not remote.exists("trial_a/runs/seed0/result.json")
    assert remote.exists("trial_a/runs/seed0/checkpoint.pt") and remote.exists("trial_a/error.txt")

    # downloaded elsewhere: what the bucket holds, and local files it lacks removed (except those kept)
    other = tmp_path / "other"
    (other / "trial_a" / "stale").mkdir(parents=True)
    (other / "trial_a" / "stale" / "x").write_text("x")
    (other / "keep.lock").write_text("mine")
    remote.download(other, "trial_a")
    assert sorted(p.name for p in (other / "trial_a" / "runs" / "seed0").iterdir()) == [
        "checkpoint.pt", "metrics.jsonl"]
    assert not (other / "trial_a" / "stale" / "x").exists()
    remote.download(other, recursive=False, keep=("keep.lock",))
    assert (other / "keep.lock").read_text() == "mine" and not (other / "trial_a").exists()


def test_a_missing_bucket_is_named_and_planning_writes_nothing_to_the_bucket(s3_server, tmp_path, monkeypatch):
    import boto3

    monkeypatch.setenv("MFCBENCH_CACHE", str(tmp_path / "cache"))
    path = write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]})
    with pytest.raises(SweepError, match=r"bucket 'no-such-bucket' not found.*AWS_ENDPOINT_URL"):
        plan_sweep(path, storage="s3://no-such-bucket/results")
    boto3.client("s3").create_bucket(Bucket="plans")
    plan = plan_sweep(path, storage="s3://plans/results")
    assert plan.location == "s3://plans/results/t" and not plan.resume
    assert "experiment folder (new): s3://plans/results/t" in plan.describe()
    assert boto3.client("s3").list_objects_v2(Bucket="plans").get("KeyCount") == 0
    with pytest.raises(SweepError, match=r"--resume: s3://plans/results/t holds no sweep to resume"):
        plan_sweep(path, storage="s3://plans/results", resume=True)


def _summary(report: Path) -> list[dict]:
    """summary.csv's rows without what differs between two runs of one sweep (times, paths)."""
    with open(report / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if not any(w in k for w in ("time", "duration", "path", "dir"))}
            for row in rows]


def _bucket_files(uri: str) -> dict:
    return Bucket(uri).files()


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_on_a_bucket_killed_resumed_and_reported_as_on_a_folder(bucket, tmp_path):
    """The issue's done-when: a 2-trial sweep with --storage s3://bucket, one trial killed mid-run with
    its driver (and this machine's copies thrown away, as on another node), resumed from the bucket;
    the bucket's report is the POSIX run's; a further --resume-if-exists trains nothing."""
    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = dict(ray_env(home), MFCBENCH_PERSIST_S="0", MFCBENCH_CACHE=str(tmp_path / "cache"))
    epochs = 40
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "base": long_trial_base(epochs),
                                    "grid": {"training.seed": [0, 1]}, "max_concurrent": 1}))
    posix = run([str(BIN / "mfcbench"), "sweep", str(path), "--storage", str(tmp_path / "posix"),
                 "--ray-temp-dir", temp], env, timeout=300)
    kill_all(processes_of(temp))
    assert posix.returncode == 0, posix.stdout[-3000:] + posix.stderr[-3000:]

    experiment = f"{bucket}/b"
    cmd = [str(BIN / "mfcbench"), "sweep", str(path), "--storage", bucket, "--ray-temp-dir", temp,
           "--resume-if-exists"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    remote = Bucket(experiment)
    try:
        def one_done_one_early() -> bool:
            files = remote.files() if Bucket(bucket).exists("b") else {}
            done = [f for f in files if f.endswith("/result.json")]
            partial = [f for f in files if f.endswith("/checkpoint.pt") and f.replace("checkpoint.pt", "result.json")
                       not in files]
            return bool(done and partial) and 3 <= len(
                remote.read_text(partial[0].replace("checkpoint.pt", "metrics.jsonl")).splitlines()) <= epochs // 2

        wait_until(driver, one_done_one_early, "a trial finished and another was early in its run")
    finally:
        kill_all(processes_of(temp, roots=[driver.pid]))
    finished = {f: v for f, v in remote.files().items() if f.endswith("/result.json")}
    assert len(finished) == 1
    subprocess.run(["rm", "-rf", str(tmp_path / "cache")], check=True)  # the next start is another node's

    resumed = run(cmd, env, timeout=300)
    kill_all(processes_of(temp))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 of 2 trials done (0 errored)" in resumed.stdout
    assert {f: v for f, v in remote.files().items() if f in finished} == finished, "a finished trial ran again"

    report = run([str(BIN / "mfcbench"), "report", experiment, "--out", str(tmp_path / "report-s3"),
                  "--lpips-samples", "0", "--no-probes", "--no-run-figures"], env, timeout=300)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    runs = trial_runs(local_copy(experiment, "report"))
    assert sorted(r["seed"] for r in runs) == [0, 1] and all(r["status"] == "completed" for r in runs)
    assert sum(bool(r["resumed_at_epoch"]) for r in runs) == 1, [r["resumed_at_epoch"] for r in runs]
    for r in runs:
        epochs_seen = [json.loads(line)["epoch"] for line in (r["dir"] / "metrics.jsonl").read_text().splitlines()]
        assert epochs_seen == list(range(1, epochs + 1))
    posix_report = run([str(BIN / "mfcbench"), "report", str(tmp_path / "posix" / "b"), "--out",
                        str(tmp_path / "report-posix"), "--lpips-samples", "0", "--no-probes", "--no-run-figures"],
                       env, timeout=300)
    assert posix_report.returncode == 0, posix_report.stderr[-3000:]
    table = _summary(tmp_path / "report-s3")
    assert table and all(float(row["acc_mean"]) > 0 for row in table)
    assert table == _summary(tmp_path / "report-posix")

    before = remote.files()
    again = run(cmd, env, timeout=300)
    kill_all(processes_of(temp))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "sweep finished: 2 trials, 0 errored" in again.stdout
    changed = {f for f, v in remote.files().items() if before.get(f) != v and "/runs/" in f}
    assert not changed, f"run folders changed by a launch with nothing to train: {sorted(changed)}"


def test_an_endpoint_that_never_answers_is_named_not_waited_for(monkeypatch, tmp_path):
    import socket

    from harness.storage import bucket_problem

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers a request
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    started = time.monotonic()
    try:
        problem = bucket_problem("s3://somewhere/results", timeout_s=1.0)
    finally:
        silent.close()
    assert time.monotonic() - started < 10
    assert problem.startswith("storage s3://somewhere/results: the bucket did not answer within 1 s")


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_on_a_bucket_tells_optuna_the_seed_agreement_and_resumes_on_another_host(bucket, local_ray,
                                                                                         tmp_path, monkeypatch):
    """The driver's own reads and writes on a bucket: suggestion files the trials read, run folders the
    seed agreement reads, and the Optuna journal, which a resume on a host with an empty cache finds."""
    import optuna

    from harness.agreement import suggestion_agreement
    from harness.sweep.tune.driver import run_sweep

    path = write_sweep(tmp_path / "search.yaml", max_concurrent=2, search={
        "space": {"model.n_clusters.0": {"type": "int", "low": 5, "high": 15}},
        "metrics": ["val/elbo", "val/agreement"], "modes": ["max", "max"], "num_samples": 2, "replicates": 2,
        "sampler": {"type": "random", "seed": 1}})
    plan = plan_sweep(path, storage=f"{bucket}/results")
    results = run_sweep(plan.sweep, plan.trials, plan.storage, name=plan.name, source_text=plan.source_text)
    assert len(results) == 4 and all(r.error is None for r in results)

    remote = Bucket(f"{bucket}/results/t")
    copy = tmp_path / "downloaded"
    remote.download(copy)
    assert len(list(copy.glob("trial_*/mfcbench-suggestion.json"))) == 4

    def complete_trials() -> list:
        journal = optuna.storages.journal.JournalFileBackend(str(copy / "optuna.journal"))
        study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(journal))
        return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    complete = complete_trials()
    runs = trial_runs(copy)
    assert len(complete) == 2 and len(runs) == 4
    for t in complete:
        mine = [r["dir"] for r in runs if r["config"]["model"]["n_clusters"][0] == t.params["model.n_clusters.0"]]
        assert t.values[1] == pytest.approx(suggestion_agreement(mine)["val/agreement"])

    monkeypatch.setenv("MFCBENCH_CACHE", str(tmp_path / "another-host"))
    again = plan_sweep(path, storage=f"{bucket}/results", resume_if_exists=True)
    assert again.resume
    run_sweep(again.sweep, again.trials, again.storage, name=again.name, resume=True, source_text=again.source_text)
    remote.download(copy)
    assert [t.values for t in complete_trials()] == [t.values for t in complete]
    assert len(trial_runs(copy)) == 4


@pytest.mark.ray
@pytest.mark.slow
def test_a_trial_the_scheduler_stops_uploads_what_it_evaluated_before_it_ends(bucket, tmp_path):
    """ASHA ends a trial inside its report (Ray raises SystemExit there): its folder is uploaded once
    more on the way out, so the bucket holds every evaluation the scheduler saw, however long the
    upload interval (an hour here: without that last upload only the first evaluation would be there)."""
    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = dict(ray_env(home), MFCBENCH_PERSIST_S="3600", MFCBENCH_CACHE=str(tmp_path / "cache"))
    path = write_sweep(tmp_path / "a.yaml", base={**TINY_BASE, "training": {**TINY_BASE["training"],
                                                                             "epochs_per_step": [12]}},
                       variants={"good": {}, "tiny-lr": {"training.lr": 1e-7}}, max_concurrent=1,
                       scheduler={"metric": "val/elbo", "grace_period": 2, "reduction_factor": 4})
    done = run([str(BIN / "mfcbench"), "sweep", str(path), "--storage", bucket, "--ray-temp-dir", temp], env,
               timeout=300)
    kill_all(processes_of(temp))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    remote = Bucket(f"{bucket}/t")
    markers = [f for f in remote.files() if f.endswith("mfcbench-stopped-early.json")]
    assert markers, "the scheduler stopped no trial: " + done.stdout[-2000:]
    for marker in markers:
        epoch = json.loads(remote.read_text(marker))["epoch"]
        folder = marker.rsplit("/", 1)[0]
        (metrics,) = [f for f in remote.files(folder) if f.endswith("metrics.jsonl")]
        assert len(remote.read_text(metrics).splitlines()) == epoch >= 2
