"""Atomic writing of tables (CSV, Markdown, LaTeX) and the HTML index."""
from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import pandas as pd

from .load import FACET_LABELS


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy as `mean ± std [CI]` in %, best values marked with `*`; the headline facets named by how
    they were chosen (on validation labels, or the authors' protocol on test labels)."""
    if table.empty:
        return table
    out = pd.DataFrame({
        "dataset": table["dataset"], "variant": table["variant"],
        "facet": table["facet"].map(lambda facet: FACET_LABELS.get(facet, facet)), "factor": table["factor"],
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


# Backslash first, so the backslashes added after it are not doubled; `&` before the entities that use it
_MARKDOWN_ESCAPES = [("\\", "\\\\"), ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("`", "\\`"),
                     ("*", "\\*"), ("_", "\\_"), ("[", "\\["), ("]", "\\]")]


def markdown_cell(value) -> str:
    """Text shown literally in a Markdown table cell: no HTML, emphasis, code, links or extra columns."""
    text = " ".join(str(value).split())  # a newline would end the table row
    for char, escaped in _MARKDOWN_ESCAPES:
        text = text.replace(char, escaped)
    return text


def to_markdown(frame: pd.DataFrame) -> str:
    """A pipe table; best values (marked ` *` by display_table) in bold, as in the LaTeX and HTML tables."""
    if frame.empty:
        return "_nothing to show_\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(markdown_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            text = str(row[c])
            best = text.endswith(" *")
            cells.append(f"**{markdown_cell(text.removesuffix(' *'))}**" if best else markdown_cell(text))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Replaced in one pass, so the braces of `\textbackslash{}` are not escaped again
_LATEX_ESCAPES = {"\\": "\\textbackslash{}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#", "±": "$\\pm$",
                  "$": "\\$", "{": "\\{", "}": "\\}", "^": "\\textasciicircum{}", "~": "\\textasciitilde{}"}


def to_latex(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "% nothing to show\n"
    escape = lambda s: re.sub(r"[\\_%&#±${}^~]", lambda m: _LATEX_ESCAPES[m.group()], str(s))  # noqa: E731
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
