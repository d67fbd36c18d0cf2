"""Figures from the tidy frames: stability curves (Fig. 10, 12, 18-20) and expected best-of-n."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .load import best_facet_columns, with_best_facet  # noqa: E402
from .stats import expected_best_of_n  # noqa: E402


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def save_atomic(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def stability_curves(evaluations: pd.DataFrame, out: Path) -> list[Path]:
    """Per (dataset, factor): test accuracy over epochs of each run's best facet on test labels (the
    authors' protocol), every run and mean +- std."""
    if evaluations.empty or "epoch" not in evaluations:
        return []
    frame = with_best_facet(evaluations[evaluations["epoch"] > 0])
    written = []
    for column, factor in best_facet_columns(frame):
        for dataset, group in frame.groupby("dataset"):
            group = group.dropna(subset=[column])
            variants = sorted(group["variant"].unique())
            if not variants:
                continue
            fig, axes = plt.subplots(1, len(variants), figsize=(4 * len(variants), 3.2), squeeze=False, sharey=True)
            for ax, variant in zip(axes[0], variants):
                rows = group[group["variant"] == variant]
                for _, run in rows.groupby("run_dir"):
                    ax.plot(run["epoch"], run[column], color="tab:blue", alpha=0.45, lw=1)
                stats = rows.groupby("epoch")[column].agg(["mean", "std", "count"])
                ax.plot(stats.index, stats["mean"], color="black", lw=1.5, label="mean")
                ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), color="tab:blue", alpha=0.2,
                                label="mean ± std")
                ax.set_title(f"{variant}\n({rows['run_dir'].nunique()} runs)", fontsize=9)
                ax.set_xlabel("epoch")
                ax.set_ylim(0, 1)
            axes[0, 0].set_ylabel(f"test accuracy, {factor}\n(max over facets on test labels)")
            axes[0, 0].legend(fontsize=8, loc="lower right")
            fig.suptitle(f"{dataset}: stability over training", fontsize=10, y=1.06)
            path = out / f"stability_{slug(dataset)}_{slug(factor)}.png"
            save_atomic(fig, path)
            written.append(path)
    return written


def best_of_n_curves(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Expected best accuracy of n seeds, per (dataset, factor), one line per variant with a band (each
    run's best facet on test labels, the authors' protocol)."""
    done = with_best_facet(runs[runs["status"] == "completed"])
    written = []
    for column, factor in best_facet_columns(done):
        for dataset, group in done.groupby("dataset"):
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            plotted = False
            for variant, rows in group.groupby("variant"):
                values = rows[column].dropna().to_numpy()
                if len(values) < 2:
                    continue
                curve = expected_best_of_n(values)
                ax.plot(curve["n"], curve["mean"], marker="o", ms=3, label=variant)
                ax.fill_between(curve["n"], curve["low"], curve["high"], alpha=0.2)
                plotted = True
            if not plotted:
                plt.close(fig)
                continue
            ax.set_xlabel("n runs (best of n)")
            ax.set_ylabel(f"expected best accuracy, {factor}\n(max over facets on test labels)")
            ax.legend(fontsize=7)
            ax.set_title(dataset, fontsize=10)
            path = out / f"best_of_n_{slug(dataset)}_{slug(factor)}.png"
            save_atomic(fig, path)
            written.append(path)
    return written


def image_grid(rows: list[np.ndarray], path: Path, row_labels: list[str], title: str) -> Path:
    """rows: list of (n, C, H, W) arrays in [0, 1]; one figure row per entry."""
    n_cols = max(len(r) for r in rows) if rows else 1
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(n_cols * 0.7, len(rows) * 0.75), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                image = np.transpose(images[c], (1, 2, 0))
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(label, fontsize=6, loc="left")
    fig.suptitle(title, fontsize=9)
    save_atomic(fig, path)
    return path


def selection_scatter(units: pd.DataFrame, criteria: list[str], target: str, out: Path) -> list[Path]:
    """Per (dataset, factor): one panel per criterion, each unit's criterion against its `target`
    accuracy, one point per unit (the frame of reports.selection.selection_criteria), so a reader
    sees what a rank correlation summarises: which units a criterion would have picked."""
    written = []
    if units.empty or target not in units:
        return written
    for (dataset, factor), group in units.groupby(["dataset", "factor"]):
        shown = [c for c in criteria if c in group and group[[c, target]].notna().all(axis=1).sum() >= 2]
        if not shown:
            continue
        fig, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown), 3.2), squeeze=False)
        for ax, criterion in zip(axes[0], shown):
            pair = group.dropna(subset=[criterion, target])
            ax.scatter(pair[criterion], 100 * pair[target], s=18)
            best = pair.loc[pair[criterion].idxmax()]
            ax.scatter([best[criterion]], [100 * best[target]], s=60, facecolors="none", edgecolors="red",
                       label="ranked first")
            ax.set_xlabel(criterion)
            ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel(f"{target} % ({factor})")
        axes[0, 0].legend(fontsize=8)
        fig.suptitle(f"{dataset}: label-free criteria against {target}, one point per config", fontsize=10)
        path = out / f"selection_{slug(dataset)}_{slug(factor)}.png"
        save_atomic(fig, path)
        written.append(path)
    return written
