"""The Variational Ladder Autoencoder of appendix D.2, for any number of facets J.

Recognition (eq. 74-75): h_j = b_j^enc(h_{j-1}), q(z_j | x) = N(r_j^enc(h_j)), h_0 = x.
Generation (eq. 78-79 with the fade-in of eq. 88):
  z~_J = b_J^dec(alpha_J r_J^dec(z_J)),   z~_j = b_j^dec(merge(z~_{j+1}, alpha_j r_j^dec(z_j))),   x ~ u(z~_1).
Facet 1 branches off shallowest, facet J deepest.

The merge. Eq. (79) concatenates (`concat`), and Table 5's b_1^dec takes the 64 + 64 = 128 channels
of a concatenation. Table 4's b_1^dec takes 500 features, the width of one of the two inputs, which
matches the authors' FC ladder: the gated addition z~_{j+1} + 0.1 alpha_j r_j^dec(z_j) (`gated-add`;
the gate 0.1 is the code's, models_fc.py line 147). Each ladder's default follows its table.

Table 4, the fully connected ladder (J = 2, widths 500 and 2000), line by line:
  b_1^enc  dim(x) x 500 linear, ReLU           LadderMLPEncoder.backbone[0]
  r_1^enc  500 x 2 dim(z_1) linear             LadderMLPEncoder.rungs[0]
  b_2^enc  500 x 2000 linear, ReLU             LadderMLPEncoder.backbone[1]
  r_2^enc  2000 x 2 dim(z_2) linear            LadderMLPEncoder.rungs[1]
  r_2^dec  dim(z_2) x 2000 linear, ReLU        LadderMLPDecoder.rungs[1]
  b_2^dec  2000 x 500 linear, ReLU             LadderMLPDecoder.backbone[1]
  r_1^dec  dim(z_1) x 500 linear, ReLU         LadderMLPDecoder.rungs[0]
  b_1^dec  500 x dim(x) linear (+ sigmoid)     LadderMLPDecoder.backbone[0]; the sigmoid is the likelihood's
Other J and widths keep the same pattern (widths from ModelConfig.resolved_hidden_sizes).

Table 5, the convolutional ladder (J = 2, 32x32 images), line by line, is `table5()` below: every
convolution is followed by ELU and batch norm, every rung linear layer of the decoder by ELU and
batch norm over its 16,384 features, and the output by ELU and batch norm (the sigmoid, "only for
SVHN", is the likelihood's `gaussian_mean`). Two lines of Table 5 are not literal:
- r_1^enc's linear layer reads "1024 x 2 dim(z_1)" and r_2^enc's "3136 x 2 dim(z_2)", but the
  convolutions above them give 64 x 7 x 7 = 3136 and 256 x 2 x 2 = 1024 features: the two numbers
  are swapped. We follow the convolutions (so does the authors' conv_vlae.py, line 153).
- b_2^dec's stride-1 layer, 64 x 128 x 4 x 4 (*), cannot map 16 x 16 to 16 x 16 with symmetric
  padding; we pad one pixel less on the far side (a 17 x 17 output, cropped). The authors' code uses
  a 3 x 3 kernel instead (conv_vlae.py line 282): `authors_code: [conv-3x3-upsample]`.
Other J or image sizes use `general_conv_ladder`: the same pattern with one stride-2 convolution per
backbone step, channels doubling from 64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .layers import Unflatten, activation, conv_down, conv_down_size, conv_up, dense, halvings

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
    """Table 4, generation: r_j^dec = Linear + act into width w_j; b_j^dec maps to w_{j-1} (or x).

    `extra_output_layer`: b_1^dec is a w_1 x w_1 layer with activation before the output layer, as in
    the authors' FC ladder (their dec_backbone_dims, configs/mnist.yml), which Table 4 does not list."""

    def __init__(self, output_shape: tuple[int, ...], widths: list[int], latent_dims: list[int], act: str,
                 merge: str = "gated-add", extra_output_layer: bool = False):
        super().__init__()
        self.output_shape = output_shape
        self.merge = merge
        J = len(widths)
        self.rungs = nn.ModuleList(dense(d, w, act) for d, w in zip(latent_dims, widths))
        blocks = []
        for j in range(J):  # index j is facet j+1
            n_in = widths[j] if j == J - 1 or merge == "gated-add" else 2 * widths[j]
            if j > 0:
                blocks.append(dense(n_in, widths[j - 1], act))
            elif extra_output_layer:
                blocks.append(nn.Sequential(dense(n_in, widths[0], act), nn.Linear(widths[0], math.prod(output_shape))))
            else:
                blocks.append(nn.Linear(n_in, math.prod(output_shape)))
        self.backbone = nn.ModuleList(blocks)

    def forward(self, zs: list[torch.Tensor], alphas: torch.Tensor) -> torch.Tensor:
        J = len(zs)
        h = self.backbone[J - 1](alphas[J - 1] * self.rungs[J - 1](zs[J - 1]))
        for j in range(J - 2, -1, -1):
            h = self.backbone[j](merge(h, alphas[j] * self.rungs[j](zs[j]), self.merge))
        return h.view(len(h), *self.output_shape)


