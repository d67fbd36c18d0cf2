"""Bad or careless input, as a new user types it: each case must exit non-zero, without a traceback,
with a message naming the offending key or value, and leave every file already on disk byte-identical.

The workspace every case runs in (its working directory) holds a finished `train` run, a finished
report, a fake finished sweep experiment and a few input files; its full listing and every file's
bytes are compared before and after the case (a new stray file counts as a change too).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import yaml

from harness.cli import main
from harness.trial.config_io import load_trial_config
from harness.trial.errors import TrialFailed
from harness.trial.single import run_trial
from sweep_helpers import TINY_BASE

TINY_SETS = ["--set", "model.latent_dims=[3]", "--set", "model.n_clusters=[10]", "--set", "model.hidden_sizes=[32]",
             "--set", "training.epochs_per_step=[2]", "--set", "training.batch_size=256",
             "--set", "training.threads=1"]
@dataclass
class Case:
    """`argv` may name {ws} (the workspace), {run} (a finished run), {killed} (a run killed after its
    first evaluation, latent_dims [4]), {report} (a finished report),
    {experiment} (a finished sweep experiment folder) and {sweeps} (the shipped sweep files).
    `setup(ws)` adds files the case needs (they are part of the snapshot); `expect` must appear
    in the error output."""

    id: str
    argv: list[str]
    expect: str | list[str]
    setup: Optional[Callable[[Path], None]] = field(default=None, repr=False)


def write(path: str, text: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text)
    return setup


def sweep_file(path: str, **fields) -> Callable[[Path], None]:
    return write(path, yaml.safe_dump({"name": "t", "base": TINY_BASE, **fields}))


# -- mfcbench train ------------------------------------------------------------------------------
def corrupt(path: str, data: bytes) -> Callable[[Path], None]:
    return lambda ws: (ws / path).write_bytes(data)


def copy(source: str, target: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        (ws / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ws / source, ws / target)
    return setup


def without_lr(source: str, target: str) -> Callable[[Path], None]:
    """A copy of a run's config.yaml that leaves training.lr to the default, as a config from before a
    default moved does."""
    def setup(ws: Path) -> None:
        config = yaml.safe_load((ws / source).read_text())
        del config["training"]["lr"]
        (ws / target).write_text(yaml.safe_dump(config))
    return setup


def torn_middle_line(ws: Path) -> None:
    path = ws / "runs" / "killed" / "metrics.jsonl"
    path.write_text('{"epoch": 0, "elb\n' + path.read_text())


TRAIN_CASES = [
    Case("train-unknown-key", ["train", "--set", "model.latnt_dims=[5]"], "model.latnt_dims: unknown key"),
    Case("train-bad-choice", ["train", "--set", "model.covariance=ful"], "model.covariance"),
    Case("train-set-without-equals", ["train", "--set", "model.covariance"], "--set needs key=value"),
    Case("train-set-bad-yaml", ["train", "--set", "model.latent_dims=[5,"], "model.latent_dims: value '[5,'"),
    Case("train-unknown-preset", ["train", "--config", "paper-mnsit"], "paper-mnsit"),
    Case("train-config-not-yaml", ["train", "--config", "c.yaml"], "not valid YAML", write("c.yaml", "a: [1,\n")),
    Case("train-config-a-list", ["train", "--config", "c.yaml"], "must be a mapping", write("c.yaml", "- 1\n- 2\n")),
    Case("train-bad-device", ["train", "--set", "training.device=gpu"], "device must be auto, cpu, cuda or cuda:N"),
    Case("train-steps-disagree-with-facets", ["train", "--set", "training.epochs_per_step=[3]"],
         "training.epochs_per_step has 1 entries"),
    Case("train-batch-beyond-data", ["train", *TINY_SETS, "--set", "training.batch_size=5000"],
         "training.batch_size: 5000 is larger than the 1294 training images of digits (1438 minus 144 for "
         "validation); allowed 1..1294"),
    Case("train-latent-beyond-data", ["train", "--set", "model.latent_dims=[100,5]"],
         "model.latent_dims.0: 100 exceeds the 64 values"),
    Case("train-clusters-beyond-data", ["train", "--set", "model.n_clusters=[5000,5]"],
         "model.n_clusters.0: 5000 clusters for 1294 training images of digits (1438 minus 144 for validation)"),
    Case("train-validation-fraction-negative", ["train", *TINY_SETS, "--set", "dataset.validation_fraction=-0.1"],
         ["dataset.validation_fraction: must be in [0, 1)", "0 for no validation split", "(got -0.1)"]),
    Case("train-seed-negative", ["train", *TINY_SETS, "--set", "training.seed=-1"],
         ["training.seed: Input should be greater than or equal to 0", "(got -1)"]),
    Case("train-packed-seed-negative", ["train", *TINY_SETS, "--set", "training.seeds=[0,-2]"],
         ["training.seeds.1: Input should be greater than or equal to 0", "(got -2)"]),
    Case("train-lr-infinite", ["train", *TINY_SETS, "--set", "training.lr=1e400"],
         ["training.lr: Input should be a finite number"]),
    Case("train-std-nan", ["train", *TINY_SETS, "--set", "model.likelihood_std=.nan"],
         ["model.likelihood_std: Input should be a finite number"]),
    Case("train-config-a-folder", ["train", "--config", "{ws}/runs"], "config {ws}/runs is a folder, not a file"),
    Case("train-out-under-a-file", ["train", *TINY_SETS, "--out", "{ws}/c.yaml/run"],
         "--out {ws}/c.yaml/run cannot be created: {ws}/c.yaml is a file, not a folder", write("c.yaml", "a: 1\n")),
    Case("train-out-inside-a-run", ["train", *TINY_SETS, "--out", "{run}/inner"],
         "--out {run}/inner lies inside the run folder {run}"),
    Case("train-split-seed-negative", ["train", *TINY_SETS, "--set", "dataset.split_seed=-1"],
         ["dataset.split_seed: Input should be greater than or equal to 0", "(got -1)"]),
    Case("train-train-images-too-many", ["train", *TINY_SETS, "--set", "dataset.train_images=5000"],
         ["dataset.train_images: 5000 for the 1438 training images of digits; allowed 2..1438"]),
    Case("train-validation-fraction-one", ["train", *TINY_SETS, "--set", "dataset.validation_fraction=1.0"],
         ["dataset.validation_fraction: must be in [0, 1)", "(got 1.0)"]),
    Case("train-validation-fraction-too-small", ["train", *TINY_SETS, "--set", "dataset.validation_fraction=0.001"],
         ["dataset.validation_fraction: 0.001 of the 1438 training images of digits leaves 1 for validation",
          "allowed 0 (no validation split), or 0.0014 to 0.9986"]),
    Case("train-npz-too-small-for-validation", ["train", *TINY_SETS, "--set", "dataset.name=npz:five.npz",
                                                "--set", "training.batch_size=2", "--set", "model.n_clusters=[2]"],
         ["dataset.validation_fraction: 0.1 of the 4 training images of npz:five.npz leaves 0 for validation",
          "allowed 0 (no validation split), or 0.5 to 0.5"],
         lambda ws: np.savez(ws / "five.npz", x=np.random.default_rng(0).random((5, 4, 4)))),
    Case("train-fade-in-longer-than-step", ["train", "--set", "training.fade_in_batches=15000"],
         "training.fade_in_batches: 15000 is longer than progressive step 2, which has 5005 batches"),
    Case("train-npz-missing", ["train", *TINY_SETS, "--set", "dataset.name=npz:nothing.npz"],
         "npz:nothing.npz: file not found"),
    Case("train-existing-run-without-resume", ["train", *TINY_SETS, "--out", "{run}"], "--resume"),
    Case("train-out-is-a-file", ["train", *TINY_SETS, "--out", "notes.txt"], "is a file", write("notes.txt", "x")),
    Case("train-out-holds-other-files", ["train", *TINY_SETS, "--out", "{ws}/results"], "other files"),
    Case("resume-no-such-folder", ["train", "--out", "runs/nope", "--resume"], "nothing to resume at runs/nope"),
    Case("resume-not-a-run-folder", ["train", "--out", "{ws}/results", "--resume"], "holds no config.yaml"),
    Case("resume-before-first-evaluation", ["train", "--out", "runs/early", "--resume"], "has no checkpoint.pt",
         copy("runs/killed/config.yaml", "runs/early/config.yaml")),
    Case("resume-changed-set", ["train", "--out", "{killed}", "--resume", "--set", "training.lr=0.1"],
         ["training.lr: the run has 0.002, you asked for 0.1", "Nothing was changed"]),
    Case("resume-other-config", ["train", "--config", "paper-3dshapes", "--out", "{killed}", "--resume"],
         "dataset.name: the run has 'digits', you asked for '3dshapes-config1'"),
    Case("resume-config-leaving-a-moved-default-unset", ["train", "--config", "{ws}/old.yaml", "--out", "{killed}",
                                                         "--resume"],
         ["training.lr: the run has 0.002, the default is now 0.001 (you did not set it; --set training.lr=0.002 "
          "keeps the run's)", "Nothing was changed"], without_lr("runs/killed/config.yaml", "old.yaml")),
    Case("resume-changed-validation-fraction", ["train", "--out", "{killed}", "--resume", "--set",
                                                "dataset.validation_fraction=0"],
         ["dataset.validation_fraction: the run has 0.1, you asked for 0", "Nothing was changed"]),
    Case("resume-empty-checkpoint", ["train", "--out", "{killed}", "--resume"],
         ["checkpoint.pt is unreadable", "Nothing in"], corrupt("runs/killed/checkpoint.pt", b"")),
    Case("resume-garbage-checkpoint", ["train", "--out", "{killed}", "--resume"], "checkpoint.pt is unreadable",
         corrupt("runs/killed/checkpoint.pt", b"PK\x03\x04 not a checkpoint")),
    Case("resume-checkpoint-of-another-model", ["train", "--out", "{killed}", "--resume"],
         "checkpoint.pt does not fit the model of config.yaml",
         copy("runs/digits-s0/checkpoint.pt", "runs/killed/checkpoint.pt")),
    Case("resume-torn-middle-metrics-line", ["train", "--out", "{killed}", "--resume"],
         "metrics.jsonl line 1 of", torn_middle_line),
]

# -- mfcbench report -----------------------------------------------------------------------------
REPORT_CASES: list[Case] = [
    Case("report-out-is-the-run", ["report", "{run}", "--out", "{run}"], ["--out {run} is an input"]),
    Case("report-out-is-the-experiment", ["report", "{experiment}", "--out", "{experiment}"],
         "--out {experiment} is an input"),
    Case("report-out-contains-the-input", ["report", "{experiment}", "--out", "{ws}/results"],
         "--out {ws}/results contains the input {experiment}"),
    Case("report-out-is-the-cwd", ["report", "runs/digits-s0", "--out", "."], "contains the input {run}"),
    Case("report-out-is-the-second-input", ["report", "{experiment}", "{run}", "--out", "{run}"], "is an input"),
    Case("report-out-non-empty-folder", ["report", "{run}", "--out", "{ws}/notes"],
         ["--out {ws}/notes is not empty", "mfcbench-report.json"], write("notes/todo.txt", "keep me")),
    Case("report-out-forged-marker", ["report", "{run}", "--out", "{ws}/notes"], "not a report folder",
         lambda ws: (write("notes/mfcbench-report.json", "not json")(ws), write("notes/todo.txt", "keep me")(ws))),
    Case("report-out-is-a-file", ["report", "{run}", "--out", "{ws}/notes.txt"], "--out {ws}/notes.txt is a file",
         write("notes.txt", "keep me")),
    Case("report-missing-input", ["report", "{run}", "{ws}/results/tt", "--out", "{ws}/new"],
         "not found: {ws}/results/tt"),
    Case("report-input-is-a-file", ["report", "{run}/result.json", "--out", "{ws}/new"], "{run}/result.json"),
    Case("report-no-runs-creates-nothing", ["report", "{ws}/empty", "--out", "{ws}/new/deeper/report"],
         "no runs found", write("empty/readme.txt", "no runs here")),
    Case("report-lpips-negative", ["report", "{run}", "--out", "{ws}/new", "--lpips-samples", "-1"],
         ["--lpips-samples must be 0", ">= 2", "got -1"]),
    Case("report-lpips-one", ["report", "{run}", "--out", "{ws}/new", "--lpips-samples", "1"],
         ["--lpips-samples", "got 1"]),
    Case("report-lpips-not-a-number", ["report", "{run}", "--out", "{ws}/new", "--lpips-samples", "many"],
         "--lpips-samples"),
    Case("report-temperature-zero", ["report", "{run}", "--out", "{ws}/new", "--sample-temperature", "0"],
         ["--sample-temperature must be", "> 0", "got 0"]),
    Case("report-temperature-nan", ["report", "{run}", "--out", "{ws}/new", "--sample-temperature", "nan"],
         ["--sample-temperature", "got nan"]),
]

# -- mfcbench sweep ------------------------------------------------------------------------------
SWEEP_CASES: list[Case] = [
    Case("sweep-ray-client-address", ["sweep", "s.yaml", "--address", "ray://head:10001"],
         ["--address ray://head:10001", "Ray Client (ray://) is not supported", "ray job submit"],
         sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-unknown-key", ["sweep", "s.yaml", "--dry-run"], ["gird: unknown key", "allowed keys"],
         sweep_file("s.yaml", gird={"training.seed": [0, 1]})),
    Case("sweep-search-second-choice-invalid", ["sweep", "s.yaml"],
         ["search.space.model.covariance choice 2 = 'ful'", "model.covariance"],
         sweep_file("s.yaml", search={"space": {"model.covariance": {"type": "categorical",
                                                                      "choices": ["diagonal", "ful"]}}})),
    Case("sweep-dry-run-same-message", ["sweep", "s.yaml", "--dry-run"],
         ["search.space.model.covariance choice 2 = 'ful'", "model.covariance"],
         sweep_file("s.yaml", search={"space": {"model.covariance": {"type": "categorical",
                                                                      "choices": ["diagonal", "ful"]}}})),
    Case("sweep-search-int-high-beyond-data", ["sweep", "s.yaml"],
         ["search.space.model.n_clusters.0 high = 5000", "model.n_clusters.0"],
         sweep_file("s.yaml", search={"space": {"model.n_clusters.0": {"type": "int", "low": 5, "high": 5000}}})),
    Case("sweep-search-float-high-not-int", ["sweep", "s.yaml"], "search.space.model.latent_dims.0 high = 3.5",
         sweep_file("s.yaml", search={"space": {"model.latent_dims.0": {"type": "float", "low": 2, "high": 3.5}}})),
    Case("sweep-search-int-fractional-bound", ["sweep", "s.yaml"], ["search.space.model.n_clusters.0",
                                                                    "int needs whole numbers, got low 2.5"],
         sweep_file("s.yaml", search={"space": {"model.n_clusters.0": {"type": "int", "low": 2.5, "high": 9}}})),
    Case("sweep-metric-factor-missing", ["sweep", "s.yaml"],
         ["search.metrics: 'val/acc/facet1/label'", "dataset digits has no factor 'label'; its factors: digit"],
         sweep_file("s.yaml", search={"space": {"model.n_clusters.0": {"type": "int", "low": 5, "high": 9}},
                                      "metrics": ["val/acc/facet1/label"]})),
    Case("sweep-metric-facet3-of-one", ["sweep", "s.yaml"],
         ["search.metrics: 'val/nmi/facet3/digit'", "facet 3 does not exist", "facets 1..1"],
         sweep_file("s.yaml", search={"space": {"model.n_clusters.0": {"type": "int", "low": 5, "high": 9}},
                                      "metrics": ["val/nmi/facet3/digit"]})),
    Case("sweep-search-objective-on-test-set", ["sweep", "s.yaml", "--dry-run"],
         ["search.metrics: 'elbo' is measured on the test images", "makes the reported test numbers optimistic",
          "use 'val/elbo'", "dataset.validation_fraction > 0", "`selection: authors-protocol`"],
         sweep_file("s.yaml", search={"space": {"model.n_clusters.0": {"type": "int", "low": 5, "high": 9}},
                                      "metrics": ["elbo"]})),
    Case("sweep-asha-objective-on-test-set", ["sweep", "s.yaml"],
         ["scheduler.metric: 'acc/facet1/digit' is measured on the test images", "use 'val/acc/facet1/digit'",
          "`selection: authors-protocol`"],
         sweep_file("s.yaml", grid={"training.seed": [0]}, scheduler={"metric": "acc/facet1/digit"})),
    Case("sweep-val-metric-without-validation-split", ["sweep", "s.yaml"],
         ["search.metrics: 'val/elbo' is never reported by the searched trials",
          "dataset.validation_fraction is 0, so there are no validation images"],
         sweep_file("s.yaml", base={**TINY_BASE, "dataset": {"name": "digits", "validation_fraction": 0}},
                    search={"space": {"model.n_clusters.0": {"type": "int", "low": 5, "high": 9}}})),
    Case("sweep-agreement-without-replicates", ["sweep", "s.yaml"],
         ["search.metrics: 'val/agreement' compares the seeds of each suggestion",
          "needs search.replicates >= 2 (got 1)"],
         sweep_file("s.yaml", search={"space": {"model.n_clusters.0": {"type": "int", "low": 5, "high": 9}},
                                      "metrics": ["val/agreement"]})),
    Case("sweep-agreement-as-asha-metric", ["sweep", "s.yaml"],
         ["scheduler.metric: 'val/agreement' cannot be a scheduler metric", "ASHA ranks single trials"],
         sweep_file("s.yaml", grid={"training.seed": [0, 1]}, scheduler={"metric": "val/agreement"})),
    Case("sweep-scheduler-metric-unknown", ["sweep", "s.yaml"], ["scheduler.metric: unknown metric 'accuracy'"],
         sweep_file("s.yaml", grid={"training.seed": [0]}, scheduler={"metric": "accuracy"})),
    Case("sweep-scheduler-elbo-of-baseline", ["sweep", "s.yaml"],
         ["scheduler.metric: 'val/elbo' is never reported by variant 'km'", "kmeans is a baseline"],
         sweep_file("s.yaml", variants={"vae": {}, "km": {"model.name": "kmeans"}}, grid={"training.seed": [0]},
                    scheduler={"metric": "val/elbo"})),
    Case("sweep-file-name-hidden", ["sweep", "s.yaml"], ["name: '.t' is not a plain folder name"],
         sweep_file("s.yaml", name=".t", grid={"training.seed": [0]})),
    Case("sweep-name-dotdot", ["sweep", "s.yaml", "--name", "../x"], "--name '../x' is not a plain folder name",
         sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-name-with-slash", ["sweep", "s.yaml", "--name", "a/b", "--dry-run"],
         "--name 'a/b' is not a plain folder name", sweep_file("s.yaml", grid={"training.seed": [0]})),
    # no S3 endpoint answers here: named, whether the host or the bucket is what is missing
    Case("sweep-storage-s3-unreachable", ["sweep", "s.yaml", "--storage", "s3://bucket/results"],
         "storage s3://bucket/results/t: ", sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-storage-file-uri", ["sweep", "s.yaml", "--storage", "file:///results", "--dry-run"],
         "storage 'file:///results': give a folder as a path, not a file:// URI",
         sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-storage-under-a-file", ["sweep", "s.yaml", "--storage", "{ws}/s.yaml/results", "--dry-run"],
         "storage {ws}/s.yaml/results cannot be created: {ws}/s.yaml is a file",
         sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-storage-inside-a-run", ["sweep", "s.yaml", "--storage", "{run}/results", "--dry-run"],
         "storage {run}/results lies inside the run folder {run}", sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-grid-seed-negative", ["sweep", "s.yaml", "--dry-run"], ["training.seed", "greater than or equal to 0"],
         sweep_file("s.yaml", grid={"training.seed": [0, -1]})),
    Case("sweep-existing-experiment", ["sweep", "s.yaml", "--storage", "{ws}/results", "--name", "t"],
         ["{experiment} already holds a sweep", "--resume"], sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-dry-run-existing-experiment", ["sweep", "s.yaml", "--dry-run"], "{experiment} already holds a sweep",
         sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-resume-no-sweep-there", ["sweep", "s.yaml", "--resume"],
         ["--resume: {experiment} holds no sweep to resume"], sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-resume-no-folder", ["sweep", "s.yaml", "--resume", "--name", "nothing-here"],
         "--resume: there is no experiment folder {ws}/results/nothing-here",
         sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-retry-errored-without-resume", ["sweep", "s.yaml", "--retry-errored", "--name", "new"],
         "--retry-errored applies only with --resume", sweep_file("s.yaml", grid={"training.seed": [0]})),
    # tuner.pkl is a pickle that creates ./pwned when loaded: un-pickling it would change the snapshot.
    Case("sweep-resume-group-writable", ["sweep", "s.yaml", "--resume"],
         ["{experiment}: group-writable (mode drwxrwxr-x", "--trust-experiment-dir"],
         lambda ws: (sweep_file("s.yaml", grid={"training.seed": [0]})(ws),
                     (ws / "results" / "t" / "tuner.pkl").write_bytes(b"cbuiltins\nopen\n(Vpwned\nVw\ntR."),
                     (ws / "results" / "t").chmod(0o775))),
    Case("sweep-not-yaml", ["sweep", "s.yaml"], ["s.yaml: not a valid YAML sweep file"],
         write("s.yaml", "name: [t\nbase: {\n")),
    Case("sweep-top-level-list", ["sweep", "s.yaml"], "s.yaml: the top level of a sweep file must be a mapping",
         write("s.yaml", "- name: t\n- grid: {}\n")),
    Case("sweep-missing-file", ["sweep", "no-such-sweep.yaml"], "no-such-sweep.yaml: no such sweep file"),
    Case("sweep-file-is-a-folder", ["sweep", "results"], "results: is a folder, not a sweep file"),
    Case("sweep-unknown-tracker", ["sweep", "s.yaml", "--tracker", "wandb"], "invalid choice: 'wandb'",
         sweep_file("s.yaml", grid={"training.seed": [0]})),
    Case("sweep-base-cuda-index", ["sweep", "s.yaml", "--dry-run"],
         ["training.device: 'cuda:0' in variant 'base' is not allowed in a sweep", "Ray assigns each trial its GPU",
          "use cuda or auto"],
         sweep_file("s.yaml", base={**TINY_BASE, "training": {**TINY_BASE["training"], "device": "cuda:0"}},
                    grid={"training.seed": [0]})),
    Case("sweep-grid-cuda-index", ["sweep", "s.yaml"],
         ["training.device: 'cuda:1' in variant 'base training.device=cuda:1' is not allowed in a sweep",
          "use cuda or auto"],
         sweep_file("s.yaml", grid={"training.device": ["cuda", "cuda:1"]})),
    Case("sweep-search-choice-cuda-index", ["sweep", "s.yaml"],
         ["training.device: 'cuda:2' in the searched trials is not allowed in a sweep", "use cuda or auto"],
         sweep_file("s.yaml", search={"space": {"training.device": {"type": "categorical",
                                                                    "choices": ["auto", "cuda:2"]}}})),
    Case("sweep-cuda-without-gpu-resources", ["sweep", "s.yaml", "--dry-run"],
         "training.device: 'cuda' in variant 'base' needs resources.gpu > 0",
         sweep_file("s.yaml", base={**TINY_BASE, "training": {**TINY_BASE["training"], "device": "cuda"}})),
]

# -- mfcbench datasets and npz data --------------------------------------------------------------
DATA_CASES: list[Case] = [
    Case("datasets-show-without-name", ["datasets", "show"], ["give a dataset name", "digits", "npz:PATH"]),
    Case("datasets-list-with-name", ["datasets", "list", "digits"], "takes no dataset name"),
    Case("datasets-show-unknown-dataset", ["datasets", "show", "digitz"], ["digitz", "known:"]),
    Case("datasets-show-unknown-factor", ["datasets", "show", "digits", "--factor", "colour"],
         ["no factor 'colour'", "digit"]),
    Case("datasets-show-per-row-zero", ["datasets", "show", "digits", "--per-row", "0"],
         ["--per-row must be >= 1", "got 0"]),
    Case("datasets-show-per-row-negative", ["datasets", "show", "digits", "--per-row", "-3"], "got -3"),
    Case("datasets-show-out-is-a-folder", ["datasets", "show", "digits", "--out", "{ws}/runs"],
         "--out {ws}/runs is a folder"),
    Case("datasets-show-out-not-an-image", ["datasets", "show", "digits", "--out", "plot.png"],
         ["plot.png exists and is not a .png image"], write("plot.png", "my notes, not a picture")),
    Case("datasets-show-out-unknown-format", ["datasets", "show", "digits", "--out", "examples.txt"],
         ["examples.txt", ".png"]),
    Case("npz-broken", ["datasets", "show", "npz:bad.npz"], ["bad.npz", "not a readable .npz"],
         write("bad.npz", "not a zip")),
    Case("npz-missing-file", ["datasets", "show", "npz:missing.npz"], ["missing.npz", "not found"]),
    Case("npz-without-x", ["datasets", "show", "npz:nox.npz"], ["has no array 'x'", "images"],
         lambda ws: np.savez(ws / "nox.npz", images=np.zeros((8, 4, 4)), y_label=np.arange(8))),
    Case("npz-unknown-factor", ["datasets", "show", "npz:mine.npz", "--factor", "colour"],
         ["no factor 'colour'", "label"],
         lambda ws: np.savez(ws / "mine.npz", x=np.zeros((8, 4, 4)), y_label=np.arange(8) % 2)),
]

CASES = TRAIN_CASES + REPORT_CASES + SWEEP_CASES + DATA_CASES


# -- the machinery ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run, its report and a fake finished sweep experiment, built once."""
    root = tmp_path_factory.mktemp("finished")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", *TINY_SETS, "--out", str(root / "runs" / "digits-s0")]) == 0
        killed = load_trial_config(None, TINY_SETS[1::2] + ["model.latent_dims=[4]", "training.lr=0.002"])
        with pytest.raises(TrialFailed):
            run_trial(killed, root / "runs" / "killed", reporter=kill_after_first_evaluation, log=lambda s: None)
        experiment = root / "results" / "t"
        shutil.copytree(root / "runs" / "digits-s0", experiment / "trial_00000" / "runs" / "seed0")
        (experiment / "trial_00000" / "mfcbench-trial.json").write_text(json.dumps({"variant": "base", "overrides": {}}))
        (experiment / "mfcbench-sweep.yaml").write_text(yaml.safe_dump({"name": "t", "base": TINY_BASE}))
        assert main(["report", str(root / "runs" / "digits-s0"), "--out", str(root / "report"),
                     "--lpips-samples", "0", "--no-probes", "--no-run-figures"]) == 0
    return root


