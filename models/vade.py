"""VaDE (Jiang et al., 2017): a single-facet clustering VAE with a shared MLP (500-500-2000) or conv
network, autoencoder pretraining and a GMM initialisation of pi, mu and the diagonal variances.

Its training objective is MFCVAE's with J = 1 (appendix D.5): only the preparation differs. The
pretraining here is a plain deterministic autoencoder (encoder mean -> decoder) trained on the
likelihood's reconstruction loss, not DEC's stacked denoising variant.
"""
from __future__ import annotations

from typing import Callable

import torch

from .init import batch_statistics, fit_gmm
from .mfcvae import MFCVAE


class VaDE(MFCVAE):
    def pretrain_autoencoder(self, x_train: torch.Tensor, epochs: int, batch_size: int, lr: float,
                             generator: torch.Generator, log: Callable[[str], None]) -> None:
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        optimiser = torch.optim.Adam(params, lr=lr)
        ones = torch.ones_like(self.alphas)
        self.train()
        for epoch in range(epochs):
            order = torch.randperm(len(x_train), generator=generator, device=x_train.device)
            total = 0.0
            for start in range(0, len(x_train), batch_size):
                x = x_train[order[start:start + batch_size]]
                means = [mean for mean, _ in self.encode(x)]
                loss = -self.likelihood.log_prob(self.decode(means, ones), x).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.item() * len(x)
            log(f"autoencoder pretraining epoch {epoch + 1}/{epochs}: reconstruction loss {total / len(x_train):.3f}")

    def prepare(self, x_train, seed, batch_size, lr, log=print) -> None:
        """AE pretraining (`pretrain_epochs`), then pi, mu and variances from a GMM on the encoder means."""
        generator = torch.Generator(device=x_train.device).manual_seed(seed)
        if self.config.pretrain_epochs:
            self.pretrain_autoencoder(x_train, self.config.pretrain_epochs, batch_size, lr, generator, log)
        with batch_statistics(self):  # as in MFCVAE.prepare: the encoder as it trains
            (latents,) = self.latents(x_train, sample=False)
        prior = self.priors[0]
        gmm = fit_gmm(latents, prior.n_clusters, seed)
        as_tensor = lambda a: torch.as_tensor(a, dtype=prior.means.dtype, device=prior.means.device)  # noqa: E731
        prior.set_means(as_tensor(gmm.means_))
        prior.reset_covariances(as_tensor(gmm.covariances_))
        if not self.config.fix_pi:
            prior.set_weights(as_tensor(gmm.weights_))
        log(f"prior init: GMM with {prior.n_clusters} components on {len(latents)} encoder means")
        self.train()
