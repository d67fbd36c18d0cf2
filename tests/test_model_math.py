"""Numerical identities of the paper, checked against independent computations."""
import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from models import ModelConfig, build_model
from models.elbo import facet_terms
from models.init import batch_statistics
from models.priors import MixturePrior, inverse_softplus


def make_model(J, covariance="diagonal", architecture="ladder-mlp", shape=(1, 8, 8), **kw):
    kw = {"fix_pi": False, **kw}  # learned pi, so the identities cover a non-uniform pi
    cfg = ModelConfig(architecture=architecture, latent_dims=[3 + j for j in range(J)],
                      n_clusters=[4 + j for j in range(J)], covariance=covariance, **kw)
    model = build_model(cfg, shape, "bernoulli").double()
    with torch.no_grad():  # spread the prior away from its init so the test is not degenerate
        for prior in model.priors:
            prior.means_param.normal_(0, 1.0)
            if covariance == "full":
                prior.scale_tril_param.normal_(0, 0.3)
                prior.scale_tril_param.diagonal(dim1=-2, dim2=-1).uniform_(0.4, 1.0)
            else:
                prior.variance_param.uniform_(0.2, 1.0)
            if isinstance(prior.pi_logits, torch.nn.Parameter):
                prior.pi_logits.normal_()
    return model


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
@pytest.mark.parametrize("J", [1, 2, 3])
def test_primary_and_alternate_elbo_agree_on_the_same_sample(J, covariance):
    """Eq. (62) and eq. (71) are the same number for the same z sample (appendix C.3)."""
    model = make_model(J, covariance)
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    primary = model.elbo(x, "primary", torch.Generator().manual_seed(1))
    alternate = model.elbo(x, "alternate", torch.Generator().manual_seed(1))
    torch.testing.assert_close(primary, alternate, rtol=1e-10, atol=1e-9)
    different_sample = model.elbo(x, "primary", torch.Generator().manual_seed(2))
    assert not torch.allclose(primary, different_sample)  # the check above compares real samples


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_alternate_elbo_equals_its_definition(covariance):
    """Eq. (71): log p(x|z) - sum_j log q(z_j|x) + sum_j log p(z_j), with log p(z_j) by scipy."""
    model = make_model(2, covariance)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    terms = model.loss_terms(x, alphas=torch.ones(2, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    expected = terms["log_px"].clone()
    for prior, z, (mean, log_var) in zip(model.priors, terms["zs"], terms["params"]):
        z_np, pi = z.detach().numpy(), prior.weights.detach().numpy()
        comps = [multivariate_normal(prior.means[c].detach().numpy(), prior.covariances[c].detach().numpy())
                 for c in range(prior.n_clusters)]
        log_pz = logsumexp(np.stack([np.log(pi[c]) + comps[c].logpdf(z_np) for c in range(len(comps))], 1), axis=1)
        std = torch.exp(0.5 * log_var)
        log_qz = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
        expected = expected + torch.from_numpy(np.atleast_1d(log_pz)) - log_qz
    torch.testing.assert_close(terms["elbo"], expected.detach(), rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_cluster_posterior_is_softmax_of_eq12(covariance):
    """q(c_j|x) = softmax_c(log pi_c + log N(z_j | mu_c, Sigma_c)) at the posterior mean; rows sum to 1."""
    model = make_model(2, covariance)
    x = torch.rand(7, 1, 8, 8, dtype=torch.float64)
    probs = model.cluster_probs(x)
    for prior, p, (mean, _) in zip(model.priors, probs, model.encode(x)):
        z = mean.detach().numpy()
        logits = np.stack([np.log(prior.weights[c].item())
                           + multivariate_normal(prior.means[c].detach().numpy(),
                                                 prior.covariances[c].detach().numpy()).logpdf(z)
                           for c in range(prior.n_clusters)], axis=1)
        expected = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
        np.testing.assert_allclose(p.numpy(), expected, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(p.sum(1).numpy(), 1.0, rtol=1e-12)


def test_facet_terms_decompose_into_kl_terms():
    """The primary form's five terms regroup into E_q(c) KL(q(z)||p(z|c)) + KL(q(c)||p(c)), eq. (14)."""
    g = torch.Generator().manual_seed(0)
    log_pz_c = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    log_pi = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    log_qz = torch.randn(6, generator=g, dtype=torch.float64)
    t = facet_terms(log_pz_c, log_pi, log_qz, "primary")
    q = t.log_q_c.exp()
    torch.testing.assert_close(t.kl_c, (q * (q.log() - log_pi)).sum(-1))
    assert (t.kl_c >= -1e-12).all()  # a KL divergence between categoricals
    torch.testing.assert_close(t.kl, facet_terms(log_pz_c, log_pi, log_qz, "alternate").kl)


@pytest.mark.parametrize("architecture,shape", [("ladder-mlp", (1, 8, 8)), ("ladder-conv", (1, 16, 16)),
                                                ("shared-mlp", (1, 8, 8))])
def test_alpha_zero_gives_zero_gradient_to_a_facet(architecture, shape):
    """With alpha_1 = 0 (eq. 88-89), facet 1's decoder rung, encoder rung and prior get no gradient."""
    model = make_model(2, "full", architecture, shape)
    model.alphas.copy_(torch.tensor([0.0, 1.0]))
    loss = -model.loss_terms(torch.rand(8, *shape, dtype=torch.float64))["elbo"].mean()
    loss.backward()
    frozen = list(model.priors[0].parameters())
    live = list(model.priors[1].parameters())
    if architecture.startswith("ladder"):
        frozen += list(model.decoder.rungs[0].parameters()) + list(model.encoder.rungs[0].parameters())
        live += list(model.decoder.rungs[1].parameters()) + list(model.encoder.rungs[1].parameters())
    else:  # the shared decoder's first layer: facet 1's columns of t^dec
        first = model.decoder.body[0][0].weight.grad
        assert torch.count_nonzero(first[:, :3]) == 0 and torch.count_nonzero(first[:, 3:]) > 0
        frozen += list(model.encoder.heads[0].parameters())
        live += list(model.encoder.heads[1].parameters())
    for p in frozen:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    for p in live:
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0


@pytest.mark.parametrize("architecture,shape", [("ladder-mlp", (1, 8, 8)), ("ladder-conv", (1, 16, 16))])
def test_gated_add_merge_is_the_authors_b_plus_tenth_alpha_r(architecture, shape):
    """decoder_merge gated-add: z~_j = b_j^dec(z~_{j+1} + 0.1 alpha_j r_j^dec(z_j)), composed by hand,
    with the same widths as the concatenation's rungs (b_j's input halves)."""
    model = make_model(3, architecture=architecture, shape=shape, decoder_merge="gated-add").eval()
    concat = make_model(3, architecture=architecture, shape=shape, decoder_merge="concat")
    zs = [torch.randn(5, d, dtype=torch.float64) for d in (3, 4, 5)]
    alphas = torch.tensor([0.3, 0.7, 1.0], dtype=torch.float64)
    d = model.decoder
    h = d.backbone[2](alphas[2] * d.rungs[2](zs[2]))
    for j in (1, 0):
        h = d.backbone[j](h + 0.1 * alphas[j] * d.rungs[j](zs[j]))
    torch.testing.assert_close(model.decode(zs, alphas).reshape(h.shape), h)
    def first_layer(m):
        return next(p for p in m.decoder.backbone[0].parameters() if p.dim() > 1)

    widths = (first_layer(model).shape, first_layer(concat).shape)
    assert widths[0][1 if architecture == "ladder-mlp" else 0] * 2 == widths[1][1 if architecture == "ladder-mlp" else 0]


def test_each_ladder_merges_as_its_table_by_default():
    """Table 4's b_1^dec takes 500 features (an addition of two 500-wide inputs); Table 5's takes
    64 + 64 = 128 channels (a concatenation)."""
    assert ModelConfig(architecture="ladder-mlp").decoder_merge == "gated-add"
    assert ModelConfig(architecture="ladder-conv").decoder_merge == "concat"
    assert ModelConfig(architecture="shared-mlp").decoder_merge == "concat"


def test_gated_add_merge_is_refused_for_shared_architectures():
    with pytest.raises(ValueError, match="decoder_merge 'gated-add' applies to ladder architectures only"):
        ModelConfig(architecture="shared-mlp", decoder_merge="gated-add")


def test_built_model_has_every_facet_active_and_public_prior_view():
    model = make_model(3, "full")
    assert model.alphas.tolist() == [1.0, 1.0, 1.0]
    for prior in model.priors:
        K, d = prior.n_clusters, prior.latent_dim
        assert prior.weights.shape == (K,) and prior.means.shape == (K, d) and prior.covariances.shape == (K, d, d)
        torch.testing.assert_close(prior.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
        assert (torch.linalg.eigvalsh(prior.covariances) > 0).all()
    diag = make_model(1, "diagonal").priors[0]
    cov = diag.covariances
    torch.testing.assert_close(cov, torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1)))


def test_prior_covariance_init_and_inverse_softplus():
    y = torch.tensor([1e-4, 0.01, 1.0, 50.0, 1e4], dtype=torch.float64)
    torch.testing.assert_close(torch.nn.functional.softplus(inverse_softplus(y), beta=10), y)
    for cov in ("diagonal", "full"):
        prior = MixturePrior(3, 2, cov, variance_init=0.01).double()
        torch.testing.assert_close(prior.covariances, 0.01 * torch.eye(2, dtype=torch.float64).expand(3, 2, 2))


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_sampling_follows_the_prior_with_temperature(covariance):
    """z ~ N(mu_c, tau Sigma_c) for a chosen cluster (appendix E.6)."""
    prior = make_model(1, covariance).priors[0]
    g = torch.Generator().manual_seed(0)
    z = prior.sample(40000, cluster=2, temperature=0.3, generator=g).detach()
    torch.testing.assert_close(z.mean(0), prior.means[2].detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), 0.3 * prior.covariances[2].detach(), atol=0.02, rtol=0.05)
    marginal = prior.sample(40000, generator=g).detach()  # c ~ pi, then z ~ p(z | c)
    expected_mean = (prior.weights[:, None] * prior.means).sum(0).detach()
    torch.testing.assert_close(marginal.mean(0), expected_mean, atol=0.03, rtol=0)


def test_sample_and_swap_api():
    model = make_model(2)
    assert model.sample(5).shape == (5, 1, 8, 8)
    images = model.sample(5, facet=2, cluster=1)
    assert images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="facet must be in 1..2"):
        model.sample(2, facet=3, cluster=0)
    x1, x2 = torch.rand(4, 1, 8, 8, dtype=torch.float64), torch.rand(4, 1, 8, 8, dtype=torch.float64)
    a1, a2 = model.swap(x1, x2, facet=1)
    b1, b2 = model.swap(x1, x2, facet=2)
    # Two facets: swapping z_1 or z_2 gives the same pair of reconstructions (appendix E.4).
    torch.testing.assert_close(a1, b2)
    torch.testing.assert_close(a2, b1)
    assert not torch.allclose(a1, a2)


def test_log_likelihood_is_bernoulli_on_grey_pixels():
    model = make_model(2)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)  # grey values: the logits form must accept them
    zs = [torch.randn(3, d, dtype=torch.float64) for d in (3, 4)]
    probs = torch.sigmoid(model.decode(zs, torch.ones(2, dtype=torch.float64)))
    expected = (x * probs.log() + (1 - x) * (1 - probs).log()).flatten(1).sum(1)
    torch.testing.assert_close(model.log_likelihood(x, zs), expected)


