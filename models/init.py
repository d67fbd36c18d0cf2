"""Initialisation (appendix D.4): Glorot or data-dependent weights, and the prior from a fitted GMM."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .layers import has_normalised_weight

WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def glorot_init(module: nn.Module) -> None:
    """Glorot-normal weights and zero biases for every linear and convolutional layer. Weight-normalised
    layers keep PyTorch's default weights: their `weight` is computed from (g, v), as in the authors'
    code, whose initialisers write to `weight` and so never reach g and v."""
    for layer in module.modules():
        if isinstance(layer, WEIGHTED):
            if not has_normalised_weight(layer):
                nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


@torch.no_grad()
def data_dependent_init(model: nn.Module, run_forward, scale: float = 0.1, per_unit: bool = True) -> None:
    """Data-dependent initialisation in the spirit of Kraehenbuehl et al. [61], as the authors' code
    does it (boilr's `data_dependent_init`, init_scale 0.1).

    During one forward pass on a data batch (`run_forward()`), every linear/conv layer, in the order
    it runs, is rescaled so that its outputs have zero mean and standard deviation `scale` per
    unit/channel; later layers see the already-rescaled outputs, so all layers start at a similar
    scale. With 0.1 the untrained encoder's posterior means spread little, so the prior variance
    init (0.01) is much larger than the fitted MoG's variances, as appendix D.4 asks. Measured,
    what 1.0 did instead on the conv ladder (shapes-config1, steps 10 + 20, seed 0): the
    prior's 60 components started ~10 of their standard deviations apart, q(c_1 | x) was hard from
    the start, and facet 1 fell to 8 clusters in use (shape 29.3%); with 0.1 it kept 55 (shape 49.5%).

    `per_unit=False` normalises a linear layer's outputs as a whole (one mean and one standard
    deviation over batch and units), as boilr's hook does for linear layers (it reduces over every
    dimension but -1, which is all of them); convolutions stay per channel. A weight-normalised layer
    gets only the new bias, its weight (from g and v) stays as it was: boilr rescales `weight`, which
    weight norm recomputes from g and v at the next call.
    """
    def normalise(layer, inputs, output):
        whole = not per_unit and isinstance(layer, nn.Linear)
        dims = list(range(output.ndim)) if whole else [0] + list(range(2, output.ndim))
        mean = output.mean(dims)
        std = output.std(dims).clamp_min(1e-6) / scale
        view = [1, -1] + [1] * (output.ndim - 2)
        w_view = [-1] + [1] * (layer.weight.ndim - 1)
        if isinstance(layer, nn.ConvTranspose2d):  # weight is (in, out, kH, kW)
            w_view = [1, -1, 1, 1]
        if whole:
            view, w_view = [1] * output.ndim, [1] * layer.weight.ndim
        if not has_normalised_weight(layer):
            layer.weight.div_(std.view(w_view))
        if layer.bias is not None:
            layer.bias.sub_(mean).div_(std)
        return (output - mean.view(view)) / std.view(view)

    handles = [m.register_forward_hook(normalise) for m in model.modules() if isinstance(m, WEIGHTED)]
    try:
        run_forward()
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def batch_statistics(model: nn.Module):
    """Run `model` as it trains: batch norm normalises by each batch's own statistics (train mode),
    while its running statistics stay exactly as they were (momentum 0, counters restored).

    The prior initialisation needs latents from the encoder the optimiser will train. In eval mode
    an untrained model's batch norm uses its initial running statistics (mean 0, variance 1), which
    the training-mode encoder never sees: on a small ladder-conv the posterior means spread 0.17 in
    eval mode against 1.44 in train mode, so the GMM put the prior means where no training latent goes.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    was_training = model.training
    model.train()
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive batches over n items; a last batch of one item joins the one
    before it, since batch norm in train mode needs two."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def fit_gmm(latents: np.ndarray, n_clusters: int, seed: int, n_init: int = 1):
    """A diagonal-covariance GaussianMixture on (N, d) latents, as the authors fit it (one fit; `n_init`
    keeps the likeliest of that many, which bench/prior_init_restarts.py measures)."""
    from sklearn.mixture import GaussianMixture

    if len(latents) < n_clusters:
        raise ValueError(f"cannot fit {n_clusters} mixture components to {len(latents)} training points")
    return GaussianMixture(n_components=n_clusters, covariance_type="diag", random_state=seed,
                           reg_covar=1e-5, n_init=n_init).fit(latents)
