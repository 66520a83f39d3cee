"""The embedded state store: one SQLite file (default: next to the artifact).

WAL mode with ``synchronous=FULL``: a commit is on disk before the call returns (WAL
alone is not enough; with ``NORMAL`` the last commits can be lost on power failure).

Checkpoints (copying the WAL's pages into the database file) run on a thread of their
own (``_Checkpointer``), never inside a write: SQLite's automatic checkpoint would make
the commit that crosses 1,000 WAL pages copy them all while the write lock is held. That
is most commits once each batch touches hundreds of pages, as random client event ids
do in a large ``event_id`` index (a 1,000-impression batch at 1M stored: 51 ms with the
automatic checkpoint, 27 ms without, 7 ms in an empty store; back to back for 20 s,
1.55x the batches).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import weakref
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

#: rows in one INSERT (6 parameters a row, under SQLite's 32,766)
_ROWS_A_STATEMENT = 1000
#: seconds between two checkpoints (``_Checkpointer``): the WAL holds at most this long's
#: writes beyond what readers still use (at 15 batches a second of 4 MB each, ~30 MB)
CHECKPOINT_INTERVAL_S = 0.5
#: WAL frames (4 KB pages) above which a checkpoint also lets the WAL start over
RESTART_FRAMES = 4096
#: bytes of WAL file kept when the WAL starts over (the rest is truncated)
WAL_KEPT_BYTES = 64 * 2**20
#: passive rounds of a checkpoint at most, and the frames a round may find new and stop
CATCH_UP_ROUNDS, CATCH_UP_FRAMES = 4, 512


class SqliteStore:
    """One writer at a time (BEGIN IMMEDIATE). Every row written takes the next log
    position (one counter across the four tables, in the writing transaction): rows
    commit in position order, so the position is the commit-order key, and a replay
    applies videos, events and removals in the order they were written."""

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
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # ``_Checkpointer`` does it
        self._db.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")  # when it restarts
        self._checkpointer = _Checkpointer(self)

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
        self._checkpointer.stop()
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

    def _positions(self, db: sqlite3.Connection, n: int) -> int:
        """The first of ``n`` new log positions (inside the caller's transaction)."""
        (end,) = db.execute("UPDATE log_clock SET pos = pos + ? RETURNING pos", (n,)).fetchone()
        return int(end) - n + 1

    def insert_video(
        self, video_id: str, payload_sha256: str, embedding: np.ndarray, num_frames: int
    ) -> Stamp | None:
        """Durably insert; None when the id already exists (nothing written)."""
        with self._locked() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                pos = self._positions(db, 1)
                cur = db.execute(
                    "INSERT INTO videos (video_id, payload_sha256, embedding, num_frames, pos) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (video_id, payload_sha256, blob(embedding), num_frames, pos),
                )
                db.execute("COMMIT")
                return Stamp(int(cur.lastrowid or 0), pos)
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                return None

    def insert_watch(self, w: Watch) -> Stamp:
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            pos = self._positions(db, 1)
            cur = db.execute(
                "INSERT INTO watches (user_id, video_id, watch_seconds, at, pos) "
                "VALUES (?, ?, ?, ?, ?)",
                (w.user_id, w.video_id, w.watch_seconds, w.at, pos),
            )
            db.execute("COMMIT")
            return Stamp(int(cur.lastrowid or 0), pos)

    def insert_impressions(self, rows: list[Impression]) -> list[Stamp | None]:
        """Durably insert a batch in one transaction; per row its stamp, or None when its
        ``event_id`` was stored before (a retry: nothing written for it)."""
        seqs: list[Stamp | None] = []
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                first = self._positions(db, len(rows)) if rows else 0
                got: dict[int, int] = {}  # log position -> seq of the rows inserted
                for lo in range(0, len(rows), _ROWS_A_STATEMENT):
                    part = rows[lo : lo + _ROWS_A_STATEMENT]
                    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(part))
                    params = [
                        x
                        for i, r in enumerate(part, start=first + lo)
                        for x in (r.event_id, r.user_id, r.video_id, r.shown_at, r.watch_seconds, i)
                    ]
                    # One statement a chunk (a retried event_id is ignored and returns no
                    # row): a statement a row cost most of a batch's time here.
                    cur = db.execute(
                        "INSERT OR IGNORE INTO impressions "
                        "(event_id, user_id, video_id, shown_at, watch_seconds, pos) "
                        f"VALUES {values} RETURNING pos, seq",
                        params,
                    )
                    got.update(cur.fetchall())
                seqs = [
                    Stamp(got[first + i], first + i) if first + i in got else None
                    for i in range(len(rows))
                ]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return seqs

    def changes(self, since: dict[str, int], limit: int | None = None) -> Changes:
        # One log position across the tables, committed in order: a read cut after
        # ``limit`` impressions keeps every row of every table up to the cut's position,
        # and the next read starts past it.
        with self._locked():
            got = []
            for sql, t in zip(SQLITE.changes, TABLES, strict=True):
                if t == "impressions" and limit is not None:
                    got.append(
                        self._db.execute(sql + " LIMIT ?", (since.get(t, 0), limit)).fetchall()
                    )
                else:
                    got.append(self._db.execute(sql, (since.get(t, 0),)).fetchall())
        more = limit is not None and len(got[TABLES.index("impressions")]) >= limit
        if more:
            cut = max(int(r[1]) for r in got[TABLES.index("impressions")])
            got = [[r for r in rows if int(r[1]) <= cut] for rows in got]
        changes = changes_from_rows(got, horizon={})
        changes.horizon = next_horizon(changes, since)
        changes.more = more
        return changes

    def remove_video(self, video_id: str) -> Stamp:
        # An ingested video's row stays (the record hides it on every replay).
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            stamp = self._removal(db, "video", video_id)
            db.execute("COMMIT")
            return stamp

    def erase_user(self, user_id: str) -> Stamp:
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            for sql in SQLITE.erase:
                db.execute(sql, (user_id,))
            db.execute(SQLITE.DROP_SNAPSHOTS)  # they may hold the user
            stamp = self._removal(db, "user", user_id)
            db.execute("COMMIT")
            return stamp

    def _removal(self, db: sqlite3.Connection, kind: str, target: str) -> Stamp:
        pos = self._positions(db, 1)
        cur = db.execute(
            "INSERT INTO removals (kind, target, pos) VALUES (?, ?, ?)", (kind, target, pos)
        )
        return Stamp(int(cur.lastrowid or 0), pos)

    def user_rows(self, user_id: str) -> Changes:
        with self._locked() as db:
            w, i = (db.execute(sql, (user_id,)).fetchall() for sql in SQLITE.user_rows)
        return changes_from_rows([[], w, i, []], horizon={})

    def save_snapshot(
        self, artifact_version: str, body: bytes, removals_from: int, applied: list[int]
    ) -> bool:
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                erasures = {r[0] for r in db.execute(SQLITE.unapplied_erasures, (removals_from,))}
                if erasures - set(applied):
                    db.execute("ROLLBACK")
                    return False
                seq = db.execute(SQLITE.insert_snapshot, (artifact_version, body)).lastrowid
                db.execute(SQLITE.prune_snapshots, (artifact_version, seq))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return True

    def latest_snapshot(self, artifact_version: str) -> bytes | None:
        with self._locked() as db:
            row = db.execute(SQLITE.latest_snapshot, (artifact_version,)).fetchone()
        return None if row is None else bytes(row[0])

    def archive_mark(self) -> int:
        with self._locked() as db:
            return int(db.execute(SQLITE.ARCHIVE_MARK).fetchone()[0])

    def impression_seqs_between(self, lo: int, hi: int) -> list[int] | None:
        with self._locked() as db:
            return [int(r[0]) for r in db.execute(SQLITE.impressions_between, (lo, hi))]

    def archive_chunk(
        self, below: int, after_seq: int, limit: int
    ) -> list[tuple[Stamp, Impression]]:
        with self._locked() as db:
            got = db.execute(SQLITE.archive_rows, (below, after_seq, limit)).fetchall()
        return changes_from_rows([[], [], got, []], horizon={}).impressions

    def order_keeping(self, newest: int) -> int | None:
        with self._locked() as db:
            row = db.execute(SQLITE.newest_order, (newest,)).fetchone()
        return None if row is None else int(row[0]) + 1

    def drop_archived(self, mark: int, below: int) -> bool:
        move, delete = SQLITE.drop_archived
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute(move, (below, mark)).rowcount != 1:
                db.execute("ROLLBACK")
                return False
            db.execute(delete, (below,))
            db.execute("COMMIT")
        return True

    def counts(self) -> tuple[int, int]:
        with self._locked():
            v, w = (int(self._db.execute(sql).fetchone()[0]) for sql in SQLITE.COUNTS)
        return v, w


