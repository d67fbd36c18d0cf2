"""`mfcbench report`: finished sweeps and runs -> tables, figures and an HTML index in one folder."""
from __future__ import annotations

import html
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from . import figures, selection, writers
from .load import REPORT_MARKER, load_runs
from .optuna_analysis import optuna_sections
from .summary import failures, pairwise, reference_rows, summary_table


class ReportError(ValueError):
    """Bad report input or output folder, found before anything is read or written."""


@dataclass
class ReportOptions:
    lpips_samples: int = 1000  # generated and real images per run; 0 skips LPIPS
    sample_temperature: float = 1.0  # scales prior covariances when sampling (E.6: 0.3 for 3DShapes/SVHN)
    probes: bool = True
    run_figures: bool = True
    probe_max_train: int = 10000

    def __post_init__(self) -> None:
        # Checked here, not only in the CLI, so `mfcbench demo` and library callers fail before any work too
        if self.lpips_samples < 0 or self.lpips_samples == 1:
            raise ReportError(f"--lpips-samples must be 0 (skip LPIPS) or >= 2 (LPIPS compares pairs of distinct "
                              f"images), got {self.lpips_samples}")
        if not (math.isfinite(self.sample_temperature) and self.sample_temperature > 0):
            raise ReportError(f"--sample-temperature must be a finite number > 0, got {self.sample_temperature}")
        if self.probe_max_train < 1:
            raise ReportError(f"probe_max_train must be >= 1, got {self.probe_max_train}")


def _is_report_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / REPORT_MARKER).read_text()).get("mfcbench_report") == 1
    except (OSError, ValueError, AttributeError):
        return False