@dataclass(frozen=True)
class Conv:
    """One (transposed) convolution: output channels (0: the image's channels), kernel side, stride."""
    channels: int
    kernel: int
    stride: int


@dataclass(frozen=True)
class ConvFacet:
    """One facet's layers in a conv ladder."""
    backbone: Conv               # b_j^enc
    rung: tuple[Conv, ...]       # r_j^enc's convolutions, before its linear layer to (mean, log variance)
    rung_map: tuple[int, int]    # r_j^dec: a linear layer to a (channels, size, size) map
    up: tuple[Conv, ...]         # b_j^dec's transposed convolutions


def table5(upsample_kernel: int = 4) -> list[ConvFacet]:
    """Appendix D, Table 5 (J = 2, 32x32 images); (*) marks its stride-1 layers."""
    return [
        ConvFacet(backbone=Conv(64, 4, 2),                      # b_1^enc: 64 x dim(x) x 4 x 4 Conv2d
                  rung=(Conv(64, 4, 2),                         # r_1^enc: 64 x 64 x 4 x 4 Conv2d
                        Conv(64, 4, 1)),                        #          64 x 64 x 4 x 4 Conv2d (*), then linear
                  rung_map=(64, 16),                            # r_1^dec: dim(z_1) x 16384 linear
                  up=(Conv(0, 4, 2),)),                         # b_1^dec: dim(x) x 128 x 4 x 4 ConvTranspose2d
        ConvFacet(backbone=Conv(128, 4, 2),                     # b_2^enc: 128 x 64 x 4 x 4 Conv2d
                  rung=(Conv(128, 4, 2),                        # r_2^enc: 128 x 128 x 4 x 4 Conv2d
                        Conv(256, 4, 2)),                       #          256 x 128 x 4 x 4 Conv2d, then linear
                  rung_map=(256, 8),                            # r_2^dec: dim(z_2) x 16384 linear
                  up=(Conv(128, 4, 2),                          # b_2^dec: 128 x 256 x 4 x 4 ConvTranspose2d
                      Conv(64, upsample_kernel, 1))),           #          64 x 128 x 4 x 4 ConvTranspose2d (*)
    ]


def general_conv_ladder(size: int, channels: list[int]) -> list[ConvFacet]:
    """Any J and image size: b_j^enc a stride-2 4x4 convolution to channels[j]; r_j^enc a stride-2 4x4
    and a stride-1 3x3 convolution; r_j^dec a map of channels[j] at b_j^enc's output size; b_j^dec one
    stride-2 transposed convolution up to facet j-1's map (or the image)."""
    sizes = halvings(size, len(channels))
    return [ConvFacet(backbone=Conv(ch, 4, 2), rung=(Conv(ch, 4, 2), Conv(ch, 3, 1)), rung_map=(ch, sizes[j + 1]),
                      up=(Conv(channels[j - 1] if j else 0, 4, 2),))
            for j, ch in enumerate(channels)]


