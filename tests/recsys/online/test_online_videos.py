"""Online per-video effects: one Laplace step from the offline effect, from sums that do
not depend on the order events arrive in."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.glmix.config import video_prior
from recsys.glmix.model import GLMixConfig, fit_glmix
from recsys.online.replay import progressive_validation, replay_row_by_row
from recsys.online.users import OnlineEffects
from recsys.online.videos import SCALE
from tests.recsys.glmix.test_glmix_videos import _world


@pytest.fixture(scope="module")
def fitted():
    users, x, y, videos, g, _ = _world(seed=11, rows=2000)
    model = fit_glmix(
        users, x, y, GLMixConfig(video_effects=True, video_intercept_l2=1.0), g, videos=videos
    )
    return model, users, x, y, videos, g


def _events(seed: int, n: int = 60):
    """New impressions: known and new users, known videos and a new upload."""
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in rng.integers(0, 45, n)]  # u40.. are new users
    vids = [f"v{i}" for i in rng.integers(0, 32, n)]  # v30, v31 are new uploads
    x = rng.normal(size=(n, 3))
    y = (rng.random(n) < 0.4).astype(float)
    g = rng.normal(size=(n, 1))
    return users, vids, x, y, g


def _feed(online: OnlineEffects, events, order) -> None:
    users, vids, x, y, g = events
    for i in order:
        online.observe(users[i], x[i : i + 1], y[i : i + 1], g[i : i + 1], [vids[i]], g[i : i + 1])


def test_the_effect_is_one_laplace_step_from_the_offline_one(fitted) -> None:
    model, *_ = fitted
    online = OnlineEffects(model)
    assert online.videos is not None
    events = _events(0, n=150)
    users, vids, x, y, g = events
    known = max((v for v in set(vids) if v in model.video_index), key=vids.count)
    new = max({"v30", "v31"} & set(vids), key=vids.count)
    r = model.video_index[known]
    np.testing.assert_array_equal(online.videos.effect(known), model.video_coef[r])
    np.testing.assert_array_equal(online.videos.effect(new), [0.0])
    _feed(online, events, range(150))
    # Direct re-computation: mu from the frozen offline model, one Newton step.
    rows = [i for i in range(150) if vids[i] == known]
    assert len(rows) >= 3
    eta = np.array(
        [
            model.fixed_logit(x[i : i + 1], g[i : i + 1])[0]
            + model.random_logit(model.user_rows([users[i]]), x[i : i + 1])[0]
            + model.video_coef[r, 0]
            for i in rows
        ]
    )
    mu = 1 / (1 + np.exp(-eta))
    grad = float((y[rows] - mu).sum())
    curv = float((mu * (1 - mu)).sum())
    prec = model.video_precision[r, 0]
    want = model.video_coef[r, 0] + grad / (prec + curv)
    assert online.videos.effect(known)[0] == pytest.approx(want, abs=1e-8)
    assert online.videos.effect(known)[0] != model.video_coef[r, 0]
    # A new upload starts from zero with the prior's precision.
    up = [i for i in range(150) if vids[i] == new]
    base = np.array(
        [
            model.fixed_logit(x[i : i + 1], g[i : i + 1])[0]
            + model.random_logit(model.user_rows([users[i]]), x[i : i + 1])[0]
            for i in up
        ]
    )
    m = 1 / (1 + np.exp(-base))
    lam = video_prior(model.config, 1)[0]
    want_new = float((y[up] - m).sum()) / (lam + float((m * (1 - m)).sum()))
    assert online.videos.effect(new)[0] == pytest.approx(want_new, abs=1e-8)


def test_every_order_of_the_same_events_gives_the_same_statistics_exactly(fitted) -> None:
    model, *_ = fitted
    events = _events(1, n=200)
    a, b = OnlineEffects(model), OnlineEffects(model)
    _feed(a, events, range(200))
    _feed(b, events, np.random.default_rng(9).permutation(200))
    assert a.videos is not None and b.videos is not None
    assert set(a.videos.stats) == set(b.videos.stats)
    for v, (g, h) in a.videos.stats.items():
        np.testing.assert_array_equal(g, b.videos.stats[v][0])  # integers: bit for bit
        np.testing.assert_array_equal(h, b.videos.stats[v][1])
        assert np.array_equal(a.videos.effect(v), b.videos.effect(v))
    # Scores use them: the same video scores the same on both.
    x = np.zeros((1, 3))
    assert a.logit("u1", x, np.zeros((1, 1)), ["v5"]) is not None
    assert a.videos.logit(["v5"], np.zeros((1, 1))) == b.videos.logit(["v5"], np.zeros((1, 1)))


def test_forgetting_a_user_takes_exactly_their_share_out(fitted) -> None:
    model, *_ = fitted
    users, vids, x, y, g = _events(2, n=150)
    erased = users[0]
    full = OnlineEffects(model)
    _feed(full, (users, vids, x, y, g), range(150))
    full.forget(erased)
    without = OnlineEffects(model)
    _feed(without, (users, vids, x, y, g), [i for i in range(150) if users[i] != erased])
    assert full.videos is not None and without.videos is not None
    for v, (gs, hs) in without.videos.stats.items():
        np.testing.assert_array_equal(full.videos.stats[v][0], gs)
        np.testing.assert_array_equal(full.videos.stats[v][1], hs)
    for v in set(full.videos.stats) - set(without.videos.stats):
        assert not full.videos.stats[v][0].any()  # only the erased user had seen it


def test_a_new_upload_that_everyone_watches_gains_appeal(fitted) -> None:
    model, *_ = fitted
    online = OnlineEffects(model)
    x = np.zeros((1, 3))
    for i in range(40):
        online.observe(f"u{i % 10}", x, np.ones(1), np.zeros((1, 1)), ["hit"], np.zeros((1, 1)))
    assert online.videos is not None
    assert online.videos.effect("hit")[0] > 1.0
    g, _ = online.videos.stats["hit"]
    assert g.dtype == np.int64 and g[0] > 0 and g[0] < 40 * SCALE
    with pytest.raises(ValueError, match="name each row's video"):
        online.logit("u1", x, np.zeros((1, 1)))


def test_the_replay_scores_each_row_before_learning_from_it(fitted) -> None:
    model, users, x, y, videos, g = fitted
    times = np.arange(len(y))
    got = progressive_validation(
        users[:50], x[:50], y[:50], times[:50], model, None, g[:50], videos[:50], g[:50]
    )
    frozen = model.predict_proba(users[:50], x[:50], g[:50], videos[:50])
    # The first row is scored before anything is learnt: the frozen model's score.
    assert got[0] == pytest.approx(frozen[0], abs=1e-12)
    assert not np.allclose(got, frozen)


def test_a_solved_effect_is_kept_only_while_its_sums_are_current(fitted) -> None:
    model, *_ = fitted
    events = _events(4, n=120)
    online = OnlineEffects(model)
    assert online.videos is not None
    _feed(online, events, range(60))
    vids = sorted(online.videos.stats)
    g = np.random.default_rng(3).normal(size=(len(vids), 1))
    first = online.videos.logit(vids, g)
    # Row by row against a fresh solve of each video's effect.
    fresh = OnlineEffects(model)
    assert fresh.videos is not None
    fresh.videos.stats = dict(online.videos.stats)
    direct = [
        float(fresh.videos.design(1, g[i : i + 1])[0] @ fresh.videos.effect(v))
        for i, v in enumerate(vids)
    ]
    np.testing.assert_allclose(first, direct, rtol=0, atol=1e-12)
    before = {v: online.videos.effect(v) for v in vids}
    _feed(online, events, range(60, 120))  # moves some of those videos again
    after = online.videos.logit(vids, g)
    rebuilt = OnlineEffects(model)
    assert rebuilt.videos is not None
    rebuilt.videos.stats = dict(online.videos.stats)
    for i, v in enumerate(vids):
        want = rebuilt.videos.effect(v)
        assert np.array_equal(online.videos.effect(v), want)  # never the stale solve
        assert after[i] == pytest.approx(
            float(rebuilt.videos.design(1, g[i : i + 1])[0] @ want), abs=1e-12
        )
    assert any(not np.array_equal(before[v], online.videos.effect(v)) for v in vids)


def test_a_users_shares_append_in_chunks_and_read_back_whole() -> None:
    """Appending costs the batch (chunks, joined every JOIN_AT), and what a reader sees
    is every row in the order appended."""
    from recsys.online.videos import UserShares

    rng = np.random.default_rng(0)
    rows = [(f"v{i}", rng.integers(-9, 9, 3), rng.integers(-9, 9, (3, 3))) for i in range(100)]
    shares = UserShares((rows[0][0],), rows[0][1][None], rows[0][2][None])
    for v, g, h in rows[1:]:
        shares = shares.added([v], g[None], h[None])
        assert len(shares._g) <= UserShares.JOIN_AT
    assert shares.videos == tuple(v for v, _, _ in rows)
    np.testing.assert_array_equal(shares.g, np.stack([g for _, g, _ in rows]))
    np.testing.assert_array_equal(shares.h, np.stack([h for _, _, h in rows]))


@pytest.mark.parametrize("slopes", [False, True])
def test_the_per_row_table_gives_the_bits_of_the_lookup(slopes: bool) -> None:
    """``logit_from`` over each row's offline coefficients (zero for a video the fit
    never saw), as the service's per-row table holds them, equals ``logit_at`` over
    the fit's rows bit for bit: unseen videos, moved videos and repeats included."""
    users, x, y, videos, g, _ = _world(seed=3, rows=1500)
    cfg = GLMixConfig(video_effects=True, video_slopes=slopes)
    model = fit_glmix(users, x, y, cfg, g, videos=videos)
    online = OnlineEffects(model)
    assert online.videos is not None and online.videos.q == (2 if slopes else 1)
    _feed(online, _events(4), range(60))
    rng = np.random.default_rng(0)
    names = [f"v{i}" for i in rng.integers(0, 32, 200)]  # v30, v31: never fitted
    rows = model.video_rows(names)
    assert (rows < 0).any() and (rows >= 0).any()
    feats = rng.normal(size=(200, 1)) * 10.0 ** rng.integers(-3, 4, (200, 1))
    moved = np.array([i for i, v in enumerate(names) if v in online.videos.stats], np.int64)
    moved_ids = [names[i] for i in moved]
    assert len(moved)
    want = online.videos.logit_at(rows, moved, moved_ids, feats)
    coef = np.zeros((200, online.videos.q))
    coef[rows >= 0] = model.video_coef[rows[rows >= 0]]
    got = online.videos.logit_from(coef, moved, moved_ids, feats)
    assert np.array_equal(got, want)
    seen = rows >= 0  # the offline term without a mask (every row seen) and with one
    assert np.array_equal(
        model.video_logit(rows[seen], feats[seen]), model.video_logit(rows, feats)[seen]
    )
    offline_only = online.videos.logit_from(coef, moved[:0], [], feats)
    assert (offline_only[rows < 0] == 0.0).all()  # an unseen video adds nothing


