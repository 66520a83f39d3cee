"""ASGI middleware: the body-size limit (413) and per-route latency metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.metrics import Metrics


class LimitsAndMetricsMiddleware:
    """Pure ASGI: 413 for bodies over the limit (declared or streamed), latency per route."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], max_body: int, metrics: Metrics
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = [500]

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
            await send(message)

        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = False
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body
            except ValueError:
                too_big = True
        if too_big:
            await self._reject(send, send_wrapper)
        else:
            received = [0]

            async def limited_receive() -> MutableMapping[str, Any]:
                message: MutableMapping[str, Any] = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > self.max_body:
                        raise _BodyTooLarge
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except _BodyTooLarge:
                await self._reject(send, send_wrapper)
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.observe(
            scope.get("method", "?"), path, status_holder[0], time.perf_counter() - start
        )

    async def _reject(self, send: Any, send_wrapper: Any) -> None:
        body = json.dumps(
            {"detail": f"request body larger than {self.max_body} bytes", "field": None}
        ).encode()
        await send_wrapper(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
