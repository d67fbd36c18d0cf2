"""What the driver prints while a sweep runs: one line per trial event, and "k of N trials done, m
running, ETA" every minute."""
from __future__ import annotations

import time
from pathlib import Path


from harness.log_text import clock, significant
from harness.storage import is_bucket, join
from harness.sweep.tune.session import ANSI_CODE
from harness.sweep.tune.protocol import reported_status


PROGRESS_EVERY_S = 60


def event_printer(total: int, verbose: int = 0, grid_trials: list[dict] = ()):
    """grid_trials: the expanded grid, to name a trial whose Tune params hold only its index."""
    from ray.tune import Callback

    class EventPrinter(Callback):
        """One line per trial event, readable in a terminal or a log file, and progress lines
        "k of N trials done (e errored), m running, ETA hh:mm:ss" on each trial's end and at most
        every PROGRESS_EVERY_S seconds otherwise. Without -v a trial's evaluations print at most
        once a minute; its final metrics print with its `done` line. A trial that ends with
        mfcbench_status "failed" (the worker) prints as FAILED with its error and counts as errored."""

        def __init__(self):
            self.total, self.verbose = total, verbose
            self.started = time.monotonic()
            self.last_progress = self.started
            self.last_result: dict[str, float] = {}
            self.completed: set[str] = set()
            self.errored: set[str] = set()
            self.unfinished: set[str] = set()  # live at the end of Tune's last step, and not ended since

        def setup(self, **info):
            self.started = self.last_progress = time.monotonic()

        def _point(self, trial) -> dict:
            """{variant, trial} of a grid trial (by index, or whole in its params), else {} (a search
            trial: its variant is "search")."""
            if "trial_index" in trial.config:
                return grid_trials[trial.config["trial_index"]]
            return trial.config.get("grid_point", {})

        def _tag(self, trial) -> str:
            return f"{trial.trial_id} [{self._point(trial).get('variant', 'search')}]"

        def _metrics(self, result: dict) -> str:
            parts = []
            if isinstance(result.get("elbo"), float):
                parts.append(f"elbo={significant(result['elbo'])}")
            parts += [f"{k.removeprefix('acc/')}={significant(v)}" for k, v in result.items()
                      if k.startswith("acc/") and isinstance(v, float)]
            alphas = [result[k] for k in sorted((k for k in result if k.startswith("alpha/facet")),
                                                 key=lambda k: int(k.removeprefix("alpha/facet")))]
            if alphas:
                parts.append("alphas=" + ",".join(significant(float(a)) for a in alphas))
            return " ".join(parts)

        def _print(self, text: str) -> None:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

        def _progress(self, trials) -> None:
            self.last_progress = time.monotonic()
            errored = {t.trial_id for t in trials if t.status == "ERROR" or _failed(t)} | self.errored
            finished = ({t.trial_id for t in trials if t.status == "TERMINATED"} | self.completed) - errored
            running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in finished | errored)
            done = len(finished) + len(errored)
            done_here = len(self.completed | self.errored)  # a resumed sweep's earlier trials took no time here
            remaining = max(self.total - done, 0)
            if remaining == 0:
                eta = "00:00:00"
            elif done_here:
                eta = clock((time.monotonic() - self.started) / done_here * remaining)
            else:
                eta = "unknown"
            self._print(f"{done} of {self.total} trials done ({len(errored)} errored), {running} running, ETA {eta}")

        def on_trial_start(self, iteration, trials, trial, **info):
            training = (self._point(trial) or trial.config).get("trial", {}).get("training", {})
            seeds = training.get("seeds")  # a packed trial
            which = f"seeds={','.join(map(str, seeds))}" if seeds else f"seed={training.get('seed')}"
            self._print(f"start    {self._tag(trial)} {which}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if reported_status(result) == "failed":  # printed by on_trial_complete, with its error
                return
            now = time.monotonic()
            if not self.verbose and now - self.last_result.get(trial.trial_id, float("-inf")) < PROGRESS_EVERY_S:
                return
            self.last_result[trial.trial_id] = now
            self._print(f"result   {self._tag(trial)} epoch={result.get('epoch')} {self._metrics(result)} "
                        f"host={result.get('host')}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.unfinished.discard(trial.trial_id)
            if _failed(trial):
                self.errored.add(trial.trial_id)
                self._print(f"FAILED   {self._tag(trial)}: {trial.last_result.get('error')}")
                self._progress(trials)
                return
            self.completed.add(trial.trial_id)
            final = self._metrics(trial.last_result or {})
            self._print(f"done     {self._tag(trial)} epoch={(trial.last_result or {}).get('epoch')} {final}")
            self._progress(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.unfinished.discard(trial.trial_id)
            self.errored.add(trial.trial_id)
            # Tune's trial.path drops a bucket's scheme; the trial folder is trial_<id> in the experiment
            where = trial.config.get("experiment_dir")
            folder = join(where, f"trial_{trial.trial_id}") if where and is_bucket(where) else trial.path
            self._print(f"ERROR    {self._tag(trial)}: {_error_summary(trial)} (see {folder}/error.txt)")
            self._progress(trials)

        def on_step_end(self, iteration, trials, **info):
            self.unfinished = {t.trial_id for t in trials if t.status in ("PENDING", "RUNNING", "PAUSED")}
            if time.monotonic() - self.last_progress >= PROGRESS_EVERY_S:
                self._progress(trials)

    return EventPrinter()


def _failed(trial) -> bool:
    """The trial ended itself with a failure (the worker's "failed" report), not lost by Ray."""
    return reported_status(trial.last_result) == "failed"


def _error_summary(trial) -> str:
    """The last line of the trial's error (the exception and its message), shortened."""
    try:
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        return "failed"
    last = ANSI_CODE.sub("", lines[-1]).strip() if lines else "failed"  # Ray colours its tracebacks
    return last if len(last) <= 300 else last[:297] + "..."
