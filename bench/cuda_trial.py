"""One paper-mnist trial through the trainer on a CUDA GPU: samples/s, evaluation share, fixed costs.

    python bench/cuda_trial.py [--epochs 6] [--data-root DIR]

The paper's MNIST recipe (Table 3: FC ladder, J=2, batch 512, two progressive steps) on
Fashion-MNIST when its IDX files are in DATA_ROOT/FashionMNIST/raw or installed (the same shape as
MNIST), else on MNIST-shaped random images. Each evaluation covers the validation and test splits.
Prints a JSON line per run and the projected time of the full 402-epoch trial and of a 10-seed study
run one trial after another on this GPU (the time packed seeds should cut).
Needs CUDA; on a machine without it, it says so and exits 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.trial.config_io import load_trial_config
from harness.trial.single import run_trial
from train_throughput import dataset_name  # bench/ is on sys.path when a bench script runs

PAPER_EPOCHS = 402  # Table 3: 201 epochs per progressive step, two steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run, split over the two steps")
    parser.add_argument("--every", type=int, default=1, help="evaluate every N epochs (the paper: 1)")
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/cuda_trial.py needs a CUDA GPU; none is visible here", file=sys.stderr)
        return 1
    half = max(1, args.epochs // 2)
    with tempfile.TemporaryDirectory() as tmp:
        name = dataset_name(Path(tmp), args.data_root)
        root = args.data_root if name == "fashion-mnist" else None
        config = load_trial_config("paper-mnist", [
            f"dataset.name={name}", f"dataset.data_root={root if root else 'null'}", "training.device=cuda",
            f"training.epochs_per_step=[{half},{half}]", f"evaluation.every_n_epochs={args.every}",
            "training.fade_in_batches=50"])
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, data {name}, "
              f"{2 * half} epochs, evaluation every {args.every}", flush=True)
        started = time.perf_counter()
        result = run_trial(config, Path(tmp) / "run", log=lambda s: None)
        wall = time.perf_counter() - started
    accuracy = {k: round(v, 3) for k, v in result["final"].items() if k.startswith(("acc/", "val/acc/"))}
    fixed = wall - result["train_time_s"] - result["eval_time_s"]
    per_epoch = (result["train_time_s"] + result["eval_time_s"]) / (2 * half)
    full = fixed + PAPER_EPOCHS * per_epoch  # at this run's evaluation frequency
    print(json.dumps({
        "train_samples_per_s": round(result["samples_per_s"]), "eval_share": round(result["eval_share"], 3),
        "fixed_s (load, prior init, start)": round(fixed, 1), "s_per_epoch incl. eval": round(per_epoch, 3),
        "projected_full_trial_min": round(full / 60, 1), "projected_10_seeds_sequential_min": round(10 * full / 60, 1),
        "final_accuracy": accuracy}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
