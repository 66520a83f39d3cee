"""Online per-video effects in the service: every replica, and a restart, end with the
same statistics whatever order the impressions reached them in; an erasure takes the
user's share out everywhere."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from serving.app import create_app
from tests.serving.conftest import AUTH
from tests.serving.helpers import a_user_with_history, catalogue, frames


def _impressions(ids: list[str], users: list[str], prefix: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "user_id": users[int(rng.integers(len(users)))],
            "video_id": ids[int(rng.integers(6))],
            "shown_at": "2030-01-01T00:00:00Z",
            "watch_seconds": float(rng.choice([0.0, 60.0])),
            "event_id": f"{prefix}-{i}",
        }
        for i in range(n)
    ]


def _stats(client: TestClient) -> dict[str, tuple[list[int], list[list[int]]]]:
    state = client.app.state.holder.current  # type: ignore[attr-defined]
    state.sync()
    videos = state.online.videos
    assert videos is not None
    return {v: (g.tolist(), h.tolist()) for v, (g, h) in videos.stats.items()}


def test_replicas_and_a_restart_agree_on_every_videos_statistics(video_artifact, settings) -> None:
    ids, _ = catalogue(video_artifact)
    users = [a_user_with_history(video_artifact), "new-user-1", "new-user-2"]
    first = _impressions(ids, users, "a", 30, 0)
    second = _impressions(ids, users, "b", 30, 1)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        # Each replica takes half the events first, then follows the other's half:
        # the two see the same events in opposite orders.
        assert (
            a.post("/v1/events/impressions", json={"impressions": first}, headers=AUTH).status_code
            == 201
        )
        assert (
            b.post("/v1/events/impressions", json={"impressions": second}, headers=AUTH).status_code
            == 201
        )
        sa, sb = _stats(a), _stats(b)
        assert sa and sa == sb
        score = {"user_id": "new-user-9", "video_ids": ids[:6]}
        pa_ = [s["watch_probability"] for s in a.post("/v1/score", json=score).json()["scores"]]
        pb_ = [s["watch_probability"] for s in b.post("/v1/score", json=score).json()["scores"]]
        assert pa_ == pb_
    with TestClient(create_app(settings)) as c:  # a restart replays the log
        assert _stats(c) == sa
        again = [s["watch_probability"] for s in c.post("/v1/score", json=score).json()["scores"]]
        assert again == pa_
    # What was learnt moved the scores: a service that saw no event scores differently.
    other = settings.model_copy(update={"state_db": settings.state_db.parent / "none.sqlite3"})
    with TestClient(create_app(other)) as d:
        untouched = [
            s["watch_probability"] for s in d.post("/v1/score", json=score).json()["scores"]
        ]
    assert untouched != pa_


def test_an_erasure_takes_the_users_share_out_on_every_replica(video_artifact, settings) -> None:
    ids, _ = catalogue(video_artifact)
    events = _impressions(ids, ["erase-me", "keep-1", "keep-2"], "e", 40, 2)
    kept = [e for e in events if e["user_id"] != "erase-me"]
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        assert (
            a.post("/v1/events/impressions", json={"impressions": events}, headers=AUTH).status_code
            == 201
        )
        _stats(b)  # b has applied the erased user's events too
        assert a.delete("/v1/users/erase-me", headers=AUTH).status_code in (200, 204)
        sa, sb = _stats(a), _stats(b)
        assert sa == sb
    other = settings.model_copy(update={"state_db": settings.state_db.parent / "fresh.sqlite3"})
    with TestClient(create_app(other)) as fresh:  # only the kept events, ever
        assert (
            fresh.post(
                "/v1/events/impressions", json={"impressions": kept}, headers=AUTH
            ).status_code
            == 201
        )
        want = _stats(fresh)
    assert {v: s for v, s in sa.items() if any(s[0]) or any(map(any, s[1]))} == {
        v: s for v, s in want.items() if any(s[0]) or any(map(any, s[1]))
    }


def _posted(client: TestClient, state, impressions: list[dict]) -> set[str]:
    """Post impressions, apply them; the videos holding online statistics now."""
    r = client.post("/v1/events/impressions", json={"impressions": impressions}, headers=AUTH)
    assert r.status_code == 201
    state.sync()
    return set(state.online.videos.stats)


def _by_ids(state, user: str, rows: list[int]) -> np.ndarray:
    """The id-keyed reference: OnlineEffects.probability with every candidate's id."""
    cand = state.catalogue.vectors(rows)
    mx, av = state.similarity(user, cand)
    from recsys.scoring import glmix_global_features

    g = glmix_global_features(state.glmix.global_names, mx, av)
    return state.online.probability(user, cand, g, [state.catalogue.ids[r] for r in rows])


