"""Typed trial configuration, validated in one place.

A trial YAML maps one-to-one onto `TrialConfig` (sections dataset, model, training, evaluation);
`--set model.latent_dims=[5,5]` overrides a key. Every problem is reported at once, by key path,
before any data is loaded.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from harness.data import DatasetError, DatasetShape, check_dataset_name, dataset_shape
from harness.data.catalog import DEFAULT_VALIDATION_FRACTION
from models.config import ModelConfig

PRESETS_DIR = Path(__file__).parents[1] / "presets"


class ConfigError(ValueError):
    """A configuration problem; the message lists every bad key with what is allowed."""


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    name: str = "digits"
    data_root: Optional[str] = Field(default=None, description="folder (or 3dshapes.h5) holding the files")
    download: bool = Field(default=False, description="let torchvision download mnist/svhn (needs internet)")
    split_seed: NonNegativeInt = Field(default=0, description="seeds the random train/validation/test splits, independent of "
                                                   "the model seed")
    train_images: Optional[PositiveInt] = Field(
        default=None, description="keep only this many of the training images, a random draw fixed by split_seed "
                                  "(the test set stays whole), before the validation split is held out; "
                                  "None: all of them")
    validation_fraction: float = Field(
        default=DEFAULT_VALIDATION_FRACTION,
        description="share of the training images held out as the validation split, for choosing models without "
                    "the test labels; training never sees them. 0: no validation split")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        try:
            check_dataset_name(name)
        except DatasetError as error:
            raise ValueError(str(error)) from None
        return name

    @field_validator("validation_fraction")
    @classmethod
    def _fraction(cls, fraction: float) -> float:
        if not 0 <= fraction < 1:  # NaN fails too
            raise ValueError("must be in [0, 1): the share of the training images held out for validation, "
                             "0 for no validation split")
        return fraction


# Unset training.epochs_per_step: about DEFAULT_OPTIMISER_STEPS in all, split equally over the
# progressive steps, and at least MIN_EPOCHS_PER_STEP each. Measured on digits (one facet,
# batch 128, lr 1e-3, fixed pi): test accuracy 0.708 after 1.1k optimiser steps, 0.731-0.760 after
# 3.3k, 0.791 after 6.6k, 0.803 after 9.9k, against k-means' 0.741 (10 seeds). On Fashion-MNIST the rule gives
# 24 epochs at batch 128.
DEFAULT_OPTIMISER_STEPS = 10_000
MIN_EPOCHS_PER_STEP = 10
# Unset model.pretrain_epochs with prior_init gmm (VaDE, and MFCVAE with one facet): half as many
# optimiser steps of autoencoder pretraining as training takes, about 5,000 at the default budget
# (docs/configuration.md). With prior_init means there is no pretraining: pretrained latents spread
# far wider than prior_variance_init (measured: 29.4% against 55.6% on the Fashion-MNIST subset).
PRETRAIN_SHARE = 0.5


def default_epochs_per_step(n_train: int, batch_size: int, steps: int) -> int:
    """Epochs per progressive step that add up to about DEFAULT_OPTIMISER_STEPS optimiser steps."""
    per_epoch = batches_per_epoch(max(n_train, 1), batch_size)
    return max(MIN_EPOCHS_PER_STEP, math.ceil(DEFAULT_OPTIMISER_STEPS / steps / per_epoch))


def default_pretrain_epochs(prior_init: str, epochs_per_step: list[int]) -> int:
    """prior_init gmm: PRETRAIN_SHARE of the training epochs (so of its optimiser steps), at least 1; means: 0."""
    if prior_init != "gmm":
        return 0
    return max(1, math.ceil(PRETRAIN_SHARE * sum(epochs_per_step)))


PRECISIONS = ("fp32", "bf16", "fp16")


def fp16_on_cpu_message(device: str) -> str:
    """Why training.precision fp16 is refused on a CPU, and what is allowed there (config validation,
    and harness.trial.precision where training.device auto resolves to the CPU)."""
    where = "runs on the CPU" if device == "cpu" else "resolves to the CPU here (no CUDA)"
    return (f"training.precision: fp16 needs a CUDA device (autocast with a grad scaler); training.device "
            f"{device} {where}, which has no fp16 training: allowed there fp32 or bf16 (bf16 pays only on CPUs "
            "with bf16 instructions)")


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    epochs_per_step: Optional[list[PositiveInt]] = Field(
        default=None, min_length=1,
        description="progressive: one entry per facet (step s trains facets J-s+1..J); "
                    "otherwise the entries are summed into one run with every facet active. "
                    f"None: about {DEFAULT_OPTIMISER_STEPS:,} optimiser steps in all, at least "
                    f"{MIN_EPOCHS_PER_STEP} epochs per step (resolved from the dataset's size)")
    progressive: bool = True
    fade_in_batches: Optional[int] = Field(
        default=None, ge=0, description="batches over which a newly looped-in facet's alpha ramps from 0 to 1; "
                                        "None: half of the batches of its step")
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    seed: NonNegativeInt = 0
    seeds: Optional[list[NonNegativeInt]] = Field(
        default=None,
        description="several seeds trained packed in one process as one stacked model (mfcvae, vade), one "
                    "ordinary run folder per seed (OUT/seed<s>); exclusive with training.seed")
    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N")
    threads: Optional[PositiveInt] = Field(default=None, description="torch CPU threads; None: the trial's CPU budget")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="fp32, or the encoder and decoder under autocast: bf16, fp16 (CUDA only, with a grad scaler). "
                    "The likelihood, KL and prior terms, the prior initialisation and evaluation stay fp32 "
                    "(harness.trial.precision); the baselines ignore it")

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
            return device
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: Optional[list[int]]) -> Optional[list[int]]:
        if seeds is not None and len(seeds) < 2:
            raise ValueError("packed training needs 2 or more distinct seeds; for one seed set training.seed instead")
        if seeds is not None and len(set(seeds)) != len(seeds):
            repeated = sorted({s for s in seeds if seeds.count(s) > 1})
            raise ValueError(f"seeds must be distinct: {', '.join(map(str, repeated))} given more than once; "
                             "each seed trains once per pack")
        return seeds

    @field_validator("precision")
    @classmethod
    def _precision_runs_here(cls, precision: str, info: ValidationInfo) -> str:
        device = info.data.get("device")  # validated before precision (field order)
        if precision == "fp16" and device == "cpu":
            raise ValueError(fp16_on_cpu_message(device).removeprefix("training.precision: "))
        return precision

    @model_validator(mode="after")
    def _one_seed_or_several(self) -> "TrainingConfig":
        if self.seeds is not None and "seed" in self.model_fields_set:
            raise ValueError(f"training.seed ({self.seed}) and training.seeds ({self.seeds}) are exclusive: give "
                             "training.seed for one run, or training.seeds (2 or more distinct seeds) to train them "
                             "packed, not both")
        return self

    @model_serializer(mode="wrap")
    def _written(self, handler):
        """A packed config is written without `seed`, a single one without `seeds`: so every single
        run's config.yaml and result.json read as before packing existed, and a written packed
        config validates again."""
        data = handler(self)
        data.pop("seeds" if self.seeds is None else "seed", None)
        return data

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs_per_step or [MIN_EPOCHS_PER_STEP])  # resolved by TrialConfig


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    every_n_epochs: PositiveInt = 1
    batch_size: PositiveInt = 2048


class TrialConfig(BaseModel):
    """One trial: one model, one dataset, one seed."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @property
    def trains(self) -> bool:
        """Whether the model is trained by gradient steps (not a k-means/GMM baseline)."""
        return self.model.name in ("mfcvae", "vade")

    @property
    def progressive_steps(self) -> bool:
        return self.trains and self.training.progressive and self.model.n_facets > 1

    @property
    def packed(self) -> bool:
        """Whether this config trains several seeds packed (training.seeds)."""
        return self.training.seeds is not None

    def for_seed(self, seed: int) -> "TrialConfig":
        """The ordinary single-seed config of one seed: training.seeds unset, training.seed = `seed`,
        everything else as here. What a packed seed's run folder records, and trains as."""
        data = self.model_dump(mode="json")
        data["training"].pop("seeds", None)
        data["training"]["seed"] = seed
        return TrialConfig.model_validate(data)

    def unpacked(self) -> list["TrialConfig"]:
        """One single-seed config per seed of training.seeds; [self] for a config that is not packed."""
        return [self.for_seed(s) for s in self.training.seeds] if self.packed else [self]

    @model_validator(mode="after")
    def _progressive_schedule(self) -> "TrialConfig":
        training = self.training
        try:
            shape = dataset_shape(self.dataset.name)
        except DatasetError as error:
            raise ValueError(f"dataset.name: {error}") from None
        n_train = shape.with_train_images(self.dataset.train_images).with_validation(
            self.dataset.validation_fraction).n_train
        if training.epochs_per_step is None:  # a default that agrees with the number of facets
            steps = self.model.n_facets if self.trains and training.progressive else 1
            epochs = MIN_EPOCHS_PER_STEP
            if self.trains and n_train >= 1:
                epochs = default_epochs_per_step(n_train, training.batch_size, steps)
            training.epochs_per_step = [epochs] * steps
        if self.model.pretrain_epochs is None:
            self.model.pretrain_epochs = default_pretrain_epochs(self.model.prior_init, training.epochs_per_step) \
                if self.trains else 0
        steps = len(training.epochs_per_step)
        if self.trains and training.progressive and steps != self.model.n_facets:
            raise ValueError(
                f"training.epochs_per_step has {steps} entries but progressive training of "
                f"{self.model.n_facets} facets needs one per facet (or set training.progressive=false)")
        problems = data_limit_problems(self, shape)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _packing_trains(self) -> "TrialConfig":
        if self.packed and not self.trains:
            raise ValueError(f"training.seeds: model.name {self.model.name} is fitted in one go, not trained by "
                             "gradient steps; packed seeds apply to mfcvae and vade only. Give one training.seed "
                             "per run")
        return self


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    return -(-n_train // batch_size)


def data_limit_problems(config: TrialConfig, shape: DatasetShape) -> list[str]:
    """Values that cannot work, or would only burn memory and time, on data of this shape.

    Checked when the config is validated, from the dataset's known sizes (npz: its array
    headers) less the validation split, so they fail before any data is loaded.
    """
    name, m, t = config.dataset.name, config.model, config.training
    problems = []
    if shape.n_train < 2 or shape.n_test < 1:
        problems.append(f"dataset.name: {name} has {shape.n_train} training and {shape.n_test} test images; "
                        "needs at least 2 and 1")
        return problems
    kept = config.dataset.train_images
    if kept is not None and not 2 <= kept <= shape.n_train:
        problems.append(f"dataset.train_images: {kept} for the {shape.n_train} training images of {name}; "
                        f"allowed 2..{shape.n_train} (or leave it unset: all of them)")
        return problems
    fraction = config.dataset.validation_fraction
    shape = shape.with_train_images(kept).with_validation(fraction)
    n = shape.n_train
    if fraction > 0 and (shape.n_val < 2 or n < 2):
        problems.append(f"dataset.validation_fraction: {fraction} of the {n + shape.n_val} training images of {name} "
                        f"leaves {shape.n_val} for validation and {n} for training; each needs at least 2: allowed "
                        f"{allowed_validation_fractions(n + shape.n_val)}")
        return problems
    images = training_images(name, shape)
    if t.batch_size > n:
        problems.append(f"training.batch_size: {t.batch_size} is larger than the {images}; "
                        f"allowed 1..{n}")
    for j, k in enumerate(m.n_clusters):
        if k > n:
            problems.append(f"model.n_clusters.{j}: {k} clusters for {images}; allowed 1..{n}")
    if config.trains:
        for j, d in enumerate(m.latent_dims):
            if d > shape.n_pixels:
                problems.append(f"model.latent_dims.{j}: {d} exceeds the {shape.n_pixels} values of one "
                                f"{'x'.join(map(str, shape.image_shape))} image of {name}; allowed 1..{shape.n_pixels}")
    elif m.features == "pca" and m.pca_components > min(n, shape.n_pixels):
        problems.append(f"model.pca_components: {m.pca_components} for {shape.n_pixels} pixels and {images}; "
                        f"allowed 1..{min(n, shape.n_pixels)}")
    if config.progressive_steps and t.fade_in_batches and t.batch_size <= n:
        per_epoch = batches_per_epoch(n, t.batch_size)
        for s, epochs in enumerate(t.epochs_per_step[1:], start=2):
            if t.fade_in_batches > epochs * per_epoch:
                problems.append(
                    f"training.fade_in_batches: {t.fade_in_batches} is longer than progressive step {s}, which has "
                    f"{epochs * per_epoch} batches ({epochs} epochs x {per_epoch} batches of {t.batch_size} from "
                    f"{images}): the facet would never be fully faded in; allowed 0..{epochs * per_epoch}"
                    " (or leave it unset: half of the step)")
                break
    return problems


def allowed_validation_fractions(n_train: int) -> str:
    """The validation fractions that leave at least 2 validation and 2 training images of `n_train`,
    in four decimals rounded inwards (so both ends named are allowed)."""
    low, high = math.ceil(2 / n_train * 1e4) / 1e4, math.floor((n_train - 2) / n_train * 1e4) / 1e4
    if n_train < 4 or low > high:
        return "0 (no validation split: too few training images for one)"
    return f"0 (no validation split), or {low:g} to {high:g}"


def training_images(name: str, shape: DatasetShape) -> str:
    """'1294 training images of digits (1438 minus 144 for validation)': what training sees, said so
    that a limit that seems to contradict the dataset's size explains itself."""
    if not shape.n_val:
        return f"{shape.n_train} training images of {name}"
    return (f"{shape.n_train} training images of {name} ({shape.n_train + shape.n_val} minus {shape.n_val} "
            "for validation)")
