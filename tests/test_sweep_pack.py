"""Sweeps with `pack: S` (issue 12): grid points that differ only in training.seed, and the replicates of
an Optuna suggestion, train as packed trials of up to S seeds (harness.trial.packed), each seed in the
`trial_<id>/runs/seed<s>` folder an unpacked trial of it would have. The grouping (a pure function),
the dry run, validation, what a packed trial reports and how it starts again (no Ray), the searcher
with packed replicates (no Ray), and one tiny packed sweep through local Ray read by the report as
the same sweep unpacked is."""
import json
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from harness.trial.config import ConfigError, TrialConfig
from harness.sweep.expand import balanced_chunks, pack_grid, replicate_groups, trials_per_suggestion
from harness.sweep.load import load_sweep
from ray_helpers import journal_study
from sweep_helpers import LR_SPACE, TINY_BASE, suggested, write_sweep


def grid(tmp_path, **fields):
    return load_sweep(write_sweep(tmp_path / "g.yaml", **fields))


def seeds_of(trial: dict) -> list[int]:
    training = trial["trial"]["training"]
    return training["seeds"] if "seeds" in training else [training["seed"]]


# -- grouping: a pure function --------------------------------------------------------------------

@pytest.mark.parametrize("n, size, lengths", [(10, 4, [4, 3, 3]), (9, 4, [3, 3, 3]), (5, 4, [3, 2]), (8, 4, [4, 4]),
                                              (3, 10, [3]), (4, 1, [1, 1, 1, 1]), (1, 3, [1]), (0, 3, [])])
def test_balanced_chunks(n, size, lengths):
    chunks = balanced_chunks(list(range(n)), size)
    assert [len(c) for c in chunks] == lengths
    assert [x for c in chunks for x in c] == list(range(n))  # in order, each once
    assert replicate_groups(n, size) == chunks


def test_seeds_of_each_variant_pack_together_and_each_seed_trains_what_its_unpacked_trial_would(tmp_path):
    sweep, trials = grid(tmp_path, variants={"a": {}, "b": {"training.lr": 0.01}},
                         grid={"training.seed": list(range(10))}, pack=4)
    packing = pack_grid(trials, 4)
    assert [(t["variant"], seeds_of(t)) for t in packing.trials] == [
        ("a", [0, 1, 2, 3]), ("a", [4, 5, 6]), ("a", [7, 8, 9]),
        ("b", [0, 1, 2, 3]), ("b", [4, 5, 6]), ("b", [7, 8, 9])]
    assert packing.packed == 6 and packing.notes == []
    assert sorted(i for m in packing.members for i in m) == list(range(20))  # every grid point once
    for t, members in zip(packing.trials, packing.members):
        assert "seed" not in t["trial"]["training"]
        assert t["overrides"] == {**{k: v for k, v in trials[members[0]]["overrides"].items() if k != "training.seed"},
                                  "training.seeds": seeds_of(t)}
        config = TrialConfig.model_validate(t["trial"])
        for seed, i in zip(config.training.seeds, members):  # each seed: exactly its grid point's config
            assert config.for_seed(seed).model_dump(mode="json") == trials[i]["trial"]
    # pack 1 is today's sweep, untouched; a pack as large as the seeds makes one trial per variant
    assert pack_grid(trials, 1).trials == trials and pack_grid(trials, 1).packed == 0
    assert [seeds_of(t) for t in pack_grid(trials, 10).trials] == [list(range(10))] * 2
    assert [seeds_of(t) for t in pack_grid(trials, 99).trials] == [list(range(10))] * 2


def test_another_grid_axis_splits_the_groups_and_the_grid_order_is_kept(tmp_path):
    # the grid varies the seed slowest: seed 0 at both rates, then seed 1, ...
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": TINY_BASE, "pack": 2,
                                    "grid": {"training.seed": [0, 1, 2], "training.lr": [0.001, 0.01]}},
                                   sort_keys=False))
    _, trials = load_sweep(path)
    assert [(t["overrides"]["training.lr"], t["overrides"]["training.seed"]) for t in trials][:3] == [
        (0.001, 0), (0.01, 0), (0.001, 1)]
    packing = pack_grid(trials, 2)
    assert [(t["variant"], seeds_of(t)) for t in packing.trials] == [
        ("base training.lr=0.001", [0, 1]), ("base training.lr=0.01", [0, 1]),
        ("base training.lr=0.001", [2]), ("base training.lr=0.01", [2])]
    assert [t["trial"]["training"]["lr"] for t in packing.trials] == [0.001, 0.01, 0.001, 0.01]
    assert packing.trials[2] is trials[4] and packing.notes == []  # a pack of one seed: the grid point itself


