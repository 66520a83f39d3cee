from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from recsys.auc import bootstrap_ci, delong_ci, weighted_auc
from recsys.metrics import auc


def _delong_bruteforce(y, s):
    pos, neg = s[y == 1], s[y == 0]
    psi = np.array([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos])
    a = psi.mean()
    v10, v01 = psi.mean(1), psi.mean(0)
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    return a, var


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_bruteforce_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.4).astype(int)
    s = np.round(rng.normal(size=60) + y, 1)  # rounding creates ties
    a, lo, hi = delong_ci(y, s)
    ref_a, ref_var = _delong_bruteforce(y, s)
    assert a == pytest.approx(ref_a, abs=1e-12)
    assert a == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    half = norm.ppf(0.975) * math.sqrt(ref_var)
    assert lo == pytest.approx(max(0, ref_a - half), abs=1e-12)
    assert hi == pytest.approx(min(1, ref_a + half), abs=1e-12)


def test_degenerate_inputs() -> None:
    assert all(math.isnan(v) for v in delong_ci(np.ones(4), np.arange(4)))
    assert delong_ci(np.array([0, 1]), np.array([0.1, 0.9]))[0] == 1.0


def test_bootstrap_over_users_covers_and_is_wider_for_clustered_data() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(100), 30)
    # Strong per-user effect on both label and score: rows of a user are correlated.
    u_eff = rng.normal(0, 1.5, 100)[users]
    y = (rng.random(len(users)) < 1 / (1 + np.exp(-u_eff))).astype(int)
    s = u_eff + rng.normal(0, 1.0, len(users))
    a, dlo, dhi = delong_ci(y, s)
    blo, bhi = bootstrap_ci(y, s, users, num_resamples=300)
    assert blo < a < bhi
    assert (bhi - blo) > (dhi - dlo)  # row-level DeLong is too narrow here
    again = bootstrap_ci(y, s, users, num_resamples=300)
    assert again == (blo, bhi)  # seeded


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 6), st.integers(0, 3)), min_size=1, max_size=40
    )
)
def test_weighted_auc_equals_auc_of_repeated_rows(rows: list[tuple[bool, int, int]]) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float) / 2  # few values: many ties
    w = np.array([r[2] for r in rows])
    distinct, levels = np.unique(s, return_inverse=True)
    got = weighted_auc(levels, y, w.astype(float), len(distinct))
    want = auc(np.repeat(y, w), np.repeat(s, w))
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)


def test_bootstrap_equals_resampling_the_rows() -> None:
    """The weighted count gives the interval that concatenating each drawn user's rows
    and sorting them again gives (same draws)."""
    rng = np.random.default_rng(3)
    users = rng.integers(0, 40, 600)
    y = rng.random(600) < 0.3
    s = np.round(rng.normal(size=600) + y, 1)
    ids, g = np.unique(users, return_inverse=True)
    draw = np.random.default_rng(0)
    values = []
    for _ in range(50):
        pick = draw.integers(0, len(ids), len(ids))
        idx = np.concatenate([np.flatnonzero(g == k) for k in pick])
        values.append(auc(y[idx], s[idx]))
    want = np.percentile(values, [2.5, 97.5])
    got = bootstrap_ci(y, s, users, num_resamples=50)
    assert got == pytest.approx(tuple(want), abs=1e-12)


def _paired_bruteforce(y, s1, s2):
    def psi(s):
        pos, neg = s[y == 1], s[y == 0]
        return np.array([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos])

    p1, p2 = psi(s1), psi(s2)
    d10 = p1.mean(1) - p2.mean(1)
    d01 = p1.mean(0) - p2.mean(0)
    var = d10.var(ddof=1) / len(d10) + d01.var(ddof=1) / len(d01)
    return p1.mean() - p2.mean(), var


@pytest.mark.parametrize("seed", [0, 1])
def test_paired_delong_matches_bruteforce(seed: int) -> None:
    from recsys.auc import delong_paired_difference

    rng = np.random.default_rng(seed)
    y = (rng.random(70) < 0.4).astype(int)
    s1 = np.round(rng.normal(size=70) + y, 1)
    s2 = np.round(s1 + rng.normal(size=70), 1)  # correlated with s1, with ties
    diff, lo, hi = delong_paired_difference(y, s1, s2)
    ref, var = _paired_bruteforce(y, s1, s2)
    assert diff == pytest.approx(ref, abs=1e-12)
    half = norm.ppf(0.975) * math.sqrt(var)
    assert lo == pytest.approx(ref - half, abs=1e-12) and hi == pytest.approx(ref + half, abs=1e-12)
    # The same scores: no difference and a zero-width interval (perfectly correlated).
    assert delong_paired_difference(y, s1, s1) == (0.0, 0.0, 0.0)


def test_paired_delong_is_narrower_than_unpaired_for_correlated_scores() -> None:
    from recsys.auc import delong_paired_difference

    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.5).astype(int)
    base = rng.normal(size=400) + y
    s1, s2 = base + 0.1 * rng.normal(size=400), base + 0.1 * rng.normal(size=400)
    _, lo, hi = delong_paired_difference(y, s1, s2)
    _, l1, h1 = delong_ci(y, s1)
    assert hi - lo < (h1 - l1) / 2


def test_single_positive_or_negative_gives_nan_bounds_not_certainty() -> None:
    from recsys.auc import delong_paired_difference

    a, lo, hi = delong_ci(np.array([1, 0, 0]), np.array([0.9, 0.1, 0.2]))
    assert a == 1.0 and math.isnan(lo) and math.isnan(hi)
    d, lo, hi = delong_paired_difference(np.array([0, 1, 1]), np.arange(3.0), np.arange(3.0)[::-1])
    assert math.isfinite(d) and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        delong_paired_difference(np.array([0, 1]), np.zeros(2), np.zeros(3))


def test_interval_verdict() -> None:
    from recsys.auc import interval_verdict

    assert interval_verdict(0.01, 0.03) == "better"
    assert interval_verdict(-0.03, -0.001) == "worse"
    assert interval_verdict(-0.01, 0.02) == "no significant difference"
    assert interval_verdict(0.0, 0.02) == "no significant difference"  # touching zero
    assert interval_verdict(float("nan"), float("nan")).startswith("undetermined")
