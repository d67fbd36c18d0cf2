"""The README's results table is made from the committed studies' CSVs, and says so only while true."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from reports.results_table import END, START, ResultsTableError, table_markdown, update_readme

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_table_is_the_one_the_published_csvs_give():
    readme = ROOT / "README.md"
    before = readme.read_bytes()
    assert update_readme(readme, ROOT / "reports" / "published", check=True), (
        "README.md's results table differs from reports/published: run `mfcbench results-table`")
    assert readme.read_bytes() == before


def test_every_committed_study_has_its_per_run_rows():
    published = ROOT / "reports" / "published"
    studies = [d for d in published.iterdir() if d.is_dir()]
    assert studies
    for study in studies:
        assert (study / "runs.csv").exists() and (study / "README.md").exists(), study.name


def study(tmp_path: Path, accs: list[float], spec: str) -> Path:
    published = tmp_path / "published"
    (published / "s").mkdir(parents=True, exist_ok=True)
    lines = ["variant,seed,status,acc/facet1/digit"]
    lines += [f"a,{seed},completed,{acc}" for seed, acc in enumerate(accs)]
    lines += ["a,9,failed,", "b,0,completed,0.99"]  # a failed run and another variant: neither counts
    (published / "s" / "runs.csv").write_text("\n".join(lines) + "\n")
    (published / "s" / "agreement.csv").write_text(
        "variant,facet,seeds,ari_mean,ari_ci_low,ari_ci_high\na,1,5,0.5,0.4,0.6\nb,1,3,0.7,,\n")
    (published / "results.yaml").write_text(spec)
    return published


SPEC = """rows:
  - {study: s, data: digits, model: A, facet: "1", factor: digit, where: {variant: a}, metric: acc/facet1/digit,
     paper: {dataset: mnist, factor: digit, data: MNIST}, other: {value: "84.3", citation: "DEC, Xie et al. 2016"}}
  - {study: s, data: digits, model: A, facet: matched, file: agreement.csv, where: {variant: a},
     value: ari_mean, ci: [ari_ci_low, ari_ci_high], n: seeds, scale: raw}
  - {study: s, data: digits, model: B, file: agreement.csv, where: {variant: b},
     value: ari_mean, ci: [ari_ci_low, ari_ci_high], n: seeds, scale: raw}
