"""Small building blocks shared by the architectures."""
from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def dense(n_in: int, n_out: int, act: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), activation(act))


def conv_down(c_in: int, c_out: int, act: str, kernel: int = 4, stride: int = 2, padding: int = 1) -> nn.Sequential:
    """Conv2d, activation, batch norm (the order of Table 5)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding), activation(act), nn.BatchNorm2d(c_out))


def conv_up(c_in: int, c_out: int, size_in: int, size_out: int, act: str | None) -> nn.Sequential:
    """ConvTranspose2d (4x4, stride 2) from size_in to size_out; act None for the output layer."""
    extra = size_out - 2 * size_in
    if extra not in (0, 1):
        raise ValueError(f"cannot upsample {size_in} -> {size_out} with stride 2")
    layer = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, output_padding=extra)
    if act is None:
        return nn.Sequential(layer)
    return nn.Sequential(layer, activation(act), nn.BatchNorm2d(c_out))


class Unflatten(nn.Module):
    def __init__(self, channels: int, size: int):
        super().__init__()
        self.shape = (channels, size, size)

    def forward(self, h):
        return h.view(len(h), *self.shape)


def halvings(size: int, times: int) -> list[int]:
    """Spatial sizes after each stride-2 4x4 conv with padding 1: floor(s / 2)."""
    sizes = [size]
    for _ in range(times):
        sizes.append(sizes[-1] // 2)
    return sizes
