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
harness.packed): one process and one stacked model per pack, one ordinary run folder per seed,
`trial_<id>/runs/seed<s>`, where an unpacked trial of that seed puts it. Seeds are split into
ceil(n / S) packs of near-equal size, in grid order. Baselines (k-means, GMM: fitted in one go) and
grid points without a seed to share are not packed (`--dry-run` says which). See pack_grid.
`resources` and `max_concurrent` count Tune trials, packed or not. A packed trial reports to Tune
(and so to ASHA) the mean over its seeds still training of every metric, and each seed's objectives
as `seed<s>/<metric>` (harness.tune_trial); run folders and reports are as for unpacked trials.

Every path in a sweep (storage, dataset.data_root, npz: files, in base, variants, grid and search
choices) is made absolute when the sweep is loaded, against the working directory of the call:
Ray runs each trial inside its own trial folder, where a relative path means something else.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator, \
    model_validator

from .agreement import AGREEMENT_OBJECTIVE
from .config import ConfigError, TrialConfig, drop_replaced_seed_key, format_errors, read_yaml
from .data import DatasetError, dataset_shape

# What harness.trainer.evaluate reports, measured on the test images (the names of the paper's tables).
TEST_METRIC_PATTERN = re.compile(
    r"^(elbo|log_px|(acc|nmi|ari)/facet\d+/\w+|clusters_used/facet\d+|(kl_z|kl_c)/facet\d+)$")
# The same names prefixed val/ on the validation images (carved from the training set, see
# dataset.validation_fraction), and the label-free silhouette of each facet's clusters there.
VALIDATION_PREFIX = "val/"
SILHOUETTE_PATTERN = re.compile(r"^val/silhouette/facet\d+$")
# Seed agreement: not reported by a trial but computed by the searcher from the assignments.npz of a
# suggestion's seeds (harness.agreement), so a search objective only, with search.replicates >= 2.
AGREEMENT_PATTERN = re.compile(rf"^{re.escape(AGREEMENT_OBJECTIVE)}(/facet\d+)?$")
TRAINING_METRICS = ("train_loss",)
# What harness.trainer.evaluate reports for k-means / GMM: clustering metrics only (no ELBO terms,
# no silhouette); they keep assignments.npz, so their seed agreement exists too.
BASELINE_MODELS = ("kmeans", "gmm")
TRAINED_MODELS = ("mfcvae", "vade")  # trained by gradient steps: the models whose seeds can be packed
BASELINE_METRIC_PATTERN = re.compile(r"^(val/)?((acc|nmi|ari)/facet\d+/\w+|clusters_used/facet\d+)$")


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


def check_metric_name(metric: str) -> None:
    if not (metric in TRAINING_METRICS or is_test_metric(metric) or is_validation_metric(metric)):
        raise ValueError(f"unknown metric {metric!r}; use val/<metric> (validation images) or <metric> (test "
                         "images), where <metric> is elbo, log_px, acc|nmi|ari/facet<j>/<factor> or "
                         "kl_z|kl_c|clusters_used/facet<j>; or val/silhouette/facet<j>, val/agreement, "
                         "val/agreement/facet<j> or train_loss")


def is_test_metric(metric: str) -> bool:
    """Whether `metric` is measured on the test images."""
    return bool(TEST_METRIC_PATTERN.match(metric))


def is_validation_metric(metric: str) -> bool:
    """Whether `metric` is measured on the validation images (seed agreement included)."""
    if not metric.startswith(VALIDATION_PREFIX):
        return False
    return (is_test_metric(metric.removeprefix(VALIDATION_PREFIX))
            or bool(SILHOUETTE_PATTERN.match(metric) or AGREEMENT_PATTERN.match(metric)))


def is_agreement_metric(metric: str) -> bool:
    """Whether `metric` is a seed agreement, which the searcher computes instead of a trial reporting it."""
    return bool(AGREEMENT_PATTERN.match(metric))


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


