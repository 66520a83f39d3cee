"""ASGI middleware: limits before work, then the request, then its metrics.

In order, before the application reads a byte of the body:

1. **Overload**: at most ``max_in_flight`` requests run at once; a request waits up to
   ``queue_timeout_s`` for a slot, then gets 503 with ``Retry-After``. Health, readiness
   and metrics (``EXEMPT``) never wait, so probes answer while the API is saturated.
2. **The API key** of write routes (every POST, PUT, PATCH or DELETE but ``OPEN_POSTS``):
   401 from the headers alone, so a stranger's large body is never parsed.
3. **The size limit**: a declared ``Content-Length`` over ``max_body`` is 413 at once; any
   other body is read up to the limit first (413 as soon as it passes it), then handed
   to the application, so every oversized body gets the same 413. The body is read
   whole before the application runs (it would read it anyway); one that stalls for
   ``body_timeout_s`` gets 408.

A **fast route** (``serving.fast_routes``) answers its request from the scope, headers
and body when it can, skipping the framework's routing, exception layers and endpoint
wrapper (most of a small route's CPU); when it declines (``None``: not ready, a request
the route would refuse) the application answers exactly as without it.

Every answer carries the security headers (``SECURITY_HEADERS``: no sniffing, no
framing, a content policy of this origin only); with ``allowed_hosts`` a request for
another ``Host`` is 400 (probes excepted). Metrics are recorded for every answer, 5xx
from an exception included, with bounded labels: unknown methods share ``OTHER``,
unmatched paths ``unmatched``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.fast_routes import FastRoutes, send_json
from serving.metrics import Metrics

#: paths that never queue behind the API (probes, scrapes)
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
#: POST routes that read (no key needed); every other POST/PUT/PATCH/DELETE writes
OPEN_POSTS = frozenset({"/v1/score", "/v1/map/positions"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: the scope's key for the fast route the app found for a request (None: none)
FAST_ROUTE_KEY = "recsys.fast_route"
_UNSET = object()
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'{extra}; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", _CSP.format(extra="").encode()),
]
#: the API docs page starts Swagger UI with an inline script
_DOCS_HEADERS = [
    *SECURITY_HEADERS[:3],
    (b"content-security-policy", _CSP.format(extra=" 'unsafe-inline'").encode()),
]
KNOWN_METHODS = frozenset({"GET", "HEAD", "OPTIONS", *WRITE_METHODS})

Message = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]


def needs_write_key(method: str, path: str) -> bool:
    return method in WRITE_METHODS and path not in OPEN_POSTS


class LimitsAndMetricsMiddleware:
    """Pure ASGI: overload 503, write key 401, body 413/408 before the app; metrics after."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        metrics: Metrics,
        api_key: str | None = None,
        max_in_flight: int = 64,
        queue_timeout_s: float = 2.0,
        body_timeout_s: float = 30.0,
        allowed_hosts: list[str] | None = None,
        fast_routes: FastRoutes | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics
        self.api_key = api_key
        self.queue_timeout_s = queue_timeout_s
        self.body_timeout_s = body_timeout_s
        self.slots = asyncio.Semaphore(max_in_flight)
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts or [])
        #: filled by the app once its routes exist (the stack is built at the first request)
        self.fast_routes = fast_routes if fast_routes is not None else FastRoutes()
        self._deadlines = _Deadlines()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        extra = _DOCS_HEADERS if scope.get("path") == "/docs" else SECURITY_HEADERS

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self._limited(scope, receive, send_wrapper)
        finally:  # an exception is a 500 and is counted like any other answer
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.observe(
                method if method in KNOWN_METHODS else "OTHER",
                path,
                status[0],
                time.perf_counter() - start,
            )

    async def _limited(self, scope: Message, receive: Any, send: Any) -> None:
        if scope.get("path") in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.allowed_hosts and _host(scope) not in self.allowed_hosts:
            await _reject(send, 400, "Host header not served here")
            return
        if not self.slots.locked():
            await self.slots.acquire()  # a free slot: taken at once, no timer to arm
        else:
            try:
                async with asyncio.timeout(self.queue_timeout_s):
                    await self.slots.acquire()
            except TimeoutError:
                self.metrics.inc("overload_rejections")
                await _reject(send, 503, "overloaded: too many requests in flight", retry_after=1)
                return
        try:
            await self._checked(scope, receive, send)
        finally:
            self.slots.release()

    async def _checked(self, scope: Message, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and needs_write_key(scope.get("method", ""), scope["path"]):
            given = headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.api_key.encode()):
                await _reject(send, 401, "missing or wrong X-API-Key header")
                return
        declared = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        if declared is None and not chunked:  # no body
            if not await self._answered_fast(scope, headers, b"", send):
                await self.app(scope, receive, send)
            return
        try:
            if declared is not None and int(declared) > self.max_body:
                raise _BodyTooLarge
            body = await self._read_limited(receive)
        except (_BodyTooLarge, ValueError):
            await _reject(send, 413, self._too_big)
            return
        except TimeoutError:
            await _reject(send, 408, f"request body not received within {self.body_timeout_s} s")
            return
        if not await self._answered_fast(scope, headers, body, send):
            await self.app(scope, _replay(body, receive), send)

    async def _answered_fast(
        self, scope: Message, headers: dict[bytes, bytes], body: bytes, send: Any
    ) -> bool:
        """True when a fast route (``serving.fast_routes``) answered the request."""
        fast = scope.get(FAST_ROUTE_KEY, _UNSET)  # found already by the app, when it ran first
        if fast is _UNSET:
            fast = self.fast_routes.find(scope.get("method", ""), scope["path"])
        answer = None if fast is None else fast(scope, headers, body)
        if answer is None:
            return False
        scope["route"] = fast  # the metrics' label: its path, as the route's
        await send_json(send, answer)
        return True

    @property
    def _too_big(self) -> str:
        return f"request body larger than {self.max_body} bytes"

    async def _read_limited(self, receive: Any) -> bytes:
        parts: list[bytes] = []
        size = 0
        task = asyncio.current_task()
        assert task is not None
        self._deadlines.arm(task, self.body_timeout_s)
        try:  # the receives are this region's only awaits: the deadline cancels one of them
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return b"".join(parts)  # disconnected: the app sees an empty body and stops
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    raise _BodyTooLarge
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)
        except asyncio.CancelledError:
            if self._deadlines.expired(task):
                raise TimeoutError from None
            raise
        finally:
            self._deadlines.disarm(task)


