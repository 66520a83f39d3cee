from __future__ import annotations

import itertools

import numpy as np
import pytest
import statsmodels.api as sm

from recsys.errors import UserInputError
from recsys.glmix.logistic import fit_logistic
from recsys.glmix.model import GLMix, GLMixConfig, fit_glmix
from recsys.glmix.tuning import select_random_l2
from tests.recsys.reference import scipy_penalised as _scipy_penalised


def _simulate(n_users: int = 40, rows: int = 60, e: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    fixed = rng.normal(0, 0.7, e)
    users, vids, ys = [], [], []
    true_icpt = rng.normal(0, 1.0, n_users)
    true_slope = rng.normal(0, 0.8, (n_users, e))
    for u in range(n_users):
        n = int(rng.integers(rows // 3, rows * 2))
        x = rng.normal(size=(n, e))
        eta = -0.5 + x @ fixed + true_icpt[u] + x @ true_slope[u]
        ys.append(rng.random(n) < 1 / (1 + np.exp(-eta)))
        vids.append(x)
        users += [f"u{u:03d}"] * n
    return (
        np.array(users),
        np.concatenate(vids),
        np.concatenate(ys).astype(float),
        true_icpt,
        true_slope,
    )


def test_fixed_effect_matches_statsmodels_glm() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.3 + x @ [1.0, -0.5, 0.2])))).astype(float)
    off = rng.normal(0, 0.3, 400)
    design = np.c_[np.ones(400), x]
    ref = sm.GLM(y, design, family=sm.families.Binomial(), offset=off).fit()
    ours = fit_logistic(design, y, offset=off, l2=0.0)
    np.testing.assert_allclose(ours, ref.params, atol=1e-8)
    # Through fit_glmix: no user has enough rows for a random effect -> a plain GLM.
    users = np.array(["a"] * 400)
    model = fit_glmix(users, x, y, GLMixConfig(fixed_l2=0.0, min_rows_per_user=10**6))
    ref0 = sm.GLM(y, design, family=sm.families.Binomial()).fit()
    np.testing.assert_allclose(model.fixed, ref0.params, atol=1e-7)
    assert np.all(model.user_coef == 0)


def _reference_user_solve(z, y, off, lam_vec, steps=100):
    """A direct Newton solve of one user's penalised problem, in numpy."""
    b = np.zeros(z.shape[1])
    for _ in range(steps):
        mu = 1 / (1 + np.exp(-(off + z @ b)))
        g = z.T @ (y - mu) - lam_vec * b
        h = z.T @ (z * (mu * (1 - mu))[:, None]) + np.diag(lam_vec)
        b = b + np.linalg.solve(h, g)
    return b


def test_one_users_random_effect_matches_direct_solve() -> None:
    users, x, y, _, _ = _simulate(seed=3)
    cfg = GLMixConfig(
        random_l2=2.0, random_intercept_l2=0.5, random_newton_steps=25, max_passes=30, tol=1e-12
    )
    model = fit_glmix(users, x, y, cfg)
    fixed_score = model.fixed_logit(x)
    lam_vec = np.r_[0.5, np.full(x.shape[1], 2.0)]
    for u in ("u000", "u017"):
        rows = users == u
        z = np.c_[np.ones(rows.sum()), x[rows]]
        ref = _reference_user_solve(z, y[rows], fixed_score[rows], lam_vec)
        np.testing.assert_allclose(model.user_coef[model.user_index[u]], ref, atol=1e-6)
        # And statsmodels with the same offset and penalty (equal strengths for all coefficients).
    lam = 2.0
    cfg2 = GLMixConfig(
        random_l2=lam, random_intercept_l2=lam, random_newton_steps=25, max_passes=30, tol=1e-12
    )
    m2 = fit_glmix(users, x, y, cfg2)
    rows = users == "u005"
    z = np.c_[np.ones(rows.sum()), x[rows]]
    sm_ref = sm.GLM(
        y[rows], z, family=sm.families.Binomial(), offset=m2.fixed_logit(x)[rows]
    ).fit_regularized(alpha=lam / rows.sum(), L1_wt=0.0, cnvrg_tol=1e-12, maxiter=2000)
    got = m2.user_coef[m2.user_index["u005"]]
    np.testing.assert_allclose(got, sm_ref.params, atol=2e-4)
    exact = _scipy_penalised(z, y[rows], m2.fixed_logit(x)[rows], np.full(z.shape[1], lam))
    np.testing.assert_allclose(got, exact, atol=1e-6)


