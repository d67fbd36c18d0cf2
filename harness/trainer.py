"""One trial: one model, one dataset, one seed; trained, evaluated every n epochs, checkpointed.

Files in the run folder:
  config.yaml      the fully resolved trial config
  metrics.jsonl    one line per evaluation (no timings, so a CPU trial's file is a function of its seed)
  checkpoint.pt    last evaluation's state; `torch.load(path, weights_only=True)` reads it
  result.json      final metrics and provenance, or the failure record
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from models import ClusteringBaseline, build_model

from .config import TrialConfig, dump
from .data import Dataset, batches, load_dataset
from .metrics import clustering_metrics

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
    fade_in_batches: int
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
        ramp = 1.0 if s == 1 or self.fade_in_batches == 0 else min(1.0, done / self.fade_in_batches)
        return [0.0 if j < newest else ramp if j == newest else 1.0 for j in range(self.n_facets)]


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrialFailed(f"training.device={requested!r} but CUDA is not available here; use auto or cpu")
    return torch.device(requested)


def provenance(device: torch.device) -> dict:
    import sklearn

    from harness import __version__

    return {
        "host": socket.gethostname(), "pid": os.getpid(), "device": str(device),
        "versions": {"mfcbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__},
        "torch_threads": torch.get_num_threads(),
    }


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model, data: Dataset, batch_size: int, seed: int) -> dict:
    """Test ELBO and its terms (all facets active) and clustering metrics at the posterior mean."""
    if isinstance(model, ClusteringBaseline):
        probs = [p.numpy() for p in model.cluster_probs(data.x_test)]
        out = {}
    else:
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=data.x_test.device).manual_seed(seed + EVAL_SEED_OFFSET)
        sums: dict[str, float] = {}
        parts: list[list[torch.Tensor]] = [[] for _ in range(model.n_facets)]
        ones = torch.ones_like(model.alphas)
        for start in range(0, len(data.x_test), batch_size):
            x = data.x_test[start:start + batch_size]
            terms = model.loss_terms(x, alphas=ones, generator=generator)
            batch_sums = {"elbo": terms["elbo"].sum(), "log_px": terms["log_px"].sum()}
            facets = zip(model.priors, terms["facets"], terms["params"], parts)
            for j, (prior, facet, (mean, _), part) in enumerate(facets, start=1):
                batch_sums[f"kl_z/facet{j}"] = facet.kl_z.sum()
                batch_sums[f"kl_c/facet{j}"] = facet.kl_c.sum()
                part.append(prior.cluster_log_probs(mean).exp().cpu())  # eq. (12) at the posterior mean
            for key, value in batch_sums.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        out = {key: value / len(data.x_test) for key, value in sums.items()}
        probs = [torch.cat(p).numpy() for p in parts]
        model.train(was_training)
    y = {f: v.numpy() for f, v in data.y_test.items()}
    out.update(clustering_metrics(probs, y, data.factors))
    return out


def _finite_or_none(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


class Trial:
    """Runs one trial into `run_dir`; `resume=True` continues from checkpoint.pt if there is one."""

    def __init__(self, config: TrialConfig, run_dir: str | Path, resume: bool = False,
                 reporter: Optional[Reporter] = None, log: Callable[[str], None] = print):
        self.config, self.run_dir, self.resume = config, Path(run_dir), resume
        self.reporter, self.log = reporter, log
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.result_path = self.run_dir / "result.json"

    def run(self) -> dict:
        cfg = self.config
        # Argument checks in torch.distributions cost time per batch and turn a NaN into an
        # exception mid-epoch; non-finite losses are caught once per epoch instead.
        torch.distributions.Distribution.set_default_validate_args(False)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump(cfg))
        started = time.time()
        if cfg.training.threads:
            torch.set_num_threads(cfg.training.threads)
        device = choose_device(cfg.training.device)
        seed = cfg.training.seed
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        data = load_dataset(cfg.dataset.name, cfg.dataset.data_root, cfg.dataset.download,
                            cfg.dataset.split_seed).to(device)
        model = build_model(cfg.model, data.image_shape, data.likelihood)
        self.log(f"trial {self.run_dir.name}: {cfg.model.name}/{cfg.model.architecture} on {data.name} "
                 f"({data.describe()}), seed {seed}, device {device}")
        state = {"train_time": 0.0, "eval_time": 0.0, "samples": 0,
                 "likelihood": getattr(getattr(model, "likelihood", None), "name", None)}
        try:
            if isinstance(model, ClusteringBaseline):
                final = self._run_baseline(model, data, state)
            else:
                final = self._run_training(model.to(device), data, state)
        except TrialFailed as error:
            self._write_result("failed", state, device, started, error=str(error))
            raise
        except Exception as error:  # anything else still leaves a failure record behind
            self._write_result("failed", state, device, started, error=f"{type(error).__name__}: {error}")
            raise TrialFailed(f"{type(error).__name__}: {error}") from error
        return self._write_result("completed", state, device, started, final=final)

    # ---------------------------------------------------------------------------------------------
    def _run_baseline(self, model: ClusteringBaseline, data: Dataset, state: dict) -> dict:
        t = time.time()
        model.fit(data.x_train, self.config.training.seed)
        state["train_time"] = time.time() - t
        state["samples"] = len(data.x_train)
        metrics = {"epoch": 0, "step": 0, **evaluate(model, data, self.config.evaluation.batch_size,
                                                     self.config.training.seed)}
        self.metrics_path.write_text(json.dumps(metrics) + "\n")
        if self.reporter:
            self.reporter(metrics, self.run_dir)
        return metrics

    def _run_training(self, model, data: Dataset, state: dict) -> dict:
        cfg = self.config
        tc = cfg.training
        optimiser = torch.optim.Adam(model.parameters(), lr=tc.lr)
        generator = torch.Generator().manual_seed(tc.seed)  # the data order; on the CPU, moved per epoch
        n_train = len(data.x_train)
        schedule = Schedule(model.n_facets, tc.epochs_per_step, tc.progressive, tc.fade_in_batches,
                            math.ceil(n_train / tc.batch_size))
        start_epoch, step, last = 0, 0, None
        if self.resume and self.checkpoint_path.exists():
            ckpt = torch.load(self.checkpoint_path, weights_only=True, map_location=data.x_train.device)
            model.load_state_dict(ckpt["model"])
            optimiser.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["torch_rng"])
            generator.set_state(ckpt["data_rng"])
            if "cuda_rng" in ckpt and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(list(ckpt["cuda_rng"]))
            start_epoch, step = ckpt["epoch"], ckpt["step"]
            state.update(ckpt["timing"], resumed_at_epoch=start_epoch)
            self._truncate_metrics(start_epoch)
            self.log(f"resumed from {self.checkpoint_path} at epoch {start_epoch}")
        else:
            if self.metrics_path.exists():
                self.metrics_path.unlink()
            model.prepare(data.x_train, tc.seed, tc.batch_size, tc.lr, log=self.log)
        model.train()
        total = tc.total_epochs
        for epoch in range(start_epoch, total):
            t = time.time()
            epoch_loss = torch.zeros((), device=data.x_train.device)
            current = None
            for b, x in enumerate(batches(data.x_train, tc.batch_size, generator)):
                alphas = schedule.alphas(epoch, b)
                if alphas != current:
                    model.alphas.copy_(torch.tensor(alphas))
                    current = alphas
                loss = -model.loss_terms(x)["elbo"].mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                epoch_loss += loss.detach()
                step += 1
            state["train_time"] += time.time() - t
            state["samples"] += n_train
            # One host sync per epoch, not per batch: a GPU keeps its queue full.
            if not torch.isfinite(epoch_loss):
                raise TrialFailed(f"non-finite loss in epoch {epoch + 1} (steps up to {step}); "
                                  "try a lower training.lr or a larger model.prior_variance_init")
            if (epoch + 1) % cfg.evaluation.every_n_epochs == 0 or epoch + 1 == total:
                last = self._evaluate_and_checkpoint(model, optimiser, generator, data, schedule, epoch, step,
                                                     epoch_loss.item() / schedule.batches_per_epoch, state)
        if last is None:  # resumed after the final evaluation
            last = json.loads(self.metrics_path.read_text().splitlines()[-1])
        return last

    def _evaluate_and_checkpoint(self, model, optimiser, generator, data, schedule, epoch, step, train_loss,
                                 state) -> dict:
        t = time.time()
        s, _ = schedule.step_of(epoch)
        metrics = {"epoch": epoch + 1, "step": step, "progressive_step": s,
                   "alphas": [float(a) for a in model.alphas.tolist()], "train_loss": train_loss}
        metrics.update(evaluate(model, data, self.config.evaluation.batch_size, self.config.training.seed))
        metrics = {k: _finite_or_none(v) for k, v in metrics.items()}
        state["eval_time"] += time.time() - t
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        timing = {k: state[k] for k in ("train_time", "eval_time", "samples")}
        ckpt = {"model": model.state_dict(), "optimizer": optimiser.state_dict(), "epoch": epoch + 1,
                "step": step, "torch_rng": torch.get_rng_state(), "data_rng": generator.get_state(),
                "timing": timing, "config": self.config.model_dump(mode="json")}
        if torch.cuda.is_available():
            ckpt["cuda_rng"] = torch.cuda.get_rng_state_all()
        tmp = self.checkpoint_path.with_suffix(".pt.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, self.checkpoint_path)
        self.log(self._summary_line(metrics, state))
        if self.reporter:
            self.reporter(metrics, self.run_dir)
        return metrics

    def _summary_line(self, m: dict, state: dict) -> str:
        accs = " ".join(f"{k.removeprefix('acc/')}={v:.3f}" for k, v in m.items() if k.startswith("acc/"))
        rate = state["samples"] / max(state["train_time"], 1e-9)
        return (f"epoch {m['epoch']}/{self.config.training.total_epochs} step {m['progressive_step']} "
                f"alphas {m['alphas']} | test elbo {m.get('elbo', float('nan')):.2f} | {accs} | {rate:,.0f} samples/s")

    def _truncate_metrics(self, epoch: int) -> None:
        """Drop evaluations written after the checkpoint we resume from (the run died after them)."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["epoch"] <= epoch]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _write_result(self, status: str, state: dict, device, started: float, final: dict | None = None,
                      error: str | None = None) -> dict:
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
            "argv": sys.argv, **provenance(device),
        }
        write_json_atomic(self.result_path, result)
        return result


def run_trial(config: TrialConfig, run_dir: str | Path, resume: bool = False, reporter: Optional[Reporter] = None,
              log: Callable[[str], None] = print) -> dict:
    """Train and evaluate one trial; returns the contents of result.json."""
    return Trial(config, run_dir, resume, reporter, log).run()
