"""MNIST-format IDX files (Fashion-MNIST from Debian's `dataset-fashion-mnist`, or any torchvision raw/ folder)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .base import Dataset, labels, suggest_likelihood, uint8_to_unit
from .catalog import (
    DEBIAN_FASHION_MNIST,
    IDX_FILES,
    DatasetError,
    fashion_mnist_folders,
    find_idx_files,
)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): magic, dims as big-endian int32, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def load_idx_dataset(name: str, files: dict[str, Path], factor: str) -> Dataset:
    arrays = {key: read_idx(path) for key, path in files.items()}
    x_train = uint8_to_unit(arrays["x_train"])[:, None]
    return Dataset(
        name=name,
        x_train=x_train,
        x_test=uint8_to_unit(arrays["x_test"])[:, None],
        y_train={factor: labels(arrays["y_train"])},
        y_test={factor: labels(arrays["y_test"])},
        likelihood=suggest_likelihood(x_train),
        factors={factor: 10},
    )


def load_fashion_mnist(data_root: Path | None = None) -> Dataset:
    folders = fashion_mnist_folders(data_root)
    files = find_idx_files(folders)
    if files is None:
        raise DatasetError(
            "fashion-mnist: IDX files not found. Install them with `apt-get install dataset-fashion-mnist` "
            f"(-> {DEBIAN_FASHION_MNIST}) or put {', '.join(IDX_FILES.values())} (optionally .gz) in "
            f"DATA_ROOT/FashionMNIST/raw/. Looked in: {', '.join(map(str, folders))}"
        )
    return load_idx_dataset("fashion-mnist", files, "label")