def test_coordinate_descent_improves_and_recovers_user_effects() -> None:
    users, x, y, true_icpt, true_slope = _simulate(n_users=80, rows=120, seed=4)
    model = fit_glmix(users, x, y, GLMixConfig(random_l2=1.0, random_intercept_l2=0.1))
    ll = [h["log_likelihood_per_row"] for h in model.history]
    assert len(ll) >= 2 and all(b >= a - 1e-9 for a, b in itertools.pairwise(ll))
    est = model.user_coef[[model.user_index[f"u{u:03d}"] for u in range(80)]]
    assert np.corrcoef(est[:, 0], true_icpt)[0, 1] > 0.7
    assert np.corrcoef(est[:, 1:].ravel(), true_slope.ravel())[0, 1] > 0.6
    # A model without random effects fits worse.
    plain = fit_glmix(users, x, y, GLMixConfig(min_rows_per_user=10**6))
    assert plain.history[-1]["log_likelihood_per_row"] < ll[-1]


def test_unknown_users_get_the_fixed_effect_and_round_trip() -> None:
    users, x, y, _, _ = _simulate(seed=5)
    model = fit_glmix(users, x, y)
    p_new = model.predict_proba(["nobody"], x[:1])
    assert p_new[0] == pytest.approx(1 / (1 + np.exp(-model.fixed_logit(x[:1])[0])))
    fixed, table = model.to_tables()
    again = GLMix.from_tables(fixed, table)
    np.testing.assert_allclose(
        again.predict_proba(users[:50], x[:50]), model.predict_proba(users[:50], x[:50])
    )
    with pytest.raises(UserInputError, match="malformed"):
        GLMix.from_tables({**fixed, "fixed": [0.0]}, table)


def test_no_video_features_model() -> None:
    users, x, y, _, _ = _simulate(seed=6)
    model = fit_glmix(users, x, y, GLMixConfig(use_video_features=False))
    assert model.user_coef.shape[1] == 1 and np.all(model.fixed[1:] == 0)
    # Predictions ignore the video entirely.
    p1 = model.predict_proba(users[:5], x[:5])
    p2 = model.predict_proba(users[:5], np.zeros_like(x[:5]))
    np.testing.assert_allclose(p1, p2)


