"""The model zoo: a registry maps model names to builders.

    from models import ModelConfig, build_model
    model = build_model(ModelConfig(latent_dims=[5, 5], n_clusters=[25, 25]), input_shape=(1, 28, 28))
"""
from __future__ import annotations

from .baselines import ClusteringBaseline, GMMBaseline, KMeansBaseline
from .config import ModelConfig
from .mfcvae import MFCVAE
from .vade import VaDE

REGISTRY = {"mfcvae": MFCVAE, "vade": VaDE, "kmeans": KMeansBaseline, "gmm": GMMBaseline}

__all__ = ["ModelConfig", "MFCVAE", "VaDE", "ClusteringBaseline", "REGISTRY", "build_model"]


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
