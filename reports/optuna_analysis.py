"""Optuna searches: best trials, parameter importances, objective against each parameter, and whether
the label-free objective ranks models like supervised accuracy does (the paper's open limitation)."""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from harness.layout import JOURNAL_FILE  # noqa: E402

from . import writers  # noqa: E402
from .figures import save_atomic, slug  # noqa: E402
from .load import best_facet_columns, with_best_facet  # noqa: E402



def optuna_sections(paths: list[Path], runs: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sections = []
    for root in paths:
        journal = Path(root) / JOURNAL_FILE
        if not journal.exists():
            continue
        storage = JournalStorage(JournalFileBackend(str(journal)))
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            sections.append((f"Optuna search: {summary.study_name}", _study_html(study, root, runs, out)))
    return sections


def _study_html(study, root: Path, runs: pd.DataFrame, out: Path) -> str:
    import optuna

    frame = study.trials_dataframe(attrs=("number", "state", "values", "params"))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = pd.Series([t.state.name for t in study.trials]).value_counts()
    parts = [f"<p>{len(complete)} complete of {len(study.trials)} suggestions ({states.get('PRUNED', 0)} pruned, "
             f"{states.get('FAIL', 0)} failed); directions "
             f"{', '.join(d.name.lower() for d in study.directions)}. Open it with "
             f"<code>optuna-dashboard {html.escape(str(root / JOURNAL_FILE))}</code>.</p>"]
    best = study.best_trials if len(study.directions) > 1 else ([study.best_trial] if complete else [])
    parts.append("<h3>Best trials</h3>" + writers.to_html_table(pd.DataFrame(
        [{"number": t.number, "values": [round(v, 4) for v in t.values], **t.params} for t in best])))
    if len(complete) >= 3:
        try:
            importances = optuna.importance.get_param_importances(
                study, target=(lambda t: t.values[0]) if len(study.directions) > 1 else None)
            parts.append("<h3>Parameter importances (first objective)</h3>" + writers.to_html_table(
                pd.DataFrame({"parameter": list(importances), "importance": [round(v, 3) for v in importances.values()]})))
        except (RuntimeError, ValueError) as error:
            parts.append(f"<p>importances not available: {html.escape(str(error))}</p>")
    params = [c for c in frame.columns if c.startswith("params_")]
    value_column = "values_0" if "values_0" in frame else "value"
    if params and value_column in frame:
        fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3), squeeze=False)
        for ax, column in zip(axes[0], params):
            ax.scatter(frame[column], frame[value_column], s=12)
            ax.set_xlabel(column.removeprefix("params_"))
        axes[0, 0].set_ylabel("objective (first)")
        name = f"optuna_{slug(study.study_name)}_params.png"
        save_atomic(fig, out / name)
        parts.append(f"<p><img src='{name}'></p>")
    parts.append(_label_free_vs_supervised(runs, root))
    return "".join(parts)


def _label_free_vs_supervised(runs: pd.DataFrame, root: Path) -> str:
    """Spearman rank correlation across runs between test ELBO and best-facet accuracy per factor."""
    mine = runs[(runs["status"] == "completed") & runs["run_dir"].map(lambda d: str(d).startswith(str(root)))]
    mine = with_best_facet(mine)
    rows = []
    for column, factor in best_facet_columns(mine) if "elbo" in mine else []:
        pair = mine[["elbo", column]].dropna()
        if len(pair) >= 3:
            rho, p = spearmanr(pair["elbo"], pair[column])
            rows.append({"factor": factor, "runs": len(pair), "spearman rho": round(rho, 3),
                         "p-value": round(p, 4)})
    return ("<h3>Does the label-free objective pick good models?</h3><p class='note'>Rank correlation across "
            "runs between final test ELBO and best-facet accuracy. Near 1: choosing by ELBO also chooses by "
            "accuracy; near 0 or negative: it does not.</p>" + writers.to_html_table(pd.DataFrame(rows)))