def test_bad_input() -> None:
    with pytest.raises(UserInputError, match="same number of rows"):
        fit_glmix(np.array(["a"]), np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(UserInputError, match="labels 0 or 1"):
        fit_glmix(np.array(["a"]), np.zeros((1, 2)), np.array([0.5]))
    with pytest.raises(UserInputError, match="at least one"):
        fit_glmix(np.array([]), np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="random_l2"):
        GLMixConfig(random_l2=-1)


def test_select_random_l2_prefers_the_better_validation_fit() -> None:
    from recsys.glmix.tuning import select_random_l2

    users, x, y, _, _ = _simulate(n_users=60, rows=80, seed=7)
    rng = np.random.default_rng(0)
    is_val = rng.random(len(y)) < 0.2
    best, losses = select_random_l2(users, x, y, is_val, grid=(0.01, 1.0, 1e4))
    assert set(losses) == {0.01, 1.0, 1e4} and best == min(losses, key=losses.get)
    # Users here do have real slopes: shrinking them to nothing must not be the winner.
    assert best != 1e4
    with pytest.raises(UserInputError, match="both training and validation"):
        select_random_l2(users, x, y, np.zeros(len(y), bool))


def test_global_features_fit_predict_and_round_trip() -> None:
    users, x, y, _, _ = _simulate(seed=8)
    rng = np.random.default_rng(8)
    g = rng.normal(size=(len(y), 2))
    # A global feature that moves the labels: its coefficient is found, its name kept.
    y = (rng.random(len(y)) < 1 / (1 + np.exp(-(2.0 * g[:, 0] + np.log(y.mean()))))).astype(float)
    model = fit_glmix(users, x, y, GLMixConfig(random_l2=1.0), g)
    model.global_names = ["signal", "noise"]
    e = x.shape[1]
    assert model.global_dim == 2 and model.fixed[1 + e] > 1.0 and abs(model.fixed[2 + e]) < 0.5
    eta = model.fixed_logit(x[:9], g[:9]) + model.random_logit(model.user_rows(users[:9]), x[:9])
    np.testing.assert_allclose(model.predict_proba(users[:9], x[:9], g[:9]), 1 / (1 + np.exp(-eta)))
    with pytest.raises(ValueError, match="needs global features"):
        model.predict_proba(users[:9], x[:9])
    fixed, table = model.to_tables()
    again = GLMix.from_tables(fixed, table)
    assert again.global_names == ["signal", "noise"]
    np.testing.assert_allclose(
        again.predict_proba(users[:9], x[:9], g[:9]), model.predict_proba(users[:9], x[:9], g[:9])
    )
    with pytest.raises(UserInputError, match="malformed"):
        GLMix.from_tables({**fixed, "global_features": ["one"]}, table)
    # select_random_l2 passes them on (it would fail without them).
    is_val = np.arange(len(y)) % 5 == 0
    best, _ = select_random_l2(users, x, y, is_val, grid=(1.0, 10.0), global_feats=g)
    assert best in (1.0, 10.0)


@pytest.mark.parametrize("use_video", [True, False])
def test_rows_by_reference_fit_the_same_model(use_video: bool, monkeypatch) -> None:
    """A per-video table and each row's video (``VideoRows``) give the model the dense
    (N, E) rows give: fixed effect, user effects, precisions, validation losses; also
    through the subsample start of a large fit."""
    import recsys.glmix.model as glmix_mod
    from recsys.glmix.design import VideoRows

    rng = np.random.default_rng(5)
    table = rng.normal(size=(30, 3)).astype(np.float32)
    rows = rng.integers(0, 30, 900)
    users = np.array([f"u{i}" for i in rng.integers(0, 25, 900)], dtype=object)
    eta = 0.4 * table[rows] @ np.array([1.0, -1.0, 0.5]) - 0.3
    y = (rng.random(900) < 1 / (1 + np.exp(-eta))).astype(float)
    g = rng.normal(size=(900, 2))
    monkeypatch.setattr(glmix_mod, "_SUBSAMPLE_ROWS", 100)  # 900 > 4 x 100: subsample start
    cfg = GLMixConfig(use_video_features=use_video)
    dense = fit_glmix(users, table[rows], y, cfg, g)
    by_ref = fit_glmix(users, VideoRows(table, rows), y, cfg, g)
    np.testing.assert_allclose(by_ref.fixed, dense.fixed, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(by_ref.user_coef, dense.user_coef, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(by_ref.user_precision, dense.user_precision, rtol=1e-6)
    val = np.arange(900) >= 800
    best_d, loss_d = select_random_l2(users, table[rows], y, val, global_feats=g)
    best_r, loss_r = select_random_l2(users, VideoRows(table, rows), y, val, global_feats=g)
    assert best_r == best_d
    for lam, loss in loss_d.items():
        assert loss_r[lam] == pytest.approx(loss, rel=1e-7)
    with pytest.raises(UserInputError, match="outside the feature table"):
        fit_glmix(users, VideoRows(table, rows + 30), y, cfg, g)
