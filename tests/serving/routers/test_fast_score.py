"""``POST /v1/score`` answered from the middleware (``scoring.FastScore``): the same
answers as the route itself, and every answer but a 200 left to the route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.routers.scoring import FastScore
from serving.settings import Settings
from tests.serving.helpers import a_user_with_history, catalogue


@pytest.fixture
def counted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, list]]:
    """A client, and the fast route's answers: True answered, False declined."""
    calls: list[bool] = []
    answer = FastScore.__call__

    def spy(self, headers, body):  # type: ignore[no-untyped-def]
        out = answer(self, headers, body)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(FastScore, "__call__", spy)
    with TestClient(create_app(settings)) as c:
        yield c, calls


def _without_fast_route(c: TestClient) -> None:
    c.app.state.fast_routes.clear()  # type: ignore[attr-defined]


def test_the_same_answer_bytes_and_headers_as_the_route(counted, artifact) -> None:
    c, calls = counted
    ids, _ = catalogue(artifact)
    user = a_user_with_history(artifact)
    bodies = [
        {"user_id": user, "video_ids": [ids[0], ids[3], "nope", ids[0]]},
        {"user_id": "stranger", "video_ids": [ids[2]]},
    ]
    fast = [c.post("/v1/score", json=b) for b in bodies]
    assert calls == [True, True]
    _without_fast_route(c)
    slow = [c.post("/v1/score", json=b) for b in bodies]
    assert calls == [True, True]  # not asked again
    for f, s in zip(fast, slow, strict=True):
        assert f.status_code == s.status_code == 200
        assert f.content == s.content
        drop = {"date", "server"}
        assert {k: v for k, v in f.headers.items() if k not in drop} == {
            k: v for k, v in s.headers.items() if k not in drop
        }
    assert fast[0].headers["x-frame-options"] == "DENY"  # the middleware's headers too
    assert fast[0].json()["scores"][2] == {"video_id": "nope", "error": "unknown video"}


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"user_id": "u", "video_ids": []}', {"content-type": "application/json"}, 422),
        (
            b'{"user_id": "u", "video_ids": ["a"], "x": 1}',
            {"content-type": "application/json"},
            422,
        ),
        (b'{"user_id": 1, "video_ids": ["a"]}', {"content-type": "application/json"}, 422),
        (b'{"user_id": "u", "video_ids": ["a"]', {"content-type": "application/json"}, 422),
        (b'{"user_id": "u", "video_ids": ["a"]}', {"content-type": "text/plain"}, 422),
        (
            b'{"user_id": "\\xff\\xfe", "video_ids": ["a"]}'.replace(b"\\xff\\xfe", b"\xff\xfe"),
            {"content-type": "application/json"},
            400,
        ),
    ],
)
def test_a_refused_body_gets_the_routes_own_answer(counted, content, headers, status) -> None:
    c, calls = counted
    fast = c.post("/v1/score", content=content, headers=headers)
    _without_fast_route(c)
    slow = c.post("/v1/score", content=content, headers=headers)
    assert calls == [False]
    assert fast.status_code == slow.status_code == status
    assert fast.json() == slow.json() and fast.json()["detail"]


def test_not_ready_is_the_routes_503_and_metrics_name_the_route(counted, artifact) -> None:
    c, calls = counted
    ids, _ = catalogue(artifact)
    body = {"user_id": "u", "video_ids": [ids[0]]}
    assert c.post("/v1/score", json=body).status_code == 200
    holder = c.app.state.holder  # type: ignore[attr-defined]
    state, holder.current = holder.current, None
    try:
        r = c.post("/v1/score", json=body)
    finally:
        holder.current = state
    assert r.status_code == 503 and r.json()["detail"] == "not ready"
    assert calls == [True, False]
    metrics = c.app.state.metrics.render(dict)  # type: ignore[attr-defined]
    for status in (200, 503):
        assert f'method="POST",route="/v1/score",status="{status}"}} 1' in metrics
