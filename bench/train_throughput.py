"""Samples/s of an MFCVAE FC-ladder epoch (Table 4 sizes, batch 512) on MNIST-shaped data (60k x 784):
through the trainer, and through a minimal hand-written PyTorch loop of the same model; their ratio
(target >= 0.9; against the faster of two bare runs, one before and one after) and the share of epoch time the trainer spends in evaluation.

    .venv/bin/python bench/train_throughput.py [--epochs 2] [--threads 2]

Uses Fashion-MNIST when installed (same shape as MNIST), else random images written to an npz.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.config import load_trial_config
from harness.data import load_dataset
from harness.data.catalog import fashion_mnist_folders, find_idx_files
from harness.trainer import run_trial
from models import build_model


def dataset_name(tmp: Path, data_root: Path | None = None) -> str:
    """fashion-mnist when its IDX files are installed or in DATA_ROOT (the same shape as MNIST), else
    MNIST-shaped random images written to an npz in `tmp`."""
    if find_idx_files(fashion_mnist_folders(data_root)) is not None:
        return "fashion-mnist"
    rng = np.random.default_rng(0)
    np.savez(tmp / "mnist_shaped.npz", x=rng.integers(0, 256, (70000, 28, 28), dtype=np.uint8),
             x_test=rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8))
    return f"npz:{tmp / 'mnist_shaped.npz'}"


def bare_loop(config, data, epochs: int) -> float:
    """The same model and optimiser, no schedule, no evaluation, no checkpoints."""
    torch.manual_seed(0)
    model = build_model(config.model, data.image_shape, data.likelihood)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.training.lr)
    x_all = data.x_train
    start = time.perf_counter()
    for _ in range(epochs):
        for index in torch.randperm(len(x_all)).split(config.training.batch_size):
            loss = -model.loss_terms(x_all[index])["elbo"].mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return epochs * len(x_all) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Both loops skip torch.distributions' argument checks (the trainer does so itself).
    torch.distributions.Distribution.set_default_validate_args(False)
    with tempfile.TemporaryDirectory() as tmp:
        name = dataset_name(Path(tmp))
        config = load_trial_config("paper-mnist", [
            f"dataset.name={name}", "dataset.data_root=null", "training.progressive=false",
            f"training.epochs_per_step=[{args.epochs}]", f"training.threads={args.threads}", "training.device=cpu"])
        data = load_dataset(name)
        print(f"data: {name}, {len(data.x_train)} x {data.x_train[0].numel()}, batch {config.training.batch_size}, "
              f"{args.threads} threads, {args.epochs} epochs each")
        bare_first = bare_loop(config, data, args.epochs)
        result = run_trial(config, Path(tmp) / "run", log=lambda s: None)
        bare_again = bare_loop(config, data, args.epochs)  # bare, trainer, bare: warm-up shows as a gap
    bare = max(bare_first, bare_again)
    trainer = result["samples_per_s"]
    print(json.dumps({
        "bare_loop_samples_per_s": [round(bare_first), round(bare_again)], "trainer_samples_per_s": round(trainer),
        "trainer_over_bare": round(trainer / bare, 3),
        "eval_share_of_epoch_time": round(result["eval_share"], 3),
        "prior_init_and_load_s": round(result["wall_time_s"] - result["train_time_s"] - result["eval_time_s"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
