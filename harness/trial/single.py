"""One trial: one model, one dataset, one seed; trained, evaluated every n epochs, checkpointed into
its run folder (harness.trial.run_folder lists the files)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from harness.data import batches
from harness.trial.config import TrialConfig
from harness.trial.errors import (
    ResumeFailed,
    TrialFailed,
    failure_message,
    non_finite_message,
)
from harness.trial.precision import refuse_before_writing
from harness.trial.run import Reporter, SeedRun
from harness.trial.run_folder import RunFolder, Timing, read_metrics
from harness.trial.setup import Setup
from models import ClusteringBaseline


@dataclass
class Restored:
    epoch: int
    step: int
    metrics_lines: list[str]
    torn_line_dropped: bool


def start_trial(config: TrialConfig) -> float:
    """What every trainer does first: the start time, after refusing fp16 on a CPU before any file
    is written. Argument checks in torch.distributions cost time per batch and turn a NaN into an
    exception mid-epoch; non-finite losses are caught once per epoch instead."""
    torch.distributions.Distribution.set_default_validate_args(False)
    refuse_before_writing(config.training.precision, config.training.device)
    return time.time()


class Trial:
    """Runs one trial into `run_dir`; `resume=True` continues from its checkpoint.pt.

    A resume reads and checks everything it needs (data, model, checkpoint, metrics) before it
    writes anything, so a resume that fails leaves the run folder byte-identical. A fresh trial
    that fails anywhere leaves a failure record in result.json.
    """

    def __init__(self, config: TrialConfig, run_dir: str | Path, resume: bool = False,
                 reporter: Optional[Reporter] = None, log: Callable[[str], None] = print, progress: bool = False):
        if config.training.seeds is not None:
            raise ValueError(f"training.seeds {config.training.seeds} trains packed: use "
                             "harness.trial.packed.run_packed (one run folder per seed), or TrialConfig.for_seed "
                             "for one of them")
        self.config, self.resume, self.progress = config, resume, progress
        self.folder = RunFolder(run_dir)
        self.run_ = SeedRun(config, self.folder, reporter, log)

    def run(self) -> dict:
        started = start_trial(self.config)
        setup = restored = None
        if self.resume:
            try:
                setup = self.run_.set_up()
                restored = self._restore(setup)
            except Exception as error:
                raise ResumeFailed(
                    f"cannot resume {self.folder.path}: {failure_message(error)}\nNothing in {self.folder.path} was "
                    f"changed. To start over: mfcbench train --config {self.folder.config_path} --out NEW_FOLDER"
                ) from error
        self.folder.start(self.config)
        try:
            if setup is None:
                setup = self.run_.set_up()
            if isinstance(setup.model, ClusteringBaseline):
                final = self.run_.record_baseline(setup)
            else:
                final = self._train(setup, restored)
        except Exception as error:  # anywhere: data, model, device, first batch: a failure record stays
            message = failure_message(error)
            self.run_.finish("failed", setup.device if setup else None, started, error=message)
            if isinstance(error, TrialFailed):
                raise
            raise TrialFailed(message) from error
        finally:
            self.folder.close()
        return self.run_.finish("completed", setup.device, started, final=final)

    def _restore(self, setup: Setup) -> Restored:
        """Load checkpoint.pt into the model, optimiser and RNGs; read metrics.jsonl. Writes nothing."""
        if not setup.trains:
            raise TrialFailed(f"{self.config.model.name} runs in one go and keeps no checkpoint")
        ckpt = self.folder.load_checkpoint()
        try:
            setup.model.load_state_dict(ckpt["model"])
            setup.optimiser.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()
            raise TrialFailed(f"{self.folder.checkpoint_path.name} does not fit the model of config.yaml "
                              f"({' '.join(first[:3])[:400]}); a run whose layers an older mfcbench built "
                              "resumes with that version (result.json records its commit)") from None
        total = self.config.training.total_epochs
        if not 0 < ckpt["epoch"] <= total:
            raise TrialFailed(f"{self.folder.checkpoint_path.name} is at epoch {ckpt['epoch']}, "
                              f"outside the run's 1..{total}")
        lines, torn = read_metrics(self.folder.metrics_path)
        kept = [line for line in lines if json.loads(line).get("epoch", 0) <= ckpt["epoch"]]
        torch.set_rng_state(ckpt["torch_rng"])
        setup.generator.set_state(ckpt["data_rng"])
        setup.precision.load_state_dict(ckpt.get("grad_scaler"))  # fp16 only
        if "cuda_rng" in ckpt and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(ckpt["cuda_rng"]))
        self.run_.timing = Timing(**ckpt["timing"])
        self.run_.resumed_at_epoch = ckpt["epoch"]
        return Restored(ckpt["epoch"], ckpt["step"], kept, torn)

    def _train(self, setup: Setup, restored: Optional[Restored]) -> dict:
        tc, timing = self.config.training, self.run_.timing
        model, data, optimiser, generator, schedule, precision = (setup.model, setup.data, setup.optimiser,
                                                                  setup.generator, setup.schedule, setup.precision)
        n_train = len(data.x_train)
        start_epoch, step, last = 0, 0, None
        if restored is not None:
            start_epoch, step = restored.epoch, restored.step
            self.folder.restart_metrics(restored.metrics_lines)
            dropped = " (dropped a half-written last line of metrics.jsonl)" if restored.torn_line_dropped else ""
            self.run_.log(f"resumed from {self.folder.checkpoint_path} at epoch {start_epoch}{dropped}")
        else:
            self.folder.restart_metrics()
            setup.prepare(tc.seed, tc.batch_size, tc.lr, log=self.run_.log)
        model.train()
        total = tc.total_epochs
        bar = progress_bar(total * schedule.batches_per_epoch, start_epoch * schedule.batches_per_epoch,
                           self.folder.name, self.progress)
        loop_started = time.time()
        for epoch in range(start_epoch, total):
            t = time.time()
            epoch_loss = torch.zeros((), device=data.x_train.device)
            current = None
            for b, x in enumerate(batches(data.x_train, tc.batch_size, generator)):
                alphas = schedule.alphas(epoch, b)
                if alphas != current:
                    model.alphas.copy_(torch.tensor(alphas))
                    current = alphas
                with precision.autocast():
                    loss = -model.loss_terms(x)["elbo"].mean()
                precision.step(loss, optimiser)
                epoch_loss += loss.detach()
                step += 1
                bar.update()
            timing.train_time += time.time() - t
            timing.samples += n_train
            # One host sync per epoch, not per batch: a GPU keeps its queue full.
            if not torch.isfinite(epoch_loss):
                bar.close()
                raise TrialFailed(non_finite_message(epoch, step))
            if (epoch + 1) % self.config.evaluation.every_n_epochs == 0 or epoch + 1 == total:
                eta = (time.time() - loop_started) / (epoch + 1 - start_epoch) * (total - epoch - 1)
                last = self.run_.record_evaluation(model, data, schedule, epoch, step,
                                                   epoch_loss.item() / schedule.batches_per_epoch, eta,
                                                   lambda: _snapshot(setup))
        bar.close()
        if last is None:  # resumed after the final evaluation
            last = self.folder.last_metrics()
        return last


def _snapshot(setup: Setup) -> dict:
    """A single run's checkpoint pieces: model and optimiser state, RNG states, the fp16 scaler."""
    saved = {"model": setup.model.state_dict(), "optimizer": setup.optimiser.state_dict(),
             "torch_rng": torch.get_rng_state(), "data_rng": setup.generator.get_state()}
    if torch.cuda.is_available():
        saved["cuda_rng"] = torch.cuda.get_rng_state_all()
    if setup.precision.scaler is not None:
        saved["grad_scaler"] = setup.precision.state_dict()
    return saved


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """A per-batch bar with an ETA on stderr; off unless asked for, and off when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="batch", desc=desc, dynamic_ncols=True,
                disable=None if enabled else True, leave=False)


def run_trial(config: TrialConfig, run_dir: str | Path, resume: bool = False, reporter: Optional[Reporter] = None,
              log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Train and evaluate one trial; returns the contents of result.json."""
    return Trial(config, run_dir, resume, reporter, log, progress).run()
