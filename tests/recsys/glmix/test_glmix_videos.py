"""GLMix's third coordinate: per-video random effects (intercept, optional slopes)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import UserInputError
from recsys.glmix.config import random_prior, video_prior
from recsys.glmix.design import VideoRows
from recsys.glmix.logistic import mean_log_loss
from recsys.glmix.model import GLMix, GLMixConfig, fit_glmix
from recsys.glmix.tuning import NO_VIDEO_EFFECTS, select_video_l2


def _world(seed: int = 0, n_users: int = 40, n_videos: int = 30, rows: int = 2500, spread=1.2):
    """Rows (user, video features, label, video id) whose videos differ in appeal."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(n_videos, 3)).astype(np.float32)
    appeal = rng.normal(0, spread, n_videos)
    u = rng.integers(0, n_users, rows)
    v = rng.integers(0, n_videos, rows)
    user_icpt = rng.normal(0, 0.7, n_users)
    g = rng.normal(size=(rows, 1))
    eta = -0.4 + table[v] @ np.array([0.5, -0.3, 0.0]) + user_icpt[u] + appeal[v] + 0.4 * g[:, 0]
    y = (rng.random(rows) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    users = np.array([f"u{i}" for i in u], dtype=object)
    videos = np.array([f"v{i}" for i in v], dtype=object)
    return users, VideoRows(table, v.astype(np.int64)), y, videos, g, appeal


def _converged(**kw) -> GLMixConfig:
    return GLMixConfig(
        video_effects=True,
        random_l2=3.0,
        random_newton_steps=20,
        max_passes=400,
        tol=1e-13,
        **kw,
    )


def _joint_solution(model: GLMix, users, x: VideoRows, y, videos, g=None) -> np.ndarray:
    """The penalised problem over all blocks at once (fixed, every user's, every video's
    coefficients as one vector), solved by a dense Newton's method: the reference the
    coordinate descent must reach. Returns the coefficients in ``_stack`` order."""
    xd = x.dense().astype(np.float64)
    n = len(y)
    parts = [np.c_[np.ones(n), xd] if g is None else np.c_[np.ones(n), xd, g]]
    lam = [np.r_[0.0, np.full(parts[0].shape[1] - 1, model.config.fixed_l2)]]
    zu = np.c_[np.ones(n), xd]
    for uid in model.user_ids:
        parts.append(zu * (users == uid)[:, None])
        lam.append(random_prior(model.config, zu.shape[1]))
    zv = np.ones((n, 1)) if model.video_dim == 1 else np.c_[np.ones(n), g]
    for vid in model.video_ids:
        parts.append(zv * (videos == vid)[:, None])
        lam.append(video_prior(model.config, zv.shape[1]))
    d, lam_all = np.hstack(parts), np.concatenate(lam)
    b = np.zeros(d.shape[1])
    for _ in range(50):
        mu = 1 / (1 + np.exp(-(d @ b)))
        grad = d.T @ (y - mu) - lam_all * b
        hess = (d * (mu * (1 - mu))[:, None]).T @ d + np.diag(lam_all) + 1e-10 * np.eye(len(b))
        b = b + np.linalg.solve(hess, grad)
    return b


def _stack(model: GLMix) -> np.ndarray:
    assert model.video_coef is not None
    p = 1 + model.embedding_dim + model.global_dim
    return np.concatenate([model.fixed[:p], model.user_coef.ravel(), model.video_coef.ravel()])


def test_the_three_coordinates_reach_the_joint_optimum() -> None:
    """Coordinate descent over fixed, users and videos solves the one joint problem: its
    coefficients approach a dense joint Newton solve's. A video's intercept and its
    features' part of the fixed effect trade off (both are constant per video), so
    convergence along that direction is linear and slow, as in any block descent (Photon-
    ML's GAME alike): the default's few passes give the optimum's likelihood to ~1e-4 a
    row, not its coefficients."""
    users, x, y, videos, _, _ = _world()
    model = fit_glmix(users, x, y, _converged(video_intercept_l2=0.5), videos=videos)
    assert model.has_video_effects and model.video_coef is not None
    assert model.video_coef.shape == (30, 1) and model.video_precision is not None
    want = _joint_solution(model, users, x, y, videos)
    np.testing.assert_allclose(_stack(model), want, atol=2e-3)
    # The default budget (8 passes, tol 1e-4): close in likelihood, if not in coefficients.
    cfg = GLMixConfig(video_effects=True, random_l2=3.0, video_intercept_l2=0.5)
    quick = fit_glmix(users, x, y, cfg, videos=videos)

    def ll(m: GLMix) -> float:
        p = m.predict_proba(users, x, None, videos)
        return float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    assert 0 <= ll(model) - ll(quick) < 1e-4


def test_per_video_slopes_on_the_global_features_reach_the_optimum_too() -> None:
    users, x, y, videos, g, _ = _world(seed=1)
    cfg = _converged(video_intercept_l2=0.5, video_slopes=True, video_slope_l2=2.0)
    model = fit_glmix(users, x, y, cfg, g, videos=videos)
    assert model.video_dim == 2 and model.video_coef is not None
    assert model.video_coef.shape == (30, 2)
    np.testing.assert_allclose(
        _stack(model), _joint_solution(model, users, x, y, videos, g), atol=2e-3
    )
    with pytest.raises(UserInputError, match="slopes need global features"):
        fit_glmix(users, x, y, cfg, None, videos=videos)


def test_video_effects_find_each_videos_appeal_and_help_on_held_out_rows() -> None:
    users, x, y, videos, _, appeal = _world(seed=2, rows=6000)
    train = np.arange(len(y)) < 5000
    cfg = GLMixConfig(video_effects=True, video_intercept_l2=1.0)
    with_v = fit_glmix(users[train], x[train], y[train], cfg, videos=videos[train])
    without = fit_glmix(users[train], x[train], y[train], GLMixConfig())
    assert with_v.video_coef is not None
    found = with_v.video_coef[with_v.video_rows([f"v{i}" for i in range(30)]), 0]
    assert np.corrcoef(found, appeal)[0, 1] > 0.9
    test = ~train
    p_with = with_v.predict_proba(users[test], x[test], None, videos[test])
    p_without = without.predict_proba(users[test], x[test])
    assert mean_log_loss(y[test], p_with) < mean_log_loss(y[test], p_without) - 0.02


def test_an_unseen_video_gets_no_effect_and_prediction_needs_the_videos() -> None:
    users, x, y, videos, _, _ = _world(seed=3, rows=800)
    model = fit_glmix(users, x, y, GLMixConfig(video_effects=True), videos=videos)
    rows = x[:5]
    base = model.predict_proba(users[:5], rows, None, np.array(["never seen"] * 5))
    eta = model.fixed_logit(rows.dense()) + model.random_logit(
        model.user_rows(users[:5]), rows.dense()
    )
    np.testing.assert_allclose(base, 1 / (1 + np.exp(-eta)))
    with pytest.raises(ValueError, match="name each row's video"):
        model.predict_proba(users[:5], rows)
    with pytest.raises(UserInputError, match="each row's video"):
        fit_glmix(users, x, y, GLMixConfig(video_effects=True))


def test_the_video_table_round_trips_and_old_models_still_load() -> None:
    users, x, y, videos, _, _ = _world(seed=4, rows=900)
    model = fit_glmix(users, x, y, GLMixConfig(video_effects=True), videos=videos)
    fixed, user_table = model.to_tables()
    video_table = model.video_table()
    assert video_table is not None and video_table.num_rows == 30
    back = GLMix.from_tables(fixed, user_table, video_table)
    assert back.video_ids == model.video_ids
    np.testing.assert_array_equal(back.video_coef, model.video_coef)
    np.testing.assert_array_equal(back.video_precision, model.video_precision)
    np.testing.assert_allclose(
        back.predict_proba(users, x, None, videos), model.predict_proba(users, x, None, videos)
    )
    with pytest.raises(UserInputError, match="per-video effects are missing"):
        GLMix.from_tables(fixed, user_table, None)
    # A model written before the coordinate existed: no video keys in its config.
    old = fit_glmix(users, x, y, GLMixConfig())
    old_fixed, old_users = old.to_tables()
    for key in ("video_effects", "video_intercept_l2", "video_slopes", "video_slope_l2"):
        old_fixed["config"].pop(key)
    loaded = GLMix.from_tables(old_fixed, old_users)
    assert not loaded.has_video_effects and old.video_table() is None
    np.testing.assert_allclose(loaded.predict_proba(users, x), old.predict_proba(users, x))


def test_the_penalty_is_chosen_on_validation_with_none_among_the_candidates() -> None:
    users, x, y, videos, _, _ = _world(seed=5, rows=4000, spread=1.5)
    is_val = np.arange(len(y)) >= 3400
    cfg, losses = select_video_l2(users, x, y, is_val, videos, grid=(0.3, 3.0, 1e4))
    assert set(losses) == {NO_VIDEO_EFFECTS, "0.3", "3.0", "10000.0"}
    best = min(losses, key=losses.__getitem__)
    assert cfg.video_effects == (best != NO_VIDEO_EFFECTS)
    # Videos differ strongly here: some per-video coordinate beats none.
    assert best != NO_VIDEO_EFFECTS and losses[best] < losses[NO_VIDEO_EFFECTS] - 0.01
    # Where videos do not differ, the coordinate's loss stays within noise of none's.
    users, x, y, videos, _, _ = _world(seed=5, rows=4000, spread=0.0)
    _, flat = select_video_l2(users, x, y, is_val, videos, grid=(3.0,))
    assert abs(flat["3.0"] - flat[NO_VIDEO_EFFECTS]) < 0.01


def test_recentering_is_skipped_where_it_would_not_be_exact() -> None:
    """Users below the row minimum or subsampled and reweighted break the identity that
    makes the move exact: their coordinate is left alone (and predictions unchanged)."""
    from recsys.glmix.coordinate_descent import USER, VIDEO, LocalBackend, fixed_design

    users, x, y, videos, _, _ = _world(seed=6, rows=600)
    codes = np.unique(users, return_inverse=True)[1]
    vcodes = np.unique(videos, return_inverse=True)[1]
    design = fixed_design(x.dense(), None, True)
    for cfg, moved in (
        (GLMixConfig(video_effects=True), True),
        (GLMixConfig(video_effects=True, max_rows_per_user=5), False),
        (GLMixConfig(video_effects=True, min_rows_per_user=3), False),
    ):
        b = LocalBackend.cowatch(
            codes,
            codes.max() + 1,
            design,
            y,
            4,
            cfg,
            np.random.default_rng(0),
            vcodes,
            vcodes.max() + 1,
        )
        b.random_pass(USER, np.zeros(4), 2)
        b.random_pass(VIDEO, np.zeros(4), 2)
        before = (b.fixed_score + b._random_total()).clone()
        m = b.recenter(USER)
        assert (m != 0.0) == moved
        np.testing.assert_allclose(b.fixed_score + b._random_total(), before, atol=1e-12)
        assert b.recenter(VIDEO) != 0.0


@pytest.mark.parametrize("n", [0, 5, 100, 5000])
def test_video_rows_by_dict_and_by_index_agree(n: int) -> None:
    """A few thousand ids go through the model's dict, more through a pandas index: the
    same rows either way, -1 for an id the fit never saw."""
    users, x, y, videos, _, _ = _world(seed=3)
    model = fit_glmix(users, x, y, GLMixConfig(video_effects=True), videos=videos)
    rng = np.random.default_rng(n)
    ids = [f"v{i}" for i in rng.integers(0, 40, size=n)]  # v30..v39: never seen
    want = np.array([model.video_index.get(v, -1) for v in ids], dtype=np.int64)
    np.testing.assert_array_equal(model.video_rows(ids), want)
    np.testing.assert_array_equal(model.video_rows(np.asarray(ids, dtype=object)), want)
