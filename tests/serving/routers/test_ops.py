"""Operations: health, readiness, docs, reloading the artifact."""

from __future__ import annotations

import gc
import json
import time
import weakref

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
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


def test_the_loaded_state_is_frozen_for_the_collector_and_a_reload_leaks_none(
    settings: Settings,
) -> None:
    """The loaded state is kept out of the collector's full passes (``gc.freeze``); a
    reload collects the old state all the same, and shutdown hands everything back."""
    gc.unfreeze()
    app = create_app(settings)
    with TestClient(app) as c:
        assert gc.get_freeze_count() > 0
        state = app.state.holder.current
        state.wait_refitted(None)  # no refit pass of its own still holds it
        old = weakref.ref(state)
        del state
        assert c.post("/v1/admin/reload", headers=AUTH).status_code == 200
        for _ in range(50):  # the follower may hold it for one more pass
            gc.collect()  # frees nothing frozen: a frozen old state would stay
            if old() is None:
                break
            time.sleep(0.1)
        assert old() is None
        assert gc.get_freeze_count() > 0 and app.state.holder.current is not None
    assert gc.get_freeze_count() == 0
