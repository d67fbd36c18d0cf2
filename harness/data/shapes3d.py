"""DeepMind 3DShapes (`3dshapes.h5`) in the two configurations of appendix D.1."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Dataset, DatasetError, labels, seeded_split

FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
# Appendix D.1: configuration 1 varies the floor hue, configuration 2 the wall hue; the other hues
# are held at one value (their first), scale, shape and orientation vary fully: 10*8*4*15 = 4,800.
VARYING_HUE = {1: "floor_hue", 2: "wall_hue"}


def factor_indices(raw_labels: np.ndarray) -> np.ndarray:
    """Map each factor's float values to integers 0..n-1 (appendix D.1)."""
    out = np.empty(raw_labels.shape, dtype=np.int64)
    for k in range(raw_labels.shape[1]):
        _, out[:, k] = np.unique(np.round(raw_labels[:, k], 6), return_inverse=True)
    return out


def load_3dshapes(configuration: int, data_root: Path | None, split_seed: int = 0,
                  test_fraction: float = 0.2) -> Dataset:
    name = f"3dshapes-config{configuration}"
    path = None
    if data_root is not None:
        path = data_root if data_root.suffix == ".h5" else data_root / "3dshapes.h5"
    if path is None or not path.exists():
        raise DatasetError(
            f"{name}: needs dataset.data_root pointing at 3dshapes.h5 (or a folder holding it); got {path}. "
            "Download it from DeepMind's 3d-shapes storage bucket."
        )
    import h5py

    with h5py.File(path, "r") as f:
        if "images" not in f or "labels" not in f:
            raise DatasetError(f"{name}: {path} must hold datasets 'images' and 'labels'")
        factors = factor_indices(np.asarray(f["labels"]))
        fixed = [k for k, factor in enumerate(FACTORS[:3]) if factor != VARYING_HUE[configuration]]
        keep = np.flatnonzero(np.all(factors[:, fixed] == 0, axis=1))
        images = np.asarray(f["images"][keep])  # h5py needs increasing indices: np.flatnonzero is sorted
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    factors = factors[keep]
    train, test = seeded_split(len(x), test_fraction, split_seed)
    return Dataset(
        name=name,
        x_train=x[torch.from_numpy(train)],
        x_test=x[torch.from_numpy(test)],
        y_train={f: labels(factors[train, k]) for k, f in enumerate(FACTORS)},
        y_test={f: labels(factors[test, k]) for k, f in enumerate(FACTORS)},
        likelihood="gaussian",
        factors={f: int(factors[:, k].max()) + 1 for k, f in enumerate(FACTORS)},
    )
