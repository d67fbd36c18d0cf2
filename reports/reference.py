"""Numbers reported in Falck et al. (2021), shown beside measured rows and marked as reported.

Accuracies are in [0, 1]; std is the sample std over runs where the paper gives one (None where it
reports a single or best-of-R run). `facet` "max" is the paper's headline (the best facet).
"""
from __future__ import annotations

import pandas as pd

# (dataset, factor, method, mean, std, source)
CLUSTERING_ACCURACY = [
    ("mnist", "digit", "DEC (best of 20)", 0.843, None, "Table 2"),
    ("mnist", "digit", "VaDE MLP (best of 10)", 0.9446, None, "Table 2"),
    ("mnist", "digit", "VaDE MLP", 0.8909, 0.0332, "Table 2"),
    ("mnist", "digit", "VaDE conv", 0.9265, 0.0114, "Table 2"),
    ("mnist", "digit", "IMSAT", 0.984, 0.004, "Table 2"),
    ("mnist", "digit", "ACOL-GAR", 0.9832, 0.0008, "Table 2"),
    ("mnist", "digit", "LTVAE", 0.863, None, "Table 2"),
    ("mnist", "digit", "MFCVAE", 0.9202, 0.0318, "Table 2"),
    ("svhn", "digit", "DEC", 0.119, 0.004, "Table 2"),
    ("svhn", "digit", "VaDE MLP", 0.2703, 0.0153, "Table 2"),
    ("svhn", "digit", "VaDE conv", 0.3080, 0.0199, "Table 2"),
    ("svhn", "digit", "IMSAT", 0.573, 0.039, "Table 2"),
    ("svhn", "digit", "ACOL-GAR", 0.7680, 0.0130, "Table 2"),
    ("svhn", "digit", "VLAC", 0.378, 0.022, "Table 2"),
    ("svhn", "digit", "MFCVAE", 0.5625, 0.0093, "Table 2"),
    ("3dshapes-config1", "floor_hue", "MFCVAE", 0.9946, 0.0110, "Section 4.3"),
    ("3dshapes-config1", "shape", "MFCVAE", 0.8847, 0.0182, "Section 4.3"),
    ("3dshapes-config2", "wall_hue", "MFCVAE", 1.0000, 0.0000, "Section 4.3"),
    ("3dshapes-config2", "shape", "MFCVAE", 0.9005, 0.0265, "Section 4.3"),
]

# Table 1: MLP probe test accuracy from z_1, z_2 and their concatenation (3 runs).
PROBE_ACCURACY = [
    ("mnist", "digit", "z1", 0.1734, 0.0024), ("mnist", "digit", "z2", 0.9495, 0.0004),
    ("mnist", "digit", "z", 0.9527, 0.0007),
    ("3dshapes-config1", "shape", "z1", 0.9500, 0.0045), ("3dshapes-config1", "shape", "z2", 0.3243, 0.0138),
    ("3dshapes-config1", "shape", "z", 0.9518, 0.0042),
    ("3dshapes-config1", "floor_hue", "z1", 0.2000, 0.0068), ("3dshapes-config1", "floor_hue", "z2", 1.0, 0.0),
    ("3dshapes-config1", "floor_hue", "z", 1.0, 0.0),
    ("3dshapes-config2", "shape", "z1", 0.9826, 0.0016), ("3dshapes-config2", "shape", "z2", 0.2441, 0.0134),
    ("3dshapes-config2", "shape", "z", 0.9819, 0.0030),
    ("3dshapes-config2", "wall_hue", "z1", 0.7340, 0.0148), ("3dshapes-config2", "wall_hue", "z2", 1.0, 0.0),
    ("3dshapes-config2", "wall_hue", "z", 0.9997, 0.0006),
    ("svhn", "digit", "z1", 0.6946, 0.0036), ("svhn", "digit", "z2", 0.2230, 0.0016),
    ("svhn", "digit", "z", 0.7039, 0.0029),
]

# Table 7: LPIPS of 60,000 generated samples and of real images.
LPIPS = [
    ("mnist", "real images", 0.112), ("mnist", "VaDE", 0.111), ("mnist", "MFCVAE", 0.116),
    ("svhn", "real images", 0.227), ("svhn", "VaDE", 0.187), ("svhn", "MFCVAE", 0.182),
]


def accuracy_frame() -> pd.DataFrame:
    return pd.DataFrame(CLUSTERING_ACCURACY, columns=["dataset", "factor", "method", "mean", "std", "source"])


def probe_frame() -> pd.DataFrame:
    return pd.DataFrame(PROBE_ACCURACY, columns=["dataset", "factor", "inputs", "mean", "std"])


def lpips_frame() -> pd.DataFrame:
    return pd.DataFrame(LPIPS, columns=["dataset", "samples", "lpips"])
