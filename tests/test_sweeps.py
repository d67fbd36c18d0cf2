"""Sweeps: validation without Ray, and real local / two-node Ray Tune runs on loopback."""
import json
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from harness.trial.config import ConfigError
from harness.sweep.load import load_sweep

from ray_helpers import (BIN, free_port, kill_all, processes_of, run, short_temp_dir, ray_env, start_two_node_cluster,
                         wait_until)
from sweep_helpers import TINY_BASE, long_trial_base, trial_runs, write_sweep

SWEEPS = Path(__file__).parent.parent / "sweeps"
# -- validation, no Ray ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in SWEEPS.glob("*.yaml")))
def test_shipped_sweeps_validate(name):
    npz = re.search(r"npz:(\S+)", (SWEEPS / name).read_text())
    if npz and not (SWEEPS.parent / npz.group(1)).exists():
        pytest.skip(f"{name} reads {npz.group(1)}, which reports/published/parity/export_shapes.py writes")
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
                                                       "metrics": ["val/acc/facet1/digit", "val/elbo"],
                                                       "modes": ["max"]})
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert "metrics (2) and modes (1)" in str(info.value)


def test_unset_architecture_and_epochs_resolve_per_trial_not_from_the_base(tmp_path):
    """The defaults that depend on the facets and the model follow each variant, not the base's facets."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": {}, "storage": str(tmp_path / "r"), "variants": {
        "two": {}, "one": {"model.latent_dims": [10], "model.n_clusters": [10]},
        "vade": {"model.name": "vade", "model.latent_dims": [10], "model.n_clusters": [10]}}}))
    _, trials = load_sweep(path)
    got = {t["variant"]: (t["trial"]["model"]["architecture"], t["trial"]["training"]["epochs_per_step"],
                          t["trial"]["model"]["prior_init"], t["trial"]["model"]["pretrain_epochs"]) for t in trials}
    assert got == {"two": ("ladder-mlp", [455, 455], "means", 0), "one": ("shared-mlp", [910], "gmm", 455),
                   "vade": ("shared-mlp", [910], "gmm", 455)}


def test_dry_run_prints_trials_without_ray(tmp_path, capsys):
    from harness.cli import main

    path = write_sweep(tmp_path / "s.yaml", variants={"a": {}, "b": {"model.n_clusters": [5]}},
                       grid={"training.seed": [0, 1, 2]})
    assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "6 trials, 1 CPU each" in out and "model.n_clusters=[5] training.seed=2" in out
    assert f"experiment folder (new): {tmp_path / 'results' / 't'}" in out
    assert not (tmp_path / "results").exists()


def test_search_space_checked_at_every_choice_and_both_bounds(tmp_path):
    from harness.sweep.expand import search_candidates

    space = {"model.covariance": {"type": "categorical", "choices": ["diagonal", "full", "ful"]},
             "model.n_clusters.0": {"type": "int", "low": 5, "high": 5000, "step": 10},
             "model.latent_dims.0": {"type": "float", "low": 2, "high": 3.5},
             "training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path / "bad.yaml", search={"space": space}))
    text = str(info.value)
    # every edge that is invalid, at once; Optuna's grid lowers high 5000 with step 10 from 5 to 4995
    assert "search.space.model.covariance choice 3 = 'ful'" in text
    assert "search.space.model.n_clusters.0 high = 4995" in text
    assert "search.space.model.latent_dims.0 high = 3.5" in text
    assert "choice 2" not in text and "training.lr" not in text and " low = " not in text
    sweep, trials = load_sweep(write_sweep(tmp_path / "good.yaml", search={"space": {
        **space, "model.covariance": {"type": "categorical", "choices": ["diagonal", "full"]},
        "model.n_clusters.0": {"type": "int", "low": 5, "high": 40, "step": 10},
        "model.latent_dims.0": {"type": "int", "low": 2, "high": 4}}}))
    values = {key: sorted({str(overrides[key]) for _, overrides in search_candidates(sweep.search)})
              for key in sweep.search.space}
    assert values == {"model.covariance": ["diagonal", "full"], "model.n_clusters.0": ["35", "5"],
                      "model.latent_dims.0": ["2", "4"], "training.lr": ["0.0001", "0.01"]}


def test_metric_names_checked_against_what_the_trials_report(tmp_path):
    variants = {"one": {}, "two": {"model.latent_dims": [3, 2], "model.n_clusters": [10, 5],
                                   "model.hidden_sizes": [32, 32], "training.epochs_per_step": [1, 1]},
                "km": {"model.name": "kmeans"}}
    path = write_sweep(tmp_path / "s.yaml", variants=variants, grid={"training.seed": [0, 1]},
                       scheduler={"metric": "val/kl_z/facet2", "mode": "min"})
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    lines = [line for line in str(info.value).splitlines() if "scheduler.metric" in line]
    assert len(lines) == 2, lines  # once per variant, not per seed
    assert any("variant 'one'" in line and "facet 2 does not exist: model.latent_dims=[3] gives facets 1..1" in line
               for line in lines)
    assert any("variant 'km'" in line and "kmeans is a baseline" in line for line in lines)
    # what every variant reports passes
    load_sweep(write_sweep(tmp_path / "ok.yaml", variants=variants, grid={"training.seed": [0]},
                           scheduler={"metric": "val/acc/facet1/digit"}))
    with pytest.raises(ConfigError, match="dataset shapes-config1 has no factor 'digit'.*floor_hue"):
        load_sweep(write_sweep(tmp_path / "shapes.yaml", base={**TINY_BASE, "dataset": {"name": "shapes-config1"}},
                               search={"space": {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-3}},
                                       "metrics": ["val/acc/facet1/digit"]}))
    with pytest.raises(ConfigError, match="factor 'wall_hue' of shapes-config1 has a single value"):
        load_sweep(write_sweep(tmp_path / "single.yaml", base={**TINY_BASE, "dataset": {"name": "shapes-config1"}},
                               search={"space": {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-3}},
                                       "metrics": ["val/nmi/facet1/wall_hue"]}))


LR_SEARCH = {"space": {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}}


def test_objectives_on_the_test_set_are_refused_unless_the_authors_protocol_is_asked_for(tmp_path, capsys):
    from harness.cli import main

    space = {**LR_SEARCH["space"], "model.covariance": {"type": "categorical", "choices": ["diagonal", "ful"]}}
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path / "s.yaml", search={"space": space, "metrics": ["elbo"]},
                               scheduler={"metric": "acc/facet1/digit"}))
    lines = str(info.value).splitlines()[1:]
    # both test metrics, and a problem of another kind, at once
    assert "search.space.model.covariance choice 2 = 'ful'" in lines[0]
    elbo, accuracy = [line for line in lines if "is measured on the test images" in line]
    assert elbo.startswith("  search.metrics: 'elbo' is measured on the test images")
    assert accuracy.startswith("  scheduler.metric: 'acc/facet1/digit' is measured on the test images")
    for line, alternative in [(elbo, "'val/elbo'"), (accuracy, "'val/acc/facet1/digit'")]:
        assert "makes the reported test numbers optimistic" in line and f"use {alternative}" in line
        assert "dataset.validation_fraction > 0" in line and "`selection: authors-protocol`" in line
    # the paper's protocol, asked for by name: accepted, and said so
    path = write_sweep(tmp_path / "paper.yaml", selection="authors-protocol",
                       search={**LR_SEARCH, "metrics": ["elbo", "val/acc/facet1/digit"], "modes": ["max", "max"]})
    assert load_sweep(path)[0].selection == "authors-protocol"
    assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "results")]) == 0
    assert ("selection: authors-protocol, selects on the TEST set (the authors' protocol): elbo measured on the "
            "test images") in capsys.readouterr().out
    grid = write_sweep(tmp_path / "grid.yaml", selection="authors-protocol", grid={"training.seed": [0]},
                       scheduler={"metric": "acc/facet1/digit"})
    assert load_sweep(grid)[0].scheduler.metric == "acc/facet1/digit"
    # the defaults select on validation images
    path = write_sweep(tmp_path / "default.yaml", search=LR_SEARCH, scheduler={})
    sweep, _ = load_sweep(path)
    assert (sweep.selection, sweep.search.metrics, sweep.scheduler.metric) == ("validation", ["val/elbo"], "val/elbo")
    assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "results")]) == 0
    assert "selection: validation, no objective is measured on the test images" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="selection: Input should be 'validation' or 'authors-protocol'"):
        load_sweep(write_sweep(tmp_path / "typo.yaml", selection="authors", grid={"training.seed": [0]}))


def test_validation_and_agreement_objectives_need_what_they_are_computed_from(tmp_path):
    no_validation = {**TINY_BASE, "dataset": {"name": "digits", "validation_fraction": 0}}
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path / "s.yaml", base=no_validation,
                               search={**LR_SEARCH, "metrics": ["val/elbo", "val/silhouette/facet1", "train_loss"],
                                       "modes": ["max", "max", "min"]}))
    lines = str(info.value).splitlines()[1:]
    assert [line.split(":")[1].strip() for line in lines] == ["'val/elbo' is never reported by the searched trials",
                                                               "'val/silhouette/facet1' is never reported by the "
                                                               "searched trials"]
    assert all("dataset.validation_fraction is 0, so there are no validation images" in line for line in lines)
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path / "s.yaml", search={**LR_SEARCH, "metrics": ["val/agreement"]}))
    assert "search.metrics: 'val/agreement' compares the seeds of each suggestion, so it needs " \
           "search.replicates >= 2 (got 1)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0, 1]},
                               scheduler={"metric": "val/agreement/facet1"}))
    assert "scheduler.metric: 'val/agreement/facet1' cannot be a scheduler metric" in str(info.value)
    assert "ASHA ranks single trials" in str(info.value)
    with pytest.raises(ConfigError, match="'val/agreement/facet2' is never reported by the searched trials: "
                                          "facet 2 does not exist"):
        load_sweep(write_sweep(tmp_path / "s.yaml", search={**LR_SEARCH, "metrics": ["val/agreement/facet2"],
                                                            "replicates": 2}))
    # k-means keeps assignments too: its seeds' agreement is an objective; its (absent) ELBO is not
    kmeans = {**TINY_BASE, "model": {**TINY_BASE["model"], "name": "kmeans"}}
    load_sweep(write_sweep(tmp_path / "km.yaml", base=kmeans, search={
        **LR_SEARCH, "metrics": ["val/agreement", "val/nmi/facet1/digit"], "modes": ["max", "max"], "replicates": 2}))
    with pytest.raises(ConfigError, match="'val/silhouette/facet1' is never reported.*kmeans is a baseline"):
        load_sweep(write_sweep(tmp_path / "km.yaml", base=kmeans, search={
            **LR_SEARCH, "metrics": ["val/silhouette/facet1"]}))
    with pytest.raises(ConfigError, match="unknown metric 'val/train_loss'"):
        load_sweep(write_sweep(tmp_path / "s.yaml", search={**LR_SEARCH, "metrics": ["val/train_loss"]}))


def test_where_a_sweep_goes_is_checked_without_creating_anything(tmp_path):
    from harness.sweep.checks import SweepError, check_before_start

    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}))
    (tmp_path / "a-file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    assert check_before_start(sweep, tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper" / "t"
    for storage, name, expected in [
            (tmp_path, "../x", "--name '../x' is not a plain folder name"),
            (tmp_path, "..", "--name '..' is not a plain folder name"),
            (tmp_path, "a/b", "--name 'a/b' is not a plain folder name"),
            ("file:///results", None, "storage 'file:///results': give a folder as a path, not a file:// URI"),
            (tmp_path / "a-file" / "results", None, f"cannot be created: {tmp_path / 'a-file'} is a file"),
            (tmp_path / "a-file", None, f"storage {tmp_path / 'a-file'} is a file, not a folder")]:
        with pytest.raises(SweepError, match=re.escape(expected)):
            check_before_start(sweep, storage, name)
    assert sorted(tmp_path.rglob("*")) == before


def _fake_experiment(root: Path) -> Path:
    experiment = root / "results" / "t"
    (experiment / "trial_0").mkdir(parents=True)
    for name in ("tuner.pkl", "experiment_state-2026-01-01_00-00-00.json", "trial_0/error.pkl"):
        (experiment / name).write_bytes(b"not loaded")
    for path in [experiment, *experiment.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return experiment


def test_resume_refuses_state_that_others_could_write(tmp_path):
    import os

    from harness.sweep.checks import SweepError, check_before_start

    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}))
    experiment = _fake_experiment(tmp_path)
    assert check_before_start(sweep, experiment.parent, resume=True) == experiment
    for path, mode, why in [(experiment / "tuner.pkl", 0o664, "group-writable (mode -rw-rw-r--, 0o664)"),
                            (experiment / "trial_0" / "error.pkl", 0o646, "world-writable"),
                            (experiment / "trial_0", 0o777, "group and world-writable")]:
        path.chmod(mode)
        with pytest.raises(SweepError) as info:
            check_before_start(sweep, experiment.parent, resume=True)
        assert f"{path}: {why}" in str(info.value) and "--trust-experiment-dir" in str(info.value)
        assert check_before_start(sweep, experiment.parent, resume=True, trust_experiment_dir=True) == experiment
        path.chmod(0o755 if path.is_dir() else 0o644)
    if os.getuid() == 0:  # only root can give a file away
        os.chown(experiment / "tuner.pkl", 65534, 65534)
        with pytest.raises(SweepError, match=re.escape(f"{experiment / 'tuner.pkl'}: owned by ")):
            check_before_start(sweep, experiment.parent, resume=True)


def test_resume_refuses_an_edited_sweep_file_naming_each_change(tmp_path):
    from harness.layout import SWEEP_FILE, SWEEP_FILE_EXPANSION
    from harness.sweep.checks import SweepError, plan_sweep

    first = write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0, 1]}, storage=str(tmp_path / "results"),
                        description="two seeds")
    experiment = _fake_experiment(tmp_path)
    (experiment / SWEEP_FILE).write_text(first.read_text() + f"\n{SWEEP_FILE_EXPANSION}\ntrials: []\n")
    before = sorted((p, p.read_bytes()) for p in experiment.rglob("*") if p.is_file())
    assert plan_sweep(first, resume=True).resume
    # a third seed and a new learning rate would be ignored by a resume: refused, each named
    edited = yaml.safe_load(first.read_text())
    edited["grid"]["training.seed"].append(2)
    edited["base"]["training"]["lr"] = 0.01
    edited["description"] = "three seeds"  # describes, trains nothing: free to change
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    with pytest.raises(SweepError) as info:
        plan_sweep(tmp_path / "edited.yaml", resume=True)
    message = str(info.value)
    assert "grid.training.seed: [0, 1] -> [0, 1, 2]" in message
    assert "base.training.lr: (not set) -> 0.01" in message
    assert "description" not in message and f"{experiment / SWEEP_FILE}" in message
    with pytest.raises(SweepError, match=re.escape("grid.training.seed: [0, 1] -> [0, 1, 2]")):
        plan_sweep(tmp_path / "edited.yaml", resume_if_exists=True)
    assert sorted((p, p.read_bytes()) for p in experiment.rglob("*") if p.is_file()) == before
    # an experiment started through the API without its file's text: nothing to compare
    (experiment / SWEEP_FILE).write_text(f"\n{SWEEP_FILE_EXPANSION}\ntrials: []\n")
    assert plan_sweep(tmp_path / "edited.yaml", resume=True).resume


def test_resume_if_exists_starts_a_new_experiment_or_resumes_one(tmp_path):
    from harness.cli import build_parser
    from harness.sweep.checks import SweepError, plan_sweep

    path = write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}, storage=str(tmp_path / "results"))
    new = plan_sweep(path, resume_if_exists=True)
    assert not new.resume and new.experiment_dir == tmp_path / "results" / "t" and "(new)" in new.describe()
    # --retry-errored goes with it: applied only when there is something to resume
    assert not plan_sweep(path, retry_errored=True, resume_if_exists=True).resume
    _fake_experiment(tmp_path)
    assert plan_sweep(path, retry_errored=True, resume_if_exists=True).resume
    with pytest.raises(SweepError, match="--resume and --resume-if-exists: give one"):
        plan_sweep(path, resume=True, resume_if_exists=True)
    assert build_parser().parse_args(["sweep", str(path), "--resume-if-exists"]).resume_if_exists


def test_progress_lines_count_trials_and_estimate_the_rest(monkeypatch, capsys):
    from types import SimpleNamespace

    import harness.sweep.tune.progress as runner

    clock = [1000.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    printer = runner.event_printer(total=5)
    printer.setup()

    def trial(i, status):
        return SimpleNamespace(trial_id=f"t{i}", status=status, config={"grid_point": {"variant": "v"}},
                               last_result={"epoch": 2, "elbo": -142.30712890625, "alpha/facet1": 0.00019999999494757503,
                                            "alpha/facet2": 1.0, "acc/facet1/digit": 0.32591},
                               path=f"/x/t{i}", error_file=None)

    # resumed: t0 finished in an earlier run, so it counts as done but not for the rate
    trials = [trial(0, "TERMINATED"), trial(1, "RUNNING"), trial(2, "RUNNING"), trial(3, "PENDING"),
              trial(4, "PENDING")]
    clock[0] += 30
    printer.on_step_end(iteration=1, trials=trials)
    assert capsys.readouterr().out == ""  # under a minute since the start
    clock[0] += 40
    printer.on_step_end(iteration=2, trials=trials)
    assert capsys.readouterr().out.endswith("1 of 5 trials done (0 errored), 2 running, ETA unknown\n")
    clock[0] += 30  # 100 s after the start
    printer.on_trial_complete(iteration=3, trials=trials, trial=trials[1])
    out = capsys.readouterr().out
    assert "done     t1 [v] epoch=2 elbo=-142.3 facet1/digit=0.3259 alphas=0.0002,1\n" in out
    assert out.endswith("2 of 5 trials done (0 errored), 1 running, ETA 00:05:00\n")  # 3 left x 100 s
    trials[1].status, trials[2].status = "TERMINATED", "ERROR"
    clock[0] += 100
    printer.on_trial_error(iteration=4, trials=trials, trial=trials[2])
    out = capsys.readouterr().out
    assert out.endswith("3 of 5 trials done (1 errored), 0 running, ETA 00:03:20\n")  # 2 left x 200 s / 2


# -- real Ray -------------------------------------------------------------------------------------

def test_resources_no_node_has_fail_before_any_trial(tmp_path, local_ray, capsys):
    from harness.sweep.checks import SweepError
    from harness.sweep.tune.driver import run_sweep
    from harness.sweep.tune.session import check_cluster_fits

    for resources, asked in [({"cpu": 1, "gpu": 4}, "1 CPU and 4 GPU"), ({"cpu": 3}, "3 CPU and 0 GPU")]:
        sweep, trials = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]},
                                               resources=resources))
        with pytest.raises(SweepError) as info:
            run_sweep(sweep, trials, tmp_path / "results")
        text = str(info.value)
        assert f"each trial needs {asked} on one node" in text
        assert "Nodes: 127.0.0.2: 2 CPU, 0 GPU. Cluster total: 2 CPU, 0 GPU." in text and "--allow-pending" in text
        assert not (tmp_path / "results").exists()
    check_cluster_fits(1, 4, allow_pending=True)  # an autoscaler may add the node: only said
    assert "Waiting for the autoscaler" in capsys.readouterr().out


@pytest.mark.ray
def test_address_with_no_ray_there_fails_fast(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    path = write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0]}, storage=str(tmp_path / "results"))
    dead = f"127.0.0.2:{free_port()}"
    for address, env_extra in [(dead, {}), ("auto", {"RAY_ADDRESS": dead})]:
        started = time.monotonic()
        result = run([str(BIN / "mfcbench"), "sweep", str(path), "--address", address],
                     {**ray_env(home), **env_extra}, timeout=120)
        took = time.monotonic() - started
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"no Ray cluster answers at {dead}" in result.stderr and "Traceback" not in result.stderr
        assert took < 30, f"--address {address}: {took:.0f} s to fail"
    assert not (tmp_path / "results").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_output_is_plain_progress_without_ray_tables(tmp_path):
    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    path = write_sweep(tmp_path / "g.yaml", variants={"ok": {}, "bad": {"training.lr": 1e12}},
                       grid={"training.seed": [0, 1]}, storage=str(tmp_path / "results"))
    try:
        result = run([str(BIN / "mfcbench"), "sweep", str(path), "--ray-temp-dir", temp], ray_env(home), timeout=300)
    finally:
        kill_all(processes_of(temp))
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, out[-3000:] + err[-3000:]
    assert re.search(r"^\d\d:\d\d:\d\d 4 of 4 trials done \(2 errored\), 0 running, ETA 00:00:00$", out, re.M), out
    assert len(re.findall(r"trials done \(\d errored\), \d running, ETA (\d\d:\d\d:\d\d|unknown)$", out, re.M)) == 4
    assert re.search(r"^\d\d:\d\d:\d\d FAILED   \w+ \[bad\]: non-finite loss in epoch 1", out, re.M), out
    for noise in ("Configuration for experiment", "Trial status", "Traceback", "(trainable pid=", "\x1b["):
        assert noise not in out + err, f"{noise!r} printed:\n{out}\n{err}"
    ours = [line for line in out.splitlines() if re.match(r"\d\d:\d\d:\d\d (result|done) ", line)]
    assert ours
    for line in ours:  # floats at 4 significant digits, e.g. elbo=-142.3 facet1/digit=0.3259
        for number in re.findall(r"=(-?[\d.]+(?:e[-+]?\d+)?)", line):
            assert len(number.lstrip("-").replace(".", "").lstrip("0")) <= 4, line


@pytest.mark.slow
def test_mlflow_tracker_logs_every_trial(tmp_path, local_ray):
    pytest.importorskip("mlflow", reason="MLflow is not installed: pip install 'mfcbench[mlflow]'")
    from mlflow.tracking import MlflowClient

    from harness.sweep.tune.driver import run_sweep
    from harness.sweep.tune.tracking import mlflow_tracking_uri

    sweep, trials = load_sweep(write_sweep(tmp_path / "m.yaml", grid={"training.seed": [0, 1]}, variants={
        "ok": {}, "diverges": {"training.lr": 1e12, "training.epochs_per_step": [3]}}))
    results = run_sweep(sweep, trials, tmp_path / "results", tracker="mlflow")
    assert all(r.error is None for r in results)
    experiment_dir = tmp_path / "results" / "t"
    client = MlflowClient(mlflow_tracking_uri(experiment_dir))
    experiment = client.get_experiment_by_name("t")
    assert experiment.artifact_location.startswith(experiment_dir.as_uri())
    runs = client.search_runs([experiment.experiment_id])
    by_variant = {}
    for logged_run in runs:
        by_variant.setdefault(logged_run.data.tags["mfcbench.variant"], []).append(logged_run)
    assert sorted(by_variant) == ["diverges", "ok"] and all(len(v) == 2 for v in by_variant.values())
    # mfcbench's status, not Tune's: a trial whose loss was not finite ended normally for Tune
    for logged_run in by_variant["diverges"]:
        assert (logged_run.info.status, logged_run.data.tags["mfcbench_status"]) == ("FAILED", "failed")
        assert logged_run.data.params["config.training.lr"] == "1000000000000.0"
    for logged_run in by_variant["ok"]:
        assert (logged_run.info.status, logged_run.data.tags["mfcbench_status"]) == ("FINISHED", "completed")
        # the resolved trial config, every default filled in, not only Tune's trial_index
        assert logged_run.data.params["config.model.latent_dims"] == "[3]"
        assert logged_run.data.params["config.model.name"] == "mfcvae"
    assert sorted(r.data.params["config.training.seed"] for r in by_variant["ok"]) == ["0", "1"]
    ok_dirs = [run["dir"] for run in trial_runs(experiment_dir) if run["variant"] == "ok"]
    logged = sorted([m.value for m in client.get_metric_history(r.info.run_id, "elbo")] for r in by_variant["ok"])
    on_disk = sorted([json.loads(line)["elbo"] for line in (d / "metrics.jsonl").read_text().splitlines()]
                     for d in ok_dirs)
    assert [len(history) for history in logged] == [2, 2]  # one point per evaluation
    for history, written in zip(logged, on_disk):
        assert history == pytest.approx(written)


def test_mlflow_store_follows_the_environment_and_warns_on_network_filesystems(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is not installed: pip install 'mfcbench[mlflow]'")
    from harness.sweep.tune import tracking

    experiment = tmp_path / "results" / "t"
    experiment.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.mlflow_tracking_uri(experiment) == f"sqlite:///{experiment}/mlflow.db"
    assert tracking.filesystem_type(experiment) is not None  # some mount holds every path
    monkeypatch.setattr(tracking, "filesystem_type", lambda path: "nfs4")
    said = []
    tracking.mlflow_callback(experiment, verbose=0, log=said.append)
    assert len(said) == 1 and "is on nfs4, where SQLite's locking is not reliable" in said[0]
    assert "MLFLOW_TRACKING_URI" in said[0]
    local = tmp_path / "local" / "mlflow.db"
    local.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{local}")
    said.clear()
    other = tmp_path / "results" / "u"
    other.mkdir()
    callback = tracking.mlflow_callback(other, verbose=0, log=said.append)
    assert said == [] and callback.tracking_uri == f"sqlite:///{local}" and local.exists()
    assert list(other.iterdir()) == []


@pytest.mark.slow
def test_grid_sweep_with_a_failing_trial(tmp_path, local_ray):
    from harness.sweep.tune.driver import run_sweep

    path = write_sweep(tmp_path / "grid.yaml", variants={"ok": {}, "bad": {"training.lr": 1e12,
                                                                           "training.epochs_per_step": [3]}},
                       grid={"training.seed": [0, 1]})
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, tmp_path / "results", verbose=0)
    assert len(results) == 4 and all(r.error is None for r in results)  # a trial's own failure is no Tune error
    failed = [r for r in results if r.metrics["mfcbench_status"] == "failed"]
    assert len(failed) == 2 and all("non-finite" in r.metrics["error"] for r in failed)
    finished = [r for r in results if r.metrics["mfcbench_status"] == "completed"]
    assert len(finished) == 2
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

    from harness.sweep.tune.driver import run_sweep

    path = write_sweep(tmp_path / "search.yaml", max_concurrent=2, search={
        "space": {"model.latent_dims.0": {"type": "int", "low": 2, "high": 6},
                  "model.n_clusters.0": {"type": "int", "low": 5, "high": 15}},
        "metrics": ["val/elbo", "val/agreement"], "modes": ["max", "max"], "num_samples": 4, "replicates": 2,
        "sampler": {"type": "tpe", "seed": 1, "n_startup_trials": 2}})
    base = yaml.safe_load(path.read_text())
    base["base"]["training"]["epochs_per_step"] = [6]
    path.write_text(yaml.safe_dump(base))
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, tmp_path / "results", verbose=0)
    assert len(results) == 8 and all(r.error is None for r in results)  # 4 suggestions x 2 seeds, one trial each
    journal = optuna.storages.journal.JournalFileBackend(str(tmp_path / "results" / "t" / "optuna.journal"))
    study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(journal))
    assert len(study.directions) == 2
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and all(len(t.values) == 2 for t in complete)
    suggested = {(t.params["model.latent_dims.0"], t.params["model.n_clusters.0"]) for t in complete}
    runs = trial_runs(tmp_path / "results" / "t")
    assert {(r["config"]["model"]["latent_dims"][0], r["config"]["model"]["n_clusters"][0]) for r in runs} == suggested
    # replicates: every suggestion trained with seeds 0 and 1; Optuna saw the mean validation ELBO of the
    # two, and the agreement of their partitions of the validation images (from their assignments.npz)
    from harness.agreement import suggestion_agreement

    assert sorted(r["seed"] for r in runs) == [0, 0, 0, 0, 1, 1, 1, 1]
    for t in complete:
        mine = [r for r in runs if (r["config"]["model"]["latent_dims"][0], r["config"]["model"]["n_clusters"][0])
                == (t.params["model.latent_dims.0"], t.params["model.n_clusters.0"])]
        assert len(mine) == 2
        assert t.values[0] == pytest.approx(sum(r["final"]["val/elbo"] for r in mine) / 2)
        assert "val/agreement" not in mine[0]["final"]  # no trial reports it
        assert t.values[1] == pytest.approx(suggestion_agreement([r["dir"] for r in mine])["val/agreement"])
    # the report reads the study
    from reports.report import ReportOptions, build_report

    index = build_report([tmp_path / "results" / "t"], tmp_path / "report",
                         ReportOptions(lpips_samples=0, probes=False, run_figures=False), log=lambda s: None)
    text = index.read_text()
    assert "Optuna search: t" in text and "Best trials" in text
    # seeds are trials of their own, so replicates run in parallel too (max_concurrent 2)
    spans = sorted((datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in runs)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two trials overlapped in time"


@pytest.mark.ray
@pytest.mark.slow
def test_kill_driver_then_resume_finishes_each_trial_once(tmp_path):
    """As a requeued job runs it: the same command, `--resume-if-exists`, starts, resumes, then does nothing."""
    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = ray_env(home)
    base = long_trial_base(80)
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "base": base, "grid": {"training.seed": [0, 1, 2, 3]},
                                    "storage": str(tmp_path / "results")}))
    cmd = [str(BIN / "mfcbench"), "sweep", str(path), "--ray-temp-dir", temp, "--resume-if-exists"]
    experiment = tmp_path / "results" / "k"
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    finished_before: dict[str, str] = {}
    try:
        def one_done_one_early() -> bool:
            done = list(experiment.glob("trial_*/runs/seed*/result.json"))
            # early in a run (>= 60 epochs to go), so it cannot finish while the kill is under way
            partial = [p for p in experiment.glob("trial_*/runs/seed*/metrics.jsonl")
                       if not (p.parent / "result.json").exists() and 3 <= len(p.read_text().splitlines()) <= 20]
            return bool(done and partial)

        wait_until(driver, one_done_one_early, "a trial finished and another was early in its run")
    finally:
        kill_all(processes_of(temp, roots=[driver.pid]))
    finished_before = {str(p): p.read_text() for p in experiment.glob("trial_*/runs/seed*/result.json")}
    interrupted = {p.parent for p in experiment.glob("trial_*/runs/seed*/checkpoint.pt")
                   if not (p.parent / "result.json").exists()}
    assert 1 <= len(finished_before) < 4 and interrupted

    resumed = run(cmd, env, timeout=300)
    try:
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        kill_all(processes_of(temp))
    # the progress count includes the trials that finished before the kill
    assert re.search(r"4 of 4 trials done \(0 errored\), 0 running, ETA 00:00:00$", resumed.stdout, re.M), \
        resumed.stdout[-3000:]
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
    # once more, as a second requeue would: nothing left to train, every run folder untouched
    files = {p: p.stat().st_mtime_ns for p in experiment.glob("trial_*/runs/seed*/*") if p.is_file()}
    again = run(cmd, env, timeout=300)
    try:
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    finally:
        kill_all(processes_of(temp))
    assert "sweep finished: 4 trials, 0 errored" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == files


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_on_two_node_loopback_cluster(tmp_path):
    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = ray_env(home)
    try:
        address = start_two_node_cluster(env, temp)
        base = long_trial_base(30)
        path = tmp_path / "n.yaml"
        path.write_text(yaml.safe_dump({"name": "n", "base": base, "grid": {"training.seed": [0, 1]},
                                        "storage": str(tmp_path / "results")}))
        sweep = run([str(BIN / "mfcbench"), "sweep", str(path), "--address", address], env, timeout=300)
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    finally:
        kill_all(processes_of(temp))
    nodes = set()
    for meta in (tmp_path / "results" / "n").glob("trial_*/mfcbench-trial.json"):
        nodes |= {start["node_id"] for start in json.loads(meta.read_text())["starts"]}
    assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s)"


def test_demo_command_starts_then_resumes_the_demo_sweep(tmp_path, monkeypatch, capsys):
    """`mfcbench demo` (the README's first command) wired without Ray: it runs sweeps/demo.yaml into
    --storage, resumes it once Tune has state there, and reports it."""
    import harness.sweep.tune.driver as driver
    from harness.cli import main

    calls = []
    monkeypatch.setattr(driver, "run_sweep", lambda sweep, trials, storage, **kw: calls.append((sweep, storage, kw)))
    import reports.cli

    reported = []
    monkeypatch.setattr(reports.cli, "_cmd_report", lambda args: reported.append(args) or 0)
    storage = tmp_path / "results"
    for expected_resume in (False, True):
        code = main(["demo", "--storage", str(storage), "--lpips-samples", "0"])
        assert code == 0
        sweep, where, kw = calls[-1]
        assert sweep.name == "demo" and Path(where) == storage and kw["resume"] is expected_resume
        assert kw["source_text"] == (Path(__file__).parent.parent / "sweeps" / "demo.yaml").read_text()
        (storage / "demo").mkdir(parents=True, exist_ok=True)
        (storage / "demo" / "tuner.pkl").write_bytes(b"state")  # as Tune leaves it
    assert "(resuming)" in capsys.readouterr().out
    assert [Path(r.out) for r in reported] == [storage.resolve() / "demo" / "report"] * 2