class Killed(Exception):
    pass


def kill_after_first_evaluation(metrics: dict, run_dir: Path) -> None:
    raise Killed


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> a hash of its bytes ("dir" for folders)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (print(exit_.code, file=err) or 1)
    return code, out.getvalue(), err.getvalue()


def test_at_least_forty_cases():
    assert len(CASES) >= 40, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_named_and_changes_nothing(case: Case, finished: Path, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(finished, ws)
    if case.setup:
        case.setup(ws)
    monkeypatch.chdir(ws)
    names = {"ws": str(ws), "run": str(ws / "runs" / "digits-s0"), "killed": str(ws / "runs" / "killed"),
             "report": str(ws / "report"),
             "experiment": str(ws / "results" / "t"), "sweeps": str(Path(__file__).parent.parent / "sweeps")}
    argv = [a.format(**names) for a in case.argv]
    before = snapshot(ws)
    code, out, err = run_cli(argv)  # an uncaught exception fails the test: that is the traceback
    assert code != 0, f"exit 0 for {argv}\n{out}{err}"
    assert "Traceback" not in out + err
    for expected in [case.expect] if isinstance(case.expect, str) else case.expect:
        assert expected.format(**names) in err, f"{expected!r} not in stderr:\n{err}"
    assert snapshot(ws) == before, "files on disk changed"
