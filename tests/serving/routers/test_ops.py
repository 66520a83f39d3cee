"""Operations: health, readiness, docs, reloading the artifact."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from tests.serving.conftest import AUTH
from tests.serving.helpers import frames


def test_health_ready_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["videos"] > 0
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/score", "/v1/videos", "/v1/events/watch"} <= set(paths)


def test_reload_swaps_artifact(client: TestClient, artifact) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    client.post("/v1/videos", json={"video_id": "kept", "frames": frames(d)}, headers=AUTH)
    assert client.post("/v1/admin/reload").status_code == 401
    r = client.post("/v1/admin/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "reloaded"
    # Ingested videos are replayed from the durable store into the new state.
    s = client.post("/v1/score", json={"user_id": "u", "video_ids": ["kept"]}).json()
    assert "error" not in s["scores"][0]
