"""Statistics over runs: better than mean +- std alone (Agarwal et al., 2021 style).

All resampling is seeded, so a report is a function of its inputs.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

N_BOOTSTRAP = 10_000
# Fewer resampled units than this and a percentile bootstrap interval is little more than [min, max]:
# a mean gets Student's t-interval instead, and resampled statistics (P(A > B), seed agreement,
# rank correlation) get no interval ("n too small").
MIN_BOOTSTRAP_N = 5


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student's t confidence interval of the mean (NaN for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return np.nan, np.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def describe(values, seed: int = 0) -> dict:
    """n, mean, sample std (ddof=1, as the paper), a 95% CI of the mean, IQM, min, max. The CI is a
    percentile bootstrap from MIN_BOOTSTRAP_N values on, Student's t-interval below (`ci_method`)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    out = {"n": n, "mean": np.nan, "std": np.nan, "ci_low": np.nan, "ci_high": np.nan, "ci_method": "",
           "iqm": np.nan, "min": np.nan, "max": np.nan}
    if n == 0:
        return out
    out.update(mean=x.mean(), min=x.min(), max=x.max(), iqm=stats.trim_mean(x, 0.25))
    if n >= 2:
        out["std"] = x.std(ddof=1)
        if np.ptp(x) == 0:
            out["ci_low"] = out["ci_high"] = x[0]
            out["ci_method"] = "constant"
        elif n < MIN_BOOTSTRAP_N:
            out["ci_low"], out["ci_high"] = t_interval(x)
            out["ci_method"] = "t"
        else:
            ci = stats.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=N_BOOTSTRAP,
                                 method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
            out["ci_low"], out["ci_high"] = ci.low, ci.high
            out["ci_method"] = "bootstrap"
    return out


def probability_of_improvement(a, b, seed: int = 0, n_resamples: int = 2000) -> dict:
    """P(A > B) for a random run of A against a random run of B (ties count half), with a 95% CI
    from resampling the runs of both; no CI (NaN) with fewer than MIN_BOOTSTRAP_N runs on a side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return {"p": np.nan, "ci_low": np.nan, "ci_high": np.nan}

    def p_of(x, y):
        diff = x[:, None] - y[None, :]
        return float(((diff > 0) + 0.5 * (diff == 0)).mean())

    if min(len(a), len(b)) < MIN_BOOTSTRAP_N:
        return {"p": p_of(a, b), "ci_low": np.nan, "ci_high": np.nan}
    rng = np.random.default_rng(seed)
    boot = [p_of(rng.choice(a, len(a)), rng.choice(b, len(b))) for _ in range(n_resamples)]
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"p": p_of(a, b), "ci_low": float(low), "ci_high": float(high)}


def expected_best_of_n(values, n_max: int | None = None, seed: int = 0, n_resamples: int = 1000) -> dict:
    """E[max of n runs drawn with replacement] for n = 1..n_max (Dodge et al., 2019), with a
    95% bootstrap band: what a user who picks the best of n seeds can expect."""
    x = np.sort(np.asarray(values, dtype=float))
    m = len(x)
    n_max = n_max or m
    ns = np.arange(1, n_max + 1)

    def curve(sorted_x):
        i = np.arange(1, len(sorted_x) + 1)
        weights = (i[None, :] / len(sorted_x)) ** ns[:, None] - ((i[None, :] - 1) / len(sorted_x)) ** ns[:, None]
        return weights @ sorted_x

    rng = np.random.default_rng(seed)
    boot = np.array([curve(np.sort(rng.choice(x, m))) for _ in range(n_resamples)])
    return {"n": ns, "mean": curve(x), "low": np.percentile(boot, 2.5, axis=0),
            "high": np.percentile(boot, 97.5, axis=0)}


def spearman_with_ci(x, y, seed: int = 0, n_resamples: int = N_BOOTSTRAP) -> dict:
    """n, Spearman's rho of paired values (pairs with a NaN dropped) and a 95% percentile-bootstrap CI
    from resampling the pairs with replacement. Resamples in which x or y is constant (rho undefined)
    are skipped. rho needs 3 pairs (2 always give ±1) and x and y each not constant; else NaN. The CI
    needs MIN_BOOTSTRAP_N pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    paired = np.isfinite(x) & np.isfinite(y)
    x, y = x[paired], y[paired]
    n = len(x)
    out = {"n": n, "rho": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    out["rho"] = float(stats.spearmanr(x, y).statistic)
    if n < MIN_BOOTSTRAP_N:
        return out
    # All resamples at once: Spearman's rho is Pearson's r of the (tie-averaged) ranks
    picks = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    rx, ry = stats.rankdata(x[picks], axis=1), stats.rankdata(y[picks], axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    scale = np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
    defined = scale > 1e-12
    if defined.any():
        rho = (rx * ry).sum(axis=1)[defined] / scale[defined]
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(rho, [2.5, 97.5]))
    return out


def pairwise_mean(scores: np.ndarray, seed: int = 0, n_resamples: int = 2000) -> dict:
    """Mean of a symmetric (n, n) matrix of pairwise scores over its n(n-1)/2 distinct pairs, with a 95%
    percentile-bootstrap CI that resamples the n items, not the pairs: pairs sharing an item are not
    independent, and resampling them as if they were gives too narrow an interval. Each resample
    draws n items with replacement and averages the pairs of distinct items among them (seeded). No CI
    (NaN) for fewer than MIN_BOOTSTRAP_N items."""
    n = len(scores)
    first, second = np.triu_indices(n, 1)
    if n < MIN_BOOTSTRAP_N:
        return {"mean": float(scores[first, second].mean()) if n > 1 else np.nan, "ci_low": np.nan, "ci_high": np.nan}
    draws = np.random.default_rng(seed).integers(0, n, (n_resamples, n))
    a, b = draws[:, first], draws[:, second]
    distinct = a != b
    usable = distinct.any(axis=1)
    means = np.where(distinct, scores[a, b], 0.0).sum(axis=1)[usable] / distinct.sum(axis=1)[usable]
    low, high = np.percentile(means, [2.5, 97.5]) if len(means) else (np.nan, np.nan)
    return {"mean": float(scores[first, second].mean()), "ci_low": float(low), "ci_high": float(high)}
