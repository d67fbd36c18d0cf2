"""Autoencoder pretraining before the GMM prior init (VaDE, appendix D.5; optional for MFCVAE).

`model.pretrain: autoencoder` (pretrain_autoencoder): the encoder's posterior means go straight into
the decoder, every facet fully active, and both are trained on the likelihood's reconstruction loss
alone: a plain deterministic autoencoder, end to end.
`model.pretrain: stacked-denoising` (pretrain_stacked_denoising): DEC's stacked denoising autoencoder
(Xie et al., 2016, section 3.2), which VaDE's paper uses: each encoder layer and its mirror decoder
layer trained as a one-layer denoising autoencoder on the clean output of the layers below, then the
whole stack fine-tuned end to end as above. docs/configuration.md says what each measured.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .init import batch_bounds

CORRUPTION = 0.2  # DEC's dropout rate on each layer's input and code while it is pretrained


def mirror_pairs(model) -> list[tuple[Callable, nn.Module, list[nn.Parameter]]]:
    """(encode one layer, its mirror decoder layer, their parameters), from the input inwards, for the
    shared MLP with one facet (Table 6): encoder block k (ins_k -> w_k) mirrors the decoder block
    w_k -> ins_k; the last is the head's mean half (w_last -> z), mirrored by t^dec (z -> w_last)."""
    encoder, decoder = model.encoder, model.decoder
    if not (hasattr(encoder, "body") and hasattr(encoder, "heads") and len(encoder.heads) == 1
            and all(isinstance(block[0], nn.Linear) for block in encoder.body)):
        raise ValueError("stacked-denoising pretraining needs the shared-mlp architecture with one facet")
    blocks, head = list(encoder.body), encoder.heads[0]
    mirrors = list(decoder.body)[::-1]  # [Linear(w_0 -> x), dense(w_1 -> w_0), ..., dense(z -> w_last)]
    latent = head.out_features // 2
    pairs = [(block, mirror, [*block.parameters(), *mirror.parameters()]) for block, mirror in zip(blocks, mirrors)]

    def head_mean(h: torch.Tensor) -> torch.Tensor:
        return head(h)[..., :latent]

    pairs.append((head_mean, mirrors[-1], [*head.parameters(), *mirrors[-1].parameters()]))
    return pairs


class PretrainingDiverged(FloatingPointError):
    """The pretraining loss went non-finite: the GMM prior init would be fitted on NaN latents."""


def _finite(total: float, what: str, epoch: int, epochs: int) -> None:
    if not math.isfinite(total):
        raise PretrainingDiverged(f"non-finite loss in {what} epoch {epoch + 1} of {epochs}")


def pretrain_stacked_denoising(model, x_train: torch.Tensor, epochs: int, batch_size: int, lr: float,
                               generator: torch.Generator, log: Callable[[str], None]) -> list[float]:
    """`epochs` passes of Adam per layer pair (mirror_pairs): the pair reconstructs its input from a
    corrupted copy (dropout CORRUPTION on the input and on the code), the first through the likelihood,
    the others by squared error, as DEC; then `epochs` passes of pretrain_autoencoder over the stack.
    Returns each pair's mean loss in its last pass."""
    was_training = model.training
    model.train()
    bounds = batch_bounds(len(x_train), batch_size)
    h = x_train.flatten(1)
    last_losses = []
    for k, (encode, mirror, params) in enumerate(mirror_pairs(model)):
        optimiser = torch.optim.Adam(params, lr=lr)
        for epoch in range(epochs):
            order = torch.randperm(len(h), generator=generator, device=h.device)
            total = 0.0
            for start, end in bounds:
                rows = order[start:end]
                target = h[rows]
                # dropout draws from the global RNG, which set_up seeds: a seed fixes the run
                code = encode(F.dropout(target, CORRUPTION))
                out = mirror(F.dropout(code, CORRUPTION))
                if k == 0:
                    loss = -model.likelihood.log_prob(out.view(len(rows), *x_train.shape[1:]), x_train[rows]).mean()
                else:
                    loss = F.mse_loss(out, target, reduction="none").sum(-1).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.item() * len(rows)
            _finite(total, f"stacked denoising pretraining (layer {k + 1})", epoch, epochs)
            if epoch + 1 == epochs:
                last_losses.append(total / len(h))
                log(f"stacked denoising pretraining, layer {k + 1}: {epochs} epochs, loss {last_losses[-1]:.3f}")
        with torch.no_grad():  # the clean output feeds the next pair
            h = torch.cat([encode(h[start:end]) for start, end in bounds])
    model.train(was_training)
    pretrain_autoencoder(model, x_train, epochs, batch_size, lr, generator, log)
    return last_losses


def pretrain_autoencoder(model, x_train: torch.Tensor, epochs: int, batch_size: int, lr: float,
                         generator: torch.Generator, log: Callable[[str], None]) -> None:
    """`epochs` passes of Adam over `x_train` (shuffled by `generator`) on -log p(x | z = E[z | x])."""
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    optimiser = torch.optim.Adam(params, lr=lr)
    ones = torch.ones_like(model.alphas)
    was_training = model.training
    model.train()
    bounds = batch_bounds(len(x_train), batch_size)
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=generator, device=x_train.device)
        total = 0.0
        for start, end in bounds:
            x = x_train[order[start:end]]
            means = [mean for mean, _ in model.encode(x)]
            loss = -model.likelihood.log_prob(model.decode(means, ones), x).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(x)
        _finite(total, "autoencoder pretraining", epoch, epochs)
        if epoch + 1 == epochs or (epoch + 1) % max(1, epochs // 10) == 0:
            log(f"autoencoder pretraining epoch {epoch + 1}/{epochs}: reconstruction loss {total / len(x_train):.3f}")
    model.train(was_training)


def pretrainer(method: str) -> Callable:
    """The function `model.pretrain: method` names: pretrain_autoencoder or pretrain_stacked_denoising
    (looked up when called, so that a test can replace either in this module)."""
    return pretrain_stacked_denoising if method == "stacked-denoising" else pretrain_autoencoder
