"""An offline stand-in for 3DShapes: a 2-D object on a floor in front of a wall, rendered with numpy.

Same factors as 3DShapes (floor, wall and object hue, scale, shape, orientation), 32x32 RGB,
and the two configurations of appendix D.1: configuration 1 varies the floor hue (wall and object
hue fixed), configuration 2 the wall hue. 10 hues x 8 scales x 4 shapes x 15 orientations = 4,800.
The seed sets a small jitter of the object's position and the 80/20 split: same seed, same bytes.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb

from .base import Dataset, labels, seeded_split

SIZE = 32
SUPERSAMPLE = 4
HUES = np.linspace(0.0, 0.9, 10)
SCALES = np.linspace(0.75, 1.25, 8)
SHAPES = ("square", "circle", "triangle", "capsule")
ORIENTATIONS = np.linspace(-30.0, 30.0, 15)
HORIZON = 20  # rows above are wall, rows below are floor
FIXED_WALL_HUE, FIXED_FLOOR_HUE, FIXED_OBJECT_HUE = 6, 3, 0  # indices into HUES


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether object-frame points (u right, v down, unit radius) lie inside the shape."""
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "circle":
        return u ** 2 + v ** 2 <= 0.9 ** 2
    if shape == "triangle":
        return (v <= 0.75) & (v >= -1.0 + 2.0 * np.abs(u) * 1.0) & (np.abs(u) <= 0.9)
    if shape == "capsule":  # a vertical stadium
        return (np.abs(u) <= 0.45) & ((np.abs(v) <= 0.55) | (u ** 2 + (np.abs(v) - 0.55) ** 2 <= 0.45 ** 2))
    raise ValueError(shape)


def _object_masks() -> np.ndarray:
    """Anti-aliased coverage (shape, scale, orientation, H, W) of an object centred in the image."""
    n = SIZE * SUPERSAMPLE
    grid = (np.arange(n) + 0.5) / SUPERSAMPLE - SIZE / 2  # pixel centres, origin at image centre
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    masks = np.zeros((len(SHAPES), len(SCALES), len(ORIENTATIONS), SIZE, SIZE), dtype=np.float32)
    for a, shape in enumerate(SHAPES):
        for b, scale in enumerate(SCALES):
            radius = 6.0 * scale
            for c, angle in enumerate(np.deg2rad(ORIENTATIONS)):
                u = (np.cos(angle) * xx + np.sin(angle) * yy) / radius
                v = (-np.sin(angle) * xx + np.cos(angle) * yy) / radius
                fine = _inside(shape, u, v).astype(np.float32)
                masks[a, b, c] = fine.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))
    return masks


def _colour(hue_index: int, value: float = 0.9) -> np.ndarray:
    return hsv_to_rgb(np.array([HUES[hue_index], 0.8, value])).astype(np.float32)


def render_shapes(configuration: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images (4800, 3, 32, 32) float32 in [0, 1] and integer factor labels, in factor-grid order."""
    if configuration not in (1, 2):
        raise ValueError(f"configuration must be 1 or 2, got {configuration}")
    rng = np.random.default_rng(seed)
    masks = _object_masks()
    rows = np.arange(SIZE, dtype=np.float32)[:, None]
    wall_shade = 0.75 + 0.25 * rows / HORIZON  # darker towards the top
    floor_shade = 0.7 + 0.3 * (rows - HORIZON) / (SIZE - HORIZON)  # lighter towards the viewer
    is_wall = (rows < HORIZON).astype(np.float32)
    obj_shade = 0.75 + 0.25 * np.linspace(1.0, 0.0, SIZE, dtype=np.float32)[None, :]  # lit from the left

    grid = np.stack(np.meshgrid(np.arange(10), np.arange(len(SCALES)), np.arange(len(SHAPES)),
                                np.arange(len(ORIENTATIONS)), indexing="ij"), -1).reshape(-1, 4)
    n = len(grid)
    shifts = rng.integers(-2, 3, size=(n, 2))
    images = np.empty((n, 3, SIZE, SIZE), dtype=np.float32)
    for i, (hue, scale, shape, orientation) in enumerate(grid):
        floor_hue, wall_hue = (hue, FIXED_WALL_HUE) if configuration == 1 else (FIXED_FLOOR_HUE, hue)
        background = (is_wall * wall_shade)[..., None] * _colour(wall_hue) \
            + ((1 - is_wall) * floor_shade)[..., None] * _colour(floor_hue)
        alpha = np.roll(masks[shape, scale, orientation], (int(shifts[i, 0]) - 3, int(shifts[i, 1])), axis=(0, 1))
        obj = obj_shade[..., None] * _colour(FIXED_OBJECT_HUE)
        image = background * (1 - alpha[..., None]) + obj * alpha[..., None]
        images[i] = image.transpose(2, 0, 1)
    varying = "floor_hue" if configuration == 1 else "wall_hue"
    factor_labels = {
        "floor_hue": grid[:, 0] if varying == "floor_hue" else np.zeros(n, np.int64),
        "wall_hue": grid[:, 0] if varying == "wall_hue" else np.zeros(n, np.int64),
        "object_hue": np.zeros(n, np.int64),
        "scale": grid[:, 1],
        "shape": grid[:, 2],
        "orientation": grid[:, 3],
    }
    return np.clip(images, 0.0, 1.0), factor_labels


def load_procedural_shapes(configuration: int, split_seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    images, factor_labels = render_shapes(configuration, seed=split_seed)
    train, test = seeded_split(len(images), test_fraction, split_seed)
    x = torch.from_numpy(images)
    return Dataset(
        name=f"shapes-config{configuration}",
        x_train=x[torch.from_numpy(train)],
        x_test=x[torch.from_numpy(test)],
        y_train={f: labels(y[train]) for f, y in factor_labels.items()},
        y_test={f: labels(y[test]) for f, y in factor_labels.items()},
        likelihood="gaussian",
        factors={f: int(y.max()) + 1 for f, y in factor_labels.items()},
    )
