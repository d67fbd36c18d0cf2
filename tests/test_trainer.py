import json
import math
import re

import numpy as np
import pytest
import torch

from harness.agreement import read_assignments, suggestion_agreement
from harness.cli import main
from harness.trial.config import DEFAULT_OPTIMISER_STEPS, MIN_EPOCHS_PER_STEP, ConfigError, TrialConfig, batches_per_epoch
from harness.trial.config_io import load_trial_config, read_run_config
from harness.trial.schedule import Schedule
from harness.trial.errors import TrialFailed
from harness.trial.single import run_trial

QUIET = dict(log=lambda s: None)


def small_config(**sections) -> TrialConfig:
    data = {
        "dataset": {"name": "digits"},
        "model": {"latent_dims": [4, 3], "n_clusters": [10, 5], "hidden_sizes": [64, 128]},
        "training": {"epochs_per_step": [2, 2], "batch_size": 128, "lr": 0.002, "fade_in_batches": 10,
                     "threads": 1},
        "evaluation": {"every_n_epochs": 1},
    }
    for section, values in sections.items():
        data[section].update(values)
    return TrialConfig.model_validate(data)


def test_progressive_schedule():
    """Appendix D.3 with J=3: facet 3 alone, then facet 2 fades in over 4 batches, then facet 1."""
    s = Schedule(n_facets=3, epochs_per_step=[1, 2, 1], progressive=True, fade_in_batches=4, batches_per_epoch=3)
    assert s.alphas(0, 0) == [0.0, 0.0, 1.0]
    assert s.alphas(1, 0) == [0.0, 0.25, 1.0]
    assert s.alphas(1, 2) == [0.0, 0.75, 1.0]
    assert s.alphas(2, 0) == [0.0, 1.0, 1.0]  # the ramp counts batches across epochs of a step
    assert s.alphas(3, 1) == [0.5, 1.0, 1.0]
    flat = Schedule(3, [1, 2, 1], progressive=False, fade_in_batches=4, batches_per_epoch=3)
    assert flat.alphas(0, 0) == [1.0, 1.0, 1.0]
    assert Schedule(2, [1, 1], True, 0, 3).alphas(1, 0) == [1.0, 1.0]


def test_trial_writes_metrics_result_and_checkpoint(tmp_path):
    result = run_trial(small_config(), tmp_path, **QUIET)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert [m["progressive_step"] for m in lines] == [1, 1, 2, 2]
    assert lines[0]["alphas"] == [0.0, 1.0] and lines[-1]["alphas"] == [1.0, 1.0]
    for key in ("elbo", "log_px", "kl_z/facet1", "kl_c/facet2", "acc/facet1/digit", "nmi/facet2/digit",
                "ari/facet1/digit", "clusters_used/facet2", "step"):
        assert key in lines[-1]
    assert result["status"] == "completed" and result["seed"] == 0
    for key in ("host", "pid", "device", "versions", "wall_time_s", "samples_per_s", "config"):
        assert result[key]
    assert result["versions"]["torch"] == torch.__version__
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 4 and "model" in ckpt
    assert (tmp_path / "config.yaml").exists()


