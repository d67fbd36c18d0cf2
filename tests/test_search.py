"""The sweep searcher and scheduler (harness.sweep.tune.searcher): parallel replicates told to Optuna as their mean,
seed agreement computed from the seeds' run folders, FAIL / PRUNED semantics, restart, ASHA's max_t,
the dry-run concurrency line, and an ASHA search on local Ray whose stopped trials are PRUNED in the
study and "stopped early" in reports."""
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from optuna.trial import TrialState

from harness.trial.config import DEFAULT_OPTIMISER_STEPS, ConfigError
from harness.compat import with_legacy_defaults
from harness.sweep.load import load_sweep
from ray_helpers import journal_study
from sweep_helpers import LR_SPACE, TINY_BASE, suggested, write_sweep
from harness.sweep.tune.protocol import trial_point


def with_epochs(epochs: int) -> dict:
    """TINY_BASE training for `epochs` epochs (one facet: one progressive step)."""
    return {**TINY_BASE, "training": {**TINY_BASE["training"], "epochs_per_step": [epochs]}}


def searcher_for(tmp_path, base: dict = TINY_BASE, **search):
    from harness.sweep.tune.searcher import ReplicatedOptunaSearch

    sweep, _ = load_sweep(write_sweep(tmp_path / "s.yaml", base=base, search={"space": LR_SPACE, **search}))
    return ReplicatedOptunaSearch(sweep, tmp_path)


def completed(elbo: float, epoch: int = 2) -> dict:
    """A seed's last result: its validation ELBO (the default objective)."""
    return {"val/elbo": elbo, "epoch": epoch, "mfcbench_status": "completed"}


def write_assignments(experiment: Path, trial_id: str, seed: int, val: list[list[int]]) -> None:
    """What the trainer keeps in a search trial's run folder: each facet's cluster of every validation
    image, and (different, so reading the wrong split shows) of every test image."""
    run_dir = experiment / f"trial_{trial_id}" / "runs" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    np.savez(run_dir / "assignments.npz", epoch=np.int64(2),
             **{f"val_facet{j}": np.array(facet) for j, facet in enumerate(val, start=1)},
             **{f"test_facet{j}": np.arange(7) % (j + 1) for j in range(1, len(val) + 1)})


# -- the searcher, without Ray running ------------------------------------------------------------

def test_a_lost_seed_that_retry_errored_finishes_enters_the_study(tmp_path):
    """Ray lost a seed (error=True): the suggestion is told FAIL. `--resume --retry-errored` reruns it
    under the same id; the told trial stays FAIL and the suggestion enters the study again, COMPLETE."""
    searcher = searcher_for(tmp_path, replicates=1, num_samples=1)
    params = searcher.suggest("t0")
    searcher.on_trial_complete("t0", None, error=True)
    path = tmp_path / "searcher.json"
    searcher.save(str(path))  # the driver stops; a new one restores
    resumed = searcher_for(tmp_path, replicates=1, num_samples=1)
    resumed.restore(str(path))
    resumed.on_trial_complete("t0", completed(-90.0))
    study = journal_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].value == -90.0 and study.trials[1].params == study.trials[0].params
    assert study.trials[1].params["training.lr"] == params["overrides"]["training.lr"]
    assert study.trials[1].user_attrs["retry_of_trial"] == 0


def test_a_lost_seed_rerun_before_its_suggestion_ends_counts_as_finished(tmp_path):
    searcher = searcher_for(tmp_path, replicates=2, num_samples=1)
    searcher.suggest("t0"), searcher.suggest("t1")
    searcher.on_trial_complete("t0", None, error=True)
    searcher.on_trial_complete("t0", completed(-80.0))  # rerun while seed 1 still runs
    searcher.on_trial_complete("t1", completed(-100.0))
    study = journal_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] and study.trials[0].value == -90.0
    assert study.trials[0].user_attrs["failed_seeds"] == []


