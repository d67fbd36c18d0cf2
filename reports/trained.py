"""Rebuilding a trained model from a run folder (config.yaml + checkpoint.pt) for evaluation-only use.

Uses the model zoo and the data loaders, never the trainer.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import yaml

from harness.data import Dataset, load_dataset
from models import ModelConfig, build_model


@lru_cache(maxsize=4)
def dataset_for(name: str, data_root: str | None, split_seed: int) -> Dataset:
    return load_dataset(name, data_root, False, split_seed)


def load_trained(run_dir: str | Path):
    """(model in eval mode on the CPU, its dataset) or None for baselines and runs without a checkpoint."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    if config["model"]["name"] not in ("mfcvae", "vade") or not (run_dir / "checkpoint.pt").exists():
        return None
    data = dataset_for(config["dataset"]["name"], config["dataset"].get("data_root"),
                       config["dataset"].get("split_seed", 0))
    model = build_model(ModelConfig.model_validate(config["model"]), data.image_shape, data.likelihood)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)
    return model.eval(), data
