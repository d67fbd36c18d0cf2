"""Reading a sweep file: parsed, expanded, and every trial checked, all problems named at once."""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import (
    ValidationError,
)

from harness.data import DatasetError, dataset_shape
from harness.sweep.expand import (
    SEEDS_KEY,
    grid_points,
    max_total_epochs,
    pack_grid,
    replicate_groups,
    search_candidates,
    search_pack,
    which_trials,
)
from harness.sweep.metric_names import (
    BASELINE_METRIC_PATTERN,
    BASELINE_MODELS,
    VALIDATION_PREFIX,
    is_agreement_metric,
    is_test_metric,
)
from harness.sweep.overrides import (
    resolved_base,
    sweep_with_absolute_paths,
    with_overrides,
)
from harness.sweep.spec import SearchConfig, SweepConfig
from harness.trial.config import ConfigError, TrialConfig
from harness.trial.config_io import format_errors


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[dict]]:
    """Read and fully validate a sweep file; returns the sweep and, for grids, every trial's params.

    Every problem is reported in one ConfigError, by key path, before anything starts: every grid
    trial, every categorical choice and both ends of every searched range as trial configs, every
    objective against the sweep's selection, and every metric name against what those trials will
    report. Every path in the returned sweep and
    trials is absolute (see sweep_with_absolute_paths).
    """
    sweep = _parse_sweep_file(Path(path))
    try:
        sweep = sweep_with_absolute_paths(sweep)
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
    problems += metric_problems(sweep, checked)
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


def _device_problems(sweep: SweepConfig, trials: list[dict]) -> list[str]:
    """A fixed GPU index in a sweep: Ray gives each trial its GPU(s) (resources.gpu) and makes only those
    visible, so cuda:N would pick a GPU Ray did not assign, or one that is not there."""
    problems = []
    for trial in trials:
        device = trial["trial"]["training"]["device"]
        if device.startswith("cuda:"):
            problems.append(f"  training.device: {device!r} in {which_trials(sweep, trial)} is not allowed in a "
                            "sweep: Ray assigns each trial its GPU (resources.gpu); use cuda or auto (or cpu)")
        elif device == "cuda" and not sweep.resources.gpu:
            problems.append(f"  training.device: 'cuda' in {which_trials(sweep, trial)} needs resources.gpu > 0: "
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


def metric_problems(sweep: SweepConfig, trials: list[dict]) -> list[str]:
    """Objectives the sweep may not select on, and objectives the given trials will never report."""
    problems = []
    for field, metric in objectives(sweep):
        problem = objective_problem(sweep, field, metric)
        if problem:
            problems.append(f"  {field}: {problem}")
        for trial in trials:
            problem = metric_problem(metric, trial["trial"])
            if problem:
                problems.append(f"  {field}: {metric!r} is never reported by {which_trials(sweep, trial)}: {problem}")
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

    Mirrors harness.trial.evaluation.evaluate and harness.trial.metrics.clustering_metrics: val/ metrics need
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
