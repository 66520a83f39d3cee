"""Cold-start ingestion: scoreable at once, idempotent, durable, bad frames refused."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.errors import UserInputError
from serving.app import create_app
from tests.serving.conftest import AUTH
from tests.serving.helpers import a_user_with_history, catalogue, frames


def test_ingest_is_scoreable_idempotent_and_conflicts(client: TestClient, artifact) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    body = {"video_id": "fresh-1", "frames": frames(d)}
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
    other = {"video_id": "fresh-1", "frames": frames(d, seed=1)}
    assert client.post("/v1/videos", json=other, headers=AUTH).status_code == 409
    ids, _ = catalogue(artifact)
    assert (
        client.post(
            "/v1/videos", json={"video_id": ids[0], "frames": frames(d)}, headers=AUTH
        ).status_code
        == 409
    )
    s = client.post(
        "/v1/score", json={"user_id": a_user_with_history(artifact), "video_ids": ["fresh-1"]}
    ).json()
    assert (
        s["scores"][0]["watch_probability"] is not None
        and s["scores"][0]["max_similarity"] is not None
    )
    # The compact form: base64 float32 and uint8.
    raw = np.asarray(frames(d, seed=2), dtype="<f4")
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


def test_ingest_survives_restart_in_process(settings, artifact) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    with TestClient(create_app(settings)) as c:
        assert (
            c.post(
                "/v1/videos", json={"video_id": "persist", "frames": frames(d)}, headers=AUTH
            ).status_code
            == 201
        )
    with TestClient(create_app(settings)) as c:
        s = c.post("/v1/score", json={"user_id": "u", "video_ids": ["persist"]}).json()
        assert "error" not in s["scores"][0]
        assert (
            c.post(
                "/v1/videos", json={"video_id": "persist", "frames": frames(d)}, headers=AUTH
            ).status_code
            == 200
        )


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


def test_a_lost_ingest_race_leaves_the_same_counters(settings, artifact) -> None:
    """Two replicas ingest one video at once: both answer it, and both count it once."""
    import re

    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    slow = settings.model_copy(update={"sync_interval_s": 3600.0})  # no background sync
    body = {"video_id": "raced", "frames": frames(d)}

    def gauges(c: TestClient) -> dict[str, float]:
        text = c.get("/metrics").text
        return {k: float(v) for k, v in re.findall(r"^recsys_(\w+) ([\d.]+)$", text, re.M)}

    with TestClient(create_app(slow)) as a, TestClient(create_app(slow)) as b:
        assert a.post("/v1/videos", json=body, headers=AUTH).status_code == 201
        assert b.post("/v1/videos", json=body, headers=AUTH).status_code == 200  # lost the race
        for c in (a, b):
            c.app.state.holder.current.sync()  # type: ignore[attr-defined]
        ga, gb = gauges(a), gauges(b)
        assert ga["ingested_videos"] == gb["ingested_videos"] == 1
        assert ga["state_rows_skipped"] == gb["state_rows_skipped"] == 0
