"""Atomic writing of tables (CSV, Markdown, LaTeX) and the HTML index."""
from __future__ import annotations

import html
import math
import os
from pathlib import Path

import pandas as pd


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy as `mean ± std [CI]` in %, best values marked with `*`."""
    if table.empty:
        return table
    out = pd.DataFrame({
        "dataset": table["dataset"], "variant": table["variant"], "facet": table["facet"], "factor": table["factor"],
        "n": table.get("n"), "failed": table.get("n_failed"), "incomplete": table.get("n_incomplete"),
    })
    best = table.get("best", pd.Series([""] * len(table))).fillna("")
    acc = []
    for _, row in table.iterrows():
        text = _pct(row["acc_mean"])
        if isinstance(row.get("acc_std"), float) and not math.isnan(row["acc_std"]):
            text += f" ± {_pct(row['acc_std'])}"
        if "acc_ci_low" in row and isinstance(row["acc_ci_low"], float) and not math.isnan(row["acc_ci_low"]):
            text += f" [{_pct(row['acc_ci_low'])}, {_pct(row['acc_ci_high'])}]"
        acc.append(text)
    out["accuracy % (mean ± std [95% CI])"] = [t + (" *" if "acc" in b.split() else "") for t, b in zip(acc, best)]
    for name, column in (("IQM %", "acc_iqm"), ("min %", "acc_min"), ("max %", "acc_max")):
        out[name] = table[column].map(_pct) if column in table else ""
    for name, column in (("NMI", "nmi_mean"), ("ARI", "ari_mean"), ("test ELBO", "elbo_mean")):
        values = table[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}" if name != "test ELBO" else f"{v:.1f}") \
            if column in table else ""
        key = column.removesuffix("_mean")
        out[name] = [v + (" *" if key in b.split() else "") for v, b in zip(values, best)]
    out["wall time s"] = table["wall_time_s_mean"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}") \
        if "wall_time_s_mean" in table else ""
    out["source"] = table["source"]
    return out.fillna("")


def to_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_nothing to show_\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "% nothing to show\n"
    escape = lambda s: str(s).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%") \
        .replace("&", "\\&").replace("#", "\\#").replace("±", "$\\pm$")  # noqa: E731
    cols = list(frame.columns)
    lines = ["\\begin{tabular}{" + "l" * len(cols) + "}", "\\toprule",
             " & ".join(escape(c) for c in cols) + " \\\\", "\\midrule"]
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            text = escape(row[c])
            cells.append(f"\\textbf{{{text.removesuffix(' *')}}}" if text.endswith(" *") else text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>nothing to show</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            text = html.escape(str(row[c]))
            cells.append(f"<td><b>{text.removesuffix(' *')}</b></td>" if text.endswith(" *") else f"<td>{text}</td>")
        cls = ' class="reported"' if str(row.get("source", "")).startswith("reported") else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f0f0f0}tr.reported{color:#666;font-style:italic}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:13px}"""


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{content}\n" for h, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}</body></html>\n")
