"""A model with side features (a video's length, a user's device) served: impressions
learnt online with each row's side features, the same on a second replica and after a
restart; an upload, which has none, scored on the features' means."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys import artifact as art
from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import AUTH


def _impressions(ids: list[str], users: list[str], n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "user_id": users[int(rng.integers(len(users)))],
            "video_id": ids[int(rng.integers(8))],
            "shown_at": "2030-01-01T00:00:00Z",
            "watch_seconds": float(rng.choice([0.0, 60.0])),
            "event_id": f"s-{seed}-{i}",
        }
        for i in range(n)
    ]


@pytest.fixture
def side_settings(side_pipeline_out: Path, tmp_path: Path) -> Settings:
    return Settings(
        artifacts=side_pipeline_out / "artifact", state_db=tmp_path / "s.db", api_key="s3cret"
    )


def _scores(c: TestClient, user: str, videos: list[str]) -> list[float]:
    body = c.post("/v1/score", json={"user_id": user, "video_ids": videos}).json()
    return [s["watch_probability"] for s in body["scores"]]


def test_online_learning_with_side_features_agrees_across_replicas(
    side_settings: Settings,
) -> None:
    settings = side_settings
    ids, _ = art.load_embeddings(settings.artifacts)
    users = ["u000001", "u000002", "new-user"]
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        before = _scores(first, "new-user", ids[:8])
        r = first.post(
            "/v1/events/impressions",
            json={"impressions": _impressions(ids, users, 60, 0)},
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
        first.app.state.holder.current.sync()  # type: ignore[attr-defined]
        second.app.state.holder.current.sync()  # type: ignore[attr-defined]
        for user in users:
            assert _scores(first, user, ids[:8]) == _scores(second, user, ids[:8])
        learnt = _scores(first, "new-user", ids[:8])
        assert learnt != before
    with TestClient(create_app(settings)) as restarted:
        assert _scores(restarted, "new-user", ids[:8]) == learnt


def test_an_upload_is_scored_on_the_side_features_means(
    side_settings: Settings, side_world_dir: Path
) -> None:
    from pipelines.data.io import iter_video_batches

    settings, a = side_settings, side_settings.artifacts
    vb = next(iter(iter_video_batches(side_world_dir, batch_size=4)))
    vec = vb.frames[3].tolist()
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/videos", json={"video_id": "fresh", "embedding": vec}, headers=AUTH)
        assert r.status_code == 201, r.text
        state = c.app.state.holder.current  # type: ignore[attr-defined]
        row = state.catalogue.row("fresh")
        user = "u000004"
        body = c.post("/v1/score", json={"user_id": user, "video_ids": ["fresh"]}).json()
        got = body["scores"][0]
        # Direct: the user's own device, the upload's length at the mean (0: no such video
        # in the side table), after the history similarities.
        side = art.load_side_features(a)
        assert side is not None and row is not None
        cand = state.catalogue.vectors([row])
        mx, av, _ = state.score_rows(user, np.array([row]))  # what the route was given
        assert got["max_similarity"] == mx[0] and got["avg_similarity"] == av[0]
        has = np.isfinite(mx)
        hist = np.stack([np.where(has, mx, 0), np.where(has, av, 0), has.astype(float)], 1)
        g = np.hstack([hist, side.rows([user], ["no-such-video"])])
        assert g[0, 3] == 0.0 and g[0, 4:].sum() == 1.0  # mean length, one device
        want = state.online.probability(user, cand, g, ["fresh"])[0]
        assert got["watch_probability"] == pytest.approx(want, abs=1e-12)


def test_an_erased_user_loses_their_side_features_too(side_settings: Settings) -> None:
    ids, _ = art.load_embeddings(side_settings.artifacts)
    with TestClient(create_app(side_settings)) as c:
        stranger = _scores(c, "never-seen", ids[:6])
        assert _scores(c, "u000003", ids[:6]) != stranger  # their effect, history, device
        assert c.delete("/v1/users/u000003", headers=AUTH).status_code == 200
        assert _scores(c, "u000003", ids[:6]) == stranger
