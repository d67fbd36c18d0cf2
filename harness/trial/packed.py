"""Packed seeds: the seeds of `training.seeds` trained together in one process as one stacked model
(models.packed), written as one ordinary run folder per seed, `OUT/seed<s>`, in exactly the format
of a single run (harness.trial.single), so reports and `mfcbench train --out OUT/seed<s> --resume` read
them as they are.

Each seed is what its single run would be, in the RNG sense:
- its model is built and prepared as a single run builds it (torch.manual_seed(seed), Glorot init
  from the global RNG, `model.prepare`: data-dependent init, AE pretraining, GMM prior with `seed`);
  the data is loaded once for all seeds (loading draws nothing from torch's RNG);
- the global RNG state right after its prepare becomes its own noise generator (on CUDA: the
  device's generator state), from which its reparameterisation noise is drawn in the order and
  shapes MFCVAE.reparameterise would draw it; its data order comes from
  `torch.Generator().manual_seed(seed)` through harness.data.batches, as in a single run;
- one Adam (same lr) over the stacked parameters: Adam is elementwise, so this is S Adams;
- the fade-in schedule (alphas) is the same for every seed; evaluation loads seed i's slice into a
  plain model and evaluates it as a single run does (harness.trial.run.SeedRun).
So per-seed losses match single runs up to float rounding (batched matmuls sum in another order).

A seed whose epoch loss is non-finite (checked once per epoch, as a single run does: one host sync)
gets the single run's failure record in its own result.json and leaves the pack (its parameters,
buffers, Adam state, noise and data-order generators); the others go on. So does a seed whose
reporter raises SeedFailed after one of its evaluations (harness.sweep.tune.worker: a required
metric not finite), as a single run's reporter fails that run; its evaluation stays written. If every seed
fails, TrialFailed. result.json of each seed adds `packed_with` (the pack's seeds); its
`train_time_s` is the pack's training time (every seed trained during all of it), so its
`samples_per_s` is per seed and the pack's throughput is the sum over its seeds.

training.precision applies to the pack as to a single run (harness.trial.precision: the vmapped networks
under autocast, the ELBO in fp32). Under fp16 the pack shares one GradScaler, so a step in which one
seed's gradients overflow is skipped for all of them; a seed whose loss itself is non-finite would
overflow every step from then on (every step skipped, the scale halved to 0, NaN written into the
others), so under fp16 the losses are checked every step before backward (the scaler syncs with the
host every step anyway): a seed whose loss is non-finite is recorded failed at once and leaves the
pack mid-epoch, and that batch is skipped for every seed (no backward, the scaler untouched: the
others' step counter and summed loss count it, as a single run counts a step its scaler skipped).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from harness.data import batches
from harness.trial.config import TrialConfig
from harness.trial.errors import (
    SeedFailed,
    TrialFailed,
    failure_message,
    non_finite_message,
)
from harness.trial.precision import Precision
from harness.trial.run import Reporter, SeedRun
from harness.trial.run_folder import RunFolder
from harness.trial.single import progress_bar, start_trial
from models import packed as pk


def seed_folder(out_dir: str | Path, seed: int) -> Path:
    return Path(out_dir) / f"seed{seed}"


def every_seed_failed(messages, seeds: list[int]) -> TrialFailed:
    """The pack's own failure once no seed is left: each distinct message once, then the seeds."""
    return TrialFailed(f"every packed seed failed: {'; '.join(dict.fromkeys(messages))} "
                       f"(seeds {', '.join(map(str, seeds))})")


