"""The ladders against the paper's Tables 4 and 5 and against the authors' code, layer for layer.

The authors' numbers are constants recorded from FabianFalck/mfcvae at commit 9f1eca4 (torch 2.14.1,
CPU), by building their `MFCVAE` as train.py does and counting each block's parameters and output
shape, and by running train.py's initialisation (lines 429-467: `initialize_fc_layers`, the data
batch's `first_forward`, boilr 0.7.4's `data_dependent_init`, `initialize_p_z_c_params_with_gmm`)
on the first 600 training images of shapes-config1 (split_seed 0) for seeds 0-4. Their blocks:
- conv (conv_vlae.py): b_1^enc `conv_backbone_0` (l. 85-90), r_1^enc `conv_rung_0` (l. 108-120) with
  mfcvae.py's two linear layers to mean and log variance (l. 130-133), b_2^enc `conv_backbone_1`
  (l. 92-97), r_2^enc `conv_rung_1` (l. 123-135), r_2^dec `mlp_rung_1` (l. 270), b_2^dec
  `conv_backbone_1` (l. 272-284), r_1^dec `mlp_rung_0` (l. 286), b_1^dec `conv_backbone_0` (l. 289-294).
  Every convolution comes from utils.py's build_cnn_network (l. 139-183): its inverted `weight_norm`
  flag weight-normalises every Conv2d and no ConvTranspose2d (l. 160-168); batch norm after each
  (l. 176-177). The decoder rungs' batch norm is configs/3dshapes_1.yml's `do_fc_batch_norm: true`.
- FC (models_fc.py, the configs' enc/dec dims): FCvlaeEncoder (l. 54-104) and FCvlaeDecoder
  (l. 109-168), whose deepest rung is part of its backbone, and mfcvae.py's `layer_x_hat_z` (l. 148).
The tests run in seconds on the CPU.
"""
import math

import pytest
import torch

from harness.data.procedural_shapes import load_procedural_shapes
from models import ModelConfig, build_model

BLOCKS = ["enc_backbone_1", "enc_rung_1", "enc_backbone_2", "enc_rung_2",
          "dec_rung_2", "dec_backbone_2", "dec_rung_1", "dec_backbone_1"]

# Parameters per block of the authors' models (their FC ladder counts r_2^dec inside b_2^dec).
AUTHORS_PARAMS = {
    "mnist_fc": [392500, 5010, 1002000, 20010, 0, 1012500, 3000, 643284],
    "shapes_fc": [1536500, 20040, 1002000, 8004, 0, 1006500, 10500, 1789572],
    "shapes_conv": [3328, 257064, 131584, 792068, 81920, 598592, 376832, 6153],
    "svhn_conv": [3328, 269612, 131584, 802318, 163840, 598592, 409600, 6153],
}
# Output shapes per block of the authors' conv ladder (32x32x3 inputs); an encoder rung's is the map
# its last convolution gives its linear layers, a decoder rung's the features before the reshape.
AUTHORS_CONV_SHAPES = {"enc_backbone_1": (64, 16, 16), "enc_rung_1": (64, 7, 7), "enc_backbone_2": (128, 8, 8),
                       "enc_rung_2": (256, 2, 2), "dec_rung_2": (16384,), "dec_backbone_2": (64, 16, 16),
                       "dec_rung_1": (16384,), "dec_backbone_1": (3, 32, 32)}
AUTHORS_FC_SHAPES = {"enc_backbone_1": (500,), "enc_backbone_2": (2000,), "dec_backbone_2": (500,),
                     "dec_rung_1": (500,)}

RECIPES = {  # Table 3's columns, the networks' part
    "mnist_fc": (dict(architecture="ladder-mlp", latent_dims=[5, 5], n_clusters=[25, 25]), (1, 28, 28)),
    "shapes_fc": (dict(architecture="ladder-mlp", latent_dims=[20, 2], n_clusters=[60, 20], activation="elu"),
                  (3, 32, 32)),
    "shapes_conv": (dict(architecture="ladder-conv", latent_dims=[20, 2], n_clusters=[60, 20], activation="elu",
                         covariance="full"), (3, 32, 32)),
    "svhn_conv": (dict(architecture="ladder-conv", latent_dims=[22, 7], n_clusters=[200, 50], activation="elu",
                       covariance="full"), (3, 32, 32)),
}
ARCHITECTURE_CHOICES = ["fc-output-layer", "conv-3x3-upsample", "weight-norm"]


