"""One seed's run in progress: its config, its run folder, its timing, and what it does after each
evaluation (write, log, report). The single trainer holds one; the packed trainer one per seed."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from harness.data import Dataset
from harness.log_text import clock, significant
from harness.trial.config import TrialConfig
from harness.trial.evaluation import evaluate, finite_or_none
from harness.trial.run_folder import RunFolder, Timing
from harness.trial.schedule import Schedule
from harness.trial.setup import Setup, set_up

Reporter = Callable[[dict, Path], None]  # (metrics of one evaluation, run folder with checkpoint.pt)
Snapshot = Callable[[], dict]


class SeedRun:
    def __init__(self, config: TrialConfig, folder: RunFolder, reporter: Optional[Reporter] = None,
                 log: Callable[[str], None] = print):
        self.config, self.folder, self.reporter, self.log = config, folder, reporter, log
        self.timing = Timing()
        self.likelihood: Optional[str] = None
        self.resumed_at_epoch: Optional[int] = None

    def set_up(self, data: Optional[Dataset] = None) -> Setup:
        setup = set_up(self.config, self.folder.name, self.log, data)
        self.likelihood = setup.likelihood
        return setup

    def record_evaluation(self, model, data: Dataset, schedule: Schedule, epoch: int, step: int, train_loss: float,
                          eta_s: float, snapshot: Snapshot) -> dict:
        """Evaluate `model` after 0-based `epoch`, write its line of metrics.jsonl, assignments.npz and
        checkpoint.pt, log it and report it. `snapshot()` gives the checkpoint's model and optimizer
        state_dicts and RNG states (`torch_rng`, `data_rng`, and `cuda_rng` where CUDA exists), and
        under fp16 the GradScaler's state (`grad_scaler`), taken after the evaluation. A packed trial
        calls it per seed with that seed's sliced state."""
        t = time.time()
        s, _ = schedule.step_of(epoch)
        metrics = {"epoch": epoch + 1, "step": step, "progressive_step": s,
                   "alphas": [float(a) for a in model.alphas.tolist()], "train_loss": train_loss}
        found, assignments = evaluate(model, data, self.config.evaluation.batch_size, self.config.training.seed)
        metrics = {k: finite_or_none(v) for k, v in {**metrics, **found}.items()}
        self.timing.eval_time += time.time() - t
        saved = snapshot()
        checkpoint = {"model": saved["model"], "optimizer": saved["optimizer"], "epoch": epoch + 1,
                      "step": step, "torch_rng": saved["torch_rng"], "data_rng": saved["data_rng"],
                      "timing": self.timing.as_dict(), "config": self.config.model_dump(mode="json")}
        for optional in ("cuda_rng", "grad_scaler"):
            if optional in saved:
                checkpoint[optional] = saved[optional]
        # metrics.jsonl and assignments.npz first, then the checkpoint: a kill in between leaves an
        # evaluation after the checkpoint, which a resume cuts back (or writes again); the reverse
        # order would lose one, and a run killed right after its last checkpoint would keep the
        # assignments of the evaluation before it.
        self.folder.record(metrics)
        self.folder.write_assignments(assignments, epoch=epoch + 1)
        self.folder.save_checkpoint(checkpoint)
        self.log(self._summary_line(metrics, eta_s))
        if self.reporter:
            self.reporter(metrics, self.folder.path)
        return metrics

    def record_baseline(self, setup: Setup) -> dict:
        """A baseline (k-means, GMM) fits in one go: its only evaluation, as epoch 0."""
        t = time.time()
        setup.model.fit(setup.data.x_train, self.config.training.seed)
        self.timing.train_time = time.time() - t
        self.timing.samples = len(setup.data.x_train)
        found, assignments = evaluate(setup.model, setup.data, self.config.evaluation.batch_size,
                                      self.config.training.seed)
        metrics = {"epoch": 0, "step": 0, **found}
        self.folder.record(metrics, append=False)
        self.folder.write_assignments(assignments, epoch=0)
        if self.reporter:
            self.reporter(metrics, self.folder.path)
        return metrics

    def finish(self, status: str, device, started: float, final: dict | None = None, error: str | None = None,
               extra: dict | None = None) -> dict:
        """result.json: completed with the final metrics, or the failure record."""
        return self.folder.write_result(self.config, status, self.timing, device, started, self.likelihood,
                                        self.resumed_at_epoch, final=final, error=error, extra=extra)

    def _summary_line(self, m: dict, eta_s: float) -> str:
        accs = " ".join(f"{k.removeprefix('acc/')}={v:.3f}" for k, v in m.items()
                        if k.startswith("acc/") and v is not None)
        rate = self.timing.samples / max(self.timing.train_time, 1e-9)
        rounded = lambda v: v if v is None else round(v, 2)  # noqa: E731
        faded = any(a != 1 for a in m["alphas"])  # then the all-facets ELBO counts facets not yet trained
        elbos = ", ".join(f"{split} elbo {rounded(m[key])}" + (
                              f" (all facets on; {rounded(m[key + '/training_alphas'])} at training alphas)"
                              if faded and key + "/training_alphas" in m else "")
                          for split, key in (("test", "elbo"), ("val", "val/elbo")) if key in m)
        return (f"epoch {m['epoch']}/{self.config.training.total_epochs} step {m['progressive_step']} "
                f"alphas [{', '.join(significant(a) for a in m['alphas'])}] | {elbos} | {accs} | "
                f"{rate:,.0f} samples/s | eta {clock(eta_s)}")
