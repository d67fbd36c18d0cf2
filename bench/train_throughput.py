"""Packed seeds against the same seeds one after another, on the CPU, in one run: samples/s, their ratio,
each configuration's share of this machine's fp32 matmul rate, and the fixed per-trial costs.

    .venv/bin/python bench/train_throughput.py            # the full table: about 10 minutes on 2 quiet cores
    .venv/bin/python bench/train_throughput.py --quick    # a smoke run: seconds, numbers meaningless

Table 1, per model, thread count and pack size S: samples/s (all seeds together) of S seeds trained
packed (models.packed: vmap over the stacked parameters, per-seed data order and noise, one Adam) and
of the same S seeds trained one after another (a bare single-model loop each), the ratio, and each
one's share of the fp32 matmul rate measured in the same run at that thread count (a large
torch.matmul). FLOPs per sample are counted from the model's nn.Linear / conv layers during one
forward pass (2 * in * out per Linear and per sample, convolutions likewise), times 3 for forward
and backward. Each seed's single-model loop is timed once; S seeds one after another take the sum
of the first S seeds' times. Both loops are bare: no evaluation, no schedule, no prior initialisation, no
checkpoints; Adam on every step; the ELBO, likelihood and prior terms included.
Models: the demo's digits model (sweeps/demo.yaml, the mfcvae variant: the default shared MLP 500-2000, batch
128) and the paper's MNIST FC ladder (preset paper-mnist: Table 4 sizes, batch 512) on
Fashion-MNIST when installed (the same shape as MNIST), else MNIST-shaped random images.

Table 2, per model: the fixed costs a trial pays before and besides training (data loading, model
build, data-dependent init, the GMM prior initialisation split into the encoder pass over the
training set and the GMM fits, one evaluation at all-facets and at faded alphas), and the imports
of a fresh process.

Table 3: the trainer (harness.trial.single.run_trial: schedule, epoch bookkeeping, evaluation every
epoch) against a bare loop of the same model, samples/s of training time; the ratio should stay
near 1 (the trainer's overhead per batch), and the evaluation's share of the trainer's time.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

# This tree's harness and models, not the editable install's, so another checkout can be measured
# with the same venv.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from harness.trial.config import TrialConfig  # noqa: E402
from harness.trial.config_io import load_trial_config  # noqa: E402
from harness.data import batches, load_dataset  # noqa: E402
from harness.data.catalog import fashion_mnist_folders, find_idx_files  # noqa: E402
from harness.trial.precision import Precision  # noqa: E402
from models import build_model  # noqa: E402
from models import packed as pk  # noqa: E402

DEMO_SWEEP = REPO_ROOT / "sweeps" / "demo.yaml"


# Data and models ----------------------------------------------------------------------------------
def dataset_name(tmp: Path, data_root: Path | None = None) -> str:
    """fashion-mnist when its IDX files are installed or in DATA_ROOT (the same shape as MNIST), else
    MNIST-shaped random images written to an npz in `tmp`."""
    if find_idx_files(fashion_mnist_folders(data_root)) is not None:
        return "fashion-mnist"
    rng = np.random.default_rng(0)
    np.savez(tmp / "mnist_shaped.npz", x=rng.integers(0, 256, (70000, 28, 28), dtype=np.uint8),
             x_test=rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8))
    return f"npz:{tmp / 'mnist_shaped.npz'}"


def demo_config(device: str = "cpu") -> TrialConfig:
    """The demo sweep's mfcvae trial (its base; the mfcvae variant changes nothing), seed 0."""
    sweep = yaml.safe_load(DEMO_SWEEP.read_text())
    data = copy.deepcopy(sweep["base"])
    for key, value in (sweep.get("variants", {}).get("mfcvae") or {}).items():  # dotted overrides, if any
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    data.setdefault("training", {})["device"] = device
    return TrialConfig.model_validate(data)


