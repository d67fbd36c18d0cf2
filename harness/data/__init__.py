"""Datasets by name. Every loader returns a `Dataset` with images in [0, 1] and factor labels.

`load_dataset("digits")`, `load_dataset("npz:/path/to/file.npz")`; `CATALOG` lists the names and
`dataset_shape(name)` their sizes and factors without loading anything. Importing this package
does not import torch: the loaders are imported when a dataset is loaded.
"""
from __future__ import annotations

from pathlib import Path

from .catalog import (
    CATALOG,
    DatasetError,
    DatasetShape,
    check_dataset_name,
    dataset_shape,
    dataset_status,
)

__all__ = ["CATALOG", "Dataset", "DatasetError", "DatasetShape", "batches", "check_dataset_name", "dataset_shape",
           "dataset_status", "load_dataset"]


def __getattr__(name: str):  # PEP 562: the torch-backed names load on first use
    if name in ("Dataset", "batches"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name: str, data_root: str | Path | None = None, download: bool = False, split_seed: int = 0,
                 validation_fraction: float = 0.0, train_images: int | None = None):
    """Load a dataset by name, keeping `train_images` of its training images (None: all), with
    `validation_fraction` of those held out as the validation split (0: none); `split_seed` seeds
    the random splits (never the model seed)."""
    check_dataset_name(name)
    return (_load_shipped_splits(name, data_root, download, split_seed)
            .with_train_images(train_images, split_seed).with_validation(validation_fraction, split_seed))


def _load_shipped_splits(name: str, data_root: str | Path | None, download: bool, split_seed: int):
    """The dataset's own train/test split (a seeded 80/20 one for datasets that ship without one)."""
    root = Path(data_root).expanduser() if data_root else None
    if name.startswith("npz:"):
        from .npz import load_npz

        return load_npz(Path(name[4:]).expanduser(), split_seed)
    if name == "digits":
        from .digits import load_digits_dataset

        return load_digits_dataset(split_seed)
    if name == "fashion-mnist":
        from .idx import load_fashion_mnist

        return load_fashion_mnist(root)
    if name in ("mnist", "svhn"):
        from .torchvision_sets import load_mnist, load_svhn

        return load_mnist(root, download) if name == "mnist" else load_svhn(root, download)
    configuration = int(name[-1])
    if name.startswith("3dshapes-"):
        from .shapes3d import load_3dshapes

        return load_3dshapes(configuration, root, split_seed)
    from .procedural_shapes import load_procedural_shapes

    return load_procedural_shapes(configuration, split_seed)