def test_baselines_and_grid_points_without_a_seed_to_share_are_not_packed(tmp_path):
    _, trials = grid(tmp_path, variants={"vae": {}, "km": {"model.name": "kmeans"}, "gmm": {"model.name": "gmm"},
                                         "vade": {"model.name": "vade"}},
                     grid={"training.seed": [0, 1, 2]}, pack=3)
    packing = pack_grid(trials, 3)
    assert [(t["variant"], seeds_of(t)) for t in packing.trials] == [
        ("vae", [0, 1, 2]), ("km", [0]), ("km", [1]), ("km", [2]), ("gmm", [0]), ("gmm", [1]), ("gmm", [2]),
        ("vade", [0, 1, 2])]
    assert packing.notes == ["not packed: km: kmeans is a baseline, fitted in one go: one trial per seed",
                             "not packed: gmm: gmm is a baseline, fitted in one go: one trial per seed"]
    # no seed axis: every variant is one trial of the base's seed
    _, trials = grid(tmp_path, variants={"x": {}, "y": {"model.n_clusters": [5]}}, pack=4)
    packing = pack_grid(trials, 4)
    assert packing.trials == trials
    assert packing.notes == ["not packed: x: no training.seed in the grid: one seed, nothing to pack",
                             "not packed: y: no training.seed in the grid: one seed, nothing to pack"]
    _, trials = grid(tmp_path, grid={"training.seed": [7]}, pack=4)
    assert pack_grid(trials, 4).notes == ["not packed: base: one seed only (training.seed=7)"]
    _, trials = grid(tmp_path, grid={"training.seed": [0, 1, 0]}, pack=4)
    packing = pack_grid(trials, 4)
    assert packing.trials == trials
    assert packing.notes == ["not packed: base: a seed repeats (0): each seed trains once per pack"]


# -- validation and the dry run, no Ray -----------------------------------------------------------

@pytest.mark.parametrize("pack", [0, -2, 2.5, True, "4", None, [2]])
def test_a_bad_pack_is_refused_with_what_is_allowed_and_nothing_changes(tmp_path, capsys, pack):
    from harness.cli import main

    path = write_sweep(tmp_path / "s.yaml", grid={"training.seed": [0, 1]}, pack=pack)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert f"invalid sweep file {path}:\n  pack: must be a whole number >= 1: the most seeds one trial trains " \
           "packed" in str(info.value)
    assert "1 (the default) trains one seed per trial" in str(info.value)
    assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "results")]) == 2
    assert "pack: must be a whole number >= 1" in capsys.readouterr().err
    assert path.read_bytes() == before and not (tmp_path / "results").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_dry_run_shows_the_packs(tmp_path, capsys):
    from harness.cli import main

    path = write_sweep(tmp_path / "s.yaml", variants={"a": {}, "km": {"model.name": "kmeans"}},
                       grid={"training.seed": [0, 1, 2, 3, 4]}, pack=3, resources={"cpu": 2})
    assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == ("7 trials from 10 grid points, pack 3: 2 trial(s) train up to 3 seeds packed in one process; "
                      "2 CPU each (per trial, packed or not)")
    assert out[2].split() == ["0", "a", "training.seeds=[0,", "1,", "2]", "(3", "seeds", "packed)"]
    assert out[3].split() == ["1", "a", "training.seeds=[3,", "4]", "(2", "seeds", "packed)"]
    assert out[4].split() == ["2", "km", "model.name=kmeans", "training.seed=0"]
    assert "not packed: km: kmeans is a baseline, fitted in one go: one trial per seed" in out
    assert not (tmp_path / "results").exists()
    # without a seed axis: said, not refused
    write_sweep(path, variants={"a": {}}, pack=3)
    assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "1 trials from 1 grid points, pack 3: 0 trial(s)" in out
    assert "not packed: a: no training.seed in the grid: one seed, nothing to pack" in out


def test_dry_run_shows_how_a_search_packs_its_replicates(tmp_path, capsys):
    from harness.cli import main

    def dry_run(**fields) -> str:
        path = write_sweep(tmp_path / "s.yaml", **fields)
        assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "results")]) == 0
        return capsys.readouterr().out

    search = {"space": LR_SPACE, "replicates": 3, "sampler": {"n_startup_trials": 2}}
    out = dry_run(search=search, pack=4)
    assert "packing: the 3 seeds of each suggestion train in 1 trial(s) of 3 seeds packed (pack 4)" in out
    assert ("concurrency: at most 2 trials at once, 2 suggestion(s) x 3 seed(s) in 1 packed trial(s) "
            "(default: search.sampler.n_startup_trials x trials per suggestion)") in out
    out = dry_run(search={**search, "replicates": 5}, pack=2)
    assert "train in 3 trial(s) of 2, 2, 1 seeds packed (pack 2)" in out
    assert "at most 6 trials at once, 2 suggestion(s) x 5 seed(s) in 3 packed trial(s)" in out
    out = dry_run(search={**search, "replicates": 1}, pack=2)
    assert "not packed: search.replicates is 1, so each suggestion trains one seed (pack 2 unused)" in out
    kmeans = {**TINY_BASE, "model": {**TINY_BASE["model"], "name": "kmeans"}}
    out = dry_run(base=kmeans, search={**search, "metrics": ["val/agreement"]}, pack=3)
    assert "not packed: the search can suggest a baseline" in out
    assert "at most 6 trials at once, 2 suggestion(s) x 3 seed(s) (default: search.sampler.n_startup_trials x " \
           "replicates)" in out


