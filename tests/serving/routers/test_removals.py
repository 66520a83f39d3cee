"""Takedowns and erasure: gone from every answer, durable across a restart, idempotent."""

from __future__ import annotations

import json
import sqlite3

from fastapi.testclient import TestClient

from serving.app import create_app
from tests.serving.conftest import AUTH
from tests.serving.helpers import a_user_with_history, catalogue, frames, history


def _everything_shown(c: TestClient, users: list[str], videos: list[str]) -> set[str]:
    """Every video id any recommendation, similar list or history shows."""
    seen: set[str] = set()
    for u in users:
        seen |= {
            r["video_id"]
            for r in c.get(f"/v1/users/{u}/recommendations?k=50").json()["recommendations"]
        }
        seen |= {
            h["video_id"] for h in c.get(f"/v1/users/{u}/history", headers=AUTH).json()["history"]
        }
    for v in videos:
        r = c.get(f"/v1/videos/{v}/similar?k=50")
        if r.status_code == 200:
            seen |= {s["video_id"] for s in r.json()["similar"]}
    return seen  # fmt: skip


def test_a_taken_down_video_is_never_shown_again(settings, artifact) -> None:
    ids, _ = catalogue(artifact)
    user = a_user_with_history(artifact)
    users = [user, "nobody"]
    gone = history(artifact, user)[0]  # watched by the user: in their history, near others
    with TestClient(create_app(settings)) as c:
        assert gone in _everything_shown(c, users, ids[:40])
        assert c.delete(f"/v1/videos/{gone}").status_code == 401
        r = c.delete(f"/v1/videos/{gone}", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"video_id": gone, "taken_down_now": True}
        again = c.delete(f"/v1/videos/{gone}", headers=AUTH)
        assert again.status_code == 200 and again.json()["taken_down_now"] is False
        assert c.delete("/v1/videos/never-existed", headers=AUTH).status_code == 404
        assert gone not in _everything_shown(c, users, ids[:40])
        sim = c.get(f"/v1/videos/{gone}/similar")
        assert sim.status_code == 404 and "taken down" in sim.json()["detail"]
        score = c.post("/v1/score", json={"user_id": user, "video_ids": [gone, ids[1]]}).json()
        assert score["scores"][0] == {"video_id": gone, "error": "unknown video"}
        assert gone not in {p["video_id"] for p in c.get("/v1/map").json()["points"]}
        d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
        reuse = c.post("/v1/videos", json={"video_id": gone, "frames": frames(d)}, headers=AUTH)
        assert reuse.status_code == 409 and "taken down" in reuse.json()["detail"]
        # An event trailing the takedown is refused whole, and the 404 says why.
        late = {"user_id": user, "video_id": gone, "watch_seconds": 30.0}
        at = "2030-01-01T00:00:00Z"
        for path, body in (
            ("/v1/events/impressions", {"impressions": [{**late, "shown_at": at}]}),
            ("/v1/events/watch", {**late, "at": at}),
        ):
            r = c.post(path, json=body, headers=AUTH)
            assert r.status_code == 404, r.text
            assert r.json()["detail"] == f"video {gone!r} was taken down"
    with TestClient(create_app(settings)) as c:  # a restart replays the takedown
        assert gone not in _everything_shown(c, users, ids[:40])


def test_an_erased_user_is_forgotten_and_leaves_no_row(settings, artifact) -> None:
    ids, _ = catalogue(artifact)
    user = a_user_with_history(artifact)
    imps = [
        {"user_id": user, "video_id": ids[i], "shown_at": "2030-01-01T00:00:00Z",
         "watch_seconds": 60.0, "event_id": f"erase-{i}"}
        for i in range(5)
    ]  # fmt: skip
    with TestClient(create_app(settings)) as c:
        fresh = c.post("/v1/score", json={"user_id": "brand-new", "video_ids": ids[:5]}).json()
        assert (
            c.post("/v1/events/impressions", json={"impressions": imps}, headers=AUTH).status_code
            == 201
        )
        before = c.post("/v1/score", json={"user_id": user, "video_ids": ids[:5]}).json()
        assert before["known_user"] and before["history_size"] > 0
        assert c.delete(f"/v1/users/{user}").status_code == 401
        for _ in range(2):  # idempotent
            r = c.delete(f"/v1/users/{user}", headers=AUTH)
            assert r.status_code == 200 and r.json() == {"user_id": user, "erased": True}
        after = c.post("/v1/score", json={"user_id": user, "video_ids": ids[:5]}).json()
        assert not after["known_user"] and after["history_size"] == 0
        # Scored as a user nobody knows: the offline effect is gone too.
        assert [s["watch_probability"] for s in after["scores"]] == [
            s["watch_probability"] for s in fresh["scores"]
        ]
        assert c.get(f"/v1/users/{user}/history", headers=AUTH).json()["history"] == []
        assert user not in c.get(f"/v1/users?prefix={user}", headers=AUTH).json()["users"]
    db = sqlite3.connect(settings.state_db)
    for table in ("watches", "impressions"):
        assert (
            db.execute(f"SELECT count(*) FROM {table} WHERE user_id = ?", (user,)).fetchone()[0]
            == 0
        )
    db.close()
    with TestClient(create_app(settings)) as c:  # a restart keeps them forgotten
        again = c.post("/v1/score", json={"user_id": user, "video_ids": ids[:5]}).json()
        assert not again["known_user"] and again["history_size"] == 0
        # Coming back later: a new user, learning from scratch.
        imp = {**imps[0], "event_id": "after-erasure"}
        assert (
            c.post("/v1/events/impressions", json={"impressions": [imp]}, headers=AUTH).status_code
            == 201
        )
        assert (
            c.post("/v1/score", json={"user_id": user, "video_ids": ids[:1]}).json()["history_size"]
            == 1
        )


def test_a_takedown_of_an_upload_then_a_new_upload_reach_another_replica(
    settings, artifact
) -> None:
    """The store's keys are never reused: the upload after a takedown still replicates."""
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    slow = settings.model_copy(update={"sync_interval_s": 3600.0})
    with TestClient(create_app(slow)) as a, TestClient(create_app(slow)) as b:
        for vid, seed in (("up-1", 0),):
            body = {"video_id": vid, "frames": frames(d, seed=seed)}
            assert a.post("/v1/videos", json=body, headers=AUTH).status_code == 201
        b.app.state.holder.current.sync()  # type: ignore[attr-defined]  # B has seen up-1
        assert a.delete("/v1/videos/up-1", headers=AUTH).status_code == 200
        body = {"video_id": "up-2", "frames": frames(d, seed=1)}
        assert a.post("/v1/videos", json=body, headers=AUTH).status_code == 201
        b.app.state.holder.current.sync()  # type: ignore[attr-defined]
        assert b.get("/v1/videos/up-2/similar?k=2").status_code == 200
        assert b.get("/v1/videos/up-1/similar?k=2").status_code == 404