class _Checkpointer:
    """Copies the WAL into the database file every ``interval_s`` on its own connection
    and thread (``PRAGMA wal_checkpoint(PASSIVE)``: it never waits for, nor blocks, a
    writer or a reader; what a reader still needs is copied on a later pass). Pages
    written again between two passes are copied once. A failed pass (a busy or full
    disk) is retried at the next; the commits themselves are durable in the WAL
    whatever the checkpoints do. The thread ends with ``stop`` (the store's ``close``)
    or once the store is gone. ``passes`` counts the completed ones."""

    def __init__(self, store: SqliteStore, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.passes = 0
        self._store, self._path = weakref.ref(store), store.path
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error:
            return  # the store's own connection reports what is wrong with the file
        try:
            db.execute("PRAGMA busy_timeout=1000")
            while not self._stopping.wait(self._interval_s):
                store = self._store()
                if store is None:
                    break
                with contextlib.suppress(sqlite3.Error):
                    self._pass(db, store._lock)
                    self.passes += 1
                del store  # held only for the pass: the store may go
        finally:
            db.close()

    @staticmethod
    def _pass(db: sqlite3.Connection, writes: threading.Lock) -> None:
        """Copy what the WAL holds without blocking anyone, again while the last pass
        found much new (a few rounds: each copies what the one before let in); then,
        once the WAL holds more than ``RESTART_FRAMES``, copy the little left while
        this process's writers wait on ``writes`` (the store's lock: SQLite's own busy
        wait loses to a writer that starts its next transaction at once), so that the
        next writer starts the WAL over. (Under a steady stream of commits a passive
        pass never finds every frame copied with no writer between, and the WAL would
        grow for ever: 3 GB in 20 s of 1,000-impression batches.)"""
        frames, copied = 0, -1  # copied: the WAL's frames copied so far (cumulative)
        for _ in range(CATCH_UP_ROUNDS):
            before = copied
            _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if copied - before <= CATCH_UP_FRAMES:
                break
        if frames >= RESTART_FRAMES:
            with writes:
                db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