def model(recipe, authors_code=(), **kw):
    settings, shape = RECIPES[recipe]
    config = ModelConfig(**{**settings, **kw}, authors_code=list(authors_code))
    return build_model(config, shape, "gaussian" if shape[0] == 3 else "bernoulli"), shape


def blocks(m):
    e, d = m.encoder, m.decoder
    return dict(zip(BLOCKS, [e.backbone[0], e.rungs[0], e.backbone[1], e.rungs[1],
                             d.rungs[1], d.backbone[1], d.rungs[0], d.backbone[0]]))


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def block_params(m, fc: bool):
    counts = {name: n_params(b) for name, b in blocks(m).items()}
    if fc:  # as the authors count it
        counts["dec_backbone_2"] += counts.pop("dec_rung_2")
        counts["dec_rung_2"] = 0
    return [counts[b] for b in BLOCKS]


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_the_authors_choices_give_their_networks_block_for_block(recipe):
    m, _ = model(recipe, ARCHITECTURE_CHOICES)
    assert block_params(m, recipe.endswith("fc")) == AUTHORS_PARAMS[recipe]


def conv_block(c_in, c_out, k):
    """A (transposed) convolution with bias, then batch norm (weight and bias per channel)."""
    return c_in * c_out * k * k + c_out + 2 * c_out


def linear(n_in, n_out):
    return n_in * n_out + n_out


@pytest.mark.parametrize("recipe", ["shapes_conv", "svhn_conv"])
def test_the_conv_ladder_is_table_5_line_by_line(recipe):
    """Table 5, parameters per block, from its lines; r^dec's batch norm is over 16,384 features."""
    m, _ = model(recipe)
    d1, d2 = RECIPES[recipe][0]["latent_dims"]
    table5 = [
        conv_block(3, 64, 4),                                                  # b_1^enc
        conv_block(64, 64, 4) + conv_block(64, 64, 4) + linear(3136, 2 * d1),  # r_1^enc (*: stride 1)
        conv_block(64, 128, 4),                                                # b_2^enc
        conv_block(128, 128, 4) + conv_block(128, 256, 4) + linear(1024, 2 * d2),  # r_2^enc
        linear(d2, 16384) + 2 * 16384,                                         # r_2^dec
        conv_block(256, 128, 4) + conv_block(128, 64, 4),                      # b_2^dec (second: stride 1)
        linear(d1, 16384) + 2 * 16384,                                         # r_1^dec
        conv_block(128, 3, 4),                                                 # b_1^dec, ELU and batch norm
    ]
    assert block_params(m, fc=False) == table5
    # Where the paper and the code part: weight norm's g (one per output channel of every encoder
    # convolution) and a 3x3 stride-1 upsampling layer instead of a 4x4 one.
    authors = AUTHORS_PARAMS[recipe]
    g = [64, 64 + 64, 128, 128 + 256, 0, 0, 0, 0]
    upsample = [0, 0, 0, 0, 0, 128 * 64 * (4 * 4 - 3 * 3), 0, 0]
    assert [t - a for t, a in zip(table5, authors)] == [u - w for u, w in zip(upsample, g)]


@pytest.mark.parametrize("recipe,input_dim", [("mnist_fc", 784), ("shapes_fc", 3072)])
def test_the_fc_ladder_is_table_4_line_by_line(recipe, input_dim):
    m, _ = model(recipe)
    d1, d2 = RECIPES[recipe][0]["latent_dims"]
    table4 = [linear(input_dim, 500), linear(500, 2 * d1), linear(500, 2000), linear(2000, 2 * d2),
              linear(d2, 2000), linear(2000, 500), linear(d1, 500), linear(500, input_dim)]
    assert [n_params(b) for b in blocks(m).values()] == table4
    # The authors' b_1^dec has one more 500 x 500 layer before the output layer.
    assert AUTHORS_PARAMS[recipe][-1] - table4[-1] == linear(500, 500)


