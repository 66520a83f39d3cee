"""Connections a stranger cannot pile up: a deadline on every request head, and a
process allowed as many sockets as the system lets it have.

uvicorn closes an idle keep-alive connection only after a response; a client that
connects and sends nothing, or a byte every few seconds, holds its socket forever, and
uvicorn's ``limit_concurrency`` counts those sockets: 63 of them made every request a
503. Here the in-flight limit lives in ``serving.middleware`` (it counts requests), and
the protocols here close a connection whose request line and headers are not complete
``head_timeout_s`` after it connected or after its last response.

The parser is httptools (C, llhttp) when installed, h11 (pure Python) otherwise: with h11
the HTTP layer cost more server CPU than a 100-candidate score (about 0.3 ms of a
/healthz request's 0.4 ms).
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class HeadDeadlineH11Protocol(H11Protocol):
    head_timeout_s = 5.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        """Start waiting for the next request head (the current cycle is finished)."""
        self._disarm()
        self._waiting_after = self.cycle
        self._deadline = self.loop.call_later(self.head_timeout_s, self._expire)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
            self._deadline = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting_after:  # a request head arrived
            self._disarm()

    def on_response_complete(self) -> None:
        # Armed before uvicorn looks at pipelined requests: one that is already buffered
        # starts a new cycle inside this call, and handle_events disarms again.
        if not self.transport.is_closing():
            self._arm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is self._waiting_after and not self.transport.is_closing():
            self.transport.close()


class _Deadline:
    """The head deadline of one connection (``loop``: the protocol's event loop)."""

    def __init__(self, loop: Any, timeout_s: float, expire: Any) -> None:
        self.loop, self.timeout_s, self.expire = loop, timeout_s, expire
        self.handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.disarm()
        self.handle = self.loop.call_later(self.timeout_s, self.expire)

    def disarm(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


if HttpToolsProtocol is not None:

    class HeadDeadlineHttpToolsProtocol(HttpToolsProtocol):
        """httptools calls ``on_headers_complete`` once a request head is parsed."""

        head_timeout_s = 5.0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head = _Deadline(self.loop, self.head_timeout_s, self._expire)
            self._waiting = True
            self._head.arm()

        def on_headers_complete(self) -> None:
            self._waiting = False
            self._head.disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # A pipelined request whose head is already parsed waits in self.pipeline:
            # then no head is awaited.
            if not self.transport.is_closing() and not self.pipeline:
                self._waiting = True
                self._head.arm()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if hasattr(self, "_head"):
                self._head.disarm()
            super().connection_lost(exc)

        def _expire(self) -> None:
            self._head.handle = None
            if self._waiting and not self.transport.is_closing():
                self.transport.close()


def protocol_with_deadline(head_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class uvicorn should use, with this head deadline: httptools when
    installed, else h11."""
    base: type[asyncio.Protocol] = (
        HeadDeadlineH11Protocol if HttpToolsProtocol is None else HeadDeadlineHttpToolsProtocol
    )
    return type(base.__name__, (base,), {"head_timeout_s": head_timeout_s})


def raise_open_file_limit(wanted: int = 65_536) -> int:
    """Raise this process's soft limit on open files towards the hard limit (each
    connection is one); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft
