"""Datasets by name. Every loader returns a `Dataset` with images in [0, 1] and factor labels.

`load_dataset("digits")`, `load_dataset("npz:/path/to/file.npz")`; `DATASETS` lists the names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .base import Dataset, DatasetError, batches
from .digits import load_digits_dataset
from .idx import fashion_mnist_folders, find_idx_files, load_fashion_mnist
from .npz import load_npz
from .procedural_shapes import load_procedural_shapes
from .shapes3d import load_3dshapes
from .torchvision_sets import SVHN_FILES, load_mnist, load_svhn

__all__ = ["Dataset", "DatasetError", "DATASETS", "batches", "load_dataset", "dataset_status"]


@dataclass(frozen=True)
class DatasetEntry:
    load: Callable[[Path | None, bool, int], Dataset]  # (data_root, download, split_seed)
    available: Callable[[Path | None], bool]
    how_to_get: str
    summary: str  # shape, sizes and factors, known without loading


def _has_3dshapes(root: Path | None) -> bool:
    return root is not None and (root if root.suffix == ".h5" else root / "3dshapes.h5").exists()


_SHAPES_FACTORS = "floor_hue({f}), wall_hue({w}), object_hue(1), scale(8), shape(4), orientation(15)"

DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(
        lambda root, download, seed: load_digits_dataset(seed),
        lambda root: True, "ships with scikit-learn",
        "1x8x8, 1438 train / 359 test, factors: digit(10)"),
    "fashion-mnist": DatasetEntry(
        lambda root, download, seed: load_fashion_mnist(root),
        lambda root: find_idx_files(fashion_mnist_folders(root)) is not None,
        "apt-get install dataset-fashion-mnist, or IDX files in DATA_ROOT/FashionMNIST/raw/",
        "1x28x28, 60000 train / 10000 test, factors: label(10)"),
    "mnist": DatasetEntry(
        lambda root, download, seed: load_mnist(root, download),
        lambda root: root is not None and find_idx_files([root / "MNIST" / "raw"]) is not None,
        "IDX files in DATA_ROOT/MNIST/raw/, or dataset.download=true when online",
        "1x28x28, 60000 train / 10000 test, factors: digit(10)"),
    "svhn": DatasetEntry(
        lambda root, download, seed: load_svhn(root, download),
        lambda root: root is not None and all((root / f).exists() for f in SVHN_FILES),
        f"{' and '.join(SVHN_FILES)} in DATA_ROOT, or dataset.download=true when online",
        "3x32x32, 73257 train / 26032 test, factors: digit(10)"),
    "3dshapes-config1": DatasetEntry(
        lambda root, download, seed: load_3dshapes(1, root, seed), _has_3dshapes,
        "DeepMind's 3dshapes.h5 as DATA_ROOT (or in it)",
        "3x32x32, 3840 train / 960 test, factors: " + _SHAPES_FACTORS.format(f=10, w=1)),
    "3dshapes-config2": DatasetEntry(
        lambda root, download, seed: load_3dshapes(2, root, seed), _has_3dshapes,
        "DeepMind's 3dshapes.h5 as DATA_ROOT (or in it)",
        "3x32x32, 3840 train / 960 test, factors: " + _SHAPES_FACTORS.format(f=1, w=10)),
    "shapes-config1": DatasetEntry(
        lambda root, download, seed: load_procedural_shapes(1, seed),
        lambda root: True, "rendered procedurally, offline",
        "3x32x32, 3840 train / 960 test, factors: " + _SHAPES_FACTORS.format(f=10, w=1)),
    "shapes-config2": DatasetEntry(
        lambda root, download, seed: load_procedural_shapes(2, seed),
        lambda root: True, "rendered procedurally, offline",
        "3x32x32, 3840 train / 960 test, factors: " + _SHAPES_FACTORS.format(f=1, w=10)),
}


def check_dataset_name(name: str) -> None:
    """Raise DatasetError naming the known datasets unless `name` is one of them or `npz:PATH`."""
    if name.startswith("npz:"):
        if len(name) == 4:
            raise DatasetError("npz: needs a path, as in npz:/data/my_images.npz")
        return
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, or npz:PATH")


def load_dataset(name: str, data_root: str | Path | None = None, download: bool = False,
                 split_seed: int = 0) -> Dataset:
    """Load a dataset by name; `split_seed` seeds random train/test splits (not the model)."""
    check_dataset_name(name)
    root = Path(data_root).expanduser() if data_root else None
    if name.startswith("npz:"):
        return load_npz(Path(name[4:]).expanduser(), split_seed)
    return DATASETS[name].load(root, download, split_seed)


def dataset_status(data_root: str | Path | None = None) -> list[tuple[str, bool, str]]:
    """(name, available here, summary or how to get it) for every named dataset."""
    root = Path(data_root).expanduser() if data_root else None
    rows = []
    for name, entry in DATASETS.items():
        available = entry.available(root)
        rows.append((name, available, entry.summary if available else f"{entry.summary}; get it: {entry.how_to_get}"))
    return rows
