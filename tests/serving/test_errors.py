"""Every error has one documented shape; fuzzed requests never get a 5xx."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import AUTH

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


def test_a_nul_in_a_report_file_name_is_404_not_500(client) -> None:
    r = client.get("/explorer/report/files/roc.png%00.png")
    assert r.status_code == 404 and r.json()["detail"] == "no such report file"


def test_the_score_body_is_parsed_as_fastapi_would_answer(client: TestClient) -> None:
    """/v1/score reads its own body (one pydantic pass): the answers keep the shape and
    statuses of the other routes' bodies."""

    def post(body: bytes, ctype: str | None = "application/json") -> tuple[int, dict]:
        headers = {} if ctype is None else {"Content-Type": ctype}
        r = client.post("/v1/score", content=body, headers=headers)
        return r.status_code, r.json()

    assert post(b"\xff\xfe") == (400, {"detail": "the body is not UTF-8 text", "field": None})
    status, body = post(b'{"user_id": "u"')
    assert status == 422 and body["field"] == "body" and "not valid JSON" in body["detail"]
    assert post(b"")[0] == 422
    for ctype in ("text/plain", None):
        status, body = post(b'{"user_id": "u", "video_ids": ["a"]}', ctype)
        assert status == 422 and "Content-Type" in body["detail"]
    status, body = post(b'{"user_id": "u", "video_ids": ["a"], "x": 1}')
    assert (status, body["field"]) == (422, "x")
    status, body = post(b'{"user_id": "u", "video_ids": [1]}')
    assert (status, body["field"]) == (422, "video_ids.0")
    status, _ = post(
        b'{"user_id": "u", "video_ids": ["a"]}', "application/vnd.x+json; charset=utf-8"
    )
    assert status == 200


def test_the_score_body_is_documented(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/v1/score"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    settings = client.app.state.settings  # type: ignore[attr-defined]
    assert op["requestBody"]["required"] is True
    assert schema["required"] == ["user_id", "video_ids"]
    assert schema["properties"]["video_ids"]["maxItems"] == settings.max_candidates
