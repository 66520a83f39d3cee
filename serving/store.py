"""Durable store of what the service is told after start-up: ingested videos and watches.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk before the call
returns, so an acknowledged write survives a crash (WAL alone is not enough; with
``NORMAL`` the last commits can be lost on power failure). The in-memory index and
histories are derived from this store plus the artifact and are rebuilt on start-up.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


class DurableStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
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
        return (
            None
            if row is None
            else StoredVideo(row[0], row[1], np.frombuffer(row[2], np.float32), row[3])
        )

    def insert_video(
        self, video_id: str, payload_sha256: str, embedding: np.ndarray, num_frames: int
    ) -> bool:
        """Durably insert; False when the id already exists (nothing written)."""
        blob = np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO videos (video_id, payload_sha256, embedding, num_frames) VALUES (?, ?, ?, ?)",
                    (video_id, payload_sha256, blob, num_frames),
                )
                self._db.execute("COMMIT")
                return True
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                return False

    def insert_watch(self, user_id: str, video_id: str, watch_seconds: float, at: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO watches (user_id, video_id, watch_seconds, at) VALUES (?, ?, ?, ?)",
                (user_id, video_id, watch_seconds, at),
            )

    def insert_impressions(self, rows: list[Impression]) -> list[bool]:
        """Durably insert a batch in one transaction; per row, False when its ``event_id``
        was stored before (a retry: nothing written for it)."""
        inserted: list[bool] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO impressions "
                        "(event_id, user_id, video_id, shown_at, watch_seconds) VALUES (?, ?, ?, ?, ?)",
                        (r.event_id, r.user_id, r.video_id, r.shown_at, r.watch_seconds),
                    )
                    inserted.append(cur.rowcount == 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return inserted

    def impressions(self) -> Iterator[Impression]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, user_id, video_id, shown_at, watch_seconds FROM impressions "
                "ORDER BY seq"
            ).fetchall()
        for r in rows:
            yield Impression(r[1], r[2], r[3], float(r[4]), r[0])

    def videos(self) -> Iterator[StoredVideo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT video_id, payload_sha256, embedding, num_frames FROM videos ORDER BY rowid"
            ).fetchall()
        for r in rows:
            blob = r[2] if isinstance(r[2], bytes) and len(r[2]) % 4 == 0 else b""
            # A damaged blob decodes to an empty vector, which the replay skips and counts.
            yield StoredVideo(r[0], r[1], np.frombuffer(blob, np.float32), r[3])

    def watches(self) -> Iterator[tuple[str, str, float, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id, video_id, watch_seconds, at FROM watches ORDER BY seq"
            ).fetchall()
        yield from rows

    def counts(self) -> tuple[int, int]:
        with self._lock:
            v = self._db.execute("SELECT count(*) FROM videos").fetchone()[0]
            w = self._db.execute("SELECT count(*) FROM watches").fetchone()[0]
        return int(v), int(w)
