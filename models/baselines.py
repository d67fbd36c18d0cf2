"""Classical clustering baselines with the models' clustering interface: k-means and a GMM.

Fitted on training pixels (or their PCA projection); `cluster_probs` returns one facet.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import ModelConfig


class ClusteringBaseline:
    """Base: fit on the training images, then cluster_probs(x) -> [(B, K)] like MFCVAE."""

    def __init__(self, config: ModelConfig, input_shape):
        self.config = config
        self.n_clusters = config.n_clusters[0]
        self.pca = None

    def _features(self, x: torch.Tensor) -> np.ndarray:
        flat = x.detach().cpu().flatten(1).numpy().astype(np.float64)
        return flat if self.pca is None else self.pca.transform(flat)

    def fit(self, x_train: torch.Tensor, seed: int) -> "ClusteringBaseline":
        if self.config.features == "pca":
            from sklearn.decomposition import PCA

            n = min(self.config.pca_components, x_train[0].numel(), len(x_train))
            self.pca = PCA(n_components=n, random_state=seed).fit(x_train.cpu().flatten(1).numpy())
        self._fit(self._features(x_train), seed)
        return self

    def _fit(self, features: np.ndarray, seed: int) -> None:
        raise NotImplementedError

    def cluster_probs(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


class KMeansBaseline(ClusteringBaseline):
    def _fit(self, features, seed):
        from sklearn.cluster import KMeans

        self.estimator = KMeans(n_clusters=self.n_clusters, n_init=1, random_state=seed).fit(features)

    def cluster_probs(self, x):
        assignment = torch.from_numpy(self.estimator.predict(self._features(x)).astype("int64"))
        return [torch.nn.functional.one_hot(assignment, self.n_clusters).float()]


class GMMBaseline(ClusteringBaseline):
    def _fit(self, features, seed):
        from sklearn.mixture import GaussianMixture

        self.estimator = GaussianMixture(self.n_clusters, covariance_type="diag", random_state=seed,
                                         reg_covar=1e-4).fit(features)

    def cluster_probs(self, x):
        return [torch.from_numpy(self.estimator.predict_proba(self._features(x))).float()]
