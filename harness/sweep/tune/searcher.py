"""Optuna search and ASHA scheduling for a sweep, on the driver.

ReplicatedOptunaSearch is a Ray Tune Searcher over an Optuna study (ask/tell) kept in a journal file,
`optuna.journal` in the experiment folder (Optuna's storage for shared filesystems, where SQLite's
locking is unreliable). One suggestion (`study.ask()`) with `search.replicates` R becomes R Tune
trials that run in parallel, seeds base seed + 0..R-1; with the sweep's `pack` P > 1, ceil(R / P)
packed Tune trials of near-equal size (P >= R: one trial per suggestion carrying all R seeds as
training.seeds), whose final report gives each seed's status and objectives as `seed<s>/...`
(harness.sweep.tune.worker), so each seed counts below as if it had been a trial of its own; the seed
agreement reads the same `trial_<id>/runs/seed<s>` folders. When all R seeds have ended the study is told:
  COMPLETE  the mean objective over the seeds that finished, when at least half of them finished;
            a seed agreement objective (val/agreement, val/agreement/facet<j>) is not in any trial's
            results: it is computed here, by harness.agreement, from the assignments.npz of the run
            folders of the seeds that finished (at least two);
  FAIL      fewer than half finished (a seed fails when its trial errors, or its last result says
            `mfcbench_status: failed` or lacks a finite objective), or a seed agreement objective
            has fewer than two finished seeds to compare;
  PRUNED    a seed was stopped early by the scheduler (with its last objective value as the
            trial's intermediate value, single objective only: Optuna's rule).
The seeds that failed or were stopped are recorded as user attributes of the Optuna trial.
No pruner reads intermediate values during training, so none are sent while trials run.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ray.tune.search import Searcher

from harness.agreement import suggestion_agreement
from harness.compat import upgrade_searcher, upgrade_searcher_state, with_legacy_defaults, with_legacy_run_defaults
from harness.layout import JOURNAL_FILE, STOPPED_EARLY_FILE, run_folder
from harness.sweep.expand import (
    SEED_KEY,
    SEEDS_KEY,
    max_total_epochs,
    replicate_groups,
    search_pack,
)
from harness.sweep.metric_names import is_agreement_metric
from harness.sweep.overrides import resolved_base, with_overrides
from harness.sweep.spec import SweepConfig
from harness.files import write_json_atomic
from harness.layout import SUGGESTION_FILE
from harness.sweep.tune.protocol import STATUS, reported_status, seed_key, suggestion_path
from harness.storage import Bucket, is_bucket, local_copy, write_text
from harness.trial.config import TrialConfig


def open_study(sweep: SweepConfig, experiment_dir: Path):
    """The sweep's Optuna study in experiment_dir/optuna.journal, created on first use."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    s = sweep.search.sampler
    if s.type == "tpe":  # every default spelled out: Optuna 5 changed several
        sampler = optuna.samplers.TPESampler(seed=s.seed, multivariate=s.multivariate,
                                             n_startup_trials=s.n_startup_trials, constant_liar=s.constant_liar)
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    storage = JournalStorage(JournalFileBackend(str(experiment_dir / JOURNAL_FILE)))
    return optuna.create_study(study_name=sweep.name, storage=storage, sampler=sampler,
                               pruner=optuna.pruners.NopPruner(), load_if_exists=True,
                               directions=["maximize" if m == "max" else "minimize" for m in sweep.search.modes])


