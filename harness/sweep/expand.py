"""From a sweep to its trials: grid points, packs of seeds, an Optuna suggestion's replicates."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from harness.sweep.metric_names import TRAINED_MODELS
from harness.sweep.overrides import resolved_base, with_overrides
from harness.sweep.spec import SearchConfig, SweepConfig
from harness.trial.config import TrialConfig

SEED_KEY = "training.seed"
EPOCHS_KEY = "training.epochs_per_step"


def total_epochs(trial: dict) -> int:
    """Epochs a trial config (a dict) trains for: the sum of training.epochs_per_step (validated
    first only when it is unset: its default depends on the facets)."""
    steps = trial["training"].get("epochs_per_step")
    return sum(steps) if steps else TrialConfig.model_validate(trial).training.total_epochs


def max_total_epochs(sweep: SweepConfig, trials: list[dict]) -> int:
    """The most epochs any trial of a valid sweep can train (ASHA's max_t): over a grid's trials, or for
    a search over the base with every combination of edge values of the searched keys that set epochs."""
    if sweep.search is None:
        return max(total_epochs(t["trial"]) for t in trials)
    base = resolved_base(sweep.base)
    moves_epochs = [EPOCHS_KEY]
    if base["training"]["epochs_per_step"] is None:  # its default (about DEFAULT_OPTIMISER_STEPS steps) moves too
        moves_epochs += ["training.batch_size", "training.progressive", "dataset", "model.name", "model.latent_dims"]
    epoch_keys = [key for key in sweep.search.space if any(key == k or key.startswith(k + ".") for k in moves_epochs)]
    edges = [[value for _, value in sweep.search.space[key].edge_values()] for key in epoch_keys]
    return max(total_epochs(with_overrides(base, dict(zip(epoch_keys, combination))))
               for combination in itertools.product(*edges))


def effective_max_concurrent(sweep: SweepConfig) -> int:
    """Tune trials run at once (0: as many as the cluster's resources hold). A TPE search without
    `max_concurrent` runs n_startup_trials suggestions (x their Tune trials: one per replicate, or per
    pack of replicates) at once: TPE suggests from
    finished trials, and with more suggestions in flight than its random start-up ones it degrades
    towards random sampling."""
    if sweep.max_concurrent or sweep.search is None or sweep.search.sampler.type != "tpe":
        return sweep.max_concurrent
    return sweep.search.sampler.n_startup_trials * trials_per_suggestion(sweep)


def grid_points(sweep: SweepConfig) -> list[tuple[str, dict[str, Any]]]:
    """(variant label, overrides) for every trial of a grid sweep, in a stable order.

    Runs that differ only in their seed share a label, so reports aggregate over seeds and never
    over other grid keys: `ladder training.lr=0.001`.
    """
    variants = list(sweep.variants.items()) or [("base", {})]
    keys = list(sweep.grid)
    points = []
    for (variant, variant_overrides), values in itertools.product(variants, itertools.product(*sweep.grid.values())):
        point = dict(zip(keys, values))
        label = " ".join([variant] + [f"{k}={v}" for k, v in point.items() if k != SEED_KEY])
        points.append((label, {**variant_overrides, **point}))
    return points


SEEDS_KEY = "training.seeds"


def balanced_chunks(items: list, size: int) -> list[list]:
    """`items` in order, cut into ceil(n / size) consecutive chunks whose lengths differ by at most one
    (10 seeds by 4: 4, 3, 3; not 4, 4, 2): no pack is left far smaller than the others."""
    if not items:
        return []
    count = -(-len(items) // size)
    base, extra = divmod(len(items), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


@dataclass
class GridPacking:
    """A grid's Tune trials under `pack` (pack_grid)."""

    trials: list[dict]  # per Tune trial {variant, overrides, trial}: a pack (training.seeds) or one grid point
    members: list[list[int]]  # per Tune trial, the indices of its grid points (in the list given to pack_grid)
    notes: list[str]  # why grid points were left unpacked, one line per variant label

    @property
    def packed(self) -> int:
        """How many Tune trials train several seeds."""
        return sum(len(m) > 1 for m in self.members)


def pack_grid(trials: list[dict], pack: int) -> GridPacking:
    """Group a grid's trials ({variant, overrides, trial} from load_sweep) that differ only in
    training.seed into packed trials of up to `pack` seeds: per group, its seeds in grid order cut into
    balanced_chunks; a chunk of one seed stays an ordinary trial. A pack's overrides name its seeds as
    `training.seeds: [...]` where its points said `training.seed`; its trial config has training.seeds
    and no training.seed. Each pack takes the place of its first grid point, so the order is the grid's.

    Not packed (with a note): baselines (k-means, GMM: fitted in one go), a seed repeated within a
    group (each seed trains once per pack), and grid points with no other seed to share a trial with.
    Raises pydantic's ValidationError if a pack's config does not validate.
    """
    if pack == 1:  # today's sweep, as it is (and no cost for a grid of thousands)
        return GridPacking(list(trials), [[i] for i in range(len(trials))], [])
    groups: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(trials):
        training = {k: v for k, v in t["trial"]["training"].items() if k != "seed"}
        key = json.dumps({**t["trial"], "training": training}, sort_keys=True)
        groups.setdefault((t["variant"], key), []).append(i)
    notes: dict[str, str] = {}
    placed: dict[int, tuple[dict, list[int]]] = {}  # first grid point -> (Tune trial, its points)
    for (variant, _), members in groups.items():
        first = trials[members[0]]
        seeds = [trials[i]["trial"]["training"].get("seed") for i in members]
        model = first["trial"]["model"]["name"]
        reason = None
        if "seeds" in first["trial"]["training"]:
            reason = "its trials are packed already (training.seeds in the base or a variant)"
        elif model not in TRAINED_MODELS:
            reason = f"{model} is a baseline, fitted in one go: one trial per seed"
        elif len(members) < 2:
            reason = (f"one seed only (training.seed={seeds[0]})" if SEED_KEY in first["overrides"] else
                      "no training.seed in the grid: one seed, nothing to pack")
        elif len(set(seeds)) < len(seeds):
            reason = (f"a seed repeats ({', '.join(str(s) for s in sorted(set(seeds)) if seeds.count(s) > 1)}): "
                      "each seed trains once per pack")
        if reason is not None:
            notes.setdefault(variant, f"not packed: {variant}: {reason}")
            for i in members:
                placed[i] = (trials[i], [i])
            continue
        for chunk in balanced_chunks(members, pack):
            if len(chunk) == 1:
                placed[chunk[0]] = (trials[chunk[0]], chunk)
                continue
            chunk_seeds = [trials[i]["trial"]["training"]["seed"] for i in chunk]
            overrides = {(SEEDS_KEY if k == SEED_KEY else k): (chunk_seeds if k == SEED_KEY else v)
                         for k, v in first["overrides"].items()}
            config = TrialConfig.model_validate(with_overrides(first["trial"], {SEEDS_KEY: chunk_seeds})).model_dump(
                mode="json")
            placed[chunk[0]] = ({"variant": variant, "overrides": overrides, "trial": config}, chunk)
    order = sorted(placed)
    return GridPacking([placed[i][0] for i in order], [placed[i][1] for i in order], list(notes.values()))


def search_candidates_train(sweep: SweepConfig) -> bool:
    """Whether every trial a search can suggest is trained by gradient steps (no baseline among them)."""
    base = resolved_base(sweep.base)
    return all(with_overrides(base, overrides)["model"]["name"] in TRAINED_MODELS
               for _, overrides in search_candidates(sweep.search))


def search_pack(sweep: SweepConfig) -> int:
    """Seeds per Tune trial of a search sweep: min(pack, search.replicates), or 1 when a suggestion
    could be a baseline (k-means, GMM), which is not packed."""
    if sweep.search is None or sweep.pack == 1 or sweep.search.replicates == 1:
        return 1
    return min(sweep.pack, sweep.search.replicates) if search_candidates_train(sweep) else 1


def replicate_groups(replicates: int, pack: int) -> list[list[int]]:
    """The replicates 0..R-1 of a suggestion, by Tune trial: balanced_chunks of at most `pack`."""
    return balanced_chunks(list(range(replicates)), pack)


def trials_per_suggestion(sweep: SweepConfig) -> int:
    """Tune trials each suggestion of a search sweep runs: one per replicate, or one per pack of them."""
    return len(replicate_groups(sweep.search.replicates, search_pack(sweep)))


def search_candidates(search: SearchConfig) -> list[tuple[str, dict[str, Any]]]:
    """(where, overrides) covering every value at an edge of the search space.

    One trial config has every key at its first value; then each key in turn takes each of its other
    edge values (other choices, the high bound) with the rest at their first value. That is one
    config per edge value, not the product of all edges, which grows as 2^keys.
    """
    first = {key: p.example() for key, p in search.space.items()}
    candidates = [(f"search.space at first choices / low bounds {first}", first)]
    for key, parameter in search.space.items():
        for label, value in parameter.edge_values()[1:]:  # the first edge value is first[key]
            candidates.append((f"search.space.{key} {label} = {value!r}", {**first, key: value}))
    return candidates


def which_trials(sweep: SweepConfig, trial: dict) -> str:
    """How a problem message names a checked trial: its variant, or a search's trials as a whole."""
    return f"variant {trial['variant']!r}" if sweep.search is None else "the searched trials"
