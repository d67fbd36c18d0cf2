"""The `mfcbench` command line."""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path

from harness.datasets_command import datasets_command

COMMANDS_GROUP = "mfcbench.commands"  # entry points: callables that add subcommands to the parser


def _cmd_train(args) -> int:
    from tqdm import tqdm

    from harness.layout import RUN_FILES
    from harness.paths import folder_problem
    from harness.trial.config_io import load_trial_config
    from harness.trial.errors import ResumeFailed, TrialFailed
    from harness.trial.single import run_trial

    if args.resume:
        _refuse_packed_resume(args)
        config, out = _config_to_resume(args)
        if config is None:
            return 0
    else:
        config = load_trial_config(args.config, args.set or [])
        out = Path(args.out) if args.out else _default_run_folder(args.config, config)
        if problem := folder_problem(out, "--out"):
            raise SystemExit(f"mfcbench train: {problem} (nothing was changed)")
        if any((out / name).exists() for name in RUN_FILES):
            raise SystemExit(f"mfcbench train: {out} already holds a run; pass --resume to continue it, or give a "
                             "new --out folder (nothing was changed)")
        if out.is_dir() and any(out.iterdir()):
            raise SystemExit(f"mfcbench train: --out {out} is a folder with other files in it; a run needs a new "
                             "or empty folder (nothing was changed)")
    if config.packed:
        return _train_packed(config, out)
    try:
        result = run_trial(config, out, resume=args.resume, log=tqdm.write, progress=True)
    except ResumeFailed as error:
        print(f"mfcbench train: {error}", file=sys.stderr)
        return 1
    except TrialFailed as error:
        print(f"trial failed: {error}\nfailure record: {out / 'result.json'}", file=sys.stderr)
        return 1
    print(f"done in {result['wall_time_s']:.1f}s; results in {out}/ (metrics.jsonl, result.json, checkpoint.pt, "
          f"tensorboard/)")
    return 0


def _train_packed(config, out: Path) -> int:
    """training.seeds: one packed process, one ordinary run folder per seed (out/seed<s>)."""
    from tqdm import tqdm

    from harness.trial.errors import TrialFailed
    from harness.trial.packed import run_packed, seed_folder

    try:
        results = run_packed(config, out, log=tqdm.write, progress=True)
    except TrialFailed as error:
        print(f"packed trial failed: {error}\nfailure records: {out}/seed<s>/result.json", file=sys.stderr)
        return 1
    failed = {seed: r for seed, r in results.items() if r["status"] != "completed"}
    for seed, result in failed.items():
        print(f"seed {seed} failed: {result['error']}\nfailure record: {seed_folder(out, seed) / 'result.json'}",
              file=sys.stderr)
    wall = max(r["wall_time_s"] for r in results.values())
    print(f"done in {wall:.1f}s; {len(results) - len(failed)} of {len(results)} seeds completed; results in "
          f"{out}/seed<s>/ (metrics.jsonl, result.json, checkpoint.pt, tensorboard/), seeds "
          f"{', '.join(map(str, results))}")
    return 1 if failed else 0


