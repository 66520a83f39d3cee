"""Each route's logic is a plain function of its inputs and the state: testable without
HTTP, and what the HTTP route answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st

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


def test_score_rows_equal_eq16_17_and_eq18_recomputed(state: ServingState) -> None:
    """The hot path against a direct float64 recomputation: similarities by a loop over
    the history, the logit as beta_0 + f(v).beta + g.beta_g + the user's and the video's
    effects, for a user with a history, one without, and an unknown one."""
    ids = state.catalogue.ids
    rows = np.array([0, 3, 3, len(ids) - 1, 7])
    user = _user_with_history(state)
    emb = state.catalogue.emb.astype(np.float64)
    for who in (user, "nobody-at-all"):
        mx, av, p = state.score_rows(who, rows)
        hist = state.history_rows(who)
        if hist:
            sims = np.array([[emb[r] @ emb[h] for h in hist] for r in rows])
            np.testing.assert_allclose(mx, sims.max(1), atol=1e-6)
            np.testing.assert_allclose(av, sims.mean(1), atol=1e-6)
        else:
            assert np.isnan(mx).all() and np.isnan(av).all()
        has = np.isfinite(mx)
        g = np.stack([np.where(has, mx, 0), np.where(has, av, 0), has * 1.0], 1)
        model, e = state.glmix, state.glmix.embedding_dim
        b = state.online.effect(who)
        eta = model.fixed[0] + b[0] + g @ model.fixed[1 + e :]
        if model.config.use_video_features:
            eta = eta + emb[rows] @ (model.fixed[1 : 1 + e] + b[1:])
        if model.has_video_effects:
            eta = eta + model.video_logit(model.video_rows([ids[r] for r in rows]), g)
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-eta)), rtol=1e-12, atol=1e-15)
        assert p[1] == p[2]  # a repeated candidate scores the same


def test_unwatched_neighbours_are_the_sorted_distinct_rows_minus_the_history(
    state: ServingState,
) -> None:
    from serving.queries import _unwatched_neighbours

    rng = np.random.default_rng(3)
    n = state.num_videos
    for size in (1, 3, 10):
        seeds = rng.choice(n, size, replace=False)
        for watched in (np.array([], np.int64), rng.choice(n, 40), seeds):
            got = _unwatched_neighbours(state, seeds, watched, 12)
            _, found = state.catalogue.neighbours(seeds, 12)
            want = np.setdiff1d(np.unique(found[found >= 0]), watched)
            assert np.array_equal(got, want)


@given(
    st.lists(st.sampled_from([0.1, 0.2, 0.5, 0.9, float("nan")]), min_size=1, max_size=60),
    st.integers(1, 20),
)
@settings(max_examples=1000)
@example([0.1] * 7 + [0.2, float("nan")], 2)  # NaN sorts last in a partition too
def test_top_k_is_the_head_of_a_stable_sort(values: list[float], k: int) -> None:
    from serving.queries import top_k

    p = np.array(values)
    assert np.array_equal(top_k(p, k), np.argsort(-p, kind="stable")[:k])