def output_shapes(m, shape, fc):
    seen = {}

    def grab(name):
        return lambda module, inputs, output: seen.__setitem__(name, tuple(output.shape[1:]))

    handles = []
    for name, b in blocks(m).items():
        if name.startswith("enc_rung") and not fc:
            b = b[len(b) - 3]  # the last convolution block, before Flatten and the linear layer
        elif name.startswith("dec_rung") and not fc:
            b = b[2]  # batch norm over the linear layer's features, before the reshape
        handles.append(b.register_forward_hook(grab(name)))
    m.eval()
    with torch.no_grad():
        m.decode(m.posterior_means(torch.rand(4, *shape)))
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("authors_code", [[], ARCHITECTURE_CHOICES])
def test_every_block_outputs_the_authors_shapes(authors_code):
    conv, shape = model("shapes_conv", authors_code)
    assert output_shapes(conv, shape, fc=False) == AUTHORS_CONV_SHAPES
    fc, shape = model("mnist_fc", authors_code)
    got = output_shapes(fc, shape, fc=True)
    assert {k: got[k] for k in AUTHORS_FC_SHAPES} == AUTHORS_FC_SHAPES
    assert got["dec_backbone_1"] == (784,)


def test_other_shapes_and_facet_counts_use_the_general_ladder():
    """Table 5 is for two facets at 32x32; three facets or 28x28 images get the general ladder."""
    m = build_model(ModelConfig(architecture="ladder-conv", latent_dims=[4, 3, 2], n_clusters=[5, 4, 3]),
                    (1, 28, 28), "bernoulli")
    assert len(m.encoder.backbone) == 3
    assert m.decode(m.posterior_means(torch.rand(2, 1, 28, 28))).shape == (2, 1, 28, 28)
    table5, _ = model("shapes_conv")
    assert n_params(table5.encoder.rungs[1]) != n_params(
        build_model(ModelConfig(**{**RECIPES["shapes_conv"][0], "hidden_sizes": [64, 128]}), (3, 32, 32),
                    "gaussian").encoder.rungs[1])


# Init statistics of the authors' code on the fixed batch, seeds 0-4 (see the module docstring).
# spread: the posterior means' standard deviation over images, averaged over dimensions; max_q: the
# mean over images of max_c q(c_j | x) at the posterior mean. "eval": batch norm with running
# statistics (the GMM fit and their evaluation), "train": with batch statistics (the first step).
AUTHORS_INIT = {
    "conv": {"eval_spread_1": (0.00231, 0.00262), "eval_max_q_1": (0.01682, 0.01686),
             "eval_spread_2": (0.00119, 0.00201), "eval_max_q_2": (0.05000, 0.05002),
             "train_spread_1": (0.05195, 0.07023), "train_max_q_1": (0.02085, 0.02250),
             "train_spread_2": (0.06479, 0.12249), "train_max_q_2": (0.05013, 0.05138)},
    "fc": {"eval_spread_1": (0.01372, 0.02977), "eval_max_q_1": (0.02241, 0.06033),
           "eval_spread_2": (0.01246, 0.12332), "eval_max_q_2": (0.05164, 0.22320)},
}
INIT_CHOICES = {"conv": ["conv-3x3-upsample", "weight-norm", "layer-data-init", "eval-prior-init"],
                "fc": ["fc-output-layer", "layer-data-init", "eval-prior-init"]}


@pytest.fixture(scope="module")
def fixed_batch():
    return load_procedural_shapes(1, split_seed=0).x_train[:600].float()


def init_statistics(kind, authors_code, seed, x):
    torch.manual_seed(seed)
    recipe = "shapes_conv" if kind == "conv" else "shapes_fc"
    m, _ = model(recipe, authors_code, init="data", fix_pi=True, likelihood_std=0.6, gaussian_mean="identity",
                 covariance="full")  # Table 3's 3DShapes column
    m.prepare(x, seed, 150, 3e-4, log=lambda line: None)
    stats = {}
    for mode in ("eval", "train"):
        m.train(mode == "train")
        with torch.no_grad():
            for j, (prior, (mean, _)) in enumerate(zip(m.priors, m.encode(x))):
                stats[f"{mode}_spread_{j + 1}"] = float(mean.std(0).mean())
                stats[f"{mode}_max_q_{j + 1}"] = float(prior.cluster_log_probs(mean).exp().max(1).values.mean())
    return stats