def test_replicates_become_parallel_trials_and_the_study_gets_their_mean(tmp_path):
    searcher = searcher_for(tmp_path, replicates=3, num_samples=2)
    suggestions = {f"t{i}": searcher.suggest(f"t{i}") for i in range(6)}
    assert searcher.suggest("t6") == "FINISHED"  # 2 suggestions x 3 seeds handed out
    for i, (trial_id, params) in enumerate(suggestions.items()):
        # by reference: Tune's params name the file the searcher wrote into the trial's folder
        assert set(params) == {"suggestion", "overrides"}
        point = trial_point({**params, "experiment_dir": tmp_path}, (), trial_id)
        assert point["variant"] == "search"
        trial = point["trial"]
        assert trial["training"]["seed"] == i % 3  # base seed 0 + replicate
        assert trial["training"]["lr"] == params["overrides"]["training.lr"]
        assert trial["model"]["latent_dims"] == [3] and trial["training"]["epochs_per_step"] == [2]
    assert suggestions["t0"]["overrides"] == suggestions["t2"]["overrides"] != suggestions["t3"]["overrides"]

    for trial_id, elbo in [("t0", -100.0), ("t1", -110.0)]:
        searcher.on_trial_complete(trial_id, completed(elbo))
    assert journal_study(tmp_path).trials[0].state == TrialState.RUNNING  # not before every seed has ended
    searcher.on_trial_complete("t2", completed(-120.0))
    for trial_id in ("t3", "t4", "t5"):
        searcher.on_trial_complete(trial_id, completed(-90.0))
    first, second = journal_study(tmp_path).trials
    assert first.state == second.state == TrialState.COMPLETE
    assert first.value == pytest.approx(-110.0) and second.value == pytest.approx(-90.0)
    assert first.params == {"training.lr": suggestions["t0"]["overrides"]["training.lr"]}
    assert first.intermediate_values == {}  # no pruner reads them, so none are sent


def test_a_suggestion_fails_only_when_fewer_than_half_of_its_seeds_finish(tmp_path):
    searcher = searcher_for(tmp_path, replicates=2, num_samples=2)
    for i in range(4):
        searcher.suggest(f"t{i}")
    # suggestion 0: seed 0 diverged (the trainable's failed report), seed 1 finished: 1 of 2 is half
    searcher.on_trial_complete("t0", {"epoch": 1, "mfcbench_status": "failed", "error": "non-finite loss"})
    searcher.on_trial_complete("t1", completed(-100.0))
    # suggestion 1: seed 0 errored in Tune, seed 1 finished without a finite objective: 0 of 2
    searcher.on_trial_complete("t2", error=True)
    searcher.on_trial_complete("t3", {"epoch": 2, "mfcbench_status": "completed"})
    first, second = journal_study(tmp_path).trials
    assert first.state == TrialState.COMPLETE and first.value == pytest.approx(-100.0)
    assert first.user_attrs["failed_seeds"] == [0]
    assert second.state == TrialState.FAIL and second.user_attrs["failed_seeds"] == [0, 1]


def test_a_trial_stopped_by_the_scheduler_is_pruned_with_its_last_value(tmp_path):
    searcher = searcher_for(tmp_path, num_samples=2)
    searcher.suggest("t0"), searcher.suggest("t1")
    searcher.on_trial_complete("t0", completed(-100.0))
    # ASHA stopped it after epoch 1: its last report still said "running"
    searcher.on_trial_complete("t1", {"val/elbo": -150.0, "epoch": 1, "mfcbench_status": "running"})
    first, second = journal_study(tmp_path).trials
    assert first.state == TrialState.COMPLETE
    assert second.state == TrialState.PRUNED
    assert second.intermediate_values == {1: -150.0} and second.value == -150.0


def test_multi_objective_mean_per_objective(tmp_path):
    searcher = searcher_for(tmp_path, replicates=2, num_samples=1, metrics=["val/elbo", "val/acc/facet1/digit"],
                            modes=["max", "max"])
    searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", {**completed(-100.0), "val/acc/facet1/digit": 0.5})
    searcher.on_trial_complete("b", {**completed(-110.0), "val/acc/facet1/digit": 0.7})
    (trial,) = journal_study(tmp_path).trials
    assert trial.values == pytest.approx([-105.0, 0.6])


