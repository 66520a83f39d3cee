"""Connections a stranger cannot pile up: a deadline on every request head, and a
process allowed as many sockets as the system lets it have.

uvicorn closes an idle keep-alive connection only after a response; a client that
connects and sends nothing, or a byte every few seconds, holds its socket forever, and
uvicorn's ``limit_concurrency`` counts those sockets: 63 of them made every request a
503. Here the in-flight limit lives in ``serving.middleware`` (it counts requests), and
``HeadDeadlineH11Protocol`` closes a connection whose request line and headers are not
complete ``head_timeout_s`` after it connected or after its last response.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


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


def protocol_with_deadline(head_timeout_s: float) -> type[H11Protocol]:
    """The protocol class uvicorn should use, with this head deadline."""
    return type(
        "HeadDeadlineH11Protocol", (HeadDeadlineH11Protocol,), {"head_timeout_s": head_timeout_s}
    )


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
