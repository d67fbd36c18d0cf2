"""Sweep files: a typed, validated description of many trials (no Ray needed to read or check one).

    name: digits-stability
    base: {dataset: {name: digits}, model: {...}, training: {...}}   # a trial config
    variants: {ladder: {model.architecture: ladder-mlp}, shared: {model.architecture: shared-mlp}}
    grid: {training.seed: [0, 1, 2]}                                 # Cartesian product with variants
    search: {...}                                                    # or: Optuna over a space
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0.25}
    max_concurrent: 4
    storage: results

Keys in `variants`, `grid` and `search.space` are dotted paths into the trial config; a list
element is addressed by its index, as in `model.latent_dims.1` (facet 2's latent dimension).
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from pydantic import ValidationError

from .config import ConfigError, TrialConfig, format_errors, read_yaml

UNSUPERVISED_METRICS = ("elbo", "log_px", "train_loss")
METRIC_PATTERN = re.compile(r"^((acc|nmi|ari)/facet\d+/\w+|clusters_used/facet\d+|(kl_z|kl_c)/facet\d+)$")


class SearchParameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["int", "float", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _bounds(self) -> "SearchParameter":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs `low` and `high`")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"log scale needs low > 0, got {self.low}")
            if self.log and self.step is not None:
                raise ValueError("`step` and `log` cannot be combined (Optuna's rule)")
        return self

    def example(self):
        """A value in range, used to validate the trial configs this parameter produces."""
        if self.type == "categorical":
            return self.choices[0]
        return int(self.low) if self.type == "int" else float(self.low)


class SamplerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    multivariate: bool = True
    n_startup_trials: PositiveInt = 10
    constant_liar: bool = Field(default=True, description="TPE: avoid duplicate suggestions under concurrency")


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    space: dict[str, SearchParameter] = Field(min_length=1)
    metrics: list[str] = Field(default_factory=lambda: ["elbo"], min_length=1)
    modes: list[Literal["min", "max"]] = Field(default_factory=lambda: ["max"], min_length=1)
    num_samples: PositiveInt = 20
    replicates: PositiveInt = Field(default=1, description="seeds per suggestion; the objective is their mean")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)

    @model_validator(mode="after")
    def _objectives(self) -> "SearchConfig":
        if len(self.metrics) != len(self.modes):
            raise ValueError(f"metrics ({len(self.metrics)}) and modes ({len(self.modes)}) need one entry each")
        for metric in self.metrics:
            check_metric_name(metric)
        return self


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["asha"] = "asha"
    metric: str = "elbo"
    mode: Literal["min", "max"] = "max"
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(default=2.0, gt=1)

    @model_validator(mode="after")
    def _metric(self) -> "SchedulerConfig":
        check_metric_name(self.metric)
        return self


class ResourcesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: PositiveFloat = 1.0
    gpu: float = Field(default=0.0, ge=0.0, description="a fraction shares one GPU between trials")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: Union[dict, str] = Field(default_factory=dict,
                                   description="a trial config (the schema of `mfcbench train`), or a preset name "
                                               "or trial YAML path to start from")
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: Optional[SearchConfig] = None
    scheduler: Optional[SchedulerConfig] = None
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_concurrent: int = Field(default=0, ge=0, description="0: as many as the resources allow")
    retries: int = Field(default=0, ge=0, description="times a failed trial is retried")
    storage: str = "results"

    @model_validator(mode="after")
    def _combination(self) -> "SweepConfig":
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: needs at least one value")
        if self.search is not None and self.grid:
            raise ValueError("grid and search cannot be combined; use search.replicates for seeds "
                             "and one sweep file per grid point")
        if self.search is not None and self.scheduler is not None and self.search.replicates > 1:
            raise ValueError("scheduler (ASHA) cannot stop trials early when search.replicates > 1: "
                             "a trial reports the replicate mean only at the end")
        if self.search is not None and self.scheduler is not None and len(self.search.metrics) > 1:
            raise ValueError("scheduler (ASHA) needs a single objective; search.metrics has several")
        return self


def check_metric_name(metric: str) -> None:
    if metric not in UNSUPERVISED_METRICS and not METRIC_PATTERN.match(metric):
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(UNSUPERVISED_METRICS)} "
                         "or acc|nmi|ari/facet<j>/<factor>, kl_z|kl_c|clusters_used/facet<j>")


def set_path(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b.2` in nested dicts/lists, creating dicts on the way; raises ConfigError if impossible."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{dotted}: index {part!r} is outside the list {node}")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"{dotted}: {'.'.join(parts[:i])} is a value, not a section")


def resolved_base(base: dict | str) -> dict:
    """The base (a mapping, preset name or trial YAML) with every default filled in, so list paths
    like model.latent_dims.1 exist."""
    return TrialConfig.model_validate(read_yaml(base) if isinstance(base, str) else base).model_dump(mode="json")


def with_overrides(base: dict, overrides: dict[str, Any]) -> dict:
    import copy

    data = copy.deepcopy(base)
    for key, value in overrides.items():
        set_path(data, key, value)
    return data


SEED_KEY = "training.seed"


def grid_points(sweep: SweepConfig) -> list[tuple[str, dict[str, Any]]]:
    """(variant label, overrides) for every trial of a grid sweep, in a stable order.

    Runs that differ only in their seed share a label, so reports aggregate over seeds and never
    over other grid keys: `ladder training.lr=0.001`.
    """
    variants = list(sweep.variants.items()) or [("base", {})]
    keys = list(sweep.grid)
    points = []
    for (variant, variant_overrides), values in itertools.product(variants, itertools.product(*sweep.grid.values())):
        point = dict(zip(keys, values))
        label = " ".join([variant] + [f"{k}={v}" for k, v in point.items() if k != SEED_KEY])
        points.append((label, {**variant_overrides, **point}))
    return points


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[dict]]:
    """Read and fully validate a sweep file; returns the sweep and, for grids, every trial's params.

    Every problem is reported in one ConfigError, by key path, before anything starts.
    """
    data = read_yaml(path)
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"invalid sweep file {path}:\n{format_errors(error)}") from None
    problems: list[str] = []
    try:
        base = resolved_base(sweep.base)
    except ConfigError as error:
        raise ConfigError(f"invalid sweep file {path}:\n  base: {error}") from None
    except ValidationError as error:
        raise ConfigError(f"invalid sweep file {path}:\n{format_errors(error, prefix='base.')}") from None
    trials: list[dict] = []
    if sweep.search is None:
        for variant, overrides in grid_points(sweep):
            trials.append(_checked_trial(base, overrides, variant, f"variant {variant!r} with {overrides}", problems))
    else:
        example = {key: p.example() for key, p in sweep.search.space.items()}
        _checked_trial(base, example, "search", f"search.space with values {example}", problems)
        bad_variants = [f"  variants: not used by a search sweep (got {list(sweep.variants)})"] if sweep.variants else []
        problems += bad_variants
    if problems:
        raise ConfigError(f"invalid sweep file {path}:\n" + "\n".join(problems))
    return sweep, trials


def _checked_trial(base: dict, overrides: dict, variant: str, where: str, problems: list[str]) -> dict:
    try:
        trial = TrialConfig.model_validate(with_overrides(base, overrides)).model_dump(mode="json")
    except ConfigError as error:
        problems.append(f"  {where}: {error}")
        return {}
    except ValidationError as error:
        problems.append(f"  {where}:\n{format_errors(error, indent='    ')}")
        return {}
    return {"variant": variant, "overrides": overrides, "trial": trial}


def describe(sweep: SweepConfig, trials: list[dict]) -> str:
    """What --dry-run prints: the trials (or the search space), their count and resources."""
    lines = [f"sweep {sweep.name}: {sweep.description}".rstrip(": ")]
    res = f"{sweep.resources.cpu:g} CPU" + (f" + {sweep.resources.gpu:g} GPU" if sweep.resources.gpu else "")
    if sweep.search is None:
        lines.append(f"{len(trials)} trials, {res} each, max_concurrent={sweep.max_concurrent or 'auto'}")
        for i, t in enumerate(trials):
            lines.append(f"  {i:4d}  {t['variant']:<20} " + " ".join(f"{k}={v}" for k, v in t["overrides"].items()))
    else:
        s = sweep.search
        objective = ", ".join(f"{m} ({mode})" for m, mode in zip(s.metrics, s.modes))
        lines.append(f"Optuna {s.sampler.type} search, {s.num_samples} suggestions x {s.replicates} seed(s), "
                     f"objective {objective}, {res} each")
        for key, p in s.space.items():
            span = p.choices if p.type == "categorical" else f"[{p.low:g}, {p.high:g}]" + (" log" if p.log else "")
            lines.append(f"  {key}: {p.type} {span}")
    if sweep.scheduler:
        lines.append(f"scheduler: ASHA on {sweep.scheduler.metric} ({sweep.scheduler.mode}), grace period "
                     f"{sweep.scheduler.grace_period}, reduction factor {sweep.scheduler.reduction_factor:g}")
    return "\n".join(lines)
