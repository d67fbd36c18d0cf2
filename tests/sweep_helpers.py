"""What the sweep tests share: a tiny trial config, a sweep file writer, and readers of a finished
experiment's runs (imported by test modules, as ray_helpers is; never a test module importing another)."""
import json
from pathlib import Path

import yaml

# no pretraining: what the sweep tests check is the harness, and a kill or a report they wait for
# comes as soon as training starts; pretraining has tests of its own
TINY_BASE = {
    "dataset": {"name": "digits"},
    "model": {"latent_dims": [3], "n_clusters": [10], "hidden_sizes": [32], "pretrain_epochs": 0},
    "training": {"epochs_per_step": [2], "batch_size": 256, "threads": 1},
}
LR_SPACE = {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def write_sweep(path: Path, **fields) -> Path:
    """A sweep file named `t` on TINY_BASE, with `fields` (a `base` among them replaces it)."""
    path.write_text(yaml.safe_dump({"name": "t", "base": TINY_BASE, **fields}, sort_keys=False))
    return path


def long_trial_base(epochs: int) -> dict:
    """TINY_BASE made slow enough (256 hidden units, batch 64) that a test can kill it mid-run."""
    return {**TINY_BASE, "model": {**TINY_BASE["model"], "hidden_sizes": [256]},
            "training": {**TINY_BASE["training"], "epochs_per_step": [epochs], "batch_size": 64}}


def trial_runs(experiment: Path) -> list[dict]:
    """Every run of an experiment: its result.json joined with its trial's mfcbench-trial.json."""
    rows = []
    for result in sorted(experiment.glob("trial_*/runs/seed*/result.json")):
        meta = json.loads((result.parents[2] / "mfcbench-trial.json").read_text())
        rows.append({**json.loads(result.read_text()), **meta, "dir": result.parent})
    return rows


def suggested(searcher, trial_id: str) -> dict:
    """{variant, trial, overrides} of the searcher's next suggestion, read as the worker reads it."""
    from harness.sweep.tune.protocol import trial_point

    params = searcher.suggest(trial_id)
    return trial_point({**params, "experiment_dir": searcher.experiment_dir}, (), trial_id)
