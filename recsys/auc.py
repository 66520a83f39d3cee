"""AUC with confidence intervals: DeLong's variance and a bootstrap over groups (users)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata


def delong_ci(
    labels: np.ndarray, scores: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC, low, high) with DeLong et al. (1988)'s variance, computed with midranks
    (Sun & Xu 2014) in O(N log N). The AUC is NaN when a class is missing; the bounds
    are NaN when a class has a single row (its placement variance is undefined, so
    any interval would be falsely certain)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) == 0 or y.all() or not y.any():
        return float("nan"), float("nan"), float("nan")
    v10, v01 = _placements(y, s)
    a = float(v10.mean())
    m, n = len(v10), len(v01)
    if m < 2 or n < 2:
        return a, float("nan"), float("nan")
    var = np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n
    z = norm.ppf(0.5 + level / 2)
    half = z * math.sqrt(max(var, 0.0))
    return a, max(0.0, a - half), min(1.0, a + half)


def delong_from_moments(
    m: int, n: int, s10: float, s10sq: float, s01: float, s01sq: float, level: float = 0.95
) -> tuple[float, float, float]:
    """``delong_ci`` from sums of the placement values and their squares over the m
    positives (V10) and n negatives (V01): what a distributed pass can add up."""
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    a = s10 / m
    if m < 2 or n < 2:
        return a, float("nan"), float("nan")
    var10 = max(s10sq - m * (s10 / m) ** 2, 0.0) / (m - 1)
    var01 = max(s01sq - n * (s01 / n) ** 2, 0.0) / (n - 1)
    half = norm.ppf(0.5 + level / 2) * math.sqrt(var10 / m + var01 / n)
    return a, max(0.0, a - half), min(1.0, a + half)


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values by midranks: V10_i = share of negatives below positive i,
    V01_j = share of positives above negative j (ties count half)."""
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    all_ranks = rankdata(np.r_[pos, neg])
    v10 = (all_ranks[:m] - rankdata(pos)) / n
    v01 = 1.0 - (all_ranks[m:] - rankdata(neg)) / m
    return v10, v01


def delong_paired_difference(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC_a - AUC_b, low, high): DeLong's paired test on the same rows.

    The two AUCs are correlated (same rows, same labels); the variance of their
    difference uses the 2x2 covariance of the placement values. Bounds are NaN when a
    class has fewer than two rows.
    """
    y = np.asarray(labels).astype(bool)
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != y.shape or b.shape != y.shape:
        raise ValueError("labels and both score arrays must have the same length")
    if len(y) == 0 or y.all() or not y.any():
        return float("nan"), float("nan"), float("nan")
    v10a, v01a = _placements(y, a)
    v10b, v01b = _placements(y, b)
    diff = float(v10a.mean() - v10b.mean())
    m, n = len(v10a), len(v01a)
    if m < 2 or n < 2:
        return diff, float("nan"), float("nan")
    d10, d01 = v10a - v10b, v01a - v01b  # var(x - y) = var(x) + var(y) - 2 cov(x, y)
    var = np.var(d10, ddof=1) / m + np.var(d01, ddof=1) / n
    half = norm.ppf(0.5 + level / 2) * math.sqrt(max(var, 0.0))
    return diff, diff - half, diff + half


def weighted_auc(levels: np.ndarray, y: np.ndarray, weights: np.ndarray, n: int) -> float:
    """AUC of rows that appear ``weights`` times each: ``levels`` (rows,) are their scores'
    ranks among the ``n`` distinct scores (ties share a level and count one half).
    NaN when a class has no weight. Equal to ``auc`` on the rows repeated."""
    pos = np.bincount(levels[y], weights[y], minlength=n)
    neg = np.bincount(levels[~y], weights[~y], minlength=n)
    p, q = pos.sum(), neg.sum()
    if p == 0 or q == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negative weight strictly below each level
    return float((pos * (below + 0.5 * neg)).sum() / (p * q))


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
    honest interval than resampling rows. A resample is a count per user (how often it
    was drawn), so its AUC is a weighted count over the scores sorted once: O(rows)
    per resample, not a sort of the resampled rows.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    g = g.reshape(-1)
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups == 0:
        return float("nan"), float("nan")
    distinct, levels = np.unique(s, return_inverse=True)
    levels = levels.reshape(-1)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        pick = rng.integers(0, n_groups, n_groups)
        drawn = np.bincount(pick, minlength=n_groups).astype(np.float64)
        v = weighted_auc(levels, y, drawn[g], len(distinct))
        if not math.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def interval_verdict(low: float, high: float) -> str:
    """How a 95% interval of a difference (learned - baseline) reads: better, worse or no
    significant difference; undetermined when the interval is undefined (NaN)."""
    if math.isnan(low) or math.isnan(high):
        return "undetermined (too few rows of a class)"
    return "better" if low > 0 else "worse" if high < 0 else "no significant difference"
