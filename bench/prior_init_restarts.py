"""How much of VaDE's seed-to-seed spread the GMM prior init holds, and whether restarts remove it.

VaDE's test accuracy is mostly settled at its GMM init: on Fashion-MNIST its first evaluation
(epoch 4) is within 2 points of the last (epoch 24) in every seed of `defaults-vade-pretrain-4x`.
The init fits one GMM (`models.init.fit_gmm`, scikit-learn's n_init = 1, as VaDE's code does). This
script builds each seed's trial as `mfcbench train` does (same config, same RNG, the same
pretraining), then fits GMMs with 1 and with `--restarts` initialisations to the same pretrained
latents (the training set's posterior means) and prints, per seed and fit: the GMM's per-sample
log-likelihood bound (label-free: what a restart picks by) and the test accuracy of its assignments
(Hungarian, one-to-one). It trains no further than the pretraining.

    python bench/prior_init_restarts.py --seeds 0 1 2 3 4 --set dataset.name=fashion-mnist \
        --set model.name=vade --set model.latent_dims=[10] --set model.n_clusters=[10]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--restarts", type=int, default=10, help="GMM initialisations of the restarted fit")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trial config overrides")
    args = parser.parse_args()

    import torch

    from harness.trial.config_io import load_trial_config
    from harness.trial.metrics import hungarian_accuracy
    from harness.trial.setup import set_up
    from models.init import batch_statistics, fit_gmm

    rows = []
    for seed in args.seeds:
        config = load_trial_config(None, [*args.set, f"training.seed={seed}", "training.threads=1"])
        if not config.model.pretrain_epochs:
            parser.error("the model does not pretrain (model.pretrain_epochs is 0): use one facet or model.name=vade "
                         "(model.prior_init gmm), or set model.pretrain_epochs")
        started = time.time()
        setup = set_up(config, f"seed {seed}", log=print)
        model, data = setup.model, setup.data
        model.prepare(data.x_train, seed, config.training.batch_size, config.training.lr, log=print)
        with batch_statistics(model), torch.no_grad():  # as prepare() computed the latents it fitted
            train_latents, test_latents = model.latents(data.x_train, sample=False)[0], model.latents(data.x_test, sample=False)[0]
        k = config.model.n_clusters[0]
        labels = next(iter(data.y_test.values())).cpu().numpy()
        n_classes = int(labels.max()) + 1
        for n_init in (1, args.restarts):
            gmm = fit_gmm(train_latents, k, seed, n_init)  # n_init 1: the fit the init itself made
            accuracy = hungarian_accuracy(labels, gmm.predict(test_latents), k, n_classes)
            rows.append((seed, n_init, gmm.lower_bound_, 100 * accuracy))
            print(f"seed {seed} n_init {n_init:>2}: lower bound {gmm.lower_bound_:.4f}, test accuracy "
                  f"{100 * accuracy:.1f}%  ({time.time() - started:.0f} s since the seed began)", flush=True)

    print("\nseed  n_init  lower bound  test accuracy %")
    for seed, n_init, bound, accuracy in rows:
        print(f"{seed:>4}  {n_init:>6}  {bound:>11.4f}  {accuracy:>15.1f}")
    for n_init in (1, args.restarts):
        accs = np.array([a for _, n, _, a in rows if n == n_init])
        print(f"n_init {n_init:>2}: {accs.mean():.1f} ± {accs.std(ddof=1) if len(accs) > 1 else float('nan'):.1f} "
              f"over {len(accs)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
