"""Inside a Ray worker: one Tune trial trains one seed with the single-trial trainer, or the seeds of a
pack (training.seeds, harness.trial.packed), into the experiment folder.

What a trial trains comes in one of two shapes of Tune params:
  {"trial_index": i, ...}     grid trials: entry i of the expanded trial list, which the driver hands
                              over once through tune.with_parameters (so Tune's params, results,
                              experiment_tag and folder names stay small)
  {"suggestion": "mfcbench-suggestion.json", "overrides": {...}, ...}
                              search trials (harness.sweep.tune.searcher): the file in the trial's folder
                              holds {"variant", "trial"}, "trial" the full config, seed included;
                              "overrides" only records what was searched
  {"grid_point": {"variant", "trial"}, "overrides": {...}, ...}
                              the same held whole in params, as experiments started before suggestions
                              (and grid trials before configs) went by reference wrote them
plus "cpus" and "experiment_dir". A run folder that already has a checkpoint resumes with its own
config.yaml (only RESUME_SAFE_KEYS come from the params): an experiment started before a change of
defaults, such as the validation split, finishes as it began.

The result contract the driver, the EventPrinter and the searcher rely on: every report carries
`mfcbench_status`, "running" while training, and on the trial's final report "completed" or
"failed" (with `error`: the message). A deterministic failure (TrialFailed: non-finite loss, bad
data, a run folder that cannot resume; PrecisionError: a precision this node's device cannot run,
such as bf16 on a GPU older than compute capability 8.0) ends the Tune trial normally with that
"failed" report, so Tune's retries (FailureConfig.max_failures) are spent only on lost actors and
nodes. No report ever holds a None or non-finite value: such keys are dropped, and a trial whose
scheduler or search metric is non-finite fails.

A packed trial (training.seeds, from a sweep's `pack`) trains its seeds with harness.trial.packed into
`trial_<id>/runs/seed<s>`, the folders unpacked trials of those seeds would have. Each of its
reports holds, under the names an unpacked trial uses, the MEAN over the pack's seeds still training
(on its final report: over the seeds that completed) of every metric, so the scheduler (ASHA) ranks
a pack by its seeds' mean objective; and per seed `seed<s>/mfcbench_status` (running, completed,
failed) and `seed<s>/<metric>` for the scheduler's and searcher's objectives and train_loss
(PER_SEED_METRICS); `seeds` (e.g. "0,1,2") and `seeds_training` (how many seeds the mean is over).
A seed that fails leaves the pack, whose other seeds go on, and ends as its unpacked trial would:
its result.json records the failure, for a non-finite training loss (harness.trial.packed) and for a
scheduler or search metric that is not finite at an evaluation (PackReports raises SeedFailed for
that seed: "<metric> not finite at epoch <e>", as an unpacked trial's reporter raises TrialFailed;
that evaluation stays in its metrics.jsonl). Such a seed is in no mean from then on, and counts as
failed for a search; the trial fails only when every seed has. A packed trial that starts again
(`--resume`, a retry after a lost actor) keeps its seeds that ended (completed or failed), and
trains the others again from the start as one pack (harness.trial.packed cannot resume a pack; their
folders are cleared first); a single seed left over resumes from its checkpoint as an unpacked
trial does.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from harness.compat import with_legacy_defaults
from harness.files import write_json_atomic
from harness.layout import TRIAL_META, run_folder, trial_folder
from harness.storage import trial_copy
from harness.sweep.tune.protocol import PER_SEED_METRICS, STATUS, seed_key, trial_point
from harness.trial.config import TrialConfig
from harness.trial.config_io import read_run_config, resume_config
from harness.trial.device import trial_device


def trainable(params: dict, grid_trials: Sequence[dict] = (), report: str = "every_evaluation",
              required_metrics: Sequence[str] = ()) -> None:
    """One Tune trial: one seed of one trial config, trained (or resumed) in its run folder.

    grid_trials: the expanded grid ({variant, overrides, trial} each), indexed by params["trial_index"].
    report: "every_evaluation" (what ASHA and live progress need) or "final" (one result per trial).
    required_metrics: the scheduler's and searcher's metrics; a trial where one is non-finite fails.
    """
    import ray
    import torch
    from ray import tune

    from harness.trial import single as trainer
    from harness.trial.errors import TrialFailed
    from harness.trial.precision import PrecisionError

    trial_id = tune.get_context().get_trial_id()
    experiment_dir, persist = trial_copy(params["experiment_dir"], trial_id)
    params = {**params, "experiment_dir": str(experiment_dir)}

    def send(metrics: dict) -> None:  # what Tune sees, after the bucket's copy of the trial folder
        final = metrics.get(STATUS) != "running"
        persist(final=final)
        try:
            tune.report(metrics)
        except BaseException:  # a scheduler's stop or Ctrl-C ends the trial inside its report (SystemExit)
            persist(final=True)
            raise
        if final:
            persist.discard()

    variant, overrides, config_dict = _what_to_train(params, grid_trials, trial_id)
    try:
        # Ray, not torch, knows whether this trial has a GPU: torch sees every GPU of the node
        config_dict["training"]["device"] = trial_device(config_dict["training"]["device"], ray.get_gpu_ids(),
                                                         torch.cuda.is_available())
        if config_dict["training"].get("threads") is None:
            config_dict["training"]["threads"] = max(1, int(params.get("cpus", 1)))
        config = TrialConfig.model_validate(config_dict)  # on this node: an npz file it cannot read, say
    except ValueError as error:
        seeds = config_dict["training"].get("seeds")
        who = {"seeds": seeds_text(seeds)} if seeds else {"seed": config_dict["training"].get("seed")}
        send({"variant": variant, **who, STATUS: "failed", "error": str(error)})
        return
    if config.packed:
        identity = {"variant": variant, "seeds": seeds_text(config.training.seeds),
                    "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                    "pid": os.getpid()}
        trial_dir = trial_folder(experiment_dir, trial_id)
        train_packed(config, trial_dir, overrides, params.get("trial_index"), identity, send, report,
                     required_metrics, persist)
        return
    try:
        # Not tune.get_context().get_trial_dir(): that is Ray's local staging folder, which a reused
        # actor does not sync to storage. Run folders go straight into the experiment folder (on a
        # bucket: its node-local copy, which `persist` uploads).
        seed = config.training.seed
        run_dir = run_folder(experiment_dir, trial_id, seed)
        trial_dir = run_dir.parent.parent
        resume = (run_dir / "checkpoint.pt").exists()
        if resume:
            config = config_to_resume(run_dir, config, log=lambda line: print(f"[seed {seed}] {line}", flush=True))
    except ValueError as error:  # deterministic (DeviceError, a config this node refuses, an unreadable
        # config.yaml in the run folder): no retry
        send({"variant": variant, "seed": config_dict["training"].get("seed"), STATUS: "failed",
              "error": str(error)})
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = {"variant": variant, "seed": seed, "node_id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "pid": os.getpid()}
    _record_start(trial_dir, variant, overrides, params.get("trial_index"), config.model_dump(mode="json"), identity)

    done = run_dir / "result.json"
    if done.exists():
        previous = json.loads(done.read_text())
        if previous.get("status") == "completed":  # finished before the driver or actor died: not run again
            send({**finite_metrics(previous["final"]), **identity, STATUS: "completed"})
            return

    policy = ReportPolicy(tuple(required_metrics), report, config.training.total_epochs)
    held: dict = {}  # the last evaluation, reported once the run is known to have completed

    def reporter(metrics: dict, _run_dir: Path) -> None:
        persist()  # each evaluation wrote checkpoint.pt; uploaded at most every MFCBENCH_PERSIST_S seconds
        numeric = finite_metrics(metrics)
        if missing := policy.missing(numeric):  # raised inside the trainer, which records it in result.json
            raise TrialFailed(policy.failure(missing, metrics.get("epoch")))
        if policy.sends(metrics["epoch"]):
            send({**numeric, **identity, STATUS: "running"})
        else:
            held.clear()
            held.update(numeric)

    try:
        result = trainer.run_trial(config, run_dir, resume=resume, reporter=reporter,
                                   log=lambda line: print(f"[seed {seed}] {line}", flush=True))
    except (TrialFailed, PrecisionError) as error:  # PrecisionError: a precision this node's device
        # cannot run (bf16 on a GPU older than compute capability 8.0), refused before the run's first file
        send({**held, **identity, STATUS: "failed", "error": str(error)})
        return
    send({**(held or finite_metrics(result["final"])), **identity, STATUS: "completed"})


def seeds_text(seeds: Sequence[int]) -> str:
    """A pack's seeds as one result value, "0,1,2" (Tune results hold scalars)."""
    return ",".join(str(seed) for seed in seeds)


