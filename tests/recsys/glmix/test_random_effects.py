"""The batched per-user solver: buckets, row caps, the posterior precision."""

from __future__ import annotations

import numpy as np

from recsys.glmix.config import random_prior
from recsys.glmix.model import GLMixConfig, fit_glmix
from recsys.glmix.random_effects import posterior_precision
from recsys.glmix.random_effects import user_buckets as _buckets


def test_row_bounds() -> None:
    user_of_row = np.array([0] * 3 + [1] * 10 + [2] * 1)
    cfg = GLMixConfig(min_rows_per_user=2, max_rows_per_user=4)
    buckets, eligible = _buckets(user_of_row, 3, cfg, np.random.default_rng(0))
    assert eligible.tolist() == [True, True, False]
    by_user = {int(u): (b.rows[i], b.weights[i]) for b in buckets for i, u in enumerate(b.users)}
    assert set(by_user) == {0, 1}
    rows1, w1 = by_user[1]
    assert (rows1 >= 0).sum() == 4 and np.allclose(w1[rows1 >= 0], 10 / 4)
    assert set(rows1[rows1 >= 0]) <= set(range(3, 13))
    rows0, w0 = by_user[0]
    assert sorted(rows0[rows0 >= 0]) == [0, 1, 2] and np.allclose(w0[rows0 >= 0], 1.0)
    # Fitting with bounds works and leaves the small user at zero.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(14, 2))
    y = (rng.random(14) < 0.5).astype(float)
    m = fit_glmix(np.array(["a"] * 3 + ["b"] * 10 + ["c"]), x, y, cfg)
    assert np.all(m.user_coef[m.user_index["c"]] == 0) and np.isfinite(m.user_coef).all()


def test_posterior_precision_is_the_prior_plus_each_users_curvature() -> None:
    rng = np.random.default_rng(0)
    user_of_row = np.array([0, 0, 0, 1, 2, 2])
    z = np.c_[np.ones(6), rng.normal(size=(6, 2))]
    eta = rng.normal(size=6)
    cfg = GLMixConfig(random_l2=3.0, random_intercept_l2=0.5, min_rows_per_user=2)
    prior = random_prior(cfg, 3)
    got = posterior_precision(user_of_row, 3, z, eta, prior, 2)
    # Rows summed a chunk at a time (bounded float64 copies) give the same sums.
    z32 = z.astype(np.float32)
    np.testing.assert_allclose(
        posterior_precision(user_of_row, 3, z32, eta, prior, 2, chunk_rows=4),
        posterior_precision(user_of_row, 3, z32, eta, prior, 2),
        rtol=1e-12,
    )
    mu = 1 / (1 + np.exp(-eta))
    for u in range(3):
        rows = user_of_row == u
        want = random_prior(cfg, 3).copy()
        if rows.sum() >= 2:  # user 1 has one row: no random effect, the prior alone
            want += (z[rows] ** 2 * (mu[rows] * (1 - mu[rows]))[:, None]).sum(0)
        np.testing.assert_allclose(got[u], want, rtol=1e-12)


def test_a_bounded_bucket_size_changes_no_coefficient(monkeypatch) -> None:
    """Many users of one row-count class are solved in batches of about BUCKET_VALUES
    design values; each user's solve is its own, so the fit is the same."""
    import recsys.glmix.random_effects as re_mod

    rng = np.random.default_rng(3)
    users = np.repeat([f"u{i}" for i in range(40)], rng.integers(5, 9, 40))
    x = rng.normal(size=(len(users), 3))
    y = (rng.random(len(users)) < 0.4).astype(float)
    whole = fit_glmix(users, x, y, GLMixConfig())
    monkeypatch.setattr(re_mod, "BUCKET_VALUES", 64)  # 2 users of 8 rows x 4 columns
    buckets, _ = _buckets(np.unique(users, return_inverse=True)[1], 40, GLMixConfig(), rng, q=4)
    assert max(len(b.users) for b in buckets) == 2
    split = fit_glmix(users, x, y, GLMixConfig())
    np.testing.assert_allclose(split.user_coef, whole.user_coef, atol=1e-10)
    np.testing.assert_allclose(split.fixed, whole.fixed, atol=1e-10)
