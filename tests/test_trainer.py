import json

import pytest
import torch

from harness.cli import main
from harness.config import ConfigError, TrialConfig, load_trial_config
from harness.trainer import Schedule, TrialFailed, run_trial

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


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = small_config()
    run_trial(cfg, tmp_path / "a", **QUIET)
    run_trial(cfg, tmp_path / "b", **QUIET)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    other = small_config(training={"seed": 1})
    run_trial(other, tmp_path / "c", **QUIET)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() != (tmp_path / "c" / "metrics.jsonl").read_text()


class Killed(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    cfg = small_config()
    run_trial(cfg, tmp_path / "whole", **QUIET)

    def kill_after_epoch_2(metrics, run_dir):
        if metrics["epoch"] == 2:
            raise Killed

    with pytest.raises(TrialFailed):
        run_trial(cfg, tmp_path / "killed", reporter=kill_after_epoch_2, **QUIET)
    assert json.loads((tmp_path / "killed" / "result.json").read_text())["status"] == "failed"
    # A partially written evaluation after the checkpoint must not survive the resume.
    with (tmp_path / "killed" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 3, "junk": True}) + "\n")
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
        assert 0.5 < result["final"]["acc/facet1/digit"] <= 1.0


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
    assert main(["train", "--set", "model.covariance=ful", "--out", str(tmp_path / "bad")]) == 2
    assert "model.covariance" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing started
    # an existing run is not overwritten without --resume
    with pytest.raises(SystemExit, match="--resume"):
        main(["train", "--set", "model.latent_dims=[3]", "--set", "model.n_clusters=[10]",
              "--set", "training.epochs_per_step=[1]", "--out", str(out)])
