"""Ids of any type: a model fitted and used with integer ids (Python ints, numpy
integers) gives what the same ids as strings give, and an integer is never read as a
row position."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.glmix.design import VideoRows
from recsys.glmix.model import GLMixConfig, fit_glmix, id_keys
from recsys.online.users import OnlineEffects


def _world(seed: int, n_users: int, n_videos: int, rows: int = 600):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(n_videos, 3)).astype(np.float32)
    u = rng.integers(0, n_users, rows)
    v = rng.integers(0, n_videos, rows)
    eta = -0.3 + table[v] @ np.array([0.5, -0.3, 0.2]) + rng.normal(0, 0.8, n_videos)[v]
    y = (rng.random(rows) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    g = rng.normal(size=(rows, 1))
    # Ids far above the number of rows: taken as positions they would fail or alias.
    return 1000 + 7 * u, VideoRows(table, v.astype(np.int64)), y, 5000 + 3 * v, g


CFG = GLMixConfig(video_effects=True, random_l2=2.0, max_passes=3)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), n_users=st.integers(2, 25), n_videos=st.integers(2, 12))
def test_integer_and_string_ids_give_identical_models_and_predictions(
    seed: int, n_users: int, n_videos: int
) -> None:
    users, x, y, videos, g = _world(seed, n_users, n_videos)
    as_int = fit_glmix(users.tolist(), x, y, CFG, g, videos=videos.tolist())
    as_np = fit_glmix(users, x, y, CFG, g, videos=videos)  # numpy int64 arrays
    as_str = fit_glmix([str(u) for u in users], x, y, CFG, g, videos=[str(v) for v in videos])
    for m in (as_int, as_np):
        assert m.user_ids == as_str.user_ids and m.video_ids == as_str.video_ids
        np.testing.assert_array_equal(m.fixed, as_str.fixed)
        np.testing.assert_array_equal(m.user_coef, as_str.user_coef)
        np.testing.assert_array_equal(m.video_coef, as_str.video_coef)
    want = as_str.predict_proba([str(u) for u in users], x, g, [str(v) for v in videos])
    for m in (as_int, as_np, as_str):
        for uid, vid in ((users, videos), (users.tolist(), videos.tolist())):
            np.testing.assert_array_equal(m.predict_proba(uid, x, g, vid), want)
    # Rows only through the named argument.
    rows = as_str.video_rows(videos)
    assert (rows >= 0).all() and as_str.video_ids[rows[0]] == str(videos[0])
    np.testing.assert_array_equal(as_str.predict_proba(users, x, g, video_rows=rows), want)
    # The online model's prior for a user is the same under either type.
    online = OnlineEffects(as_str)
    u0 = int(users[0])
    np.testing.assert_array_equal(online.prior(u0), online.prior(str(u0)))
    np.testing.assert_array_equal(online.prior(np.int64(u0)), online.prior(str(u0)))
    assert online.prior(str(u0)).any()
    assert online.videos is not None
    v0 = int(videos[0])
    np.testing.assert_array_equal(online.videos.offline(v0)[0], online.videos.offline(str(v0))[0])


def test_an_integer_is_an_id_never_a_row() -> None:
    users, x, y, videos, g = _world(1, 5, 4)
    m = fit_glmix(users, x, y, CFG, g, videos=videos)
    # 0 and 1 are no video of this fit (ids are 5000, 5003, ...): unknown, not rows 0, 1.
    assert m.video_rows([0, 1, int(videos[0])]).tolist() == [
        -1,
        -1,
        m.video_ids.index(str(videos[0])),
    ]
    assert m.user_rows(np.array([0, users[0]])).tolist() == [-1, m.user_ids.index(str(users[0]))]
    # 7 and "7" are one id when fitted together.
    mixed = fit_glmix([7, "7", 8, "8"] * 10, x[:40], y[:40], GLMixConfig(), None)
    assert mixed.user_ids == ["7", "8"]
    assert id_keys(np.array([1, 2])) == ["1", "2"] and id_keys(["a", 3]) == ["a", "3"]
