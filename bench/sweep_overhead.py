"""What the sweep machinery itself costs per trial, at many trials: N grid trials that do no training
but report like a real trial (20 evaluations of a realistic metric dict, a run folder with config.yaml,
metrics.jsonl and result.json) go through the real harness.sweep.tune.driver.run_sweep and
harness.sweep.tune.worker.trainable on a local 2-CPU Ray. Only harness.trial.single.run_trial is replaced, inside
each Ray worker (Ray's worker_process_setup_hook), by a stand-in that does no work.

    .venv/bin/python bench/sweep_overhead.py [--trials 200]      # users: --trials 2000

Prints driver CPU per trial and per trial-evaluation (the driver process only, during run_sweep),
wall time per trial beyond the trial's own work, files and bytes per trial under storage (Tune's
and mfcbench's bookkeeping, and the run folders separately), and the driver's RSS at N/2 and N.
Targets: <= 10 files and <= 100 KB per trial of bookkeeping, < 50 ms driver CPU per
trial-evaluation, RSS flat in N.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

# This tree's harness, not the editable install's, in the driver and (through the setup hook) in
# every Ray worker, so a second checkout of the repo can be measured with the same venv.
REPO_ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO_ROOT)

import yaml  # noqa: E402

EVALUATIONS = 20
SLOTS = 2  # Ray CPUs; each trial takes 1


def _stand_in_trainer() -> None:
    """Ray worker setup hook: harness.trial.single.run_trial becomes a trainer that only reports."""
    import json
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, REPO_ROOT)
    import harness.trial.single

    def run_trial(config, run_dir, resume=False, reporter=None, log=print, progress=False):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(json.dumps(config.model_dump(mode="json")))
        seed = config.training.seed
        metrics = {}
        with open(run_dir / "metrics.jsonl", "a") as out:
            for epoch in range(1, EVALUATIONS + 1):
                time.sleep(EVAL_SECONDS)
                metrics = {"epoch": epoch, "step": epoch * 118, "progressive_step": min(epoch // 5, 2),
                           "alphas": [1.0, min(1.0, epoch / 10), min(1.0, epoch / 20)],
                           "train_loss": 180.0 - epoch + seed * 1e-3, "elbo": -170.0 + epoch / 3,
                           "log_px": -150.0 + epoch / 3}
                for j in (1, 2, 3):
                    metrics[f"kl_z/facet{j}"] = 4.0 + j / epoch
                    metrics[f"kl_c/facet{j}"] = 0.5 + j / epoch
                    for factor in ("digit", "style"):
                        for name in ("acc", "nmi", "ari"):
                            metrics[f"{name}/facet{j}/{factor}"] = 0.1 + 0.8 * epoch / EVALUATIONS / j
                out.write(json.dumps(metrics) + "\n")
                out.flush()
                if reporter:
                    reporter(metrics, run_dir)
        result = {"status": "completed", "error": None, "final": metrics, "seed": seed,
                  "config": config.model_dump(mode="json"), "harness": harness.trial.single.__file__}
        (run_dir / "result.json").write_text(json.dumps(result))
        with open(DONE_FILE, "a") as done:  # one byte per finished trial: the driver's progress count
            done.write(".")
        return result

    harness.trial.single.run_trial = run_trial


def sweep_file_report(sweep) -> str:
    return getattr(sweep, "report", "every evaluation (no `report` key in this tree)")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    global EVAL_SECONDS, DONE_FILE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--eval-seconds", type=float, default=0.0, help="the stand-in trial's own work per evaluation")
    parser.add_argument("--report", choices=["every_evaluation", "final"],
                        help="the sweep's `report` cadence (default: the sweep file default); needs this tree to have it")
    parser.add_argument("--keep", action="store_true", help="keep the experiment folder and print its path")
    args = parser.parse_args()
    EVAL_SECONDS = args.eval_seconds

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    import harness
    from harness.sweep.load import load_sweep
    from harness.sweep.tune.driver import run_sweep
    from harness.sweep.tune.session import LOOPBACK_NODE_IP

    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    DONE_FILE = str(work / "done")
    Path(DONE_FILE).touch()
    sweep_file = work / "bench.yaml"
    cadence = {"report": args.report} if args.report else {}
    sweep_file.write_text(yaml.safe_dump({
        **cadence, "name": "bench", "storage": str(work / "results"), "grid": {"training.seed": list(range(args.trials))},
        "base": {"dataset": {"name": "digits"},
                 "model": {"latent_dims": [3], "n_clusters": [10], "hidden_sizes": [32]},
                 "training": {"epochs_per_step": [EVALUATIONS], "batch_size": 256, "threads": 1}}}))
    sweep, trials = load_sweep(sweep_file)

    ray_temp = tempfile.mkdtemp(prefix="mfcb-", dir="/tmp")
    ray.init(_node_ip_address=LOOPBACK_NODE_IP, include_dashboard=False, num_cpus=SLOTS,
             object_store_memory=128 * 1024 * 1024, _temp_dir=ray_temp, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": _stand_in_trainer})

    samples: list[tuple[int, float]] = []  # (trials done, driver RSS MB)
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(0.5):
            samples.append((os.stat(DONE_FILE).st_size, _rss_mb()))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    sampler.start()
    results = run_sweep(sweep, trials, work / "results", verbose=0)
    wall = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    sampler.join()
    rss_end = _rss_mb()
    ray.shutdown()

    n = args.trials
    errors = [r.error for r in results if r.error is not None]
    experiment = work / "results" / "bench"
    runs_files, runs_bytes, other_files, other_bytes = 0, 0, 0, 0
    for path in experiment.rglob("*"):
        if path.is_file():
            in_run_folder = "runs" in path.relative_to(experiment).parts
            size = path.stat().st_size
            if in_run_folder:
                runs_files, runs_bytes = runs_files + 1, runs_bytes + size
            else:
                other_files, other_bytes = other_files + 1, other_bytes + size
    dirs = sum(1 for p in experiment.rglob("*") if p.is_dir())
    run_harness = {__import__("json").loads(p.read_text())["harness"]
                   for p in experiment.glob("trial_*/runs/*/result.json")}
    half = next((rss for done, rss in samples if done >= n / 2), float("nan"))
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)

    print(f"harness: driver {Path(harness.__file__).parent}, workers {sorted({str(Path(h).parent) for h in run_harness})}")
    print(f"trials: {n} x {EVALUATIONS} evaluations, report: {sweep_file_report(sweep)}, {len(errors)} errored, "
          f"stand-in work "
          f"{args.eval_seconds * EVALUATIONS:g} s per trial, {SLOTS} at a time")
    print(f"driver CPU: {cpu:.1f} s = {cpu / n * 1000:.0f} ms per trial = {cpu / n / EVALUATIONS * 1000:.1f} ms "
          f"per trial-evaluation (target < 50)")
    print(f"wall: {wall:.1f} s = {wall / n:.3f} s per trial; beyond the trial's own work: "
          f"{(wall * SLOTS / n - args.eval_seconds * EVALUATIONS):.3f} slot-seconds per trial")
    print(f"storage, excluding run folders (trial_*/runs/): {other_files / n:.1f} files, "
          f"{other_bytes / n / 1024:.1f} KB per trial (target <= 10 files, <= 100 KB); "
          f"{dirs / n:.1f} folders per trial in all")
    print(f"storage, run folders: {runs_files / n:.1f} files, {runs_bytes / n / 1024:.1f} KB per trial")
    print(f"driver RSS: {half:.0f} MB at {n // 2} trials done, {rss_end:.0f} MB at {n}; "
          f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.keep:
        print(f"experiment folder: {experiment}")
    else:
        import shutil

        shutil.rmtree(work)
    if errors:
        print("first error:", errors[0])
        sys.exit(1)


if __name__ == "__main__":
    main()