# -- a packed trial's reports and restarts, no Ray ------------------------------------------------

class Killed(BaseException):
    """What a killed worker looks like to the trainer: nothing of it runs on (not an Exception)."""


def tiny_pack(seeds: list[int], **training) -> TrialConfig:
    data = json.loads(json.dumps(TINY_BASE))
    data["training"].update({"epochs_per_step": [3], "seeds": seeds, **training})
    return TrialConfig.model_validate(data)


IDENTITY = {"variant": "v", "seeds": "0,1,2", "node_id": "n", "host": "h", "pid": 1}


def run_pack(config: TrialConfig, trial_dir: Path, kill_at_epoch: int | None = None, **kwargs) -> list[dict]:
    """train_packed's reports, as a list; `kill_at_epoch`: the worker dies when it reports that epoch."""
    from harness.sweep.tune.worker import train_packed

    sent = []

    def send(result: dict) -> None:
        if kill_at_epoch is not None and result.get("epoch") == kill_at_epoch:
            raise Killed()
        sent.append(result)

    train_packed(config, trial_dir, {}, 0, IDENTITY, send, required_metrics=["val/elbo"], **kwargs)
    return sent


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_packed_trial_reports_the_mean_of_its_seeds_and_each_seed(tmp_path):
    sent = run_pack(tiny_pack([0, 1, 2]), tmp_path / "trial_x")
    runs = tmp_path / "trial_x" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["seed0", "seed1", "seed2"]
    assert [r["mfcbench_status"] for r in sent] == ["running", "running", "completed"]
    for report in sent:
        epoch = report["epoch"]
        assert isinstance(epoch, int)
        rows = {s: next(r for r in history(runs / f"seed{s}") if r["epoch"] == epoch) for s in (0, 1, 2)}
        for key in ("val/elbo", "elbo", "train_loss", "acc/facet1/digit"):
            assert report[key] == pytest.approx(sum(row[key] for row in rows.values()) / 3)
        for s, row in rows.items():  # per seed: the objectives and train_loss, and its status
            assert report[f"seed{s}/val/elbo"] == row["val/elbo"] and report[f"seed{s}/train_loss"] == row["train_loss"]
            assert f"seed{s}/elbo" not in report
        assert report["seeds_training"] == 3 and report["seeds"] == "0,1,2" and report["host"] == "h"
    assert {sent[-1][f"seed{s}/mfcbench_status"] for s in (0, 1, 2)} == {"completed"}
    meta = json.loads((tmp_path / "trial_x" / "mfcbench-trial.json").read_text())
    assert meta["config"]["training"]["seeds"] == [0, 1, 2] and meta["variant"] == "v"
    for s in (0, 1, 2):  # an ordinary single run's folder
        result = json.loads((runs / f"seed{s}" / "result.json").read_text())
        assert result["status"] == "completed" and result["seed"] == s and result["packed_with"] == [0, 1, 2]
        assert yaml.safe_load((runs / f"seed{s}" / "config.yaml").read_text())["training"]["seed"] == s