def test_seed_agreement_is_computed_from_the_run_folders_of_the_seeds_that_finished(tmp_path):
    """Trials never report val/agreement: once a suggestion's seeds have all ended, the searcher reads the
    assignments.npz of those that finished and tells Optuna their mean pairwise ARI, in the configured
    order beside the mean of the reported objectives; a driver restart in between loses no trial id."""
    from sklearn.metrics import adjusted_rand_score

    from harness.sweep.load import reported_objectives

    two_facets = {**TINY_BASE, "model": {"latent_dims": [3, 2], "n_clusters": [10, 5], "hidden_sizes": [32, 32]},
                  "training": {**TINY_BASE["training"], "epochs_per_step": [1, 1]}}
    searcher = searcher_for(tmp_path, two_facets, replicates=3, num_samples=1,
                            metrics=["val/agreement/facet2", "val/elbo"], modes=["max", "max"])
    assert searcher.metric == "val/elbo"  # all Tune may expect in a trial's results
    assert reported_objectives(searcher.sweep) == ["val/elbo"]  # what trials must report (required_metrics)
    ids = ["t0", "t1", "t2"]
    for trial_id in ids:
        assert searcher.suggest(trial_id) is not None
    # facet 1 agrees up to relabelling; facet 2 partly; seed 2 (it diverges) would agree with nothing
    seeds = {0: [[0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 1, 1]],
             1: [[1, 1, 0, 0, 2, 2, 2], [0, 1, 0, 1, 0, 1, 1]],
             2: [[0, 1, 2, 0, 1, 2, 0], [1, 0, 0, 1, 1, 0, 1]]}
    for trial_id, seed in zip(ids, seeds):
        write_assignments(tmp_path, trial_id, seed, seeds[seed])
    searcher.on_trial_complete("t0", completed(-100.0))
    searcher.on_trial_complete("t2", {"epoch": 1, "mfcbench_status": "failed", "error": "non-finite loss"})
    searcher.save(str(tmp_path / "searcher-state.json"))
    restarted = searcher_for(tmp_path, two_facets, replicates=3, num_samples=1,
                             metrics=["val/agreement/facet2", "val/elbo"], modes=["max", "max"])
    restarted.restore(str(tmp_path / "searcher-state.json"))
    restarted.on_trial_complete("t1", completed(-110.0))
    (trial,) = journal_study(tmp_path).trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["failed_seeds"] == [2]
    expected = adjusted_rand_score(seeds[0][1], seeds[1][1])
    assert 0 < expected < 1  # a value that only these two seeds' second facets give
    assert trial.values == pytest.approx([expected, -105.0])


def test_seed_agreement_needs_two_finished_seeds(tmp_path):
    """Half of two seeds finished: enough for a mean ELBO, but not for an agreement, so FAIL."""
    searcher = searcher_for(tmp_path, replicates=2, num_samples=2, metrics=["val/agreement"])
    assert searcher.metric is None  # trials report none of the objectives
    for trial_id, seed in [("t0", 0), ("t1", 1), ("t2", 0), ("t3", 1)]:
        searcher.suggest(trial_id)
        write_assignments(tmp_path, trial_id, seed, [[0, 0, 1, 1, 0, 1, 0]])
    searcher.on_trial_complete("t0", completed(-100.0))
    searcher.on_trial_complete("t1", error=True)
    searcher.on_trial_complete("t2", {"epoch": 2, "mfcbench_status": "completed"})  # no val/elbo: not needed
    searcher.on_trial_complete("t3", completed(-90.0))
    first, second = journal_study(tmp_path).trials
    assert first.state == TrialState.FAIL and first.user_attrs["failed_seeds"] == [1]
    assert second.state == TrialState.COMPLETE and second.value == pytest.approx(1.0)  # identical partitions


