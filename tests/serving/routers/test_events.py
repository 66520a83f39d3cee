"""Events: watches extend histories; impressions refit users online."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.artifact import load_glmix
from serving.app import create_app
from tests.serving.conftest import AUTH
from tests.serving.helpers import catalogue


def test_watch_events_updatehistory(client: TestClient, artifact) -> None:
    ids, _ = catalogue(artifact)
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


def test_impression_events_teach_a_new_user_online(client: TestClient, settings, artifact) -> None:
    ids, _ = catalogue(artifact)
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
    from recsys.online.users import OnlineEffects, refit_effect

    ids, emb = catalogue(artifact)
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
        # offsets: the fixed effect and each video's offline effect (0 without them)
        glm.fixed_logit(x, g) + glm.video_logit(glm.video_rows(vids), g),
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
    eta += glm.video_logit(glm.video_rows([cand]), g_now)[0]  # no event of it: offline
    assert got["scores"][0]["watch_probability"] == pytest.approx(1 / (1 + np.exp(-eta)), abs=1e-5)


def test_impression_events_bad_input(client: TestClient, artifact) -> None:
    ids, _ = catalogue(artifact)
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


def test_a_score_reads_its_writes_without_waiting_for_refits(settings, artifact) -> None:
    """With RECSYS_REFIT_WAIT_MS=0 (the default) a batch's 201 comes before its refits; a
    score of a user whose refit is still queued, or taken by a pass under way, refits
    them first: the score right after the 201 is the one a waiting batch would give,
    bit for bit."""
    import threading

    ids, _ = catalogue(artifact)
    batch = [
        {"user_id": u, "video_id": v, "shown_at": "2030-01-01T00:00:00Z", "watch_seconds": w}
        for u in ("ryw-1", "ryw-2")
        for v, w in zip(ids[:6], (60.0, 0.0, 60.0, 0.0, 0.0, 60.0), strict=True)
    ]
    ask = {"video_ids": ids[6:30]}
    waiting = settings.model_copy(update={"refit_wait_ms": -1.0})
    with TestClient(create_app(waiting)) as c:  # waits until refitted: the reference
        assert (
            c.post("/v1/events/impressions", json={"impressions": batch}, headers=AUTH).status_code
            == 201
        )
        want = [c.post("/v1/score", json={**ask, "user_id": u}).json() for u in ("ryw-1", "ryw-2")]
    settings.state_db.unlink()
    assert settings.refit_wait_ms == 0.0  # the default
    with TestClient(create_app(settings)) as c:
        state = c.app.state.holder.current
        release, solve = threading.Event(), state.online.solve

        def held(jobs, *a, **k):  # the background pass waits until released
            if threading.current_thread().name == "online-refit":
                release.wait(30)
            return solve(jobs, *a, **k)

        state.online.solve = held
        first = {"impressions": batch[:6]}
        assert c.post("/v1/events/impressions", json=first, headers=AUTH).status_code == 201
        second = {"impressions": batch[6:]}
        assert c.post("/v1/events/impressions", json=second, headers=AUTH).status_code == 201
        assert "ryw-1" in state._inflight and "ryw-2" in state.online.pending
        assert state.refit_backlog == 2  # the held pass's user counts, not only pending
        assert "ryw-1" not in state.online.effects  # the pass is held: nothing installed
        assert state.known_user("ryw-1") and "ryw-2" in state.users_seen_online()
        refit, state.refit_if_queued = state.refit_if_queued, lambda user: False
        stale = c.post("/v1/score", json={**ask, "user_id": "ryw-2"}).json()
        state.refit_if_queued = refit
        got = [c.post("/v1/score", json={**ask, "user_id": u}).json() for u in ("ryw-1", "ryw-2")]
        release.set()
        assert state.wait_refitted(30)
        assert state.refit_backlog == 0
        again = [c.post("/v1/score", json={**ask, "user_id": u}).json() for u in ("ryw-1", "ryw-2")]
    assert got == want and again == want
    assert stale != want[1]  # without the refit on read the score would be stale
