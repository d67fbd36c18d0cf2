"""training.precision (issue 12): the networks under autocast, the ELBO's mathematics in float32, fp16 only
on CUDA. bf16 is tested on the CPU (forced there even where it is slow: a few steps of a tiny model)."""
import json
import re
import warnings

import numpy as np
import pytest
import torch

import harness.trial.precision
from harness.cli import main
from harness.trial.config import ConfigError, TrialConfig
from harness.trial.config_io import load_trial_config
from harness.trial.packed import run_packed
from harness.trial.precision import Precision, PrecisionError
from harness.trial.single import run_trial
from models import build_model
from models.mfcvae import MFCVAE
from models.priors import MixturePrior

QUIET = dict(log=lambda s: None)


def tiny(precision: str = "fp32", **training) -> dict:
    """A 2-facet ladder MLP on digits, one epoch per progressive step (11 batches each)."""
    return {
        "dataset": {"name": "digits"},
        "model": {"latent_dims": [4, 3], "n_clusters": [10, 5], "hidden_sizes": [32, 64]},
        "training": {"epochs_per_step": [1, 1], "batch_size": 128, "lr": 0.002, "fade_in_batches": 5,
                     "threads": 1, "precision": precision, **training},
        "evaluation": {"every_n_epochs": 1},
    }


@pytest.fixture
def no_bf16_warning(monkeypatch):
    """bf16 on this CPU without the slowdown warning, whatever the CPU (the warning has its own test)."""
    monkeypatch.setattr(harness.trial.precision, "cpu_has_bf16_instructions", lambda: True)


def record_training_losses(monkeypatch) -> list[float]:
    """Every training step's loss of single runs (not evaluation, not the data-dependent init)."""
    losses, original = [], MFCVAE.loss_terms

    def loss_terms(self, x, *args, **kwargs):
        terms = original(self, x, *args, **kwargs)
        if self.training and torch.is_grad_enabled():
            losses.append(float(-terms["elbo"].detach().mean()))
        return terms

    monkeypatch.setattr(MFCVAE, "loss_terms", loss_terms)
    return losses


def test_bf16_trains_close_to_fp32_on_the_cpu(tmp_path, monkeypatch, no_bf16_warning):
    losses = record_training_losses(monkeypatch)
    results = {}
    for precision in ("fp32", "bf16"):
        losses.clear()
        results[precision] = (run_trial(TrialConfig.model_validate(tiny(precision)), tmp_path / precision, **QUIET),
                              list(losses))
    (fp32, fp32_losses), (bf16, bf16_losses) = results["fp32"], results["bf16"]
    assert len(bf16_losses) == len(fp32_losses) == 22 and np.isfinite(bf16_losses).all()
    np.testing.assert_allclose(bf16_losses, fp32_losses, rtol=5e-2)
    assert bf16_losses != fp32_losses  # it did run in bf16
    assert bf16["status"] == "completed" and bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert bf16["final"]["elbo"] == pytest.approx(fp32["final"]["elbo"], rel=5e-2)
    assert json.loads((tmp_path / "bf16" / "result.json").read_text())["config"]["training"]["precision"] == "bf16"
    assert "grad_scaler" not in torch.load(tmp_path / "bf16" / "checkpoint.pt", weights_only=True)


def test_bf16_packed_seeds_train_as_their_bf16_single_runs(tmp_path, no_bf16_warning):
    """The pack runs its vmapped networks under the same autocast: each seed's evaluations match its
    bf16 single run (loosely: batched bf16 matmuls round differently)."""
    data = tiny("bf16")
    packed = dict(data, training={**data["training"], "seeds": [0, 1]})
    results = run_packed(TrialConfig.model_validate(packed), tmp_path / "packed", **QUIET)
    for seed in (0, 1):
        alone = run_trial(TrialConfig.model_validate(dict(data, training={**data["training"], "seed": seed})),
                          tmp_path / f"single{seed}", **QUIET)
        assert results[seed]["precision"] == "bf16" and results[seed]["status"] == "completed"
        assert results[seed]["final"]["elbo"] == pytest.approx(alone["final"]["elbo"], rel=5e-2)
        assert results[seed]["final"]["train_loss"] == pytest.approx(alone["final"]["train_loss"], rel=5e-2)