def test_scores_looked_up_by_row_equal_the_id_keyed_model(video_artifact, settings) -> None:
    ids, _ = catalogue(video_artifact)
    users = [a_user_with_history(video_artifact), "new-user-1"]
    with TestClient(create_app(settings)) as a:
        state = a.app.state.holder.current  # type: ignore[attr-defined]
        rows = list(range(min(len(ids), 12)))

        def check() -> None:
            for user in users:
                cand = state.catalogue.vectors(rows)
                mx, av = state.similarity(user, cand)
                got = state.watch_probability(user, cand, mx, av, rows)
                # To rounding: the serving path adds the user's coefficients to the fixed
                # effect's before the product; a wrong lookup moves a score far more.
                np.testing.assert_allclose(got, _by_ids(state, user, rows), rtol=0, atol=1e-14)
                smx, sav, routed = state.score_rows(user, np.array(rows))
                # The hot path's own reductions and sums: the same bits as the parts'.
                np.testing.assert_array_equal(smx, mx, strict=True)
                np.testing.assert_array_equal(sav, av, strict=True)
                assert np.array_equal(routed, got)

        check()  # nothing seen online yet: every video on its offline effect
        moved = _posted(a, state, _impressions(ids, users, "r", 40, 3))
        assert moved and {ids[r] for r in state.effect_rows.lookup(np.array(rows))[1]} == moved
        check()
        assert a.post("/v1/admin/snapshot", headers=AUTH).json()["written"]
    with TestClient(create_app(settings)) as b:  # restored from the snapshot
        state = b.app.state.holder.current  # type: ignore[attr-defined]
        assert state.started_from == "snapshot"
        assert {ids[r] for r in state.effect_rows.lookup(np.array(rows))[1]} == moved
        check()


def _table_is_current(state) -> None:
    """Every catalogue row's coefficients in the table: the online effect, bit for bit,
    of a video with statistics; the offline fit's (0 if it never saw it) otherwise."""
    videos, table = state.online.videos, state.effect_rows.coef
    for r, v in enumerate(state.catalogue.ids[: len(table)]):
        if v in videos.stats:
            assert np.array_equal(table[r], videos.effect(v)), v
        else:
            assert np.array_equal(table[r], videos.offline(v)[0]), v


def test_the_per_row_table_follows_impressions_erasures_and_restores(
    video_artifact, settings
) -> None:
    ids, _ = catalogue(video_artifact)
    users = [a_user_with_history(video_artifact), "new-user-1", "new-user-2"]
    with TestClient(create_app(settings)) as a:
        state = a.app.state.holder.current  # type: ignore[attr-defined]
        _table_is_current(state)  # nothing seen yet: the fit's
        assert _posted(a, state, _impressions(ids, users, "t", 40, 5))
        _table_is_current(state)
        before = state.effect_rows.coef.copy()
        assert a.delete("/v1/users/new-user-1", headers=AUTH).status_code in (200, 202, 204)
        state.sync()
        _table_is_current(state)
        assert not np.array_equal(before, state.effect_rows.coef)  # the erasure moved some
        assert a.post("/v1/admin/snapshot", headers=AUTH).json()["written"]
    with TestClient(create_app(settings)) as b:  # restored from the snapshot
        state = b.app.state.holder.current  # type: ignore[attr-defined]
        assert state.started_from == "snapshot"
        _table_is_current(state)


def test_an_upload_with_statistics_is_scored_as_the_id_keyed_model(
    video_artifact, settings
) -> None:
    """An upload since the load lies past the per-row table: its offline row is looked
    up by id and its online effect solved at read time, beside table rows."""
    ids, _ = catalogue(video_artifact)
    with TestClient(create_app(settings)) as a:
        state = a.app.state.holder.current  # type: ignore[attr-defined]
        body = {"video_id": "fresh-upload", "frames": frames(state.feature_dim, seed=3)}
        assert a.post("/v1/videos", json=body, headers=AUTH).status_code == 201
        users = [a_user_with_history(video_artifact), "new-user-1"]
        imps = _impressions(["fresh-upload", *ids[:5]], users, "u", 30, 7)
        assert "fresh-upload" in _posted(a, state, imps)
        rows = [state.catalogue.row("fresh-upload"), *range(6)]
        assert rows[0] >= len(state.effect_rows.coef)
        for user in users:
            p = state.score_rows(user, np.array(rows))[2]
            np.testing.assert_allclose(p, _by_ids(state, user, rows), rtol=0, atol=1e-14)


def test_the_table_is_current_after_concurrent_batches(video_artifact, settings) -> None:
    """Batches staged at once by several request threads, on the same few videos: the
    effects are written outside the state's lock, and the last write for a video
    still follows its last change."""
    from concurrent.futures import ThreadPoolExecutor

    ids, _ = catalogue(video_artifact)
    users = [a_user_with_history(video_artifact), "new-user-1", "new-user-2", "new-user-3"]
    with TestClient(create_app(settings)) as a:
        state = a.app.state.holder.current  # type: ignore[attr-defined]

        def post(i: int) -> int:
            imps = _impressions(ids, users, f"c{i}", 25, 100 + i)
            return a.post(
                "/v1/events/impressions", json={"impressions": imps}, headers=AUTH
            ).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(post, range(12))) == [201] * 12
        state.sync()
        _table_is_current(state)
