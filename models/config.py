"""The typed model configuration: every model in the zoo is built from one `ModelConfig`."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

ModelName = Literal["mfcvae", "vade", "kmeans", "gmm"]
Architecture = Literal["ladder-mlp", "ladder-conv", "shared-mlp", "shared-conv"]
# Where the authors' code (FabianFalck/mfcvae 9f1eca4) departs from the paper, each a named choice;
# `model.authors_code` lists those a run takes (none by default: the paper's tables).
AuthorsCodeChoice = Literal[
    "fc-output-layer",     # ladder-mlp: a w_1 x w_1 layer before b_1^dec's output layer (models_fc.py, configs/mnist.yml)
    "conv-3x3-upsample",   # ladder-conv: b_2^dec's stride-1 transposed convolution is 3x3, not 4x4 (conv_vlae.py l. 282)
    "weight-norm",         # ladder-conv: weight-normalised encoder convolutions (utils.py l. 163), which the
                           # data-dependent init leaves at PyTorch's default weights (it rescales `weight`, not g, v)
    "layer-data-init",     # init data: a linear layer's outputs normalised as a whole, one mean and std per layer
                           # (boilr's hook reduces over every dimension for linear layers), not per unit
    "eval-prior-init",     # the GMM prior is fitted on eval-mode latents: batch norm's running statistics after one
                           # plain forward pass and the init pass (train.py l. 443-467), not batch statistics
    "torch-default-init",  # init glorot: PyTorch's default layer init (their initialize_fc_layers is a no-op)
]


class ModelConfig(BaseModel):
    """One model. Lists indexed by facet run 1..J as in the paper (facet J is the deepest)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    name: ModelName = "mfcvae"
    architecture: Optional[Architecture] = Field(
        default=None, description="None: ladder-mlp for two or more facets; shared-mlp for one facet and for "
                                  "VaDE (a one-facet ladder is a one-layer encoder, which clustered "
                                  "Fashion-MNIST worse; docs/configuration.md)")
    latent_dims: list[PositiveInt] = Field(default_factory=lambda: [5, 5], min_length=1)
    n_clusters: list[PositiveInt] = Field(default_factory=lambda: [25, 25], min_length=1)
    hidden_sizes: Optional[list[PositiveInt]] = Field(
        default=None,
        description="ladder: one width (mlp) or channel count (conv) per facet; shared: the backbone's "
                    "layer widths/channels. None: the paper's sizes (Tables 4-6).")
    covariance: Literal["diagonal", "full"] = "diagonal"
    fix_pi: bool = Field(default=True, description="keep pi uniform (Table 3 fixes it for 3DShapes and SVHN; "
                                                    "docs/configuration.md gives the measurements)")
    likelihood: Literal["auto", "bernoulli", "gaussian"] = Field(
        default="auto", description="auto: the dataset's suggestion")
    likelihood_std: PositiveFloat = 0.3
    gaussian_mean: Literal["sigmoid", "identity"] = Field(
        default="sigmoid", description="gaussian likelihood: its mean is sigmoid(decoder output) or the output "
                                       "itself (Table 5: the sigmoid is for SVHN only)")
    decoder_merge: Optional[Literal["concat", "gated-add"]] = Field(
        default=None, description="ladder decoders: eq. (79)'s concatenation, or the gated addition b + 0.1 alpha r. "
                                  "None: each ladder's table, gated-add for ladder-mlp (Table 4's 500-wide b_1^dec), "
                                  "concat for ladder-conv (Table 5's 128-channel b_1^dec)")
    authors_code: list[AuthorsCodeChoice] = Field(
        default_factory=list, description="where the authors' code departs from the paper, the code's choices to "
                                          "take (see models/config.py); empty: the paper's Tables 4 and 5")
    activation: Literal["relu", "elu", "leaky_relu"] = "relu"
    init: Literal["glorot", "data"] = "glorot"
    data_init_scale: PositiveFloat = Field(
        default=0.1, description="init: data - the standard deviation every layer's output gets on the init batch. "
                                 "0.1 is the authors' (boilr's init_scale); it keeps the untrained posterior means "
                                 "far less spread than prior_variance_init, as appendix D.4 asks; at 1.0 the conv "
                                 "ladder's shallow facet collapsed")
    prior_init: Optional[Literal["means", "gmm"]] = Field(
        default=None, description="what the GMM fitted on the initial latents sets in the prior. means: its means, "
                                  "covariances at prior_variance_init and pi uniform (appendix D.4, MFCVAE); gmm: "
                                  "its means, diagonal variances and, unless fix_pi, weights (VaDE, appendix D.5). "
                                  "None: gmm for vade and for one facet, means for two or more facets "
                                  "(docs/configuration.md gives the measurements)")
    prior_variance_init: PositiveFloat = Field(default=0.01, description="prior_init means: the initial variances")
    prior_init_latents: Literal["mean", "sample"] = Field(
        default="mean", description="latents the initial GMM is fitted on: posterior means or samples")
    elbo_form: Literal["primary", "alternate"] = "primary"
    pretrain_epochs: Optional[int] = Field(
        default=None, ge=0, description="epochs of autoencoder pretraining before the GMM prior init (appendix D.5's "
                                        "VaDE). None: with prior_init gmm, half as many optimiser steps as training "
                                        "takes (about 5,000 at the default budget); with prior_init means, 0 "
                                        "(docs/configuration.md gives the measurements)")
    pretrain: Literal["autoencoder", "stacked-denoising"] = Field(
        default="autoencoder", description="how pretrain_epochs are spent: a plain autoencoder end to end, or DEC's "
                                           "stacked denoising autoencoder (pretrain_epochs per layer, then as many end "
                                           "to end; shared-mlp with one facet only). models/pretrain.py")
    features: Literal["pixels", "pca"] = Field(default="pixels", description="kmeans/gmm inputs")
    pca_components: PositiveInt = 50

    @property
    def n_facets(self) -> int:
        return len(self.latent_dims)

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if self.architecture is None:
            self.architecture = "shared-mlp" if self.n_facets == 1 or self.name == "vade" else "ladder-mlp"
        if len(self.latent_dims) != len(self.n_clusters):
            raise ValueError(
                f"latent_dims has {len(self.latent_dims)} facets but n_clusters has {len(self.n_clusters)}; "
                "give one entry per facet in both")
        if self.prior_init is None and self.name in ("mfcvae", "vade"):  # baselines fit no prior
            self.prior_init = "gmm" if self.name == "vade" or self.n_facets == 1 else "means"
        if self.name == "vade":
            if self.prior_init != "gmm":
                raise ValueError("vade's prior init sets the means, variances and weights from its GMM (appendix D.5); "
                                 f"prior_init must be 'gmm', got {self.prior_init!r}")
            if self.n_facets != 1:
                raise ValueError(f"vade is single-facet: latent_dims must have 1 entry, got {self.latent_dims}")
            if self.covariance != "diagonal":
                raise ValueError("vade restricts the prior to diagonal covariances (appendix D.5); "
                                 f"covariance must be 'diagonal', got {self.covariance!r}")
            if not self.architecture.startswith("shared"):
                raise ValueError(f"vade uses a shared architecture (shared-mlp or shared-conv), got {self.architecture!r}")
        if self.pretrain == "stacked-denoising" and (self.architecture != "shared-mlp" or self.n_facets != 1):
            raise ValueError(f"pretrain 'stacked-denoising' needs architecture 'shared-mlp' with one facet, got "
                             f"{self.architecture!r} with {self.n_facets} facet(s); allowed otherwise: 'autoencoder'")
        if self.name in ("kmeans", "gmm") and self.n_facets != 1:
            raise ValueError(f"{self.name} finds one partition: n_clusters must have 1 entry, got {self.n_clusters}")
        if self.decoder_merge is None:
            self.decoder_merge = "gated-add" if self.architecture == "ladder-mlp" else "concat"
        if self.decoder_merge != "concat" and not self.architecture.startswith("ladder"):
            raise ValueError(f"decoder_merge {self.decoder_merge!r} applies to ladder architectures only "
                             f"(ladder-mlp, ladder-conv), got architecture {self.architecture!r}")
        if self.likelihood == "bernoulli" and self.gaussian_mean != "sigmoid":
            raise ValueError(f"gaussian_mean {self.gaussian_mean!r} needs likelihood gaussian; the bernoulli likelihood "
                             "always takes the decoder output as logits")
        if len(set(self.authors_code)) != len(self.authors_code):
            raise ValueError(f"authors_code lists a choice twice: {self.authors_code}")
        if self.hidden_sizes is not None and self.architecture.startswith("ladder") \
                and len(self.hidden_sizes) != self.n_facets:
            raise ValueError(
                f"hidden_sizes for a ladder needs one entry per facet ({self.n_facets}), got {self.hidden_sizes}")
        return self

    def resolved_hidden_sizes(self) -> list[int]:
        """The paper's layer sizes where `hidden_sizes` is not given."""
        if self.hidden_sizes is not None:
            return list(self.hidden_sizes)
        if self.architecture == "ladder-mlp":  # Table 4 (J=2): 500, 2000; more facets interpolate
            if self.n_facets == 1:
                return [500]
            return [int(round(500 * 4 ** (j / (self.n_facets - 1)))) for j in range(self.n_facets)]
        if self.architecture == "ladder-conv":  # Table 5: 64, 128 channels; doubling per facet
            return [64 * 2 ** j for j in range(self.n_facets)]
        if self.architecture == "shared-mlp":  # Table 6 (MFCVAE) and VaDE's 500-500-2000
            return [500, 500, 2000] if self.name == "vade" else [500, 2000]
        return [32, 64, 128]  # shared-conv
