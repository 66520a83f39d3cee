"""Scoring over HTTP: Eq. 16-17 and GLMix per candidate, recommendations, similar videos."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.artifact import load_glmix
from recsys.scoring import HISTORY_FEATURES
from tests.serving.helpers import a_user_with_history, catalogue, history


def test_score_matches_eq16_17_and_glmix(client: TestClient, artifact) -> None:
    ids, emb = catalogue(artifact)
    user = a_user_with_history(artifact)
    hist = sorted(set(history(artifact, user)))
    cands = [ids[0], ids[5], "does-not-exist"]
    r = client.post("/v1/score", json={"user_id": user, "video_ids": cands})
    assert r.status_code == 200
    body = r.json()
    assert body["known_user"] and body["history_size"] == len(hist)
    row = {v: i for i, v in enumerate(ids)}
    h = emb[[row[v] for v in hist]]
    glm = load_glmix(artifact)
    assert glm.global_names == list(HISTORY_FEATURES)  # the pipeline's default model
    for item, v in zip(body["scores"][:2], cands[:2], strict=True):
        sims = h @ emb[row[v]]
        assert item["max_similarity"] == pytest.approx(float(sims.max()), abs=1e-5)
        assert item["avg_similarity"] == pytest.approx(float(sims.mean()), abs=1e-5)
        # Eq. 18 plus the history similarities as global features.
        g = np.array([[sims.max(), sims.mean(), 1.0]])
        # ... plus the video's own effect when the model has the per-video coordinate.
        p = glm.predict_proba([user], emb[row[v]][None].astype(np.float64), g, [v])[0]
        assert item["watch_probability"] == pytest.approx(p, abs=1e-6)
    assert body["scores"][2] == {"video_id": "does-not-exist", "error": "unknown video"}


def test_unknown_user_gets_fixed_effect_and_null_similarities(client: TestClient, artifact) -> None:
    ids, emb = catalogue(artifact)
    r = client.post("/v1/score", json={"user_id": "stranger", "video_ids": [ids[1]]}).json()
    assert r["known_user"] is False and r["history_size"] == 0
    s = r["scores"][0]
    assert s["max_similarity"] is None and s["avg_similarity"] is None
    glm = load_glmix(artifact)
    no_history = np.zeros((1, len(glm.global_names)))  # similarities 0, has_history 0
    eta = glm.fixed_logit(emb[1][None].astype(np.float64), no_history)[0]
    eta += glm.video_logit(glm.video_rows([ids[1]]), no_history)[0]  # 0 without the coordinate
    assert s["watch_probability"] == pytest.approx(1 / (1 + np.exp(-eta)))


def test_recommendations_exclude_watched_and_similar(client: TestClient, artifact) -> None:
    user = a_user_with_history(artifact)
    recs = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()[
        "recommendations"
    ]
    assert 0 < len(recs) <= 5
    assert not set(r["video_id"] for r in recs) & set(history(artifact, user))
    probs = [r["watch_probability"] for r in recs]
    assert probs == sorted(probs, reverse=True)
    ids, _ = catalogue(artifact)
    cold = client.get("/v1/users/nobody/recommendations", params={"k": 3}).json()["recommendations"]
    assert len(cold) == 3
    sim = client.get(f"/v1/videos/{ids[0]}/similar", params={"k": 4}).json()["similar"]
    assert len(sim) == 4 and ids[0] not in [s["video_id"] for s in sim]
    assert client.get("/v1/videos/zzz/similar").status_code == 404


def test_a_history_crowding_its_own_neighbourhood_still_gets_k(
    client: TestClient, artifact, monkeypatch
) -> None:
    from serving import queries
    from tests.serving.conftest import AUTH

    ids, emb = catalogue(artifact)
    near = np.argsort(-(emb @ emb[0]))[:40]  # video 0's 40 nearest, itself first
    for r in near[::-1].tolist():  # the nearest watched last: they are the seeds
        ev = {
            "user_id": "crowd",
            "video_id": ids[r],
            "watch_seconds": 60,
            "at": "2026-02-01T00:00:00Z",
        }
        assert client.post("/v1/events/watch", json=ev, headers=AUTH).status_code == 201
    asked: list[int] = []
    real = queries._unwatched_neighbours

    def spy(state, seeds, watched, per_seed):
        asked.append(per_seed)
        return real(state, seeds, watched, per_seed)

    monkeypatch.setattr(queries, "_unwatched_neighbours", spy)
    k = 10
    recs = client.get("/v1/users/crowd/recommendations", params={"k": k}).json()["recommendations"]
    assert len(recs) == k and not {r["video_id"] for r in recs} & {ids[r] for r in near.tolist()}
    assert asked == [2 * k + 20]  # 20 seeds, each with room for the others: enough here

    def crowded(state, seeds, watched, per_seed):  # as if the first pass left 3
        asked.append(per_seed)
        got = real(state, seeds, watched, per_seed)
        return got[:3] if len(asked) == 2 else got

    monkeypatch.setattr(queries, "_unwatched_neighbours", crowded)
    recs = client.get("/v1/users/crowd/recommendations", params={"k": k}).json()["recommendations"]
    assert asked[1:] == [2 * k + 20, 4 * k + 40] and len(recs) == k  # room for the history


def test_large_recommendations_leave_the_event_loop(
    client: TestClient, artifact, monkeypatch
) -> None:
    import threading

    from serving import queries
    from serving.routers import scoring

    where: list[str] = []
    real = queries.recommend

    def spy(state, user_id, k, seeds):
        where.append(threading.current_thread().name)
        return real(state, user_id, k, seeds)

    monkeypatch.setattr(queries, "recommend", spy)
    user = a_user_with_history(artifact)
    assert client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).status_code == 200
    monkeypatch.setattr(scoring, "INLINE_CANDIDATES", 0)  # every one counts as large
    assert client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).status_code == 200
    assert "AnyIO worker" not in where[0] and "AnyIO worker" in where[1]
    state = client.app.state.holder.current  # type: ignore[attr-defined]
    assert queries.recommend_candidates(state, "nobody", 5, 20) == min(state.num_videos, 20_000)
    n = min(len(state.histories.get(user)), 20)
    assert queries.recommend_candidates(state, user, 5, 20) == n * min(state.num_videos, 10 + n)
