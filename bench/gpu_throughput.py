"""bench/train_throughput.py's table on a CUDA GPU: S = 1..32 seeds packed against the same seeds one after
another, in fp32, bf16 and fp16, eagerly and as CUDA graphs; the fixed per-trial costs; and the projected
time of a 10-seed paper-mnist study (the target: under 10 minutes on one H100-class GPU).

    python bench/gpu_throughput.py              # about 4-6 minutes on an H100
    python bench/gpu_throughput.py --quick      # a smoke run (S = 1, 2, a few steps)

Needs CUDA; without it, it says so and exits 1 (`--cpu-smoke` runs the eager rows on the CPU, to test
this script where no GPU is, with numbers that mean nothing).

Modes:
- eager: what harness.trial.single (S = 1 ... one after another) and harness.trial.packed run today, step for step,
  under harness.trial.precision's autocast (fp16 with its GradScaler);
- graph: the same step (forward, backward, Adam with capturable=True) captured once as a CUDA graph and
  replayed: no Python and no kernel launches per step. Its batches are gathered inside the graph from a
  random index filled before each replay, and its noise is drawn inside the graph from the default CUDA
  generator (the trainer draws per seed). fp16 is not graphed: the GradScaler reads its inf check back
  to the host every step. A configuration whose capture fails says so in its row, with the error below.
  torch.compile was not tried (its compile time per pack size would not fit the budget).

fp32 is true fp32 (TF32 off, PyTorch's default); each row's share is of the matmul rate of its own
precision (an 8192^2 matmul in fp32, bf16 or fp16).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

from train_throughput import (Bench, dataset_name, demo_config, fixed_costs, flops_per_sample, matmul_rate,
                              mnist_config, packed_seconds, random_images, rate, sequential_seconds, share, table,
                              timed)

from harness.data import load_dataset  # noqa: E402  (train_throughput put this tree on sys.path)
from harness.trial.precision import AUTOCAST_DTYPES  # noqa: E402
from models import packed as pk  # noqa: E402

PAPER_EPOCHS = 402  # Table 3: 201 epochs per progressive step, two steps
STUDY_SEEDS = 10
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def graph_autocast(precision: str):
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype else nullcontext()


def capture(body, refill, device: torch.device):
    """A CUDA graph of `body()` (forward, backward, optimiser step), after three warm-up runs on a side
    stream (PyTorch's whole-network capture recipe); returns the step to time: refill, replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            refill()
            body(zero=True)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    body.optimiser.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        body(zero=False)

    def step():
        refill()
        graph.replay()

    return step


class Body:
    """The graphed step's callable: the optimiser rides along so capture() can zero its grads."""

    def __init__(self, run, optimiser):
        self.run, self.optimiser = run, optimiser

    def __call__(self, zero: bool):
        if zero:
            self.optimiser.zero_grad(set_to_none=True)
        self.run()


def graphed_sequential_seconds(bench: Bench, seeds: list[int], steps: int, warmup: int, device: torch.device,
                               precision: str) -> list[float]:
    seconds, tc = [], bench.config.training
    for seed in seeds:
        model = bench.model(seed, device)
        optimiser = torch.optim.Adam(model.parameters(), lr=tc.lr, capturable=True)
        index = torch.zeros(tc.batch_size, dtype=torch.long, device=device)

        def run():
            with graph_autocast(precision):
                loss = -model.loss_terms(bench.x[index])["elbo"].mean()
            loss.backward()
            optimiser.step()

        def refill():
            torch.randint(len(bench.x), index.shape, device=device, out=index)

        seconds.append(timed(capture(Body(run, optimiser), refill, device), steps, warmup, device))
    return seconds


def graphed_packed_seconds(bench: Bench, seeds: list[int], steps: int, warmup: int, device: torch.device,
                           precision: str) -> float:
    tc = bench.config.training
    models = [bench.model(seed, device) for seed in seeds]
    params, buffers = pk.stack(models)
    template = models[0]
    optimiser = torch.optim.Adam(list(params.values()), lr=tc.lr, capturable=True)
    index = torch.zeros(len(seeds), tc.batch_size, dtype=torch.long, device=device)
    dims = list(bench.config.model.latent_dims)

    def run():
        eps = [torch.randn(len(seeds), tc.batch_size, d, device=device) for d in dims]
        with graph_autocast(precision):
            losses = pk.packed_losses(template, params, buffers, bench.x[index], eps)
        losses.sum().backward()
        optimiser.step()

    def refill():
        torch.randint(len(bench.x), index.shape, device=device, out=index)

    return timed(capture(Body(run, optimiser), refill, device), steps, warmup, device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: S = 1, 2, a few steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="pack sizes (default 1 2 4 8 10 16 32)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=list(MATMUL_DTYPES))
    parser.add_argument("--modes", nargs="+", default=["eager", "graph"], choices=["eager", "graph"])
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench/gpu_throughput.py needs a CUDA GPU and none is visible here (torch.cuda.is_available() is "
              "False); on a CPU run bench/train_throughput.py", file=sys.stderr)
        return 1
    quick = args.quick or args.cpu_smoke
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    precisions = [p for p in args.precisions if not (args.cpu_smoke and p == "fp16")]
    modes = [m for m in args.modes if not (args.cpu_smoke and m == "graph")]
    pack_sizes = args.seeds or ([1, 2] if quick else [1, 2, 4, 8, 10, 16, 32])
    steps = {"demo digits": (3, 1) if quick else (40, 5), "mnist FC ladder": (3, 1) if quick else (30, 5)}
    torch.distributions.Distribution.set_default_validate_args(False)
    started = time.perf_counter()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--cpu-smoke)"
    with tempfile.TemporaryDirectory() as tmp:
        # Fashion-MNIST when installed, else MNIST-shaped random images in an npz; quick: random tensors
        name = None if quick else dataset_name(Path(tmp), args.data_root)
        print(f"{gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}; TF32 matmul "
              f"{torch.backends.cuda.matmul.allow_tf32}; MNIST-shaped data: {name or 'random images'}"
              + ("; QUICK: numbers are not measurements" if quick else ""), flush=True)
        demo = demo_config(device.type)
        digits = load_dataset("digits", None, False, demo.dataset.split_seed, demo.dataset.validation_fraction)
        mnist = mnist_config(name or "fashion-mnist", device.type)  # quick: the shape validates without files
        if name:
            root = args.data_root if name == "fashion-mnist" else None
            if root:
                mnist = mnist.model_copy(update={"dataset": mnist.dataset.model_copy(update={"data_root": str(root)})})
            data = load_dataset(name, root, False, mnist.dataset.split_seed, mnist.dataset.validation_fraction)
            x_mnist, likelihood = data.x_train.to(device), data.likelihood
            del data
        else:
            x_mnist, likelihood = random_images(4096, (1, 28, 28), device), "bernoulli"
        benches = [Bench("demo digits", demo, digits.x_train.to(device), digits.likelihood),
                   Bench("mnist FC ladder", mnist, x_mnist, likelihood)]
        peaks = {p: matmul_rate(device, MATMUL_DTYPES[p], n=1024 if quick else 8192, reps=5) for p in precisions}
        print("matmul rate: " + ", ".join(f"{p} {peak / 1e12:.1f} TFLOP/s" for p, peak in peaks.items()), flush=True)
        rows, errors, best = [], [], {}
        study_pack = min(pack_sizes, key=lambda k: abs(k - STUDY_SEEDS))  # its rate projects the 10-seed study
        for bench in benches:
            n_steps, warm = steps[bench.label]
            batch = bench.config.training.batch_size
            flops = flops_per_sample(bench.model(0, device), bench.x[:batch])
            for precision in precisions:
                for mode in modes:
                    if mode == "graph" and precision == "fp16":
                        continue  # the GradScaler syncs with the host every step
                    what = f"{bench.label} {precision} {mode}"
                    try:
                        if mode == "eager":
                            single = sequential_seconds(bench, list(range(max(pack_sizes))), n_steps, warm, device,
                                                        precision)
                        else:
                            single = graphed_sequential_seconds(bench, list(range(max(pack_sizes))), n_steps, warm,
                                                                device, precision)
                    except Exception:  # noqa: BLE001  (a row that says why, not a lost run)
                        errors.append((what + " sequential", traceback.format_exc()))
                        single = None
                    for s in pack_sizes:
                        samples = s * n_steps * batch
                        try:
                            if mode == "eager":
                                packed = packed_seconds(bench, list(range(s)), n_steps, warm, device, precision)
                            else:
                                packed = graphed_packed_seconds(bench, list(range(s)), n_steps, warm, device,
                                                                precision)
                        except Exception as error:  # noqa: BLE001
                            errors.append((f"{what} packed S={s}", traceback.format_exc()))
                            rows.append([bench.label, precision, mode, s, f"failed: {type(error).__name__}",
                                         "", "", "", ""])
                            continue
                        sequential = sum(single[:s]) if single else None
                        rows.append([bench.label, precision, mode, s, rate(samples, packed),
                                     rate(samples, sequential) if sequential else "failed",
                                     f"{sequential / packed:.2f}x" if sequential else "",
                                     share(flops, samples, packed, peaks[precision]),
                                     share(flops, samples, sequential, peaks[precision]) if sequential else ""])
                        if bench.label == "mnist FC ladder" and s == study_pack:
                            best[(precision, mode)] = (s, samples / packed, sequential and samples / sequential)
                    print(f"  measured {what}", file=sys.stderr, flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print()
        print(table(["model", "precision", "mode", "S", "packed samples/s", "sequential samples/s",
                     "packed/sequential", "packed % of matmul", "sequential % of matmul"], rows,
                    f"S seeds packed vs the same S seeds one after another, bare training loops, on {gpu}"))
        for what, text in errors:
            print(f"\n{what} failed:\n{text.strip()}")

        fixed = {"demo digits": fixed_costs(demo, device)}
        if name:
            fixed["mnist FC ladder"] = fixed_costs(mnist, device)
        labels = list(dict.fromkeys(k for costs in fixed.values() for k in costs))
        fixed_rows = [[label] + [f"{costs[label]:.2f}" if label in costs else "-" for costs in fixed.values()]
                      for label in labels]
        fixed_rows.append(["total"] + [f"{sum(costs.values()):.2f}" for costs in fixed.values()])
        print()
        print(table(["fixed per-trial cost, seconds", *fixed], fixed_rows,
                    f"Fixed costs per trial on {gpu} (GMM fits on the CPU)"))
        if "mnist FC ladder" in fixed and best:
            print()
            print(study_projection(fixed["mnist FC ladder"], best, len(x_mnist)))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


def study_projection(costs: dict[str, float], best: dict, n_train: int) -> str:
    """Minutes of a 10-seed paper-mnist study (402 epochs, evaluation every epoch): per-seed build and
    prior init, training at the measured packed (and sequential) rate, and 402 evaluations per seed
    (the first 201 at step 1's alphas)."""
    once = sum(v for k, v in costs.items() if k.startswith("data loading"))
    per_seed = sum(v for k, v in costs.items() if k.startswith(("model build", "prior init")))
    ones = next((v for k, v in costs.items() if k.startswith("one evaluation, all")), 0.0)
    faded = next((v for k, v in costs.items() if k.startswith("one evaluation at step 1")), ones)
    evaluation = PAPER_EPOCHS // 2 * (ones + faded)
    lines = [f"Projected {STUDY_SEEDS}-seed paper-mnist study ({PAPER_EPOCHS} epochs of {n_train} images, evaluation "
             "every epoch), minutes: packed in one process vs one seed after another"]
    for (precision, mode), (s, packed, sequential) in sorted(best.items(), key=lambda kv: -kv[1][1]):
        samples = STUDY_SEEDS * PAPER_EPOCHS * n_train
        common = once + STUDY_SEEDS * (per_seed + evaluation)
        seq = f"{(common + samples / sequential) / 60:.1f}" if sequential else "-"
        lines.append(f"  {precision} {mode} (rates of S={s}): packed {(common + samples / packed) / 60:.1f}, "
                     f"sequential {seq}  (of which evaluation {STUDY_SEEDS * evaluation / 60:.1f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
