from __future__ import annotations

import base64
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.artifact import load_glmix, read_embeddings
from recsys.errors import UserInputError
from recsys.scoring import HISTORY_FEATURES
from serving.app import create_app
from tests.serving.conftest import AUTH


def _catalogue(artifact):
    ids, emb = read_embeddings(artifact / "embeddings.parquet")
    return ids, emb


def _history(artifact, user):
    t = pq.read_table(artifact / "histories.parquet").to_pylist()
    return [r["video_id"] for r in t if r["user_id"] == user]


def _a_user_with_history(artifact) -> str:
    return pq.read_table(artifact / "histories.parquet").column("user_id")[0].as_py()


def test_health_ready_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["videos"] > 0
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/score", "/v1/videos", "/v1/events/watch"} <= set(paths)


def test_score_matches_eq16_17_and_glmix(client: TestClient, artifact) -> None:
    ids, emb = _catalogue(artifact)
    user = _a_user_with_history(artifact)
    hist = sorted(set(_history(artifact, user)))
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
        p = glm.predict_proba([user], emb[row[v]][None].astype(np.float64), g)[0]
        assert item["watch_probability"] == pytest.approx(p, abs=1e-6)
    assert body["scores"][2] == {"video_id": "does-not-exist", "error": "unknown video"}


def test_unknown_user_gets_fixed_effect_and_null_similarities(client: TestClient, artifact) -> None:
    ids, emb = _catalogue(artifact)
    r = client.post("/v1/score", json={"user_id": "stranger", "video_ids": [ids[1]]}).json()
    assert r["known_user"] is False and r["history_size"] == 0
    s = r["scores"][0]
    assert s["max_similarity"] is None and s["avg_similarity"] is None
    glm = load_glmix(artifact)
    no_history = np.zeros((1, len(glm.global_names)))  # similarities 0, has_history 0
    eta = glm.fixed_logit(emb[1][None].astype(np.float64), no_history)[0]
    assert s["watch_probability"] == pytest.approx(1 / (1 + np.exp(-eta)))


def test_recommendations_exclude_watched_and_similar(client: TestClient, artifact) -> None:
    user = _a_user_with_history(artifact)
    recs = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()[
        "recommendations"
    ]
    assert 0 < len(recs) <= 5
    assert not set(r["video_id"] for r in recs) & set(_history(artifact, user))
    probs = [r["watch_probability"] for r in recs]
    assert probs == sorted(probs, reverse=True)
    ids, _ = _catalogue(artifact)
    cold = client.get("/v1/users/nobody/recommendations", params={"k": 3}).json()["recommendations"]
    assert len(cold) == 3
    sim = client.get(f"/v1/videos/{ids[0]}/similar", params={"k": 4}).json()["similar"]
    assert len(sim) == 4 and ids[0] not in [s["video_id"] for s in sim]
    assert client.get("/v1/videos/zzz/similar").status_code == 404


def _frames(d: int, t: int = 4, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(t, d)).round(4).tolist()


