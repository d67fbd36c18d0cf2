"""`mfcbench datasets`: what data sets exist here (or how to get them), and a grid of examples."""
from __future__ import annotations

import sys
from pathlib import Path


def datasets_command(args) -> int:
    from harness.data import dataset_status
    from harness.data.catalog import DEFAULT_VALIDATION_FRACTION

    if args.action == "show":
        return _show_dataset(args)
    if args.name:
        print(f"mfcbench datasets: `list` takes no dataset name (got {args.name!r}); to draw examples: "
              f"mfcbench datasets show {args.name}", file=sys.stderr)
        return 2
    rows = dataset_status(args.data_root)
    width = max(len(name) for name, _, _ in rows)
    for name, available, summary in rows:
        print(f"{name:<{width}}  {'available' if available else 'missing  '}  {summary}")
    print(f"{'npz:PATH':<{width}}  {'-':<9}  your own images: arrays x, optional y_<factor>, x_test, y_test_<factor>")
    print(f"(training holds out dataset.validation_fraction of the train images, {DEFAULT_VALIDATION_FRACTION:g} by "
          "default, as the validation split)")
    return 0


# What `datasets show --out` may write, and how a file of each kind begins: an existing file is
# replaced only when it already is such an image (most likely an earlier `datasets show`)
_IMAGE_SIGNATURES = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF", ".svg": b"<?xml"}


def _image_out_problem(out: Path) -> str | None:
    if out.is_dir():
        return f"--out {out} is a folder; give an image file name, e.g. {out / 'dataset.png'}"
    kinds = ", ".join(_IMAGE_SIGNATURES)
    if out.suffix.lower() not in _IMAGE_SIGNATURES:
        return f"--out {out}: the file name must end in one of {kinds} (the image format), got {out.suffix or 'none'!r}"
    if out.exists():
        with out.open("rb") as f:
            signature = _IMAGE_SIGNATURES[out.suffix.lower()]
            if f.read(len(signature)) != signature:
                return f"--out {out} exists and is not a {out.suffix} image; refusing to overwrite it"
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"--out {out}: {blocking} is a file, not a folder"
    return None


def _show_dataset(args) -> int:
    from harness.data import CATALOG, dataset_shape

    if not args.name:
        print("mfcbench datasets show: give a dataset name, e.g. `mfcbench datasets show digits`; known: "
              f"{', '.join(CATALOG)}, or npz:PATH", file=sys.stderr)
        return 2
    if args.per_row < 1:
        print(f"mfcbench datasets show: --per-row must be >= 1 (examples per row), got {args.per_row}",
              file=sys.stderr)
        return 2
    out = Path(args.out).expanduser()
    problem = _image_out_problem(out)
    if problem:
        print(f"mfcbench datasets show: {problem}", file=sys.stderr)
        return 2
    # Name and factor are checked against the catalog (for npz: the array headers) before loading anything
    factors = list(dataset_shape(args.name).factors)
    if args.factor is not None and args.factor not in factors:
        print(f"mfcbench datasets show: dataset {args.name} has no factor {args.factor!r}; "
              + (f"its factors: {', '.join(factors)}" if factors else "it has no factor labels (y_<factor> arrays)"),
              file=sys.stderr)
        return 2

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from harness.data import load_dataset

    data = load_dataset(args.name, args.data_root)
    factor = args.factor or next(iter(data.factors), None)
    # Unlabelled data (an npz without y_<factor>): one row of random examples
    y = data.y_train[factor].numpy() if factor else np.zeros(len(data.x_train), dtype=int)
    values = np.unique(y)
    fig, axes = plt.subplots(len(values), args.per_row, figsize=(args.per_row * 0.6, len(values) * 0.6),
                             squeeze=False)
    rng = np.random.default_rng(0)
    for r, value in enumerate(values):
        index = np.flatnonzero(y == value)
        chosen = rng.choice(index, size=min(args.per_row, len(index)), replace=False)
        for c in range(args.per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(chosen):
                image = data.x_train[chosen[c]].permute(1, 2, 0).numpy()
                ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{factor}={value}" if factor else "examples", fontsize=6, loc="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # same suffix: matplotlib picks the format from it
    try:
        fig.savefig(tmp, dpi=120)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    print(f"wrote {out}: {len(values)} rows ({factor or 'no factor labels'}), {args.per_row} examples each")
    return 0
