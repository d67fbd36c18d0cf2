"""Sweep files: a typed, validated description of many trials (no Ray needed to read or check one).

    name: digits-stability
    base: {dataset: {name: digits}, model: {...}, training: {...}}   # a trial config
    variants: {ladder: {model.architecture: ladder-mlp}, shared: {model.architecture: shared-mlp}}
    grid: {training.seed: [0, 1, 2]}                                 # Cartesian product with variants
    search: {...}                                                    # or: Optuna over a space
    selection: validation                                            # or authors-protocol (objectives on the test set)
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0.25}                                 # per Tune trial (a packed trial: per pack)
    pack: 4                                                          # up to 4 seeds trained packed per trial
    max_concurrent: 4
    storage: results

Keys in `variants`, `grid` and `search.space` are dotted paths into the trial config; a list
element is addressed by its index, as in `model.latent_dims.1` (facet 2's latent dimension).

`pack: S` (default 1: one seed per trial) trains grid points that differ only in training.seed, and
the replicates of an Optuna suggestion, as packed trials of up to S seeds each (training.seeds,
harness.trial.packed): one process and one stacked model per pack, one ordinary run folder per seed,
`trial_<id>/runs/seed<s>`, where an unpacked trial of that seed puts it. Seeds are split into
ceil(n / S) packs of near-equal size, in grid order. Baselines (k-means, GMM: fitted in one go) and
grid points without a seed to share are not packed (`--dry-run` says which). See pack_grid.
`resources` and `max_concurrent` count Tune trials, packed or not. A packed trial reports to Tune
(and so to ASHA) the mean over its seeds still training of every metric, and each seed's objectives
as `seed<s>/<metric>` (harness.sweep.tune.worker); run folders and reports are as for unpacked trials.

Every path in a sweep (storage, dataset.data_root, npz: files, in base, variants, grid and search
choices) is made absolute when the sweep is loaded, against the working directory of the call:
Ray runs each trial inside its own trial folder, where a relative path means something else.
"""
from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from harness.sweep.metric_names import check_metric_name


class SearchParameter(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

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
            if self.step is not None and self.step <= 0:
                raise ValueError(f"step must be > 0, got {self.step:g}")
            if self.type == "int":
                not_whole = [f"{name} {value:g}" for name, value in (("low", self.low), ("high", self.high),
                                                                       ("step", self.step))
                             if value is not None and not float(value).is_integer()]
                if not_whole:
                    raise ValueError(f"int needs whole numbers, got {', '.join(not_whole)}; use type: float")
                if self.log and self.low < 1:
                    raise ValueError(f"int with log scale needs low >= 1 (Optuna's rule), got {self.low:g}")
        return self

    def example(self):
        """The first value (first choice, low bound): every searched key at once, for one trial config."""
        if self.type == "categorical":
            return self.choices[0]
        return int(self.low) if self.type == "int" else float(self.low)

    def edge_values(self) -> list[tuple[str, Any]]:
        """(label, value) for every value the search can reach at an edge: each categorical choice, and the
        low and the highest reachable bound of a range (Optuna lowers `high` onto the step grid)."""
        if self.type == "categorical":
            return [(f"choice {i}", choice) for i, choice in enumerate(self.choices, start=1)]
        high = self.high
        if self.step is not None:
            high = self.low + math.floor((self.high - self.low) / self.step + 1e-9) * self.step
        if self.type == "int":
            return [("low", int(self.low)), ("high", int(high))]
        return [("low", float(self.low)), ("high", float(high))]


class SamplerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    type: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    multivariate: bool = True
    n_startup_trials: PositiveInt = 10
    constant_liar: bool = Field(default=True, description="TPE: avoid duplicate suggestions under concurrency")


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    space: dict[str, SearchParameter] = Field(min_length=1)
    metrics: list[str] = Field(default_factory=lambda: ["val/elbo"], min_length=1)
    modes: list[Literal["min", "max"]] = Field(default_factory=lambda: ["max"], min_length=1)
    num_samples: PositiveInt = 20
    replicates: PositiveInt = Field(default=1, description="seeds per suggestion; the objective is their mean "
                                                           "(val/agreement: their mean pairwise ARI)")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, metrics: list[str]) -> list[str]:
        for metric in metrics:
            check_metric_name(metric)
        return metrics

    @model_validator(mode="after")
    def _objectives(self) -> "SearchConfig":
        if len(self.metrics) != len(self.modes):
            raise ValueError(f"metrics ({len(self.metrics)}) and modes ({len(self.modes)}) need one entry each")
        return self


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    type: Literal["asha"] = "asha"
    metric: str = "val/elbo"
    mode: Literal["min", "max"] = "max"
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(default=2.0, gt=1)

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, metric: str) -> str:
        check_metric_name(metric)
        return metric


class ResourcesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    cpu: PositiveFloat = 1.0
    gpu: float = Field(default=0.0, ge=0.0, description="a fraction shares one GPU between trials")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting

    name: str
    description: str = ""
    selection: Literal["validation", "authors-protocol"] = Field(
        default="validation", description="validation: search and scheduler objectives may not be test metrics "
                                          "(val/..., train_loss); authors-protocol: they may, as in the paper, "
                                          "which selects on the test set")
    base: Union[dict, str] = Field(default_factory=dict,
                                   description="a trial config (the schema of `mfcbench train`), or a preset name "
                                               "or trial YAML path to start from")
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: Optional[SearchConfig] = None
    scheduler: Optional[SchedulerConfig] = None
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    pack: int = Field(default=1, description="up to this many seeds trained packed in one trial (one process, one "
                                             "stacked model): grid points differing only in training.seed, and "
                                             "the replicates of a search suggestion; 1: one seed per trial")
    max_concurrent: int = Field(default=0, ge=0, description="0: as many as the resources allow")
    retries: int = Field(default=0, ge=0, description="times a trial whose actor or node was lost is retried "
                                                      "(from its run folder); a trial that fails on its own "
                                                      "(non-finite loss, bad data) is not")
    report: Literal["every_evaluation", "final"] = Field(
        default="every_evaluation", description="what each trial reports to Tune: every evaluation (live progress, "
                                                "needed by a scheduler), or its final metrics only (cheapest for "
                                                "thousands of trials); run folders keep every evaluation either way")
    ray_loggers: bool = Field(default=False, description="also write Ray Tune's own per-trial result.json, "
                                                         "progress.csv and TensorBoard files (each run folder "
                                                         "already has metrics.jsonl and tensorboard/)")
    storage: str = "results"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        problem = experiment_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    @field_validator("pack", mode="before")
    @classmethod
    def _pack(cls, pack: Any) -> int:
        if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
            raise ValueError("must be a whole number >= 1: the most seeds one trial trains packed (grid points that "
                             "differ only in training.seed, or the replicates of a search suggestion); 1 (the "
                             "default) trains one seed per trial")
        return pack

    @model_validator(mode="after")
    def _combination(self) -> "SweepConfig":
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: needs at least one value")
        if self.search is not None and self.grid:
            raise ValueError("grid and search cannot be combined; use search.replicates for seeds "
                             "and one sweep file per grid point")
        if self.search is not None and self.scheduler is not None and self.search.replicates > 1:
            raise ValueError("scheduler (ASHA) cannot be combined with search.replicates > 1: it would stop a "
                             "suggestion's seeds one by one, each ranked against single seeds of other suggestions")
        if self.search is not None and self.scheduler is not None and len(self.search.metrics) > 1:
            raise ValueError("scheduler (ASHA) needs a single objective; search.metrics has several")
        if self.scheduler is not None and self.report == "final":
            raise ValueError("report: final cannot be combined with a scheduler: ASHA decides on the results of "
                             "every evaluation; use report: every_evaluation")
        return self


def experiment_name_problem(name: str) -> str | None:
    """Why `name` cannot be an experiment folder directly inside storage, or None if it can."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        return (f"{name!r} is not a plain folder name: use letters, digits, '_', '-' and '.', "
                "not starting with '.' (no '/', '.' or '..'), so the experiment stays inside storage")
    return None
