"""Dotted keys into a trial config: set one, resolve a sweep's base, make every path absolute."""
from __future__ import annotations

import copy
import os
import re
from typing import Any

from harness.sweep.spec import SweepConfig
from harness.trial.config import ConfigError, TrialConfig
from harness.trial.config_io import drop_replaced_seed_key, read_yaml


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


# A storage given as a URI (s3://, gs://: a bucket, harness.storage) is not a local path: left as written.
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


def sweep_with_absolute_paths(sweep: SweepConfig) -> SweepConfig:
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
# model.prior_init on the model and the facets; model.pretrain_epochs on prior_init and the training epochs.
PER_TRIAL_DEFAULTS = [("training", "epochs_per_step"), ("model", "architecture"), ("model", "decoder_merge"),
                      ("model", "prior_init"), ("model", "pretrain_epochs")]


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
