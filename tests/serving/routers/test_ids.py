"""One id alphabet for everything the service creates: what is refused is refused with
422 naming the field, and every id it accepts reads back through every route."""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import AUTH
from tests.serving.helpers import catalogue, frames

ALPHABET = "abcXYZ019_-.:@+="
ids = st.text(ALPHABET, min_size=1, max_size=20).filter(lambda s: not s.startswith("."))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=ids)
def test_every_accepted_id_reads_back(client: TestClient, artifact, name: str) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    video = f"v{name}"
    r = client.post("/v1/videos", json={"video_id": video, "frames": frames(d)}, headers=AUTH)
    assert r.status_code in (200, 201), r.text
    user = f"u{name}"
    event = {"user_id": user, "video_id": video, "watch_seconds": 30.0,
             "at": "2030-01-01T00:00:00Z"}  # fmt: skip
    assert client.post("/v1/events/watch", json=event, headers=AUTH).status_code == 201
    sim = client.get(f"/v1/videos/{quote(video, safe='')}/similar", params={"k": 3})
    assert sim.status_code == 200 and sim.json()["video_id"] == video
    hist = client.get(f"/v1/users/{quote(user, safe='')}/history", headers=AUTH)
    assert hist.status_code == 200 and [h["video_id"] for h in hist.json()["history"]] == [video]
    recs = client.get(f"/v1/users/{quote(user, safe='')}/recommendations", params={"k": 3})
    assert recs.status_code == 200 and recs.json()["user_id"] == user


def test_ids_outside_the_alphabet_are_422_naming_the_field(client: TestClient, artifact) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    known = catalogue(artifact)[0][0]
    for bad in ("a/b", "..", ".hidden", "nul\x00id", "x" * 129, "sp ace"):
        r = client.post("/v1/videos", json={"video_id": bad, "frames": frames(d)}, headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] == "video_id", (bad, r.text)
        w = {"user_id": bad, "video_id": known, "watch_seconds": 1.0, "at": "2030-01-01T00:00:00Z"}
        r = client.post("/v1/events/watch", json=w, headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] == "user_id", (bad, r.text)
        imp = {"user_id": "u1", "video_id": known, "shown_at": "2030-01-01T00:00:00Z",
               "watch_seconds": 1.0, "event_id": bad}  # fmt: skip
        r = client.post("/v1/events/impressions", json={"impressions": [imp]}, headers=AUTH)
        assert r.status_code == 422 and r.json()["field"].endswith("event_id"), (bad, r.text)
    # A NUL in an id that is only looked up is refused too, never reaches a store.
    r = client.post("/v1/score", json={"user_id": "a\x00", "video_ids": [known]})
    assert r.status_code == 422 and r.json()["field"] == "user_id"
