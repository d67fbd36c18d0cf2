"""One trial: one model, one dataset, one seed; trained, evaluated every n epochs, checkpointed.

Files in the run folder:
  config.yaml      the fully resolved trial config
  metrics.jsonl    one line per evaluation (no timings, so a CPU trial's file is a function of its seed)
  checkpoint.pt    last evaluation's state; `torch.load(path, weights_only=True)` reads it
  assignments.npz  last evaluation's argmax_c q(c_j | x) of every validation and test image, per facet
                   (`val_facet<j>`, `test_facet<j>`, `epoch`); harness.agreement reads it
  result.json      final metrics and provenance, or the failure record
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from models import ClusteringBaseline, build_model

from .config import TrialConfig, batches_per_epoch, dump
from .data import Dataset, batches, load_dataset
from .files import write_json_atomic, write_npz_atomic
from .layout import ASSIGNMENTS_FILE
from .log_text import clock, significant
from .metrics import clustering_metrics, silhouette
from .precision import Precision, refuse_before_writing

Reporter = Callable[[dict, Path], None]  # (metrics of one evaluation, run folder with checkpoint.pt)
EVAL_SEED_OFFSET = 7919  # evaluation draws its own samples, so evaluating never shifts training


class TrialFailed(RuntimeError):
    """The trial stopped without a result (non-finite loss, bad data); result.json says why."""


@dataclass
class Schedule:
    """Progressive training (appendix D.3): which facets are on, and how far faded in, per batch."""

    n_facets: int
    epochs_per_step: list[int]
    progressive: bool
    fade_in_batches: Optional[int]  # None: half of the batches of the step that loops the facet in
    batches_per_epoch: int

    def step_of(self, epoch: int) -> tuple[int, int]:
        """(progressive step s >= 1, epoch within step from 0) of a 0-based global epoch."""
        if not self.progressive:
            return 1, epoch
        for s, n in enumerate(self.epochs_per_step, start=1):
            if epoch < n:
                return s, epoch
            epoch -= n
        raise ValueError("epoch beyond schedule")

    def alphas(self, epoch: int, batch: int) -> list[float]:
        """alpha_j for facets 1..J, eq. (90)-(92): facets J-s+2..J on, facet J-s+1 fading in, rest off."""
        if not self.progressive:
            return [1.0] * self.n_facets
        s, epoch_in_step = self.step_of(epoch)
        newest = self.n_facets - s  # 0-based index of the facet looped in at step s
        done = epoch_in_step * self.batches_per_epoch + batch + 1
        fade = self.fade_in_batches
        if fade is None:
            fade = max(1, self.epochs_per_step[s - 1] * self.batches_per_epoch // 2)
        ramp = 1.0 if s == 1 or fade == 0 else min(1.0, done / fade)
        return [0.0 if j < newest else ramp if j == newest else 1.0 for j in range(self.n_facets)]


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrialFailed(f"training.device={requested!r} but CUDA is not available here; use auto or cpu")
    return torch.device(requested)


@lru_cache(maxsize=1)
def source_commit() -> Optional[str]:
    """The git commit of the mfcbench checkout this code runs from, "+dirty" appended when tracked
    files differ from it; None where the code is not a git checkout (an installed wheel)."""
    root = str(Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return None
        changed = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if changed else "")


def provenance(device: torch.device) -> dict:
    import sklearn

    from harness import __version__

    return {
        "host": socket.gethostname(), "pid": os.getpid(), "device": str(device), "commit": source_commit(),
        "versions": {"mfcbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__},
        "torch_threads": torch.get_num_threads(),
    }


@dataclass
class SplitEvaluation:
    """One split's evaluation: ELBO terms averaged over its images (none for baselines), q(c_j | x)
    per facet, and the posterior means of z_j (none for baselines)."""

    terms: dict[str, float]
    probs: list[np.ndarray]
    means: Optional[list[np.ndarray]]


@torch.no_grad()
def _evaluate_split(model, x: torch.Tensor, batch_size: int, seed: int) -> SplitEvaluation:
    """ELBO and its terms (all facets active), q(c_j | x) and the posterior means of z_j over `x`.

    Also `elbo/training_alphas`: eq. (89) at the model's current alphas, the objective that
    progressive step s optimises. During a step s < J the all-facets ELBO counts facets that are
    not yet trained (alpha 0) or still fading in, so it sits far below the objective and jumps at
    step boundaries; within a step this is the curve to compare. With every alpha 1 the two are
    the same and it is not recomputed; otherwise it is the same draw's ELBO at the training alphas
    (`MFCVAE.elbo_at`: the decoder runs again, the encoder does not).

    The one-sample ELBO draws from its own generator, so evaluating never shifts training's RNG.
    Evaluation runs in fp32 whatever training.precision is.
    """
    if isinstance(model, ClusteringBaseline):
        return SplitEvaluation({}, [p.numpy() for p in model.cluster_probs(x)], None)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed + EVAL_SEED_OFFSET)
    sums: dict[str, float] = {}
    probs: list[list[torch.Tensor]] = [[] for _ in range(model.n_facets)]
    means: list[list[torch.Tensor]] = [[] for _ in range(model.n_facets)]
    ones = torch.ones_like(model.alphas)
    faded = not torch.equal(model.alphas, ones)
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        terms = model.loss_terms(batch, alphas=ones, generator=generator)
        batch_sums = {"elbo": terms["elbo"].sum(), "log_px": terms["log_px"].sum()}
        training = model.elbo_at(batch, terms, model.alphas) if faded else terms["elbo"]
        batch_sums["elbo/training_alphas"] = training.sum()
        for j, (prior, facet, (mean, _)) in enumerate(zip(model.priors, terms["facets"], terms["params"]), start=1):
            batch_sums[f"kl_z/facet{j}"] = facet.kl_z.sum()
            batch_sums[f"kl_c/facet{j}"] = facet.kl_c.sum()
            probs[j - 1].append(prior.cluster_log_probs(mean).exp().cpu())  # eq. (12) at the posterior mean
            means[j - 1].append(mean.cpu())
        for key, value in batch_sums.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    model.train(was_training)
    return SplitEvaluation({key: value / len(x) for key, value in sums.items()},
                           [torch.cat(p).numpy() for p in probs], [torch.cat(m).numpy() for m in means])


@torch.no_grad()
def evaluate(model, data: Dataset, batch_size: int, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, assignments) of one evaluation.

    metrics: on the test set under their own names (ELBO terms with every facet on, the ELBO at the
    training alphas `elbo/training_alphas`, clustering metrics per facet and factor); on the
    validation set the same prefixed `val/`, plus the label-free `val/silhouette/facet<j>` of the
    posterior means under their own clusters. Baselines have no ELBO and no silhouette;
    without a validation split there are no `val/` metrics.
    assignments: `<split>_facet<j>`, argmax_c q(c_j | x) of each image of that split in stored order.
    """
    metrics: dict = {}
    assignments: dict[str, np.ndarray] = {}
    splits = [("test", "", data.x_test, data.y_test)]
    if len(data.x_val):
        splits.append(("val", "val/", data.x_val, data.y_val))
    for split, prefix, x, y in splits:
        result = _evaluate_split(model, x, batch_size, seed)
        found = dict(result.terms)
        found.update(clustering_metrics(result.probs, {f: v.numpy() for f, v in y.items()}, data.factors))
        for j, p in enumerate(result.probs, start=1):
            assignments[f"{split}_facet{j}"] = p.argmax(axis=1)
            if split == "val" and result.means is not None:
                found[f"silhouette/facet{j}"] = silhouette(result.means[j - 1], assignments[f"{split}_facet{j}"],
                                                           seed + EVAL_SEED_OFFSET)
        metrics.update({prefix + key: value for key, value in found.items()})
    return metrics, assignments