@dataclass(frozen=True)
class ReportPolicy:
    """When a trial reports to Tune, and which evaluations fail it: the same for a single and a packed
    trial. `report` every_evaluation sends each evaluation before the last as "running" (what ASHA and
    live progress need); final holds them, and the trial's end sends the last. An evaluation whose
    required metric (the scheduler's or searcher's) is not finite fails the run (a seed of a pack alone)."""

    required_metrics: tuple[str, ...]
    report: str
    last_epoch: int

    def missing(self, numeric: dict) -> list[str]:
        return [m for m in self.required_metrics if m not in numeric]

    @staticmethod
    def failure(missing: list[str], epoch) -> str:
        return f"{', '.join(missing)} not finite at epoch {epoch}"

    def sends(self, epoch: int) -> bool:
        return self.report == "every_evaluation" and 0 < epoch < self.last_epoch


def _mean(values: list[float]) -> float:
    """The mean, or the value itself where every seed has the same (epoch, step: they stay ints)."""
    return values[0] if all(v == values[0] for v in values) else statistics.fmean(values)


class PackReports:
    """What a packed trial reports to Tune (see the module's docstring), from its seeds' evaluations:
    the trainer calls it once per seed and evaluation (harness.trial.run.Reporter); once every seed
    still training (`training()`, set by the caller) has evaluated an epoch, one report goes out."""

    def __init__(self, seeds: Sequence[int], required_metrics: Sequence[str], report: str, last_epoch: int,
                 identity: dict, ended: dict[int, str], send: Callable[[dict], None]):
        self.seeds, self.policy = list(seeds), ReportPolicy(tuple(required_metrics), report, last_epoch)
        self.required = list(required_metrics)
        self.per_seed = list(dict.fromkeys([*self.required, *PER_SEED_METRICS]))
        self.identity, self.send = identity, send
        self.ended = dict(ended)  # seed -> status of the seeds that ended in an earlier start of the trial,
        # and "failed" for those whose objective was not finite in this one
        self.training: Callable[[], set[int]] = lambda: set(self.seeds) - set(self.ended)
        self.pending: dict[int, dict[int, dict]] = {}  # epoch -> seed -> its finite metrics
        self.held: dict = {}  # the last evaluation's report, sent once the run has ended

    def __call__(self, metrics: dict, run_dir: Path) -> None:
        from harness.trial.errors import SeedFailed

        seed, epoch = int(Path(run_dir).name.removeprefix("seed")), metrics.get("epoch", 0)
        numeric = finite_metrics(metrics)
        missing = self.policy.missing(numeric)
        self.pending.setdefault(epoch, {})[seed] = numeric
        if missing:
            self.ended[seed] = "failed"  # it leaves the pack: harness.trial.packed records the failure and drops it
        self._report_when_evaluated(epoch)
        if missing:  # raised inside the trainer: in a pack this seed fails alone, as an unpacked trial would
            raise SeedFailed(self.policy.failure(missing, epoch))

    def _report_when_evaluated(self, epoch: int) -> None:
        """Once every seed still training has evaluated `epoch`: its report (none if no seed has a finite
        objective: each of them failed, and with the last of them the trial)."""
        training = self.training() - set(self.ended)
        if not training <= set(self.pending[epoch]):
            return  # seeds still to evaluate this epoch
        evaluated = self.pending.pop(epoch)
        statuses = {s: "running" if s in training else self.ended.get(s, "failed") for s in self.seeds}
        combined = self.combine(evaluated, statuses)
        if combined is None:
            return
        if self.policy.sends(epoch):
            self.send({**combined, STATUS: "running"})
        else:
            self.held = combined

    def combine(self, evaluated: dict[int, dict], statuses: dict[int, str]) -> dict | None:
        """One report from per-seed finite metrics: each metric's mean over the seeds that have every
        required metric, per-seed values and statuses, identity. None when no seed has them all."""
        usable = {s: m for s, m in evaluated.items() if all(r in m for r in self.required)}
        if not usable:
            return None
        keys = dict.fromkeys(k for m in usable.values() for k in m)
        means = {k: _mean([m[k] for m in usable.values() if k in m]) for k in keys}
        per_seed = {seed_key(s, k): m[k] for s, m in evaluated.items() for k in self.per_seed if k in m}
        return {**means, **per_seed, **{seed_key(s, STATUS): status for s, status in statuses.items()},
                "seeds_training": len(usable), **self.identity}

    def finish(self, results: dict[int, dict], error: str | None) -> dict:
        """The trial's last report, from each seed's result.json: completed with the mean over the seeds
        that completed, or failed (with `error`) when none did."""
        statuses = {s: (results.get(s) or {}).get("status") or "failed" for s in self.seeds}
        finals = {s: finite_metrics(results[s]["final"]) for s in self.seeds
                  if statuses[s] == "completed" and results[s].get("final")}
        combined = self.combine(finals, statuses) if finals else None
        if combined is not None:
            return {**combined, STATUS: "completed"}
        errors = [f"seed {s}: {(results.get(s) or {}).get('error') or error or 'no finite objective'}"
                  for s in self.seeds]
        return {**self.held, **{seed_key(s, STATUS): status for s, status in statuses.items()}, **self.identity,
                STATUS: "failed", "error": error or "every seed of the pack failed: " + "; ".join(errors)}


