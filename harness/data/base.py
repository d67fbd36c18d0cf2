"""The in-memory dataset every loader returns, and the batch iterator the trainer uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np
import torch

from .catalog import DatasetError

Likelihood = Literal["bernoulli", "gaussian"]


@dataclass
class Dataset:
    """Train and test images in [0, 1], shape (N, C, H, W), with ground-truth factors by name.

    Factor labels are for evaluation only; no training code reads them.
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: dict[str, torch.Tensor]
    y_test: dict[str, torch.Tensor]
    likelihood: Likelihood
    factors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, x, ys in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.ndim != 4:
                raise DatasetError(f"{self.name}: x_{split} must be (N, C, H, W), got shape {tuple(x.shape)}")
            for factor, y in ys.items():
                if len(y) != len(x):
                    raise DatasetError(
                        f"{self.name}: factor {factor!r} has {len(y)} {split} labels for {len(x)} images"
                    )
        if not self.factors:
            self.factors = {
                f: int(max(self.y_train[f].max(), self.y_test[f].max()).item()) + 1 for f in self.y_train
            }

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "Dataset":
        """Move images to `device` once, so batching never copies from host memory again."""
        device = torch.device(device)
        if device.type == "cuda":
            move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        else:
            move = lambda t: t.to(device)  # noqa: E731
        return Dataset(self.name, move(self.x_train), move(self.x_test), self.y_train, self.y_test,
                       self.likelihood, dict(self.factors))

    def describe(self) -> str:
        c, h, w = self.image_shape
        factors = ", ".join(f"{f}({k})" for f, k in self.factors.items())
        return f"{c}x{h}x{w}, {len(self.x_train)} train / {len(self.x_test)} test, factors: {factors}"


NEAR_BINARY_MAX_GREY_SHARE = 0.2


def suggest_likelihood(x: torch.Tensor) -> Likelihood:
    """Bernoulli for near-binary grey images (under 20% of pixels strictly inside (0.1, 0.9)), else Gaussian.

    MNIST is near-binary (the paper's Bernoulli); scikit-learn's digits (35% grey) and
    Fashion-MNIST (40%) are not.
    """
    grey_share = float(((x > 0.1) & (x < 0.9)).float().mean())
    return "bernoulli" if x.shape[1] == 1 and grey_share < NEAR_BINARY_MAX_GREY_SHARE else "gaussian"


def seeded_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a random train/test split that depends on `seed` only (not on the model seed)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def as_images(array: np.ndarray, name: str = "x") -> np.ndarray:
    """Reshape (N,D), (N,H,W), (N,H,W,C) or (N,C,H,W) to (N,C,H,W); a flat D must be a square."""
    a = np.asarray(array)
    if a.ndim == 2:
        side = int(round(np.sqrt(a.shape[1])))
        if side * side != a.shape[1]:
            raise DatasetError(f"array {name!r}: shape (N, D) needs D to be a square number, got D={a.shape[1]}")
        return a.reshape(len(a), 1, side, side)
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            return a.transpose(0, 3, 1, 2)
        return a
    raise DatasetError(
        f"array {name!r}: expected rank 2 (N,D), 3 (N,H,W) or 4 (N,H,W,C)/(N,C,H,W), got shape {a.shape}"
    )


def to_unit_float(images: np.ndarray) -> torch.Tensor:
    """uint8 images divided by 255, float images min-max scaled to [0, 1] (appendix D.1)."""
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32) / 255.0)
    x = images.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    if hi > lo and (lo < 0.0 or hi > 1.0):
        x = (x - lo) / (hi - lo)
    return torch.from_numpy(np.ascontiguousarray(x))


def labels(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values).astype(np.int64))


def batches(x: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled mini-batches from one permutation of indices on `x`'s device: no per-sample Python."""
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for start in range(0, len(x), batch_size):
        yield x[order[start:start + batch_size]]
