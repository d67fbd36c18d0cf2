"""Packed seeds (issue 12): training.seeds trains several seeds as one stacked model, one ordinary run
folder per seed, each seed what its single run would be."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import models.packed
from harness.cli import _default_run_folder, main
from harness.trial.config import ConfigError, TrialConfig
from harness.trial.config_io import dump, load_trial_config
from harness.trial.packed import run_packed
from harness.layout import RUN_FILES
from harness.trial.errors import TrialFailed
from harness.trial.single import run_trial
from models.mfcvae import MFCVAE

QUIET = dict(log=lambda s: None)
STEPS = 50  # per-seed training losses compared over the first STEPS optimiser steps


def tiny(**sections) -> dict:
    """A ladder MLP with 2 facets and progressive training on digits: 11 batches per epoch."""
    data = {
        "dataset": {"name": "digits"},
        "model": {"latent_dims": [4, 3], "n_clusters": [10, 5], "hidden_sizes": [32, 64]},
        "training": {"epochs_per_step": [2, 3], "batch_size": 128, "lr": 0.002, "fade_in_batches": 10,
                     "threads": 1},
        "evaluation": {"every_n_epochs": 1},
    }
    for section, values in sections.items():
        data[section].update(values)
    return data


def single(data: dict, seed: int) -> TrialConfig:
    data = json.loads(json.dumps(data))
    data["training"]["seed"] = seed
    return TrialConfig.model_validate(data)


def packed(data: dict, seeds: list[int]) -> TrialConfig:
    data = json.loads(json.dumps(data))
    data["training"]["seeds"] = seeds
    return TrialConfig.model_validate(data)


def lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_both(tmp: Path, data: dict, seeds: list[int]) -> dict:
    """The packed run of `seeds` and each seed's single run, with every training step's loss recorded."""
    recorded = {"packed": [], **{seed: [] for seed in seeds}}
    original_losses, original_terms = models.packed.packed_losses, MFCVAE.loss_terms

    def packed_losses(*args, **kwargs):
        losses = original_losses(*args, **kwargs)
        recorded["packed"].append(losses.detach().tolist())
        return losses

    current = []

    def loss_terms(self, x, *args, **kwargs):
        terms = original_terms(self, x, *args, **kwargs)
        if self.training and torch.is_grad_enabled() and current:  # a training step, not evaluation or init
            recorded[current[0]].append(float(-terms["elbo"].detach().mean()))
        return terms

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.packed, "packed_losses", packed_losses)
        patch.setattr(MFCVAE, "loss_terms", loss_terms)
        results = run_packed(packed(data, seeds), tmp / "packed", **QUIET)
        for seed in seeds:
            current[:] = [seed]
            run_trial(single(data, seed), tmp / f"single{seed}", **QUIET)
    recorded["results"] = results
    return recorded


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ladder")
    return tmp, train_both(tmp, tiny(), [0, 1])


def assert_same_training(recorded: dict, seeds: list[int], steps: int = STEPS) -> float:
    packed_losses = np.array(recorded["packed"][:steps])
    assert packed_losses.shape == (steps, len(seeds))
    worst = 0.0
    for k, seed in enumerate(seeds):
        alone = np.array(recorded[seed][:steps])
        assert len(alone) == steps
        np.testing.assert_allclose(packed_losses[:, k], alone, rtol=1e-4)
        worst = max(worst, float(np.max(np.abs(packed_losses[:, k] - alone) / np.abs(alone))))
    return worst


def assert_same_results(tmp: Path, seeds: list[int]) -> None:
    for seed in seeds:
        a, b = lines(tmp / "packed" / f"seed{seed}"), lines(tmp / f"single{seed}")
        assert [m["epoch"] for m in a] == [m["epoch"] for m in b]
        for m, n in zip(a, b):
            assert m["alphas"] == n["alphas"] and m["step"] == n["step"]
            for key in ("train_loss", "elbo", "val/elbo"):
                assert m[key] == pytest.approx(n[key], rel=1e-4), key
            for key in (k for k in n if k.startswith(("acc/", "val/acc/"))):
                assert m[key] == pytest.approx(n[key], abs=0.01), key


def test_packed_ladder_trains_each_seed_as_its_single_run(ladder):
    tmp, recorded = ladder
    worst = assert_same_training(recorded, [0, 1])
    print(f"max relative loss difference over {STEPS} steps: {worst:.2e}")
    assert_same_results(tmp, [0, 1])
    assert {seed: r["status"] for seed, r in recorded["results"].items()} == {0: "completed", 1: "completed"}


def test_packed_vade_trains_each_seed_as_its_single_run(tmp_path):
    data = tiny(model={"name": "vade", "latent_dims": [4], "n_clusters": [10], "hidden_sizes": [32, 64],
                       "pretrain_epochs": 1, "fix_pi": False},
                training={"epochs_per_step": [5], "fade_in_batches": None}, evaluation={"every_n_epochs": 5})
    recorded = train_both(tmp_path, data, [2, 5])
    assert_same_training(recorded, [2, 5])
    assert_same_results(tmp_path, [2, 5])


def test_each_seed_folder_is_a_single_run_folder(ladder):
    tmp, _ = ladder
    assert sorted(p.name for p in (tmp / "packed").iterdir()) == ["seed0", "seed1"]
    for seed in (0, 1):
        run, alone = tmp / "packed" / f"seed{seed}", tmp / f"single{seed}"
        assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in alone.iterdir())
        assert set(RUN_FILES) <= {p.name for p in run.iterdir()}
        assert (run / "config.yaml").read_text() == (alone / "config.yaml").read_text()
        assert "seeds" not in yaml.safe_load((run / "config.yaml").read_text())["training"]
        assert [list(m) for m in lines(run)] == [list(m) for m in lines(alone)]
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        ref = torch.load(alone / "checkpoint.pt", weights_only=True)
        assert list(ckpt) == list(ref) and ckpt["config"] == ref["config"]
        assert list(ckpt["model"]) == list(ref["model"])
        assert all(ckpt["model"][k].shape == v.shape for k, v in ref["model"].items())
        assert ckpt["optimizer"]["param_groups"] == ref["optimizer"]["param_groups"]
        assert {k: sorted(v) for k, v in ckpt["optimizer"]["state"].items()} == \
            {k: sorted(v) for k, v in ref["optimizer"]["state"].items()}
        assert all(ckpt["optimizer"]["state"][k]["exp_avg"].shape == v["exp_avg"].shape
                   for k, v in ref["optimizer"]["state"].items())
        assert torch.equal(ckpt["data_rng"], ref["data_rng"])  # the same data order, drawn the same number of times
        with np.load(run / "assignments.npz") as a, np.load(alone / "assignments.npz") as b:
            assert sorted(a.files) == sorted(b.files)
        result, ref_result = (json.loads((d / "result.json").read_text()) for d in (run, alone))
        assert set(result) == set(ref_result) | {"packed_with"}
        assert result["packed_with"] == [0, 1] and result["seed"] == seed and result["config"] == ref_result["config"]


def test_checkpoint_rng_is_the_single_runs(tmp_path, ladder):
    """A packed seed's checkpoint holds the global RNG state its single run holds at that epoch: its noise
    stream was forked from the global RNG after its prepare and drawn the same number of times."""
    tmp, _ = ladder
    for seed in (0, 1):
        packed_rng = torch.load(tmp / "packed" / f"seed{seed}" / "checkpoint.pt", weights_only=True)["torch_rng"]
        single_rng = torch.load(tmp / f"single{seed}" / "checkpoint.pt", weights_only=True)["torch_rng"]
        assert torch.equal(packed_rng, single_rng)


def test_a_seed_that_goes_non_finite_fails_alone(tmp_path, monkeypatch, ladder):
    """Seed 7's noise turns NaN in epoch 2: its folder records the failure as a single run does, the pack
    drops it, and seeds 0 and 1 train on exactly as in a pack without it."""
    calls = []
    original = models.packed.draw_noise

    def poisoned(generators, *args, **kwargs):
        noise = original(generators, *args, **kwargs)
        calls.append(len(generators))
        if len(calls) == 14:  # epoch 2, batch 3: row 2 is seed 7
            noise[0][2] = float("nan")
        return noise

    monkeypatch.setattr(models.packed, "draw_noise", poisoned)
    checks, original_check = [], models.packed.finite_per_seed
    monkeypatch.setattr(models.packed, "finite_per_seed", lambda values: checks.append(1) or original_check(values))
    results = run_packed(packed(tiny(), [0, 1, 7]), tmp_path, **QUIET)
    assert calls[12:16] == [3, 3, 3, 3] and calls[-1] == 2  # the pack went on with two seeds
    assert calls == [3] * 22 + [2] * 33  # it left at the end of epoch 2, not when its loss went NaN
    assert len(checks) == 5  # fp32: one host sync per epoch, none per step
    failed = json.loads((tmp_path / "seed7" / "result.json").read_text())
    assert failed["status"] == "failed" and failed["error"].startswith("non-finite loss in epoch 2 (steps up to 22)")
    assert results[7] == failed and failed["packed_with"] == [0, 1, 7]
    assert [m["epoch"] for m in lines(tmp_path / "seed7")] == [1]  # evaluations before the failure stay
    assert torch.load(tmp_path / "seed7" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    pack_without, _ = ladder
    for seed in (0, 1):
        assert results[seed]["status"] == "completed"
        final = results[seed]["final"]
        assert all(np.isfinite(v) for k, v in final.items() if isinstance(v, float))
        reference = lines(pack_without / "packed" / f"seed{seed}")
        for m, n in zip(lines(tmp_path / f"seed{seed}"), reference):
            assert m["train_loss"] == pytest.approx(n["train_loss"], rel=1e-5)
            assert m["elbo"] == pytest.approx(n["elbo"], rel=1e-5)


def test_the_seed_dimension_stays_in_models_packed():
    """The small functions harness.trial.packed hands tensors with a seed dimension to."""
    batches = [torch.full((4, 1, 2, 2), float(s)) for s in range(3)]
    x = models.packed.stack_batches(batches)
    assert x.shape == (3, 4, 1, 2, 2) and all(torch.equal(x[s], b) for s, b in enumerate(batches))
    buffers = {"alphas": torch.ones(3, 2), "other": torch.zeros(3)}
    models.packed.set_alphas(buffers, [0.0, 0.25])
    assert torch.equal(buffers["alphas"], torch.tensor([[0.0, 0.25]] * 3)) and torch.equal(buffers["other"],
                                                                                           torch.zeros(3))
    params = {"w": torch.zeros(3, 5, requires_grad=True)}
    sums = models.packed.zeros_per_seed(params)
    assert sums.shape == (3,) and sums.dtype == torch.float32 and not sums.requires_grad
    losses = torch.tensor([1.0, float("inf"), float("nan")])
    assert models.packed.finite_per_seed(losses) == [True, False, False]
    assert models.packed.values_per_seed(torch.tensor([1.5, 2.5])) == [1.5, 2.5]
    assert torch.equal(models.packed.keep_rows(torch.tensor([5.0, 6.0, 7.0]), [2, 0]), torch.tensor([7.0, 5.0]))


def test_every_seed_non_finite_is_a_failed_trial(tmp_path, monkeypatch):
    original = models.packed.draw_noise

    def poisoned(*args, **kwargs):
        return [torch.full_like(eps, float("nan")) for eps in original(*args, **kwargs)]

    monkeypatch.setattr(models.packed, "draw_noise", poisoned)
    data = tiny(training={"epochs_per_step": [1, 1]})
    with pytest.raises(TrialFailed, match="every packed seed failed: non-finite loss in epoch 1"):
        run_packed(packed(data, [0, 1]), tmp_path, **QUIET)
    for seed in (0, 1):
        result = json.loads((tmp_path / f"seed{seed}" / "result.json").read_text())
        assert result["status"] == "failed" and "non-finite loss in epoch 1" in result["error"]


class Killed(Exception):
    pass


def test_a_killed_packed_seed_resumes_as_a_single_run(tmp_path, ladder, capsys):
    def kill_at_epoch_2(metrics, run_dir):
        if metrics["epoch"] == 2:
            raise Killed  # during seed 0's evaluation: seed 1's last checkpoint is epoch 1

    with pytest.raises(TrialFailed):
        run_packed(packed(tiny(), [0, 1]), tmp_path, reporter=kill_at_epoch_2, **QUIET)
    assert json.loads((tmp_path / "seed1" / "result.json").read_text())["status"] == "failed"
    with pytest.raises(SystemExit, match=r"holds packed seeds.*not completed: seed0, seed1.*"
                                         r"mfcbench train --out .*seed0 --resume"):
        main(["train", "--out", str(tmp_path), "--resume"])
    assert main(["train", "--out", str(tmp_path / "seed1"), "--resume"]) == 0
    result = json.loads((tmp_path / "seed1" / "result.json").read_text())
    assert result["status"] == "completed" and result["resumed_at_epoch"] == 1 and "packed_with" not in result
    reference, _ = ladder
    resumed, alone = lines(tmp_path / "seed1"), lines(reference / "single1")
    assert [m["epoch"] for m in resumed] == [1, 2, 3, 4, 5]
    for m, n in zip(resumed, alone):
        for key in ("train_loss", "elbo", "val/elbo"):
            assert m[key] == pytest.approx(n[key], rel=1e-4), key
        assert m["acc/facet1/digit"] == pytest.approx(n["acc/facet1/digit"], abs=0.01)


@pytest.mark.parametrize("architecture,covariance", [("ladder-conv", "diagonal"), ("shared-conv", "diagonal"),
                                                     ("ladder-mlp", "full")])
def test_packed_losses_and_running_statistics_are_each_models(architecture, covariance):
    """models.packed on its own: the vmapped loss of each seed is its model's loss on its batch and noise,
    and in train mode each seed's batch norm updates its own slice of the stacked running statistics,
    exactly as the model's own batch norm does (forward passes only: no optimiser in between)."""
    from harness.trial.config import TrialConfig as Config
    from models import build_model

    config = Config.model_validate(tiny(model={"architecture": architecture, "covariance": covariance,
                                               "hidden_sizes": [4, 8]})).model
    models_ = []
    for seed in (0, 3):
        torch.manual_seed(seed)
        models_.append(build_model(config, (1, 8, 8), "bernoulli").train())
    params, buffers = models.packed.stack(models_)
    template = build_model(config, (1, 8, 8), "bernoulli").train()
    for step in range(3):
        x = torch.rand(2, 16, 1, 8, 8)
        generators = [torch.Generator().manual_seed(10 * step + k) for k in range(2)]
        noise = models.packed.draw_noise(generators, 16, config.latent_dims, torch.device("cpu"))
        losses = models.packed.packed_losses(template, params, buffers, x, noise)
        for k, model in enumerate(models_):
            own = [torch.Generator().manual_seed(10 * step + k)]
            eps = [torch.randn((16, d), generator=own[0]) for d in config.latent_dims]
            assert all(torch.equal(e, n[k]) for e, n in zip(eps, noise))  # the draws reparameterise makes
            alone = -model.loss_terms(x[k], noise=eps)["elbo"].mean()
            torch.testing.assert_close(losses[k], alone, rtol=1e-6, atol=1e-5)
    for k, model in enumerate(models_):
        state = models.packed.unstack(params, buffers, k)
        for name, value in model.named_buffers():
            torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-7)
            if name.endswith("num_batches_tracked") and architecture.endswith("conv"):
                assert int(state[name]) == 3