# A storage given as a URI (s3://, gs://, file://) is not a local path: left as written, for check_before_start.
REMOTE_STORAGE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def absolute_path(path: str) -> str:
    """`path` with `~` expanded, made absolute against the current working directory (not resolving
    symlinks: a shared mount is named as the user named it)."""
    return os.path.abspath(os.path.expanduser(path))


def _absolute_dataset_name(name: Any) -> Any:
    if isinstance(name, str) and name.startswith("npz:") and len(name) > len("npz:"):
        return "npz:" + absolute_path(name[len("npz:"):])
    return name


# Trial config keys that hold a path, and how each is made absolute (other values pass unchanged,
# so validation still reports them as written).
PATH_KEYS = {
    "dataset.data_root": lambda root: absolute_path(root) if isinstance(root, str) else root,
    "dataset.name": _absolute_dataset_name,
}


def with_absolute_paths(key: str, value: Any) -> Any:
    """`value` as set at dotted `key` of a trial config ("" for a whole config, "dataset" for that
    section) with every path in it absolute."""
    if key in PATH_KEYS:
        return PATH_KEYS[key](value)
    prefix = f"{key}." if key else ""
    if isinstance(value, dict) and any(path_key.startswith(prefix) for path_key in PATH_KEYS):
        return {k: with_absolute_paths(prefix + str(k), v) for k, v in value.items()}
    return value


def _with_absolute_paths(sweep: SweepConfig) -> SweepConfig:
    """The sweep with every path absolute; a preset or trial-YAML `base` is read into a mapping so its
    paths (every paper-* preset has data_root: data) are made absolute too. Raises ConfigError for a
    base that cannot be read."""
    base = read_yaml(sweep.base) if isinstance(sweep.base, str) else sweep.base
    search = sweep.search
    if search is not None:
        space = {key: p.model_copy(update={"choices": [with_absolute_paths(key, c) for c in p.choices]})
                 if p.type == "categorical" else p for key, p in search.space.items()}
        search = search.model_copy(update={"space": space})
    return sweep.model_copy(update={
        "base": with_absolute_paths("", base),
        "variants": {label: {key: with_absolute_paths(key, value) for key, value in overrides.items()}
                     for label, overrides in sweep.variants.items()},
        "grid": {key: [with_absolute_paths(key, value) for value in values] for key, values in sweep.grid.items()},
        "search": search,
        "storage": sweep.storage if REMOTE_STORAGE.match(sweep.storage) else absolute_path(sweep.storage),
    })


# Keys whose default depends on other keys, which variants, grids and searches may change: an unset
# training.epochs_per_step on the facets, progressive, the batch size and the data; model.architecture
# on the facets and the model (one facet or VaDE: shared-mlp); model.decoder_merge on the architecture;
# model.pretrain_epochs on the model, the batch size and the data.
PER_TRIAL_DEFAULTS = [("training", "epochs_per_step"), ("model", "architecture"), ("model", "decoder_merge"),
                      ("model", "pretrain_epochs")]


def resolved_base(base: dict | str) -> dict:
    """The base (a mapping, preset name or trial YAML) with every default filled in, so list paths
    like model.latent_dims.1 exist, except the PER_TRIAL_DEFAULTS it leaves unset: they stay unset."""
    data = read_yaml(base) if isinstance(base, str) else base
    resolved = TrialConfig.model_validate(data).model_dump(mode="json")
    for section, key in PER_TRIAL_DEFAULTS:
        if (data.get(section) or {}).get(key) is None:
            resolved[section][key] = None
    return resolved


def with_overrides(base: dict, overrides: dict[str, Any]) -> dict:
    data = copy.deepcopy(base)
    for key, value in overrides.items():
        set_path(data, key, value)
        drop_replaced_seed_key(data, key, set(overrides))
    return data


SEED_KEY = "training.seed"
EPOCHS_KEY = "training.epochs_per_step"


