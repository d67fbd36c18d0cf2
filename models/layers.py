"""Small building blocks shared by the architectures."""
from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.parametrize import is_parametrized

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def dense(n_in: int, n_out: int, act: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), activation(act))


def conv_down(c_in: int, c_out: int, act: str, kernel: int = 4, stride: int = 2, padding: int = 1,
              normalise_weight: bool = False) -> nn.Sequential:
    """Conv2d, activation, batch norm (the order of Table 5). `normalise_weight`: the convolution is
    weight-normalised (w = g v / |v|), as the authors' encoder convolutions are."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding)
    return nn.Sequential(weight_norm(conv) if normalise_weight else conv, activation(act), nn.BatchNorm2d(c_out))


def conv_down_size(size: int, kernel: int, stride: int, padding: int = 1) -> int:
    """The output side of `conv_down` on a `size` x `size` map."""
    return (size + 2 * padding - kernel) // stride + 1


class CropTo(nn.Module):
    """Keep the first `size` rows and columns: a transposed convolution one pixel too large, cropped,
    is the same convolution with one less pixel of padding on the far side."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, h):
        return h[..., :self.size, :self.size]


def conv_up(c_in: int, c_out: int, size_in: int, size_out: int, act: str | None,
            kernel: int = 4, stride: int = 2) -> nn.Sequential:
    """ConvTranspose2d (padding 1) from size_in to size_out, then activation and batch norm unless
    `act` is None. Sizes the padding-1 layer misses by one are met by output padding (one more) or
    a crop (one less: Table 5's 4x4 stride-1 layer maps 16 to 17)."""
    natural = (size_in - 1) * stride - 2 + kernel
    extra = size_out - natural
    if extra not in (-1, 0, 1) or (extra == 1 and stride == 1):
        raise ValueError(f"cannot map {size_in} -> {size_out} with a {kernel}x{kernel} stride-{stride} "
                         "transposed convolution")
    layers = [nn.ConvTranspose2d(c_in, c_out, kernel, stride, 1, output_padding=max(extra, 0))]
    if extra == -1:
        layers.append(CropTo(size_out))
    if act is not None:
        layers += [activation(act), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers)


def has_normalised_weight(layer: nn.Module) -> bool:
    """Whether `layer.weight` is computed from weight norm's (g, v) rather than stored."""
    return is_parametrized(layer, "weight")


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

