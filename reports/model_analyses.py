"""Analyses that need trained models: LPIPS diversity (Table 7, appendix E.6), disentanglement
probes (Table 1) and figures of one run per variant (Fig. 4-6)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import reference
from .figures import image_grid, slug
from .stats import describe
from .trained import load_trained

FIGURE_RULE = "the completed run with the lowest seed (never chosen by accuracy)"


def trained_models(runs: pd.DataFrame, desc: str):
    """(run row, model, dataset) for every completed run that has a trained model (not baselines),
    with a progress bar `desc` over them on stderr; tqdm hides the bar when stderr is not a terminal
    (disable=None), so logs get no control characters and keep the one-line summaries."""
    rows = runs[(runs["status"] == "completed") & runs["model"].isin(["mfcvae", "vade"])]
    rows = rows[[(Path(d) / "checkpoint.pt").exists() for d in rows["run_dir"]]]
    with tqdm(total=len(rows), desc=desc, unit="run", file=sys.stderr, disable=None, leave=False) as bar:
        for _, run in rows.iterrows():
            loaded = load_trained(run["run_dir"])
            if loaded is not None:
                yield (run, *loaded)
            bar.update()


# -- LPIPS diversity --------------------------------------------------------------------------------

def _lpips_ready(images: torch.Tensor) -> torch.Tensor:
    """Grey repeated to 3 channels, upsampled to at least 32x32 (AlexNet LPIPS needs >= 31), in [0, 1]."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if min(x.shape[-2:]) < 32:
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


@torch.no_grad()
def mean_pair_lpips(metric, images: torch.Tensor, n_pairs: int, seed: int = 0, batch: int = 256) -> float:
    """Mean LPIPS over random pairs of distinct images."""
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    i = torch.randint(0, n, (n_pairs,), generator=g)
    j = (i + torch.randint(1, n, (n_pairs,), generator=g)) % n  # never the same image
    x = _lpips_ready(images)
    total = 0.0
    for start in range(0, n_pairs, batch):
        a, b = x[i[start:start + batch]], x[j[start:start + batch]]
        total += float(metric(a, b, normalize=True).sum())
    return total / n_pairs


def lpips_table(runs: pd.DataFrame, n_samples: int, temperature: float = 1.0, log=print) -> pd.DataFrame:
    from .lpips_weights import lpips_alex

    metric = lpips_alex()
    rows, real_done = [], {}
    for run, model, data in trained_models(runs, "LPIPS"):
        g = torch.Generator().manual_seed(0)
        samples = model.sample(n_samples, temperature=temperature, generator=g)
        value = mean_pair_lpips(metric, samples, n_samples)
        rows.append({"dataset": run["dataset"], "variant": run["variant"], "seed": run["seed"], "lpips": value})
        if run["dataset"] not in real_done:
            real = data.x_test[torch.randperm(len(data.x_test), generator=g)[:n_samples]]
            real_done[run["dataset"]] = mean_pair_lpips(metric, real, n_samples)
    if not rows:
        return pd.DataFrame()
    per_run = pd.DataFrame(rows)
    table = []
    for (dataset, variant), group in per_run.groupby(["dataset", "variant"]):
        d = describe(group["lpips"].tolist())
        table.append({"dataset": dataset, "samples": variant, "n runs": d["n"], "lpips mean": d["mean"],
                      "lpips std": d["std"], "source": "measured"})
    for dataset, value in real_done.items():
        table.append({"dataset": dataset, "samples": "real test images", "n runs": "", "lpips mean": value,
                      "lpips std": np.nan, "source": "measured"})
    ref = reference.lpips_frame()
    for _, r in ref[ref["dataset"].isin(real_done)].iterrows():
        table.append({"dataset": r["dataset"], "samples": f"{r['samples']} (reported)", "n runs": "",
                      "lpips mean": r["lpips"], "lpips std": np.nan, "source": "reported: Table 7"})
    log(f"LPIPS: {len(per_run)} runs, {n_samples} samples each")
    return pd.DataFrame(table)


# -- probes -----------------------------------------------------------------------------------------

