"""The body limit (413) and the metrics middleware."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.serving.conftest import AUTH


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
