"""What `mfcbench sweep --dry-run` prints: the trials, their resources, packing and selection."""
from __future__ import annotations

import math

from harness.sweep.expand import (
    effective_max_concurrent,
    max_total_epochs,
    pack_grid,
    replicate_groups,
    search_pack,
    trials_per_suggestion,
)
from harness.sweep.load import data_paths, objectives
from harness.sweep.metric_names import is_test_metric
from harness.sweep.spec import SweepConfig


def describe(sweep: SweepConfig, trials: list[dict]) -> str:
    """What --dry-run prints: the trials (or the search space), their count and resources."""
    lines = [f"sweep {sweep.name}: {sweep.description}".rstrip(": ")]
    res = f"{sweep.resources.cpu:g} CPU" + (f" + {sweep.resources.gpu:g} GPU" if sweep.resources.gpu else "")
    if sweep.search is None and sweep.pack == 1:
        lines.append(f"{len(trials)} trials, {res} each")
        for i, t in enumerate(trials):
            lines.append(f"  {i:4d}  {t['variant']:<20} " + " ".join(f"{k}={v}" for k, v in t["overrides"].items()))
    elif sweep.search is None:
        packing = pack_grid(trials, sweep.pack)
        lines.append(f"{len(packing.trials)} trials from {len(trials)} grid points, pack {sweep.pack}: "
                     f"{packing.packed} trial(s) train up to {sweep.pack} seeds packed in one process; {res} each "
                     "(per trial, packed or not)")
        for i, (t, members) in enumerate(zip(packing.trials, packing.members)):
            packed = f"  ({len(members)} seeds packed)" if len(members) > 1 else ""
            lines.append(f"  {i:4d}  {t['variant']:<20} "
                         + " ".join(f"{k}={v}" for k, v in t["overrides"].items()) + packed)
        lines += packing.notes
    else:
        s = sweep.search
        objective = ", ".join(f"{m} ({mode})" for m, mode in zip(s.metrics, s.modes))
        lines.append(f"Optuna {s.sampler.type} search, {s.num_samples} suggestions x {s.replicates} seed(s), "
                     f"objective {objective}, {res} each")
        for key, p in s.space.items():
            span = p.choices if p.type == "categorical" else f"[{p.low:g}, {p.high:g}]" + (" log" if p.log else "")
            lines.append(f"  {key}: {p.type} {span}")
        lines += _search_packing_lines(sweep)
    lines += _concurrency_lines(sweep)
    lines.append(_selection_line(sweep))
    if sweep.scheduler:
        lines.append(f"scheduler: ASHA on {sweep.scheduler.metric} ({sweep.scheduler.mode}), grace period "
                     f"{sweep.scheduler.grace_period}, reduction factor {sweep.scheduler.reduction_factor:g}, "
                     f"max_t {max_total_epochs(sweep, trials)} epochs")
    lines += [f"data: {what} {path}" for what, path in data_paths(sweep, trials)]
    return "\n".join(lines)


def _search_packing_lines(sweep: SweepConfig) -> list[str]:
    """How `pack` groups a search's replicates, or why it does not."""
    if sweep.pack == 1:
        return []
    replicates, pack = sweep.search.replicates, search_pack(sweep)
    if pack > 1:
        sizes = [len(g) for g in replicate_groups(replicates, pack)]
        return [f"packing: the {replicates} seeds of each suggestion train in {len(sizes)} trial(s) of "
                f"{', '.join(map(str, sizes))} seeds packed (pack {sweep.pack}); resources are per trial"]
    if replicates == 1:
        return [f"not packed: search.replicates is 1, so each suggestion trains one seed (pack {sweep.pack} unused)"]
    return ["not packed: the search can suggest a baseline (k-means, GMM: fitted in one go), so every seed is "
            "a trial of its own"]


def _selection_line(sweep: SweepConfig) -> str:
    """What the search and scheduler objectives are measured on."""
    on_test = [metric for _, metric in objectives(sweep) if is_test_metric(metric)]
    if on_test:  # only under selection authors-protocol: load_sweep refuses them otherwise
        return (f"selection: {sweep.selection}, selects on the TEST set (the authors' protocol): "
                f"{', '.join(dict.fromkeys(on_test))} measured on the test images")
    if not objectives(sweep):
        return f"selection: {sweep.selection} (no search or scheduler objective)"
    return f"selection: {sweep.selection}, no objective is measured on the test images"


def _concurrency_lines(sweep: SweepConfig) -> list[str]:
    """The effective concurrency, and a warning when a TPE search has more suggestions in flight than
    random start-up suggestions."""
    limit = effective_max_concurrent(sweep)
    if not limit:
        return ["concurrency: as many trials at once as the cluster's resources hold"]
    if sweep.search is None:
        return [f"concurrency: at most {limit} trials at once (max_concurrent)"]
    per_suggestion = trials_per_suggestion(sweep)
    packed = per_suggestion < sweep.search.replicates
    source = "max_concurrent" if sweep.max_concurrent else \
        f"default: search.sampler.n_startup_trials x {'trials per suggestion' if packed else 'replicates'}"
    in_flight = math.ceil(limit / per_suggestion)
    seeds = f"{sweep.search.replicates} seed(s)" + (f" in {per_suggestion} packed trial(s)" if packed else "")
    lines = [f"concurrency: at most {limit} trials at once, {in_flight} suggestion(s) x {seeds} ({source})"]
    startup = sweep.search.sampler.n_startup_trials
    if sweep.search.sampler.type == "tpe" and in_flight > startup:
        lines.append(f"WARNING: {in_flight} suggestions in flight exceed search.sampler.n_startup_trials ({startup}): "
                     "TPE then suggests from few finished trials and degrades towards random sampling; lower "
                     "max_concurrent or raise n_startup_trials")
    return lines
