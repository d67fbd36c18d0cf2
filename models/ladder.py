"""The Variational Ladder Autoencoder of appendix D.2, for any number of facets J.

Recognition (eq. 74-75): h_j = b_j^enc(h_{j-1}), q(z_j | x) = N(r_j^enc(h_j)), h_0 = x.
Generation (eq. 78-79 with the fade-in of eq. 88):
  z~_J = b_J^dec(alpha_J r_J^dec(z_J)),   z~_j = b_j^dec([z~_{j+1}, alpha_j r_j^dec(z_j)]),   x ~ u(z~_1).
The merge [.,.] is the concatenation of eq. (79) by default (`decoder_merge: concat`). Table 4 lists
b_1^dec with a 500-wide input, which matches the authors' FC ladder: a gated addition z~_{j+1} + 0.1
alpha_j r_j^dec(z_j) (`decoder_merge: gated-add`, for ablations and side-by-side runs; the authors' conv
decoder concatenates, so on ladder-conv gated-add is an ablation only). Facet 1 branches off
shallowest, facet J deepest.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import Unflatten, activation, conv_down, conv_up, dense, halvings


GATE = 0.1  # the authors' constant in merge(r, b) = 0.1 r + b (models_fc.py, their FC ladder)


def merge(upper: torch.Tensor, rung: torch.Tensor, how: str) -> torch.Tensor:
    """Eq. (79)'s merge of the deeper facets' decoding with facet j's (already alpha-scaled) rung."""
    if how == "concat":
        return torch.cat([upper, rung], dim=1)
    return upper + GATE * rung


def _split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, log_var = out.chunk(2, dim=-1)
    return mean, log_var


class LadderMLPEncoder(nn.Module):
    """Table 4, recognition: b_j = Linear + act, r_j = Linear to (mean, log variance)."""

    def __init__(self, input_dim: int, widths: list[int], latent_dims: list[int], act: str):
        super().__init__()
        ins = [input_dim] + widths[:-1]
        self.backbone = nn.ModuleList(dense(i, w, act) for i, w in zip(ins, widths))
        self.rungs = nn.ModuleList(nn.Linear(w, 2 * d) for w, d in zip(widths, latent_dims))

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        h, params = x.flatten(1), []
        for backbone, rung in zip(self.backbone, self.rungs):
            h = backbone(h)
            params.append(_split(rung(h)))
        return params


class LadderMLPDecoder(nn.Module):
    """Table 4, generation: r_j^dec = Linear + act into width w_j; b_j^dec maps to w_{j-1} (or x)."""

    def __init__(self, output_shape: tuple[int, ...], widths: list[int], latent_dims: list[int], act: str,
                 merge: str = "concat"):
        super().__init__()
        self.output_shape = output_shape
        self.merge = merge
        J = len(widths)
        self.rungs = nn.ModuleList(dense(d, w, act) for d, w in zip(latent_dims, widths))
        blocks = []
        for j in range(J):  # index j is facet j+1
            n_in = widths[j] if j == J - 1 or merge == "gated-add" else 2 * widths[j]
            if j == 0:
                blocks.append(nn.Linear(n_in, math.prod(output_shape)))
            else:
                blocks.append(dense(n_in, widths[j - 1], act))
        self.backbone = nn.ModuleList(blocks)

    def forward(self, zs: list[torch.Tensor], alphas: torch.Tensor) -> torch.Tensor:
        J = len(zs)
        h = self.backbone[J - 1](alphas[J - 1] * self.rungs[J - 1](zs[J - 1]))
        for j in range(J - 2, -1, -1):
            h = self.backbone[j](merge(h, alphas[j] * self.rungs[j](zs[j]), self.merge))
        return h.view(len(h), *self.output_shape)


class LadderConvEncoder(nn.Module):
    """Table 5, recognition: b_j = 4x4 stride-2 conv; r_j = stride-2 conv, stride-1 conv, linear."""

    def __init__(self, input_shape: tuple[int, int, int], channels: list[int], latent_dims: list[int], act: str):
        super().__init__()
        c, size, _ = input_shape
        sizes = halvings(size, len(channels))
        if sizes[-1] < 2:
            raise ValueError(
                f"ladder-conv with {len(channels)} facets needs images of at least {2 ** (len(channels) + 1)} "
                f"pixels a side, got {size}")
        ins = [c] + channels[:-1]
        self.backbone = nn.ModuleList(conv_down(i, o, act) for i, o in zip(ins, channels))
        self.rungs = nn.ModuleList(
            nn.Sequential(conv_down(ch, ch, act), conv_down(ch, ch, act, kernel=3, stride=1),
                          nn.Flatten(), nn.Linear(ch * (s // 2) ** 2, 2 * d))
            for ch, s, d in zip(channels, sizes[1:], latent_dims))

    def forward(self, x):
        h, params = x, []
        for backbone, rung in zip(self.backbone, self.rungs):
            h = backbone(h)
            params.append(_split(rung(h)))
        return params


class LadderConvDecoder(nn.Module):
    """Table 5, generation: r_j^dec = linear to a (c_j, s_j, s_j) map; b_j^dec = transposed conv."""

    def __init__(self, output_shape: tuple[int, int, int], channels: list[int], latent_dims: list[int], act: str,
                 merge: str = "concat"):
        super().__init__()
        c, size, _ = output_shape
        self.output_shape = output_shape
        self.merge = merge
        sizes = halvings(size, len(channels))  # sizes[j+1] is facet j+1's map size
        J = len(channels)
        self.rungs = nn.ModuleList(
            nn.Sequential(nn.Linear(d, ch * s * s), Unflatten(ch, s), activation(act), nn.BatchNorm2d(ch))
            for d, ch, s in zip(latent_dims, channels, sizes[1:]))
        blocks = []
        for j in range(J):
            c_in = channels[j] if j == J - 1 or merge == "gated-add" else 2 * channels[j]
            if j == 0:
                blocks.append(conv_up(c_in, c, sizes[1], sizes[0], act=None))
            else:
                blocks.append(conv_up(c_in, channels[j - 1], sizes[j + 1], sizes[j], act))
        self.backbone = nn.ModuleList(blocks)

    def forward(self, zs, alphas):
        J = len(zs)
        h = self.backbone[J - 1](alphas[J - 1] * self.rungs[J - 1](zs[J - 1]))
        for j in range(J - 2, -1, -1):
            h = self.backbone[j](merge(h, alphas[j] * self.rungs[j](zs[j]), self.merge))
        return h