def test_seeds_that_fail_leave_the_mean_and_a_pack_whose_seeds_all_fail_fails():
    """A seed whose objective is not finite fails on its own (SeedFailed, raised into harness.trial.packed,
    which records it and drops the seed), with the message an unpacked trial's reporter gives; the epoch's
    report still goes out once the seeds still training have evaluated it."""
    from harness.trial.errors import SeedFailed
    from harness.trial.errors import TrialFailed
    from harness.sweep.tune.worker import PackReports

    sent = []
    reports = PackReports([0, 1, 2], ["val/elbo"], "every_evaluation", 5, {"variant": "v"}, {}, sent.append)
    reports.training = lambda: {0, 1, 2}
    for seed, elbo in [(0, -100.0), (1, -110.0)]:
        reports({"epoch": 1, "val/elbo": elbo, "train_loss": 3.0}, Path(f"runs/seed{seed}"))
    assert sent == []  # not before every seed still training has evaluated the epoch
    with pytest.raises(SeedFailed, match=r"^val/elbo not finite at epoch 1$"):
        reports({"epoch": 1, "val/elbo": float("nan"), "train_loss": 3.0}, Path("runs/seed2"))
    assert issubclass(SeedFailed, TrialFailed)  # outside a pack (one seed left): the trial's failure
    (first,) = sent
    assert first["val/elbo"] == -105.0 and first["seeds_training"] == 2 and "seed2/val/elbo" not in first
    assert first["seed2/train_loss"] == 3.0 and first["mfcbench_status"] == "running"
    assert first["seed2/mfcbench_status"] == "failed" and first["seed0/mfcbench_status"] == "running"
    reports.training = lambda: {0, 1}  # harness.trial.packed dropped seed 2
    with pytest.raises(SeedFailed, match="val/elbo not finite at epoch 2"):  # the first to evaluate fails
        reports({"epoch": 2, "val/elbo": float("inf")}, Path("runs/seed0"))
    assert len(sent) == 1  # seed 1 still to evaluate
    reports({"epoch": 2, "val/elbo": -80.0}, Path("runs/seed1"))
    assert sent[1]["val/elbo"] == -80.0 and sent[1]["seeds_training"] == 1
    assert [sent[1][f"seed{s}/mfcbench_status"] for s in (0, 1, 2)] == ["failed", "running", "failed"]
    reports.training = lambda: {1}
    with pytest.raises(SeedFailed, match="val/elbo not finite at epoch 3"):  # the last seed: the pack fails
        reports({"epoch": 3, "val/elbo": float("inf")}, Path("runs/seed1"))
    assert len(sent) == 2 and reports.pending == {}  # no report without a finite objective
    final = reports.finish({0: {"status": "completed", "final": {"epoch": 5, "val/elbo": -70.0}},
                            1: {"status": "failed", "error": "non-finite loss in epoch 2"},
                            2: {"status": "completed", "final": {"epoch": 5, "val/elbo": -60.0}}}, None)
    assert final["mfcbench_status"] == "completed" and final["val/elbo"] == -65.0
    assert [final[f"seed{s}/mfcbench_status"] for s in (0, 1, 2)] == ["completed", "failed", "completed"]
    failed = reports.finish({s: {"status": "failed", "error": f"boom {s}"} for s in (0, 1, 2)}, None)
    assert failed["mfcbench_status"] == "failed"
    assert failed["error"] == "every seed of the pack failed: seed 0: boom 0; seed 1: boom 1; seed 2: boom 2"


def test_a_packed_seed_whose_objective_is_not_finite_ends_as_its_unpacked_trial(tmp_path, monkeypatch,
                                                                                tune_session):
    """Seed 1's val/elbo is NaN at epoch 2 (its loss stays finite). Unpacked, its trial fails with
    "val/elbo not finite at epoch 2" in result.json; packed, so does seed 1's folder, and the seed leaves
    the pack (not evaluated again) while seeds 0 and 2 complete and are the trial's mean."""
    import harness.trial.run
    from harness.sweep.tune.worker import trainable

    evaluations, original = [], harness.trial.run.evaluate

    def evaluate(model, data, batch_size, seed):
        metrics, assignments = original(model, data, batch_size, seed)
        evaluations.append(seed)
        if seed == 1 and evaluations.count(1) == 2:
            metrics["val/elbo"] = float("nan")
        return metrics, assignments

    monkeypatch.setattr(harness.trial.run, "evaluate", evaluate)
    trial = tiny_pack([0, 1, 2]).for_seed(1).model_dump(mode="json")
    trainable({"grid_point": {"variant": "v", "trial": trial}, "overrides": {}, "cpus": 1,
               "experiment_dir": str(tmp_path / "unpacked")}, required_metrics=["val/elbo"])
    (alone,) = (tmp_path / "unpacked").glob("trial_*/runs/seed1")
    unpacked = json.loads((alone / "result.json").read_text())
    assert unpacked["status"] == "failed" and unpacked["error"] == "val/elbo not finite at epoch 2"
    assert tune_session[-1]["mfcbench_status"] == "failed" and tune_session[-1]["error"] == unpacked["error"]

    evaluations.clear()
    sent = run_pack(tiny_pack([0, 1, 2]), tmp_path / "trial_x")
    runs = tmp_path / "trial_x" / "runs"
    packed = json.loads((runs / "seed1" / "result.json").read_text())
    assert packed["status"] == unpacked["status"] and packed["error"] == unpacked["error"]
    assert packed["packed_with"] == [0, 1, 2]
    assert [row["epoch"] for row in history(runs / "seed1")] == [row["epoch"] for row in history(alone)] == [1, 2]
    assert history(runs / "seed1")[-1]["val/elbo"] is None  # its evaluation is written, as unpacked
    assert evaluations == [0, 1, 2, 0, 1, 2, 0, 2]  # it left the pack after epoch 2
    assert [r["mfcbench_status"] for r in sent] == ["running", "running", "completed"]
    assert [r["seeds_training"] for r in sent] == [3, 2, 2]
    assert [r["seed1/mfcbench_status"] for r in sent] == ["running", "failed", "failed"]
    for s in (0, 2):
        result = json.loads((runs / f"seed{s}" / "result.json").read_text())
        assert result["status"] == "completed" and [row["epoch"] for row in history(runs / f"seed{s}")] == [1, 2, 3]
    assert sent[-1]["val/elbo"] == pytest.approx(sum(
        json.loads((runs / f"seed{s}" / "result.json").read_text())["final"]["val/elbo"] for s in (0, 2)) / 2)