"""


def test_cells_are_computed_from_the_rows_and_the_readme_block_is_replaced(tmp_path):
    published = study(tmp_path, [0.6, 0.7, 0.8], SPEC)
    table = table_markdown(published)
    rows = table.splitlines()
    # mean and sample std (ddof=1) over the 3 completed runs of variant a, in %: 70.0 ± 10.0
    assert "| facet 1: digit | 70.0 ± 10.0 (n = 3) | 92.02 ± 3.18 (MNIST, Table 2) | 84.3 (DEC, Xie et al. 2016) |" \
        in rows[2]
    assert "| 0.50 [0.40, 0.60] (n = 5) |" in rows[3]
    assert "| 0.70 [n too small for a CI] (n = 3) |" in rows[4]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\nafter\n")
    assert not update_readme(readme, published, check=True)
    assert "old table" in readme.read_text()  # a check never writes
    assert not update_readme(readme, published)
    assert readme.read_text() == f"intro\n{START}\n{table}{END}\nafter\n"
    assert update_readme(readme, published, check=True)
    # one run's number changes in the CSV: the README no longer matches
    study(tmp_path, [0.6, 0.7, 0.9], SPEC)
    assert not update_readme(readme, published, check=True)


@pytest.mark.parametrize("spec, message", [
    ("rows:\n  - {study: s, data: d, model: m, where: {variant: a}}\n", "either `metric`"),
    ("rows:\n  - {study: s, data: d, model: m, where: {colour: a}, metric: acc/facet1/digit}\n", "no column 'colour'"),
    ("rows:\n  - {study: t, data: d, model: m, metric: acc/facet1/digit}\n", "t/runs.csv: no such file"),
    ("rows:\n  - {study: s, data: d, model: m, where: {variant: c}, metric: acc/facet1/digit}\n",
     "no completed run"),
    ("rows:\n  - {study: s, data: d, model: m, metric: acc/facet1/digit, paper: {dataset: x, factor: y, data: X}}\n",
     "no MFCVAE row for x / y"),
    ("rows:\n  - {study: s, data: d, model: m, metric: acc, colour: red}\n", "colour"),
])
def test_a_bad_row_is_named_and_the_readme_left_alone(tmp_path, spec, message):
    published = study(tmp_path, [0.6, 0.7], spec)
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\nold\n{END}\n")
    before = readme.read_bytes()
    with pytest.raises(ResultsTableError, match=message):
        update_readme(readme, published)
    assert readme.read_bytes() == before


def test_the_command_checks_and_remakes(tmp_path):
    published = study(tmp_path, [0.6, 0.7], SPEC)
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\nold\n{END}\n")
    command = [sys.executable, "-m", "harness.cli", "results-table", "--readme", str(readme),
               "--published", str(published)]
    stale = subprocess.run(command + ["--check"], capture_output=True, text=True, cwd=ROOT)
    assert stale.returncode == 1 and "mfcbench results-table" in stale.stderr
    assert subprocess.run(command, capture_output=True, text=True, cwd=ROOT).returncode == 0
    assert subprocess.run(command + ["--check"], capture_output=True, text=True, cwd=ROOT).returncode == 0


INIT_FIX = "4eb1aca"  # model.data_init_scale 0.1: runs with data-dependent init from before it measured a defect


def test_no_published_run_with_data_init_trained_before_the_init_fix():
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{INIT_FIX}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip("not a git checkout with the project's history")
    import pandas as pd

    checked = 0
    for runs_csv in (ROOT / "reports" / "published").glob("*/runs.csv"):
        runs = pd.read_csv(runs_csv)
        if "model.init" not in runs.columns:
            continue
        for commit in set(runs.loc[runs["model.init"] == "data", "commit"].dropna()):
            assert "+dirty" not in commit, f"{runs_csv}: a run trained on uncommitted code ({commit})"
            newer = subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", INIT_FIX, commit],
                                   capture_output=True)
            assert newer.returncode == 0, f"{runs_csv}: runs with model.init data trained on {commit}, before {INIT_FIX}"
            checked += 1
    assert checked  # the shapes studies train with data-dependent init


def runs_csv(folder: Path, rows: list[tuple]) -> Path:
    """A study folder whose runs.csv has (variant, seed, train_images or '', status, accuracy) rows."""
    folder.mkdir(parents=True)
    lines = ["variant,seed,dataset.name,dataset.train_images,status,acc/facet1/label"]
    lines += [f"{v},{seed},fashion-mnist,{images},{status},{acc}" for v, seed, images, status, acc in rows]
    (folder / "runs.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_compare_pairs_variants_on_the_same_data_with_seed_by_seed_differences(tmp_path):
    from reports.compare import compare_studies

    new = runs_csv(tmp_path / "new", [("a", 0, "", "completed", 0.60), ("a", 1, "", "completed", 0.70),
                                      ("a", 2, "", "failed", ""), ("a5k", 0, 5000, "completed", 0.90)])
    old = runs_csv(tmp_path / "old", [("b", 0, "", "completed", 0.50), ("b", 1, "", "completed", 0.75),
                                      ("b", 3, "", "completed", 0.55), ("b5k", 0, 5000, "completed", 0.10)])
    table = compare_studies(new, [old]).set_index(["this_study", "against"])
    assert set(table.index) == {("new/a", "old/b"), ("new/a5k", "old/b5k")}  # whole set never against a subset
    row = table.loc[("new/a", "old/b")]
    assert (row["n"], row["against_n"]) == (2, 3)  # the failed run does not count
    assert row["mean"] == 65.0 and row["against_mean"] == 60.0 and row["difference"] == 5.0
    assert row["p_this_better"] == round(4 / 6, 2)  # 60 beats 50 and 55; 70 beats all three
    assert row["paired_n"] == 2 and row["paired_difference"] == 2.5  # seeds 0 and 1: +10 and -5


def test_compare_by_default_reads_each_runs_one_facet1_accuracy_and_refuses_two(tmp_path):
    from reports.compare import CompareError, compare_studies

    def study(name, rows):
        lines = ["variant,seed,dataset.name,dataset.train_images,status,acc/facet1/label,acc/facet1/digit"]
        (tmp_path / name).mkdir()
        (tmp_path / name / "runs.csv").write_text("\n".join(lines + rows) + "\n")
        return tmp_path / name

    new = study("new", ["f,0,fashion-mnist,,completed,0.60,", "d,0,digits,,completed,,0.90"])
    old = study("old", ["f,0,fashion-mnist,,completed,0.50,", "d,0,digits,,completed,,0.80"])
    table = compare_studies(new, [old]).set_index("this_study")
    assert table.loc["new/f", "difference"] == 10.0 and table.loc["new/d", "difference"] == 10.0
    assert compare_studies(new, [old], metric="acc/facet1/label")["this_study"].tolist() == ["new/f"]
    both = study("both", ["f,0,fashion-mnist,,completed,0.60,0.70"])
    with pytest.raises(CompareError, match=r"several labels \(acc/facet1/label, acc/facet1/digit\); name one"):
        compare_studies(both, [old])


def test_compare_reproduces_a_committed_studys_table():
    from reports.compare import compare_studies

    published = ROOT / "reports" / "published"
    table = compare_studies(published / "defaults-vade-steps-5k",
                            [published / "defaults", published / "defaults-mfcvae-init"])
    committed = pd.read_csv(published / "defaults-vade-steps-5k" / "versus-earlier.csv")
    merged = committed.merge(table, on=["this_study", "against"], suffixes=("", "_now"))
    assert len(merged) == len(committed) == 4
    for column in ["n", "mean", "std", "against_mean", "difference", "p_this_better"]:
        assert (merged[column] == merged[f"{column}_now"]).all(), column


def test_compare_refuses_a_missing_metric_or_out_folder_and_writes_nothing(tmp_path):
    study = runs_csv(tmp_path / "s", [("a", 0, "", "completed", 0.6)])
    before = sorted(tmp_path.rglob("*"))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(study), "--against", str(study),
                          "--metric", "acc/facet1/shape"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "no column 'acc/facet1/shape'" in out.stderr and "acc/facet1/label" in out.stderr
    out = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(study), "--against", str(study),
                          "--out", str(tmp_path / "missing" / "v.csv")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert sorted(tmp_path.rglob("*")) == before
