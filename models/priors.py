"""The per-facet Mixture-of-Gaussians prior p(c_j) p(z_j | c_j) of eq. (1), and q(c_j | x) of eq. (12).

Parameterisation (as in the authors' code): mixing weights are the softmax of free logits (or a
fixed uniform buffer when `fix_pi`); diagonal variances are softplus(beta=10) of free values; a full
covariance is a lower-triangular Cholesky factor with a softplus(beta=10) diagonal.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

SOFTPLUS_BETA = 10.0


def inverse_softplus(y: torch.Tensor, beta: float = SOFTPLUS_BETA) -> torch.Tensor:
    """x with softplus(x, beta) = y, in the form that does not overflow for large y."""
    return y + torch.log(-torch.expm1(-beta * y)) / beta


def cluster_posterior(log_pz_given_c: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """log q(c_j | x), eq. (12) with one sample (eq. 61): log softmax_c [log pi_c + log N(z_j | mu_c, Sigma_c)].

    `log_pz_given_c` is (B, K), `log_pi` is (K,); returns (B, K) log-probabilities.
    """
    return torch.log_softmax(log_pz_given_c + log_pi, dim=-1)


class MixturePrior(nn.Module):
    """K Gaussians of dimension d with mixing weights: one facet's p(c_j) p(z_j | c_j)."""

    def __init__(self, n_clusters: int, latent_dim: int, covariance: str = "diagonal",
                 fix_pi: bool = False, variance_init: float = 0.01):
        super().__init__()
        if covariance not in ("diagonal", "full"):
            raise ValueError(f"covariance must be 'diagonal' or 'full', got {covariance!r}")
        self.covariance_type = covariance
        self.n_clusters, self.latent_dim = n_clusters, latent_dim
        logits = torch.zeros(n_clusters)
        if fix_pi:
            self.register_buffer("pi_logits", logits)
        else:
            self.pi_logits = nn.Parameter(logits)
        self.means_param = nn.Parameter(torch.randn(n_clusters, latent_dim))
        if covariance == "diagonal":
            self.variance_param = nn.Parameter(torch.empty(n_clusters, latent_dim))
        else:
            self.scale_tril_param = nn.Parameter(torch.empty(n_clusters, latent_dim, latent_dim))
        self.reset_covariances(variance_init)

    @torch.no_grad()
    def reset_covariances(self, variance: float | torch.Tensor) -> None:
        """Set every covariance to diag(variance) (appendix D.4); `variance` is a scalar or (K, d)."""
        var = torch.as_tensor(variance, dtype=self.means_param.dtype).expand(self.n_clusters, self.latent_dim)
        if self.covariance_type == "diagonal":
            self.variance_param.copy_(inverse_softplus(var))
        else:
            self.scale_tril_param.zero_()
            self.scale_tril_param.diagonal(dim1=-2, dim2=-1).copy_(inverse_softplus(var.sqrt()))

    @torch.no_grad()
    def set_means(self, means: torch.Tensor) -> None:
        self.means_param.copy_(means)

    @torch.no_grad()
    def set_weights(self, weights: torch.Tensor) -> None:
        self.pi_logits.copy_(torch.log(weights.clamp_min(1e-12)))

    # The public view of the parameters -------------------------------------------------------
    @property
    def log_weights(self) -> torch.Tensor:
        return torch.log_softmax(self.pi_logits, dim=-1)

    @property
    def weights(self) -> torch.Tensor:
        """Mixing weights pi_j, (K,)."""
        return self.log_weights.exp()

    @property
    def means(self) -> torch.Tensor:
        """Component means mu_c, (K, d)."""
        return self.means_param

    @property
    def variances(self) -> torch.Tensor:
        """Diagonal of each Sigma_c, (K, d)."""
        if self.covariance_type == "diagonal":
            return F.softplus(self.variance_param, beta=SOFTPLUS_BETA)
        return self.covariances.diagonal(dim1=-2, dim2=-1)

    @property
    def scale_tril(self) -> torch.Tensor:
        """Cholesky factors of the covariances, (K, d, d)."""
        if self.covariance_type == "diagonal":
            return torch.diag_embed(self.variances.sqrt())
        raw = self.scale_tril_param
        diagonal = F.softplus(raw.diagonal(dim1=-2, dim2=-1), beta=SOFTPLUS_BETA)
        return torch.tril(raw, diagonal=-1) + torch.diag_embed(diagonal)

    @property
    def covariances(self) -> torch.Tensor:
        """Sigma_c, (K, d, d); diagonal covariances as diagonal matrices."""
        if self.covariance_type == "diagonal":
            return torch.diag_embed(self.variances)
        tril = self.scale_tril
        return tril @ tril.transpose(-1, -2)

    def components(self, temperature: float = 1.0):
        """p(z | c) for all c as one batched torch distribution; `temperature` scales Sigma_c."""
        if self.covariance_type == "diagonal":
            return Independent(Normal(self.means, (self.variances * temperature).sqrt()), 1)
        return MultivariateNormal(self.means, scale_tril=self.scale_tril * math.sqrt(temperature))

    # The mathematics -------------------------------------------------------------------------
    def log_prob_given_c(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z | c) for each component: z (B, d) -> (B, K)."""
        return self.components().log_prob(z.unsqueeze(-2))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Marginal log p(z) = log sum_c pi_c N(z | mu_c, Sigma_c), eq. (17): (B, d) -> (B,)."""
        return torch.logsumexp(self.log_prob_given_c(z) + self.log_weights, dim=-1)

    def cluster_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log p(c | z) = log q(c | x) for the z drawn from q(z | x), eq. (12) with L = 1."""
        return cluster_posterior(self.log_prob_given_c(z), self.log_weights)

    def sample(self, n: int, cluster: int | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z | c = cluster) or, with cluster None, z ~ p(z) (c drawn from pi); (n, d)."""
        device = self.means.device
        if cluster is None:
            c = torch.multinomial(self.weights.detach(), n, replacement=True, generator=generator)
        else:
            if not 0 <= cluster < self.n_clusters:
                raise ValueError(f"cluster must be in 0..{self.n_clusters - 1}, got {cluster}")
            c = torch.full((n,), cluster, dtype=torch.long, device=device)
        eps = torch.randn(n, self.latent_dim, 1, generator=generator, device=device, dtype=self.means.dtype)
        tril = self.scale_tril[c] * math.sqrt(temperature)
        return self.means[c] + (tril @ eps).squeeze(-1)