def mnist_config(name: str, device: str = "cpu") -> TrialConfig:
    """paper-mnist (Table 3's MNIST recipe: FC ladder, batch 512) on `name`."""
    return load_trial_config("paper-mnist", [f"dataset.name={name}", "dataset.data_root=null",
                                             f"training.device={device}"])


@dataclass
class Bench:
    """One model of the table: its config, training images on the device, and its label."""

    label: str
    config: TrialConfig
    x: torch.Tensor
    likelihood: str
    models: dict[int, nn.Module] = field(default_factory=dict)  # seed -> built model (CPU), reused

    def model(self, seed: int, device: torch.device) -> nn.Module:
        """The model seed `seed` builds (torch.manual_seed(seed), then build_model, as a trial does), on `device`."""
        if seed not in self.models:
            torch.manual_seed(seed)
            self.models[seed] = build_model(self.config.model, tuple(self.x.shape[1:]), self.likelihood)
        return copy.deepcopy(self.models[seed]).to(device).train()


def random_images(n: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0)).to(device)


# What a step costs ------------------------------------------------------------------------------
WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


@torch.no_grad()
def flops_per_sample(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-add FLOPs of one training step per sample: 2 * in * out per Linear output row (so per
    sample for (B, in) inputs), 2 * (C_in / groups) * k_h * k_w per Conv2d output element, 2 * (C_out /
    groups) * k_h * k_w per ConvTranspose2d input element, counted in one forward pass of loss_terms
    (encoder and decoder once); times 3 for forward and backward."""
    total = []

    def count(layer, inputs, output):
        if isinstance(layer, nn.Linear):
            total.append(2 * layer.in_features * output.numel())
        elif isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total.append(2 * layer.in_channels // layer.groups * k * output.numel())
        else:
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total.append(2 * layer.out_channels // layer.groups * k * inputs[0].numel())

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, WEIGHTED)]
    try:
        model.loss_terms(x)
    finally:
        for handle in handles:
            handle.remove()
    return 3 * sum(total) / len(x)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of the best of `reps` n x n matmuls (after one warm-up) in `dtype` on `device`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        synchronise(device)
        t = time.perf_counter()
        a @ b
        synchronise(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


# The two loops -----------------------------------------------------------------------------------
def endless(x: torch.Tensor, batch_size: int, generator: torch.Generator):
    """harness.data.batches epoch after epoch (full batches only, so every step has the same shape)."""
    while True:
        for batch in batches(x, batch_size, generator):
            if len(batch) == batch_size:
                yield batch


def sequential_seconds(bench: Bench, seeds: list[int], steps: int, warmup: int, device: torch.device,
                       precision: str = "fp32") -> list[float]:
    """Per seed, the seconds of `steps` bare single-model steps (after `warmup` untimed ones): what a
    trial's training loop does per batch (harness.trial.single), with every facet on."""
    seconds, tc = [], bench.config.training
    for seed in seeds:
        model = bench.model(seed, device)
        optimiser = torch.optim.Adam(model.parameters(), lr=tc.lr)
        amp = Precision(precision, device)
        data = endless(bench.x, tc.batch_size, torch.Generator().manual_seed(seed))

        def step():
            with amp.autocast():
                loss = -model.loss_terms(next(data))["elbo"].mean()
            amp.step(loss, optimiser)

        seconds.append(timed(step, steps, warmup, device))
    return seconds


def packed_seconds(bench: Bench, seeds: list[int], steps: int, warmup: int, device: torch.device,
                   precision: str = "fp32") -> float:
    """Seconds of `steps` packed steps of `seeds` (after `warmup`): what harness.trial.packed does per batch."""
    tc = bench.config.training
    models = [bench.model(seed, device) for seed in seeds]
    params, buffers = pk.stack(models)
    template = models[0]
    optimiser = torch.optim.Adam(list(params.values()), lr=tc.lr)
    amp = Precision(precision, device)
    data = [endless(bench.x, tc.batch_size, torch.Generator().manual_seed(seed)) for seed in seeds]
    noise = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    dims = list(bench.config.model.latent_dims)

    def step():
        xs = torch.stack([next(d) for d in data])
        eps = pk.draw_noise(noise, tc.batch_size, dims, device)
        with amp.autocast():
            losses = pk.packed_losses(template, params, buffers, xs, eps)
        amp.step(losses.sum(), optimiser)

    return timed(step, steps, warmup, device)


def timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    synchronise(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return time.perf_counter() - t


@contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# Fixed per-trial costs ----------------------------------------------------------------------------
def fixed_costs(config: TrialConfig, device: torch.device, seed: int = 0) -> dict[str, float]:
    """Seconds of what one trial pays besides its training steps, in the order a trial pays them
    (harness.trial.setup.set_up, MFCVAE.prepare, harness.trial.evaluation.evaluate). The prior init is
    timed on the untrained encoder: the GMM's EM may take more or fewer iterations on pretrained latents."""
    from harness.trial.evaluation import evaluate
    from models.init import batch_statistics, data_dependent_init, fit_gmm
    from models.pretrain import pretrainer

    costs: dict[str, float] = {}
    clock = Stopwatch(device)
    ds = config.dataset
    with clock(costs, "data loading (files, split, to device)"):
        data = load_dataset(ds.name, ds.data_root, ds.download, ds.split_seed, ds.validation_fraction).to(device)
    with clock(costs, "model build and Adam"):
        torch.manual_seed(seed)
        model = build_model(config.model, data.image_shape, data.likelihood).to(device)
        torch.optim.Adam(model.parameters(), lr=config.training.lr)
    init = "data-dependent init (one 512 batch)" + ("" if config.model.init == "data" else ", if init: data")
    trial = copy.deepcopy(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = data.x_train[torch.randperm(len(data.x_train), generator=generator, device=device)[:512]]
    with clock(costs, init):
        data_dependent_init(trial, lambda: trial.loss_terms(batch, generator=generator))
    epochs = config.model.pretrain_epochs
    if epochs:  # linear in its epochs (stacked-denoising: per layer pair and end to end), so one is timed
        one_epoch: dict[str, float] = {}
        with clock(one_epoch, "epoch"):
            pretrainer(config.model.pretrain)(trial, data.x_train, 1, config.training.batch_size, config.training.lr, generator, lambda s: None)
        costs[f"{config.model.pretrain} pretraining ({epochs} epochs: one timed, times {epochs})"] = \
            one_epoch["epoch"] * epochs
    with clock(costs, f"prior init: encoder over the {len(data.x_train)} training images"):
        with batch_statistics(model):
            latents = model.latents(data.x_train, sample=config.model.prior_init_latents == "sample",
                                    generator=generator)
    for j, (prior, z) in enumerate(zip(model.priors, latents), start=1):
        with clock(costs, f"prior init: GMM fit, facet {j} ({prior.n_clusters} components, float64)"):
            fit_gmm(z, prior.n_clusters, seed)
    batch_size = config.evaluation.batch_size
    images = len(data.x_val) + len(data.x_test)
    with clock(costs, f"one evaluation, all facets on ({images} val+test images)"):
        evaluate(model, data, batch_size, seed)
    if model.n_facets > 1 and config.progressive_steps:
        model.alphas.zero_()
        model.alphas[-1] = 1.0
        with clock(costs, "one evaluation at step 1's alphas (+ ELBO at training alphas)"):
            evaluate(model, data, batch_size, seed)
    return costs


class Stopwatch:
    def __init__(self, device: torch.device):
        self.device = device

    @contextmanager
    def __call__(self, costs: dict[str, float], what: str):
        synchronise(self.device)
        t = time.perf_counter()
        yield
        synchronise(self.device)
        costs[what] = time.perf_counter() - t


def import_seconds() -> float:
    """Wall seconds of a fresh Python that imports what a trial imports (torch, harness.trial.single,
    sklearn.mixture) and exits: paid once per trial process, once per pack."""
    code = "import torch, harness.trial.single, harness.trial.packed, sklearn.mixture, sklearn.cluster"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT,
                   env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    return time.perf_counter() - t


# Trainer against a bare loop ---------------------------------------------------------------------
def trainer_vs_bare(bench: Bench, data_name: str, epochs: int, tmp: Path, n_threads: int) -> dict[str, float]:
    """samples/s of harness.trial.single.run_trial (training time only; evaluation every epoch) and of a bare
    loop of the same model over the same number of epochs, bare before and after (the faster counts)."""
    from harness.trial.single import run_trial

    config = bench.config.model_copy(deep=True)
    config = TrialConfig.model_validate({**config.model_dump(mode="json"), "training": {
        **config.training.model_dump(mode="json"), "progressive": False, "epochs_per_step": [epochs],
        "threads": n_threads, "device": "cpu", "fade_in_batches": None}})
    n = len(bench.x)
    steps = epochs * (n // config.training.batch_size)
    bare = Bench(bench.label, config, bench.x, bench.likelihood, bench.models)
    first = sequential_seconds(bare, [0], steps, 0, torch.device("cpu"))[0]
    result = run_trial(config, tmp / f"trainer-{bench.label}", log=lambda s: None)
    again = sequential_seconds(bare, [0], steps, 0, torch.device("cpu"))[0]
    bare_rate = steps * config.training.batch_size / min(first, again)
    return {"trainer": result["samples_per_s"], "bare": bare_rate, "eval_share": result["eval_share"],
            "data": data_name}


# Printing ------------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list], title: str) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w)  # noqa: E731
                                    for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([title, line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def rate(samples: float, seconds: float) -> str:
    return f"{samples / seconds:,.0f}"


def share(flops: float, samples: float, seconds: float, peak: float) -> str:
    return f"{flops * samples / seconds / peak:.0%}"


def packing_rows(bench: Bench, n_threads: int, pack_sizes: list[int], steps: int, warmup: int,
                 peak: float, device: torch.device, precision: str = "fp32", flops: Optional[float] = None,
                 extra: tuple = ()) -> list[list]:
    """Rows of table 1 for one model at one thread count (or one GPU precision)."""
    batch = bench.config.training.batch_size
    flops = flops if flops is not None else flops_per_sample(bench.model(0, device), bench.x[:batch])
    single = sequential_seconds(bench, list(range(max(pack_sizes))), steps, warmup, device, precision)
    rows = []
    for s in pack_sizes:
        packed = packed_seconds(bench, list(range(s)), steps, warmup, device, precision)
        one_after_another = sum(single[:s])
        samples = s * steps * batch
        rows.append([bench.label, *extra, n_threads, s, rate(samples, packed), rate(samples, one_after_another),
                     f"{one_after_another / packed:.2f}x", share(flops, samples, packed, peak),
                     share(flops, samples, one_after_another, peak)])
    return rows


PACKING_HEADERS = ["model", "threads", "S", "packed samples/s", "sequential samples/s", "packed/sequential",
                   "packed % of matmul", "sequential % of matmul"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 thread, S = 1, 2, a few steps")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default 1 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="pack sizes S (default 1 2 4 8)")
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    quick = args.quick
    thread_counts = args.threads or ([1] if quick else [1, 2])
    pack_sizes = args.seeds or ([1, 2] if quick else [1, 2, 4, 8])
    # (steps, warm-up) per model: the digits model takes ~5 ms a step at 1 thread, the ladder ~250 ms
    steps = {"demo digits": (3, 1) if quick else (150, 10), "mnist FC ladder": (2, 1) if quick else (16, 2)}
    torch.distributions.Distribution.set_default_validate_args(False)  # as the trainer does
    cpu = torch.device("cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        name = "quick: random MNIST-shaped images" if quick else dataset_name(tmp, args.data_root)
        demo = demo_config()
        digits = load_dataset("digits", None, False, demo.dataset.split_seed, demo.dataset.validation_fraction)
        mnist = mnist_config("fashion-mnist" if quick else name)  # quick: its shape only, run on random data
        if quick:
            x_mnist, mnist_likelihood = random_images(4 * 512, (1, 28, 28), cpu), "bernoulli"
        else:
            mnist_data = load_dataset(name, args.data_root if name == "fashion-mnist" else None, False,
                                      mnist.dataset.split_seed, mnist.dataset.validation_fraction)
            x_mnist, mnist_likelihood = mnist_data.x_train, mnist_data.likelihood
            del mnist_data
        benches = [Bench("demo digits", demo, digits.x_train, digits.likelihood),
                   Bench("mnist FC ladder", mnist, x_mnist, mnist_likelihood)]
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), "
              f"MNIST-shaped data: {name}; {'QUICK: numbers are not measurements' if quick else 'full run'}",
              flush=True)
        rows, peaks, matmul_n = [], {}, 1024 if quick else 2048
        for n_threads in thread_counts:
            with threads(n_threads):
                peaks[n_threads] = matmul_rate(cpu, n=matmul_n)
                for bench in benches:
                    n, warm = steps[bench.label]
                    rows += packing_rows(bench, n_threads, pack_sizes, n, warm, peaks[n_threads], cpu)
                    print(f"  measured {bench.label} at {n_threads} threads", file=sys.stderr, flush=True)
        flops = {b.label: flops_per_sample(b.model(0, cpu), b.x[:b.config.training.batch_size]) for b in benches}
        print()
        print(table(PACKING_HEADERS, rows, "Table 1: S seeds packed (one stacked model under vmap) vs the same S "
                                           "seeds one after another, bare training loops, fp32"))
        print(f"fp32 matmul rate ({matmul_n}x{matmul_n}, best of 3): " + ", ".join(
            f"{n} threads {peak / 1e9:.1f} GFLOP/s" for n, peak in peaks.items()))
        print("FLOPs per sample (fwd+bwd, Linear/conv layers x3): " + ", ".join(
            f"{label} {f / 1e6:.2f} MFLOP" for label, f in flops.items()))

        # Fixed costs: the digits model, and the MNIST ladder on the full data (skipped when quick)
        __import__("sklearn.mixture")  # its import is the imports row's, not the first GMM fit's
        with threads(thread_counts[-1]):
            fixed = {"demo digits": fixed_costs(demo, cpu)}
            if not quick:
                fixed["mnist FC ladder"] = fixed_costs(mnist_config(name), cpu)
        labels = list(dict.fromkeys(k for costs in fixed.values() for k in costs))
        fixed_rows = [[label] + [f"{costs[label]:.2f}" if label in costs else "-" for costs in fixed.values()]
                      for label in labels]
        fixed_rows.append(["total"] + [f"{sum(costs.values()):.2f}" for costs in fixed.values()])
        imports = "skipped (--quick)" if quick else f"{import_seconds():.2f}"
        fixed_rows.append(["imports of a fresh process (torch, harness, sklearn)", imports] + [""] * (len(fixed) - 1))
        print()
        print(table(["fixed per-trial cost, seconds", *fixed], fixed_rows,
                    f"Table 2: fixed costs per trial at {thread_counts[-1]} threads (a pack pays data loading and "
                    "imports once, build and prior init per seed; evaluation per seed at every evaluation)"))

        # Trainer against a bare loop, at the last thread count
        epochs = {"demo digits": 1 if quick else 10, "mnist FC ladder": 1}
        overhead_rows = []
        with threads(thread_counts[-1]):
            for bench in benches[:1] if quick else benches:
                found = trainer_vs_bare(bench, name, epochs[bench.label], tmp, thread_counts[-1])
                overhead_rows.append([bench.label, epochs[bench.label], f"{found['trainer']:,.0f}",
                                      f"{found['bare']:,.0f}", f"{found['trainer'] / found['bare']:.3f}",
                                      f"{found['eval_share']:.1%}"])
        print()
        print(table(["model", "epochs", "trainer samples/s", "bare samples/s", "trainer/bare", "evaluation share"],
                    overhead_rows, f"Table 3: the trainer against a bare loop, {thread_counts[-1]} threads "
                                   "(training time; evaluation every epoch)"))
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