def test_validation_metrics_and_assignments_of_every_evaluation(tmp_path):
    from harness.data import load_dataset
    from models import build_model

    cfg = small_config()
    result = run_trial(cfg, tmp_path, **QUIET)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        for key in ("elbo", "log_px", "acc/facet1/digit", "val/elbo", "val/log_px", "val/kl_z/facet1",
                    "val/kl_c/facet2", "val/acc/facet1/digit", "val/nmi/facet2/digit", "val/ari/facet1/digit",
                    "val/clusters_used/facet2", "val/silhouette/facet1", "val/silhouette/facet2"):
            assert key in line, key
        assert -1 <= line["val/silhouette/facet1"] <= 1
    assert result["final"] == lines[-1]
    # assignments.npz: the last evaluation's argmax q(c_j | x) of the 144 validation and 359 test images
    with np.load(tmp_path / "assignments.npz") as saved:
        assert int(saved["epoch"]) == 4
    val, test = read_assignments(tmp_path, "val"), read_assignments(tmp_path, "test")
    assert [a.shape for a in val] == [(144,), (144,)] and [a.shape for a in test] == [(359,), (359,)]
    assert [len(np.unique(a)) for a in val] == [lines[-1]["val/clusters_used/facet1"],
                                               lines[-1]["val/clusters_used/facet2"]]
    # ... of those images in their stored order: the checkpointed model clusters them the same way
    data = load_dataset("digits", validation_fraction=0.1)
    model = build_model(cfg.model, data.image_shape, data.likelihood)
    model.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"])
    model.eval()
    for saved, x in ((val, data.x_val), (test, data.x_test)):
        assert all(np.array_equal(a, p.argmax(1).numpy()) for a, p in zip(saved, model.cluster_probs(x)))


def test_no_validation_split_no_validation_metrics(tmp_path):
    run_trial(small_config(dataset={"validation_fraction": 0}), tmp_path, **QUIET)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "elbo" in lines[-1] and not any(k.startswith("val/") for line in lines for k in line)
    assert read_assignments(tmp_path, "val") is None and len(read_assignments(tmp_path, "test")) == 2


