"""MNIST and SVHN through torchvision, from a local data_root; downloads only when asked to."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Dataset, DatasetError, labels
from .catalog import IDX_FILES, SVHN_FILES, find_idx_files
from .idx import load_idx_dataset


def _require_root(name: str, data_root: Path | None, expected: str) -> Path:
    if data_root is None:
        raise DatasetError(f"{name}: needs dataset.data_root, a folder holding {expected}")
    return data_root


def load_mnist(data_root: Path | None = None, download: bool = False) -> Dataset:
    expected = "MNIST/raw/" + ", ".join(IDX_FILES.values()) + " (optionally .gz)"
    root = _require_root("mnist", data_root, expected)
    files = find_idx_files([root / "MNIST" / "raw"])
    if files is None and download:
        from torchvision.datasets import MNIST

        try:
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
        except Exception as error:  # network errors come in many types
            raise DatasetError(f"mnist: download into {root} failed ({error}); place {expected} there by hand") from error
        files = find_idx_files([root / "MNIST" / "raw"])
    if files is None:
        raise DatasetError(
            f"mnist: files not found under {root}. Expected {expected}; "
            "set dataset.download=true to fetch them with torchvision when online."
        )
    return load_idx_dataset("mnist", files, "digit")


def load_svhn(data_root: Path | None = None, download: bool = False) -> Dataset:
    root = _require_root("svhn", data_root, " and ".join(SVHN_FILES))
    missing = [f for f in SVHN_FILES if not (root / f).exists()]
    if missing and not download:
        raise DatasetError(
            f"svhn: {', '.join(missing)} not found in {root}; put the torchvision SVHN .mat files there, "
            "or set dataset.download=true to fetch them when online."
        )
    from torchvision.datasets import SVHN

    splits = {}
    for split in ("train", "test"):
        try:
            splits[split] = SVHN(str(root), split=split, download=download)
        except Exception as error:
            raise DatasetError(f"svhn: could not load split {split!r} from {root}: {error}") from error
    # SVHN labels the digit 0 as 0 already in torchvision.
    return Dataset(
        name="svhn",
        x_train=torch.from_numpy(splits["train"].data.astype(np.float32) / 255.0),
        x_test=torch.from_numpy(splits["test"].data.astype(np.float32) / 255.0),
        y_train={"digit": labels(splits["train"].labels)},
        y_test={"digit": labels(splits["test"].labels)},
        likelihood="gaussian",
        factors={"digit": 10},
    )
