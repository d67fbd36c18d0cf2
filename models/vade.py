"""VaDE (Jiang et al., 2017): a single-facet clustering VAE with a shared MLP (500-500-2000) or conv
network, autoencoder pretraining and a GMM initialisation of pi, mu and the diagonal variances.

Its training objective is MFCVAE's with J = 1 (appendix D.5): only the preparation differs, in the
prior init below (pretraining is `model.pretrain_epochs`, see `pretrain.py`).
"""
from __future__ import annotations

import torch

from .mfcvae import MFCVAE
from .priors import MixturePrior


class VaDE(MFCVAE):
    def init_prior(self, prior: MixturePrior, gmm) -> None:
        """Means, diagonal variances and (unless `fix_pi`) weights from the GMM on the encoder means."""
        as_tensor = lambda a: torch.as_tensor(a, dtype=prior.means.dtype, device=prior.means.device)  # noqa: E731
        prior.set_means(as_tensor(gmm.means_))
        prior.reset_covariances(as_tensor(gmm.covariances_))
        if not self.config.fix_pi:
            prior.set_weights(as_tensor(gmm.weights_))
