"""Autoencoder pretraining before the GMM prior init (VaDE, appendix D.5; optional for MFCVAE).

The encoder's posterior means go straight into the decoder, every facet fully active, and both are
trained on the likelihood's reconstruction loss alone: a plain deterministic autoencoder, end to
end. DEC's stacked denoising autoencoder (layer-wise, then fine-tuned), which VaDE's paper uses, is
not implemented; docs/configuration.md says what the plain one measured.
"""
from __future__ import annotations

from typing import Callable

import torch

from .init import batch_bounds


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
        if epoch + 1 == epochs or (epoch + 1) % max(1, epochs // 10) == 0:
            log(f"autoencoder pretraining epoch {epoch + 1}/{epochs}: reconstruction loss {total / len(x_train):.3f}")
    model.train(was_training)