def probe_table(runs: pd.DataFrame, max_train: int, log=print) -> pd.DataFrame:
    """MLPClassifier (scikit-learn defaults) on train-set latents z_j and their concatenation (Table 1)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    rows, not_converged = [], 0
    for run, model, data in trained_models(runs, "probes"):
        g = torch.Generator().manual_seed(0)
        train_index = torch.randperm(len(data.x_train), generator=g)[:max_train]
        z_train = model.latents(data.x_train[train_index], sample=True, generator=g)
        z_test = model.latents(data.x_test, sample=True, generator=g)
        inputs = {f"z{j + 1}": (a, b) for j, (a, b) in enumerate(zip(z_train, z_test))}
        if len(z_train) > 1:
            inputs["z"] = (np.concatenate(z_train, 1), np.concatenate(z_test, 1))
        for factor, cardinality in data.factors.items():
            if cardinality < 2:
                continue
            y_train = data.y_train[factor][train_index].numpy()
            y_test = data.y_test[factor].numpy()
            for name, (a, b) in inputs.items():
                clf = MLPClassifier(random_state=0)
                with warnings.catch_warnings(record=True) as caught:  # one summary line instead of one per fit
                    warnings.simplefilter("always", ConvergenceWarning)
                    clf.fit(a, y_train)
                not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
                for w in caught:  # anything else is passed on as it came
                    if not issubclass(w.category, ConvergenceWarning):
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
                rows.append({"dataset": run["dataset"], "variant": run["variant"], "seed": run["seed"],
                             "factor": factor, "inputs": name, "accuracy": float(clf.score(b, y_test))})
    if not rows:
        return pd.DataFrame()
    per_run = pd.DataFrame(rows)
    log(f"probes: {per_run['seed'].nunique()} seeds, {len(per_run)} classifiers")
    if not_converged:
        log(f"probes: {not_converged} of {len(per_run)} classifiers stopped at max_iter ({clf.max_iter}) before "
            "converging (sklearn ConvergenceWarning); their accuracies are reported as they are")
    table = (per_run.groupby(["dataset", "variant", "factor", "inputs"])["accuracy"]
             .agg(n="count", mean="mean", std=lambda s: s.std(ddof=1)).reset_index())
    table["source"] = "measured"
    ref = reference.probe_frame()
    ref = ref[ref["dataset"].isin(table["dataset"]) & ref["factor"].isin(table["factor"])]
    if not ref.empty:
        ref = ref.assign(variant="MFCVAE (reported)", n="", source="reported: Table 1")
        table = pd.concat([table, ref[table.columns]], ignore_index=True)
    return table


# -- figures of one run per variant -----------------------------------------------------------------

def chosen_runs(runs: pd.DataFrame) -> pd.DataFrame:
    done = runs[(runs["status"] == "completed") & runs["model"].isin(["mfcvae", "vade"])]
    return done.sort_values(["dataset", "variant", "seed"]).groupby(["dataset", "variant"]).head(1)


@torch.no_grad()
def run_figures(runs: pd.DataFrame, out, n_clusters: int = 10, n_inputs: int = 10, log=print) -> list:
    written = []
    for run, model, data in trained_models(chosen_runs(runs), "figures"):
        x = data.x_test
        probs = model.cluster_probs(x)
        tag = f"{slug(run['dataset'])}_{slug(run['variant'])}_seed{run['seed']}"
        for j, p in enumerate(probs, start=1):
            order = p.mean(0).argsort(descending=True)[:n_clusters]  # Fig. 4: by mean assignment probability
            assignment, confidence = p.argmax(1), p.max(1).values
            grid, labels, samples = [], [], []
            for c in order.tolist():
                members = torch.nonzero(assignment == c).flatten()
                members = members[confidence[members].argsort(descending=True)][:n_inputs]
                grid.append(x[members].numpy())
                labels.append(f"facet {j} cluster {c} ({len(torch.nonzero(assignment == c))} inputs)")
                samples.append(model.sample(n_inputs, facet=j, cluster=c,
                                            generator=torch.Generator().manual_seed(c)).numpy())
            written.append(image_grid(grid, out / f"clusters_{tag}_facet{j}.png", labels,
                                      f"{run['variant']} seed {run['seed']}: test inputs per cluster, facet {j}"))
            written.append(image_grid(samples, out / f"samples_{tag}_facet{j}.png", labels,
                                      f"{run['variant']} seed {run['seed']}: z_{j} ~ p(z_{j}|c), others from p(z)"))
            if model.n_facets > 1:  # Fig. 5: swap facet j between inputs of different facet-j clusters
                g = torch.Generator().manual_seed(j)
                first = torch.randperm(len(x), generator=g)[:n_inputs]
                second = torch.tensor([int(torch.nonzero(assignment != assignment[i]).flatten()[0]) for i in first])
                a, b = model.swap(x[first], x[second], facet=j)
                written.append(image_grid([x[first].numpy(), x[second].numpy(), a.numpy(), b.numpy()],
                                          out / f"swap_{tag}_facet{j}.png",
                                          ["x1", "x2", f"x1 with z_{j} of x2", f"x2 with z_{j} of x1"],
                                          f"{run['variant']}: facet {j} swapped"))
    log(f"run figures: {len(written)} images from {len(chosen_runs(runs))} runs ({FIGURE_RULE})")
    return written
