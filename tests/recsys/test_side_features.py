"""Side features (a video's length, a user's device) for GLMix: encoding against a direct
re-computation, lookups of unknown entities, the artifact round trip, the refusals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.errors import UserInputError
from recsys.scoring import HISTORY_FEATURES, glmix_global_features, history_features
from recsys.side_features import CatalogueSide, SideFeatures
from recsys.synthetic.world import SynthConfig, generate_world, side_signals

VIDEOS = pa.table(
    {
        "video_id": ["a", "b", "c", "d"],
        "length_s": [60.0, 120.0, None, 300.0],
        "category": ["news", None, "music", "news"],
    }
)
USERS = pa.table({"user_id": [7, 8, 9], "device": ["tv", "mobile", "tv"], "tenure": [1, 2, 6]})


def _side() -> SideFeatures:
    return SideFeatures.fit(VIDEOS, ["length_s", "category"], USERS, ["device", "tenure"])


def test_encoding_matches_a_direct_recomputation() -> None:
    side = _side()
    assert side.names == [
        "video.length_s",
        "video.category=music",
        "video.category=news",
        "user.device=mobile",
        "user.device=tv",
        "user.tenure",
    ]
    lengths = np.array([60.0, 120.0, 300.0])
    z = (lengths - lengths.mean()) / lengths.std()
    tenure = np.array([1.0, 2.0, 6.0])
    zt = (tenure - tenure.mean()) / tenure.std()
    got = side.rows(["8", 9, "nobody"], ["a", "c", "zzz"])
    want = np.array(
        [
            [z[0], 0, 1, 1, 0, zt[1]],
            [0.0, 1, 0, 0, 1, zt[2]],  # a null length: the mean
            [0.0, 0, 0, 0, 0, 0],  # unknown user and video: the means, no level
        ]
    )
    np.testing.assert_allclose(got, want, atol=1e-12)
    # integer and string ids are one id
    np.testing.assert_array_equal(side.rows([7], ["b"]), side.rows(["7"], ["b"]))


def test_round_trip_through_tables_keeps_every_value() -> None:
    side = _side()
    meta, videos, users = side.to_tables()
    back = SideFeatures.from_tables(meta, videos, users)
    assert back.names == side.names and back.columns == side.columns
    users_, videos_ = ["7", "8", "x"], ["d", "b", "a"]
    np.testing.assert_array_equal(back.rows(users_, videos_), side.rows(users_, videos_))


def test_a_constant_column_and_one_entity_kind_alone() -> None:
    t = pa.table({"video_id": ["a", "b"], "flag": [True, True]})
    side = SideFeatures.fit(t, ["flag"], None, [])
    assert side.names == ["video.flag"]
    np.testing.assert_array_equal(side.rows(["u", "v"], ["a", "b"]), np.zeros((2, 1)))


@pytest.mark.parametrize(
    ("videos", "columns", "message"),
    [
        (VIDEOS, ["nope"], "'nope' does not exist"),
        (pa.table({"video_id": ["a"], "x": [float("inf")]}), ["x"], "not finite for video 'a'"),
        (pa.table({"video_id": ["a"], "x": [float("nan")]}), ["x"], "not finite"),
        (pa.table({"video_id": ["a"], "x": [[1.0]]}), ["x"], "must be numeric"),
        (
            pa.table({"video_id": [str(i) for i in range(70)], "x": [str(i) for i in range(70)]}),
            ["x"],
            "70 levels",
        ),
        (pa.table({"video_id": ["a", "a"], "x": [1.0, 2.0]}), ["x"], "'a' appears twice"),
        (VIDEOS, ["length_s", "length_s"], "twice"),
    ],
)
def test_bad_columns_are_refused_by_name(
    videos: pa.Table, columns: list[str], message: str
) -> None:
    with pytest.raises(UserInputError, match=message):
        SideFeatures.fit(videos, columns, None, [])


def test_user_features_need_a_users_table() -> None:
    with pytest.raises(UserInputError, match="need a users table"):
        SideFeatures.fit(None, [], None, ["device"])


def test_catalogue_side_gives_uploads_and_unknown_users_the_mean() -> None:
    side = _side()
    cat = CatalogueSide(side, ["c", "a", "b", "d"])  # the catalogue's own row order
    got = cat.rows(["7", "x", "9"], np.array([1, 3, 4]))  # row 4: an upload
    want = side.rows(["7", "x", "9"], ["a", "d", "not-in-the-table"])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        cat.for_user("8", np.array([0, 2])), side.rows(["8"] * 2, ["c", "b"])
    )


def test_global_features_put_the_side_features_after_the_history() -> None:
    side = _side()
    mx, av = np.array([0.5, np.nan]), np.array([0.25, np.nan])
    s = side.rows(["7", "8"], ["a", "b"])
    both = glmix_global_features([*HISTORY_FEATURES, *side.names], mx, av, s)
    np.testing.assert_array_equal(both, np.hstack([history_features(mx, av), s]))
    np.testing.assert_array_equal(glmix_global_features(side.names, mx, av, s), s)
    with pytest.raises(ValueError, match="needs its 6 side features"):
        glmix_global_features(side.names, mx, av)
    with pytest.raises(ValueError, match="not known"):
        glmix_global_features([*side.names, "popularity"], mx, av, s)


def test_side_signals_change_only_the_watches_of_a_world() -> None:
    base = SynthConfig(seed=1, num_videos=60, num_users=30, days=7, feature_dim=4, num_topics=2)
    plain = generate_world(base)
    side = generate_world(SynthConfig(**{**base.__dict__, "side_signals": 1.5}))
    assert plain.users is None and "length_s" not in plain.video_meta.column_names
    for col in ("user_id", "video_id", "shown_at"):
        assert side.impressions.column(col).equals(plain.impressions.column(col))
    assert side.video_meta.column("length_s").to_numpy().min() > 0
    devices = side.users.column("device").to_pylist()  # type: ignore[union-attr]
    assert set(devices) <= {"mobile", "desktop", "tv"} and len(devices) == 30
    p0 = plain.truth.column("watch_probability").to_numpy()
    p1 = side.truth.column("watch_probability").to_numpy()
    assert not np.allclose(p0, p1)
    # Each row's logit moved by exactly its video's and its user's terms.
    video_term, user_term, _, _ = side_signals(side.config, np.array(devices))
    u = np.array([int(x[1:]) for x in side.impressions.column("user_id").to_pylist()])
    v = np.array([int(x[1:]) for x in side.impressions.column("video_id").to_pylist()])
    logit = np.log(p1 / (1 - p1)) - np.log(p0 / (1 - p0))
    np.testing.assert_allclose(logit, video_term[v] + user_term[u], atol=1e-8)
