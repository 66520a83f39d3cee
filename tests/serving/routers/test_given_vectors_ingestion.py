"""An artifact of the data's own vectors: ``POST /v1/videos`` takes ``{video_id,
embedding}``, an upload lands exactly where the same vector sits in the catalogue and is
scored at once; frames are refused there, and a vector is refused where frames are due."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipelines.data.io import iter_video_batches
from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import AUTH


@pytest.fixture
def vector_client(given_pipeline_out: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        artifacts=given_pipeline_out / "artifact", state_db=tmp_path / "s.db", api_key="s3cret"
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _vector(data: Path, row: int) -> tuple[str, list[float]]:
    vb = next(iter(iter_video_batches(data, batch_size=row + 1)))
    return vb.video_ids[row], vb.frames[row].tolist()


def test_an_uploaded_vector_lands_where_the_same_vector_sits(
    vector_client: TestClient, given_world_dir: Path
) -> None:
    c = vector_client
    vid, vec = _vector(given_world_dir, 13)
    r = c.post("/v1/videos", json={"video_id": "copy-13", "embedding": vec}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json() == {"video_id": "copy-13", "created": True, "num_frames": 1}
    near = c.get("/v1/videos/copy-13/similar", params={"k": 1}).json()["similar"][0]
    assert near["video_id"] == vid
    assert near["similarity"] == pytest.approx(1.0, abs=1e-6)
    again = c.post("/v1/videos", json={"video_id": "copy-13", "embedding": vec}, headers=AUTH)
    assert again.status_code == 200 and again.json()["created"] is False
    other = [v + 1.0 for v in vec]
    clash = c.post("/v1/videos", json={"video_id": "copy-13", "embedding": other}, headers=AUTH)
    assert clash.status_code == 409
    # scored at once
    scored = c.post(
        "/v1/score", json={"user_id": "nobody", "video_ids": ["copy-13", vid]}, headers=AUTH
    ).json()["scores"]
    p_new, p_old = (s["watch_probability"] for s in scored)
    assert p_new is not None and 0.0 < p_new < 1.0 and p_old is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"video_id": "x", "frames": [[0.5] * 8]}, "frames"),
        ({"video_id": "x", "embedding": [0.0] * 8}, "embedding"),
        ({"video_id": "x", "embedding": [0.5] * 7}, "embedding"),
        ({"video_id": "x", "embedding": [0.5] * 7 + [1e30]}, "embedding"),
    ],
)
def test_a_vector_artifact_refuses_frames_and_bad_vectors(
    vector_client: TestClient, body: dict[str, object], field: str
) -> None:
    r = vector_client.post("/v1/videos", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    assert vector_client.get("/v1/videos/x/similar").status_code == 404


def test_a_frames_artifact_refuses_a_vector(client: TestClient) -> None:
    r = client.post("/v1/videos", json={"video_id": "x", "embedding": [0.5] * 8}, headers=AUTH)
    assert r.status_code == 422
    assert "embedding" in r.json()["detail"]


def test_the_schema_states_the_vector(vector_client: TestClient) -> None:
    schemas = vector_client.get("/openapi.json").json()["components"]["schemas"]
    body = schemas["VectorIngest"]["properties"]["embedding"]
    assert body["minItems"] == body["maxItems"] == 8
    assert body["not"] == {"items": {"const": 0}}
    assert "frames" not in schemas["VectorIngest"]["properties"]
    assert np.isfinite(body["items"]["exclusiveMaximum"])


def test_the_explorer_serves_the_vectors_map(vector_client: TestClient) -> None:
    c = vector_client
    assert c.get("/explorer").status_code == 200
    assert c.get("/v1/explorer/info").json()["videos"] == 200
    pts = c.get("/v1/map").json()
    assert len(pts["points"]) == 200
    user = c.get("/v1/users", headers=AUTH).json()["users"][0]
    history = c.get(f"/v1/users/{user}/history", headers=AUTH).json()["history"]
    assert (
        history
        and c.post(
            "/v1/map/positions", json={"video_ids": [h["video_id"] for h in history]}
        ).status_code
        == 200
    )
