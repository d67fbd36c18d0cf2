"""The parity study's data: mfcbench's shapes-config1 (split_seed 0) for both codes.

Writes, under OUT (default data/):
- Fast_3DShapes/raw/3dshapes.h5: the 4,800 images in DeepMind's 3dshapes layout (uint8, 64x64, each
  pixel doubled; the authors' loader resizes to 32x32 with cv2 and gets our images back exactly, which
  this script checks) and DeepMind's label encoding, with wall hue 5 and object hue 6 so that the
  authors' configs/3dshapes_1.yml keeps every image.
- shapes-config1-authors-split.npz: the same images split as the authors' loader splits them for seed
  0 (np.random.seed(0); np.random.choice(4800, 3840, replace=False): train, the rest: test), for
  `dataset.name: npz:data/shapes-config1-authors-split.npz`. The study runs the authors' code with this
  one split for every seed (see README.md).

Needs h5py and opencv-python-headless (cv2). Run from the repository root:
    python reports/published/parity/export_shapes.py [OUT]
"""
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np

from harness.data.procedural_shapes import render_shapes

out = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
images, factors = render_shapes(1, seed=0)
u8 = np.round(images * 255).astype(np.uint8)                       # (4800, 3, 32, 32)
hwc = u8.transpose(0, 2, 3, 1)
doubled = hwc.repeat(2, axis=1).repeat(2, axis=2)                  # (4800, 64, 64, 3)
if not np.array_equal(np.stack([cv2.resize(im, dsize=(32, 32)) for im in doubled]), hwc):
    raise SystemExit("cv2's 64 -> 32 resize does not give the exported images back")
n = len(u8)
labels = np.zeros((n, 6))
labels[:, 0] = factors["floor_hue"] / 10
labels[:, 1] = 0.5                                                 # wall hue 5
labels[:, 2] = 0.6                                                 # object hue 6
labels[:, 3] = np.linspace(0.75, 1.25, 8)[factors["scale"]]
labels[:, 4] = factors["shape"]
labels[:, 5] = np.linspace(-30, 30, 15)[factors["orientation"]]
(out / "Fast_3DShapes" / "raw").mkdir(parents=True, exist_ok=True)
with h5py.File(out / "Fast_3DShapes" / "raw" / "3dshapes.h5", "w") as h5:
    h5["images"] = doubled
    h5["labels"] = labels
train = np.random.RandomState(0).choice(n, int(n * 0.8), replace=False)
test = np.setdiff1d(np.arange(n), train)
np.savez(out / "shapes-config1-authors-split.npz",
         x=u8[train], y_shape=factors["shape"][train], y_floor_hue=factors["floor_hue"][train],
         x_test=u8[test], y_test_shape=factors["shape"][test], y_test_floor_hue=factors["floor_hue"][test])
print(f"wrote {out / 'Fast_3DShapes/raw/3dshapes.h5'} and {out / 'shapes-config1-authors-split.npz'}")