def test_prior_init_from_gmm_on_encoder_means():
    """Appendix D.4 (prior_init means): means from a GMM on the untrained encoder's latents, covariances
    set to the init value, pi uniform."""
    from sklearn.mixture import GaussianMixture

    torch.manual_seed(0)
    cfg = ModelConfig(latent_dims=[2], n_clusters=[3], prior_variance_init=0.05, prior_init="means", fix_pi=False)
    model = build_model(cfg, (1, 8, 8), "bernoulli")
    x = torch.rand(300, 1, 8, 8)
    means = model.latents(x, sample=False)[0]
    model.prepare(x, seed=0, batch_size=64, lr=1e-3, log=lambda s: None)
    expected = GaussianMixture(3, covariance_type="diag", random_state=0, reg_covar=1e-5).fit(means).means_
    np.testing.assert_allclose(model.priors[0].means.detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.priors[0].covariances, 0.05 * torch.eye(2).expand(3, 2, 2))
    torch.testing.assert_close(model.priors[0].weights, torch.full((3,), 1 / 3))


def test_vade_pretrains_then_takes_means_and_variances_from_the_gmm_on_the_pretrained_encoder():
    """Appendix D.5: autoencoder pretraining, then pi, mu and the diagonal variances from a GMM fitted
    on the pretrained encoder's means (MFCVAE takes only the means)."""
    from sklearn.mixture import GaussianMixture

    from models.pretrain import pretrain_autoencoder

    torch.manual_seed(0)
    x = torch.rand(256, 1, 8, 8).round()  # binary images: a reconstruction the autoencoder can learn
    cfg = ModelConfig(name="vade", latent_dims=[2], n_clusters=[3], hidden_sizes=[32], pretrain_epochs=15, fix_pi=False)
    torch.manual_seed(1)
    model = build_model(cfg, (1, 8, 8), "bernoulli")
    ones = torch.ones_like(model.alphas)
    reconstruction = lambda: -model.likelihood.log_prob(  # noqa: E731
        model.decode(model.posterior_means(x), ones), x).mean().item()
    before = reconstruction()
    model.prepare(x, seed=0, batch_size=32, lr=1e-2, log=lambda s: None)
    assert reconstruction() < before - 1.0  # the pretraining learned
    torch.manual_seed(1)
    twin = build_model(cfg, (1, 8, 8), "bernoulli")  # the same weights, pretrained alone
    pretrain_autoencoder(twin, x, 15, 32, 1e-2, torch.Generator().manual_seed(0), lambda s: None)
    with batch_statistics(twin):
        means = twin.latents(x, sample=False)[0]
    gmm = GaussianMixture(3, covariance_type="diag", random_state=0, reg_covar=1e-5).fit(means)
    prior = model.priors[0]
    np.testing.assert_allclose(prior.means.detach().numpy(), gmm.means_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(torch.diagonal(prior.covariances, dim1=-2, dim2=-1).detach().numpy(),
                               gmm.covariances_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(prior.weights.detach().numpy(), gmm.weights_, rtol=1e-4, atol=1e-6)


def test_one_facet_mfcvae_starts_as_vade_and_two_facets_as_appendix_d4():
    """Unset prior_init: VaDE's GMM init for vade and for one facet (measured better on Fashion-MNIST,
    docs/configuration.md), appendix D.4's for two or more facets; vade with D.4's init is refused.
    With the same network and seed, one-facet MFCVAE and VaDE are one model (appendix D.5)."""
    assert ModelConfig(latent_dims=[2], n_clusters=[3]).prior_init == "gmm"
    assert ModelConfig(name="vade", latent_dims=[2], n_clusters=[3]).prior_init == "gmm"
    assert ModelConfig(latent_dims=[2, 2], n_clusters=[3, 3]).prior_init == "means"
    assert ModelConfig(name="kmeans", latent_dims=[1], n_clusters=[3]).prior_init is None  # fits no prior
    from harness.compat import with_legacy_run_defaults  # configs written before the key: what they trained
    assert [with_legacy_run_defaults({"model": {"name": name}})["model"]["prior_init"]
            for name in ("mfcvae", "vade", "kmeans")] == ["means", "gmm", None]
    with pytest.raises(ValueError, match="prior_init must be 'gmm', got 'means'"):
        ModelConfig(name="vade", latent_dims=[2], n_clusters=[3], prior_init="means")
    x = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(0)).round()
    priors = []
    for name in ("mfcvae", "vade"):
        torch.manual_seed(1)
        model = build_model(ModelConfig(name=name, latent_dims=[2], n_clusters=[3], hidden_sizes=[32],
                                        pretrain_epochs=3, fix_pi=False), (1, 8, 8), "bernoulli")
        model.prepare(x, seed=0, batch_size=32, lr=1e-2, log=lambda s: None)
        priors.append([p.detach() for p in (model.priors[0].means, model.priors[0].covariances, model.priors[0].weights)])
    for mfcvae, vade in zip(*priors):
        assert torch.equal(mfcvae, vade)
    assert not torch.allclose(priors[0][2], torch.full((3,), 1 / 3))  # the GMM's weights, not uniform


def test_stacked_denoising_pretraining_pairs_each_layer_with_its_mirror_and_learns_as_dec():
    """DEC's stacked denoising autoencoder (VaDE's pretraining, appendix D.5): each encoder layer with the
    decoder layer that maps back to its input, layer-wise losses that fall, then end-to-end fine-tuning;
    a seed fixes the result; architectures it cannot pair are refused by name."""
    from models.pretrain import mirror_pairs, pretrain_stacked_denoising

    x = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(0)).round()
    cfg = ModelConfig(name="vade", latent_dims=[2], n_clusters=[3], hidden_sizes=[32, 16], pretrain_epochs=12,
                      pretrain="stacked-denoising")

    def pretrained(epochs: int):
        torch.manual_seed(1)
        model = build_model(cfg, (1, 8, 8), "bernoulli")
        losses = pretrain_stacked_denoising(model, x, epochs, 32, 1e-2, torch.Generator().manual_seed(0),
                                            lambda s: None)
        return model, losses

    model = build_model(cfg, (1, 8, 8), "bernoulli")
    h = x.flatten(1)
    widths = []
    for encode, mirror, params in mirror_pairs(model):
        code = encode(h)
        assert mirror(code).shape == h.shape  # the mirror maps the layer's output back to its input
        widths.append(code.shape[-1])
        h = code
    assert widths == [32, 16, 2]
    one, after_one = pretrained(1)
    many, after_many = pretrained(12)
    assert after_many[0] < after_one[0] - 1.0  # the first pair reconstructs the images better with more passes
    ones = torch.ones_like(many.alphas)
    reconstruction = lambda m: -m.likelihood.log_prob(m.decode(m.posterior_means(x), ones), x).mean().item()  # noqa: E731
    assert reconstruction(many) < reconstruction(one) - 1.0
    again, _ = pretrained(12)
    for a, b in zip(many.parameters(), again.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pretrain 'stacked-denoising' needs architecture 'shared-mlp' with one "
                                         "facet, got 'ladder-mlp' with 2 facet"):
        ModelConfig(latent_dims=[2, 2], n_clusters=[3, 3], pretrain="stacked-denoising")


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_data_dependent_init_scales_layer_outputs(scale):
    """Every layer's output gets mean 0 and std `model.data_init_scale` on the init batch (the
    authors' boilr init uses 0.1, the default; 1.0 is what runs before issue 11's fix used)."""
    cfg = ModelConfig(architecture="ladder-conv", latent_dims=[2, 2], n_clusters=[3, 3], init="data",
                      activation="elu", likelihood="gaussian", data_init_scale=scale)
    model = build_model(cfg, (3, 16, 16))
    x = torch.rand(512, 3, 16, 16)
    first = model.encoder.backbone[0][0]
    before = first(x).std().item()
    model.prepare(x, seed=0, batch_size=64, lr=1e-3, log=lambda s: None)
    out = first(x[:512])
    assert abs(out.mean().item()) < 1e-4 * scale and abs(out.std().item() - scale) < 1e-2 * scale
    assert abs(before - scale) > 0.05 * scale  # the init changed something