def test_searcher_survives_a_driver_restart(tmp_path):
    searcher = searcher_for(tmp_path, replicates=2, num_samples=3)
    for trial_id in ("t0", "t1", "t2"):  # suggestion 0 both seeds, suggestion 1 seed 0
        searcher.suggest(trial_id)
    searcher.on_trial_complete("t0", completed(-100.0))
    searcher.save(str(tmp_path / "searcher-state.json"))
    searcher.suggest("lost")  # handed out after the last save: the driver died before Tune saved it
    searcher.suggest("lost-too")  # a third suggestion, asked in the journal, unknown to the saved state

    # Tune un-pickles the searcher from tuner.pkl (its first state), then restores the saved state
    restarted = pickle.loads(pickle.dumps(searcher_for(tmp_path, replicates=2, num_samples=3)))
    restarted.restore(str(tmp_path / "searcher-state.json"))
    states = [t.state for t in journal_study(tmp_path).trials]
    assert states == [TrialState.RUNNING, TrialState.RUNNING, TrialState.FAIL]  # the orphan is closed
    restarted.on_trial_complete("t1", completed(-120.0))
    restarted.on_trial_complete("t2", completed(-90.0))
    third = suggested(restarted, "t3")  # suggestion 1's seed 1 again: it was not handed out when saved
    assert third["trial"]["training"]["seed"] == 1
    restarted.on_trial_complete("t3", completed(-94.0))
    trials = journal_study(tmp_path).trials
    assert trials[0].value == pytest.approx(-110.0) and trials[1].value == pytest.approx(-92.0)
    assert suggested(restarted, "t4")["trial"]["training"]["seed"] == 0  # suggestion 3 of 3
    assert len(journal_study(tmp_path).trials) == 4


def unpickled_without(searcher, *attributes):
    """The searcher as un-pickling it gives when an older mfcbench pickled it without `attributes`."""
    state = dict(searcher.__getstate__())  # what pickling stores, as pickle.dumps would take it
    for name in attributes:
        del state[name]
    old = type(searcher).__new__(type(searcher))
    old.__setstate__(state)
    return old


def test_suggestions_are_resolved_and_a_searcher_from_before_keeps_the_old_epochs(tmp_path):
    """A suggestion records concrete epochs and architecture; a searcher pickled before unset epochs
    depended on the data (issue 11) keeps 10 per step, as its finished seeds trained."""
    unset = {**TINY_BASE, "training": {"batch_size": 256, "threads": 1}}
    searcher = searcher_for(tmp_path, base=unset, replicates=2, num_samples=1)
    trial = suggested(searcher, "t0")["trial"]
    assert trial["training"]["epochs_per_step"] == [math.ceil(DEFAULT_OPTIMISER_STEPS / 6)]  # 6 batches/epoch
    assert trial["model"]["architecture"] == "shared-mlp"  # one facet
    old = unpickled_without(searcher, "resolves_defaults")  # as the earlier code pickled it
    assert suggested(old, "t1")["trial"]["training"]["epochs_per_step"] == [10]
    assert unpickled_without(searcher, "pack").seeds_per_trial == 1  # pickled before packing existed
    assert pickle.loads(pickle.dumps(searcher)).resolves_defaults  # today's keeps its own
    recorded = {"model": {"latent_dims": [3, 2]}, "training": {"epochs_per_step": None}}
    assert with_legacy_defaults(recorded)["training"]["epochs_per_step"] == [10, 10]


def test_a_searcher_from_before_the_data_init_fix_keeps_unit_scale(tmp_path):
    """A searcher pickled before model.data_init_scale existed holds a base without it: its later
    suggestions keep 1.0, as its finished seeds were initialised, while a new search gets 0.1."""
    searcher = searcher_for(tmp_path, base={**TINY_BASE, "model": {**TINY_BASE.get("model", {}), "init": "data"}},
                            replicates=2, num_samples=2)
    assert suggested(searcher, "t0")["trial"]["model"]["data_init_scale"] == 0.1
    old = pickle.loads(pickle.dumps(searcher))
    del old.base["model"]["data_init_scale"]  # what un-pickling a searcher saved by the earlier code gives
    assert suggested(old, "t1")["trial"]["model"]["data_init_scale"] == 1.0