def total_epochs(trial: dict) -> int:
    """Epochs a trial config (a dict) trains for: the sum of training.epochs_per_step (validated
    first only when it is unset: its default depends on the facets)."""
    steps = trial["training"].get("epochs_per_step")
    return sum(steps) if steps else TrialConfig.model_validate(trial).training.total_epochs


def max_total_epochs(sweep: SweepConfig, trials: list[dict]) -> int:
    """The most epochs any trial of a valid sweep can train (ASHA's max_t): over a grid's trials, or for
    a search over the base with every combination of edge values of the searched keys that set epochs."""
    if sweep.search is None:
        return max(total_epochs(t["trial"]) for t in trials)
    base = resolved_base(sweep.base)
    moves_epochs = [EPOCHS_KEY]
    if base["training"]["epochs_per_step"] is None:  # its default (about DEFAULT_OPTIMISER_STEPS steps) moves too
        moves_epochs += ["training.batch_size", "training.progressive", "dataset", "model.name", "model.latent_dims"]
    epoch_keys = [key for key in sweep.search.space if any(key == k or key.startswith(k + ".") for k in moves_epochs)]
    edges = [[value for _, value in sweep.search.space[key].edge_values()] for key in epoch_keys]
    return max(total_epochs(with_overrides(base, dict(zip(epoch_keys, combination))))
               for combination in itertools.product(*edges))


def effective_max_concurrent(sweep: SweepConfig) -> int:
    """Tune trials run at once (0: as many as the cluster's resources hold). A TPE search without
    `max_concurrent` runs n_startup_trials suggestions (x their Tune trials: one per replicate, or per
    pack of replicates) at once: TPE suggests from
    finished trials, and with more suggestions in flight than its random start-up ones it degrades
    towards random sampling."""
    if sweep.max_concurrent or sweep.search is None or sweep.search.sampler.type != "tpe":
        return sweep.max_concurrent
    return sweep.search.sampler.n_startup_trials * trials_per_suggestion(sweep)


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


SEEDS_KEY = "training.seeds"