def test_a_pack_whose_every_seed_diverges_is_a_failed_trial(tmp_path):
    sent = run_pack(tiny_pack([0, 1], lr=1e12), tmp_path / "trial_x")
    assert [r["mfcbench_status"] for r in sent] == ["failed"]
    assert "every packed seed failed: non-finite loss in epoch 1" in sent[0]["error"]
    assert sent[0]["seed0/mfcbench_status"] == sent[0]["seed1/mfcbench_status"] == "failed"
    for s in (0, 1):
        result = json.loads((tmp_path / "trial_x" / "runs" / f"seed{s}" / "result.json").read_text())
        assert result["status"] == "failed"


def test_a_seed_whose_pretraining_diverges_leaves_the_pack_and_the_others_train(tmp_path, monkeypatch):
    """VaDE's start in a pack: each seed pretrains as its single run would; one whose pretraining loss
    goes non-finite gets that failure record before the pack forms, and the other seeds train on."""
    import models.pretrain
    from models.pretrain import PretrainingDiverged

    original, calls = models.pretrain.pretrain_autoencoder, []

    def diverging_for_the_second_seed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise PretrainingDiverged("non-finite loss in autoencoder pretraining epoch 1 of 2")
        return original(*args, **kwargs)

    monkeypatch.setattr(models.pretrain, "pretrain_autoencoder", diverging_for_the_second_seed)
    data = json.loads(json.dumps(TINY_BASE))
    data["model"]["pretrain_epochs"] = None  # the default: half the training epochs
    data["training"].update({"epochs_per_step": [3], "seeds": [0, 1, 2]})
    config = TrialConfig.model_validate(data)
    assert config.model.pretrain_epochs == 2
    sent = run_pack(config, tmp_path / "trial_x")
    runs = tmp_path / "trial_x" / "runs"
    failed = json.loads((runs / "seed1" / "result.json").read_text())
    assert failed["status"] == "failed" and failed["packed_with"] == [0, 1, 2]
    assert failed["error"] == ("non-finite loss in autoencoder pretraining epoch 1 of 2; try a lower training.lr "
                               "or fewer model.pretrain_epochs")
    assert not (runs / "seed1" / "metrics.jsonl").exists()
    for s in (0, 2):
        assert json.loads((runs / f"seed{s}" / "result.json").read_text())["status"] == "completed"
    assert sent[-1]["mfcbench_status"] == "completed" and sent[-1]["seeds_training"] == 2


def test_an_interrupted_pack_trains_its_unfinished_seeds_again_and_keeps_those_that_ended(tmp_path):
    uninterrupted = run_pack(tiny_pack([0, 1, 2]), tmp_path / "whole")
    trial = tmp_path / "trial_x"
    with pytest.raises(Killed):
        run_pack(tiny_pack([0, 1, 2]), trial, kill_at_epoch=2)
    runs = trial / "runs"
    assert all((runs / f"seed{s}" / "checkpoint.pt").exists() for s in (0, 1, 2))
    assert not any((runs / f"seed{s}" / "result.json").exists() for s in (0, 1, 2))
    # seed 2 had failed on its own before the kill (non-finite loss): it stays failed, not trained again
    failed = {"status": "failed", "error": "non-finite loss in epoch 1 (step 7)", "seed": 2}
    (runs / "seed2" / "result.json").write_text(json.dumps(failed))
    sent = run_pack(tiny_pack([0, 1, 2]), trial)
    assert [r["mfcbench_status"] for r in sent] == ["running", "running", "completed"]  # epochs 1, 2 and 3 again
    assert sent[0]["seeds_training"] == 2 and sent[-1]["seed2/mfcbench_status"] == "failed"
    assert json.loads((runs / "seed2" / "result.json").read_text()) == failed
    for s in (0, 1):  # from the start, each evaluation once, as the uninterrupted pack trained it
        assert [row["epoch"] for row in history(runs / f"seed{s}")] == [1, 2, 3]
        assert sent[-1][f"seed{s}/val/elbo"] == pytest.approx(uninterrupted[-1][f"seed{s}/val/elbo"], rel=1e-4)
        result = json.loads((runs / f"seed{s}" / "result.json").read_text())
        assert result["status"] == "completed" and result["packed_with"] == [0, 1]
    starts = json.loads((trial / "mfcbench-trial.json").read_text())["starts"]
    assert len(starts) == 2


