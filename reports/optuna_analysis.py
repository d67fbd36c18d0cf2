"""Optuna searches: best trials, parameter importances and objective against each parameter. Whether
label-free objectives rank models as accuracy does is the report's "Label-free model selection"
section (reports.selection), over every unit of every study."""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.layout import JOURNAL_FILE  # noqa: E402

from . import writers  # noqa: E402
from .figures import save_atomic, slug  # noqa: E402


def optuna_sections(paths: list[Path], out: Path) -> list[tuple[str, str]]:
    """One section per Optuna study in the experiments' journals; optuna is imported only if one exists."""
    journals = [(Path(root), Path(root) / JOURNAL_FILE) for root in paths if (Path(root) / JOURNAL_FILE).exists()]
    if not journals:
        return []
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sections = []
    for root, journal in journals:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            sections.append((f"Optuna search: {summary.study_name}", _study_html(study, root, out)))
    return sections


def _study_html(study, root: Path, out: Path) -> str:
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
    return "".join(parts)
