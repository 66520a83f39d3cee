"""The middleware's limits before work, driven as raw ASGI (no artifact needed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from serving.metrics import Metrics
from serving.middleware import LimitsAndMetricsMiddleware


class App:
    """Reads the whole body and answers 200 with its length; ``gate`` holds it."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls += 1
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if self.gate is not None and scope["path"] != "/healthz":
            await self.gate.wait()
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _scope(method: str, path: str, headers: dict[bytes, bytes]) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": list(headers.items())}


async def _call(mw: Any, method: str, path: str, headers: dict, chunks: list[bytes], stall=False):
    todo = list(chunks)
    sent: list[dict] = []

    async def receive() -> dict:
        if not todo:
            if stall:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}
        c = todo.pop(0)
        return {"type": "http.request", "body": c, "more_body": bool(todo) or stall}

    async def send(m: dict) -> None:
        sent.append(m)

    await mw(_scope(method, path, headers), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start.get("headers", [])), body


def _mw(app: App, **kw: Any) -> LimitsAndMetricsMiddleware:
    args: dict[str, Any] = {"max_body": 100, "metrics": Metrics(), "api_key": "k"} | kw
    return LimitsAndMetricsMiddleware(app, **args)


CHUNKED = {b"transfer-encoding": b"chunked"}


def test_the_key_is_checked_before_any_body_is_read() -> None:
    app = App()
    mw = _mw(app)
    status, headers, body = asyncio.run(_call(mw, "POST", "/v1/videos", CHUNKED, [b"x" * 50] * 9))
    assert status == 401 and app.calls == 0 and b"X-API-Key" in body
    assert headers[b"content-type"] == b"application/json"
    # The read-only POST needs no key; with the key a write goes through.
    assert asyncio.run(_call(mw, "POST", "/v1/score", CHUNKED, [b"ab"]))[0] == 200
    ok = asyncio.run(_call(mw, "DELETE", "/v1/users/u", {b"x-api-key": b"k"}, []))
    assert ok[0] == 200 and app.calls == 2


@pytest.mark.parametrize("declared", [True, False])
def test_every_oversized_body_is_one_413(declared: bool) -> None:
    app = App()
    mw = _mw(app, api_key=None)
    chunks = [b"x" * 60, b"y" * 60]
    headers = {b"content-length": b"120"} if declared else CHUNKED
    status, _, body = asyncio.run(_call(mw, "POST", "/v1/videos", headers, chunks))
    assert status == 413 and app.calls == 0
    assert json.loads(body)["detail"] == "request body larger than 100 bytes"
    # At the limit it passes, whole.
    status, _, body = asyncio.run(_call(mw, "POST", "/v1/videos", CHUNKED, [b"x" * 60, b"y" * 40]))
    assert status == 200 and body == b"100"


def test_a_stalled_body_gets_408() -> None:
    app = App()
    mw = _mw(app, api_key=None, body_timeout_s=0.05)
    status, _, _ = asyncio.run(_call(mw, "POST", "/v1/score", CHUNKED, [b"{"], stall=True))
    assert status == 408 and app.calls == 0


def test_overload_is_503_with_retry_after_and_health_never_queues() -> None:
    async def scenario() -> tuple:
        app = App()
        app.gate = asyncio.Event()
        mw = _mw(app, max_in_flight=1, queue_timeout_s=0.05)
        first = asyncio.create_task(_call(mw, "GET", "/v1/videos/v/similar", {}, []))
        await asyncio.sleep(0.01)
        second = await _call(mw, "GET", "/v1/videos/v/similar", {}, [])
        health = await asyncio.wait_for(_call(mw, "GET", "/healthz", {}, []), 1)
        app.gate.set()
        return (await first), second, health, mw.metrics

    first, second, health, metrics = asyncio.run(scenario())
    assert first[0] == 200 and health[0] == 200
    assert second[0] == 503 and second[1][b"retry-after"] == b"1"
    assert metrics.counters["overload_rejections"] == 1


def test_metrics_labels_are_bounded_and_500s_counted() -> None:
    app = App()
    mw = _mw(app, api_key=None)
    for i in range(50):
        asyncio.run(_call(mw, f"MADEUP{i}", f"/nowhere/{i}", {}, []))
    with pytest.raises(RuntimeError):
        asyncio.run(_call(mw, "GET", "/boom", {}, []))
    keys = set(mw.metrics.requests)
    assert keys == {("OTHER", "unmatched", 200), ("GET", "unmatched", 500)}
    assert mw.metrics.requests[("OTHER", "unmatched", 200)] == 50


def test_the_key_rule_matches_every_route(client) -> None:
    """The middleware's rule (every write method but ``OPEN_POSTS``) names exactly the
    routes that declare the key dependency (which documents the 401)."""
    from fastapi.routing import APIRoute

    from serving.deps import require_api_key
    from serving.middleware import needs_write_key

    def walk(routes):  # FastAPI keeps included routers as wrappers around their routes
        for r in routes:
            inner = getattr(r, "original_router", None)
            yield from walk(inner.routes) if inner is not None else [r]

    checked = 0
    for route in walk(client.app.routes):
        if not isinstance(route, APIRoute):
            continue
        declares = any(d.call is require_api_key for d in route.dependant.dependencies)
        for method in route.methods:
            assert needs_write_key(method, route.path) == declares, (method, route.path)
            checked += 1
    assert checked > 10


def test_body_deadlines_are_each_reads_own_and_leave_nothing_behind() -> None:
    """One timer serves every read's deadline (``_Deadlines``): a read that finishes in
    time leaves no cancellation for the task's next await; a stalled read beside it
    gets its 408 at its own deadline; a cancellation from outside stays one."""

    async def scenario() -> tuple:
        app = App()
        mw = _mw(app, api_key=None, body_timeout_s=0.1)
        ok = await _call(mw, "POST", "/v1/score", CHUNKED, [b"ab"])
        await asyncio.sleep(0.2)  # past the finished read's deadline: not cancelled here
        stalled = asyncio.create_task(_call(mw, "POST", "/v1/score", CHUNKED, [b"{"], stall=True))
        await asyncio.sleep(0.05)
        fine = await _call(mw, "POST", "/v1/score", CHUNKED, [b"abc"])  # armed after it
        late = await asyncio.wait_for(stalled, 1)
        outside = asyncio.create_task(_call(mw, "POST", "/v1/score", CHUNKED, [b"{"], stall=True))
        await asyncio.sleep(0.02)
        outside.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outside
        return ok, fine, late, app.calls

    ok, fine, late, calls = asyncio.run(scenario())
    assert ok[0] == 200 and ok[2] == b"2" and fine[0] == 200 and fine[2] == b"3"
    assert late[0] == 408 and calls == 2
