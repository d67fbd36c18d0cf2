"""scikit-learn's 8x8 handwritten digits: ships with scikit-learn, so always available offline."""
from __future__ import annotations

import numpy as np
import torch

from .base import Dataset, labels, seeded_split, suggest_likelihood


def load_digits_dataset(split_seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # values 0..16 -> [0, 1]
    train, test = seeded_split(len(x), test_fraction, split_seed)
    return Dataset(
        name="digits",
        x_train=torch.from_numpy(x[train]),
        x_test=torch.from_numpy(x[test]),
        y_train={"digit": labels(bunch.target[train])},
        y_test={"digit": labels(bunch.target[test])},
        likelihood=suggest_likelihood(torch.from_numpy(x)),
        factors={"digit": 10},
    )
