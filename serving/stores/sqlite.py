"""The embedded state store: one SQLite file (default: next to the artifact).

WAL mode with ``synchronous=FULL``: a commit is on disk before the call returns (WAL
alone is not enough; with ``NORMAL`` the last commits can be lost on power failure).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from serving.stores.contract import (
    SQLITE,
    TABLES,
    WRITE_PROBE_BYTES,
    Changes,
    Impression,
    Stamp,
    StoredVideo,
    StoreUnavailable,
    Watch,
    blob,
    changes_from_rows,
    next_horizon,
    stored_video,
)
from serving.stores.migrations import migrate


class SqliteStore:
    """One writer at a time (BEGIN IMMEDIATE): rows commit in sequence order, so a row's
    sequence number is its commit-order key."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("BEGIN IMMEDIATE")  # one opener migrates at a time
        try:
            migrate(self._db.execute, SQLITE)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._db.close()
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, alone; a fault (disk full, I/O error, a damaged file) becomes
        ``StoreUnavailable`` (503, not ready) with any open transaction rolled back."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise StoreUnavailable(f"state store unavailable: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def probe_write(self) -> None:
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(SQLITE.probe_insert, (bytes(WRITE_PROBE_BYTES),))
            db.execute("DELETE FROM write_probe")
            db.execute("COMMIT")

    def get_video(self, video_id: str) -> StoredVideo | None:
        with self._locked():
            row = self._db.execute(SQLITE.get_video, (video_id,)).fetchone()
        return stored_video(row)

    def insert_video(
        self, video_id: str, payload_sha256: str, embedding: np.ndarray, num_frames: int
    ) -> Stamp | None:
        """Durably insert; None when the id already exists (nothing written)."""
        with self._locked():
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO videos (video_id, payload_sha256, embedding, num_frames) VALUES (?, ?, ?, ?)",
                    (video_id, payload_sha256, blob(embedding), num_frames),
                )
                self._db.execute("COMMIT")
                return _stamp(cur.lastrowid)
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                return None

    def insert_watch(self, w: Watch) -> Stamp:
        with self._locked():
            cur = self._db.execute(
                SQLITE.insert_watch, (w.user_id, w.video_id, w.watch_seconds, w.at)
            )
            return _stamp(cur.lastrowid)

    def insert_impressions(self, rows: list[Impression]) -> list[Stamp | None]:
        """Durably insert a batch in one transaction; per row its sequence number, or None
        when its ``event_id`` was stored before (a retry: nothing written for it)."""
        seqs: list[Stamp | None] = []
        with self._locked():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO impressions "
                        "(event_id, user_id, video_id, shown_at, watch_seconds) VALUES (?, ?, ?, ?, ?)",
                        (r.event_id, r.user_id, r.video_id, r.shown_at, r.watch_seconds),
                    )
                    seqs.append(_stamp(cur.lastrowid) if cur.rowcount == 1 else None)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seqs

    def changes(self, since: dict[str, int]) -> Changes:
        with self._locked():
            got = [
                self._db.execute(sql, (since.get(t, 0),)).fetchall()
                for sql, t in zip(SQLITE.changes, TABLES, strict=True)
            ]
        changes = changes_from_rows(got, horizon={})
        changes.horizon = next_horizon(changes, since)
        return changes

    def remove_video(self, video_id: str) -> Stamp:
        # An ingested video's row stays (the record hides it on every replay): deleting
        # the newest row would let SQLite give its rowid, the follower's key, to the next.
        with self._locked() as db:
            cur = db.execute(SQLITE.insert_removal, ("video", video_id))
            return _stamp(cur.lastrowid)

    def erase_user(self, user_id: str) -> Stamp:
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            for sql in SQLITE.erase:
                db.execute(sql, (user_id,))
            cur = db.execute(SQLITE.insert_removal, ("user", user_id))
            db.execute("COMMIT")
            return _stamp(cur.lastrowid)

    def user_rows(self, user_id: str) -> Changes:
        with self._locked() as db:
            w, i = (db.execute(sql, (user_id,)).fetchall() for sql in SQLITE.user_rows)
        return changes_from_rows([[], w, i, []], horizon={})

    def counts(self) -> tuple[int, int]:
        with self._locked():
            v, w = (int(self._db.execute(sql).fetchone()[0]) for sql in SQLITE.COUNTS)
        return v, w


def _stamp(rowid: int | None) -> Stamp:
    seq = int(rowid or 0)
    return Stamp(seq, seq)