def test_training_never_sees_validation_or_test_images(tmp_path, monkeypatch):
    """Validation and test images are NaN: a training loss or prior init that read one would be NaN (and
    the GMM would refuse them). Every batch the model trains on is a row of the training set."""
    import harness.data
    import harness.trial.setup
    from models.mfcvae import MFCVAE

    loaded = []

    def poisoned(*args, **kwargs):
        data = harness.data.load_dataset(*args, **kwargs)
        loaded.append({"x_train": data.x_train, "x_val": data.x_val.clone()})
        data.x_val = torch.full_like(data.x_val, float("nan"))
        data.x_test = torch.full_like(data.x_test, float("nan"))
        return data

    trained_on = []
    original_loss_terms = MFCVAE.loss_terms

    def recording_loss_terms(self, x, *args, **kwargs):
        if self.training:
            trained_on.append(x.detach().cpu())  # off the GPU when the test runs on CUDA
        return original_loss_terms(self, x, *args, **kwargs)

    monkeypatch.setattr(harness.trial.setup, "load_dataset", poisoned)
    monkeypatch.setattr(MFCVAE, "loss_terms", recording_loss_terms)
    for seed in (0, 1):
        cfg = small_config(model={"init": "data"}, training={"seed": seed, "epochs_per_step": [1, 1]})
        result = run_trial(cfg, tmp_path / f"seed{seed}", **QUIET)
        assert result["status"] == "completed"
        lines = [json.loads(line) for line in (tmp_path / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert all(np.isfinite(line["train_loss"]) for line in lines)
        assert lines[-1]["elbo"] is None and lines[-1]["val/elbo"] is None  # evaluation did read the NaN images
    train_rows = {row.numpy().tobytes() for row in loaded[0]["x_train"]}
    assert trained_on and all(row.numpy().tobytes() in train_rows for x in trained_on for row in x)
    # both seeds trained on the same training set and held out the same validation images, in the same order
    assert torch.equal(loaded[0]["x_train"], loaded[1]["x_train"]) and len(loaded[0]["x_val"]) == 144
    assert torch.equal(loaded[0]["x_val"], loaded[1]["x_val"])


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = small_config()
    run_trial(cfg, tmp_path / "a", **QUIET)
    run_trial(cfg, tmp_path / "b", **QUIET)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    other = small_config(training={"seed": 1})
    run_trial(other, tmp_path / "c", **QUIET)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() != (tmp_path / "c" / "metrics.jsonl").read_text()
    # seed agreement from the runs' assignments.npz: identical runs agree fully, other seeds less
    same = suggestion_agreement([tmp_path / "a", tmp_path / "b"])
    assert same == {"val/agreement": 1.0, "val/agreement/facet1": 1.0, "val/agreement/facet2": 1.0}
    assert suggestion_agreement([tmp_path / "a", tmp_path / "c"])["val/agreement"] < 1.0


def test_elbo_at_training_alphas_beside_the_all_facets_elbo(tmp_path):
    """Step 1 of a J=2 ladder trains facet 2 alone: the all-facets ELBO counts the untrained facet 1
    fully (decoder rung and KL), the ELBO at training alphas (eq. 89, what step 1 optimises) does not;
    once every alpha is 1 they are the same number."""
    printed = []
    run_trial(small_config(), tmp_path, log=printed.append)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["alphas"] for m in lines] == [[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    for m in lines[:2]:
        assert m["elbo/training_alphas"] > m["elbo"] and m["val/elbo/training_alphas"] > m["val/elbo"]
    for m in lines[2:]:
        assert m["elbo/training_alphas"] == m["elbo"] and m["val/elbo/training_alphas"] == m["val/elbo"]
    evaluations = [line for line in printed if line.startswith("epoch ")]
    assert re.search(r"\| test elbo -?[0-9.]+ \(all facets on; -?[0-9.]+ at training alphas\), val elbo ",
                     evaluations[0])
    assert "training alphas" not in evaluations[-1]


def test_evaluating_never_changes_training(tmp_path):
    """Evaluating after every epoch or only at the end: the same final model, so the same final metrics."""
    every = run_trial(small_config(), tmp_path / "every", **QUIET)["final"]
    once = run_trial(small_config(evaluation={"every_n_epochs": 4}), tmp_path / "once", **QUIET)["final"]
    assert once == every


class Killed(Exception):
    pass


def kill_after_epoch_2(metrics, run_dir):
    """A reporter that stops the trial right after its second evaluation, as a kill would."""
    if metrics["epoch"] == 2:
        raise Killed


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    cfg = small_config()
    run_trial(cfg, tmp_path / "whole", **QUIET)

    with pytest.raises(TrialFailed):
        run_trial(cfg, tmp_path / "killed", reporter=kill_after_epoch_2, **QUIET)
    assert json.loads((tmp_path / "killed" / "result.json").read_text())["status"] == "failed"
    # An evaluation written after the checkpoint, then a line cut short by the kill: neither survives.
    with (tmp_path / "killed" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 3, "junk": True}) + "\n" + '{"epoch": 4, "elb')
    result = run_trial(cfg, tmp_path / "killed", resume=True, **QUIET)
    assert result["status"] == "completed"
    whole = (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert (tmp_path / "killed" / "metrics.jsonl").read_text() == whole


def test_non_finite_loss_leaves_failure_record(tmp_path):
    cfg = small_config(training={"lr": 1e12, "epochs_per_step": [3, 1]})
    with pytest.raises(TrialFailed, match="non-finite"):
        run_trial(cfg, tmp_path, **QUIET)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and "non-finite loss" in result["error"]


def test_baselines_run_through_the_same_trainer(tmp_path):
    for name in ("kmeans", "gmm"):
        cfg = small_config(model={"name": name, "latent_dims": [1], "n_clusters": [10], "hidden_sizes": None},
                           training={"epochs_per_step": [1]})
        result = run_trial(cfg, tmp_path / name, **QUIET)
        final = result["final"]
        assert 0.5 < final["acc/facet1/digit"] <= 1.0 and 0.5 < final["val/acc/facet1/digit"] <= 1.0
        assert {"val/nmi/facet1/digit", "val/ari/facet1/digit", "val/clusters_used/facet1"} <= set(final)
        assert not any("elbo" in k or "silhouette" in k for k in final)  # a baseline has neither
        with np.load(tmp_path / name / "assignments.npz") as saved:
            assert {k: saved[k].shape for k in saved.files} == {"epoch": (), "val_facet1": (144,),
                                                                "test_facet1": (359,)}


@pytest.mark.parametrize("override,message", [
    ("model.covariance=ful", "model.covariance: Input should be 'diagonal' or 'full'"),
    ("model.latnt_dims=[5]", "model.latnt_dims: unknown key"),
    ("model.latent_dims=[5,0]", "model.latent_dims.1: Input should be greater than 0"),
    ("model.n_clusters=[10]", "latent_dims has 2 facets but n_clusters has 1"),
    ("training.epochs_per_step=[5]", "needs one per facet"),
    ("dataset.name=mnsit", "unknown dataset 'mnsit'; known: digits"),
    ("training.device=gpu", "device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_config_fails_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_trial_config(None, ["model.latent_dims=[5,5]", "model.n_clusters=[10,10]",
                                 "training.epochs_per_step=[1,1]", override])
    assert message in str(info.value)


def test_all_config_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_trial_config(None, ["model.covariance=ful", "training.lr=-1", "evaluation.every=2"])
    text = str(info.value)
    assert "model.covariance" in text and "training.lr" in text and "evaluation.every" in text
    assert "allowed keys:" in text


def test_presets_reproduce_table_3():
    mnist = load_trial_config("paper-mnist")
    assert (mnist.training.batch_size, mnist.training.lr, mnist.model.latent_dims, mnist.model.n_clusters) == \
        (512, 0.0005, [5, 5], [25, 25])
    assert (mnist.model.likelihood, mnist.model.covariance, mnist.model.fix_pi, mnist.model.activation) == \
        ("bernoulli", "diagonal", False, "relu")
    shapes = load_trial_config("paper-3dshapes")
    assert (shapes.model.latent_dims, shapes.model.n_clusters, shapes.model.likelihood_std, shapes.model.init) == \
        ([20, 2], [60, 20], 0.6, "data")
    assert (shapes.training.fade_in_batches, shapes.training.batch_size, shapes.training.lr) == (2000, 150, 0.0003)
    svhn = load_trial_config("paper-svhn")
    assert (svhn.model.latent_dims, svhn.model.n_clusters, svhn.model.likelihood_std, svhn.model.covariance,
            svhn.model.fix_pi) == ([22, 7], [200, 50], 0.3, "full", True)


def test_cli_train_and_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--set", "model.latent_dims=[3]", "--set", "model.n_clusters=[10]",
                 "--set", "model.hidden_sizes=[32]", "--set", "training.epochs_per_step=[1]", "--out", str(out)])
    assert code == 0 and (out / "result.json").exists()
    printed = capsys.readouterr()
    assert "\x1b[" not in printed.out + printed.err  # not a terminal: no progress bar, no ANSI codes
    assert "epoch 1/1 step 1 alphas [1] |" in printed.out and "| eta 00:00:00" in printed.out
    assert re.search(r"\| test elbo -?[0-9.]+, val elbo -?[0-9.]+ \|", printed.out)
    assert main(["train", "--set", "model.covariance=ful", "--out", str(tmp_path / "bad")]) == 2
    assert "model.covariance" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing started
    # an existing run is not overwritten without --resume
    with pytest.raises(SystemExit, match="--resume"):
        main(["train", "--set", "model.latent_dims=[3]", "--set", "model.n_clusters=[10]",
              "--set", "training.epochs_per_step=[1]", "--out", str(out)])


def test_readme_resume_example_works_as_written(tmp_path, monkeypatch):
    """README: train with --set ... --out runs/digits-s3, killed; `mfcbench train --out runs/digits-s3 --resume`."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    first = re.search(r"^mfcbench train (--set model.latent_dims.*?--out runs/digits-s3)$", readme, re.M | re.S)
    second = re.search(r"^mfcbench train (--out runs/digits-s3 --resume)\s", readme, re.M)
    assert first and second, "the README's resume example changed; update this test"
    argv = shlex.split(first.group(1).replace("\\\n", " "))
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    monkeypatch.chdir(tmp_path)
    config = load_trial_config(None, sets + ["training.threads=1"])
    assert main(["train", *argv, "--set", "training.threads=1"]) == 0  # the uninterrupted run
    whole = (tmp_path / "runs" / "digits-s3" / "metrics.jsonl").read_text()

    def kill_at_epoch_5(metrics, run_dir):
        if metrics["epoch"] == 5:
            raise Killed

    with pytest.raises(TrialFailed):
        run_trial(config, tmp_path / "runs" / "killed-s3", reporter=kill_at_epoch_5, **QUIET)
    (tmp_path / "runs" / "digits-s3").rename(tmp_path / "runs" / "whole")
    (tmp_path / "runs" / "killed-s3").rename(tmp_path / "runs" / "digits-s3")
    assert main(["train", *shlex.split(second.group(1))]) == 0
    assert (tmp_path / "runs" / "digits-s3" / "metrics.jsonl").read_text() == whole
    assert json.loads((tmp_path / "runs" / "digits-s3" / "result.json").read_text())["resumed_at_epoch"] == 5


def test_resume_may_change_only_where_it_runs(tmp_path, capsys):
    cfg = small_config()

    def kill_after_epoch_1(metrics, run_dir):
        raise Killed

    with pytest.raises(TrialFailed):
        run_trial(cfg, tmp_path, reporter=kill_after_epoch_1, **QUIET)
    assert main(["train", "--out", str(tmp_path), "--resume", "--set", "training.threads=2",
                 "--set", "training.device=cpu"]) == 0
    resumed = load_trial_config(tmp_path / "config.yaml")
    assert (resumed.training.threads, resumed.training.device, resumed.model.latent_dims) == (2, "cpu", [4, 3])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 0  # completed: nothing to do, nothing touched
    assert "already completed" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("breakage,message", [
    ("device", "CUDA is not available"),
    ("data", "file not found"),
])
def test_a_trial_that_dies_early_leaves_a_failure_record(tmp_path, monkeypatch, breakage, message):
    npz = tmp_path / "images.npz"
    np.savez(npz, x=np.random.default_rng(0).random((40, 8, 8)).astype(np.float32))
    cfg = small_config(dataset={"name": f"npz:{npz}"}, training={"batch_size": 16, "fade_in_batches": 2})
    if breakage == "device":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"device": "cuda"})})
    else:
        npz.unlink()  # gone between validation and loading: a cluster node without the file
    with pytest.raises(TrialFailed, match=message):
        run_trial(cfg, tmp_path / "run", **QUIET)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and message in result["error"]


def test_tensorboard_event_files_hold_every_evaluation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_trial(small_config(), tmp_path, **QUIET)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    accuracy = [e.value for e in events.Scalars("acc/facet1/digit")]
    assert [e.step for e in events.Scalars("elbo")] == [1, 2, 3, 4]
    assert accuracy == pytest.approx([m["acc/facet1/digit"] for m in lines])
    # facet 1 fades in over 10 of the 11 batches of an epoch
    assert [e.value for e in events.Scalars("alpha/facet1")] == [0.0, 0.0, 1.0, 1.0]


def test_bare_train_config_is_consistent():
    """`mfcbench train` with no arguments: one step per facet, about DEFAULT_OPTIMISER_STEPS optimiser
    steps in all (at least MIN_EPOCHS_PER_STEP epochs each), a fade-in that fits its step."""
    config = load_trial_config(None, [])
    J, per_epoch = config.model.n_facets, batches_per_epoch(1294, config.training.batch_size)  # digits less 10%
    epochs = config.training.epochs_per_step
    assert len(epochs) == J and len(set(epochs)) == 1
    assert DEFAULT_OPTIMISER_STEPS <= sum(epochs) * per_epoch < DEFAULT_OPTIMISER_STEPS + J * per_epoch
    schedule = Schedule(J, epochs, True, config.training.fade_in_batches, batches_per_epoch=per_epoch)
    fade = epochs[1] * per_epoch // 2  # unset fade-in: half of step 2
    assert schedule.alphas(epochs[0], 0)[0] == pytest.approx(1 / fade)
    assert schedule.alphas(epochs[0] + epochs[1] - 1, per_epoch - 1) == [1.0, 1.0]
    one_facet = ["model.latent_dims=[3]", "model.n_clusters=[5]"]
    assert load_trial_config(None, one_facet).training.epochs_per_step == [910]  # ceil(10,000 / 11 batches)
    assert load_trial_config(None, one_facet + ["dataset.name=fashion-mnist"]).training.epochs_per_step == [24]
    assert load_trial_config(None, one_facet + ["training.batch_size=1294"]).training.epochs_per_step == \
        [DEFAULT_OPTIMISER_STEPS]  # one batch per epoch
    assert load_trial_config(None, one_facet + ["model.name=kmeans"]).training.epochs_per_step == \
        [MIN_EPOCHS_PER_STEP]  # baselines do not train by steps
    subset = one_facet + ["dataset.name=fashion-mnist", "dataset.train_images=5000"]
    assert load_trial_config(None, subset).training.epochs_per_step == [278]  # 4,500 images: 36 batches


def test_gmm_start_pretrains_half_the_training_steps_and_the_appendix_d4_start_not_at_all():
    """Appendix D.5: VaDE pretrains its autoencoder before the GMM init, and so does MFCVAE with one facet
    (prior_init gmm); unset, for half as many optimiser steps as training takes, about 5,000 at the
    default budget. Two facets (prior_init means): none."""
    one_facet = ["model.latent_dims=[3]", "model.n_clusters=[5]"]
    for name in ("vade", "mfcvae"):
        for extra, pretrain in (([], 455), (["dataset.name=fashion-mnist"], 12),
                                (["dataset.name=fashion-mnist", "dataset.train_images=5000"], 139),
                                (["training.epochs_per_step=[7]"], 4)):
            config = load_trial_config(None, one_facet + [f"model.name={name}"] + extra)
            assert config.model.pretrain_epochs == pretrain
            assert config.model.pretrain_epochs == math.ceil(sum(config.training.epochs_per_step) / 2)
    assert load_trial_config(None, one_facet + ["model.name=vade", "model.pretrain_epochs=0"]).model.pretrain_epochs == 0
    assert load_trial_config(None, one_facet + ["model.prior_init=means"]).model.pretrain_epochs == 0
    assert load_trial_config(None, ["model.latent_dims=[3,3]", "model.n_clusters=[5,5]"]).model.pretrain_epochs == 0


def test_help_answers_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom harness.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['sweep', '--help'], ['report', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'sklearn', 'pandas', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_progress_bar_in_a_terminal(tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_trial(small_config(), tmp_path, progress=True, **QUIET)
    bar = terminal.getvalue()
    assert "/44 [" in bar and "batch/s" in bar  # 4 epochs x 11 batches (1294 images), counted per batch
    assert "<00:00," in bar  # tqdm's elapsed<remaining: the ETA


def test_resume_of_a_run_from_before_the_validation_split_keeps_training_on_all_images(tmp_path):
    """A config.yaml without dataset.validation_fraction was trained on the whole training set: a
    resume reads it as 0, not today's default, so the run continues on the images it began with."""
    import yaml

    legacy = small_config(dataset={"validation_fraction": 0})
    run_trial(legacy, tmp_path / "whole", **QUIET)

    with pytest.raises(TrialFailed):
        run_trial(legacy, tmp_path / "old", reporter=kill_after_epoch_2, **QUIET)
    written = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    del written["dataset"]["validation_fraction"]  # as the harness wrote it before the key existed
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(written))
    assert load_trial_config(tmp_path / "old" / "config.yaml").dataset.validation_fraction == 0.1  # today's default
    assert read_run_config(tmp_path / "old").dataset.validation_fraction == 0.0

    assert main(["train", "--out", str(tmp_path / "old"), "--resume", "--set", "training.threads=1"]) == 0
    assert (tmp_path / "old" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert read_run_config(tmp_path / "old").dataset.validation_fraction == 0.0


def test_sweep_trial_resumes_with_the_runs_own_config(tmp_path):
    """harness.sweep.tune.worker: a run folder with a checkpoint continues with its config.yaml (a legacy one
    read as validation_fraction 0); only RESUME_SAFE_KEYS come from what Tune passes now."""
    import yaml

    from harness.sweep.tune.worker import config_to_resume

    written = small_config(dataset={"validation_fraction": 0}).model_dump(mode="json")
    del written["dataset"]["validation_fraction"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(written))
    requested = small_config(training={"threads": 3, "device": "cpu", "lr": 0.01},
                             dataset={"data_root": str(tmp_path)})
    said = []
    config = config_to_resume(tmp_path, requested, log=said.append)
    assert config.dataset.validation_fraction == 0.0 and config.training.lr == 0.002  # the run's own
    assert (config.training.threads, config.training.device, config.dataset.data_root) == (3, "cpu", str(tmp_path))
    assert "dataset.validation_fraction (run 0.0, sweep 0.1)" in said[0] and "training.lr" in said[0]


def test_a_sweep_started_before_validation_splits_keeps_training_on_all_images():
    """Grid trials recorded by an older experiment (and the base its pickled searcher holds) lack
    dataset.validation_fraction: their not-yet-started seeds train as the experiment began, on the
    whole training set, so one variant never mixes seeds trained on different data."""
    from harness.sweep.tune.worker import _what_to_train

    recorded = small_config().model_dump(mode="json")
    del recorded["dataset"]["validation_fraction"]
    grid = [{"variant": "old", "overrides": {}, "trial": recorded}]
    _, _, config = _what_to_train({"trial_index": 0}, grid, "t0")
    assert config["dataset"]["validation_fraction"] == 0.0
    assert "validation_fraction" not in grid[0]["trial"]["dataset"]  # the recorded trial itself unchanged
    _, _, searched = _what_to_train({"grid_point": {"variant": "search", "trial": recorded}}, [], "t1")
    assert searched["dataset"]["validation_fraction"] == 0.0
    current = small_config(dataset={"validation_fraction": 0.2}).model_dump(mode="json")
    _, _, today = _what_to_train({"trial_index": 0}, [{"variant": "new", "overrides": {}, "trial": current}], "t2")
    assert today["dataset"]["validation_fraction"] == 0.2


def test_configs_from_before_the_data_init_fix_keep_unit_scale():
    """model.data_init_scale arrived with issue 11's fix (0.1, the authors' init scale). A run folder's
    config.yaml or a recorded sweep trial without it was initialised at 1.0: read back, it keeps 1.0,
    so a resumed experiment never mixes seeds initialised differently; new configs get 0.1."""
    from harness.compat import with_legacy_defaults

    written = small_config(model={"init": "data"}).model_dump(mode="json")
    assert written["model"]["data_init_scale"] == 0.1
    del written["model"]["data_init_scale"]
    assert with_legacy_defaults(written)["model"]["data_init_scale"] == 1.0


def test_pretraining_that_diverges_fails_the_trial_saying_what_to_change(tmp_path):
    """A non-finite pretraining loss stops the trial before the GMM init (which would fail on NaN
    latents with scikit-learn's words): the failure record names the stage and the keys to change."""
    config = small_config(model={"latent_dims": [3], "n_clusters": [10], "hidden_sizes": [32]},
                          training={"epochs_per_step": [2], "lr": 1e12, "fade_in_batches": None})
    assert config.model.pretrain_epochs == 1
    with pytest.raises(TrialFailed, match="non-finite loss in autoencoder pretraining epoch 1 of 1; try a lower "
                                          "training.lr or fewer model.pretrain_epochs"):
        run_trial(config, tmp_path / "run", **QUIET)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and result["error"].startswith("non-finite loss in autoencoder pretraining")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
