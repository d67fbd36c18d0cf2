"""The shared encoder/decoder architecture of appendix D.2 (eq. 81-87), Table 6; VaDE's network.

h = s^enc(x), q(z_j | x) = N(t_j^enc(h)); generation h = t^dec([z_1, ..., z_J]), x ~ u(s^dec(h)).
Under progressive training alpha_j scales z_j where it enters t^dec, so alpha_j = 0 cuts facet j
out of the decoder as the ladder's fade-in does.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import Unflatten, activation, conv_down, conv_up, dense, halvings


class SharedMLPEncoder(nn.Module):
    def __init__(self, input_dim: int, widths: list[int], latent_dims: list[int], act: str):
        super().__init__()
        ins = [input_dim] + widths[:-1]
        self.body = nn.Sequential(*(dense(i, w, act) for i, w in zip(ins, widths)))
        self.heads = nn.ModuleList(nn.Linear(widths[-1], 2 * d) for d in latent_dims)

    def forward(self, x):
        h = self.body(x.flatten(1))
        return [tuple(head(h).chunk(2, dim=-1)) for head in self.heads]


class SharedMLPDecoder(nn.Module):
    def __init__(self, output_shape, widths: list[int], latent_dims: list[int], act: str):
        super().__init__()
        self.output_shape = output_shape
        rev = widths[::-1]
        layers = [dense(sum(latent_dims), rev[0], act)]  # t^dec on the concatenation, eq. (85)
        layers += [dense(i, o, act) for i, o in zip(rev[:-1], rev[1:])]
        layers.append(nn.Linear(rev[-1], math.prod(output_shape)))
        self.body = nn.Sequential(*layers)

    def forward(self, zs, alphas):
        z = torch.cat([alphas[j] * z for j, z in enumerate(zs)], dim=-1)
        return self.body(z).view(len(z), *self.output_shape)


class SharedConvEncoder(nn.Module):
    """A convolutional shared encoder (VaDE's conv variant): stride-2 convs, then one head per facet."""

    def __init__(self, input_shape, channels: list[int], latent_dims: list[int], act: str):
        super().__init__()
        c, size, _ = input_shape
        sizes = halvings(size, len(channels))
        if sizes[-1] < 1:
            raise ValueError(f"shared-conv with {len(channels)} layers needs images of at least "
                             f"{2 ** len(channels)} pixels a side, got {size}")
        ins = [c] + channels[:-1]
        self.body = nn.Sequential(*(conv_down(i, o, act) for i, o in zip(ins, channels)), nn.Flatten())
        flat = channels[-1] * sizes[-1] ** 2
        self.heads = nn.ModuleList(nn.Linear(flat, 2 * d) for d in latent_dims)

    def forward(self, x):
        h = self.body(x)
        return [tuple(head(h).chunk(2, dim=-1)) for head in self.heads]


class SharedConvDecoder(nn.Module):
    def __init__(self, output_shape, channels: list[int], latent_dims: list[int], act: str):
        super().__init__()
        c, size, _ = output_shape
        sizes = halvings(size, len(channels))
        rev = channels[::-1]
        layers = [nn.Linear(sum(latent_dims), rev[0] * sizes[-1] ** 2), Unflatten(rev[0], sizes[-1]),
                  activation(act), nn.BatchNorm2d(rev[0])]
        n = len(channels)
        for k in range(n):  # upsample sizes[n-k] -> sizes[n-k-1]
            c_out = c if k == n - 1 else rev[k + 1]
            layers.append(conv_up(rev[k], c_out, sizes[n - k], sizes[n - k - 1], None if k == n - 1 else act))
        self.body = nn.Sequential(*layers)

    def forward(self, zs, alphas):
        return self.body(torch.cat([alphas[j] * z for j, z in enumerate(zs)], dim=-1))