def test_ingest_is_scoreable_idempotent_and_conflicts(client: TestClient, artifact) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    body = {"video_id": "fresh-1", "frames": _frames(d)}
    assert client.post("/v1/videos", json=body).status_code == 401  # API key required
    assert client.post("/v1/videos", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    r = client.post("/v1/videos", json=body, headers=AUTH)
    assert r.status_code == 201 and r.json() == {
        "video_id": "fresh-1",
        "created": True,
        "num_frames": 4,
    }
    assert (
        client.post("/v1/videos", json=body, headers=AUTH).status_code == 200
    )  # same payload: idempotent
    other = {"video_id": "fresh-1", "frames": _frames(d, seed=1)}
    assert client.post("/v1/videos", json=other, headers=AUTH).status_code == 409
    ids, _ = _catalogue(artifact)
    assert (
        client.post(
            "/v1/videos", json={"video_id": ids[0], "frames": _frames(d)}, headers=AUTH
        ).status_code
        == 409
    )
    s = client.post(
        "/v1/score", json={"user_id": _a_user_with_history(artifact), "video_ids": ["fresh-1"]}
    ).json()
    assert (
        s["scores"][0]["watch_probability"] is not None
        and s["scores"][0]["max_similarity"] is not None
    )
    # The compact form: base64 float32 and uint8.
    raw = np.asarray(_frames(d, seed=2), dtype="<f4")
    b64 = {
        "video_id": "fresh-2",
        "frames_b64": base64.b64encode(raw.tobytes()).decode(),
    }
    assert client.post("/v1/videos", json=b64, headers=AUTH).status_code == 201
    q = np.full((3, d), 128, np.uint8)
    u8 = {
        "video_id": "fresh-3",
        "frames_b64": base64.b64encode(q.tobytes()).decode(),
        "dtype": "uint8",
    }
    assert client.post("/v1/videos", json=u8, headers=AUTH).status_code == 201
    metrics = client.get("/metrics").text
    assert "recsys_ingested_videos_total 3" in metrics and "recsys_index_size" in metrics
    assert 'route="/v1/videos",status="201"' in metrics


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"video_id": "x", "frames": []}, 422, "frames: List should have at least 1 item"),
        ({"video_id": "x", "frames": [[1.0, 2.0]]}, 422, "frames.0: List should have at least"),
        ({"video_id": "x", "frames": [[1e7] * 8]}, 422, "frames.0.0: Input should be less than"),
        ({"video_id": "x"}, 422, "exactly one of frames or frames_b64"),
        ({"video_id": "x", "frames": [[1.0]], "frames_b64": "AAAA"}, 422, "exactly one of"),
        ({"video_id": "x", "frames_b64": "AAAA", "dtype": "f16"}, 422, "dtype: Input should be"),
        ({"video_id": "x", "frames_b64": "!!!"}, 400, "not valid base64"),
        ({"video_id": "x", "frames_b64": "AAAA"}, 400, "not a positive multiple of one frame"),
        ({"video_id": "x", "frames_b64": "AAB="}, 400, "not canonical"),
        ({"video_id": "x", "frames_b64": "AAAA", "num_frames": 1}, 422, "Extra inputs"),
        ({"video_id": "", "frames": [[1.0]]}, 422, "video_id"),
        ({"frames": [[1.0]]}, 422, "video_id"),
    ],
)
def test_ingest_bad_input(client: TestClient, body, status: int, needle: str) -> None:
    r = client.post("/v1/videos", json=body, headers=AUTH)
    assert r.status_code == status and needle in r.json()["detail"]


