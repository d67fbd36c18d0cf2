"""The README's results table, made from the committed studies' CSVs.

`reports/published/results.yaml` says which rows the table shows; every number in it is computed
here from a study's per-run CSV (`runs.csv`: mean ± std over the matching completed runs) or read
from one row of a study's table (`agreement.csv`, `criteria.csv`: a value with its CI). The paper's
numbers come from `reports.reference`. Three kinds of number sit in separate columns: measured here
(mfcbench, or a peer's code run here), this paper, and other published numbers with their citation.

`mfcbench results-table` writes the table into the README between two markers; `--check` (and the
test suite) fails when the README and the CSVs disagree.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from . import reference

START = "<!-- results table: made by `mfcbench results-table` from reports/published; edit results.yaml, not this -->"
END = "<!-- end of results table -->"
COLUMNS = ["study", "data", "model", "facet: factor", "measured here", "this paper (Falck et al., 2021)",
           "other published"]


class PaperNumber(BaseModel):
    """A row of reports.reference.CLUSTERING_ACCURACY, and what the paper measured it on."""
    model_config = ConfigDict(extra="forbid")
    dataset: str
    factor: str
    method: str = "MFCVAE"
    data: str  # the data the paper measured on, named: it may differ from ours (3DShapes vs the offline stand-in)


class OtherNumber(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str
    citation: str


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study: str
    data: str
    model: str
    facet: str = ""  # "1", "2", "matched", ... or "" when the number is not a facet's
    factor: str = ""
    file: str = "runs.csv"
    where: dict[str, str | int | float] = {}
    metric: Optional[str] = None      # a column averaged over the matching completed runs (mean ± std, n)
    value: Optional[str] = None       # or one matching row's column, with its CI columns and n column
    ci: Optional[tuple[str, str]] = None
    n: Optional[str] = None
    scale: Literal["percent", "raw"] = "percent"
    paper: Optional[PaperNumber] = None
    other: Optional[OtherNumber] = None

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.metric is None) == (self.value is None):
            raise ValueError("give either `metric` (averaged over runs) or `value` (one row's number), not both")
        return self


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[Row]


class ResultsTableError(ValueError):
    pass


def load_spec(path: Path) -> Spec:
    try:
        return Spec.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as error:
        raise ResultsTableError(f"{path}: {error}") from None


def _matching(frame: pd.DataFrame, where: dict, source: Path) -> pd.DataFrame:
    for column, wanted in where.items():
        if column not in frame.columns:
            raise ResultsTableError(f"{source}: no column {column!r} (where: {column}: {wanted})")
        frame = frame[frame[column].astype(str) == str(wanted)]
    return frame


def _number(value: float, scale: str) -> str:
    return f"{100 * value:.1f}" if scale == "percent" else f"{value:.2f}"


def measured_cell(row: Row, published: Path) -> str:
    source = published / row.study / row.file
    if not source.exists():
        raise ResultsTableError(f"{source}: no such file (row {row.study!r} / {row.model!r})")
    frame = pd.read_csv(source)
    picked = _matching(frame, row.where, source)
    column = row.metric or row.value
    if column not in frame.columns:
        raise ResultsTableError(f"{source}: no column {column!r}")
    if row.metric is not None:
        if "status" in picked.columns:
            picked = picked[picked["status"] == "completed"]
        values = picked[column].dropna().astype(float)
        if values.empty:
            raise ResultsTableError(f"{source}: no completed run with a {column!r} where {row.where}")
        text = _number(values.mean(), row.scale)
        if len(values) > 1:
            text += f" ± {_number(values.std(ddof=1), row.scale)}"
        return f"{text} (n = {len(values)})"
    if len(picked) != 1:
        raise ResultsTableError(f"{source}: {len(picked)} rows where {row.where}; `value` needs exactly one")
    record = picked.iloc[0]
    text = _number(float(record[column]), row.scale)
    if row.ci:
        low, high = (float(record[c]) for c in row.ci)
        text += " [n too small for a CI]" if math.isnan(low) else \
            f" [{_number(low, row.scale)}, {_number(high, row.scale)}]"
    if row.n:
        text += f" (n = {int(record[row.n])})"
    return text


def paper_cell(number: Optional[PaperNumber]) -> str:
    if number is None:
        return ""
    ref = reference.accuracy_frame()
    hit = ref[(ref["dataset"] == number.dataset) & (ref["factor"] == number.factor) & (ref["method"] == number.method)]
    if len(hit) != 1:
        raise ResultsTableError(f"reports.reference has no {number.method} row for {number.dataset} / {number.factor}")
    r = hit.iloc[0]
    text = f"{100 * r['mean']:.2f}" + ("" if pd.isna(r["std"]) else f" ± {100 * r['std']:.2f}")
    return f"{text} ({number.data}, {r['source']})"


def table_markdown(published: Path, spec_path: Optional[Path] = None) -> str:
    spec = load_spec(spec_path or published / "results.yaml")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in spec.rows:
        facet = ": ".join(part for part in (f"facet {row.facet}" if row.facet else "", row.factor) if part)
        other = f"{row.other.value} ({row.other.citation})" if row.other else ""
        cells = [f"[{row.study}](reports/published/{row.study}/)", row.data, row.model, facet,
                 measured_cell(row, published), paper_cell(row.paper), other]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def readme_block(readme_text: str) -> tuple[int, int]:
    """(start, end) offsets of the generated table between the markers."""
    start, end = readme_text.find(START), readme_text.find(END)
    if start < 0 or end < start:
        raise ResultsTableError(f"the README has no results-table markers: a line {START!r} and, after it, {END!r}")
    return start + len(START) + 1, end


def update_readme(readme: Path, published: Path, check: bool = False) -> bool:
    """Write the table into the README (or with check, only compare). True when the README was current."""
    text = readme.read_text()
    start, end = readme_block(text)
    table = table_markdown(published)
    current = text[start:end] == table
    if not current and not check:
        readme.write_text(text[:start] + table + text[end:])
    return current
