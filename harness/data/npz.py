"""The user's own data from one `.npz` file.

Arrays: `x` shaped (N,D) with D a square, (N,H,W), (N,H,W,C) or (N,C,H,W); optional integer
`y_<factor>` (evaluation only, never used for training); optional `x_test` with `y_test_<factor>`,
else a seeded 80/20 split. Scaling: uint8 arrays are divided by 255; float arrays already in
[0, 1] are kept; any other float range is min-max scaled to [0, 1] over the whole array.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import (
    Dataset,
    DatasetError,
    as_images,
    labels,
    seeded_split,
    suggest_likelihood,
    to_unit_float,
)


def _checked_images(arrays, key: str) -> np.ndarray:
    a = as_images(arrays[key], key)
    if not np.issubdtype(a.dtype, np.number):
        raise DatasetError(f"npz array {key!r}: must be numeric, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise DatasetError(f"npz array {key!r}: contains {int((~np.isfinite(a)).sum())} NaN or inf values")
    if len(a) == 0:
        raise DatasetError(f"npz array {key!r}: is empty")
    return a


def _checked_labels(arrays, key: str, n: int) -> np.ndarray:
    y = np.asarray(arrays[key])
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"npz array {key!r}: expected shape ({n},) to match the images, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"npz array {key!r}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise DatasetError(f"npz array {key!r}: labels must be >= 0, found {y.min()}")
    return y


def load_npz(path: Path, split_seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    if not path.exists():
        raise DatasetError(f"npz:{path}: file not found")
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as error:
        raise DatasetError(f"npz:{path}: not a readable .npz file ({error})") from error
    if "x" not in arrays.files:
        raise DatasetError(f"npz:{path}: has no array 'x' (found: {', '.join(arrays.files) or 'nothing'})")
    x = _checked_images(arrays, "x")
    train_factors = sorted(k[2:] for k in arrays.files if k.startswith("y_") and not k.startswith("y_test_"))
    y = {f: _checked_labels(arrays, f"y_{f}", len(x)) for f in train_factors}
    if "x_test" in arrays.files:
        x_test = _checked_images(arrays, "x_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetError(f"npz array 'x_test': image shape {x_test.shape[1:]} differs from x's {x.shape[1:]}")
        missing = [f for f in train_factors if f"y_test_{f}" not in arrays.files]
        if missing:
            raise DatasetError(f"npz: x_test given but no y_test_{missing[0]} for factor {missing[0]!r}")
        y_test = {f: _checked_labels(arrays, f"y_test_{f}", len(x_test)) for f in train_factors}
        x_all = to_unit_float(np.concatenate([x, x_test]))
        x_train_t, x_test_t = x_all[:len(x)], x_all[len(x):]
    else:
        train, test = seeded_split(len(x), test_fraction, split_seed)
        x_all = to_unit_float(x)
        x_train_t, x_test_t = x_all[torch.from_numpy(train)], x_all[torch.from_numpy(test)]
        y, y_test = {f: v[train] for f, v in y.items()}, {f: v[test] for f, v in y.items()}
    return Dataset(
        name=f"npz:{path}",
        x_train=x_train_t.contiguous(),
        x_test=x_test_t.contiguous(),
        y_train={f: labels(v) for f, v in y.items()},
        y_test={f: labels(v) for f, v in y_test.items()},
        likelihood=suggest_likelihood(x_all),
    )
