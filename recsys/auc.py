"""AUC with confidence intervals: DeLong's variance and a bootstrap over groups (users)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from recsys.metrics import auc


def delong_ci(
    labels: np.ndarray, scores: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC, low, high) with DeLong et al. (1988)'s variance, computed with midranks
    (Sun & Xu 2014) in O(N log N). NaNs when a class is missing."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    all_ranks = rankdata(np.r_[pos, neg])
    pos_ranks = rankdata(pos)
    neg_ranks = rankdata(neg)
    # Placement values: V10_i = fraction of negatives below positive i (ties count half).
    v10 = (all_ranks[:m] - pos_ranks) / n
    v01 = 1.0 - (all_ranks[m:] - neg_ranks) / m
    a = float(v10.mean())
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    z = norm.ppf(0.5 + level / 2)
    half = z * math.sqrt(max(var, 0.0))
    return a, max(0.0, a - half), min(1.0, a + half)


def bootstrap_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    num_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the AUC when whole groups (users) are resampled with replacement.

    Impressions of one user are not independent, so resampling users gives a more
    honest interval than resampling rows.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups == 0:
        return float("nan"), float("nan")
    order = np.argsort(g, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(g, minlength=n_groups))])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        pick = rng.integers(0, n_groups, n_groups)
        idx = np.concatenate([order[starts[k] : starts[k + 1]] for k in pick])
        v = auc(y[idx], s[idx])
        if not math.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