def train_packed(config: TrialConfig, trial_dir: Path, overrides: dict, trial_index: int | None, identity: dict,
                 send: Callable[[dict], None], report: str = "every_evaluation",
                 required_metrics: Sequence[str] = (), persist: Callable[[], object] = lambda: None) -> None:
    """A packed trial (what `trainable` runs for a config with training.seeds; no Ray needed): its seeds
    into trial_dir/runs/seed<s> (harness.trial.packed), each report given to `send` (tune.report) as
    PackReports makes it. `identity`: variant, seeds, node_id, host and pid, added to every report.
    `persist` runs at each seed's evaluation (on bucket storage: the trial folder's throttled upload)."""
    from harness.trial import single as trainer
    from harness.trial.errors import TrialFailed
    from harness.trial.packed import PackedTrial, seed_folder

    seeds, runs = list(config.training.seeds), trial_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    _record_start(trial_dir, identity["variant"], overrides, trial_index, config.model_dump(mode="json"), identity)

    def log(line: str) -> None:
        print(f"[seeds {identity['seeds']}] {line}", flush=True)

    results = {}  # seed -> result.json, of the seeds that ended (a trial started again: before; then now)
    for seed in seeds:
        path = seed_folder(runs, seed) / "result.json"
        if path.exists():
            results[seed] = json.loads(path.read_text())
    todo = [seed for seed in seeds if seed not in results]
    reports = PackReports(seeds, required_metrics, report, config.training.total_epochs, identity,
                          {seed: result.get("status") or "failed" for seed, result in results.items()}, send)
    error = None

    def evaluated(metrics: dict, folder: Path) -> None:
        persist()
        reports(metrics, folder)

    try:
        if len(todo) >= 2:  # a fresh pack, or the seeds of one that was interrupted, trained from the start
            for seed in todo:
                shutil.rmtree(seed_folder(runs, seed), ignore_errors=True)
            if todo != seeds:
                log(f"seeds {seeds_text(results)} ended before; training {seeds_text(todo)} again from the start")
                data = config.model_dump(mode="json")
                data["training"]["seeds"] = todo
                config = TrialConfig.model_validate(data)
            pack = PackedTrial(config, runs, reporter=evaluated, log=log)
            reports.training = lambda: {pack.seeds[i] for i in pack.active}
            results.update(pack.run())
        elif todo:  # one seed left: trained, or resumed from its checkpoint, as an unpacked trial is
            (seed,) = todo
            run_dir, single = seed_folder(runs, seed), config.for_seed(seed)
            resume = (run_dir / "checkpoint.pt").exists()
            if resume:
                single = config_to_resume(run_dir, single, log=log)
            results[seed] = trainer.run_trial(single, run_dir, resume=resume, reporter=evaluated, log=log)
    except (TrialFailed, ValueError) as failure:  # ValueError: a seed's config.yaml that cannot be read
        error = str(failure)
        for seed in todo:
            path = seed_folder(runs, seed) / "result.json"
            if path.exists():
                results[seed] = json.loads(path.read_text())
    send(reports.finish(results, error))


