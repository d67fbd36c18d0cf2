"""The model zoo: a registry maps model names to builders.

    from models import ModelConfig, build_model
    model = build_model(ModelConfig(latent_dims=[5, 5], n_clusters=[25, 25]), input_shape=(1, 28, 28))
"""
from __future__ import annotations

from .baselines import ClusteringBaseline, GMMBaseline, KMeansBaseline
from .config import ModelConfig
from .mfcvae import MFCVAE

# VaDE (Jiang et al., 2017) is MFCVAE with one facet (appendix D.5): the same objective, with its own
# defaults (ModelConfig): the 500-500-2000 shared MLP, autoencoder pretraining and prior_init gmm.
REGISTRY = {"mfcvae": MFCVAE, "vade": MFCVAE, "kmeans": KMeansBaseline, "gmm": GMMBaseline}

__all__ = ["ModelConfig", "MFCVAE", "ClusteringBaseline", "REGISTRY", "build_model"]


def build_model(config: ModelConfig, input_shape, likelihood: str | None = None):
    """Build the model `config.name` for images of `input_shape` (C, H, W).

    `likelihood` is the dataset's suggestion, used when `config.likelihood` is "auto"
    (Bernoulli if neither says otherwise).
    """
    builder = REGISTRY[config.name]
    if issubclass(builder, ClusteringBaseline):
        return builder(config, tuple(input_shape))
    chosen = config.likelihood if config.likelihood != "auto" else (likelihood or "bernoulli")
    return builder(config, tuple(input_shape), chosen)
