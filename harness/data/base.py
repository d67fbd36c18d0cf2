"""The in-memory dataset every loader returns, and the batch iterator the trainer uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional

import numpy as np
import torch

from .catalog import DatasetError, validation_count

Likelihood = Literal["bernoulli", "gaussian"]


@dataclass
class Dataset:
    """Train, validation and test images in [0, 1], shape (N, C, H, W), with ground-truth factors by name.

    The validation images are carved from the training set (`with_validation`); without a
    validation split `x_val` is empty, (0, C, H, W). Factor labels are for evaluation only; no
    training code reads them.
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: dict[str, torch.Tensor]
    y_test: dict[str, torch.Tensor]
    likelihood: Likelihood
    factors: dict[str, int] = field(default_factory=dict)
    x_val: Optional[torch.Tensor] = None  # None: no validation split (made empty below)
    y_val: Optional[dict[str, torch.Tensor]] = None

    def __post_init__(self) -> None:
        if self.x_val is None:
            self.x_val = self.x_train[:0]
            self.y_val = {f: y[:0] for f, y in self.y_train.items()}
        splits = (("train", self.x_train, self.y_train), ("val", self.x_val, self.y_val),
                  ("test", self.x_test, self.y_test))
        for split, x, ys in splits:
            if x.ndim != 4:
                raise DatasetError(f"{self.name}: x_{split} must be (N, C, H, W), got shape {tuple(x.shape)}")
            for factor, y in ys.items():
                if len(y) != len(x):
                    raise DatasetError(
                        f"{self.name}: factor {factor!r} has {len(y)} {split} labels for {len(x)} images"
                    )
        if not self.factors:
            self.factors = {f: int(max(int(ys[f].max()) for _, x, ys in splits if len(x))) + 1 for f in self.y_train}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def with_train_images(self, n: Optional[int], split_seed: int) -> "Dataset":
        """This dataset with only `n` of its training images, a random draw that depends on `split_seed`
        alone (a user's small data set: the test set stays whole); None returns it unchanged."""
        if n is None:
            return self
        if not 2 <= n <= len(self.x_train):
            raise DatasetError(f"dataset.train_images: {n} for {self.name}'s {len(self.x_train)} training images; "
                               f"allowed 2..{len(self.x_train)}")
        kept = torch.from_numpy(np.sort(np.random.default_rng([split_seed, SUBSET_STREAM]).permutation(
            len(self.x_train))[:n]))
        return Dataset(self.name, self.x_train[kept], self.x_test, {f: y[kept] for f, y in self.y_train.items()},
                       self.y_test, self.likelihood, dict(self.factors))

    def with_validation(self, fraction: float, split_seed: int) -> "Dataset":
        """This dataset with `fraction` of its training images moved to the validation split, chosen by
        `split_seed` alone (`validation_split`); fraction 0 returns it unchanged."""
        if fraction == 0:
            return self
        train, val = validation_split(len(self.x_train), fraction, split_seed, self.name)
        train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)
        return Dataset(self.name, self.x_train[train_t], self.x_test, {f: y[train_t] for f, y in self.y_train.items()},
                       self.y_test, self.likelihood, dict(self.factors), x_val=self.x_train[val_t],
                       y_val={f: y[val_t] for f, y in self.y_train.items()})

    def to(self, device: torch.device | str) -> "Dataset":
        """Move images to `device` once, so batching never copies from host memory again."""
        device = torch.device(device)
        if device.type == "cuda":
            move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        else:
            move = lambda t: t.to(device)  # noqa: E731
        return Dataset(self.name, move(self.x_train), move(self.x_test), self.y_train, self.y_test,
                       self.likelihood, dict(self.factors), x_val=move(self.x_val), y_val=self.y_val)

    def describe(self) -> str:
        c, h, w = self.image_shape
        factors = ", ".join(f"{f}({k})" for f, k in self.factors.items())
        validation = f" / {len(self.x_val)} validation" if len(self.x_val) else ""
        return f"{c}x{h}x{w}, {len(self.x_train)} train{validation} / {len(self.x_test)} test, factors: {factors}"


NEAR_BINARY_MAX_GREY_SHARE = 0.2


def suggest_likelihood(x: torch.Tensor) -> Likelihood:
    """Bernoulli for near-binary grey images (under 20% of pixels strictly inside (0.1, 0.9)), else Gaussian.

    MNIST is near-binary (the paper's Bernoulli); scikit-learn's digits (35% grey) and
    Fashion-MNIST (40%) are not.
    """
    grey_share = int(torch.count_nonzero((x > 0.1) & (x < 0.9))) / max(x.numel(), 1)  # no float copy of x
    return "bernoulli" if x.shape[1] == 1 and grey_share < NEAR_BINARY_MAX_GREY_SHARE else "gaussian"


def seeded_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a random train/test split that depends on `seed` only (not on the model seed)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# Mixed into the validation split's seed, so its draw is independent of `seeded_split`'s (both depend
# on split_seed only, never on the model seed)
VALIDATION_STREAM = 0x5A11D
SUBSET_STREAM = 0x5B5E7  # the same for `with_train_images`' draw


def validation_split(n_train: int, fraction: float, split_seed: int,
                     name: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (kept training images, validation images) of a random split of `n_train`
    training images that depends on `split_seed` only: every model seed of a config sees the same
    validation images, in the same order."""
    if not 0 <= fraction < 1:
        raise DatasetError(f"dataset.validation_fraction must be in [0, 1) (0: no validation split), got {fraction}")
    n_val = validation_count(n_train, fraction)
    if fraction > 0 and (n_val < 2 or n_train - n_val < 2):
        raise DatasetError(f"dataset.validation_fraction {fraction} leaves {n_val} validation and {n_train - n_val} "
                           f"training images of {name}'s {n_train}; each needs at least 2")
    order = np.random.default_rng([split_seed, VALIDATION_STREAM]).permutation(n_train)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


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


def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 images / 255 as float32, in one pass: the values of `images.astype(np.float32) / 255.0`
    without its second 4-byte-per-pixel array (0.6-1.2 s of page faults on MNIST's 47M pixels here)."""
    return torch.from_numpy(np.divide(images, np.float32(255.0), dtype=np.float32))


def to_unit_float(images: np.ndarray) -> torch.Tensor:
    """uint8 images divided by 255, float images min-max scaled to [0, 1] (appendix D.1)."""
    if images.dtype == np.uint8:
        return uint8_to_unit(images)
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
