"""Durable store of what the service is told after start-up: ingested videos, watches and
impressions. One interface, two implementations, chosen by ``RECSYS_STATE_URL``:

* ``sqlite:///path`` (default: next to the artifact): embedded, in WAL mode with
  ``synchronous=FULL``, so a commit is on disk before the call returns (WAL alone is not
  enough; with ``NORMAL`` the last commits can be lost on power failure);
* ``postgresql://...``: shared by several replicas (``serving/pg_store.py``).

Every row has a sequence number. A replica applies its own writes at once and follows the
others' through ``changes`` (polled), so all replicas converge on the same state: the
in-memory index, histories and online user effects are derived from the artifact plus
this log, and rebuilt from it on start-up.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recsys.errors import UserInputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    video_id TEXT PRIMARY KEY,
    payload_sha256 TEXT NOT NULL,
    embedding BLOB NOT NULL,
    num_frames INTEGER NOT NULL,
    ingested_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS impressions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT UNIQUE,
    user_id TEXT NOT NULL,
    video_id TEXT NOT NULL,
    shown_at TEXT NOT NULL,
    watch_seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS watches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    video_id TEXT NOT NULL,
    watch_seconds REAL NOT NULL,
    at TEXT NOT NULL
);
"""


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


def changes_from_rows(videos: Any, watches: Any, impressions: Any) -> Changes:
    """``Changes`` from the rows of the three change queries, in their column order:
    (seq, video_id, payload_sha256, embedding, num_frames), (seq, user_id, video_id,
    watch_seconds, at), (seq, event_id, user_id, video_id, shown_at, watch_seconds)."""
    return Changes(
        [(int(r[0]), StoredVideo(r[1], r[2], _vector(r[3]), r[4])) for r in videos],
        [(int(r[0]), Watch(r[1], r[2], float(r[3]), r[4])) for r in watches],
        [(int(r[0]), Impression(r[2], r[3], r[4], float(r[5]), r[1])) for r in impressions],
    )


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


def _vector(blob: object) -> np.ndarray:
    # A damaged blob decodes to an empty vector, which the replay skips and counts.
    raw = bytes(blob) if isinstance(blob, bytes | bytearray | memoryview) else b""
    return np.frombuffer(raw if len(raw) % 4 == 0 else b"", np.float32)


class SqliteStore:
    lookback = 0  # one writer at a time (BEGIN IMMEDIATE): commit order = sequence order

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get_video(self, video_id: str) -> StoredVideo | None:
        with self._lock:
            row = self._db.execute(
                "SELECT video_id, payload_sha256, embedding, num_frames FROM videos WHERE video_id = ?",
                (video_id,),
            ).fetchone()
        return None if row is None else StoredVideo(row[0], row[1], _vector(row[2]), row[3])

    def insert_video(
        self, video_id: str, payload_sha256: str, embedding: np.ndarray, num_frames: int
    ) -> int | None:
        """Durably insert; None when the id already exists (nothing written)."""
        blob = np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO videos (video_id, payload_sha256, embedding, num_frames) VALUES (?, ?, ?, ?)",
                    (video_id, payload_sha256, blob, num_frames),
                )
                self._db.execute("COMMIT")
                return int(cur.lastrowid or 0)
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                return None

    def insert_watch(self, w: Watch) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO watches (user_id, video_id, watch_seconds, at) VALUES (?, ?, ?, ?)",
                (w.user_id, w.video_id, w.watch_seconds, w.at),
            )
            return int(cur.lastrowid or 0)

    def insert_impressions(self, rows: list[Impression]) -> list[int | None]:
        """Durably insert a batch in one transaction; per row its sequence number, or None
        when its ``event_id`` was stored before (a retry: nothing written for it)."""
        seqs: list[int | None] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO impressions "
                        "(event_id, user_id, video_id, shown_at, watch_seconds) VALUES (?, ?, ?, ?, ?)",
                        (r.event_id, r.user_id, r.video_id, r.shown_at, r.watch_seconds),
                    )
                    seqs.append(int(cur.lastrowid or 0) if cur.rowcount == 1 else None)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seqs

    def changes(self, videos: int, watches: int, impressions: int) -> Changes:
        with self._lock:
            v = self._db.execute(
                "SELECT rowid, video_id, payload_sha256, embedding, num_frames FROM videos "
                "WHERE rowid > ? ORDER BY rowid",
                (videos,),
            ).fetchall()
            w = self._db.execute(
                "SELECT seq, user_id, video_id, watch_seconds, at FROM watches WHERE seq > ? "
                "ORDER BY seq",
                (watches,),
            ).fetchall()
            i = self._db.execute(
                "SELECT seq, event_id, user_id, video_id, shown_at, watch_seconds FROM impressions "
                "WHERE seq > ? ORDER BY seq",
                (impressions,),
            ).fetchall()
        return changes_from_rows(v, w, i)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            v = self._db.execute("SELECT count(*) FROM videos").fetchone()[0]
            w = self._db.execute("SELECT count(*) FROM watches").fetchone()[0]
        return int(v), int(w)


#: the embedded store under its former name
DurableStore = SqliteStore


def open_store(url: str) -> StateStore:
    """``sqlite:///path/to/file`` or ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))  # sqlite:////abs or sqlite:///rel
    if url.startswith(("postgresql://", "postgres://")):
        from serving.pg_store import PostgresStore

        return PostgresStore(url)
    raise UserInputError(
        f"RECSYS_STATE_URL must start with sqlite:/// or postgresql://, not {url.split(':')[0]!r}"
    )
