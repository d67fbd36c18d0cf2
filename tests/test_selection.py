"""Label-free model selection in reports: headline rows, seed agreement, criteria quality, on
hand-built run folders (no training)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.agreement import matched_facets, partition_agreement
from harness.layout import ASSIGNMENTS_FILE, TRIAL_META
from reports.load import load_runs, with_best_facet
from reports.selection import NO_ASSIGNMENTS, NO_VALIDATION, criterion_quality, seed_agreement, selection_criteria
from reports.stats import spearman_with_ci
from reports.summary import pairwise, summary_table
from reports.writers import display_table

N_POINTS = 2000


def write_run(root, trial, variant, seed, final, assignments=None, **training):
    """A completed run folder as the trainer writes it: config.yaml, result.json, maybe assignments.npz."""
    folder = root / trial / "runs" / f"seed{seed}"
    folder.mkdir(parents=True)
    config = {"dataset": {"name": "digits", "split_seed": 0, "validation_fraction": 0.1, "data_root": None,
                          "download": False},
              "model": {"name": "mfcvae", "architecture": "ladder", "latent_dims": [2, 2], "n_clusters": [3, 3],
                        "likelihood": "bernoulli"},
              "training": {"seed": seed, "lr": 0.001, "device": "cpu", "threads": 1, **training},
              "evaluation": {"every_n_epochs": 1, "batch_size": 2048}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (root / trial / TRIAL_META).write_text(json.dumps({"variant": variant}))
    (folder / "result.json").write_text(json.dumps({"status": "completed", "final": {"epoch": 2, **final},
                                                    "wall_time_s": 1.0, "likelihood": "bernoulli"}))
    if assignments is not None:
        np.savez(folder / ASSIGNMENTS_FILE, epoch=2, **assignments)
    return folder


def facets(split, *partitions):
    return {f"{split}_facet{j}": p for j, p in enumerate(partitions, start=1)}


def relabel(partition, rng):
    """The same partition with its clusters renumbered."""
    return rng.permutation(partition.max() + 1)[partition]


def test_seeds_agree_with_themselves_and_not_with_noise(tmp_path):
    rng = np.random.default_rng(0)
    one, two = rng.integers(0, 10, N_POINTS), rng.integers(0, 5, N_POINTS)
    for seed in (0, 1):  # the same partitions, numbered differently
        write_run(tmp_path, f"same{seed}", "same", seed, {},
                  facets("test", relabel(one, rng), relabel(two, rng)) | facets("val", one[:100], two[:100]))
    for seed in range(5):
        write_run(tmp_path, f"noise{seed}", "noise", seed, {},
                  facets("test", rng.integers(0, 10, N_POINTS), rng.integers(0, 5, N_POINTS)))
    write_run(tmp_path, "alone0", "alone", 0, {}, facets("test", one, two))  # one seed: nothing to compare
    agreement = seed_agreement(load_runs([tmp_path])[0]).set_index(["variant", "facet"])
    assert set(agreement.index.get_level_values("variant")) == {"same", "noise"}
    for facet in ("1", "2", "matched"):
        same = agreement.loc[("same", facet)]
        assert (same["seeds"], same["pairs"]) == (2, 1)
        assert same["ari_mean"] == pytest.approx(1.0) and same["nmi_mean"] == pytest.approx(1.0)
        noise = agreement.loc[("noise", facet)]
        assert (noise["seeds"], noise["pairs"]) == (5, 10)
        assert abs(noise["ari_mean"]) < 0.05 and noise["ari_ci_low"] <= noise["ari_mean"] <= noise["ari_ci_high"]
    # the same identical runs give the searcher's validation agreement of 1
    units = selection_criteria(load_runs([tmp_path])[0]).set_index("variant")
    assert units.loc["same", "seed agreement"] == pytest.approx(1.0)
    assert np.isnan(units.loc["noise", "seed agreement"])  # no validation assignments kept


def test_matched_facets_find_a_swapped_facet_order(tmp_path):
    rng = np.random.default_rng(1)
    one, two = rng.integers(0, 10, N_POINTS), rng.integers(0, 3, N_POINTS)
    pairing, ari = matched_facets([one, two], [relabel(two, rng), relabel(one, rng)])
    assert pairing == [(1, 2), (2, 1)] and ari[0, 1] == pytest.approx(1.0) and abs(ari[0, 0]) < 0.05
    write_run(tmp_path, "t0", "shared", 0, {}, facets("test", one, two))
    write_run(tmp_path, "t1", "shared", 1, {}, facets("test", relabel(two, rng), relabel(one, rng)))
    agreement = seed_agreement(load_runs([tmp_path])[0]).set_index("facet")
    assert abs(agreement.loc["1", "ari_mean"]) < 0.05 and abs(agreement.loc["2", "ari_mean"]) < 0.05
    assert agreement.loc["matched", "ari_mean"] == pytest.approx(1.0)
    assert agreement.loc["matched", "nmi_mean"] == pytest.approx(1.0)


def scores(kind, facet1, facet2, factor="digit"):
    return {f"{kind}/facet1/{factor}": facet1, f"{kind}/facet2/{factor}": facet2}


def test_headline_rows_choose_the_facet_on_validation_labels(tmp_path):
    # seed 0: validation prefers facet 1, the test labels facet 2; seed 1: a validation tie (lowest j wins)
    write_run(tmp_path, "a0", "A", 0, {**scores("val/acc", 0.9, 0.5), **scores("acc", 0.6, 0.8),
                                       **scores("nmi", 0.30, 0.50), **scores("ari", 0.20, 0.40)})
    write_run(tmp_path, "a1", "A", 1, {**scores("val/acc", 0.7, 0.7), **scores("acc", 0.5, 0.9),
                                       **scores("nmi", 0.10, 0.60), **scores("ari", 0.05, 0.45)})
    # a run without validation metrics: no "val" value, its authors'-protocol value still counts
    write_run(tmp_path, "a2", "A", 2, {**scores("acc", 0.4, 0.3), **scores("nmi", 0.2, 0.1),
                                       **scores("ari", 0.1, 0.0)})
    write_run(tmp_path, "b0", "B", 0, {**scores("val/acc", 0.2, 0.6), **scores("acc", 0.7, 0.65),
                                       **scores("nmi", 0.4, 0.35), **scores("ari", 0.3, 0.25)})
    runs = load_runs([tmp_path])[0]
    headline = with_best_facet(runs).set_index(["variant", "seed"])
    assert headline.loc[("A", 0), ["acc/facetval/digit", "acc/facetmax/digit"]].tolist() == [0.6, 0.8]
    assert headline.loc[("A", 0), ["nmi/facetval/digit", "ari/facetval/digit"]].tolist() == [0.30, 0.20]
    assert headline.loc[("A", 1), ["acc/facetval/digit", "acc/facetmax/digit"]].tolist() == [0.5, 0.9]
    assert np.isnan(headline.loc[("A", 2), "acc/facetval/digit"]) and headline.loc[("A", 2), "acc/facetmax/digit"] == 0.4
    assert headline.loc[("B", 0), ["acc/facetval/digit", "acc/facetmax/digit"]].tolist() == [0.65, 0.7]

    table = summary_table(runs).set_index(["variant", "facet"])
    assert table.loc[("A", "val"), "acc_mean"] == pytest.approx((0.6 + 0.5) / 2) and table.loc[("A", "val"), "n"] == 2
    assert table.loc[("A", "max"), "acc_mean"] == pytest.approx((0.8 + 0.9 + 0.4) / 3)
    assert table.loc[("A", "val"), "nmi_mean"] == pytest.approx((0.30 + 0.10) / 2)
    assert (table.loc[("A", "val"), "protocol"], table.loc[("A", "max"), "protocol"]) == ("validation",
                                                                                          "authors-protocol")
    assert table.loc[("A", "1"), "protocol"] == "fixed-facet"
    assert summary_table(runs)["facet"].tolist()[-4:] == ["val", "val", "max", "max"]  # honest row first
    shown = display_table(summary_table(runs))
    assert set(shown["facet"]) == {"1", "2", "chosen on val labels", "max on test labels (authors' protocol)"}
    pairs = pairwise(runs).set_index(["protocol", "A"])
    assert pairs.loc[("validation", "A"), "P(A>B)"] == 0.0  # 0.6 and 0.5 against B's 0.65
    assert pairs.loc[("authors-protocol", "A"), "P(A>B)"] == pytest.approx(2 / 3)  # 0.8, 0.9, 0.4 against 0.7


def write_units(root, slope):
    """Five units (training.lr) of two seeds whose val ELBO rises with their accuracy and whose
    silhouette falls with it; `slope` > 0 makes test accuracy rise with validation accuracy."""
    for k in range(5):
        for seed in (0, 1):
            final = {"val/elbo": -100.0 + 10 * k + seed, "val/silhouette/facet1": 0.5 - 0.1 * k,
                     "val/silhouette/facet2": None,  # fewer than two clusters used
                     **scores("val/acc", 0.5 + 0.1 * k + 0.01 * seed, 0.3),
                     **scores("acc", 0.45 + slope * k, 0.95),  # facet 2 wins on test labels, never chosen
                     **scores("nmi", 0.4, 0.8), **scores("ari", 0.3, 0.7)}
            # seed 1 ran elsewhere: still the same unit
            where = {"device": "cuda", "threads": 4} if seed else {}
            write_run(root, f"t{k}_{seed}", "grid", seed, final, lr=0.001 * (k + 1), **where)


def test_criteria_quality_monotone_and_reversed(tmp_path):
    write_units(tmp_path, slope=0.1)
    units = selection_criteria(load_runs([tmp_path])[0])
    assert len(units) == 5 and (units["seeds"] == 2).all()
    assert units["unit"].tolist() == [f"grid: training.lr={0.001 * (k + 1)}" for k in range(5)]
    assert units["val accuracy"].tolist() == pytest.approx([0.505, 0.605, 0.705, 0.805, 0.905])
    assert units["test accuracy"].tolist() == pytest.approx([0.45, 0.55, 0.65, 0.75, 0.85])  # facet 1's, not 0.95
    assert units["val ELBO"].tolist() == pytest.approx([-99.5, -89.5, -79.5, -69.5, -59.5])
    assert units["silhouette"].tolist() == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    quality = criterion_quality(units).set_index("criterion")
    for criterion in ("val ELBO", "val accuracy"):
        row = quality.loc[criterion]
        assert row["rho_val_acc"] == pytest.approx(1.0) and row["rho_test_acc"] == pytest.approx(1.0)
        assert row["rho_test_acc_ci_low"] == pytest.approx(1.0)  # every resample keeps the order
        assert row["regret_test_acc"] == pytest.approx(0.0) and (row["units"], row["of"]) == (5, 5)
    silhouette = quality.loc["silhouette"]
    assert silhouette["rho_val_acc"] == pytest.approx(-1.0) and silhouette["rho_test_acc"] == pytest.approx(-1.0)
    assert silhouette["regret_test_acc"] == pytest.approx(0.85 - 0.45)  # it picks the worst unit
    assert silhouette["ranked_first"] == "grid: training.lr=0.001"
    assert quality.loc["seed agreement", "units"] == 0  # no assignments: left out, and said so
    assert quality.loc["val accuracy", "labels used"] == "validation" and quality.loc["val ELBO", "labels used"] == "none"


def test_criteria_quality_when_validation_misleads(tmp_path):
    write_units(tmp_path, slope=-0.1)  # the test accuracy falls as validation accuracy rises
    quality = criterion_quality(selection_criteria(load_runs([tmp_path])[0])).set_index("criterion")
    row = quality.loc["val ELBO"]
    assert row["rho_val_acc"] == pytest.approx(1.0) and row["rho_test_acc"] == pytest.approx(-1.0)
    assert row["regret_test_acc"] == pytest.approx(0.45 - 0.05)  # best 0.45 (lr 0.001); picked 0.05 (lr 0.005)
    assert quality.loc["silhouette", "regret_test_acc"] == pytest.approx(0.0)


def test_regret_of_tied_first_places_is_their_mean():
    units = pd.DataFrame({"dataset": "digits", "factor": "digit", "unit": ["a", "b", "c"], "likelihood": "bernoulli",
                          "val ELBO": [-80.0, -90.0, -80.0], "seed agreement": np.nan, "silhouette": np.nan,
                          "val accuracy": [0.7, 0.8, 0.6], "test accuracy": [0.8, 0.9, 0.6]})
    row = criterion_quality(units).set_index("criterion").loc["val ELBO"]
    assert row["regret_test_acc"] == pytest.approx(0.9 - (0.8 + 0.6) / 2)  # a or c, picked at random
    assert row["ranked_first"] == "a; c"
    mixed = units.assign(likelihood=["bernoulli", "gaussian", "bernoulli"])  # ELBOs not comparable
    row = criterion_quality(mixed).set_index("criterion").loc["val ELBO"]
    assert row["units"] == 0 and "likelihoods" in row["note"]


def test_spearman_with_ci():
    rising = spearman_with_ci([1, 2, 3, 4, 5], [10, 20, 25, 40, 41])
    assert rising["n"] == 5 and [rising[k] for k in ("rho", "ci_low", "ci_high")] == pytest.approx([1.0, 1.0, 1.0])
    x = np.random.default_rng(0).normal(size=30)
    noisy = spearman_with_ci(x, x + np.random.default_rng(1).normal(size=30))
    assert noisy["ci_low"] < noisy["rho"] < noisy["ci_high"] and noisy == spearman_with_ci(
        x, x + np.random.default_rng(1).normal(size=30))  # seeded: the same CI again
    assert np.isnan(spearman_with_ci([1, 2], [1, 2])["rho"])  # two points are always +-1
    assert np.isnan(spearman_with_ci([1, 1, 1], [1, 2, 3])["rho"])
    assert spearman_with_ci([1, 2, np.nan, 3], [3, 2, 1, 1])["n"] == 3


def test_report_over_old_runs_says_what_is_missing(tmp_path):
    from reports.report import ReportOptions, build_report

    for seed in (0, 1):  # trained before validation splits and assignments
        write_run(tmp_path / "exp", f"t{seed}", "old", seed, {"elbo": -90.0, **scores("acc", 0.5, 0.6),
                                                             **scores("nmi", 0.5, 0.6), **scores("ari", 0.5, 0.6)})
    out = tmp_path / "report"
    index = build_report([tmp_path / "exp"], out, ReportOptions(lpips_samples=0, probes=False, run_figures=False),
                         log=lambda s: None)
    text = index.read_text()
    assert "Label-free model selection" in text and NO_VALIDATION in text and NO_ASSIGNMENTS in text
    assert "chosen on val labels" not in (out / "summary.md").read_text()
    assert NO_VALIDATION.replace("_", "\\_") in (out / "selection.md").read_text()
    unit = pd.read_csv(out / "selection.csv").iloc[0]  # one unit (two seeds), one factor
    assert (unit["unit"], unit["seeds"], unit["factor"]) == ("old", 2, "digit")
    assert unit[["val ELBO", "seed agreement", "silhouette", "val accuracy", "test accuracy"]].isna().all()


def test_report_with_validation_metrics(tmp_path):
    from reports.report import ReportOptions, build_report

    write_units(tmp_path / "exp", slope=0.1)
    out = tmp_path / "report"
    text = build_report([tmp_path / "exp"], out, ReportOptions(lpips_samples=0, probes=False, run_figures=False),
                        log=lambda s: None).read_text()
    assert NO_VALIDATION not in text and NO_ASSIGNMENTS in text
    assert "chosen on val labels" in text and "max on test labels (authors&#x27; protocol)" in text
    assert "chosen on val labels" in (out / "summary.md").read_text()
    criteria = pd.read_csv(out / "criteria.csv")
    assert set(criteria["criterion"]) == {"val ELBO", "seed agreement", "silhouette", "val accuracy"}
    markdown = (out / "selection.md").read_text()
    assert "## Do label-free criteria pick good models?" in markdown and "| val ELBO |" in markdown
    figure = next(out.glob("selection_*.png"))  # criteria against test accuracy, linked from selection.md
    assert f"]({figure.name})" in markdown and figure.name in text


def test_selection_imports_no_training_code():
    code = ("import sys, reports.selection, reports.summary, reports.writers; "
            "bad = [m for m in ('torch', 'harness.trial.config', 'harness.trial.single', 'models') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_single_facet_runs_get_no_headline_rows(tmp_path):
    """With one facet per run, "chosen on val labels" and "max on test labels" would repeat facet 1."""
    for seed, acc in ((0, 0.7), (1, 0.8)):
        write_run(tmp_path, f"a{seed}", "A", seed, {"val/acc/facet1/digit": acc, "acc/facet1/digit": acc,
                                                    "nmi/facet1/digit": 0.5, "ari/facet1/digit": 0.4})
    assert summary_table(load_runs([tmp_path])[0])["facet"].tolist() == ["1"]
    write_run(tmp_path, "b0", "B", 0, {**scores("val/acc", 0.2, 0.6), **scores("acc", 0.7, 0.65),
                                       **scores("nmi", 0.4, 0.35), **scores("ari", 0.3, 0.25)})
    table = summary_table(load_runs([tmp_path])[0])  # a two-facet variant beside it: both get headline rows
    assert set(table[table["variant"] == "A"]["facet"]) == {"1", "val", "max"}


def test_collapsed_partitions_do_not_agree():
    """sklearn scores two one-cluster partitions ARI = NMI = 1; seeds that all collapse found nothing."""
    rng = np.random.default_rng(0)
    collapsed, real = np.zeros(N_POINTS, int), rng.integers(0, 10, N_POINTS)
    assert partition_agreement(collapsed, collapsed) == {"ari": 0.0, "nmi": 0.0}
    assert partition_agreement(real, collapsed) == {"ari": 0.0, "nmi": 0.0}
    assert partition_agreement(real, relabel(real, rng))["ari"] == pytest.approx(1.0)


def test_a_repeated_suggestion_counts_each_seed_once(tmp_path):
    """Optuna may suggest the same values twice: both trials train seeds 0 and 1 into one unit, and the
    identical same-seed runs must not pair up as perfect agreement."""
    rng = np.random.default_rng(2)
    by_seed = {seed: rng.integers(0, 10, N_POINTS) for seed in (0, 1)}  # independent: agreement about 0
    for trial in ("s1", "s2"):
        for seed in (0, 1):
            write_run(tmp_path, f"{trial}_{seed}", "search", seed, {}, facets("test", by_seed[seed], by_seed[seed]))
    agreement = seed_agreement(load_runs([tmp_path])[0])
    assert (agreement["seeds"] == 2).all() and (agreement["pairs"] == 1).all()
    assert (agreement["ari_mean"].abs() < 0.05).all()


def test_regret_is_against_the_best_unit_even_one_the_criterion_cannot_rank():
    units = pd.DataFrame({"dataset": "d", "factor": "f", "likelihood": "bernoulli", "unit": ["a", "b", "c"],
                          "val ELBO": [1.0, 2.0, 3.0], "seed agreement": [0.9, 0.5, np.nan],
                          "silhouette": [0.1, 0.2, 0.3], "val accuracy": [0.5, 0.6, 0.9],
                          "test accuracy": [0.5, 0.6, 0.9]})
    quality = criterion_quality(units).set_index("criterion")
    agreement = quality.loc["seed agreement"]
    assert (agreement["units"], agreement["of"]) == (2, 3)  # unit c has no agreement (one seed, say)
    assert agreement["regret_test_acc"] == pytest.approx(0.9 - 0.5)  # against c, the best available


def test_pairwise_mean_resamples_seeds_not_pairs():
    from reports.stats import pairwise_mean

    # seed 0 agrees perfectly with the four others, which do not agree at all with each other
    scores = np.zeros((5, 5))
    scores[0, :] = scores[:, 0] = 1.0
    summary = pairwise_mean(scores)
    assert summary["mean"] == pytest.approx(4 / 10)
    # a third of the resamples miss seed 0 (0.8^5): their mean is 0, which resampling pairs would never give
    assert summary["ci_low"] == pytest.approx(0.0) and summary["ci_high"] > 0.6
    assert pairwise_mean(scores) == summary  # seeded
    few = pairwise_mean(scores[:3, :3])
    assert few["mean"] == pytest.approx(2 / 3) and np.isnan(few["ci_low"]) and np.isnan(few["ci_high"])


def test_seeds_written_before_and_after_new_config_keys_stay_one_unit():
    """A seed of an old sweep written today (a resume, a retry, a grid point not yet started) records
    model.data_init_scale 1.0 and training.precision fp32; its siblings' config.yaml, written before
    those keys existed, lacks them. Reports read both as one configuration, and a real difference
    (0.1, the new default) as another."""
    from reports.selection import _unit_config

    old = {"dataset": {"name": "digits", "validation_fraction": 0.1},
           "model": {"name": "mfcvae", "init": "data"}, "training": {"seed": 0, "lr": 0.001}}
    today = json.loads(json.dumps(old))
    today["model"]["data_init_scale"] = 1.0
    today["training"].update(seed=1, precision="fp32")
    assert _unit_config(json.dumps(old)) == _unit_config(json.dumps(today))
    today["model"]["data_init_scale"] = 0.1
    assert _unit_config(json.dumps(old)) != _unit_config(json.dumps(today))
