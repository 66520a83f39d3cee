"""Durable store of what the service is told after start-up: ingested videos, watches and
impressions. One contract (``contract.py``), two implementations, chosen by
``RECSYS_STATE_URL``:

* ``sqlite:///path`` (default: next to the artifact): embedded (``sqlite.py``);
* ``postgresql://...``: shared by several replicas (``postgres.py``).
"""

from __future__ import annotations

from serving.stores.contract import (
    Changes,
    Impression,
    Removal,
    StateStore,
    StoredVideo,
    StoreUnavailable,
    Watch,
)
from serving.stores.sqlite import SqliteStore

__all__ = [
    "Changes",
    "Impression",
    "Removal",
    "SqliteStore",
    "StateStore",
    "StoreUnavailable",
    "StoredVideo",
    "Watch",
    "open_store",
]


def open_store(url: str) -> StateStore:
    """``sqlite:///path/to/file`` or ``postgresql://user@host:port/db``."""
    from recsys.errors import UserInputError

    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))  # sqlite:////abs or sqlite:///rel
    if url.startswith(("postgresql://", "postgres://")):
        from serving.stores.postgres import PostgresStore

        return PostgresStore(url)
    raise UserInputError(
        f"RECSYS_STATE_URL must start with sqlite:/// or postgresql://, not {url.split(':')[0]!r}"
    )
