"""The evaluation's statistics against direct re-computations."""

from __future__ import annotations

import numpy as np
import pytest


def test_auc_by_day_matches_sklearn_per_day() -> None:
    from sklearn.metrics import roc_auc_score

    from pipelines.evaluation.statistics import auc_by_day

    rng = np.random.default_rng(0)
    n = 600
    day_us = 86_400_000_000
    times = rng.integers(0, 3 * day_us, n) + 5 * day_us  # three days, not from zero
    y = (rng.random(n) < 0.4).astype(np.int64)
    a, b = rng.normal(size=n) + y, rng.normal(size=n)
    y[(times - times.min()) // day_us == 1] = 1  # one day with a single class: left out
    got = auc_by_day(y, times, {"a": a, "b": b})
    day = (times - times.min()) // day_us
    want_days = [d for d in range(3) if len(set(y[day == d].tolist())) == 2]
    assert [g["day"] for g in got] == [d + 1 for d in want_days]
    for g, d in zip(got, want_days, strict=True):
        rows = day == d
        assert g["rows"] == int(rows.sum())
        assert g["a"] == pytest.approx(roc_auc_score(y[rows], a[rows]))
        assert g["b"] == pytest.approx(roc_auc_score(y[rows], b[rows]))


def test_paired_with_run_is_delongs_paired_difference_on_the_rows_both_score() -> None:
    """Each shared score, all rows and cold start, rows either run cannot score left out;
    a score only one run has is skipped."""
    from pipelines.evaluation.statistics import paired_with_run
    from recsys.auc import delong_paired_difference

    rng = np.random.default_rng(2)
    n = 400
    y = (rng.random(n) < 0.4).astype(np.int64)
    cold = rng.random(n) < 0.3
    mine = {"glmix": y + rng.normal(0, 0.5, n), "avg_similarity": rng.normal(size=n)}
    mine["avg_similarity"][:7] = np.nan
    theirs = {"glmix": y + rng.normal(0, 2.0, n), "avg_similarity": rng.normal(size=n)}
    theirs["avg_similarity"][5:12] = np.nan
    out = paired_with_run(y, cold, mine, theirs)
    assert set(out) == {"glmix", "avg_similarity"}
    ok = ~np.isnan(mine["avg_similarity"]) & ~np.isnan(theirs["avg_similarity"]) & cold
    d, lo, hi = delong_paired_difference(
        y[ok], mine["avg_similarity"][ok], theirs["avg_similarity"][ok]
    )
    got = out["avg_similarity"]["cold_start"]
    assert got["difference"] == d and got["delong_paired_95"] == [lo, hi]
    assert out["glmix"]["all"]["verdict"] == "better"  # less noise around the labels
