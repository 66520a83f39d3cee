"""What the service needs from durable storage, and the SQL both stores share.

Every row has a sequence number. A replica applies its own writes at once and follows the
others' through ``changes`` (polled), so all replicas converge on the same state: the
in-memory index, histories and online user effects are derived from the artifact plus
this log, and rebuilt from it on start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class StoreUnavailable(Exception):
    """The store cannot be reached (HTTP 503 with Retry-After; the replica is not ready)."""


@dataclass(frozen=True)
class StoredVideo:
    video_id: str
    payload_sha256: str
    embedding: np.ndarray
    num_frames: int


@dataclass(frozen=True)
class Impression:
    user_id: str
    video_id: str
    shown_at: str
    watch_seconds: float
    event_id: str | None = None


@dataclass(frozen=True)
class Watch:
    user_id: str
    video_id: str
    watch_seconds: float
    at: str


@dataclass
class Changes:
    """Rows with a sequence number above the asked cursors, per table, in order."""

    videos: list[tuple[int, StoredVideo]] = field(default_factory=list)
    watches: list[tuple[int, Watch]] = field(default_factory=list)
    impressions: list[tuple[int, Impression]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.videos) + len(self.watches) + len(self.impressions)


class StateStore(Protocol):
    """What the service needs from durable storage. Inserts return sequence numbers."""

    #: how far below its newest seen row a follower re-reads, for rows whose transaction
    #: committed after a later one (0: commits are serialised in sequence order)
    lookback: int

    def close(self) -> None: ...
    def get_video(self, video_id: str) -> StoredVideo | None: ...
    def insert_video(
        self, video_id: str, payload_sha256: str, embedding: np.ndarray, num_frames: int
    ) -> int | None: ...
    def insert_watch(self, w: Watch) -> int: ...
    def insert_impressions(self, rows: list[Impression]) -> list[int | None]: ...
    def changes(self, videos: int, watches: int, impressions: int) -> Changes: ...
    def counts(self) -> tuple[int, int]: ...


def vector(blob: object) -> np.ndarray:
    """A stored embedding; a damaged blob decodes to an empty vector, which the replay
    skips and counts."""
    raw = bytes(blob) if isinstance(blob, bytes | bytearray | memoryview) else b""
    return np.frombuffer(raw if len(raw) % 4 == 0 else b"", np.float32)


def blob(embedding: np.ndarray) -> bytes:
    return np.ascontiguousarray(embedding, dtype=np.float32).tobytes()


def stored_video(row: Any) -> StoredVideo | None:
    """A ``Dialect.get_video`` row (video_id, payload_sha256, embedding, num_frames)."""
    return None if row is None else StoredVideo(row[0], row[1], vector(row[2]), row[3])


def changes_from_rows(videos: Any, watches: Any, impressions: Any) -> Changes:
    """``Changes`` from the rows of ``Dialect.changes``' three queries, in their column
    order: (seq, video_id, payload_sha256, embedding, num_frames), (seq, user_id,
    video_id, watch_seconds, at), (seq, event_id, user_id, video_id, shown_at,
    watch_seconds)."""
    return Changes(
        [(int(r[0]), StoredVideo(r[1], r[2], vector(r[3]), r[4])) for r in videos],
        [(int(r[0]), Watch(r[1], r[2], float(r[3]), r[4])) for r in watches],
        [(int(r[0]), Impression(r[2], r[3], r[4], float(r[5]), r[1])) for r in impressions],
    )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    {video_key},
    payload_sha256 TEXT NOT NULL,
    embedding {blob} NOT NULL,
    num_frames INTEGER NOT NULL,
    ingested_at {now}
);
CREATE TABLE IF NOT EXISTS impressions (
    seq {serial},
    event_id TEXT UNIQUE,
    user_id TEXT NOT NULL,
    video_id TEXT NOT NULL,
    shown_at TEXT NOT NULL,
    watch_seconds {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS watches (
    seq {serial},
    user_id TEXT NOT NULL,
    video_id TEXT NOT NULL,
    watch_seconds {real} NOT NULL,
    at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Dialect:
    """How one database spells the shared schema and queries."""

    #: the query parameter placeholder
    param: str
    #: the videos table's sequence column (SQLite's videos use their rowid)
    video_seq: str
    video_key: str
    serial: str
    blob: str
    real: str
    now: str

    @property
    def schema(self) -> str:
        return _SCHEMA.format(
            video_key=self.video_key,
            serial=self.serial,
            blob=self.blob,
            real=self.real,
            now=self.now,
        )

    @property
    def get_video(self) -> str:
        return (
            "SELECT video_id, payload_sha256, embedding, num_frames FROM videos "
            f"WHERE video_id = {self.param}"
        )

    @property
    def insert_watch(self) -> str:
        p = self.param
        return f"INSERT INTO watches (user_id, video_id, watch_seconds, at) VALUES ({p}, {p}, {p}, {p})"

    @property
    def changes(self) -> tuple[str, str, str]:
        """The videos, watches and impressions after a sequence number, in order."""
        p, v = self.param, self.video_seq
        return (
            f"SELECT {v}, video_id, payload_sha256, embedding, num_frames FROM videos "
            f"WHERE {v} > {p} ORDER BY {v}",
            f"SELECT seq, user_id, video_id, watch_seconds, at FROM watches WHERE seq > {p} "
            "ORDER BY seq",
            "SELECT seq, event_id, user_id, video_id, shown_at, watch_seconds FROM impressions "
            f"WHERE seq > {p} ORDER BY seq",
        )

    COUNTS = ("SELECT count(*) FROM videos", "SELECT count(*) FROM watches")


SQLITE = Dialect(
    param="?",
    video_seq="rowid",
    video_key="video_id TEXT PRIMARY KEY",
    serial="INTEGER PRIMARY KEY AUTOINCREMENT",
    blob="BLOB",
    real="REAL",
    now="TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
)
POSTGRES = Dialect(
    param="%s",
    video_seq="seq",
    video_key="seq BIGSERIAL PRIMARY KEY,\n    video_id TEXT NOT NULL UNIQUE",
    serial="BIGSERIAL PRIMARY KEY",
    blob="BYTEA",
    real="DOUBLE PRECISION",
    now="TIMESTAMPTZ NOT NULL DEFAULT now()",
)