class PackedTrial:
    """Trains `config.training.seeds` packed into `out_dir/seed<s>`, one ordinary run folder each."""

    def __init__(self, config: TrialConfig, out_dir: str | Path, reporter: Optional[Reporter] = None,
                 log: Callable[[str], None] = print, progress: bool = False):
        if not config.packed:
            raise ValueError("PackedTrial needs training.seeds; a single seed trains with harness.trial.single.run_trial")
        if not config.trains:
            raise ValueError(f"{config.model.name} is not trained by gradient steps; it cannot be packed")
        self.config, self.out_dir, self.log, self.progress = config, Path(out_dir), log, progress
        self.seeds = list(config.training.seeds)
        self.runs = [SeedRun(single, RunFolder(seed_folder(out_dir, seed)), reporter,
                             log=lambda line, seed=seed: log(f"[seed{seed}] {line}"))
                     for seed, single in zip(self.seeds, config.unpacked())]
        self.active: list[int] = []  # indices into self.seeds of the seeds still training, in pack order
        self.device: Optional[torch.device] = None

    @property
    def _extra(self) -> dict:
        return {"packed_with": list(self.seeds)}

    def run(self) -> dict[int, dict]:
        """Train; returns seed -> the contents of its result.json (completed or failed)."""
        started = start_trial(self.config)
        for run in self.runs:
            run.folder.start(run.config)
        results: dict[int, dict] = {}
        self.active = list(range(len(self.seeds)))
        try:
            finals = self._train(started, results)
        except Exception as error:  # anywhere: data, model, device, a reporter: every seed still training fails
            message = failure_message(error)
            for i in self.active:
                results[self.seeds[i]] = self.runs[i].finish("failed", self.device, started, error=message,
                                                             extra=self._extra)
            if isinstance(error, TrialFailed):
                raise
            raise TrialFailed(message) from error
        finally:
            for run in self.runs:
                run.folder.close()
        for i, final in zip(self.active, finals):
            results[self.seeds[i]] = self.runs[i].finish("completed", self.device, started, final=final,
                                                         extra=self._extra)
        return {seed: results[seed] for seed in self.seeds}

    # ---------------------------------------------------------------------------------------------
    def _set_up(self, started: float, results: dict[int, dict]):
        """Per seed, as a single run: seed, build, prepare; then its RNG streams. Data loaded once. A seed
        whose preparation fails (its pretraining diverged) gets its failure record there and then, and
        stays out of the pack; TrialFailed when no seed is left."""
        tc = self.config.training
        setups, noise, cpu_states, data, failures = [], [], [], None, {}
        for i, run in enumerate(self.runs):
            setup = run.set_up(data=data)  # torch.manual_seed(seed), then build_model
            data, self.device = setup.data, setup.device
            run.folder.restart_metrics()
            try:
                setup.prepare(run.config.training.seed, tc.batch_size, tc.lr, log=run.log)
            except TrialFailed as error:
                failures[i] = failure_message(error)
                results[self.seeds[i]] = run.finish("failed", self.device, started, error=failures[i],
                                                    extra=self._extra)
                self.active.remove(i)
                run.log(f"{failures[i]}; it leaves the pack")
                continue
            setup.model.train()
            cpu_states.append(torch.get_rng_state())
            if self.device.type == "cpu":
                generator = torch.Generator()
                generator.set_state(torch.get_rng_state())
            else:
                generator = torch.Generator(device=self.device)
                generator.set_state(torch.cuda.get_rng_state(self.device))
            noise.append(generator)
            setups.append(setup)
        if not setups:
            raise every_seed_failed(failures.values(), [self.seeds[i] for i in failures])
        return setups, noise, cpu_states

    def _train(self, started: float, results: dict[int, dict]) -> list[dict]:
        tc, every = self.config.training, self.config.evaluation.every_n_epochs
        setups, noise, cpu_states = self._set_up(started, results)
        data, schedule, template, precision = setups[0].data, setups[0].schedule, setups[0].model, setups[0].precision
        params, buffers = pk.stack([setup.model for setup in setups])
        pack = _Pack(params, buffers, torch.optim.Adam(list(params.values()), lr=tc.lr), noise,
                     [setup.generator for setup in setups], cpu_states, [None] * len(setups))
        del setups  # the template keeps one model's modules; functional_call lends it each seed's tensors
        template.train()
        latent_dims, dtype = list(template.config.latent_dims), next(iter(params.values())).dtype
        del params, buffers  # the pack's own, cut down as seeds leave
        n_train, total, step = len(data.x_train), tc.total_epochs, 0
        every_step = precision.scaler is not None  # fp16: see the module's docstring
        self.log(f"packed {len(self.seeds)} seeds ({', '.join(map(str, self.seeds))}) of "
                 f"{self.config.model.name}/{self.config.model.architecture} into {self.out_dir}/seed<s>")
        bar = progress_bar(total * schedule.batches_per_epoch, 0, self.out_dir.name, self.progress)
        loop_started = time.time()
        try:
            for epoch in range(total):
                t, seen, current = time.time(), 0, None
                pack.epoch_loss = pk.zeros_per_seed(pack.params)
                pack.batches = [batches(data.x_train, tc.batch_size, g) for g in pack.data_order]
                for b in range(schedule.batches_per_epoch):
                    xs = [next(seed_batches) for seed_batches in pack.batches]
                    alphas = schedule.alphas(epoch, b)
                    if alphas != current:
                        pk.set_alphas(pack.buffers, alphas)
                        current = alphas
                    eps = pk.draw_noise(pack.noise, len(xs[0]), latent_dims, self.device, dtype)
                    with precision.autocast():
                        losses = pk.packed_losses(template, pack.params, pack.buffers, pk.stack_batches(xs), eps)
                    step, seen = step + 1, seen + len(xs[0])
                    bar.update()
                    pack.epoch_loss += losses.detach()
                    if every_step:
                        finite = pk.finite_per_seed(losses)  # the scaler syncs every step anyway
                        if not all(finite):  # no backward, the scaler untouched: this batch trains no seed
                            failed = [k for k, ok in enumerate(finite) if not ok]
                            for k in failed:
                                self.runs[self.active[k]].timing.train_time += time.time() - t
                                self.runs[self.active[k]].timing.samples += seen
                            self._leave(pack, {k: non_finite_message(epoch, step) for k in failed}, started, results)
                            continue
                    precision.step(losses.sum(), pack.optimiser)
                pack.batches = []
                elapsed = time.time() - t
                for i in self.active:
                    self.runs[i].timing.train_time += elapsed
                    self.runs[i].timing.samples += n_train
                finite = pk.finite_per_seed(pack.epoch_loss)  # one host sync per epoch, as a single run
                if not all(finite):
                    self._leave(pack, {k: non_finite_message(epoch, step) for k, ok in enumerate(finite) if not ok},
                                started, results)
                if (epoch + 1) % every == 0 or epoch + 1 == total:
                    self._evaluate(pack, template, data, schedule, precision, epoch, step,
                                   (time.time() - loop_started) / (epoch + 1) * (total - epoch - 1), started, results)
        finally:
            bar.close()
        return pack.last

    def _evaluate(self, pack: _Pack, template, data, schedule, precision: Precision, epoch: int, step: int,
                  eta: float, started: float, results: dict[int, dict]) -> None:
        """Each seed's evaluation and checkpoint as its single run's (SeedRun.record_evaluation);
        a seed whose reporter raised SeedFailed leaves the pack afterwards with that failure record."""
        per_batch = [loss / schedule.batches_per_epoch for loss in pk.values_per_seed(pack.epoch_loss)]
        optimiser_state = pack.optimiser.state_dict()
        failures = {}
        for k, i in enumerate(self.active):
            template.load_state_dict(pk.unstack(pack.params, pack.buffers, k))
            snapshot = self._snapshot(template, optimiser_state, k, pack.noise[k], pack.data_order[k],
                                      pack.cpu_states[k], precision)
            try:
                pack.last[k] = self.runs[i].record_evaluation(template, data, schedule, epoch, step, per_batch[k],
                                                              eta, snapshot)
            except SeedFailed as failure:  # its evaluation is written, as a single run's would be
                failures[k] = str(failure)
        template.train()
        if failures:
            self._leave(pack, failures, started, results)

    def _leave(self, pack: _Pack, failures: dict[int, str], started: float, results: dict[int, dict]) -> None:
        """The seeds at pack positions `failures` (position -> message) get their failure record in their
        own result.json and leave the pack; the others go on. TrialFailed when no seed is left."""
        survivors = [k for k in range(len(self.active)) if k not in failures]
        for k, message in failures.items():
            i = self.active[k]
            results[self.seeds[i]] = self.runs[i].finish("failed", self.device, started, error=message,
                                                         extra=self._extra)
            self.log(f"[seed{self.seeds[i]}] {message}; {len(survivors)} seeds go on")
        failed = [self.seeds[self.active[k]] for k in failures]
        self.active = [self.active[k] for k in survivors]
        if not survivors:
            raise every_seed_failed(failures.values(), failed)
        pack.keep(survivors)

    def _snapshot(self, model, optimiser_state: dict, k: int, noise: torch.Generator, data_order: torch.Generator,
                  cpu_state: torch.Tensor, precision: Precision) -> Callable[[], dict]:
        """Seed k's checkpoint pieces in a single run's format: its model and Adam state, and the RNG
        states a single run would hold at this point (the global CPU RNG is its noise stream on the
        CPU; on CUDA the device's generator is, and the CPU one is as its prepare left it); under
        fp16 the pack's GradScaler state, which a resumed single run of the seed continues from."""
        device = self.device

        def snapshot() -> dict:
            saved = {"model": model.state_dict(), "optimizer": pk.optimiser_state_of(optimiser_state, k),
                     "torch_rng": noise.get_state() if device.type == "cpu" else cpu_state.clone(),
                     "data_rng": data_order.get_state()}
            if torch.cuda.is_available():
                states = torch.cuda.get_rng_state_all()
                if device.type == "cuda":
                    states[device.index if device.index is not None else torch.cuda.current_device()] = \
                        noise.get_state()
                saved["cuda_rng"] = states
            if precision.scaler is not None:
                saved["grad_scaler"] = precision.state_dict()
            return saved

        return snapshot