def test_batch_norm_running_statistics_per_seed(tmp_path):
    """ladder-conv under vmap: each seed's batch norm normalises by its own batch and keeps its own
    running statistics, equal to its single run's up to the drift of float rounding in 22 steps. The
    decoder rungs' per-feature statistics (batch norm over a linear layer's features, Table 5) average
    16 values each where a channel's average 16 x H x W, so they carry that drift about sqrt(H W) times
    less averaged: 1e-2 relative for them, 2e-3 for the per-channel ones."""
    data = tiny(model={"architecture": "ladder-conv", "hidden_sizes": [4, 8]},
                training={"epochs_per_step": [1, 1]}, evaluation={"every_n_epochs": 2})
    recorded = train_both(tmp_path, data, [0, 3])
    assert_same_training(recorded, [0, 3], steps=22)
    assert_same_results(tmp_path, [0, 3])
    for seed in (0, 3):
        packed_model = torch.load(tmp_path / "packed" / f"seed{seed}" / "checkpoint.pt", weights_only=True)["model"]
        alone = torch.load(tmp_path / f"single{seed}" / "checkpoint.pt", weights_only=True)["model"]
        stats = [k for k in alone if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert len(stats) >= 3 * 6
        for key in stats:
            if key.endswith("num_batches_tracked"):
                assert int(packed_model[key]) == int(alone[key]) == 22
            elif alone[key].numel() > 8:  # per feature: 4 channels x 4 x 4 in the decoder rung of facet 1
                torch.testing.assert_close(packed_model[key], alone[key], rtol=1e-2, atol=1e-3)
            else:
                torch.testing.assert_close(packed_model[key], alone[key], rtol=2e-3, atol=2e-4)


def test_for_seed_is_the_single_runs_config():
    config = load_trial_config(None, ["training.seeds=[3,1,2]", "training.lr=0.01"])
    assert config.packed and [c.training.seed for c in config.unpacked()] == [3, 1, 2]
    assert dump(config.for_seed(1)) == dump(load_trial_config(None, ["training.seed=1", "training.lr=0.01"]))
    assert "seeds" not in yaml.safe_load(dump(load_trial_config(None, [])))["training"]  # single runs: as before
    assert "seed" not in yaml.safe_load(dump(config))["training"]
    assert TrialConfig.model_validate(config.model_dump(mode="json")) == config  # a written packed config reads back
    assert _default_run_folder(None, config) == Path("runs/default-seeds3_1_2")
    assert _default_run_folder("paper-mnist", load_trial_config(None, ["training.seeds=[0,1,2,3]"])) == \
        Path("runs/paper-mnist-seeds0-3")


@pytest.mark.parametrize("overrides,message", [
    (["training.seeds=[0,1]", "training.seed=2"], "training.seed (2) and training.seeds ([0, 1]) are exclusive"),
    (["training.seeds=[0,1,0]"], "training.seeds: seeds must be distinct: 0 given more than once"),
    (["training.seeds=[4]"], "training.seeds: packed training needs 2 or more distinct seeds; for one seed set "
                             "training.seed"),
    (["training.seeds=[0,1]", "model.name=kmeans", "model.latent_dims=[1]", "model.n_clusters=[10]"],
     "training.seeds: model.name kmeans is fitted in one go, not trained by gradient steps; packed seeds apply "
     "to mfcvae and vade only"),
])
def test_bad_packed_config_is_refused_before_anything_is_written(tmp_path, capsys, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_trial_config(None, overrides)
    argv = ["train", "--out", str(tmp_path / "out")]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_trains_packed_seeds_into_seed_folders(tmp_path, capsys):
    out = tmp_path / "pack"
    sets = ["model.latent_dims=[3]", "model.n_clusters=[10]", "model.hidden_sizes=[32]",
            "training.epochs_per_step=[1]", "training.threads=1", "training.seeds=[0,1]"]
    argv = ["train", "--out", str(out)] + [arg for s in sets for arg in ("--set", s)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 seeds completed" in printed and "[seed1] epoch 1/1 step 1" in printed
    assert sorted(p.name for p in out.iterdir()) == ["seed0", "seed1"]
    assert all((out / f"seed{s}" / "result.json").exists() for s in (0, 1))
    with pytest.raises(SystemExit, match="other files"):  # the folder of a pack is not trained into again
        main(argv)
    with pytest.raises(SystemExit, match=r"holds packed seeds, one run folder each \(every seed completed\)"):
        main(["train", "--out", str(out), "--resume"])
    assert main(["train", "--out", str(out / "seed0"), "--resume"]) == 0
    assert "already completed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not resumed as a pack"):
        main(["train", "--out", str(out / "seed0"), "--resume", "--set", "training.seeds=[0,1]"])


def test_seeds_override_replaces_the_seed_of_a_written_config(tmp_path):
    """Every config.yaml and resolved sweep base holds a training.seed: `--set training.seeds=[..]` on
    it (or a sweep variant setting training.seeds) replaces that seed instead of being refused; a file
    that itself holds both is still an error naming both keys."""
    import yaml

    from harness.trial.config import ConfigError
    from harness.trial.config_io import load_trial_config
    from harness.sweep.overrides import resolved_base, with_overrides

    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump({"training": {"seed": 3, "epochs_per_step": [1, 1]}}))
    config = load_trial_config(written, ["training.seeds=[0,1]"])
    assert config.training.seeds == [0, 1]
    back = load_trial_config(written.parent / "config.yaml", ["training.seed=5"])
    assert back.training.seeds is None and back.training.seed == 5
    variant = TrialConfig.model_validate(with_overrides(resolved_base({"training": {"seed": 3}}),
                                                        {"training.seeds": [4, 5]}))
    assert variant.training.seeds == [4, 5]
    written.write_text(yaml.safe_dump({"training": {"seed": 3, "seeds": [0, 1]}}))
    with pytest.raises(ConfigError, match=r"training\.seed .*training\.seeds"):
        load_trial_config(written)
