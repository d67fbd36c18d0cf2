"""p(x | z): the decoder's raw output -> a factorised distribution over pixels.

Bernoulli uses the logits form, which is valid on grey pixels in [0, 1] (the probability form's
argument validation rejects them). Gaussian has a fixed standard deviation (Table 3) and takes
sigmoid(output) as its mean (`mean_link` sigmoid), or the output itself (identity: Table 5 puts the
sigmoid on SVHN's decoder only, not on 3DShapes').
"""
from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Independent, Normal


class BernoulliLikelihood:
    name = "bernoulli"

    def distribution(self, output: torch.Tensor) -> Independent:
        return Independent(Bernoulli(logits=output, validate_args=False), output.ndim - 1)

    def log_prob(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """sum over pixels of log Bern(x | sigmoid(output)): (B, ...) -> (B,)."""
        return self.distribution(output).log_prob(x)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)


class GaussianLikelihood:
    name = "gaussian"

    def __init__(self, std: float, mean_link: str = "sigmoid"):
        if std <= 0:
            raise ValueError(f"likelihood_std must be > 0, got {std}")
        if mean_link not in ("sigmoid", "identity"):
            raise ValueError(f"gaussian_mean must be 'sigmoid' or 'identity', got {mean_link!r}")
        self.std = float(std)
        self.mean_link = mean_link

    def distribution(self, output: torch.Tensor) -> Independent:
        # The std as a tensor made on the device (a fill, not a copy from the host, which a CUDA graph
        # cannot capture); the same values as Normal's own conversion of the float.
        std = torch.full((), self.std, dtype=output.dtype, device=output.device)
        return Independent(Normal(self.mean(output), std), output.ndim - 1)

    def log_prob(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.distribution(output).log_prob(x)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output) if self.mean_link == "sigmoid" else output


def make_likelihood(name: str, std: float = 0.3, gaussian_mean: str = "sigmoid"):
    if name == "bernoulli":
        if gaussian_mean != "sigmoid":
            raise ValueError(f"gaussian_mean {gaussian_mean!r} needs likelihood gaussian; the bernoulli likelihood "
                             "always takes the decoder output as logits")
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(std, gaussian_mean)
    raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {name!r}")