@dataclass
class _Pack:
    """What the training loop holds of the seeds still training, in pack order (PackedTrial.active):
    the stacked parameters, buffers and Adam (touched through models.packed only), and per seed, as
    lists, its noise and data-order generators, the CPU RNG state its prepare left, its last
    evaluation and this epoch's batch iterator."""

    params: pk.Stacked
    buffers: pk.Stacked
    optimiser: torch.optim.Optimizer
    noise: list[torch.Generator]
    data_order: list[torch.Generator]
    cpu_states: list[torch.Tensor]
    last: list[Optional[dict]]
    epoch_loss: Optional[torch.Tensor] = None  # this epoch's summed loss per seed, (S,): models.packed's
    batches: list[Iterator[torch.Tensor]] = field(default_factory=list)  # during an epoch

    def keep(self, survivors: list[int]) -> None:
        """Cut everything down to the seeds at pack positions `survivors`, mid-epoch or between epochs."""
        self.params, self.buffers, self.optimiser = pk.keep(self.params, self.buffers, self.optimiser, survivors)
        for name in ("noise", "data_order", "cpu_states", "last", "batches"):
            values = getattr(self, name)
            if values:
                setattr(self, name, [values[k] for k in survivors])
        if self.epoch_loss is not None:
            self.epoch_loss = pk.keep_rows(self.epoch_loss, survivors)


def run_packed(config: TrialConfig, out_dir: str | Path, reporter: Optional[Reporter] = None,
               log: Callable[[str], None] = print, progress: bool = False) -> dict[int, dict]:
    """Train config.training.seeds packed into out_dir/seed<s>; returns seed -> its result.json contents.
    Raises TrialFailed when every seed failed (each folder holds its failure record)."""
    return PackedTrial(config, out_dir, reporter, log, progress).run()