def _finite_or_none(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


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




def _failure_message(error: Exception) -> str:
    """A TrialFailed's own words; anything else with its type, which is often all that says what broke."""
    return str(error) if isinstance(error, TrialFailed) else f"{type(error).__name__}: {error}"


class ResumeFailed(TrialFailed):
    """The run cannot be continued; its folder was left exactly as it was."""


def non_finite_message(epoch: int, step: int) -> str:
    """The failure record of a run whose loss went non-finite in 0-based `epoch`."""
    return (f"non-finite loss in epoch {epoch + 1} (steps up to {step}); "
            "try a lower training.lr or a larger model.prior_variance_init")


@dataclass
class Setup:
    """What a trial trains and evaluates, built before the first file of the run is written."""

    device: torch.device
    data: Dataset
    model: object
    optimiser: Optional[torch.optim.Optimizer] = None
    generator: Optional[torch.Generator] = None  # the data order
    schedule: Optional[Schedule] = None
    precision: Optional[Precision] = None  # autocast and fp16 loss scaling of training steps


@dataclass
class Restored:
    epoch: int
    step: int
    metrics_lines: list[str]
    torn_line_dropped: bool


class Trial:
    """Runs one trial into `run_dir`; `resume=True` continues from its checkpoint.pt.

    A resume reads and checks everything it needs (data, model, checkpoint, metrics) before it
    writes anything, so a resume that fails leaves the run folder byte-identical. A fresh trial
    that fails anywhere leaves a failure record in result.json.
    """

    def __init__(self, config: TrialConfig, run_dir: str | Path, resume: bool = False,
                 reporter: Optional[Reporter] = None, log: Callable[[str], None] = print, progress: bool = False):
        if config.training.seeds is not None:
            raise ValueError(f"training.seeds {config.training.seeds} trains packed: use harness.packed.run_packed "
                             "(one run folder per seed), or TrialConfig.for_seed for one of them")
        self.config, self.run_dir, self.resume = config, Path(run_dir), resume
        self.reporter, self.log, self.progress = reporter, log, progress
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.result_path = self.run_dir / "result.json"
        self.assignments_path = self.run_dir / ASSIGNMENTS_FILE
        self.tensorboard = None

    def run(self) -> dict:
        # Argument checks in torch.distributions cost time per batch and turn a NaN into an
        # exception mid-epoch; non-finite losses are caught once per epoch instead.
        torch.distributions.Distribution.set_default_validate_args(False)
        refuse_before_writing(self.config.training.precision, self.config.training.device)  # fp16 on a CPU
        started = time.time()
        state = {"train_time": 0.0, "eval_time": 0.0, "samples": 0, "likelihood": None}
        setup = restored = None
        if self.resume:
            try:
                setup = self._set_up(state)
                restored = self._restore(setup, state)
            except Exception as error:
                message = _failure_message(error)
                raise ResumeFailed(
                    f"cannot resume {self.run_dir}: {message}\nNothing in {self.run_dir} was changed. To start "
                    f"over: mfcbench train --config {self.run_dir / 'config.yaml'} --out NEW_FOLDER") from error
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump(self.config))
        try:
            if setup is None:
                setup = self._set_up(state)
            if isinstance(setup.model, ClusteringBaseline):
                final = self._run_baseline(setup, state)
            else:
                final = self._run_training(setup, state, restored)
        except Exception as error:  # anywhere: data, model, device, first batch: a failure record stays
            message = _failure_message(error)
            self._write_result("failed", state, setup.device if setup else None, started, error=message)
            if isinstance(error, TrialFailed):
                raise
            raise TrialFailed(message) from error
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        return self._write_result("completed", state, setup.device, started, final=final)

    # ---------------------------------------------------------------------------------------------
    def _set_up(self, state: dict, data: Optional[Dataset] = None) -> Setup:
        """Device, data, model (seeded by training.seed), optimiser, data-order generator, schedule.

        `data` already loaded onto the device is used as it is (harness.packed loads it once for all
        its seeds); loading draws nothing from torch's global RNG, so the model is built from the same
        RNG state either way."""
        cfg, tc = self.config, self.config.training
        if tc.threads:
            torch.set_num_threads(tc.threads)
        device = choose_device(tc.device)
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed % 2 ** 32)
        if data is None:
            data = load_dataset(cfg.dataset.name, cfg.dataset.data_root, cfg.dataset.download,
                                cfg.dataset.split_seed, cfg.dataset.validation_fraction,
                                cfg.dataset.train_images).to(device)
        model = build_model(cfg.model, data.image_shape, data.likelihood)
        self.log(f"trial {self.run_dir.name}: {cfg.model.name}/{cfg.model.architecture} on {data.name} "
                 f"({data.describe()}), seed {tc.seed}, device {device}")
        state["likelihood"] = getattr(getattr(model, "likelihood", None), "name", None)
        if isinstance(model, ClusteringBaseline):
            return Setup(device, data, model)
        model = model.to(device)
        return Setup(device, data, model, torch.optim.Adam(model.parameters(), lr=tc.lr),
                     torch.Generator().manual_seed(tc.seed),  # on the CPU, moved per epoch
                     Schedule(model.n_facets, tc.epochs_per_step, tc.progressive, tc.fade_in_batches,
                              batches_per_epoch(len(data.x_train), tc.batch_size)),
                     Precision(tc.precision, device, tc.device))

    def _restore(self, setup: Setup, state: dict) -> Restored:
        """Load checkpoint.pt into the model, optimiser and RNGs; read metrics.jsonl. Writes nothing."""
        if setup.optimiser is None:
            raise TrialFailed(f"{self.config.model.name} runs in one go and keeps no checkpoint")
        if not self.checkpoint_path.exists():
            raise TrialFailed(f"no {self.checkpoint_path.name} (the run stopped before its first evaluation)")
        try:
            # On the CPU: RNG states must stay CPU tensors; load_state_dict moves weights and
            # optimiser state onto the model's device.
            ckpt = torch.load(self.checkpoint_path, weights_only=True, map_location="cpu")
        except Exception as error:
            raise TrialFailed(f"{self.checkpoint_path.name} is unreadable ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'empty or truncated'})") from None
        missing = [k for k in ("model", "optimizer", "epoch", "step", "torch_rng", "data_rng", "timing")
                   if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise TrialFailed(f"{self.checkpoint_path.name} lacks {', '.join(missing)}: not an mfcbench checkpoint")
        try:
            setup.model.load_state_dict(ckpt["model"])
            setup.optimiser.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()
            raise TrialFailed(f"{self.checkpoint_path.name} does not fit the model of config.yaml "
                              f"({' '.join(first[:3])[:400]}); a run whose layers an older mfcbench built "
                              "resumes with that version (result.json records its commit)") from None
        total = self.config.training.total_epochs
        if not 0 < ckpt["epoch"] <= total:
            raise TrialFailed(f"{self.checkpoint_path.name} is at epoch {ckpt['epoch']}, outside the run's 1..{total}")
        lines, torn = read_metrics(self.metrics_path)
        kept = [line for line in lines if json.loads(line).get("epoch", 0) <= ckpt["epoch"]]
        torch.set_rng_state(ckpt["torch_rng"])
        setup.generator.set_state(ckpt["data_rng"])
        setup.precision.load_state_dict(ckpt.get("grad_scaler"))  # fp16 only
        if "cuda_rng" in ckpt and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(ckpt["cuda_rng"]))
        state.update(ckpt["timing"], resumed_at_epoch=ckpt["epoch"])
        return Restored(ckpt["epoch"], ckpt["step"], kept, torn)

    def _record(self, metrics: dict, append: bool = True) -> None:
        """One evaluation: a line of metrics.jsonl and TensorBoard scalars."""
        with self.metrics_path.open("a" if append else "w") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.tensorboard is None:
            self.tensorboard = _tensorboard_writer(self.run_dir, purge_step=metrics["epoch"])
        for key, value in metrics.items():
            if key == "alphas":
                for j, alpha in enumerate(value, start=1):
                    self.tensorboard.add_scalar(f"alpha/facet{j}", alpha, metrics["epoch"])
            elif isinstance(value, (int, float)) and key not in ("epoch", "step"):
                self.tensorboard.add_scalar(key, value, metrics["epoch"])
        self.tensorboard.flush()

    def _write_assignments(self, assignments: dict[str, np.ndarray], epoch: int) -> None:
        """assignments.npz, replaced whole (a kill mid-write leaves the previous one)."""
        write_npz_atomic(self.assignments_path, epoch=np.int64(epoch), **assignments)

    def _run_baseline(self, setup: Setup, state: dict) -> dict:
        t = time.time()
        setup.model.fit(setup.data.x_train, self.config.training.seed)
        state["train_time"] = time.time() - t
        state["samples"] = len(setup.data.x_train)
        found, assignments = evaluate(setup.model, setup.data, self.config.evaluation.batch_size,
                                      self.config.training.seed)
        metrics = {"epoch": 0, "step": 0, **found}
        self._record(metrics, append=False)
        self._write_assignments(assignments, epoch=0)
        if self.reporter:
            self.reporter(metrics, self.run_dir)
        return metrics

    def _run_training(self, setup: Setup, state: dict, restored: Optional[Restored]) -> dict:
        tc = self.config.training
        model, data, optimiser, generator, schedule, precision = (setup.model, setup.data, setup.optimiser,
                                                                  setup.generator, setup.schedule, setup.precision)
        n_train = len(data.x_train)
        start_epoch, step, last = 0, 0, None
        if restored is not None:
            start_epoch, step = restored.epoch, restored.step
            self.metrics_path.write_text("".join(line + "\n" for line in restored.metrics_lines))
            dropped = " (dropped a half-written last line of metrics.jsonl)" if restored.torn_line_dropped else ""
            self.log(f"resumed from {self.checkpoint_path} at epoch {start_epoch}{dropped}")
        else:
            if self.metrics_path.exists():
                self.metrics_path.unlink()
            model.prepare(data.x_train, tc.seed, tc.batch_size, tc.lr, log=self.log)
        model.train()
        total = tc.total_epochs
        bar = self._progress_bar(total * schedule.batches_per_epoch, start_epoch * schedule.batches_per_epoch)
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
            state["train_time"] += time.time() - t
            state["samples"] += n_train
            # One host sync per epoch, not per batch: a GPU keeps its queue full.
            if not torch.isfinite(epoch_loss):
                bar.close()
                raise TrialFailed(non_finite_message(epoch, step))
            if (epoch + 1) % self.config.evaluation.every_n_epochs == 0 or epoch + 1 == total:
                eta = (time.time() - loop_started) / (epoch + 1 - start_epoch) * (total - epoch - 1)
                last = self._evaluate_and_checkpoint(setup, epoch, step,
                                                     epoch_loss.item() / schedule.batches_per_epoch, state, eta)
        bar.close()
        if last is None:  # resumed after the final evaluation
            last = json.loads(self.metrics_path.read_text().splitlines()[-1])
        return last

    def _progress_bar(self, total: int, initial: int):
        return progress_bar(total, initial, self.run_dir.name, self.progress)

    def _evaluate_and_checkpoint(self, setup: Setup, epoch: int, step: int, train_loss: float, state: dict,
                                 eta_s: float) -> dict:
        model, optimiser, generator = setup.model, setup.optimiser, setup.generator

        def snapshot() -> dict:
            saved = {"model": model.state_dict(), "optimizer": optimiser.state_dict(),
                     "torch_rng": torch.get_rng_state(), "data_rng": generator.get_state()}
            if torch.cuda.is_available():
                saved["cuda_rng"] = torch.cuda.get_rng_state_all()
            if setup.precision.scaler is not None:
                saved["grad_scaler"] = setup.precision.state_dict()
            return saved

        return self.record_evaluation(model, setup.data, setup.schedule, epoch, step, train_loss, state, eta_s,
                                     snapshot)

    def record_evaluation(self, model, data: Dataset, schedule: Schedule, epoch: int, step: int, train_loss: float,
                          state: dict, eta_s: float, snapshot: Callable[[], dict]) -> dict:
        """Evaluate `model` after 0-based `epoch`, write its line of metrics.jsonl, assignments.npz and
        checkpoint.pt, log it and report it. `snapshot()` gives the checkpoint's model and optimizer
        state_dicts and RNG states (`torch_rng`, `data_rng`, and `cuda_rng` where CUDA exists), and
        under fp16 the GradScaler's state (`grad_scaler`), taken after the evaluation. harness.packed
        calls it per seed with that seed's sliced state."""
        t = time.time()
        s, _ = schedule.step_of(epoch)
        metrics = {"epoch": epoch + 1, "step": step, "progressive_step": s,
                   "alphas": [float(a) for a in model.alphas.tolist()], "train_loss": train_loss}
        found, assignments = evaluate(model, data, self.config.evaluation.batch_size, self.config.training.seed)
        metrics = {k: _finite_or_none(v) for k, v in {**metrics, **found}.items()}
        state["eval_time"] += time.time() - t
        timing = {k: state[k] for k in ("train_time", "eval_time", "samples")}
        saved = snapshot()
        ckpt = {"model": saved["model"], "optimizer": saved["optimizer"], "epoch": epoch + 1,
                "step": step, "torch_rng": saved["torch_rng"], "data_rng": saved["data_rng"],
                "timing": timing, "config": self.config.model_dump(mode="json")}
        for optional in ("cuda_rng", "grad_scaler"):
            if optional in saved:
                ckpt[optional] = saved[optional]
        # metrics.jsonl and assignments.npz first, then the checkpoint: a kill in between leaves an
        # evaluation after the checkpoint, which a resume cuts back (or writes again); the reverse
        # order would lose one, and a run killed right after its last checkpoint would keep the
        # assignments of the evaluation before it.
        self._record(metrics)
        self._write_assignments(assignments, epoch=epoch + 1)
        tmp = self.checkpoint_path.with_suffix(".pt.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, self.checkpoint_path)
        self.log(self._summary_line(metrics, state, eta_s))
        if self.reporter:
            self.reporter(metrics, self.run_dir)
        return metrics

    def _summary_line(self, m: dict, state: dict, eta_s: float) -> str:
        accs = " ".join(f"{k.removeprefix('acc/')}={v:.3f}" for k, v in m.items()
                        if k.startswith("acc/") and v is not None)
        rate = state["samples"] / max(state["train_time"], 1e-9)
        rounded = lambda v: v if v is None else round(v, 2)  # noqa: E731
        faded = any(a != 1 for a in m["alphas"])  # then the all-facets ELBO counts facets not yet trained
        elbos = ", ".join(f"{split} elbo {rounded(m[key])}" + (
                              f" (all facets on; {rounded(m[key + '/training_alphas'])} at training alphas)"
                              if faded and key + "/training_alphas" in m else "")
                          for split, key in (("test", "elbo"), ("val", "val/elbo")) if key in m)
        return (f"epoch {m['epoch']}/{self.config.training.total_epochs} step {m['progressive_step']} "
                f"alphas [{', '.join(significant(a) for a in m['alphas'])}] | {elbos} | {accs} | "
                f"{rate:,.0f} samples/s | eta {clock(eta_s)}")

    def _write_result(self, status: str, state: dict, device, started: float, final: dict | None = None,
                      error: str | None = None, extra: dict | None = None) -> dict:
        """result.json; `extra` keys (harness.packed's `packed_with`) are added at the end."""
        wall = time.time() - started
        result = {
            "status": status, "error": error, "final": final,
            "started_at": datetime.fromtimestamp(started).isoformat(timespec="milliseconds"),
            "finished_at": datetime.now().isoformat(timespec="milliseconds"),
            "resumed_at_epoch": state.get("resumed_at_epoch"), "likelihood": state["likelihood"],
            "config": self.config.model_dump(mode="json"), "seed": self.config.training.seed,
            "wall_time_s": wall, "train_time_s": state["train_time"], "eval_time_s": state["eval_time"],
            "samples_per_s": state["samples"] / state["train_time"] if state["train_time"] else None,
            "eval_share": state["eval_time"] / max(state["train_time"] + state["eval_time"], 1e-9),
            "argv": sys.argv, **provenance(device), "precision": self.config.training.precision, **(extra or {}),
        }
        write_json_atomic(self.result_path, result)
        return result


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """A per-batch bar with an ETA on stderr; off unless asked for, and off when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="batch", desc=desc, dynamic_ncols=True,
                disable=None if enabled else True, leave=False)


def _tensorboard_writer(run_dir: Path, purge_step: int):
    """TensorBoard event files in the run folder (`tensorboard --logdir runs/`); a resumed run's
    writer purges events at or after its first new epoch, so a replayed epoch is shown once."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


def run_trial(config: TrialConfig, run_dir: str | Path, resume: bool = False, reporter: Optional[Reporter] = None,
              log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Train and evaluate one trial; returns the contents of result.json."""
    return Trial(config, run_dir, resume, reporter, log, progress).run()
