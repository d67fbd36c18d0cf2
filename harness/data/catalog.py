"""What each dataset is, known without loading it: image shape, sizes, factors, where its files live.

Imports neither torch nor the loaders, so configs and sweep files are checked against the data
(a batch larger than the training set, a metric naming a factor the data lacks) before anything
heavy starts. For `npz:PATH` the array headers are read, not the arrays.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np


class DatasetError(ValueError):
    """A dataset cannot be loaded: unknown name, missing files, or invalid arrays."""


DEFAULT_VALIDATION_FRACTION = 0.1  # dataset.validation_fraction when a config does not set it


def validation_count(n_train: int, fraction: float) -> int:
    """How many of `n_train` training images a validation split of `fraction` holds out (the loaders'
    rule, known here without loading anything)."""
    return int(round(n_train * fraction))


@dataclass(frozen=True)
class DatasetShape:
    """Sizes of a dataset's splits; `factors` maps factor name -> number of values (None: unknown).

    `n_train` counts the images training sees: the dataset's training set less the `n_val`
    validation images carved from it (none in the catalogue, which lists the datasets as shipped).
    """

    image_shape: tuple[int, int, int]
    n_train: int
    n_test: int
    factors: dict[str, Optional[int]]
    n_val: int = 0

    @property
    def n_pixels(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def with_train_images(self, n: Optional[int]) -> "DatasetShape":
        """The sizes once only `n` of the training images are kept (None: all of them)."""
        return self if n is None else replace(self, n_train=min(n, self.n_train))

    def with_validation(self, fraction: float) -> "DatasetShape":
        """The sizes once `fraction` of the training images is held out for validation."""
        n_val = validation_count(self.n_train, fraction)
        return replace(self, n_train=self.n_train - n_val, n_val=self.n_val + n_val)

    def describe(self) -> str:
        c, h, w = self.image_shape
        factors = ", ".join(f"{f}({k if k is not None else '?'})" for f, k in self.factors.items())
        validation = f" / {self.n_val} validation" if self.n_val else ""
        return f"{c}x{h}x{w}, {self.n_train} train{validation} / {self.n_test} test, factors: {factors or 'none'}"


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
TEST_FRACTION = 0.2  # seeded random train/test split of datasets that ship without one


def find_idx_files(folders: list[Path]) -> dict[str, Path] | None:
    """The four IDX files from the first folder that has all of them, plain or gzipped."""
    for folder in folders:
        found = {}
        for key, stem in IDX_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.exists():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def fashion_mnist_folders(data_root: Path | None) -> list[Path]:
    folders = [DEBIAN_FASHION_MNIST]
    if data_root is not None:
        folders = [data_root / "FashionMNIST" / "raw", data_root] + folders
    return folders


def _has_3dshapes(root: Path | None) -> bool:
    return root is not None and (root if root.suffix == ".h5" else root / "3dshapes.h5").exists()


@dataclass(frozen=True)
class CatalogEntry:
    shape: DatasetShape
    available: Callable[[Path | None], bool]
    how_to_get: str


def _shapes(varying_hue: str) -> DatasetShape:
    hues = {"floor_hue": 1, "wall_hue": 1, varying_hue: 10}
    return DatasetShape((3, 32, 32), 3840, 960, {**hues, "object_hue": 1, "scale": 8, "shape": 4, "orientation": 15})


CATALOG: dict[str, CatalogEntry] = {
    "digits": CatalogEntry(DatasetShape((1, 8, 8), 1438, 359, {"digit": 10}), lambda root: True,
                           "ships with scikit-learn"),
    "fashion-mnist": CatalogEntry(
        DatasetShape((1, 28, 28), 60000, 10000, {"label": 10}),
        lambda root: find_idx_files(fashion_mnist_folders(root)) is not None,
        "apt-get install dataset-fashion-mnist, or IDX files in DATA_ROOT/FashionMNIST/raw/"),
    "mnist": CatalogEntry(
        DatasetShape((1, 28, 28), 60000, 10000, {"digit": 10}),
        lambda root: root is not None and find_idx_files([root / "MNIST" / "raw"]) is not None,
        "IDX files in DATA_ROOT/MNIST/raw/, or dataset.download=true when online"),
    "svhn": CatalogEntry(
        DatasetShape((3, 32, 32), 73257, 26032, {"digit": 10}),
        lambda root: root is not None and all((root / f).exists() for f in SVHN_FILES),
        f"{' and '.join(SVHN_FILES)} in DATA_ROOT, or dataset.download=true when online"),
    "3dshapes-config1": CatalogEntry(_shapes("floor_hue"), _has_3dshapes, "DeepMind's 3dshapes.h5 as DATA_ROOT (or in it)"),
    "3dshapes-config2": CatalogEntry(_shapes("wall_hue"), _has_3dshapes, "DeepMind's 3dshapes.h5 as DATA_ROOT (or in it)"),
    "shapes-config1": CatalogEntry(_shapes("floor_hue"), lambda root: True, "rendered procedurally, offline"),
    "shapes-config2": CatalogEntry(_shapes("wall_hue"), lambda root: True, "rendered procedurally, offline"),
}


def check_dataset_name(name: str) -> None:
    """Raise DatasetError naming the known datasets unless `name` is one of them or `npz:PATH`."""
    if name.startswith("npz:"):
        if len(name) == 4:
            raise DatasetError("npz: needs a path, as in npz:/data/my_images.npz")
        return
    if name not in CATALOG:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(CATALOG)}, or npz:PATH")


def npz_image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of one image for an `x` array of `shape`, by the rules of `as_images`."""
    if len(shape) == 2:
        side = int(round(shape[1] ** 0.5))
        return (1, side, side)
    if len(shape) == 3:
        return (1, shape[1], shape[2])
    if len(shape) == 4:
        if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
            return (shape[3], shape[1], shape[2])
        return (shape[1], shape[2], shape[3])
    raise DatasetError(f"array 'x': expected rank 2, 3 or 4, got shape {shape}")