@pytest.mark.parametrize("architecture", ["ladder-mlp", "shared-conv"])
def test_networks_in_bf16_the_elbo_in_float32(monkeypatch, no_bf16_warning, architecture):
    """Under the bf16 autocast the encoder's and decoder's layers compute in bf16; the means, log
    variances, z, the decoder output handed to the likelihood and every ELBO term are float32, and the
    prior's log densities are computed with autocast off."""
    data = tiny()
    data["model"].update(architecture=architecture, hidden_sizes=[8, 16])
    config = TrialConfig.model_validate(data).model
    model = build_model(config, (1, 8, 8), "gaussian").train()
    layer_dtypes, prior_autocast = [], []
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            layer.register_forward_hook(lambda module, inputs, output: layer_dtypes.append(output.dtype))
    original = MixturePrior.log_prob_given_c

    def log_prob_given_c(self, z):
        prior_autocast.append((torch.is_autocast_enabled("cpu"), z.dtype))
        return original(self, z)

    monkeypatch.setattr(MixturePrior, "log_prob_given_c", log_prob_given_c)
    likelihood_inputs = []
    original_likelihood = model.likelihood.log_prob
    model.likelihood.log_prob = lambda output, x: (likelihood_inputs.append(output.dtype)
                                                   or original_likelihood(output, x))
    precision = Precision("bf16", "cpu")
    with precision.autocast():
        terms = model.loss_terms(torch.rand(16, 1, 8, 8))
        assert torch.is_autocast_enabled("cpu")  # switched off inside loss_terms only
    assert layer_dtypes and set(layer_dtypes) == {torch.bfloat16}
    assert likelihood_inputs == [torch.float32]
    assert prior_autocast == [(False, torch.float32)] * 2
    assert all(t.dtype == torch.float32 for t in (terms["elbo"], terms["log_px"], *terms["zs"]))
    assert all(m.dtype == v.dtype == torch.float32 for m, v in terms["params"])
    for facet in terms["facets"]:
        assert all(t.dtype == torch.float32 for t in (facet.kl, facet.kl_z, facet.kl_c, facet.log_q_c))
    loss = -terms["elbo"].mean()
    precision.step(loss, torch.optim.Adam(model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
    assert torch.isfinite(loss)


def test_fp32_loss_terms_are_unchanged_by_the_casts():
    """In fp32 the casts are no-ops and no autocast context is entered: the same numbers as the
    networks and terms computed by hand."""
    config = TrialConfig.model_validate(tiny()).model
    model = build_model(config, (1, 8, 8), "bernoulli")
    x = torch.rand(8, 1, 8, 8)
    noise = [torch.randn(8, d) for d in config.latent_dims]
    terms = model.loss_terms(x, noise=noise)
    params = model.encode(x)
    assert all(torch.equal(m, n) for (m, _), (n, _) in zip(params, terms["params"]))
    zs = model.reparameterise(params, noise=noise)
    assert torch.equal(terms["log_px"], model.likelihood.log_prob(model.decode(zs), x))


def test_bf16_on_a_cpu_without_bf16_instructions_warns_with_the_slowdown(monkeypatch):
    monkeypatch.setattr(harness.trial.precision, "cpu_has_bf16_instructions", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"without bf16 instructions .* takes 4x \(small models\) to 11x "
                                            r"\(the MNIST FC ladder\) fp32's time"):
        Precision("bf16", "cpu")
    monkeypatch.setattr(harness.trial.precision, "cpu_has_bf16_instructions", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Precision("bf16", "cpu")
        Precision("fp32", "cpu")


@pytest.mark.parametrize("overrides,message", [
    (["training.precision=fp16", "training.device=cpu"],
     "training.precision: fp16 needs a CUDA device (autocast with a grad scaler); training.device cpu runs on the "
     "CPU, which has no fp16 training: allowed there fp32 or bf16"),
    (["training.precision=fp8"], "training.precision: Input should be 'fp32', 'bf16' or 'fp16' (got 'fp8')"),
    (["training.precision=bf16", "training.device=cpu", "training.precision=half"],
     "training.precision: Input should be 'fp32', 'bf16' or 'fp16' (got 'half')"),
])
def test_bad_precision_is_refused_naming_the_key(tmp_path, capsys, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_trial_config(None, overrides)
    argv = ["train", "--out", str(tmp_path / "out")] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_precision_defaults_to_fp32_and_reads_back():
    assert load_trial_config(None, []).training.precision == "fp32"
    assert load_trial_config(None, ["training.precision=fp16"]).training.precision == "fp16"  # auto: CUDA decides
    config = load_trial_config(None, ["training.precision=bf16"])
    assert TrialConfig.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize("packed", [False, True])
def test_fp16_where_auto_resolves_to_the_cpu_is_refused_before_any_file(tmp_path, capsys, monkeypatch, packed):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seeds = {"seeds": [0, 1]} if packed else {}
    config = TrialConfig.model_validate(tiny("fp16", device="auto", **seeds))
    with pytest.raises(PrecisionError, match=re.escape("training.precision: fp16 needs a CUDA device (autocast with "
                                                       "a grad scaler); training.device auto resolves to the CPU here "
                                                       "(no CUDA), which has no fp16 training: allowed there fp32 "
                                                       "or bf16")):
        (run_packed if packed else run_trial)(config, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()
    sets = ["training.precision=fp16", "model.latent_dims=[3]", "model.n_clusters=[10]",
            "training.epochs_per_step=[1]"] + (["training.seeds=[0,1]"] if packed else [])
    assert main(["train", "--out", str(tmp_path / "cli")] + [a for s in sets for a in ("--set", s)]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_fp16_loss_scaling_is_checkpointed_and_resumed(tmp_path, monkeypatch):
    """The fp16 path's GradScaler, exercised on the CPU by lifting the CUDA-only guard (CPU autocast has
    fp16): its state is in every checkpoint and a resumed run continues from it."""
    monkeypatch.setattr(harness.trial.precision, "check_precision", lambda *args: None)
    monkeypatch.setattr(harness.trial.precision, "refuse_before_writing", lambda *args: None)
    monkeypatch.setattr("harness.trial.single.refuse_before_writing", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = TrialConfig.model_validate(tiny("fp16", device="auto"))
    result = run_trial(config, tmp_path / "run", **QUIET)
    assert result["status"] == "completed" and result["precision"] == "fp16"
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["grad_scaler"]["scale"] > 0 and "_growth_tracker" in ckpt["grad_scaler"]
    restored = []
    monkeypatch.setattr(Precision, "load_state_dict", lambda self, state: restored.append(state))
    ckpt["epoch"] = 1  # as if killed after epoch 1
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    resumed = run_trial(config, tmp_path / "run", resume=True, **QUIET)
    assert resumed["status"] == "completed" and restored == [ckpt["grad_scaler"]]


def test_bf16_on_a_gpu_without_bf16_is_refused_before_any_file(tmp_path, monkeypatch):
    """A GPU older than compute capability 8.0 (the paper's Tesla M60, a V100) has no bf16 arithmetic."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    config = TrialConfig.model_validate(tiny("bf16", device="cuda"))
    with pytest.raises(PrecisionError, match=re.escape("training.precision: bf16 needs a GPU with bf16 arithmetic "
                                                       "(compute capability 8.0 or later: A100, H100, RTX 30xx and "
                                                       "newer); Tesla V100-SXM2-16GB has 7.0: allowed there fp32 or "
                                                       "fp16")):
        run_trial(config, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def lift_the_fp16_guard(monkeypatch):
    """fp16 on the CPU (CPU autocast has fp16), as the loss-scaling test above exercises it."""
    monkeypatch.setattr(harness.trial.precision, "check_precision", lambda *args: None)
    monkeypatch.setattr("harness.trial.single.refuse_before_writing", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_an_fp16_seed_whose_loss_overflows_leaves_the_pack_at_once(tmp_path, monkeypatch):
    """The pack's one GradScaler would skip every step once seed 2's loss is inf (its noise is, from step
    5 on) and halve the scale to 0, then write NaN into seeds 0 and 1. Under fp16 the losses are checked
    every step: seed 2 is recorded failed at step 5 and leaves the pack at once (its noise and its batch
    iterator with it), step 5 trains no seed, and seeds 0 and 1 train on with a sane scale."""
    import harness.trial.packed
    import models.packed

    lift_the_fp16_guard(monkeypatch)
    noise_rows, original_noise = [], models.packed.draw_noise

    def poisoned(generators, *args, **kwargs):
        noise = original_noise(generators, *args, **kwargs)
        noise_rows.append(len(generators))
        if len(noise_rows) >= 5 and len(generators) == 3:
            noise[0][2] = float("inf")  # seed 2 overflows from step 5 on
        return noise

    monkeypatch.setattr(models.packed, "draw_noise", poisoned)
    drawn, original_batches = {}, harness.trial.packed.batches

    def counted_batches(x, batch_size, generator):  # batches drawn per seed (its data-order generator's seed)
        for batch in original_batches(x, batch_size, generator):
            drawn[generator.initial_seed()] = drawn.get(generator.initial_seed(), 0) + 1
            yield batch

    monkeypatch.setattr(harness.trial.packed, "batches", counted_batches)
    scaled_steps, original_step = [], Precision.step
    monkeypatch.setattr(Precision, "step", lambda self, loss, optimiser: (
        scaled_steps.append(self.scaler.get_scale()), original_step(self, loss, optimiser)))
    checks, original_check = [], models.packed.finite_per_seed
    monkeypatch.setattr(models.packed, "finite_per_seed", lambda values: checks.append(1) or original_check(values))

    results = run_packed(TrialConfig.model_validate(tiny("fp16", device="auto", seeds=[0, 1, 2])), tmp_path,
                         **QUIET)
    assert noise_rows == [3] * 5 + [2] * 17  # 2 epochs of 11 batches; seed 2 left at step 5
    assert drawn == {0: 22, 1: 22, 2: 5}  # its batch iterator went with it
    assert len(scaled_steps) == 21  # step 5 skipped: no backward, the scaler untouched
    assert len(checks) == 22 + 2  # every step under fp16, and each epoch's sum
    failed = json.loads((tmp_path / "seed2" / "result.json").read_text())
    assert failed["status"] == "failed" and results[2] == failed and failed["packed_with"] == [0, 1, 2]
    assert failed["error"].startswith("non-finite loss in epoch 1 (steps up to 5); try a lower training.lr")
    assert not (tmp_path / "seed2" / "metrics.jsonl").exists()  # it failed before its first evaluation
    for seed in (0, 1):
        result = results[seed]
        assert result["status"] == "completed" and result["precision"] == "fp16"
        assert all(np.isfinite(result["final"][k]) for k in ("train_loss", "elbo", "val/elbo"))
        scale = torch.load(tmp_path / f"seed{seed}" / "checkpoint.pt", weights_only=True)["grad_scaler"]["scale"]
        assert 2.0 ** 8 <= scale <= 2.0 ** 16  # GradScaler starts at 2**16; unchecked it fell to ~1e-44
        model = torch.load(tmp_path / f"seed{seed}" / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
    assert min(scaled_steps) >= 2.0 ** 8


@pytest.fixture
def gpu_tune_session(tune_session, monkeypatch):
    """tune_session (tests/conftest.py) of a trial Ray gave a GPU."""
    import ray

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    return tune_session


@pytest.mark.parametrize("packed", [False, True])
def test_bf16_on_a_gpu_without_bf16_in_a_sweep_is_a_failed_trial(tmp_path, monkeypatch, gpu_tune_session, packed):
    """In a sweep the refusal is the trial's failure, with its message, as any deterministic failure is:
    not an exception that Ray retries and then records as an error."""
    from harness.sweep.tune.worker import trainable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    seeds = {"seeds": [0, 1]} if packed else {"seed": 3}
    trial = TrialConfig.model_validate(tiny("bf16", device="cuda", **seeds)).model_dump(mode="json")
    trainable({"grid_point": {"variant": "v", "trial": trial}, "overrides": {}, "cpus": 1,
               "experiment_dir": str(tmp_path / "exp")})
    (report,) = gpu_tune_session
    assert report["mfcbench_status"] == "failed"
    assert report["error"] == ("training.precision: bf16 needs a GPU with bf16 arithmetic (compute capability 8.0 or "
                               "later: A100, H100, RTX 30xx and newer); Tesla V100-SXM2-16GB has 7.0: allowed there "
                               "fp32 or fp16")
    assert report["seeds" if packed else "seed"] == ("0,1" if packed else 3)
    assert not list((tmp_path / "exp").glob("trial_*/runs/seed*/*"))  # refused before the run's first file