def test_the_one_seed_left_of_a_pack_resumes_from_its_checkpoint(tmp_path):
    """Killed while the seeds' result.json were written: the seed left resumes as an unpacked trial does."""
    trial = tmp_path / "trial_x"
    first = run_pack(tiny_pack([0, 1]), trial)
    seed1 = trial / "runs" / "seed1"
    kept = (trial / "runs" / "seed0" / "result.json").read_text()
    (seed1 / "result.json").unlink()
    sent = run_pack(tiny_pack([0, 1]), trial)
    assert [r["mfcbench_status"] for r in sent] == ["completed"]
    result = json.loads((seed1 / "result.json").read_text())
    assert result["status"] == "completed" and result["resumed_at_epoch"] == 3
    assert (trial / "runs" / "seed0" / "result.json").read_text() == kept
    assert [row["epoch"] for row in history(seed1)] == [1, 2, 3]
    assert sent[0]["val/elbo"] == pytest.approx(first[-1]["val/elbo"])


# -- the searcher with packed replicates, no Ray --------------------------------------------------

def searcher_for(tmp_path, pack: int, **search):
    from harness.sweep.tune.searcher import ReplicatedOptunaSearch

    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", pack=pack, search={"space": LR_SPACE, **search}))
    return ReplicatedOptunaSearch(sweep, tmp_path)


def packed_result(status: str = "completed", **seeds) -> dict:
    """A packed trial's last report: seeds={"0": elbo or None (that seed failed)}."""
    result = {"epoch": 2, "mfcbench_status": status}
    for seed, elbo in seeds.items():
        result[f"seed{seed.removeprefix('s')}/mfcbench_status"] = "failed" if elbo is None else "completed"
        if elbo is not None:
            result[f"seed{seed.removeprefix('s')}/val/elbo"] = elbo
    return result


def test_one_packed_trial_per_suggestion_told_the_mean_of_its_seeds(tmp_path):
    searcher = searcher_for(tmp_path, pack=3, replicates=3, num_samples=2)
    assert trials_per_suggestion(searcher.sweep) == 1
    first, second = suggested(searcher, "t0"), suggested(searcher, "t1")
    assert searcher.suggest("t2") == "FINISHED"  # 2 suggestions, one trial each
    for point in (first, second):
        training = point["trial"]["training"]
        assert training["seeds"] == [0, 1, 2] and "seed" not in training
        TrialConfig.model_validate(point["trial"])
    assert first["overrides"] != second["overrides"]
    searcher.on_trial_complete("t0", packed_result(s0=-100.0, s1=-110.0, s2=None))  # 2 of 3 finished
    searcher.on_trial_complete("t1", packed_result("failed", s0=None, s1=None, s2=None))
    told = journal_study(tmp_path).trials
    assert told[0].state == TrialState.COMPLETE and told[0].value == pytest.approx(-105.0)
    assert told[0].user_attrs["failed_seeds"] == [2]
    assert told[1].state == TrialState.FAIL and told[1].user_attrs["failed_seeds"] == [0, 1, 2]


def test_replicates_split_into_packs_when_pack_is_smaller(tmp_path):
    searcher = searcher_for(tmp_path, pack=2, replicates=3, num_samples=1)
    assert trials_per_suggestion(searcher.sweep) == 2
    a, b = suggested(searcher, "a"), suggested(searcher, "b")
    assert a["trial"]["training"]["seeds"] == [0, 1]
    assert b["trial"]["training"]["seed"] == 2 and "seeds" not in b["trial"]["training"]
    assert searcher.suggest("c") == "FINISHED"
    searcher.on_trial_complete("a", packed_result(s0=-100.0, s1=-110.0))
    assert journal_study(tmp_path).trials[0].state == TrialState.RUNNING  # seed 2 still runs
    searcher.save(str(tmp_path / "state.json"))  # a driver restart in between
    restarted = searcher_for(tmp_path, pack=2, replicates=3, num_samples=1)
    restarted.restore(str(tmp_path / "state.json"))
    restarted.on_trial_complete("b", {"val/elbo": -120.0, "epoch": 2, "mfcbench_status": "completed"})
    (trial,) = journal_study(tmp_path).trials
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(-110.0)


