"""The device a trial trains on inside Ray, from the GPUs Ray assigned it (no torch, no Ray imports).

Recent Ray no longer hides the GPUs (CUDA_VISIBLE_DEVICES="") from a trial that asked for none, so
torch sees every GPU of the node there: `auto` must ask Ray, not torch, whether this trial has one.
"""
from __future__ import annotations

from typing import Sequence


class DeviceError(ValueError):
    """training.device cannot be honoured with the GPUs Ray gave this trial."""


def trial_device(requested: str, gpu_ids: Sequence, cuda_available: bool) -> str:
    """The training.device for a trial that Ray assigned `gpu_ids` (ray.get_gpu_ids()).

    cpu stays cpu; auto is cuda only when Ray assigned a GPU and torch can use it, else cpu; cuda
    needs a GPU from Ray. With GPUs assigned, Ray makes only those visible, so `cuda` is one of them.
    cuda:N is refused when the sweep is loaded (harness.sweep); here too, in case a config bypassed it.
    """
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        return "cuda" if gpu_ids and cuda_available else "cpu"
    if requested == "cuda":
        if not gpu_ids:
            raise DeviceError("training.device='cuda' but Ray assigned this trial no GPU (resources.gpu is 0); "
                              "give the sweep resources.gpu > 0, or use device auto or cpu")
        return "cuda"
    raise DeviceError(f"training.device={requested!r} is not allowed in a sweep: Ray assigns each trial its GPU "
                      "(resources.gpu); use cuda or auto (or cpu)")
