"""Typed trial configuration, validated in one place.

A trial YAML maps one-to-one onto `TrialConfig` (sections dataset, model, training, evaluation);
`--set model.latent_dims=[5,5]` overrides a key. Every problem is reported at once, by key path,
before any data is loaded.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator, \
    model_validator

from models.config import ModelConfig

from .data import DatasetError, check_dataset_name

PRESETS_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem; the message lists every bad key with what is allowed."""


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "digits"
    data_root: Optional[str] = Field(default=None, description="folder (or 3dshapes.h5) holding the files")
    download: bool = Field(default=False, description="let torchvision download mnist/svhn (needs internet)")
    split_seed: int = Field(default=0, description="seeds random train/test splits, independent of the model seed")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        try:
            check_dataset_name(name)
        except DatasetError as error:
            raise ValueError(str(error)) from None
        return name


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs_per_step: list[PositiveInt] = Field(
        default_factory=lambda: [10], min_length=1,
        description="progressive: one entry per facet (step s trains facets J-s+1..J); "
                    "otherwise the entries are summed into one run with every facet active")
    progressive: bool = True
    fade_in_batches: int = Field(default=15000, ge=0)
    batch_size: PositiveInt = 512
    lr: PositiveFloat = 5e-4
    seed: int = 0
    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N")
    threads: Optional[PositiveInt] = Field(default=None, description="torch CPU threads; None: the trial's CPU budget")

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
            return device
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs_per_step)


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every_n_epochs: PositiveInt = 1
    batch_size: PositiveInt = 2048


class TrialConfig(BaseModel):
    """One trial: one model, one dataset, one seed."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _progressive_schedule(self) -> "TrialConfig":
        trains = self.model.name in ("mfcvae", "vade")
        steps = len(self.training.epochs_per_step)
        if trains and self.training.progressive and steps != self.model.n_facets:
            raise ValueError(
                f"training.epochs_per_step has {steps} entries but progressive training of "
                f"{self.model.n_facets} facets needs one per facet (or set training.progressive=false)")
        return self


def format_errors(error: ValidationError, prefix: str = "", indent: str = "  ") -> str:
    """One line per problem: `key.path: message (got value)`."""
    lines = []
    for item in error.errors():
        path = prefix + ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in item and not isinstance(item["input"], dict):
            message += f" (got {item['input']!r})"
        lines.append(f"{indent}{path}: {message}")
    return "\n".join(lines)


def allowed_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += allowed_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def validate(cls: type[BaseModel], data: dict, what: str):
    """Validate `data` into `cls`, raising ConfigError that lists every problem by key path."""
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        unknown = any(item["type"] == "extra_forbidden" for item in error.errors())
        hint = f"\nallowed keys: {', '.join(allowed_keys(cls))}" if unknown else ""
        raise ConfigError(f"invalid {what}:\n{format_errors(error)}{hint}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set needs key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({error})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(source: str | Path) -> dict:
    """A YAML mapping from a file path, or from a preset name such as `paper-mnist`."""
    path = Path(source)
    if not path.exists() and (PRESETS_DIR / f"{source}.yaml").exists():
        path = PRESETS_DIR / f"{source}.yaml"
    if not path.exists():
        presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise ConfigError(f"config {str(source)!r}: no such file or preset (presets: {presets})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_trial_config(source: str | Path | None = None, overrides: list[str] = ()) -> TrialConfig:
    data = read_yaml(source) if source is not None else {}
    return validate(TrialConfig, apply_overrides(data, list(overrides)), "trial config")


def dump(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
