"""Everything mfcbench reads that an older mfcbench wrote, made current in one place.

Run folders, recorded sweep trials, pickled searchers and Tune experiments outlive the code that
wrote them, and `--resume` and `mfcbench report` must read them as that code meant them. Each
change of a written format adds one entry below, oldest first, and nothing elsewhere special-cases
old files:

  1. configs written before dataset.validation_fraction trained on the whole training set,
     before model.data_init_scale at unit scale, before training.precision in fp32
     (LEGACY_RUN_DEFAULTS, with_legacy_run_defaults);
  2. a recorded trial with training.epochs_per_step unset comes from a search started before the
     default depended on the data: 10 epochs per step (with_legacy_defaults);
  3. modules moved into packages (harness.trial, harness.sweep, harness.sweep.tune): Tune's
     tuner.pkl and a pickled searcher name the old modules, which resolve to the new ones
     (LEGACY_MODULES, install_legacy_modules, called before a Tune experiment is restored);
  4. a searcher pickled before suggestions were recorded resolved, or before packing, and its saved
     state before lost trials or finished seeds were kept (upgrade_searcher, upgrade_searcher_state);
  5. configs written before model.prior_init: VaDE's GMM init for vade, appendix D.4's for mfcvae,
     whatever its facets (with_legacy_run_defaults).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

# What a written config (a run's config.yaml, a recorded sweep trial, a pickled searcher's base) means
# by a key it lacks, where that differs from today's default or the key is newer than the config:
# runs written before dataset.validation_fraction trained on the whole training set, before
# model.data_init_scale at unit scale, before training.precision in fp32.
# harness.trial.config fills them in when it reads such a config; reports fill them in before comparing
# configs, so old and new seeds of one configuration stay one unit.
LEGACY_RUN_DEFAULTS = {("dataset", "validation_fraction"): 0.0, ("model", "data_init_scale"): 1.0,
                       ("training", "precision"): "fp32"}


def with_legacy_run_defaults(data: dict) -> dict:
    """`data` (a trial config as a mapping) with the LEGACY_RUN_DEFAULTS keys it lacks filled in, in place,
    and model.prior_init as the code before it meant it: gmm for vade, means for mfcvae of any facets,
    None for the baselines."""
    for (section, key), value in LEGACY_RUN_DEFAULTS.items():
        if isinstance(data.get(section, {}), dict):
            data.setdefault(section, {}).setdefault(key, value)
    model = data.get("model")
    if isinstance(model, dict):  # baselines: None, as today's configs write it
        model.setdefault("prior_init", {"mfcvae": "means", "vade": "gmm"}.get(model.get("name", "mfcvae")))
    return data


LEGACY_EPOCHS_PER_STEP = 10  # what an unset training.epochs_per_step meant in configs written before it depended on the data


def with_legacy_defaults(data: dict) -> dict:
    """A written trial config (a run's config.yaml, a sweep's recorded trial) with the keys it lacks
    set as the code that wrote it meant them (LEGACY_RUN_DEFAULTS), not to today's defaults. Every
    config written since a key existed holds it (configs are written fully resolved). A recorded
    trial with training.epochs_per_step unset comes from a search started before the default
    depended on the data (new searches record it resolved): it keeps 10 epochs per step."""
    with_legacy_run_defaults(data)
    training, model = data.get("training"), data.get("model") or {}
    if isinstance(training, dict) and training.get("epochs_per_step", 0) is None:
        trains = model.get("name", "mfcvae") in ("mfcvae", "vade")
        steps = len(model.get("latent_dims") or [0, 0]) if trains and training.get("progressive", True) else 1
        training["epochs_per_step"] = [LEGACY_EPOCHS_PER_STEP] * steps
    return data


# Each old module, and the modules its names live in now (a name that lost its leading underscore
# when it became shared is found without it).
LEGACY_MODULES = {
    "harness.config": ("harness.trial.config", "harness.trial.config_io", "harness.compat"),
    "harness.trainer": ("harness.trial.single", "harness.trial.errors", "harness.trial.evaluation",
                        "harness.trial.schedule", "harness.trial.run", "harness.trial.run_folder", "harness.trial.setup"),
    "harness.packed": ("harness.trial.packed", "harness.trial.errors"),
    "harness.precision": ("harness.trial.precision",),
    "harness.metrics": ("harness.trial.metrics",),
    "harness.trial_device": ("harness.trial.device",),
    "harness.sweep": ("harness.sweep.spec", "harness.sweep.metric_names", "harness.sweep.overrides",
                      "harness.sweep.expand", "harness.sweep.load", "harness.sweep.describe"),
    "harness.sweep_checks": ("harness.sweep.checks", "harness.sweep.lock", "harness.sweep.errors"),
    "harness.tune_runner": ("harness.sweep.tune.driver", "harness.sweep.tune.progress", "harness.sweep.tune.session",
                            "harness.sweep.tune.tracking"),
    "harness.tune_trial": ("harness.sweep.tune.worker", "harness.sweep.tune.protocol"),
    "harness.search": ("harness.sweep.tune.searcher",),
    "harness.preflight": ("harness.sweep.tune.preflight",),
    "harness.layout": ("harness.compat",),
}


def legacy_attribute(old_module: str, name: str):
    """What `old_module.name` (a module of LEGACY_MODULES) is now. AttributeError when it is gone."""
    for new in LEGACY_MODULES[old_module]:
        module = importlib.import_module(new)
        for candidate in (name, name.lstrip("_")):
            if candidate and hasattr(module, candidate):
                return getattr(module, candidate)
    raise AttributeError(f"{old_module}.{name} no longer exists (looked in {', '.join(LEGACY_MODULES[old_module])})")


class _LegacyModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return legacy_attribute(self.__name__, name)


def install_legacy_modules() -> None:
    """Make the old module names importable, resolving their names through legacy_attribute, so that
    un-pickling an experiment or searcher written before the move finds its classes and functions.
    `harness.sweep` and `harness.layout` are modules still; their own __getattr__ does the same."""
    for old in LEGACY_MODULES:
        if old not in sys.modules and importlib.util.find_spec(old) is None:
            sys.modules[old] = _LegacyModule(old)


# What a pickled ReplicatedOptunaSearch means by an attribute it lacks: one pickled before suggestions
# were recorded fully resolved keeps the defaults its first seeds trained with (with_legacy_defaults on
# each suggestion); one pickled before packing trains one seed per trial.
LEGACY_SEARCHER_ATTRIBUTES = {"resolves_defaults": False, "pack": 1}


def upgrade_searcher(attributes: dict) -> dict:
    """A pickled searcher's attributes with those it lacks set as the code that pickled it meant them."""
    for name, value in LEGACY_SEARCHER_ATTRIBUTES.items():
        attributes.setdefault(name, value)
    # One pickled before bucket storage ran in its storage folder: that folder is its location.
    attributes.setdefault("location", str(attributes["experiment_dir"]))
    return attributes


def upgrade_searcher_state(state: dict) -> dict:
    """A searcher's saved bookkeeping (Searcher.save) made current: saved before trials Ray lost were
    kept ("errored": none), before finished seeds were recorded (each suggestion's "finished": none)."""
    state.setdefault("errored", {})
    for outcome in state["suggestions"].values():
        outcome.setdefault("finished", [])
    return state