def test_non_finite_frames_rejected(client: TestClient, artifact) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    raw = np.zeros((2, d), "<f4")
    raw[1, 0] = np.nan
    b = {
        "video_id": "nanny",
        "frames_b64": base64.b64encode(raw.tobytes()).decode(),
    }
    r = client.post("/v1/videos", json=b, headers=AUTH)
    assert r.status_code == 400 and "finite" in r.json()["detail"]
    text = '{"video_id": "nanny", "frames": [[NaN' + ", 0" * (d - 1) + "]]}"
    r = client.post(
        "/v1/videos", content=text, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert 400 <= r.status_code < 500


def test_watch_events_update_history(client: TestClient, artifact) -> None:
    ids, _ = _catalogue(artifact)
    ev = {
        "user_id": "newbie",
        "video_id": ids[3],
        "watch_seconds": 30,
        "at": "2026-02-02T10:00:00Z",
    }
    assert client.post("/v1/events/watch", json=ev).status_code == 401
    r = client.post("/v1/events/watch", json=ev, headers=AUTH)
    assert r.status_code == 201 and r.json()["valid_watch"] is True
    s = client.post("/v1/score", json={"user_id": "newbie", "video_ids": [ids[3]]}).json()
    assert s["history_size"] == 1 and s["scores"][0]["max_similarity"] == pytest.approx(
        1.0, abs=1e-5
    )
    short = {**ev, "video_id": ids[4], "watch_seconds": 2}
    assert client.post("/v1/events/watch", json=short, headers=AUTH).json()["valid_watch"] is False
    assert (
        client.post("/v1/events/watch", json={**ev, "video_id": "zzz"}, headers=AUTH).status_code
        == 404
    )
    assert (
        client.post("/v1/events/watch", json={**ev, "watch_seconds": -1}, headers=AUTH).status_code
        == 422
    )
    assert (
        client.post(
            "/v1/events/watch", json={**ev, "at": "2026-02-02T10:00:00"}, headers=AUTH
        ).status_code
        == 422
    )


def test_limits(client: TestClient, settings) -> None:
    too_many = {"user_id": "u", "video_ids": [f"v{i}" for i in range(1001)]}
    assert client.post("/v1/score", json=too_many).status_code == 422
    big = b"x" * (settings.max_body_bytes + 1)
    r = client.post("/v1/videos", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert (
        client.post(
            "/v1/score", content=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 422
    )
    assert client.get("/v1/users/u/recommendations", params={"k": 0}).status_code == 422


def test_reload_swaps_artifact(client: TestClient, artifact) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    client.post("/v1/videos", json={"video_id": "kept", "frames": _frames(d)}, headers=AUTH)
    assert client.post("/v1/admin/reload").status_code == 401
    r = client.post("/v1/admin/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "reloaded"
    # Ingested videos are replayed from the durable store into the new state.
    s = client.post("/v1/score", json={"user_id": "u", "video_ids": ["kept"]}).json()
    assert "error" not in s["scores"][0]


def test_ingest_survives_restart_in_process(settings, artifact) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    with TestClient(create_app(settings)) as c:
        assert (
            c.post(
                "/v1/videos", json={"video_id": "persist", "frames": _frames(d)}, headers=AUTH
            ).status_code
            == 201
        )
    with TestClient(create_app(settings)) as c:
        s = c.post("/v1/score", json={"user_id": "u", "video_ids": ["persist"]}).json()
        assert "error" not in s["scores"][0]
        assert (
            c.post(
                "/v1/videos", json={"video_id": "persist", "frames": _frames(d)}, headers=AUTH
            ).status_code
            == 200
        )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/score", "/v1/videos", "/v1/events/watch", "/v1/admin/reload"]),
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {
                "user_id": json_values,
                "video_ids": st.lists(st.text(max_size=8), max_size=5) | json_values,
            }
        ),
        st.fixed_dictionaries(
            {
                "video_id": st.text(max_size=8),
                "frames": st.lists(st.lists(st.floats(), max_size=4), max_size=3) | json_values,
            }
        ),
        st.fixed_dictionaries(
            {
                "user_id": st.text(max_size=8),
                "video_id": st.text(max_size=8),
                "watch_seconds": json_values,
                "at": st.text(max_size=30) | st.just("2026-01-01T00:00:00Z"),
            }
        ),
    ),
)
def test_fuzzed_requests_never_5xx(client: TestClient, path: str, body) -> None:
    # json.dumps writes Infinity/NaN literals too: the server must reject them, not crash.
    r = client.post(
        path, content=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code < 500, (path, body, r.text)
    assert isinstance(r.json(), dict)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(user=st.text(max_size=300), video=st.text(max_size=300), k=st.text(max_size=6))
def test_fuzzed_get_paths_never_5xx(client: TestClient, user: str, video: str, k: str) -> None:
    from urllib.parse import quote

    for url in (
        f"/v1/users/{quote(user, safe='')}/recommendations",
        f"/v1/videos/{quote(video, safe='')}/similar",
    ):
        r = client.get(url, params={"k": k})
        assert r.status_code < 500, (url, k, r.text)


def test_frames_at_the_float32_limit_are_refused_and_nothing_is_stored(settings, client) -> None:
    """Finite frames that would overflow inside the model: refused by the schema (JSON) or
    the decoder (base64), and, should any reach the model, refused before the write. No
    stored row, and the service (and a restart, and a reload) carry on."""
    from serving.stores import SqliteStore

    d = client.get("/readyz").json()
    assert d["status"] == "ready"
    state = client.app.state.holder.current  # type: ignore[attr-defined]
    dim = state.feature_dim
    huge = np.full((4, dim), 3.0e38, np.float32)
    body = {"video_id": "huge", "frames": huge.tolist()}
    r = client.post("/v1/videos", json=body, headers=AUTH)
    assert r.status_code == 422 and "less than 1048576" in r.json()["detail"]
    b64 = {
        "video_id": "huge",
        "frames_b64": base64.b64encode(huge.astype("<f4").tobytes()).decode(),
    }
    r = client.post("/v1/videos", json=b64, headers=AUTH)
    assert r.status_code == 400 and "|x| < 2^20" in r.json()["detail"]
    # The last line of defence: the embedding is checked before anything is written.
    with pytest.raises(UserInputError, match="not finite"):
        state.ingest("huge", huge)
    assert client.post("/v1/admin/reload", headers=AUTH).status_code == 200
    store = SqliteStore(settings.state_db)
    assert store.counts()[0] == 0
    store.close()
    # Just inside the bound is fine.
    edge = np.full((2, dim), np.nextafter(np.float32(2.0**20), np.float32(0)), np.float32)
    edge[1] *= -1
    ok = {"video_id": "edge", "frames_b64": base64.b64encode(edge.astype("<f4").tobytes()).decode()}
    assert client.post("/v1/videos", json=ok, headers=AUTH).status_code == 201


def test_a_bad_stored_row_is_skipped_at_start_up_not_fatal(settings) -> None:
    import numpy as np

    from serving.stores import SqliteStore

    store = SqliteStore(settings.state_db)
    assert store.insert_video("nan_row", "0" * 64, np.full(64, np.nan, np.float32), 3)
    assert store.insert_video("short_row", "1" * 64, np.ones(3, np.float32), 3)
    store.close()
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").json()["status"] == "ready"
        metrics = c.get("/metrics").text
        assert "state_rows_skipped 2" in metrics
        assert c.post("/v1/admin/reload", headers=AUTH).status_code == 200


def test_docs_page_works_offline(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "/static/swagger-ui/swagger-ui-bundle.js" in html
    assert "cdn." not in html and "https://" not in html.split("<body>")[0]
    js = client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/static/swagger-ui/swagger-ui.css").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_openapi_documents_bodies_and_every_error_status(client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    rec = paths["/v1/users/{user_id}/recommendations"]["get"]["responses"]
    assert rec["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "RecommendationsResponse"
    )
    sim = paths["/v1/videos/{video_id}/similar"]["get"]["responses"]
    assert sim["200"]["content"]["application/json"]["schema"]["$ref"].endswith("SimilarResponse")
    assert {"400", "401", "409", "413", "422"} <= set(paths["/v1/videos"]["post"]["responses"])
    for path, ops in paths.items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")):
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (path, method, status)
    k_max = next(
        p["schema"]["maximum"]
        for p in paths["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
        if p["name"] == "k"
    )
    assert k_max == client.app.state.settings.max_k  # type: ignore[attr-defined]


def test_every_error_has_the_documented_shape(client) -> None:
    r = client.get("/v1/users/u000001/recommendations?k=100000")
    assert r.status_code == 422 and r.json()["field"] == "k"
    r = client.get("/v1/videos/nope/similar")
    assert r.status_code == 404 and set(r.json()) == {"detail", "field"}
    r = client.post("/v1/videos", json={"video_id": "x", "frames": [[1.0]]})
    assert r.status_code == 401 and set(r.json()) == {"detail", "field"}
    r = client.post("/v1/videos", json={"video_id": "x", "frames": [[1.0]]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "frames.0"
    r = client.post("/v1/videos", json={"video_id": "x", "frames_b64": "AAAA"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["field"] == "frames_b64"
    r = client.post("/v1/score", json={"user_id": "u", "video_ids": []})
    assert r.status_code == 422 and r.json()["field"] == "video_ids"


def test_impression_events_teach_a_new_user_online(client: TestClient, settings, artifact) -> None:
    ids, _ = _catalogue(artifact)
    user = "brand-new-user"
    cands = ids[:20]
    before = client.post("/v1/score", json={"user_id": user, "video_ids": cands}).json()
    assert before["known_user"] is False
    # The newcomer watches the first ten candidates and skips the next ten.
    batch = [
        {
            "user_id": user,
            "video_id": v,
            "shown_at": f"2030-01-01T00:{i:02d}:00Z",
            "watch_seconds": 60.0 if i < 10 else 0.0,
            "event_id": f"e{i}",
        }
        for i, v in enumerate(cands)
    ]
    r = client.post("/v1/events/impressions", json={"impressions": batch}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json() == {"accepted": 20, "duplicates": 0, "valid_watches": 10, "users_updated": 1}
    after = client.post("/v1/score", json={"user_id": user, "video_ids": cands}).json()
    assert after["known_user"] is True and after["history_size"] == 10
    p0 = np.array([s["watch_probability"] for s in before["scores"]])
    p1 = np.array([s["watch_probability"] for s in after["scores"]])
    # learnt: watched videos moved up relative to skipped ones
    assert (p1[:10] - p0[:10]).mean() > (p1[10:] - p0[10:]).mean()
    # a retry is acknowledged and not applied twice
    again = client.post("/v1/events/impressions", json={"impressions": batch}, headers=AUTH)
    assert again.status_code == 201 and again.json()["duplicates"] == 20
    same = client.post("/v1/score", json={"user_id": user, "video_ids": cands}).json()
    assert [s["watch_probability"] for s in same["scores"]] == list(p1)
    # a restart replays the stored impressions to the same effect
    with TestClient(create_app(settings)) as c2:
        replayed = c2.post("/v1/score", json={"user_id": user, "video_ids": cands}).json()
    np.testing.assert_allclose(
        [s["watch_probability"] for s in replayed["scores"]], p1, rtol=0, atol=1e-9
    )


def test_online_refit_uses_the_history_as_it_was_at_each_impression(
    client: TestClient, artifact
) -> None:
    """Each impression's offset has the history features of the moment it was shown (its
    own watch not yet in the history): the served probability equals a direct MAP refit."""
    from recsys.online import OnlineEffects, refit_effect

    ids, emb = _catalogue(artifact)
    e = emb.astype(np.float64)
    glm = load_glmix(artifact)
    user, vids = "history-feature-user", [ids[3], ids[4], ids[7], ids[8]]
    watched = [True, False, True, False]
    batch = [
        {
            "user_id": user,
            "video_id": v,
            "shown_at": f"2030-02-01T00:0{i}:00Z",
            "watch_seconds": 30.0 if w else 0.0,
        }
        for i, (v, w) in enumerate(zip(vids, watched, strict=True))
    ]
    r = client.post("/v1/events/impressions", json={"impressions": batch}, headers=AUTH)
    assert r.status_code == 201, r.text
    row = {v: i for i, v in enumerate(ids)}
    x = e[[row[v] for v in vids]]
    hist: list[int] = []
    g = np.zeros((4, 3))
    for i, v in enumerate(vids):
        if hist:
            sims = e[hist] @ x[i]
            g[i] = (sims.max(), sims.mean(), 1.0)
        if watched[i]:
            hist.append(row[v])
    online = OnlineEffects(glm)
    z = np.hstack([np.ones((4, 1)), x])
    b = refit_effect(
        z,
        np.array(watched, float),
        glm.fixed_logit(x, g),
        online.prior(user),
        online.precision(user),
        online.prior(user),
        50,
    )
    cand = ids[11]
    got = client.post("/v1/score", json={"user_id": user, "video_ids": [cand]}).json()
    sims = e[hist] @ e[row[cand]]
    g_now = np.array([[sims.max(), sims.mean(), 1.0]])
    eta = glm.fixed_logit(e[row[cand]][None], g_now)[0] + b[0] + e[row[cand]] @ b[1:]
    assert got["scores"][0]["watch_probability"] == pytest.approx(1 / (1 + np.exp(-eta)), abs=1e-5)


def test_impression_events_bad_input(client: TestClient, artifact) -> None:
    ids, _ = _catalogue(artifact)
    good = {
        "user_id": "u",
        "video_id": ids[0],
        "shown_at": "2030-01-01T00:00:00Z",
        "watch_seconds": 1.0,
    }
    cases = [
        ({"impressions": []}, 422, "impressions"),
        ({"impressions": [{**good, "video_id": "nope"}]}, 404, "unknown video"),
        ({"impressions": [{**good, "watch_seconds": -1}]}, 422, "watch_seconds"),
        ({"impressions": [{**good, "shown_at": "2030-01-01T00:00:00"}]}, 422, "shown_at"),
        ({"impressions": [good] * 1001}, 422, "impressions"),
    ]
    for body, status, needle in cases:
        r = client.post("/v1/events/impressions", json=body, headers=AUTH)
        assert r.status_code == status and needle in r.json()["detail"], (body, r.text)
    assert client.post("/v1/events/impressions", json={"impressions": [good]}).status_code == 401


def test_every_body_route_documents_the_400_it_gives_for_unparseable_bodies(
    client: TestClient,
) -> None:
    schema = client.get("/openapi.json").json()
    posts = [
        p for p, ops in schema["paths"].items() if "post" in ops and "requestBody" in ops["post"]
    ]
    assert len(posts) >= 5
    for path in posts:
        assert "400" in schema["paths"][path]["post"]["responses"], path
        r = client.post(path, content=b"\xff", headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400 and set(r.json()) == {"detail", "field"}, (path, r.text)


def test_an_eq18_only_model_is_served_without_history_features(
    settings, artifact, small_world_dir
) -> None:
    """Artifacts fitted with --no-history-features (or before them) score by Eq. 18 alone;
    a model naming global features this version cannot build is refused at load."""
    from pipelines.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact
    from recsys.artifact import extend_artifact, write_json_bytes

    fit_glmix_into_artifact(small_world_dir, artifact, GLMixJobConfig(history_features=False))
    glm = load_glmix(artifact)
    assert glm.global_names == []
    ids, emb = _catalogue(artifact)
    user = _a_user_with_history(artifact)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/score", json={"user_id": user, "video_ids": [ids[2]]}).json()
    want = glm.predict_proba([user], emb[2][None].astype(np.float64))[0]
    assert r["scores"][0]["watch_probability"] == pytest.approx(want, abs=1e-9)
    meta = json.loads((artifact / "glmix.json").read_text())
    meta["global_features"] = ["popularity"]
    meta["global_dim"] = 1
    meta["fixed"] = [*meta["fixed"], 0.5]
    extend_artifact(artifact, {"glmix.json": write_json_bytes(meta)}, {})
    with pytest.raises(UserInputError, match="not known"), TestClient(create_app(settings)):
        pass