def balanced_chunks(items: list, size: int) -> list[list]:
    """`items` in order, cut into ceil(n / size) consecutive chunks whose lengths differ by at most one
    (10 seeds by 4: 4, 3, 3; not 4, 4, 2): no pack is left far smaller than the others."""
    if not items:
        return []
    count = -(-len(items) // size)
    base, extra = divmod(len(items), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


@dataclass
class GridPacking:
    """A grid's Tune trials under `pack` (pack_grid)."""

    trials: list[dict]  # per Tune trial {variant, overrides, trial}: a pack (training.seeds) or one grid point
    members: list[list[int]]  # per Tune trial, the indices of its grid points (in the list given to pack_grid)
    notes: list[str]  # why grid points were left unpacked, one line per variant label

    @property
    def packed(self) -> int:
        """How many Tune trials train several seeds."""
        return sum(len(m) > 1 for m in self.members)


def pack_grid(trials: list[dict], pack: int) -> GridPacking:
    """Group a grid's trials ({variant, overrides, trial} from load_sweep) that differ only in
    training.seed into packed trials of up to `pack` seeds: per group, its seeds in grid order cut into
    balanced_chunks; a chunk of one seed stays an ordinary trial. A pack's overrides name its seeds as
    `training.seeds: [...]` where its points said `training.seed`; its trial config has training.seeds
    and no training.seed. Each pack takes the place of its first grid point, so the order is the grid's.

    Not packed (with a note): baselines (k-means, GMM: fitted in one go), a seed repeated within a
    group (each seed trains once per pack), and grid points with no other seed to share a trial with.
    Raises pydantic's ValidationError if a pack's config does not validate.
    """
    if pack == 1:  # today's sweep, as it is (and no cost for a grid of thousands)
        return GridPacking(list(trials), [[i] for i in range(len(trials))], [])
    groups: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(trials):
        training = {k: v for k, v in t["trial"]["training"].items() if k != "seed"}
        key = json.dumps({**t["trial"], "training": training}, sort_keys=True)
        groups.setdefault((t["variant"], key), []).append(i)
    notes: dict[str, str] = {}
    placed: dict[int, tuple[dict, list[int]]] = {}  # first grid point -> (Tune trial, its points)
    for (variant, _), members in groups.items():
        first = trials[members[0]]
        seeds = [trials[i]["trial"]["training"].get("seed") for i in members]
        model = first["trial"]["model"]["name"]
        reason = None
        if "seeds" in first["trial"]["training"]:
            reason = "its trials are packed already (training.seeds in the base or a variant)"
        elif model not in TRAINED_MODELS:
            reason = f"{model} is a baseline, fitted in one go: one trial per seed"
        elif len(members) < 2:
            reason = (f"one seed only (training.seed={seeds[0]})" if SEED_KEY in first["overrides"] else
                      "no training.seed in the grid: one seed, nothing to pack")
        elif len(set(seeds)) < len(seeds):
            reason = (f"a seed repeats ({', '.join(str(s) for s in sorted(set(seeds)) if seeds.count(s) > 1)}): "
                      "each seed trains once per pack")
        if reason is not None:
            notes.setdefault(variant, f"not packed: {variant}: {reason}")
            for i in members:
                placed[i] = (trials[i], [i])
            continue
        for chunk in balanced_chunks(members, pack):
            if len(chunk) == 1:
                placed[chunk[0]] = (trials[chunk[0]], chunk)
                continue
            chunk_seeds = [trials[i]["trial"]["training"]["seed"] for i in chunk]
            overrides = {(SEEDS_KEY if k == SEED_KEY else k): (chunk_seeds if k == SEED_KEY else v)
                         for k, v in first["overrides"].items()}
            config = TrialConfig.model_validate(with_overrides(first["trial"], {SEEDS_KEY: chunk_seeds})).model_dump(
                mode="json")
            placed[chunk[0]] = ({"variant": variant, "overrides": overrides, "trial": config}, chunk)
    order = sorted(placed)
    return GridPacking([placed[i][0] for i in order], [placed[i][1] for i in order], list(notes.values()))


def search_candidates_train(sweep: SweepConfig) -> bool:
    """Whether every trial a search can suggest is trained by gradient steps (no baseline among them)."""
    base = resolved_base(sweep.base)
    return all(with_overrides(base, overrides)["model"]["name"] in TRAINED_MODELS
               for _, overrides in search_candidates(sweep.search))


def search_pack(sweep: SweepConfig) -> int:
    """Seeds per Tune trial of a search sweep: min(pack, search.replicates), or 1 when a suggestion
    could be a baseline (k-means, GMM), which is not packed."""
    if sweep.search is None or sweep.pack == 1 or sweep.search.replicates == 1:
        return 1
    return min(sweep.pack, sweep.search.replicates) if search_candidates_train(sweep) else 1


def replicate_groups(replicates: int, pack: int) -> list[list[int]]:
    """The replicates 0..R-1 of a suggestion, by Tune trial: balanced_chunks of at most `pack`."""
    return balanced_chunks(list(range(replicates)), pack)


def trials_per_suggestion(sweep: SweepConfig) -> int:
    """Tune trials each suggestion of a search sweep runs: one per replicate, or one per pack of them."""
    return len(replicate_groups(sweep.search.replicates, search_pack(sweep)))


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[dict]]:
    """Read and fully validate a sweep file; returns the sweep and, for grids, every trial's params.

    Every problem is reported in one ConfigError, by key path, before anything starts: every grid
    trial, every categorical choice and both ends of every searched range as trial configs, every
    objective against the sweep's selection, and every metric name against what those trials will
    report. Every path in the returned sweep and
    trials is absolute (see _with_absolute_paths).
    """
    sweep = _parse_sweep_file(Path(path))
    try:
        sweep = _with_absolute_paths(sweep)
        base = resolved_base(sweep.base)
    except ConfigError as error:
        raise ConfigError(f"invalid sweep file {path}:\n  base: {error}") from None
    except ValidationError as error:
        raise ConfigError(f"invalid sweep file {path}:\n{format_errors(error, prefix='base.')}") from None
    problems: list[str] = []
    trials: list[dict] = []
    if sweep.search is None:
        for variant, overrides in grid_points(sweep):
            trials.append(_checked_trial(base, overrides, variant, f"variant {variant!r} with {overrides}", problems))
        checked = [t for t in trials if t]
    else:
        checked = []
        for where, overrides in search_candidates(sweep.search):
            checked.append(_checked_trial(base, overrides, "search", where, problems))
        checked = [t for t in checked if t]
        if sweep.variants:
            problems.append(f"  variants: not used by a search sweep (got {list(sweep.variants)})")
    problems += _metric_problems(sweep, checked)
    if sweep.scheduler is not None and not problems:
        longest = max_total_epochs(sweep, checked)
        if sweep.scheduler.grace_period > longest:
            problems.append(f"  scheduler.grace_period: {sweep.scheduler.grace_period} exceeds the {longest} epochs of "
                            "the longest trial (ASHA's max_t); lower it")
    problems += _device_problems(sweep, checked)
    if not problems:
        problems += _packing_problems(sweep, trials)
    if problems:
        raise ConfigError(f"invalid sweep file {path}:\n" + "\n".join(dict.fromkeys(problems)))
    return sweep, trials


def _packing_problems(sweep: SweepConfig, trials: list[dict]) -> list[str]:
    """The packed trial configs `pack` makes, validated (a grid's packs; a search's first suggestion's
    seeds at every edge of the space)."""
    if sweep.pack == 1:
        return []
    try:
        if sweep.search is None:
            pack_grid(trials, sweep.pack)
        elif search_pack(sweep) > 1:
            base = resolved_base(sweep.base)
            seeds = [base["training"]["seed"] + r for r in replicate_groups(sweep.search.replicates,
                                                                             search_pack(sweep))[0]]
            for _, overrides in search_candidates(sweep.search):
                TrialConfig.model_validate(with_overrides(with_overrides(base, overrides), {SEEDS_KEY: seeds}))
    except (ConfigError, ValidationError) as error:
        text = format_errors(error, indent="    ") if isinstance(error, ValidationError) else f"    {error}"
        return [f"  pack: {sweep.pack} makes packed trials that do not validate:\n{text}"]
    return []


def _parse_sweep_file(path: Path) -> SweepConfig:
    # Not read_yaml's lookup: a sweep file is a file, never a trial preset name.
    if not path.is_file():
        what = "is a folder, not a sweep file" if path.is_dir() else "no such sweep file"
        raise ConfigError(f"{path}: {what} (the sweeps shipped with mfcbench are in sweeps/*.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a valid YAML sweep file ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a sweep file must be a mapping (name, base, grid or search, "
                          f"...), got a {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as error:
        unknown = any(item["type"] == "extra_forbidden" for item in error.errors())
        hint = ""
        if unknown:
            hint = (f"\nallowed keys: {', '.join(SweepConfig.model_fields)}; in search: "
                    f"{', '.join(SearchConfig.model_fields)}")
        raise ConfigError(f"invalid sweep file {path}:\n{format_errors(error)}{hint}") from None


def search_candidates(search: SearchConfig) -> list[tuple[str, dict[str, Any]]]:
    """(where, overrides) covering every value at an edge of the search space.

    One trial config has every key at its first value; then each key in turn takes each of its other
    edge values (other choices, the high bound) with the rest at their first value. That is one
    config per edge value, not the product of all edges, which grows as 2^keys.
    """
    first = {key: p.example() for key, p in search.space.items()}
    candidates = [(f"search.space at first choices / low bounds {first}", first)]
    for key, parameter in search.space.items():
        for label, value in parameter.edge_values()[1:]:  # the first edge value is first[key]
            candidates.append((f"search.space.{key} {label} = {value!r}", {**first, key: value}))
    return candidates


def _which_trials(sweep: SweepConfig, trial: dict) -> str:
    """How a problem message names a checked trial: its variant, or a search's trials as a whole."""
    return f"variant {trial['variant']!r}" if sweep.search is None else "the searched trials"


def _device_problems(sweep: SweepConfig, trials: list[dict]) -> list[str]:
    """A fixed GPU index in a sweep: Ray gives each trial its GPU(s) (resources.gpu) and makes only those
    visible, so cuda:N would pick a GPU Ray did not assign, or one that is not there."""
    problems = []
    for trial in trials:
        device = trial["trial"]["training"]["device"]
        if device.startswith("cuda:"):
            problems.append(f"  training.device: {device!r} in {_which_trials(sweep, trial)} is not allowed in a "
                            "sweep: Ray assigns each trial its GPU (resources.gpu); use cuda or auto (or cpu)")
        elif device == "cuda" and not sweep.resources.gpu:
            problems.append(f"  training.device: 'cuda' in {_which_trials(sweep, trial)} needs resources.gpu > 0: "
                            "Ray gives a trial no GPU unless it asks for one (or use device auto)")
    return problems


# Read nothing under data_root (fashion-mnist: not necessarily, Debian's package installs it elsewhere)
DATASETS_WITHOUT_FILES = ("digits", "shapes-config1", "shapes-config2", "fashion-mnist")


def data_paths(sweep: SweepConfig, trials: list[dict]) -> list[tuple[str, str]]:
    """(what, absolute path) for every file or folder the trials read their data from: ("npz", file) or
    ("data_root of <dataset>", folder or file). Datasets that ship with scikit-learn or are rendered
    (digits, shapes-config*) read nothing, whatever their data_root says."""
    if sweep.search is None:
        configs = [t["trial"] for t in trials]
    else:
        base = resolved_base(sweep.base)
        configs = [with_overrides(base, overrides) for _, overrides in search_candidates(sweep.search)]
    found: dict[tuple[str, str], None] = {}
    for config in configs:
        name, root = config["dataset"]["name"], config["dataset"].get("data_root")
        if name.startswith("npz:"):
            found[("npz", name[len("npz:"):])] = None
        elif root is not None and name not in DATASETS_WITHOUT_FILES and not config["dataset"].get("download"):
            # (a download creates data_root on the node; fashion-mnist also looks in the system's folder)
            found[(f"data_root of {name}", root)] = None
    return list(found)


def objectives(sweep: SweepConfig) -> list[tuple[str, str]]:
    """(field, metric) of every search and scheduler objective of the sweep."""
    uses = []
    if sweep.search is not None:
        uses += [("search.metrics", metric) for metric in sweep.search.metrics]
    if sweep.scheduler is not None:
        uses.append(("scheduler.metric", sweep.scheduler.metric))
    return uses


def reported_objectives(sweep: SweepConfig) -> list[str]:
    """The objectives every trial must report (a trial where one is not finite fails): all but the seed
    agreement, which the searcher computes from a suggestion's run folders."""
    return sorted({metric for _, metric in objectives(sweep) if not is_agreement_metric(metric)})


def _metric_problems(sweep: SweepConfig, trials: list[dict]) -> list[str]:
    """Objectives the sweep may not select on, and objectives the given trials will never report."""
    problems = []
    for field, metric in objectives(sweep):
        problem = objective_problem(sweep, field, metric)
        if problem:
            problems.append(f"  {field}: {problem}")
        for trial in trials:
            problem = metric_problem(metric, trial["trial"])
            if problem:
                problems.append(f"  {field}: {metric!r} is never reported by {_which_trials(sweep, trial)}: {problem}")
    return problems


def objective_problem(sweep: SweepConfig, field: str, metric: str) -> str | None:
    """Why `metric` cannot be the sweep's objective at `field` (search.metrics or scheduler.metric),
    whatever the trials: a test metric under selection `validation`, or a seed agreement used where no
    suggestion has several seeds to compare. None if it can."""
    if sweep.selection == "validation" and is_test_metric(metric):
        return (f"{metric!r} is measured on the test images, and selecting on the test set makes the reported "
                f"test numbers optimistic; use 'val/{metric}' (the same on validation images carved from the "
                "training set; needs dataset.validation_fraction > 0), or set `selection: authors-protocol` "
                "to replicate the paper's protocol (selection on the test set)")
    if is_agreement_metric(metric) and field == "scheduler.metric":
        return (f"{metric!r} cannot be a scheduler metric: it compares the finished seeds of a suggestion, and "
                "ASHA ranks single trials while they run; use it in search.metrics (with search.replicates >= 2) "
                "and a scheduler metric every trial reports, such as val/elbo")
    if is_agreement_metric(metric) and sweep.search.replicates < 2:
        return (f"{metric!r} compares the seeds of each suggestion, so it needs search.replicates >= 2 "
                f"(got {sweep.search.replicates})")
    return None


def metric_problem(metric: str, trial: dict) -> str | None:
    """Why a trial (a validated config dict) never reports `metric`, or None if it does (for a seed
    agreement: never keeps the validation assignments it is computed from).

    Mirrors harness.trainer.evaluate and harness.metrics.clustering_metrics: val/ metrics need
    validation images; baselines report only clustering metrics; facets are 1..J; acc/nmi/ari exist
    for factors with at least two values.
    """
    model, dataset = trial["model"], trial["dataset"]["name"]
    if metric.startswith(VALIDATION_PREFIX) and trial["dataset"]["validation_fraction"] == 0:
        return ("dataset.validation_fraction is 0, so there are no validation images; set it above 0 "
                "(default 0.1)")
    if model["name"] in BASELINE_MODELS and not (BASELINE_METRIC_PATTERN.match(metric)
                                                 or is_agreement_metric(metric)):
        return (f"{model['name']} is a baseline and reports only [val/]acc|nmi|ari/facet1/<factor> and "
                "[val/]clusters_used/facet1 (no ELBO, KL terms, silhouette or training loss)")
    match = re.search(r"facet(\d+)", metric)
    if match:
        j, n_facets = int(match.group(1)), len(model["latent_dims"])
        if not 1 <= j <= n_facets:
            return f"facet {j} does not exist: model.latent_dims={model['latent_dims']} gives facets 1..{n_facets}"
    name = metric.removeprefix(VALIDATION_PREFIX)
    factor = name.split("/")[2] if name.count("/") == 2 else None
    if factor is not None:
        try:
            factors = dataset_shape(dataset).factors
        except DatasetError as error:
            return f"cannot read the factors of dataset {dataset!r}: {error}"
        if factor not in factors:
            return f"dataset {dataset} has no factor {factor!r}; its factors: {', '.join(factors) or 'none'}"
        if factors[factor] is not None and factors[factor] < 2:
            return f"factor {factor!r} of {dataset} has a single value, so no clustering metric is computed for it"
    return None


def _checked_trial(base: dict, overrides: dict, variant: str, where: str, problems: list[str]) -> dict:
    """The trial's params, or {} after appending its problems to `problems`."""
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
    if sweep.search is None and sweep.pack == 1:
        lines.append(f"{len(trials)} trials, {res} each")
        for i, t in enumerate(trials):
            lines.append(f"  {i:4d}  {t['variant']:<20} " + " ".join(f"{k}={v}" for k, v in t["overrides"].items()))
    elif sweep.search is None:
        packing = pack_grid(trials, sweep.pack)
        lines.append(f"{len(packing.trials)} trials from {len(trials)} grid points, pack {sweep.pack}: "
                     f"{packing.packed} trial(s) train up to {sweep.pack} seeds packed in one process; {res} each "
                     "(per trial, packed or not)")
        for i, (t, members) in enumerate(zip(packing.trials, packing.members)):
            packed = f"  ({len(members)} seeds packed)" if len(members) > 1 else ""
            lines.append(f"  {i:4d}  {t['variant']:<20} "
                         + " ".join(f"{k}={v}" for k, v in t["overrides"].items()) + packed)
        lines += packing.notes
    else:
        s = sweep.search
        objective = ", ".join(f"{m} ({mode})" for m, mode in zip(s.metrics, s.modes))
        lines.append(f"Optuna {s.sampler.type} search, {s.num_samples} suggestions x {s.replicates} seed(s), "
                     f"objective {objective}, {res} each")
        for key, p in s.space.items():
            span = p.choices if p.type == "categorical" else f"[{p.low:g}, {p.high:g}]" + (" log" if p.log else "")
            lines.append(f"  {key}: {p.type} {span}")
        lines += _search_packing_lines(sweep)
    lines += _concurrency_lines(sweep)
    lines.append(_selection_line(sweep))
    if sweep.scheduler:
        lines.append(f"scheduler: ASHA on {sweep.scheduler.metric} ({sweep.scheduler.mode}), grace period "
                     f"{sweep.scheduler.grace_period}, reduction factor {sweep.scheduler.reduction_factor:g}, "
                     f"max_t {max_total_epochs(sweep, trials)} epochs")
    lines += [f"data: {what} {path}" for what, path in data_paths(sweep, trials)]
    return "\n".join(lines)


def _search_packing_lines(sweep: SweepConfig) -> list[str]:
    """How `pack` groups a search's replicates, or why it does not."""
    if sweep.pack == 1:
        return []
    replicates, pack = sweep.search.replicates, search_pack(sweep)
    if pack > 1:
        sizes = [len(g) for g in replicate_groups(replicates, pack)]
        return [f"packing: the {replicates} seeds of each suggestion train in {len(sizes)} trial(s) of "
                f"{', '.join(map(str, sizes))} seeds packed (pack {sweep.pack}); resources are per trial"]
    if replicates == 1:
        return [f"not packed: search.replicates is 1, so each suggestion trains one seed (pack {sweep.pack} unused)"]
    return ["not packed: the search can suggest a baseline (k-means, GMM: fitted in one go), so every seed is "
            "a trial of its own"]


def _selection_line(sweep: SweepConfig) -> str:
    """What the search and scheduler objectives are measured on."""
    on_test = [metric for _, metric in objectives(sweep) if is_test_metric(metric)]
    if on_test:  # only under selection authors-protocol: load_sweep refuses them otherwise
        return (f"selection: {sweep.selection}, selects on the TEST set (the authors' protocol): "
                f"{', '.join(dict.fromkeys(on_test))} measured on the test images")
    if not objectives(sweep):
        return f"selection: {sweep.selection} (no search or scheduler objective)"
    return f"selection: {sweep.selection}, no objective is measured on the test images"


def _concurrency_lines(sweep: SweepConfig) -> list[str]:
    """The effective concurrency, and a warning when a TPE search has more suggestions in flight than
    random start-up suggestions."""
    limit = effective_max_concurrent(sweep)
    if not limit:
        return ["concurrency: as many trials at once as the cluster's resources hold"]
    if sweep.search is None:
        return [f"concurrency: at most {limit} trials at once (max_concurrent)"]
    per_suggestion = trials_per_suggestion(sweep)
    packed = per_suggestion < sweep.search.replicates
    source = "max_concurrent" if sweep.max_concurrent else \
        f"default: search.sampler.n_startup_trials x {'trials per suggestion' if packed else 'replicates'}"
    in_flight = math.ceil(limit / per_suggestion)
    seeds = f"{sweep.search.replicates} seed(s)" + (f" in {per_suggestion} packed trial(s)" if packed else "")
    lines = [f"concurrency: at most {limit} trials at once, {in_flight} suggestion(s) x {seeds} ({source})"]
    startup = sweep.search.sampler.n_startup_trials
    if sweep.search.sampler.type == "tpe" and in_flight > startup:
        lines.append(f"WARNING: {in_flight} suggestions in flight exceed search.sampler.n_startup_trials ({startup}): "
                     "TPE then suggests from few finished trials and degrades towards random sampling; lower "
                     "max_concurrent or raise n_startup_trials")
    return lines