def test_asha_max_t_follows_the_default_epochs_of_searched_batch_sizes(tmp_path):
    from harness.sweep.tune.searcher import asha_scheduler

    unset = {**TINY_BASE, "training": {"threads": 1}}
    space = {"training.batch_size": {"type": "categorical", "choices": [128, 1024]}}
    sweep, trials = load_sweep(write_sweep(tmp_path / "a.yaml", base=unset, search={"space": space}, scheduler={}))
    assert asha_scheduler(sweep, trials)._max_t == DEFAULT_OPTIMISER_STEPS // 2  # 2 batches of 1024 per epoch


# -- ASHA and concurrency, without Ray running ----------------------------------------------------

def test_asha_max_t_is_the_longest_trial(tmp_path):
    from harness.sweep.tune.searcher import asha_scheduler

    epochs_space = {"training.epochs_per_step.0": {"type": "int", "low": 3, "high": 40, "step": 4}}
    sweep, trials = load_sweep(write_sweep(tmp_path / "a.yaml", search={"space": {**LR_SPACE, **epochs_space}},
                                           scheduler={"grace_period": 1}))
    assert asha_scheduler(sweep, trials)._max_t == 39  # Optuna's step grid lowers 40 to 39
    sweep, trials = load_sweep(write_sweep(tmp_path / "b.yaml", search={"space": {"training.epochs_per_step": {
        "type": "categorical", "choices": [[5], [402], [7]]}}}, scheduler={}))
    assert asha_scheduler(sweep, trials)._max_t == 402
    sweep, trials = load_sweep(write_sweep(tmp_path / "c.yaml", search={"space": LR_SPACE}, scheduler={}))
    assert asha_scheduler(sweep, trials)._max_t == 2  # nothing searched sets epochs: the base's
    sweep, trials = load_sweep(write_sweep(tmp_path / "d.yaml", variants={"short": {}, "long": {
        "training.epochs_per_step": [150]}}, scheduler={}))
    assert asha_scheduler(sweep, trials)._max_t == 150
    with pytest.raises(ConfigError, match="scheduler.grace_period: 3 exceeds the 2 epochs of the longest trial"):
        load_sweep(write_sweep(tmp_path / "e.yaml", grid={"training.seed": [0]}, scheduler={"grace_period": 3}))


def test_dry_run_prints_the_effective_concurrency(tmp_path, capsys):
    from harness.cli import main

    def dry_run(**fields) -> str:
        path = write_sweep(tmp_path / "s.yaml", **fields)
        assert main(["sweep", str(path), "--dry-run", "--storage", str(tmp_path / "results")]) == 0
        return capsys.readouterr().out

    search = {"space": LR_SPACE, "replicates": 2, "sampler": {"n_startup_trials": 3}}
    out = dry_run(search=search)
    assert ("concurrency: at most 6 trials at once, 3 suggestion(s) x 2 seed(s) "
            "(default: search.sampler.n_startup_trials x replicates)") in out
    assert "WARNING" not in out
    out = dry_run(search=search, max_concurrent=8)
    assert "concurrency: at most 8 trials at once, 4 suggestion(s) x 2 seed(s) (max_concurrent)" in out
    assert "WARNING: 4 suggestions in flight exceed search.sampler.n_startup_trials (3)" in out
    out = dry_run(search={**search, "sampler": {"type": "random"}})
    assert "concurrency: as many trials at once as the cluster's resources hold" in out and "WARNING" not in out
    out = dry_run(grid={"training.seed": [0, 1]}, max_concurrent=1)
    assert "concurrency: at most 1 trials at once (max_concurrent)" in out


def test_asha_with_replicates_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="scheduler \\(ASHA\\) cannot be combined with search.replicates > 1"):
        load_sweep(write_sweep(tmp_path / "s.yaml", search={"space": LR_SPACE, "replicates": 2}, scheduler={}))


