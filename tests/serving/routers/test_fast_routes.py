"""The scoring routes answered from the middleware (``serving.fast_routes``: score,
similar videos, recommendations): the same answers as the routes themselves, and every
answer but a 200 left to the route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.routers.scoring import FastRecommendations, FastScore, FastSimilar, _FastRead
from serving.settings import Settings
from tests.serving.helpers import a_user_with_history, catalogue


@pytest.fixture
def counted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, list]]:
    """A client, and the fast route's answers: True answered, False declined."""
    calls: list[bool] = []
    answer = _FastRead.__call__

    def spy(self, scope, headers, body):  # type: ignore[no-untyped-def]
        out = answer(self, scope, headers, body)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(_FastRead, "__call__", spy)
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
        {"user_id": user, "video_ids": ids[:60]},  # the scoring path's fused reductions
        {"user_id": 'a "quoted" stranger', "video_ids": ids[5:40]},
    ]
    fast = [c.post("/v1/score", json=b) for b in bodies]
    assert calls == [True] * 4
    _without_fast_route(c)
    slow = [c.post("/v1/score", json=b) for b in bodies]
    assert calls == [True] * 4  # not asked again
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


def _same_as_the_route(c: TestClient, calls: list, paths: list[str], fast: list[bool]) -> None:
    """Each path answered with and without the fast routes: the same status, bytes and
    headers; ``fast``: which the fast routes answered."""
    first = [c.get(p) for p in paths]
    assert calls == fast, paths
    _without_fast_route(c)
    again = [c.get(p) for p in paths]
    assert calls == fast  # not asked again
    drop = {"date", "server"}
    for p, f, s in zip(paths, first, again, strict=True):
        assert (f.status_code, f.content) == (s.status_code, s.content), p
        assert {k: v for k, v in f.headers.items() if k not in drop} == {
            k: v for k, v in s.headers.items() if k not in drop
        }, p


def test_similar_videos_answer_as_the_route(counted, artifact, settings: Settings) -> None:
    c, calls = counted
    ids, _ = catalogue(artifact)
    base = f"/v1/videos/{ids[3]}/similar"
    paths = [
        base,
        base + "?k=5",
        base + f"?k={settings.max_k}",
        base + f"?k={settings.max_k + 1}",  # 422 from the route
        base + "?k=0",
        base + "?k=abc",
        base + "?k=5&extra=1",  # the route ignores it: 200 either way
        "/v1/videos/no-such-video/similar",  # 404
        "/v1/videos/a%2Fb/similar",  # no such route: 404
    ]
    _same_as_the_route(c, calls, paths, [True, True, True] + [False] * 5)
    assert len(c.get(base + "?k=5").json()["similar"]) == 5


def test_recommendations_answer_as_the_route(counted, artifact) -> None:
    c, calls = counted
    user = a_user_with_history(artifact)
    paths = [
        f"/v1/users/{user}/recommendations",
        f"/v1/users/{user}/recommendations?k=3",
        f"/v1/users/{user}/recommendations?k=-1",  # 422 from the route
        "/v1/users/nobody-yet/recommendations?k=4",  # the newest videos
    ]
    _same_as_the_route(c, calls, paths, [True, True, False, True])


def test_a_large_recommendation_is_left_to_the_route(counted, artifact, monkeypatch) -> None:
    """One the route hands to the thread pool (more candidates than it scores on the event
    loop) is not answered on the loop by the fast route either."""
    import serving.routers.scoring as scoring

    c, calls = counted
    monkeypatch.setattr(scoring, "INLINE_CANDIDATES", 10)
    _same_as_the_route(c, calls, ["/v1/users/nobody-yet/recommendations?k=4"], [False])


def test_the_fast_routes_are_listed_and_found_by_template(settings: Settings) -> None:
    app = create_app(settings)
    routes = app.state.fast_routes
    assert sorted(routes) == [
        ("GET", FastRecommendations.path),
        ("GET", FastSimilar.path),
        ("POST", FastScore.path),
    ]
    assert isinstance(routes.find("GET", "/v1/videos/v1/similar"), FastSimilar)
    for method, path in [
        ("GET", "/v1/videos//similar"),
        ("GET", "/v1/videos/a/b/similar"),
        ("HEAD", "/v1/videos/v1/similar"),
        ("GET", "/v1/videos/v1/similar/"),
        ("GET", "/v1/score"),
    ]:
        assert routes.find(method, path) is None, (method, path)
