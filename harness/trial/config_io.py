"""Trial configs as files and command lines: read (a YAML file or a preset), overridden (`--set`),
validated with every problem named by key, written, and compared (what a resume may change)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from harness.compat import with_legacy_defaults
from harness.paths import file_problem
from harness.trial.config import PRESETS_DIR, ConfigError, TrialConfig


def format_errors(error: ValidationError, prefix: str = "", indent: str = "  ") -> str:
    """One line per problem: `key.path: message (got value)`."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not loc:  # a check across sections: its message names the keys, one problem per line
            lines += [indent + prefix + line for line in message.splitlines()]
            continue
        path = prefix + loc
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


def drop_replaced_seed_key(data: dict, dotted: str, overridden: set[str]) -> None:
    """An override of training.seeds replaces the training.seed of the file or base it is applied
    to (every written config.yaml and resolved sweep base holds one), and the other way round. Both
    given by the same overrides (`overridden`: the keys they set), or both in one file, stay an error."""
    other = {"training.seeds": "seed", "training.seed": "seeds"}.get(dotted)
    if other and f"training.{other}" not in overridden and isinstance(data.get("training"), dict):
        data["training"].pop(other, None)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    overridden: set[str] = set()
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
        drop_replaced_seed_key(data, ".".join(path), overridden)
        overridden.add(".".join(path))
    return data


def read_yaml(source: str | Path) -> dict:
    """A YAML mapping from a file path, or from a preset name such as `paper-mnist`."""
    path = Path(source)
    if not path.exists() and (PRESETS_DIR / f"{source}.yaml").exists():
        path = PRESETS_DIR / f"{source}.yaml"
    if not path.exists():
        presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise ConfigError(f"config {str(source)!r}: no such file or preset (presets: {presets})")
    if problem := file_problem(path, "config"):
        raise ConfigError(problem)
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




def read_run_config(run: str | Path) -> TrialConfig:
    """The config a run folder (or its config.yaml) was trained with (with_legacy_defaults)."""
    path = Path(run)
    if path.is_dir():
        path = path / "config.yaml"
    data = with_legacy_defaults(read_yaml(path))
    return validate(TrialConfig, data, f"config of the run in {path.parent}")


def dump(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# Keys a resumed run may change: where the data lies and what the trial runs on, nothing the
# trained state or the record of evaluations depends on.
RESUME_SAFE_KEYS = ("dataset.data_root", "dataset.download", "training.device", "training.threads",
                    "evaluation.batch_size")


def flat(data: dict, prefix: str = "") -> dict[str, Any]:
    """The nested mapping as one level of dotted keys (`model.latent_dims`)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def differences(old: BaseModel, new: BaseModel) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old value, new value) for every key whose value differs."""
    a, b = flat(old.model_dump(mode="json")), flat(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def resume_config(recorded: TrialConfig, requested: TrialConfig) -> tuple[TrialConfig, dict[str, tuple[Any, Any]]]:
    """What a run resumes with: its recorded config with the RESUME_SAFE_KEYS values of `requested`
    (where the data lies, the device, threads), and the other differences of `requested` from the
    recorded config (key -> (recorded, requested)), which a resume must not apply: the command line
    refuses them, a sweep's trial keeps the run's own values and says so."""
    data, now = recorded.model_dump(mode="json"), requested.model_dump(mode="json")
    for key in RESUME_SAFE_KEYS:
        section, name = key.split(".")
        data[section][name] = now[section][name]
    config = TrialConfig.model_validate(data)
    return config, differences(config, requested)
