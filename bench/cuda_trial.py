"""One paper-mnist trial through the trainer on a CUDA GPU: samples/s, evaluation share, fixed costs.

    python bench/cuda_trial.py [--epochs 6] [--data-root DIR]
    python bench/cuda_trial.py --seeds 10 --epochs 4    # 10 seeds packed into one trial (training.seeds)

The paper's MNIST recipe (Table 3: FC ladder, J=2, batch 512, two progressive steps) on
Fashion-MNIST when its IDX files are in DATA_ROOT/FashionMNIST/raw or installed (the same shape as
MNIST), else on MNIST-shaped random images. Each evaluation covers the validation and test splits.
Prints a JSON line per run and the projected time of the full 402-epoch trial and of a 10-seed study
on this GPU: one trial after another, or packed S at a time with --seeds S.
Needs CUDA; on a machine without it, it says so and exits 1 (--cpu-smoke runs on the CPU, to test this
script where no GPU is, with numbers that mean nothing).
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
from harness.trial.packed import run_packed
from harness.trial.single import run_trial
from train_throughput import dataset_name  # bench/ is on sys.path when a bench script runs

PAPER_EPOCHS = 402  # Table 3: 201 epochs per progressive step, two steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run, split over the two steps")
    parser.add_argument("--every", type=int, default=1, help="evaluate every N epochs (the paper: 1)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=1, help="seeds packed into the trial (1: an unpacked trial)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run on the CPU: tests the script, not the GPU")
    args = parser.parse_args()
    if args.seeds < 1 or args.epochs < 1 or args.every < 1:
        parser.error("--seeds, --epochs and --every must be at least 1")
    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench/cuda_trial.py needs a CUDA GPU; none is visible here (--cpu-smoke tests it on the CPU)",
              file=sys.stderr)
        return 1
    half = max(1, args.epochs // 2)
    with tempfile.TemporaryDirectory() as tmp:
        name = dataset_name(Path(tmp), args.data_root)
        root = args.data_root if name == "fashion-mnist" else None
        seeds = [f"training.seeds=[{','.join(str(s) for s in range(args.seeds))}]"] if args.seeds > 1 else []
        config = load_trial_config("paper-mnist", [
            f"dataset.name={name}", f"dataset.data_root={root if root else 'null'}", f"training.device={device}",
            f"training.epochs_per_step=[{half},{half}]", f"evaluation.every_n_epochs={args.every}",
            "training.fade_in_batches=50", *seeds])
        where = torch.cuda.get_device_name() if device == "cuda" else "CPU smoke run"
        print(f"{where}, torch {torch.__version__}, data {name}, {2 * half} epochs, evaluation every {args.every}, "
              f"{args.seeds} seed(s){' packed' if args.seeds > 1 else ''}", flush=True)
        started = time.perf_counter()
        if args.seeds > 1:
            results = list(run_packed(config, Path(tmp) / "run", log=lambda s: None).values())
        else:
            results = [run_trial(config, Path(tmp) / "run", log=lambda s: None)]
        wall = time.perf_counter() - started
    first = results[0]  # a pack's seeds share its training and evaluation time
    accuracy = {k: round(sum(r["final"][k] for r in results) / len(results), 3)
                for k in first["final"] if k.startswith(("acc/", "val/acc/"))}
    fixed = wall - first["train_time_s"] - first["eval_time_s"]
    per_epoch = (first["train_time_s"] + first["eval_time_s"]) / (2 * half)
    full = fixed + PAPER_EPOCHS * per_epoch  # at this run's evaluation frequency
    trials_for_10 = -(-10 // args.seeds)
    print(json.dumps({
        "seeds_in_trial": args.seeds, "completed_seeds": sum(r["status"] == "completed" for r in results),
        "train_samples_per_s (all seeds)": round(sum(r["samples_per_s"] for r in results)),
        "eval_share": round(first["eval_share"], 3),
        "fixed_s (load, prior init, start)": round(fixed, 1), "s_per_epoch incl. eval": round(per_epoch, 3),
        "projected_full_trial_min": round(full / 60, 1),
        f"projected_10_seeds_min ({trials_for_10} trial(s) one after another)": round(trials_for_10 * full / 60, 1),
        "final_accuracy (mean over seeds)": accuracy}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
