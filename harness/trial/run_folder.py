"""A run folder: every file one seed's run writes, written in one place for the single and the
packed trainer alike.

  config.yaml      the fully resolved trial config
  metrics.jsonl    one line per evaluation (no timings, so a CPU trial's file is a function of its seed)
  checkpoint.pt    last evaluation's state; `torch.load(path, weights_only=True)` reads it
  assignments.npz  last evaluation's argmax_c q(c_j | x) of every validation and test image, per facet
                   (`val_facet<j>`, `test_facet<j>`, `epoch`); harness.agreement reads it
  tensorboard/     the evaluations as TensorBoard scalars
  result.json      final metrics and provenance, or the failure record
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from harness.files import write_json_atomic, write_npz_atomic
from harness.layout import ASSIGNMENTS_FILE
from harness.trial.config import TrialConfig
from harness.trial.config_io import dump
from harness.trial.errors import TrialFailed

CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "step", "torch_rng", "data_rng", "timing")


@dataclass
class Timing:
    """Where a run's time went; checkpoints carry it, so a resumed run's figures cover all its epochs."""

    train_time: float = 0.0
    eval_time: float = 0.0
    samples: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def source_commit() -> Optional[str]:
    """The git commit of the mfcbench checkout this code runs from, "+dirty" appended when tracked
    files differ from it; None where the code is not a git checkout (an installed wheel)."""
    root = str(Path(__file__).resolve().parents[2])
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return None
        changed = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if changed else "")


def provenance(device) -> dict:
    import sklearn

    from harness import __version__

    return {
        "host": socket.gethostname(), "pid": os.getpid(), "device": str(device), "commit": source_commit(),
        "versions": {"mfcbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__},
        "torch_threads": torch.get_num_threads(),
    }


def read_metrics(path: Path) -> tuple[list[str], bool]:
    """(the JSON lines of metrics.jsonl, whether a half-written last line was dropped).

    A kill mid-write leaves the last line cut short: it is dropped. A bad line before the last
    is not damage a kill leaves, so it raises ValueError naming the line.
    """
    if not path.exists():
        return [], False
    lines = path.read_text().splitlines()
    kept, torn = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                torn = True
                continue
            raise ValueError(f"{path.name} line {number} of {len(lines)} is not valid JSON: {line[:80]!r}") from None
        kept.append(line)
    return kept, torn


class RunFolder:
    """Writes (and, to resume, reads) the files of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.result_path = self.path / "result.json"
        self.assignments_path = self.path / ASSIGNMENTS_FILE
        self._tensorboard = None

    @property
    def name(self) -> str:
        return self.path.name

    def start(self, config: TrialConfig) -> None:
        """The folder and its config.yaml."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dump(config))

    # evaluations -------------------------------------------------------------------------------
    def restart_metrics(self, lines: list[str] = ()) -> None:
        """metrics.jsonl from scratch, or cut back to the lines a resume keeps."""
        if lines:
            self.metrics_path.write_text("".join(line + "\n" for line in lines))
        else:
            self.metrics_path.unlink(missing_ok=True)

    def last_metrics(self) -> dict:
        return json.loads(self.metrics_path.read_text().splitlines()[-1])

    def record(self, metrics: dict, append: bool = True) -> None:
        """One evaluation: a line of metrics.jsonl and TensorBoard scalars."""
        with self.metrics_path.open("a" if append else "w") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._tensorboard is None:
            self._tensorboard = _tensorboard_writer(self.path, purge_step=metrics["epoch"])
        for key, value in metrics.items():
            if key == "alphas":
                for j, alpha in enumerate(value, start=1):
                    self._tensorboard.add_scalar(f"alpha/facet{j}", alpha, metrics["epoch"])
            elif isinstance(value, (int, float)) and key not in ("epoch", "step"):
                self._tensorboard.add_scalar(key, value, metrics["epoch"])
        self._tensorboard.flush()

    def write_assignments(self, assignments: dict[str, np.ndarray], epoch: int) -> None:
        """assignments.npz, replaced whole (a kill mid-write leaves the previous one)."""
        write_npz_atomic(self.assignments_path, epoch=np.int64(epoch), **assignments)

    # checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict) -> None:
        tmp = self.checkpoint_path.with_suffix(".pt.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> dict:
        """checkpoint.pt, checked to be an mfcbench checkpoint (RNG states stay CPU tensors). Writes nothing."""
        name = self.checkpoint_path.name
        if not self.checkpoint_path.exists():
            raise TrialFailed(f"no {name} (the run stopped before its first evaluation)")
        try:
            checkpoint = torch.load(self.checkpoint_path, weights_only=True, map_location="cpu")
        except Exception as error:
            raise TrialFailed(f"{name} is unreadable ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'empty or truncated'})") from None
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
        if missing:
            raise TrialFailed(f"{name} lacks {', '.join(missing)}: not an mfcbench checkpoint")
        return checkpoint

    # the end -----------------------------------------------------------------------------------
    def write_result(self, config: TrialConfig, status: str, timing: Timing, device, started: float,
                     likelihood: Optional[str], resumed_at_epoch: Optional[int] = None, final: dict | None = None,
                     error: str | None = None, extra: dict | None = None) -> dict:
        """result.json, completed or failed; `extra` keys (a packed seed's `packed_with`) are added at the end."""
        wall = time.time() - started
        result = {
            "status": status, "error": error, "final": final,
            "started_at": datetime.fromtimestamp(started).isoformat(timespec="milliseconds"),
            "finished_at": datetime.now().isoformat(timespec="milliseconds"),
            "resumed_at_epoch": resumed_at_epoch, "likelihood": likelihood,
            "config": config.model_dump(mode="json"), "seed": config.training.seed,
            "wall_time_s": wall, "train_time_s": timing.train_time, "eval_time_s": timing.eval_time,
            "samples_per_s": timing.samples / timing.train_time if timing.train_time else None,
            "eval_share": timing.eval_time / max(timing.train_time + timing.eval_time, 1e-9),
            "argv": sys.argv, **provenance(device), "precision": config.training.precision, **(extra or {}),
        }
        write_json_atomic(self.result_path, result)
        return result

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _tensorboard_writer(run_dir: Path, purge_step: int):
    """TensorBoard event files in the run folder (`tensorboard --logdir runs/`); a resumed run's
    writer purges events at or after its first new epoch, so a replayed epoch is shown once."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