def _npz_headers(path: Path) -> dict[str, tuple[int, ...]]:
    """Array name -> shape, from the .npy headers inside the archive (the data is not read)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _, _ = read_header(f)
                shapes[member[:-4]] = tuple(shape)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise DatasetError(f"npz:{path}: not a readable .npz file ({error})") from None
    return shapes


def npz_shape(path: Path) -> DatasetShape:
    if not path.exists():
        raise DatasetError(f"npz:{path}: file not found")
    shapes = _npz_headers(path)
    if "x" not in shapes:
        raise DatasetError(f"npz:{path}: has no array 'x' (found: {', '.join(shapes) or 'nothing'})")
    n = shapes["x"][0] if shapes["x"] else 0
    factors = {k[2:]: None for k in sorted(shapes) if k.startswith("y_") and not k.startswith("y_test_")}
    if "x_test" in shapes:
        n_train, n_test = n, shapes["x_test"][0]
    else:
        n_test = int(round(n * TEST_FRACTION))
        n_train = n - n_test
    return DatasetShape(npz_image_shape(shapes["x"]), n_train, n_test, factors)


def dataset_shape(name: str) -> DatasetShape:
    """Sizes and factors of dataset `name` without loading it (for npz: from the array headers)."""
    check_dataset_name(name)
    if name.startswith("npz:"):
        return npz_shape(Path(name[4:]).expanduser())
    return CATALOG[name].shape


def dataset_status(data_root: str | Path | None = None) -> list[tuple[str, bool, str]]:
    """(name, available here, summary or how to get it) for every named dataset."""
    root = Path(data_root).expanduser() if data_root else None
    rows = []
    for name, entry in CATALOG.items():
        available = entry.available(root)
        summary = entry.shape.describe()
        rows.append((name, available, summary if available else f"{summary}; get it: {entry.how_to_get}"))
    return rows