def _check_out_folder(out: Path) -> None:
    """Refuse to replace anything but a missing or empty folder or one an earlier report wrote."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder; give a new folder for the report")
    if out.is_dir() and any(out.iterdir()) and not _is_report_folder(out):
        raise ReportError(
            f"--out {out} is not empty and is not a report folder (it holds no valid {REPORT_MARKER}); refusing "
            "to replace it, which would delete its files. Give a new or empty folder, or, if it is a report of "
            "an older mfcbench, delete it yourself first")


def check_report_paths(paths: list[str | Path], out: str | Path) -> tuple[list[Path], Path]:
    """(resolved inputs, resolved out), or ReportError naming what is wrong; reads and writes nothing else.

    The report replaces `out` as a whole, so `out` must not be an input or hold one (an input inside
    `out` would be deleted with it), and must not be a folder of other files.
    """
    if not paths:
        raise ReportError("give at least one experiment or run folder to report")
    roots = [Path(p).expanduser().resolve() for p in paths]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        raise ReportError(f"input path(s) not found: {', '.join(missing)}")
    files = [str(r) for r in roots if not r.is_dir()]
    if files:
        raise ReportError(f"input path(s) are files, not experiment or run folders: {', '.join(files)}")
    out = Path(out).expanduser().resolve()
    for root in roots:
        if root == out:
            raise ReportError(f"--out {out} is an input; writing the report there would replace the runs. "
                              f"Give another folder, e.g. {out / 'report'}")
        if root.is_relative_to(out):
            raise ReportError(f"--out {out} contains the input {root}; writing the report there would delete it. "
                              "Give a folder that holds no input, e.g. one inside the input")
    _check_out_folder(out)
    return roots, out


def build_report(paths: list[str | Path], out: str | Path, options: ReportOptions | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Write summary.{csv,md,tex}, selection.md, their CSVs, figures and index.html into `out`; returns
    the index path.

    Inputs and `out` are checked first (`check_report_paths`). Everything is written into a
    temporary folder next to `out`, marked with `mfcbench-report.json`, and swapped into place at
    the end, so an interrupted report never leaves half-written files behind.
    """
    options = options or ReportOptions()
    roots, out = check_report_paths(paths, out)
    runs, evaluations = load_runs(roots)
    if runs.empty:
        raise ReportError(f"no runs found under {', '.join(map(str, roots))} (looked for folders with "
                          "config.yaml and result.json or metrics.jsonl)")
    counts = runs["status"].value_counts()
    log(f"read {len(runs)} runs ({counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
        f"{counts.get('stopped early', 0)} stopped early, {counts.get('incomplete', 0)} incomplete) and "
        f"{len(evaluations)} evaluations")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        # The marker goes in first: a staging folder inside an input is then skipped by load_runs too
        writers.write_text_atomic(staging / REPORT_MARKER, json.dumps(
            {"mfcbench_report": 1, "inputs": [str(r) for r in roots],
             "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1) + "\n")
        sections = _write_everything(roots, runs, evaluations, staging, options, log)
        writers.write_text_atomic(staging / "index.html", writers.html_page("mfcbench report", sections))
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "index.html"


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.replace(out)
        return
    _check_out_folder(out)  # again: the report took a while, and someone may have put files there meanwhile
    # A fresh, uniquely named holder: a fixed name could belong to someone else's folder
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
    out.replace(old / "previous")
    try:
        staging.replace(out)
    except OSError:
        (old / "previous").replace(out)  # put the previous report back
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_everything(roots: list[Path], runs: pd.DataFrame, evaluations: pd.DataFrame, out: Path,
                      options: ReportOptions, log) -> list[tuple[str, str]]:
    table = summary_table(runs)
    reported = reference_rows(table)
    full = pd.concat([table, reported], ignore_index=True) if not reported.empty else table
    full.to_csv(out / "summary.csv", index=False)
    shown = writers.display_table(full)
    writers.write_text_atomic(out / "summary.md", writers.to_markdown(shown))
    writers.write_text_atomic(out / "summary.tex", writers.to_latex(shown))
    runs.to_csv(out / "runs.csv", index=False)
    evaluations.to_csv(out / "evaluations.csv", index=False)
    pairs = pairwise(runs)
    pairs.to_csv(out / "pairwise.csv", index=False)
    failed = failures(runs)
    failed.to_csv(out / "failures.csv", index=False)

    images = figures.stability_curves(evaluations, out) + figures.best_of_n_curves(runs, out)
    n_cells = full.groupby(["dataset", "variant"]).size() if not full.empty else []
    sections = [
        ("Clustering accuracy", "<p class='note'>One row per dataset, variant, facet and factor over completed "
         "runs: mean ± sample std (ddof=1) and a 95% percentile-bootstrap CI of the mean; IQM is the "
         "interquartile mean. Two headline rows per factor report test metrics of one facet per run, chosen in "
         "two ways. <b>chosen on val labels</b>: the facet with the best accuracy on the validation images "
         "(carved from the training set), so the test labels play no part in the choice; NMI and ARI are that "
         "facet's. <b>max on test labels (authors' protocol)</b>: each run's best facet on the test labels, as "
         "the paper reports; optimistic, since the labels that score the facet also choose it. Runs trained "
         "without a validation split have only the second. Grey rows are numbers reported in the paper, all "
         "under the authors' protocol. In summary.csv, <code>facet</code> is <code>val</code> or "
         "<code>max</code> and <code>protocol</code> says which (validation, authors-protocol). <b>Bold</b>: "
         f"best value in its (dataset, facet, factor) block. Cells: {len(n_cells)}; n per cell is shown.</p>"
         + writers.to_html_table(shown)),
        ("Pairwise comparison", "<p class='note'>P(A &gt; B): the probability that a random run of A beats a "
         "random run of B on headline accuracy (ties count half), with a 95% bootstrap CI, once per protocol: "
         "<code>validation</code> (facet chosen on validation labels) and <code>authors-protocol</code> "
         "(max over facets on test labels).</p>" + writers.to_html_table(pairs.round(3))),
        _selection_section(runs, out),
    ]
    sections += _extra_sections(runs, out, options, log)
    sections += optuna_sections(roots, out)
    sections.append(("Figures", _progressive_elbo_note(evaluations) + ("".join(
        f"<p><img src='{html.escape(p.name)}' alt='{html.escape(p.stem)}'></p>" for p in sorted(images))
        or "<p><em>no evaluations yet</em></p>")))
    n_by_status = failed["status"].value_counts() if not failed.empty else {}
    sections.append(("Failed, stopped and incomplete runs",
                     f"<p>{n_by_status.get('failed', 0)} failed run(s), {n_by_status.get('stopped early', 0)} "
                     f"stopped early by the scheduler and {n_by_status.get('incomplete', 0)} incomplete run(s), "
                     "not counted in the statistics.</p>" + writers.to_html_table(failed)))
    return sections


def _progressive_elbo_note(evaluations: pd.DataFrame) -> str:
    """A note beside the curves over epochs where some run trained progressively (appendix D.3): its
    evaluated ELBO is not the objective of the step, and reads as a spike at step boundaries."""
    if "progressive_step" not in evaluations or not (evaluations["progressive_step"] > 1).any():
        return ""
    return ("<p class='note'>ELBO over epochs (<code>elbo</code>, <code>val/elbo</code> in evaluations.csv and "
            "TensorBoard) is evaluated with every facet fully on: during progressive step s &lt; J it counts facets "
            "not yet trained or still fading in, so it reads far below the objective and jumps at step "
            "boundaries; within a step, compare <code>elbo/training_alphas</code> "
            "(<code>val/elbo/training_alphas</code>), the ELBO at the training alphas, which is what step s "
            "optimises.</p>")


def _interval(value, low, high, scale: float = 1.0, digits: int = 3) -> str:
    """`value [low, high]` for display; blank for NaN, no interval where the CI is NaN."""
    if pd.isna(value):
        return ""
    text = f"{scale * value:.{digits}f}"
    return text if pd.isna(low) else f"{text} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def _selection_section(runs: pd.DataFrame, out: Path) -> tuple[str, str]:
    """Write agreement.csv, selection.csv, criteria.csv and selection.md; the HTML section."""
    agreement = selection.seed_agreement(runs)
    units = selection.selection_criteria(runs)
    quality = selection.criterion_quality(units)
    agreement.to_csv(out / "agreement.csv", index=False)
    units.to_csv(out / "selection.csv", index=False)
    quality.to_csv(out / "criteria.csv", index=False)

    if quality.empty:
        quality_shown = None
    else:
        quality_shown = pd.DataFrame({
            "dataset": quality["dataset"], "factor": quality["factor"], "criterion": quality["criterion"],
            "labels used": quality["labels used"],
            "units used": quality["units"].astype(str) + " of " + quality["of"].astype(str),
            "Spearman vs val accuracy [95% CI]": [_interval(*r) for r in quality[
                ["rho_val_acc", "rho_val_acc_ci_low", "rho_val_acc_ci_high"]].itertuples(index=False)],
            "Spearman vs test accuracy [95% CI]": [_interval(*r) for r in quality[
                ["rho_test_acc", "rho_test_acc_ci_low", "rho_test_acc_ci_high"]].itertuples(index=False)],
            "regret, test accuracy % points": [_interval(v, None, None, 100, 2) for v in quality["regret_test_acc"]],
            "ranked first": quality["ranked_first"], "note": quality["note"]})
    units_shown = units.drop(columns=["experiment"]).round(4) if not units.empty else units
    agreement_shown = None if agreement.empty else pd.DataFrame({
        "dataset": agreement["dataset"], "unit": agreement["unit"], "facet": agreement["facet"],
        "seeds": agreement["seeds"], "pairs": agreement["pairs"],
        **{f"{metric.upper()} [95% CI]": [_interval(*r) for r in agreement[
            [f"{metric}_mean", f"{metric}_ci_low", f"{metric}_ci_high"]].itertuples(index=False)]
           for metric in ("ari", "nmi")}})

    validation = selection.has_validation_metrics(runs)
    quality_note = (
        "A unit is the runs of one config that differ only in their seed (and device, threads, data folder), "
        "labelled by its variant and the config keys that differ between units of that variant. Each "
        "label-free criterion ranks the units of a dataset (higher is better): <b>val ELBO</b>, the mean over "
        "seeds of the validation ELBO; <b>seed agreement</b>, the mean pairwise ARI of the seeds' validation "
        "cluster assignments (facet j against facet j, averaged over facets; what a search's "
        "<code>val/agreement</code> objective computes); <b>silhouette</b>, the mean over seeds and facets of "
        "the silhouette of each facet's posterior means under its own clusters. Spearman's rho against the "
        "units' val accuracy (mean over seeds of the best facet's validation accuracy) and test accuracy "
        "(of the facet chosen on validation labels), each with a 95% bootstrap CI over units; regret: the best "
        "test accuracy among all units with both accuracies minus that of the unit the criterion ranks first (ties: their "
        "mean). <b>val accuracy</b> is a reference row: selection on validation labels. Units missing a "
        "criterion are left out of its row (units used of those with both accuracies). Numbers: criteria.csv "
        "and, per unit, selection.csv.")
    agreement_note = (
        "Do seeds of one config find the same partition of the test images? Mean pairwise ARI and NMI over "
        "the unit's seed pairs with a 95% bootstrap CI that resamples seeds (pairs sharing a seed are not independent) (1: the same clusters up to their numbering, "
        "0: no more alike than chance). Facet j is compared with facet j, because the ladder architecture "
        "ties facet j to depth j. <b>matched</b>: per seed pair, the facets paired by the Hungarian algorithm on "
        "their ARI and the mean over those facet pairs, then averaged over seed pairs; the comparison that fits "
        "a shared architecture, whose facets have no fixed order (for the ladder, compare it with the mean of "
        "the aligned rows: higher means the seeds put the same clusters at different depths). "
        "Numbers: agreement.csv.")

    html_parts, markdown = [], ["# Label-free model selection\n"]
    for title, note, shown, missing in (
            ("Do label-free criteria pick good models?", quality_note, quality_shown,
             selection.NO_VALIDATION if not validation else "no unit has both validation and test accuracy"),
            ("Seed agreement", agreement_note, agreement_shown, selection.NO_ASSIGNMENTS)):
        html_parts.append(f"<h3>{title}</h3><p class='note'>{note}</p>" + (
            writers.to_html_table(shown) if shown is not None else f"<p><em>{html.escape(missing)}</em></p>"))
        plain_note = re.sub(r"<[^>]+>", "", note)  # the note's tags are only emphasis and code
        markdown.append(f"## {title}\n\n{plain_note}\n\n" + (
            writers.to_markdown(shown) if shown is not None else writers.markdown_cell(missing) + "\n"))
    images = figures.selection_scatter(units, [*selection.CRITERIA, selection.VAL_ACCURACY], selection.TEST_ACCURACY,
                                       out)
    html_parts += [f"<p><img src='{html.escape(p.name)}' alt='{html.escape(p.stem)}'></p>" for p in images]
    markdown += [f"![{p.stem}]({p.name})\n" for p in images]
    html_parts.append("<h3>Units</h3><p class='note'>One row per unit and factor: the criteria and accuracies "
                      "above (accuracies in [0, 1]).</p>" + writers.to_html_table(units_shown))
    writers.write_text_atomic(out / "selection.md", "\n".join(markdown))
    return "Label-free model selection", "".join(html_parts)


def _extra_sections(runs, out, options, log) -> list[tuple[str, str]]:
    """Sections that need trained models; each is skipped when it does not apply."""
    from . import model_analyses
    from .lpips_weights import LpipsWeightsMissing

    sections = []
    if options.lpips_samples:
        try:
            table = model_analyses.lpips_table(runs, options.lpips_samples, options.sample_temperature, log=log)
            table.to_csv(out / "lpips.csv", index=False)
            sections.append(("LPIPS diversity", "<p class='note'>Mean AlexNet LPIPS over random pairs of "
                             f"{options.lpips_samples} generated samples per run (section 4.4 sampling, temperature "
                             f"{options.sample_temperature:g}), and of real test images; grey repeated to 3 channels and upsampled to 32x32. "
                             "Higher is more diverse.</p>" + writers.to_html_table(table.round(4))))
        except LpipsWeightsMissing as error:
            log(f"LPIPS skipped: {error}")
            sections.append(("LPIPS diversity", f"<p>skipped: {html.escape(str(error))}</p>"))
    if options.probes:
        table = model_analyses.probe_table(runs, options.probe_max_train, log=log)
        table.to_csv(out / "probes.csv", index=False)
        sections.append(("Disentanglement probes", "<p class='note'>scikit-learn MLPClassifier (default "
                         "settings) trained on train-set latents sampled from q(z_j|x), test accuracy per factor, "
                         "mean ± std over runs (Table 1).</p>" + writers.to_html_table(table.round(4))))
    if options.run_figures:
        images = model_analyses.run_figures(runs, out, log=log)
        sections.append(("Clusters, samples and swaps", f"<p class='note'>From one run per variant: "
                         f"{model_analyses.FIGURE_RULE}. Clusters sorted by mean assignment probability over "
                         "the test set, inputs by their assignment probability (Fig. 4); samples per cluster "
                         "(Fig. 6); facet swaps (Fig. 5).</p>" + "".join(
                             f"<p><img src='{html.escape(p.name)}'></p>" for p in images)))
    return sections
