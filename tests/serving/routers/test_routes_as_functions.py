"""Each route's logic is a plain function of its inputs and the state: testable without
HTTP, and what the HTTP route answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.artifact import load_embeddings
from serving.routers import explorer, scoring
from serving.schemas import ScoreRequest
from serving.state import ServingState
from serving.stores import SqliteStore


@pytest.fixture
def state(artifact: Path, tmp_path: Path) -> ServingState:
    return ServingState(artifact, SqliteStore(tmp_path / "s.sqlite3"), 10.0)


def _user_with_history(state: ServingState) -> str:
    return next(u for u in state.offline_users if state.history_rows(u))


def test_score_function_matches_the_route(state: ServingState, client: TestClient) -> None:
    user = _user_with_history(state)
    videos = [*state.catalogue.ids[:5], "nope"]
    direct = json.loads(scoring.score(ScoreRequest(user_id=user, video_ids=videos), state).body)
    over_http = client.post("/v1/score", json={"user_id": user, "video_ids": videos}).json()
    assert direct == over_http
    assert direct["scores"][-1] == {"video_id": "nope", "error": "unknown video"}


def test_similar_and_recommendations_functions(state: ServingState) -> None:
    ids, emb = load_embeddings(state.artifact)
    got = json.loads(scoring.similar(state, ids[0], 3).body)["similar"]
    want = np.argsort(-(emb @ emb[0]))[1:4]  # cosine: the embeddings are normalised
    assert [g["video_id"] for g in got] == [ids[i] for i in want]
    user = _user_with_history(state)
    recs = json.loads(scoring.recommendations(state, user, 4, 20).body)["recommendations"]
    watched = set(state.history_ids(user))
    assert len(recs) == 4 and not watched & {r["video_id"] for r in recs}
    probs = [r["watch_probability"] for r in recs]
    assert probs == sorted(probs, reverse=True)


def test_explorer_queries(state: ServingState) -> None:
    users = state.offline_users
    prefix = users[0][:2]
    want = sorted(u for u in users if u.startswith(prefix))[:5]
    assert explorer.search_users(state, prefix, 5) == want
    assert explorer.search_users(state, "no-such-prefix", 5) == []
    pts = explorer.positions(state, [state.catalogue.ids[3], "nope"])
    assert [p["video_id"] for p in pts] == [state.catalogue.ids[3]]
    assert pts[0]["cold_start"] is False
    sample = explorer.map_points(state, 10)
    assert 0 < len(sample) <= 10
