"""Read routes answered from the request middleware, without the framework's routing,
exception layers and endpoint wrapper (most of a small route's CPU on this service).

A fast route stands in for one application route and gives the same 200 answer, bytes
and headers; for anything else (not ready, a request the route would refuse or answer
otherwise, any error) it declines with ``None`` and the application answers exactly as
without it. The routes themselves live beside their application routes
(``serving.routers.scoring``); ``app.state.fast_routes`` holds them.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Protocol

Message = MutableMapping[str, Any]


class FastRoute(Protocol):
    """A 200 JSON answer from the request (its ASGI scope, headers and whole body), or
    ``None`` to let the application answer. It runs on the event loop: never blocks."""

    #: the path template of the application's route it stands in for (labels the metrics)
    path: str

    def __call__(
        self, scope: Message, headers: dict[bytes, bytes], body: bytes
    ) -> bytes | None: ...


class FastRoutes:
    """Fast routes by method and path template: exact paths, and templates with one
    ``{param}`` segment (a segment never holds ``/``, as the router matches it)."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], FastRoute] = {}
        self._templates: list[tuple[str, str, str, FastRoute]] = []

    def add(self, method: str, route: FastRoute) -> None:
        head, brace, rest = route.path.partition("{")
        if not brace:
            self._exact[(method, route.path)] = route
            return
        tail = rest.partition("}")[2]
        if "{" in tail:
            raise ValueError(f"{route.path}: one path parameter at most")
        self._templates.append((method, head, tail, route))

    def find(self, method: str, path: str) -> FastRoute | None:
        route = self._exact.get((method, path))
        if route is not None or not self._templates:
            return route
        for m, head, tail, route in self._templates:
            if (
                m == method
                and len(path) > len(head) + len(tail)
                and path.startswith(head)
                and path.endswith(tail)
                and "/" not in path[len(head) : len(path) - len(tail)]
            ):
                return route
        return None

    def clear(self) -> None:
        self._exact.clear()
        self._templates.clear()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(method, path template) of each route."""
        yield from self._exact
        yield from ((m, r.path) for m, _, _, r in self._templates)


def path_param(route: FastRoute, path: str) -> str:
    """The value of a template route's one parameter in a path ``find`` matched."""
    head, _, rest = route.path.partition("{")
    return path[len(head) : len(path) - len(rest.partition("}")[2])]


async def send_json(send: Any, body: bytes) -> None:
    """A 200 with the headers the framework's own JSON ``Response`` has."""
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
