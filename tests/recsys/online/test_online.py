"""Online GLMix: the refit is the MAP of the window, the replay scores before learning."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from recsys.glmix.model import GLMixConfig, fit_glmix
from recsys.online.replay import progressive_validation
from recsys.online.users import OnlineConfig, OnlineEffects, refit_effect


def _map_by_scipy(z, y, off, m, lam):
    def neg(b):
        eta = off + z @ b
        return -((y * eta - np.logaddexp(0, eta)).sum() - 0.5 * (lam * (b - m) ** 2).sum())

    return minimize(neg, m, method="BFGS", options={"gtol": 1e-10}).x


@pytest.mark.parametrize("n", [1, 5, 60])
def test_refit_is_the_map_estimate(n: int) -> None:
    rng = np.random.default_rng(n)
    q = 4
    z = np.hstack([np.ones((n, 1)), rng.normal(size=(n, q - 1))])
    y = (rng.random(n) < 0.4).astype(float)
    off = rng.normal(size=n)
    m = rng.normal(size=q) * 0.3
    lam = np.array([1.0, 2.0, 0.5, 3.0])
    got = refit_effect(z, y, off, m, lam, np.zeros(q), steps=50)
    np.testing.assert_allclose(got, _map_by_scipy(z, y, off, m, lam), atol=1e-5)
    # warm start from elsewhere: the same optimum (replicas and restarts agree)
    other = refit_effect(z, y, off, m, lam, rng.normal(size=q), steps=50)
    np.testing.assert_allclose(other, got, atol=1e-8)


def test_refit_edge_cases() -> None:
    q = 3
    m = np.array([0.2, -0.1, 0.4])
    empty = refit_effect(np.zeros((0, q)), np.zeros(0), np.zeros(0), m, np.ones(q), m, 5)
    np.testing.assert_array_equal(empty, m)
    z = np.ones((3, q))
    y = np.array([1.0, 1.0, 1.0])
    # an overwhelming prior keeps the prior mean; no prior precision lets the data move it
    stuck = refit_effect(z, y, np.zeros(3), m, np.full(q, 1e12), m, 20)
    np.testing.assert_allclose(stuck, m, atol=1e-9)
    free = refit_effect(z, y, np.zeros(3), m, np.full(q, 1e-3), m, 20)
    assert (z @ free)[0] > (z @ m)[0] + 1.0


def _model(rng: np.random.Generator, users: int = 30, n: int = 1500, e: int = 3):
    u = rng.integers(0, users, n)
    ids = np.array([f"u{i}" for i in u], dtype=object)
    x = rng.normal(size=(n, e))
    taste = rng.normal(size=(users, e))
    y = (rng.random(n) < 1 / (1 + np.exp(-(x * taste[u]).sum(1)))).astype(float)
    return fit_glmix(ids, x, y, GLMixConfig(random_l2=1.0)), taste


def test_no_impressions_means_the_offline_model() -> None:
    rng = np.random.default_rng(0)
    model, _ = _model(rng)
    online = OnlineEffects(model)
    x = rng.normal(size=(7, 3))
    for user in ("u1", "someone-new"):
        np.testing.assert_allclose(
            online.probability(user, x), model.predict_proba(np.array([user] * 7), x), atol=1e-12
        )
    assert model.user_precision is not None
    assert (model.user_precision >= model.config.random_l2 - 1e-12).all()


def test_batching_does_not_change_the_effect() -> None:
    rng = np.random.default_rng(1)
    model, _ = _model(rng)
    x = rng.normal(size=(12, 3))
    y = (rng.random(12) < 0.5).astype(float)
    one, many = OnlineEffects(model), OnlineEffects(model)
    one.observe("new", x, y)
    for i in range(0, 12, 5):
        many.observe("new", x[i : i + 5], y[i : i + 5])
    np.testing.assert_allclose(one.effect("new"), many.effect("new"), atol=1e-8)


def test_window_keeps_only_recent_impressions() -> None:
    rng = np.random.default_rng(2)
    model, _ = _model(rng)
    online = OnlineEffects(model, OnlineConfig(window=4))
    x = rng.normal(size=(10, 3))
    y = np.ones(10)
    online.observe("w", x[:6], y[:6])
    online.observe("w", x[6:], y[6:])
    fresh = OnlineEffects(model, OnlineConfig(window=4))
    fresh.observe("w", x[6:], y[6:])
    np.testing.assert_allclose(online.effect("w"), fresh.effect("w"), atol=1e-8)


def test_progressive_validation_scores_before_learning() -> None:
    rng = np.random.default_rng(3)
    model, _ = _model(rng)
    # A new user with a strong taste: the first impression is scored by the fixed effect
    # alone, later ones by an effect learnt from the earlier ones.
    n = 200
    x = rng.normal(size=(n, 3))
    w = np.array([3.0, -3.0, 0.0])
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w)))).astype(float)
    users = np.array(["newcomer"] * n, dtype=object)
    times = np.arange(n)[::-1].copy()  # given in reverse time order
    p = progressive_validation(users, x, y, times, model)
    frozen = model.predict_proba(users, x)
    assert p[-1] == pytest.approx(frozen[-1])  # the earliest impression: nothing learnt yet
    from recsys.auc import delong_ci

    late = times < n // 2
    assert delong_ci(y[late], p[late])[0] > delong_ci(y[late], frozen[late])[0] + 0.1
    # Rows by reference (each row names its video's table row) replay the same.
    from recsys.glmix.design import VideoRows

    by_ref = VideoRows(x, np.arange(n))
    np.testing.assert_array_equal(progressive_validation(users, by_ref, y, times, model), p)
    np.testing.assert_array_equal(model.predict_proba(users, by_ref), frozen)


def test_global_features_enter_the_offset_as_they_were() -> None:
    """With global features (history similarities), each window row's offset is the fixed
    effect at the features it had when shown; scoring uses the features given now."""
    rng = np.random.default_rng(4)
    u = rng.integers(0, 20, 800)
    ids = np.array([f"u{i}" for i in u], dtype=object)
    x, g = rng.normal(size=(800, 3)), rng.normal(size=(800, 2))
    y = (rng.random(800) < 1 / (1 + np.exp(-(g[:, 0] + x[:, 1])))).astype(float)
    model = fit_glmix(ids, x, y, GLMixConfig(random_l2=1.0), g)
    online = OnlineEffects(model)
    xn, gn = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    yn = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    got = online.observe("u3", xn, yn, gn)
    z = np.hstack([np.ones((6, 1)), xn])
    want = refit_effect(
        z,
        yn,
        model.fixed_logit(xn, gn),
        online.prior("u3"),
        online.precision("u3"),
        online.prior("u3"),
        50,
    )
    np.testing.assert_allclose(got, want, atol=1e-8)
    np.testing.assert_allclose(
        online.logit("u3", xn, gn), model.fixed_logit(xn, gn) + z @ got, atol=1e-12
    )
    p = progressive_validation(
        np.array(["u3"] * 6, dtype=object), xn, yn, np.arange(6), model, global_feats=gn
    )
    frozen = model.predict_proba(np.array(["u3"] * 6, dtype=object), xn, gn)
    assert p[0] == pytest.approx(frozen[0]) and not np.allclose(p[1:], frozen[1:])


def test_staging_many_users_at_once_is_staging_each_alone() -> None:
    """One stage call over rows of many users gives the windows, statistics and (after
    refit) effects, bit for bit, of staging them a row at a time."""
    rng = np.random.default_rng(7)
    model, _ = _model(rng)
    n = 40
    users = [f"u{i}" for i in rng.integers(0, 6, n)] + ["brand-new"] * 3
    x = rng.normal(size=(len(users), 3))
    y = (rng.random(len(users)) < 0.4).astype(float)
    together, apart = OnlineEffects(model), OnlineEffects(model)
    together.stage(users, x, y)
    together.refit(together.take_pending())
    for i, u in enumerate(users):
        apart.observe(u, x[i : i + 1], y[i : i + 1])
    assert set(together.effects) == set(apart.effects) and not together.pending
    for u in together.effects:
        w1, w2 = together.windows[u], apart.windows[u]
        assert w1.keys.tobytes() == w2.keys.tobytes() and w1.offset.tobytes() == w2.offset.tobytes()
        assert together.effects[u].tobytes() == apart.effects[u].tobytes()


def test_an_effect_solved_before_an_erasure_is_not_installed_after_it() -> None:
    rng = np.random.default_rng(8)
    model, _ = _model(rng)
    online = OnlineEffects(model)
    x = rng.normal(size=(5, 3))
    online.stage(["u1"] * 5, x, np.ones(5))
    jobs = online.take_pending()
    solved = online.solve(jobs)
    online.forget("u1")
    online.stage(["u1"], x[:1], np.zeros(1))  # back after the erasure: a new window
    assert online.install(jobs, solved) == 0 and "u1" not in online.effects
    assert online.refit(online.take_pending()) == 1
    # staged again while solving: the older solve is installed, the user stays pending
    online.stage(["u2"] * 2, x[:2], np.ones(2))
    jobs = online.take_pending()
    online.stage(["u2"], x[2:3], np.ones(1))
    assert online.install(jobs, online.solve(jobs)) == 1 and "u2" in online.pending


def test_the_replay_in_rounds_without_video_effects_is_row_by_row() -> None:
    """Known and new users, many rows each, tied times: the rounds give each row the
    row-by-row replay's score (a model without per-video effects: the users' half)."""
    from recsys.online.replay import replay_row_by_row

    rng = np.random.default_rng(8)
    model, _ = _model(rng)
    n = 400
    users = np.array([f"u{i}" for i in rng.integers(0, 40, n)], dtype=object)  # u30.. new
    x = rng.normal(size=(n, 3))
    y = (rng.random(n) < 0.5).astype(float)
    times = rng.integers(0, 50, n)
    got = progressive_validation(users, x, y, times, model)
    want = replay_row_by_row(users, x, y, times, model)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