def conv_ladder_facets(input_shape: tuple[int, int, int], n_facets: int, channels: list[int] | None,
                       upsample_kernel: int = 4) -> list[ConvFacet]:
    """Table 5 for two facets on 32x32 images unless channels are given; else the general ladder."""
    size = input_shape[1]
    if channels is None and n_facets == 2 and size == 32:
        return table5(upsample_kernel)
    return general_conv_ladder(size, channels or [64 * 2 ** j for j in range(n_facets)])


class LadderConvEncoder(nn.Module):
    """Table 5, recognition; `normalise_weight`: weight-normalised convolutions (the authors' code)."""

    def __init__(self, input_shape: tuple[int, int, int], facets: list[ConvFacet], latent_dims: list[int], act: str,
                 normalise_weight: bool = False):
        super().__init__()
        c, size, _ = input_shape

        def block(c_in, conv):
            return conv_down(c_in, conv.channels, act, conv.kernel, conv.stride, normalise_weight=normalise_weight)

        backbone, rungs = [], []
        for facet, d in zip(facets, latent_dims):
            backbone.append(block(c, facet.backbone))
            c, size = facet.backbone.channels, conv_down_size(size, facet.backbone.kernel, facet.backbone.stride)
            layers, rung_c, rung_size = [], c, size
            for conv in facet.rung:
                layers.append(block(rung_c, conv))
                rung_c, rung_size = conv.channels, conv_down_size(rung_size, conv.kernel, conv.stride)
            if rung_size < 1:
                raise ValueError(
                    f"ladder-conv with {len(facets)} facets needs images of at least {2 ** (len(facets) + 1)} "
                    f"pixels a side, got {input_shape[1]}")
            rungs.append(nn.Sequential(*layers, nn.Flatten(), nn.Linear(rung_c * rung_size ** 2, 2 * d)))
        self.backbone = nn.ModuleList(backbone)
        self.rungs = nn.ModuleList(rungs)

    def forward(self, x):
        h, params = x, []
        for backbone, rung in zip(self.backbone, self.rungs):
            h = backbone(h)
            params.append(_split(rung(h)))
        return params


class LadderConvDecoder(nn.Module):
    """Table 5, generation: r_j^dec = linear, act, batch norm over its features, as a map; b_j^dec =
    transposed convolutions, each with act and batch norm, ending at facet j-1's map size (or x)."""

    def __init__(self, output_shape: tuple[int, int, int], facets: list[ConvFacet], latent_dims: list[int], act: str,
                 merge: str = "concat"):
        super().__init__()
        c_x, size, _ = output_shape
        self.output_shape = output_shape
        self.merge = merge
        self.rungs = nn.ModuleList(
            nn.Sequential(nn.Linear(d, ch * s * s), activation(act), nn.BatchNorm1d(ch * s * s), Unflatten(ch, s))
            for d, (ch, s) in zip(latent_dims, (f.rung_map for f in facets)))
        blocks, arriving = [None] * len(facets), None  # channels b_{j+1}^dec hands to facet j
        for j in range(len(facets) - 1, -1, -1):
            ch, s = facets[j].rung_map
            if arriving is not None and merge == "gated-add" and arriving != ch:
                raise ValueError(f"decoder_merge gated-add needs equal channels at facet {j + 1}: {arriving} vs {ch}")
            c_in = ch + arriving if arriving is not None and merge == "concat" else ch
            target = facets[j - 1].rung_map[1] if j else size
            layers = []
            for k, conv in enumerate(facets[j].up):
                last = k == len(facets[j].up) - 1
                s_out = target if last else s * conv.stride
                c_out = conv.channels or c_x
                layers.append(conv_up(c_in, c_out, s, s_out, act, conv.kernel, conv.stride))
                c_in, s = c_out, s_out
            blocks[j], arriving = nn.Sequential(*layers), c_in
        self.backbone = nn.ModuleList(blocks)

    def forward(self, zs, alphas):
        J = len(zs)
        h = self.backbone[J - 1](alphas[J - 1] * self.rungs[J - 1](zs[J - 1]))
        for j in range(J - 2, -1, -1):
            h = self.backbone[j](merge(h, alphas[j] * self.rungs[j](zs[j]), self.merge))
        return h
