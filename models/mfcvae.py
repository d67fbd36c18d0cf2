"""Multi-Facet Clustering VAE (Falck et al., NeurIPS 2021).

Generative model (eq. 2): p(x, z, c) = p(x | z_1..z_J) prod_j p(z_j | c_j) p(c_j).
Posterior: q(z_j | x) diagonal Gaussians from the encoder; q(c_j | x) from the multi-facet VaDE
trick, eq. (12), with the z_j sample (training) or the posterior mean (evaluation: `cluster_probs`).
Loss: the one-sample ELBO, primary (eq. 62) or alternate (eq. 71) form; with progressive training
the fade-in coefficients `alphas` scale decoder rungs and KL terms (eq. 88-89).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.distributions import Independent, Normal

from . import elbo as elbo_terms
from .config import ModelConfig
from .init import batch_bounds, batch_statistics, data_dependent_init, fit_gmm, glorot_init
from .ladder import (LadderConvDecoder, LadderConvEncoder, LadderMLPDecoder, LadderMLPEncoder,
                     conv_ladder_facets)
from .likelihoods import make_likelihood
from .pretrain import pretrainer
from .priors import MixturePrior
from .shared import SharedConvDecoder, SharedConvEncoder, SharedMLPDecoder, SharedMLPEncoder


def networks(config: ModelConfig, input_shape: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder `config.architecture` names, for images of `input_shape`."""
    act, dims, choices = config.activation, config.latent_dims, config.authors_code
    flat = math.prod(input_shape)
    if config.architecture == "ladder-conv":
        facets = conv_ladder_facets(input_shape, config.n_facets, config.hidden_sizes,
                                    upsample_kernel=3 if "conv-3x3-upsample" in choices else 4)
        return (LadderConvEncoder(input_shape, facets, dims, act, normalise_weight="weight-norm" in choices),
                LadderConvDecoder(input_shape, facets, dims, act, merge=config.decoder_merge))
    sizes = config.resolved_hidden_sizes()
    if config.architecture == "ladder-mlp":
        return (LadderMLPEncoder(flat, sizes, dims, act),
                LadderMLPDecoder(input_shape, sizes, dims, act, merge=config.decoder_merge,
                                 extra_output_layer="fc-output-layer" in choices))
    if config.architecture == "shared-mlp":
        return SharedMLPEncoder(flat, sizes, dims, act), SharedMLPDecoder(input_shape, sizes, dims, act)
    return SharedConvEncoder(input_shape, sizes, dims, act), SharedConvDecoder(input_shape, sizes, dims, act)


def full_precision(device_type: str):
    """Autocast off where it is on (training.precision bf16/fp16): the ELBO's mathematics run in fp32."""
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