def test_data_init_keeps_untrained_latents_tighter_than_the_prior_variance_init():
    """Appendix D.4: the prior's initial variance must be much larger than what the GMM fitted on
    untrained latents finds. With the authors' init scale the posterior means spread about as
    much as one prior component; with 1.0 they spread 100x more (the conv collapse of issue 11)."""
    spreads = {}
    for scale in (0.1, 1.0):
        cfg = ModelConfig(architecture="ladder-conv", latent_dims=[6, 2], n_clusters=[8, 3], init="data",
                          activation="elu", likelihood="gaussian", data_init_scale=scale)
        torch.manual_seed(0)
        model = build_model(cfg, (3, 16, 16))
        x = torch.rand(400, 3, 16, 16)
        model.prepare(x, seed=0, batch_size=64, lr=1e-3, log=lambda s: None)
        spreads[scale] = float(model.latents(x, sample=False)[0].var(axis=0).mean())
    assert spreads[0.1] <= 2 * cfg.prior_variance_init < spreads[1.0] / 10


def test_prior_init_sees_the_encoder_as_it_trains_not_eval_mode_batch_norm():
    """Issue 11's defect: in eval mode an untrained conv encoder's batch norm uses its initial running
    statistics, and the GMM put the prior means where no training-mode latent goes."""
    from models.init import batch_statistics

    config = ModelConfig(architecture="ladder-conv", latent_dims=[4, 2], n_clusters=[5, 3], init="glorot",
                         likelihood="gaussian")
    model = build_model(config, (3, 32, 32), "gaussian")
    x = torch.rand(300, 3, 32, 32)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms]
    with torch.no_grad(), batch_statistics(model):
        training_means = [mean for mean, _ in model.encode(x)]
    model.eval()
    with torch.no_grad():
        eval_means = [mean for mean, _ in model.encode(x)]
    model.prepare(x, seed=0, batch_size=100, lr=1e-3, log=lambda s: None)
    for prior, train_z, eval_z in zip(model.priors, training_means, eval_means):
        spread = prior.means.detach().std().item()
        # the prior means spread like the latents training will see, not like eval mode's
        assert abs(spread - train_z.std().item()) < abs(spread - eval_z.std().item())
        assert train_z.std().item() > 2 * eval_z.std().item()  # the gap the defect lived in
    for m, (mean, var, tracked) in zip(norms, before):  # running statistics untouched
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == tracked
    assert model.training