def config_to_resume(run_dir: Path, requested: TrialConfig, log=print) -> TrialConfig:
    """The config a run folder with a checkpoint continues with: the run's own config.yaml, with the
    values of RESUME_SAFE_KEYS (device, threads, data_root, ...) from `requested`, the config Tune
    passes now. A sweep started before a key existed (or whose defaults changed since) thus resumes
    its runs as they began, e.g. on the training set without a validation split."""
    config, kept = resume_config(read_run_config(run_dir), requested)
    if kept:
        log(f"resuming {run_dir} with its own config.yaml, which differs from the sweep's in "
            + ", ".join(f"{k} (run {old!r}, sweep {new!r})" for k, (old, new) in kept.items()))
    return config


def _what_to_train(params: dict, grid_trials: Sequence[dict], trial_id: str) -> tuple[str, dict, dict]:
    """(variant, overrides, full trial config dict: a copy, the caller fills in threads)."""
    point = trial_point(params, grid_trials, trial_id)
    # A trial recorded by an experiment started before a key existed (its grid trials, or the base a
    # pickled searcher holds) keeps training as that experiment began: its seeds stay comparable.
    return point["variant"], point["overrides"], with_legacy_defaults(json.loads(json.dumps(point["trial"])))


def _record_start(trial_dir: Path, variant: str, overrides: dict, trial_index: int | None, config: dict,
                  identity: dict) -> None:
    """mfcbench-trial.json: what the trial trains (reports read it, with or without Tune's own
    loggers), and every start of it: a retried trial shows each node it ran on."""
    path = trial_dir / TRIAL_META
    starts = json.loads(path.read_text()).get("starts", []) if path.exists() else []
    starts.append({k: identity[k] for k in ("node_id", "host", "pid")} | {"at": time.time()})
    write_json_atomic(path, {"variant": variant, "overrides": overrides, "trial_index": trial_index,
                             "config": config, "starts": starts})


def finite_metrics(metrics: dict) -> dict:
    """The numeric metrics Tune may see: alphas as alpha/facet<j>, None and non-finite values dropped
    (None in a result raises inside Tune's controller when Optuna or ASHA reads it)."""
    out = {}
    for key, value in metrics.items():
        if key == "alphas":
            out.update({f"alpha/facet{j}": a for j, a in enumerate(value, start=1) if math.isfinite(a)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value
    return out