def upcast(t: torch.Tensor) -> torch.Tensor:
    """A network output in bf16/fp16 (autocast) as float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def posterior(params: tuple[torch.Tensor, torch.Tensor]) -> Independent:
    """q(z_j | x) as a diagonal Gaussian from (mean, log variance)."""
    mean, log_var = params
    return Independent(Normal(mean, torch.exp(0.5 * log_var)), 1)


class MFCVAE(nn.Module):
    def __init__(self, config: ModelConfig, input_shape: tuple[int, int, int], likelihood: str):
        super().__init__()
        self.config = config
        self.input_shape = tuple(input_shape)
        self.encoder, self.decoder = networks(config, self.input_shape)
        self.priors = nn.ModuleList(
            MixturePrior(k, d, config.covariance, config.fix_pi, config.prior_variance_init)
            for k, d in zip(config.n_clusters, config.latent_dims))
        self.likelihood = make_likelihood(likelihood, config.likelihood_std, config.gaussian_mean)
        # Fade-in coefficients (appendix D.3). Outside training every facet is fully active.
        self.register_buffer("alphas", torch.ones(config.n_facets))
        if "torch-default-init" not in config.authors_code:
            glorot_init(self.encoder)
            glorot_init(self.decoder)

    @property
    def n_facets(self) -> int:
        return len(self.priors)

    # Networks ------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per facet, (mean, log variance) of q(z_j | x), each (B, d_j)."""
        return self.encoder(x)

    def decode(self, zs: list[torch.Tensor], alphas: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's raw output f(z; theta) (logits or pre-sigmoid means), shaped like x."""
        return self.decoder(zs, self.alphas if alphas is None else alphas)

    def log_likelihood(self, x: torch.Tensor, zs: list[torch.Tensor]) -> torch.Tensor:
        """log p(x | z_1..z_J), (B,), with every facet fully active."""
        return self.likelihood.log_prob(self.decode(zs, torch.ones_like(self.alphas)), x)

    @staticmethod
    def reparameterise(params, generator: torch.Generator | None = None,
                       noise: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """z_j = mean_j + std_j * eps_j per facet, eps_j ~ N(0, I) drawn in facet order from `generator`
        (None: the global RNG), or taken from `noise` (one standard-normal tensor per facet, shaped
        like mean_j) when given: models.packed draws each seed's noise outside vmap."""
        zs = []
        for j, (mean, log_var) in enumerate(params):
            eps = noise[j] if noise is not None else torch.randn(mean.shape, generator=generator, device=mean.device,
                                                                 dtype=mean.dtype)
            zs.append(mean + torch.exp(0.5 * log_var) * eps)
        return zs

    # The objective -------------------------------------------------------------------------------
    def loss_terms(self, x: torch.Tensor, form: str | None = None, alphas: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, noise: list[torch.Tensor] | None = None) -> dict:
        """One-sample ELBO (B,) and its parts; `alphas` None uses the model's current fade-in; `noise`
        (per facet, (B, d_j) standard normal) replaces the draw from `generator` (see reparameterise).

        Mixed precision (harness.trial.precision) happens here and only here: under autocast the encoder and
        decoder run in bf16/fp16, their outputs are cast to float32 (`upcast`: a no-op in fp32), and z, the
        likelihood, the KL terms and the prior are computed with autocast off, in float32."""
        alphas = self.alphas if alphas is None else alphas
        params = [(upcast(mean), upcast(log_var)) for mean, log_var in self.encode(x)]
        with full_precision(x.device.type):
            zs = self.reparameterise(params, generator, noise)
        output = upcast(self.decode(zs, alphas))
        with full_precision(x.device.type):
            log_px = self.likelihood.log_prob(output, x)
            facets = [
                elbo_terms.facet_terms(prior.log_prob_given_c(z), prior.log_weights, posterior(p).log_prob(z),
                                       form or self.config.elbo_form)
                for prior, z, p in zip(self.priors, zs, params)
            ]
            elbo = elbo_terms.elbo(log_px, facets, alphas)
        return {"elbo": elbo, "log_px": log_px, "facets": facets, "zs": zs, "params": params}

    def elbo_at(self, x: torch.Tensor, terms: dict, alphas: torch.Tensor) -> torch.Tensor:
        """The one-sample ELBO (B,) of the draw in `terms` (loss_terms of the same x) at other fade-in
        `alphas`: only the decoder runs again, since the encoder, z and the KL terms do not depend on
        alphas. Equal to loss_terms(x, alphas=alphas) with the same noise, bit for bit."""
        output = upcast(self.decode(terms["zs"], alphas))
        with full_precision(x.device.type):
            return elbo_terms.elbo(self.likelihood.log_prob(output, x), terms["facets"], alphas)

    def elbo(self, x: torch.Tensor, form: str = "primary", generator: torch.Generator | None = None) -> torch.Tensor:
        """One-sample ELBO estimate (B,) with all facets fully active: eq. (62) or eq. (71)."""
        return self.loss_terms(x, form, torch.ones_like(self.alphas), generator)["elbo"]

    # Clustering, generation, composition -----------------------------------------------------------
    @torch.no_grad()
    def cluster_probs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """q(c_j | x) per facet (B, K_j), eq. (12) evaluated at the posterior mean of z_j."""
        return [prior.cluster_log_probs(mean).exp() for prior, (mean, _) in zip(self.priors, self.encode(x))]

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [mean for mean, _ in self.encode(x)]

    @torch.no_grad()
    def sample(self, n: int, facet: int | None = None, cluster: int | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Generated images, the mean of p(x | z) (section 4.4, appendix E.6).

        With `facet` and `cluster`, z_facet ~ p(z_facet | c = cluster) and the other facets from
        their marginals p(z_j); otherwise every facet from its marginal. `temperature` scales
        every covariance. Facets are numbered 1..J.
        """
        if (facet is None) != (cluster is None):
            raise ValueError("give both facet and cluster, or neither")
        if facet is not None and not 1 <= facet <= self.n_facets:
            raise ValueError(f"facet must be in 1..{self.n_facets}, got {facet}")
        zs = [prior.sample(n, cluster if facet == j + 1 else None, temperature, generator)
              for j, prior in enumerate(self.priors)]
        return self.likelihood.mean(self.decode(zs, torch.ones_like(self.alphas)))

    @torch.no_grad()
    def swap(self, x1: torch.Tensor, x2: torch.Tensor, facet: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructions of x1 and x2 with facet `facet`'s latent (posterior mode) exchanged (E.4)."""
        if not 1 <= facet <= self.n_facets:
            raise ValueError(f"facet must be in 1..{self.n_facets}, got {facet}")
        z1, z2 = self.posterior_means(x1), self.posterior_means(x2)
        z1[facet - 1], z2[facet - 1] = z2[facet - 1], z1[facet - 1]
        ones = torch.ones_like(self.alphas)
        return self.likelihood.mean(self.decode(z1, ones)), self.likelihood.mean(self.decode(z2, ones))

    # Before training -------------------------------------------------------------------------------
    @torch.no_grad()
    def latents(self, x: torch.Tensor, sample: bool, batch_size: int = 1024,
                generator: torch.Generator | None = None) -> list[np.ndarray]:
        """Per facet, (N, d_j) latents of q(z_j | x) over `x`: samples or means."""
        chunks = [[] for _ in self.priors]
        for start, end in batch_bounds(len(x), batch_size):
            params = self.encode(x[start:end])
            zs = self.reparameterise(params, generator) if sample else [m for m, _ in params]
            for j, z in enumerate(zs):
                chunks[j].append(z.cpu().numpy().astype(np.float64))
        return [np.concatenate(c) for c in chunks]

    def prepare(self, x_train: torch.Tensor, seed: int, batch_size: int, lr: float,
                log: Callable[[str], None] = print) -> None:
        """Appendix D.4: data-dependent init (if configured), autoencoder pretraining (if
        `pretrain_epochs`), then the prior from a GMM on latents of q(z_j | x) over the whole training set.

        The latents are posterior means by default, as the authors' code does, or samples
        (`prior_init_latents="sample"`, one reading of the paper's wording). Samples from an
        untrained encoder are dominated by its unit variance: on `digits` (J=1, K=10, 100 epochs)
        they led to one cluster in use where means reached 0.64 accuracy.
        """
        generator = torch.Generator(device=x_train.device).manual_seed(seed)
        choices = self.config.authors_code
        if self.config.init == "data":
            batch = x_train[torch.randperm(len(x_train), generator=generator, device=x_train.device)[:512]]
            was_training = self.training
            self.train()
            if "eval-prior-init" in choices:  # the authors' first_forward, which moves batch norm's running statistics
                with torch.no_grad():
                    self.loss_terms(batch, generator=generator)
            data_dependent_init(self, lambda: self.loss_terms(batch, generator=generator), self.config.data_init_scale,
                                per_unit="layer-data-init" not in choices)
            self.train(was_training)
        if self.config.pretrain_epochs:
            pretrainer(self.config.pretrain)(self, x_train, self.config.pretrain_epochs, batch_size, lr, generator, log)
        if "eval-prior-init" in choices:  # batch norm at its running statistics, as the authors fit it
            self.eval()
            encoder_mode = nullcontext()
        else:  # the encoder as it trains, not eval mode's initial running statistics
            encoder_mode = batch_statistics(self)
        with encoder_mode:
            latents = self.latents(x_train, sample=self.config.prior_init_latents == "sample", generator=generator)
        for j, (prior, z) in enumerate(zip(self.priors, latents)):
            self.init_prior(prior, fit_gmm(z, prior.n_clusters, seed))
            log(f"prior init facet {j + 1}: GMM with {prior.n_clusters} components on {len(z)} latents")
        self.train()

    def init_prior(self, prior: MixturePrior, gmm) -> None:
        """The prior from the GMM fitted on the initial latents. `prior_init` means (appendix D.4): its
        means, mixing weights uniform and covariances at `prior_variance_init` on the diagonal. gmm
        (VaDE, appendix D.5): its means, diagonal variances and, unless `fix_pi`, weights."""
        as_tensor = lambda a: torch.as_tensor(a, dtype=prior.means.dtype, device=prior.means.device)  # noqa: E731
        prior.set_means(as_tensor(gmm.means_))
        if self.config.prior_init == "means":
            prior.reset_covariances(self.config.prior_variance_init)
            return
        prior.reset_covariances(as_tensor(gmm.covariances_))
        if not self.config.fix_pi:
            prior.set_weights(as_tensor(gmm.weights_))