def test_packed_seed_agreement_reads_the_packed_trials_seed_folders(tmp_path):
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    searcher = searcher_for(tmp_path, pack=4, replicates=3, num_samples=1, metrics=["val/agreement", "val/elbo"],
                            modes=["max", "max"])
    searcher.suggest("t0")
    val = {0: [0, 0, 1, 1, 2, 2, 2], 1: [1, 1, 0, 0, 2, 2, 0], 2: [0, 1, 2, 0, 1, 2, 0]}
    for seed, assignment in val.items():
        run_dir = tmp_path / "trial_t0" / "runs" / f"seed{seed}"
        run_dir.mkdir(parents=True)
        np.savez(run_dir / "assignments.npz", epoch=np.int64(2), val_facet1=np.array(assignment),
                 test_facet1=np.arange(7) % 2)
    searcher.on_trial_complete("t0", packed_result(s0=-100.0, s1=-120.0, s2=None))  # seed 2 failed: not read
    (trial,) = journal_study(tmp_path).trials
    assert trial.values == pytest.approx([adjusted_rand_score(val[0], val[1]), -110.0])


def test_a_lost_packed_trial_that_retry_errored_finishes_enters_the_study(tmp_path):
    searcher = searcher_for(tmp_path, pack=2, replicates=2, num_samples=1)
    params = searcher.suggest("t0")
    searcher.on_trial_complete("t0", None, error=True)
    assert journal_study(tmp_path).trials[0].state == TrialState.FAIL
    searcher.save(str(tmp_path / "state.json"))
    resumed = searcher_for(tmp_path, pack=2, replicates=2, num_samples=1)
    resumed.restore(str(tmp_path / "state.json"))
    resumed.on_trial_complete("t0", packed_result(s0=-80.0, s1=-100.0))
    failed, retried = journal_study(tmp_path).trials
    assert failed.state == TrialState.FAIL and retried.state == TrialState.COMPLETE
    assert retried.value == pytest.approx(-90.0) and retried.user_attrs["retry_of_trial"] == 0
    assert retried.params["training.lr"] == params["overrides"]["training.lr"]


# -- real Ray -------------------------------------------------------------------------------------

def test_a_packed_sweep_reports_as_the_same_sweep_unpacked(tmp_path, local_ray):
    """One tiny grid through local Ray, packed (pack 3: both seeds in one trial) and not: the same run
    folders, and the report reads the same summary numbers from both."""
    from harness.sweep.tune.driver import run_sweep
    from reports.load import load_runs
    from reports.summary import summary_table

    fields = dict(variants={"vae": {}, "km": {"model.name": "kmeans"}}, grid={"training.seed": [0, 1]},
                  scheduler={"metric": "val/acc/facet1/digit", "grace_period": 2})
    tables, runs = {}, {}
    for name, pack in [("packed", 3), ("unpacked", 1)]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "base": TINY_BASE, "pack": pack, **fields}, sort_keys=False))
        sweep, trials = load_sweep(path)
        results = run_sweep(sweep, trials, tmp_path / "results", verbose=0)
        assert all(r.error is None for r in results)
        assert len(results) == (3 if pack == 3 else 4)  # vae's 2 seeds in one trial; k-means' one each
        assert {r.metrics["mfcbench_status"] for r in results} == {"completed"}
        runs[name], _ = load_runs([tmp_path / "results" / name])
        tables[name] = summary_table(runs[name])
    experiment = tmp_path / "results" / "packed"
    (vae_trial,) = [p.parents[1] for p in experiment.glob("trial_*/runs/seed1") if
                    (p.parents[1] / "runs" / "seed0").exists()]
    meta = json.loads((vae_trial / "mfcbench-trial.json").read_text())
    assert meta["variant"] == "vae" and meta["config"]["training"]["seeds"] == [0, 1]
    assert meta["overrides"] == {"training.seeds": [0, 1]}
    recorded = json.loads((experiment / "mfcbench-grid-trials.json").read_text())
    assert [seeds_of(t) for t in recorded] == [[0, 1], [0], [1]]
    a, b = (runs[n].sort_values(["variant", "seed"]).reset_index(drop=True) for n in ("packed", "unpacked"))
    assert list(zip(a["variant"], a["seed"], a["status"])) == list(zip(b["variant"], b["seed"], b["status"]))
    assert list(a["variant"]).count("vae") == 2
    for column in ("val/elbo", "elbo", "acc/facet1/digit", "nmi/facet1/digit"):
        assert a[column].tolist() == pytest.approx(b[column].tolist(), rel=1e-4, abs=1e-4, nan_ok=True), column
    left, right = (tables[n].drop(columns=["wall_time_s_mean"]) for n in ("packed", "unpacked"))
    assert list(left.columns) == list(right.columns) and len(left) == len(right) > 0
    for column in left.columns:
        if left[column].dtype.kind in "fi":
            assert left[column].tolist() == pytest.approx(right[column].tolist(), rel=1e-4, abs=1e-4,
                                                          nan_ok=True), column
        else:
            assert left[column].tolist() == right[column].tolist(), column