def _distributions(sweep: SweepConfig) -> dict:
    import optuna

    space = {}
    for key, p in sweep.search.space.items():
        if p.type == "categorical":
            space[key] = optuna.distributions.CategoricalDistribution(p.choices)
        elif p.type == "int":
            space[key] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log,
                                                              step=int(p.step or 1))
        else:
            space[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return space


def asha_scheduler(sweep: SweepConfig, trials: list[dict]):
    """ASHA on the sweep's scheduler settings, with max_t the longest trial's epochs (Ray's default
    max_t, 100, would stop every longer trial at epoch 100)."""
    from ray.tune.schedulers import ASHAScheduler

    s = sweep.scheduler
    return ASHAScheduler(metric=s.metric, mode=s.mode, time_attr="epoch", max_t=max_total_epochs(sweep, trials),
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def trial_failed(result: dict | None) -> bool:
    """Whether an ended Tune trial's last result says its run failed, or it never reported."""
    return not result or reported_status(result) == "failed"


def stopped_early(result: dict | None) -> bool:
    """Whether an ended Tune trial was stopped by the scheduler: the trainable's last word on a run
    is "completed" or "failed", so a trial that ended while its last report said "running" did not
    end by itself."""
    return reported_status(result) == "running"


def stopped_early_marker():
    """A Tune callback writing trial_<id>/mfcbench-stopped-early.json for each trial the scheduler
    stopped before its last epoch: Ray ends such a trial inside its report, so its run folder never
    gets a result.json, and reports would otherwise call it incomplete."""
    from ray.tune import Callback

    class StoppedEarlyMarker(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            if stopped_early(trial.last_result):
                write_text(trial.config["experiment_dir"], f"trial_{trial.trial_id}/{STOPPED_EARLY_FILE}",
                           json.dumps({"epoch": trial.last_result.get("epoch")}))

    return StoppedEarlyMarker()


class ReplicatedOptunaSearch(Searcher):
    """Suggestions from an Optuna study, each trained as `search.replicates` parallel Tune trials.

    suggest() writes what a trial trains to its suggestion file (protocol.suggestion_path):
    {"variant": "search", "trial": <trial config with the searched values and training.seed = base
    seed + r (packed: training.seeds, the seeds of its replicates)>}, and returns the trial's params:
    {"suggestion": <that file's name>, "overrides": {<searched key>: value}}; `cpus` and
    `experiment_dir` come from the Tuner's param_space. Concurrency is left to
    Tune (TuneConfig.max_concurrent_trials). The bookkeeping below is plain JSON (save/restore);
    the study itself lives in the journal, so a restarted driver reopens it.
    """

    def __init__(self, sweep: SweepConfig, experiment_dir: Path, location: str | None = None):
        self.sweep, self.experiment_dir = sweep, Path(experiment_dir)
        # On a bucket (harness.storage): its URI; experiment_dir is then a driver's local copy, which
        # `local` finds again on whichever host resumes the sweep.
        self.location = location or str(experiment_dir)
        # Tune is told only the objectives its trials report (with strict metric checking on, it would
        # fail a result without one); the seed agreement is computed here.
        metrics = self.reported_metrics
        modes = [mode for metric, mode in zip(sweep.search.metrics, sweep.search.modes) if metric in metrics]
        super().__init__(metric=metrics if len(metrics) > 1 else next(iter(metrics), None),
                         mode=modes if len(modes) > 1 else next(iter(modes), None))
        self.base = resolved_base(sweep.base)
        # Suggestions are recorded fully resolved (a searcher pickled earlier: harness.compat).
        self.resolves_defaults = True
        self._study = None
        # Seeds per Tune trial (`pack`, harness.sweep.expand.search_pack).
        self.pack = search_pack(sweep)
        # Suggestions whose seeds are not all handed out yet: [optuna number, params, next replicate].
        self.unassigned: list[list] = []
        self.asked = 0
        # Tune trial id -> [optuna number, replicate], or [optuna number, first replicate, count] for a
        # packed trial (replicates first..first+count-1)
        self.seed_of: dict[str, list[int]] = {}
        self.errored: dict[str, list[int]] = {}  # the same, for trials Ray lost: --retry-errored may rerun them
        self.max_concurrent = 0  # 0: no limit of our own (set_max_concurrency)
        # optuna number -> {"params", "values": [per finished seed: its reported objectives], "finished": [[Tune
        # trial id, seed] per finished seed], "failed": [seeds], "stopped": [[seed, epoch, values]], "ended": count}
        self.suggestions: dict[int, dict] = {}

    def __getstate__(self) -> dict:
        # Tune pickles the searcher into tuner.pkl; an open journal storage holds a lock.
        return {**self.__dict__, "_study": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(upgrade_searcher(state))  # one an older mfcbench pickled, made current

    @property
    def local(self) -> Path:
        """The experiment folder this driver reads and writes: the storage folder, or on a bucket this
        host's copy of it, whose files are uploaded (`_upload`) as they change."""
        return local_copy(self.location, "driver") if is_bucket(self.location) else self.experiment_dir

    def _upload(self, *paths: Path) -> None:
        if is_bucket(self.location):
            Bucket(self.location).upload(self.local, [p for p in paths if p.exists()])

    def _download_runs(self, runs: list[tuple[str, int]]) -> None:
        """On a bucket: the run folders the seed agreement reads, from where their trials uploaded them."""
        if is_bucket(self.location):
            bucket = Bucket(self.location)
            for trial_id, seed in runs:
                bucket.download(self.local, run_folder("", trial_id, seed).as_posix())

    @property
    def study(self):
        if self._study is None:
            self._study = open_study(self.sweep, self.local)
        return self._study

    @property
    def replicates(self) -> int:
        return self.sweep.search.replicates

    @property
    def seeds_per_trial(self) -> int:
        return self.pack

    def _group_size(self, replicate: int) -> int:
        """How many replicates the Tune trial starting at `replicate` trains (replicate_groups)."""
        for group in replicate_groups(self.replicates, self.seeds_per_trial):
            if group[0] == replicate:
                return len(group)
        return 1

    @staticmethod
    def _slot(entry: list[int]) -> tuple[int, int, int]:
        """(optuna number, first replicate, count) of a seed_of / errored entry."""
        return entry[0], entry[1], entry[2] if len(entry) > 2 else 1

    def _seeds(self, first: int, count: int) -> list[int]:
        return [self.base["training"]["seed"] + r for r in range(first, first + count)]

    def _per_seed(self, result: dict | None, first: int, count: int) -> list[tuple[int, dict | None]]:
        """(seed, its result) for each seed of a Tune trial: a packed trial's result split into one per
        seed, with that seed's status (`seed<s>/mfcbench_status`, else the trial's) and objectives."""
        seeds = self._seeds(first, count)
        if count == 1:
            return [(seeds[0], result)]
        if not result:
            return [(seed, None) for seed in seeds]
        return [(seed, {**{metric: result[seed_key(seed, metric)] for metric in self.reported_metrics
                           if seed_key(seed, metric) in result},
                        STATUS: result.get(seed_key(seed, STATUS), result.get(STATUS)), "epoch": result.get("epoch")})
                for seed in seeds]

    @property
    def reported_metrics(self) -> list[str]:
        """The objectives that trials report: all but the seed agreement."""
        return [metric for metric in self.sweep.search.metrics if not is_agreement_metric(metric)]

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """The limit (TuneConfig.max_concurrent_trials) is kept here, not in the ConcurrencyLimiter
        Tune would wrap around this searcher: that limiter drops the results of trials it does not
        track, such as a lost seed that `--retry-errored` runs again."""
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.max_concurrent and len(self.seed_of) >= self.max_concurrent:
            return None  # Tune asks again when a trial ends
        if not self.unassigned:
            if self.asked >= self.sweep.search.num_samples:
                return Searcher.FINISHED
            trial = self.study.ask(_distributions(self.sweep))
            self.asked += 1
            self.suggestions[trial.number] = {"params": trial.params, "values": [], "finished": [], "failed": [],
                                              "stopped": [], "ended": 0}
            self.unassigned.append([trial.number, trial.params, 0])
        slot = self.unassigned[0]
        number, params, replicate = slot
        count = self._group_size(replicate)
        slot[2] += count
        if slot[2] >= self.replicates:
            self.unassigned.pop(0)
        self.seed_of[trial_id] = [number, replicate] if count == 1 else [number, replicate, count]
        seeds = self._seeds(replicate, count)
        # The seed replaces any the base or params hold (with_overrides drops the other seed key).
        config = with_overrides(with_overrides(self.base, params),
                                {SEED_KEY: seeds[0]} if count == 1 else {SEEDS_KEY: seeds})
        if not self.resolves_defaults:
            config = with_legacy_defaults(config)
        # A base pickled before a key existed lacks it: its suggestions keep what its first seeds trained
        # with (model.data_init_scale 1.0 in bases written before the key existed), so a study never mixes the two.
        with_legacy_run_defaults(config)
        config = TrialConfig.model_validate(config).model_dump(mode="json")
        # By reference, as grid trials go by index: Tune keeps every trial's params in the experiment
        # state it rewrites, and the worker reads the file from the shared storage.
        path = suggestion_path(self.local, trial_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"variant": "search", "trial": config})
        self._upload(path, self.local / JOURNAL_FILE)
        return {"suggestion": SUGGESTION_FILE, "overrides": dict(params)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.errored and not error:  # `--resume --retry-errored` ran it again, same id
            self._retried(trial_id, result)
            return
        if trial_id not in self.seed_of:  # not one of ours (Tune also calls this for trials it never started)
            return
        entry = self.seed_of.pop(trial_id)
        number, first, count = self._slot(entry)
        outcome = self.suggestions[number]
        if error:  # Ray lost it (retries spent): a later --retry-errored may still finish it
            self.errored[trial_id] = entry
        for seed, seed_result in self._per_seed(result, first, count):
            values = None if error or trial_failed(seed_result) else self._objective(seed_result)
            if values is None:
                outcome["failed"].append(seed)
            elif stopped_early(seed_result):
                outcome["stopped"].append([seed, seed_result.get("epoch"), values])
            else:
                outcome["values"].append(values)
                outcome["finished"].append([trial_id, seed])
        outcome["ended"] += count
        if outcome["ended"] == self.replicates:
            self._tell(number, outcome)

    def _retried(self, trial_id: str, result: dict | None) -> None:
        """An errored seed that a resumed sweep ran again. If its suggestion is still open, the seed
        counts as finished after all; if the study was already told, the told trial stays as it was
        (Optuna does not change a finished trial) and the suggestion enters the study again as a new
        trial with the same parameters and the mean over the seeds that have now finished."""
        number, first, count = self._slot(self.errored.pop(trial_id))
        outcome = self.suggestions[number]
        recovered = False
        for seed, seed_result in self._per_seed(result, first, count):
            values = None if trial_failed(seed_result) or stopped_early(seed_result) else self._objective(seed_result)
            if values is None or seed not in outcome["failed"]:
                continue
            outcome["failed"].remove(seed)
            outcome["values"].append(values)
            outcome["finished"].append([trial_id, seed])
            recovered = True
        if not recovered:
            return
        if outcome["ended"] < self.replicates or 2 * len(outcome["values"]) < self.replicates or outcome["stopped"]:
            return  # still open (told when its last seed ends), or still not enough seeds for a value
        if any(entry[0] == number for entry in self.errored.values()):
            return  # another lost seed of it may still be rerun: one new trial, once all are back
        objective = self._suggestion_objective(outcome)
        if objective is None:
            return
        import optuna

        self.study.add_trial(optuna.trial.create_trial(
            params=outcome["params"], distributions=_distributions(self.sweep),
            **({"values": objective} if len(objective) > 1 else {"value": objective[0]}),
            user_attrs={"retry_of_trial": number, "failed_seeds": outcome["failed"], "stopped_seeds": []}))

    def _objective(self, result: dict) -> list[float] | None:
        """The reported objective value(s) in a result (all but the seed agreement), or None when one is
        missing or not finite."""
        values = [result.get(metric) for metric in self.reported_metrics]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return [float(v) for v in values]
        return None

    def _suggestion_objective(self, outcome: dict) -> list[float] | None:
        """A suggestion's objective values in the order of search.metrics: the mean over its finished
        seeds of each reported one, and each seed agreement computed from their run folders; None when
        an agreement cannot be computed (fewer than two finished seeds kept validation assignments)."""
        means = (statistics.fmean(column) for column in zip(*outcome["values"]))
        agreement = {}
        if any(is_agreement_metric(metric) for metric in self.sweep.search.metrics):
            self._download_runs(outcome["finished"])
            agreement = suggestion_agreement([run_folder(self.local, trial_id, seed)
                                              for trial_id, seed in outcome["finished"]])
        values = [agreement.get(metric) if is_agreement_metric(metric) else next(means)
                  for metric in self.sweep.search.metrics]
        if all(value is not None and math.isfinite(value) for value in values):
            return values
        return None

    def _tell(self, number: int, outcome: dict) -> None:
        from optuna.trial import Trial, TrialState

        frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():  # told before a driver restart whose saved state predates it
            return
        trial = Trial(self.study, frozen._trial_id)
        trial.set_user_attr("failed_seeds", outcome["failed"])
        trial.set_user_attr("stopped_seeds", [seed for seed, _, _ in outcome["stopped"]])
        finished = len(outcome["values"]) + len(outcome["stopped"])
        if 2 * finished < self.replicates:
            self.study.tell(number, state=TrialState.FAIL)
        elif outcome["stopped"]:
            _, epoch, values = outcome["stopped"][-1]
            if len(values) == 1 and epoch is not None:  # Optuna keeps intermediate values for one objective only
                trial.report(values[0], step=epoch)
            self.study.tell(number, state=TrialState.PRUNED)
        else:
            objective = self._suggestion_objective(outcome)
            if objective is None:
                self.study.tell(number, state=TrialState.FAIL)
            else:
                self.study.tell(number, objective if len(objective) > 1 else objective[0])
        self._upload(self.local / JOURNAL_FILE)

    def save(self, checkpoint_path: str) -> None:
        self._upload(self.local / JOURNAL_FILE)  # the study as of this state, for a resume on any host
        Path(checkpoint_path).write_text(json.dumps(
            {"unassigned": self.unassigned, "asked": self.asked, "seed_of": self.seed_of, "errored": self.errored,
             "suggestions": {str(k): v for k, v in self.suggestions.items()}}))

    def restore(self, checkpoint_path: str) -> None:
        from optuna.trial import TrialState

        state = upgrade_searcher_state(json.loads(Path(checkpoint_path).read_text()))
        self.unassigned, self.asked, self.seed_of = state["unassigned"], state["asked"], state["seed_of"]
        self.errored = state["errored"]
        self.suggestions = {int(k): v for k, v in state["suggestions"].items()}
        # A suggestion asked after the last save has no Tune trials and never will: close it.
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in self.suggestions:
                self.study.tell(frozen.number, state=TrialState.FAIL)