class _Deadlines:
    """Deadlines of the body reads under way, kept by task, with one timer for all of
    them at the earliest: a read arms and disarms with two dict operations, not a timer
    of its own (``asyncio.timeout``: about 6 us a request, with a score's whole route
    costing some 300). An overdue read's task is cancelled, and the read raises
    ``TimeoutError`` instead of the cancellation it caused."""

    def __init__(self) -> None:
        self._due: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's (a test runs several)

    def arm(self, task: asyncio.Task[Any], seconds: float) -> None:
        loop = task.get_loop()
        due = loop.time() + seconds
        self._due[task] = due
        timer = self._timer
        if timer is None or timer.when() > due or self._loop is not loop:
            if timer is not None:
                timer.cancel()
            self._timer, self._loop = loop.call_at(due, self._sweep, loop), loop

    def disarm(self, task: asyncio.Task[Any]) -> None:
        self._due.pop(task, None)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """True (once) when the cancellation the task met was its deadline's."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now, upcoming = loop.time(), []
        for task, due in list(self._due.items()):
            if task.done():
                del self._due[task]
            elif task.get_loop() is not loop:  # another loop's (a test's): its reads re-arm
                continue
            elif due <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
            else:
                upcoming.append(due)
        if upcoming:
            self._timer = loop.call_at(min(upcoming), self._sweep, loop)


def _host(scope: Message) -> str:
    """The Host header's name, lower-cased, without the port."""
    raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower()
    if raw.startswith("["):  # [IPv6]:port
        return raw.split("]", 1)[0] + "]"
    return raw.rsplit(":", 1)[0] if ":" in raw else raw


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[Message]]:
    sent = [False]

    async def replay() -> Message:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: Message = await receive()
        return message

    return replay


async def _reject(send: Any, status: int, detail: str, retry_after: int | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    body = json.dumps({"detail": detail, "field": None}).encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