@pytest.mark.slow
def test_a_packed_search_through_ray_tells_optuna_each_suggestions_seeds(tmp_path, local_ray):
    from harness.agreement import suggestion_agreement
    from harness.sweep.tune.driver import run_sweep

    path = write_sweep(tmp_path / "s.yaml", pack=2, max_concurrent=2, search={
        "space": {"model.n_clusters.0": {"type": "int", "low": 5, "high": 15}},
        "metrics": ["val/elbo", "val/agreement"], "modes": ["max", "max"], "num_samples": 2, "replicates": 2,
        "sampler": {"type": "random", "seed": 1}})
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, tmp_path / "results", verbose=0)
    assert len(results) == 2 and all(r.error is None for r in results)  # one Tune trial per suggestion
    experiment = tmp_path / "results" / "t"
    study = journal_study(experiment)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for result in results:
        m = result.metrics
        assert m["seeds"] == "0,1" and m["seed0/mfcbench_status"] == m["seed1/mfcbench_status"] == "completed"
        runs = experiment / f"trial_{result.metrics['trial_id']}" / "runs"
        finals = [json.loads((runs / f"seed{s}" / "result.json").read_text())["final"] for s in (0, 1)]
        assert m["val/elbo"] == pytest.approx((finals[0]["val/elbo"] + finals[1]["val/elbo"]) / 2)
        meta = json.loads((runs.parent / "mfcbench-trial.json").read_text())
        assert meta["config"]["training"]["seeds"] == [0, 1]
        (told,) = [t for t in study.trials if t.params == meta["overrides"]]
        assert told.values == pytest.approx([m["val/elbo"], suggestion_agreement(
            [runs / "seed0", runs / "seed1"])["val/agreement"]])


@pytest.mark.ray
@pytest.mark.slow
def test_kill_driver_then_resume_a_packed_sweep(tmp_path):
    """The driver dies while the second pack trains: --resume keeps the first pack's seeds as they were and
    trains the second pack's seeds again from the start, each evaluation once."""
    import subprocess

    from ray_helpers import BIN, kill_all, processes_of, ray_env, run, short_temp_dir, wait_until

    home, temp = tmp_path / "home", short_temp_dir()
    home.mkdir()
    env = ray_env(home)
    base = {**TINY_BASE, "model": {**TINY_BASE["model"], "hidden_sizes": [256]},
            "training": {**TINY_BASE["training"], "epochs_per_step": [40], "batch_size": 64}}
    path = write_sweep(tmp_path / "k.yaml", base=base, grid={"training.seed": [0, 1, 2, 3]}, pack=2, max_concurrent=1,
                       storage=str(tmp_path / "results"))
    cmd = [str(BIN / "mfcbench"), "sweep", str(path), "--ray-temp-dir", temp]
    experiment = tmp_path / "results" / "t"
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        def first_pack_done_second_early() -> bool:
            done = list(experiment.glob("trial_*/runs/seed*/result.json"))
            partial = [p for p in experiment.glob("trial_*/runs/seed*/metrics.jsonl")
                       if not (p.parent / "result.json").exists() and 3 <= len(p.read_text().splitlines()) <= 20]
            return len(done) == 2 and len(partial) == 2

        wait_until(driver, first_pack_done_second_early, "the first pack finished and the second was early in its run")
    finally:
        kill_all(processes_of(temp, roots=[driver.pid]))
    finished_before = {str(p): p.read_text() for p in experiment.glob("trial_*/runs/seed*/result.json")}
    assert len(finished_before) == 2
    resumed = run(cmd + ["--resume"], env, timeout=300)
    try:
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        kill_all(processes_of(temp))
    assert "2 of 2 trials done (0 errored), 0 running" in resumed.stdout, resumed.stdout[-3000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in experiment.glob("trial_*/runs/seed*/result.json")}
    assert sorted(results) == ["seed0", "seed1", "seed2", "seed3"]
    assert {r["status"] for r in results.values()} == {"completed"}
    for p, text in finished_before.items():
        assert Path(p).read_text() == text, f"{p} was run again"
    for run_dir in experiment.glob("trial_*/runs/seed*"):
        assert [row["epoch"] for row in history(run_dir)] == list(range(1, 41)), run_dir
    trials = {p.parents[1] for p in experiment.glob("trial_*/runs/seed*")}
    assert len(trials) == 2  # the second pack went on in its own trial folder