def _seeds_label(seeds: list[int]) -> str:
    """0-3 for a run of consecutive seeds (three or more), otherwise the seeds joined by _ (1_5_9)."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return "_".join(map(str, seeds))


def _default_run_folder(config_source: str | None, config) -> Path:
    """Where `train` puts a run without --out: runs/<config file or preset name>-seed<seed>, or
    -seeds<label> for packed seeds (holding one run folder per seed)."""
    stem = Path(str(config_source or 'default')).stem
    if config.packed:
        return Path(f"runs/{stem}-seeds{_seeds_label(config.training.seeds)}")
    return Path(f"runs/{stem}-seed{config.training.seed}")


def _refuse_packed_resume(args) -> None:
    """Packed seeds are resumed one seed folder at a time, each as the single run it is: refuse a
    folder of packed seeds, and --set training.seeds, with --resume."""
    from harness.trial.config import ConfigError
    from harness.trial.config_io import load_trial_config

    config = None
    if not args.out or args.config or args.set:
        try:
            config = load_trial_config(args.config, args.set or [])
        except ConfigError:
            if not args.out:
                raise
            # with --out, --set applies to the run's own config: _config_to_resume checks it there
    out = Path(args.out) if args.out else _default_run_folder(args.config, config)
    seeds = sorted(p for p in out.glob("seed*") if (p / "config.yaml").is_file()) if out.is_dir() else []
    packed_folder = bool(seeds) and not (out / "config.yaml").exists()
    if not packed_folder and not (config is not None and config.packed):
        return
    if not packed_folder:
        raise SystemExit("mfcbench train --resume: packed seeds (training.seeds) are not resumed as a pack; resume "
                         "each seed's run folder as a single run: mfcbench train --out PACKED_FOLDER/seed<s> --resume "
                         "(nothing was changed)")
    unfinished = [p.name for p in seeds if _run_status(p) != "completed"]
    state = f"not completed: {', '.join(unfinished)}" if unfinished else "every seed completed"
    example = out / (unfinished[0] if unfinished else seeds[0].name)
    raise SystemExit(f"mfcbench train --resume: {out} holds packed seeds, one run folder each ({state}); resume "
                     f"each seed folder as a single run: mfcbench train --out {example} --resume "
                     "(nothing was changed)")


def _run_status(run: Path):
    import json

    try:
        return json.loads((run / "result.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _config_to_resume(args):
    """(the run's own config, with any --config/--set changes that leave its trained state alone, run folder);
    (None, folder) for a run that already completed."""
    import json

    from harness.trial.config import TrialConfig
    from harness.trial.config_io import (RESUME_SAFE_KEYS, apply_overrides, flat, load_trial_config, read_run_config,
                                         read_yaml, resume_config, validate)

    out = Path(args.out) if args.out else _default_run_folder(args.config, load_trial_config(args.config,
                                                                                             args.set or []))
    if not out.is_dir():
        raise SystemExit(f"mfcbench train --resume: nothing to resume at {out}: no such folder")
    if not (out / "config.yaml").exists():
        raise SystemExit(f"mfcbench train --resume: nothing to resume at {out}: it holds no config.yaml, so it is "
                         "not a run folder")
    saved = read_run_config(out)  # a run from before the validation split keeps training on all its images
    try:
        status = json.loads((out / "result.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None  # no readable result yet: a killed run
    if status == "completed":
        print(f"{out} already completed ({saved.training.total_epochs} epochs); nothing to resume")
        return None, out
    if not (out / "checkpoint.pt").exists():
        raise SystemExit(f"mfcbench train --resume: nothing to resume at {out}: it has no checkpoint.pt (the run "
                         f"stopped before its first evaluation). Start it again in a new folder: mfcbench train "
                         f"--config {out / 'config.yaml'} --out NEW_FOLDER")
    if not (args.config or args.set):
        return saved, out
    # --set applies to the run's own config (or to --config, when given), then must agree with it
    base = read_yaml(args.config) if args.config else saved.model_dump(mode="json")
    requested = validate(TrialConfig, apply_overrides(base, args.set or []), "trial config")
    config, changed = resume_config(saved, requested)
    if changed:
        given = set(flat(base)) | {setting.split("=", 1)[0] for setting in args.set or []}

        def line(key, old, new):
            if key in given:
                return f"  {key}: the run has {old!r}, you asked for {new!r}"
            return (f"  {key}: the run has {old!r}, the default is now {new!r} (you did not set it; "
                    f"--set {key}={json.dumps(old)} keeps the run's)")
        lines = "\n".join(line(key, old, new) for key, (old, new) in changed.items())
        raise SystemExit(f"mfcbench train --resume: {out} continues with its own config.yaml; these changes would "
                         f"alter what it trains:\n{lines}\nResume without them (only {', '.join(RESUME_SAFE_KEYS)} may "
                         "change), or start a new run with another --out. Nothing was changed.")
    return config, out


def _stop_ray() -> None:
    """Disconnect (and stop a local Ray) so its buffered worker logs print before our last lines.
    Ray is imported only if something imported it: a sweep refused before Ray started stays fast."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _cmd_demo(args) -> int:
    """sweeps/demo.yaml on a local Ray, then its report; a second call finishes or reuses the sweep."""
    from harness.sweep.expand import pack_grid
    from harness.sweep.load import load_sweep
    from harness.sweep.checks import SweepError, has_tune_state
    from harness.sweep.tune.driver import SweepStopped, run_sweep

    demo = Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml"
    if not demo.exists():
        raise SystemExit(f"mfcbench demo: {demo} not found; run it from a checkout of the repository")
    sweep, trials = load_sweep(demo)
    storage = Path(args.storage)
    experiment = storage.resolve() / sweep.name
    # The report is `mfcbench report` (registered by reports); its arguments are checked before the sweep runs
    report = build_parser().parse_args(["report", str(experiment), "--out", str(experiment / "report"),
                                        "--lpips-samples", str(args.lpips_samples)])
    resume = has_tune_state(experiment)
    packing = pack_grid(trials, sweep.pack)
    packed = f" in {len(packing.trials)} trials ({packing.packed} packed)" if packing.packed else ""
    print(f"demo: {len(trials)} runs{packed} ({', '.join(sweep.variants)}) x seeds on {sweep.base['dataset']['name']}, "
          f"local Ray; experiment folder {experiment}" + (" (resuming)" if resume else ""))
    try:
        run_sweep(sweep, trials, storage, resume=resume, source_text=demo.read_text(), verbose=args.verbose)
    except SweepError as error:
        print(f"mfcbench demo: {error}", file=sys.stderr)
        return 2
    except SweepStopped as stopped:
        print(f"demo stopped before it finished: {len(stopped.unfinished)} trial(s) had not ended; "
              "`mfcbench demo` again continues it", flush=True)
        return 130
    finally:
        _stop_ray()
    return report.func(report)


def _cmd_sweep(args) -> int:
    from harness.sweep.checks import SweepError, address_problem, plan_sweep
    from harness.storage import is_bucket
    from harness.sweep.tune.driver import SweepStopped, run_sweep
    from harness.trial.config import ConfigError

    if problem := address_problem(args.address):
        print(f"mfcbench sweep: {problem}", file=sys.stderr)
        return 2
    try:
        # Every check that needs no Ray, the same for --dry-run: the whole file, --name, storage, --resume.
        plan = plan_sweep(args.file, args.storage, args.name, args.resume, args.retry_errored,
                          args.trust_experiment_dir, args.tracker, resume_if_exists=args.resume_if_exists)
    except (ConfigError, SweepError) as error:
        print(f"mfcbench sweep: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan.describe())
        return 0
    experiment = plan.location
    try:
        results = run_sweep(plan.sweep, plan.trials, plan.storage, name=plan.name, address=args.address,
                            resume=plan.resume, retry_errored=args.retry_errored and plan.resume,
                            source_text=plan.source_text, wait_for_lock=args.resume_if_exists,
                            ray_temp_dir=args.ray_temp_dir, verbose=args.verbose, allow_pending=args.allow_pending,
                            trust_experiment_dir=args.trust_experiment_dir, tracker=args.tracker)
    except SweepError as error:
        print(f"mfcbench sweep: {error}", file=sys.stderr)
        return 2
    except SweepStopped as stopped:
        flags = [f"--{flag.replace('_', '-')} {value}" for flag, value in
                 (("address", args.address), ("tracker", args.tracker), ("ray_temp_dir", args.ray_temp_dir)) if value]
        again = " ".join([f"mfcbench sweep {args.file} --storage {plan.storage} --name {plan.name} --resume", *flags])
        print(f"sweep stopped before it finished: {len(stopped.unfinished)} trial(s) had not ended; Ray Tune saved "
              f"its state in {experiment}; continue with: {again}", flush=True)
        return 130
    finally:
        _stop_ray()
    errors = sum(1 for r in results if r.error is not None)
    print(f"sweep finished: {len(results)} trials, {errors} errored; experiment folder {experiment}")
    if args.tracker == "mlflow":
        from harness.sweep.tune.tracking import mlflow_tracking_uri

        print(f"MLflow: mlflow ui --backend-store-uri {mlflow_tracking_uri(plan.experiment_dir)}")
    out = plan.name if is_bucket(plan.storage) else plan.experiment_dir  # a bucket's report goes here
    print(f"report it with: mfcbench report {experiment} --out {out}/report")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfcbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list datasets, or draw examples of one")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="with show: a dataset name (see `mfcbench datasets`) or npz:PATH")
    p.add_argument("--factor", help="one row of examples per value of this factor (default: the first)")
    p.add_argument("--out", default="dataset.png", help="image file to write: .png, .pdf or .svg (default dataset.png)")
    p.add_argument("--per-row", type=int, default=10, help="examples per row, >= 1")
    p.add_argument("--data-root", help="folder holding downloaded datasets")
    p.set_defaults(func=datasets_command)

    p = sub.add_parser("train", help="train and evaluate one trial")
    p.add_argument("--config", help="trial YAML file or preset (paper-mnist, paper-3dshapes, paper-svhn, ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.latent_dims=[5,5]")
    p.add_argument("--out", help="run folder (default runs/<config>-seed<seed>); with training.seeds the folder "
                                 "of one run folder per seed, <out>/seed<s> (default runs/<config>-seeds<a>-<b>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the run's own config.yaml")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sweep", help="run a sweep file on Ray Tune")
    p.add_argument("file", help="a sweep YAML, e.g. sweeps/demo.yaml")
    p.add_argument("--address", help="join an existing Ray cluster, HOST:PORT or auto (default: start a local one "
                                     "on loopback)")
    p.add_argument("--storage", help="folder for experiment folders (default: the file's `storage`)")
    p.add_argument("--name", help="experiment name (default: the file's `name`)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep in the same storage")
    p.add_argument("--resume-if-exists", action="store_true",
                   help="resume the experiment if Ray Tune started it, else start it; waits for the lease of a "
                        "lock a lost driver left (for SLURM requeues and RayJob retries)")
    p.add_argument("--retry-errored", action="store_true", help="with --resume: run errored trials again")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check, print the trials, resources and experiment folder; start nothing")
    p.add_argument("--ray-temp-dir", help="where a local Ray keeps its session files (default /tmp/ray)")
    p.add_argument("--allow-pending", action="store_true",
                   help="start even if no node can hold a trial's resources now (an autoscaling cluster adds one)")
    p.add_argument("--trust-experiment-dir", action="store_true",
                   help="with --resume: un-pickle Ray's state even if others can write the experiment folder")
    p.add_argument("--tracker", choices=["mlflow"],
                   help="also log every trial to MLflow in EXPERIMENT/mlflow.db (needs mfcbench[mlflow])")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="Ray Tune's own status and result tables, worker output and INFO logs (-vv: more)")
    p.set_defaults(func=_cmd_sweep)

    # Commands other packages register (reports: `report`, `lpips-weights`), so harness never imports them
    for entry_point in entry_points(group=COMMANDS_GROUP):
        entry_point.load()(sub)

    p = sub.add_parser("demo", help="the embedded default: offline data, runs on a laptop")
    p.add_argument("--storage", default="results", help="folder for the experiment (default ./results)")
    p.add_argument("--lpips-samples", type=int, default=500)
    p.add_argument("-v", "--verbose", action="count", default=0, help="Ray Tune's own tables and logs too")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before any heavy import: --help answers at once
    from harness.data import DatasetError
    from harness.trial.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, DatasetError) as error:
        print(f"mfcbench: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