@pytest.mark.parametrize("slopes", [False, True])
def test_batched_effects_are_the_one_at_a_time_ones_and_changes_are_kept(slopes: bool) -> None:
    users, x, y, videos, g, _ = _world(seed=5, rows=1500)
    model = fit_glmix(
        users, x, y, GLMixConfig(video_effects=True, video_slopes=slopes), g, videos=videos
    )
    online = OnlineEffects(model)
    assert online.videos is not None
    _feed(online, _events(1, n=20), range(20))
    assert online.videos.changed is None  # nothing kept until asked
    assert online.videos.take_changed() == []
    events = _events(2)
    _feed(online, events, range(60))
    assert online.videos.take_changed() == sorted(set(events[1]))
    assert online.videos.take_changed() == []
    names = [f"v{i}" for i in range(32)] + ["v3", "never-seen"]
    batched = online.videos.effects(names)  # solves, then keeps them
    online.videos._solved.clear()
    one = np.stack([online.videos.effect(v) for v in names])
    assert np.array_equal(batched, one)
    assert np.array_equal(online.videos.effects(names), one)  # from what was kept


@pytest.mark.parametrize("seed", [0, 1])
def test_the_replay_in_rounds_is_the_replay_row_by_row(fitted, seed: int) -> None:
    """Rounds (each user, each video at most once a round, one batched refit a round)
    give every row what replaying one row at a time gives it: known and new users and
    videos, tied times, rows given out of time order."""
    model, *_ = fitted
    users, vids, x, y, g = _events(seed, n=300)
    users, vids = np.array(users, dtype=object), np.array(vids, dtype=object)
    times = np.random.default_rng(seed).integers(0, 120, 300)  # many ties
    got = progressive_validation(users, x, y, times, model, None, g, vids, g)
    want = replay_row_by_row(
        model=model, users=users, video=x, labels=y, times=times, global_feats=g, videos=vids
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_rounds_hold_each_key_once_in_time_order() -> None:
    from recsys.online.replay import rounds

    keys = np.array(["a", "b", "a", "c", "a", "b"], dtype=object)
    times = np.array([5, 1, 1, 9, 3, 1])
    got = [r.tolist() for r in rounds(keys, times)]
    # a: rows 2 (t=1), 4 (t=3), 0 (t=5); b: rows 1, 5 (tie: input order); c: row 3
    assert got == [[1, 2, 3], [5, 4], [0]]
    assert rounds(np.array([], dtype=object), np.array([])) == []