def test_reports_tell_stopped_early_runs_from_incomplete_ones(tmp_path):
    from harness.sweep.overrides import resolved_base
    from reports.load import load_runs
    from reports.summary import failures

    for trial, stopped in [("trial_a", True), ("trial_b", False)]:
        run_dir = tmp_path / "t" / trial / "runs" / "seed0"
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved_base(TINY_BASE)))
        (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "elbo": -150.0}) + "\n")
        if stopped:  # what the driver's StoppedEarlyMarker writes
            (run_dir.parents[1] / "mfcbench-stopped-early.json").write_text(json.dumps({"epoch": 1}))
    runs, _ = load_runs([tmp_path / "t"])
    assert dict(zip(runs["run_dir"].map(lambda d: Path(d).parents[1].name), runs["status"])) == {
        "trial_a": "stopped early", "trial_b": "incomplete"}
    assert sorted(failures(runs)["error"]) == ["no result: killed, or still running",
                                               "stopped early by the sweep's scheduler (ASHA)"]


# -- real Ray -------------------------------------------------------------------------------------

def test_asha_search_prunes_in_the_study_and_reports_stopped_early(tmp_path, local_ray):
    from harness.sweep.tune.driver import run_sweep
    from reports.load import load_runs

    # One trial at a time, so each later suggestion meets the rungs the earlier ones recorded; a
    # learning rate of 1e-7 barely moves from the initial ELBO, 3e-3 improves it at once.
    path = write_sweep(tmp_path / "search.yaml", base=with_epochs(4), max_concurrent=1, scheduler={"grace_period": 1},
                       search={"space": {"training.lr": {"type": "categorical", "choices": [3e-3, 1e-7]}},
                               "num_samples": 4, "sampler": {"type": "random", "seed": 0}})
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, tmp_path / "results", verbose=0)
    experiment = tmp_path / "results" / "t"
    assert len(results) == 4 and all(r.error is None for r in results)
    study = journal_study(experiment)
    states = [t.state for t in study.trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states, states
    assert set(states) <= {TrialState.PRUNED, TrialState.COMPLETE}
    runs, _ = load_runs([experiment])
    by_lr = {}
    for run in runs.itertuples():
        by_lr.setdefault(json.loads(run.config)["training"]["lr"], set()).add(run.status)
    for trial in study.trials:
        expected = "stopped early" if trial.state == TrialState.PRUNED else "completed"
        assert expected in by_lr[trial.params["training.lr"]], (trial.number, by_lr)
        if trial.state == TrialState.PRUNED:
            assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
    assert len(runs) == 4 and set(runs["status"]) == {"stopped early", "completed"}
    assert not (experiment / "optuna.db").exists()


@pytest.mark.slow
def test_diverging_suggestions_inside_an_asha_search_fail_and_the_search_goes_on(tmp_path, local_ray):
    """A NaN never ends a sweep: a suggestion whose loss diverges is told FAIL, the others COMPLETE,
    and Tune records no error (no retries spent, the controller never sees a None)."""
    from harness.sweep.tune.driver import run_sweep

    # grace period = the whole run: ASHA reads every result but stops nothing
    path = write_sweep(tmp_path / "search.yaml", base=with_epochs(3), max_concurrent=2, scheduler={"grace_period": 3},
                       search={"space": {"training.lr": {"type": "categorical", "choices": [2e-3, 1e12]}},
                               "num_samples": 4, "sampler": {"type": "random", "seed": 1}})
    sweep, trials = load_sweep(path)
    results = run_sweep(sweep, trials, tmp_path / "results", verbose=0)
    assert len(results) == 4 and all(r.error is None for r in results)
    study = journal_study(tmp_path / "results" / "t")
    outcome = {(t.params["training.lr"], t.state) for t in study.trials}
    assert outcome == {(2e-3, TrialState.COMPLETE), (1e12, TrialState.FAIL)}, outcome