@pytest.mark.parametrize("kind", ["conv", "fc"])
def test_the_authors_init_choices_start_where_their_code_starts(kind, fixed_batch):
    """Within a factor of 2 of the range of the authors' five seeds for the spread, within 0.01 (or a
    factor of 1.5) for mean max q(c_j | x): near uniform (1/60, 1/20) for the conv ladder."""
    for seed in (0, 1):
        ours = init_statistics(kind, INIT_CHOICES[kind], seed, fixed_batch)
        for key, (low, high) in AUTHORS_INIT[kind].items():
            if "spread" in key:
                assert low / 2 <= ours[key] <= 2 * high, (key, ours[key], (low, high))
            else:
                assert min(low - 0.01, low / 1.5) <= ours[key] <= max(high + 0.01, 1.5 * high), (key, ours[key])


def test_the_papers_init_starts_with_sharp_clusters_where_the_authors_code_starts_uniform(fixed_batch):
    """The paper's reading (per-unit data-dependent init, the GMM on the latents as training sees
    them) puts the prior means among latents spread 0.1, one prior standard deviation: q(c_1 | x)
    starts far from uniform, where the authors' code starts within 0.01 of 1/60."""
    ours = init_statistics("conv", [], 0, fixed_batch)
    assert 0.08 <= ours["train_spread_1"] <= 0.12
    assert ours["train_max_q_1"] > 0.3 > 10 * AUTHORS_INIT["conv"]["train_max_q_1"][1]
    assert math.isclose(1 / 60, AUTHORS_INIT["conv"]["eval_max_q_1"][0], abs_tol=1e-3)


# The parity table (reports.parity) ---------------------------------------------------------------

def parity_rows(ours, theirs):
    from reports.parity import COLUMNS
    import pandas as pd
    rows = [dict(zip(COLUMNS, ["mfcbench", "paper", "ladder-mlp", "d", "b", s, 1, "f", a, "c", "m", 1.0]))
            for s, a in enumerate(ours)]
    rows += [dict(zip(COLUMNS, ["authors", "peer", "ladder-mlp", "d", "b", s, 1, "f", a, "c", "m", 1.0]))
             for s, a in enumerate(theirs)]
    return pd.DataFrame(rows)


def test_parity_needs_p_of_improvement_near_half_and_means_within_3_points():
    from reports.parity import side_by_side
    tie = side_by_side(parity_rows([0.70, 0.74, 0.72, 0.75, 0.71], [0.71, 0.73, 0.74, 0.70, 0.72])).iloc[0]
    assert tie["parity"] and tie["p_ci_low"] <= 0.5 <= tie["p_ci_high"] and abs(tie["difference"]) < 3
    behind = side_by_side(parity_rows([0.59, 0.60, 0.61, 0.60, 0.58], [0.74, 0.75, 0.76, 0.74, 0.75])).iloc[0]
    assert not behind["parity"] and behind["p_ours_better"] == 0 and behind["difference"] == pytest.approx(-15.2)
    # a CI that contains 0.5 is not enough when the means are 3 or more points apart
    noisy = side_by_side(parity_rows([0.50, 0.90, 0.60, 0.85, 0.55], [0.62, 0.80, 0.66, 0.79, 0.70])).iloc[0]
    assert noisy["p_ci_low"] <= 0.5 <= noisy["p_ci_high"]
    assert noisy["difference"] == pytest.approx(-3.4) and not noisy["parity"]
    assert tie["enough_seeds"] and not side_by_side(parity_rows([0.7, 0.72], [0.71, 0.7, 0.73])).iloc[0]["enough_seeds"]


def test_small_samples_get_a_t_interval_not_their_range():
    from reports.stats import t_interval
    low, high = t_interval([0.60, 0.62])
    assert low < 0.60 - 0.05 and high > 0.62 + 0.05  # t(1) = 12.7: far wider than [min, max]
    assert all(map(math.isnan, t_interval([0.6])))


def test_a_peer_csv_without_the_columns_is_refused_before_anything_is_written(tmp_path):
    from reports.parity import write_parity
    peer = tmp_path / "peer.csv"
    peer.write_text("code,seed,acc\nauthors,0,0.5\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="missing variant, architecture, dataset, budget, facet, factor"):
        write_parity([tmp_path], peer, out)
    assert not out.exists()
