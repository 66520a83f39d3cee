"""The state store on PostgreSQL: several replicas share ingested videos, watches and
impressions (see ``serving/stores/contract.py`` for the interface).

Durability: a commit returns after the WAL is flushed (PostgreSQL's default
``synchronous_commit = on``), so an acknowledged write survives a crash of the replica
and of the database server. Any connection failure becomes ``StoreUnavailable`` (HTTP 503
with Retry-After, replica not ready); the next call reconnects, so replicas recover by
themselves when the server returns.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from serving.stores.contract import (
    POSTGRES,
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
    stored_video,
)
from serving.stores.migrations import migrate

T = TypeVar("T")

#: advisory lock id serialising migrations between replicas starting together
_SCHEMA_LOCK = 0x7EC5
#: advisory lock id serialising snapshot saves against erasures
_SNAPSHOT_LOCK = 0x7EC6


class PostgresStore:
    """Sequence numbers are taken at insert and rows become visible at commit, so a row
    can appear after rows with higher numbers, however late. Each row therefore carries
    the id of the transaction that wrote it (``xid``), and a read's horizon is the oldest
    transaction still running when it began (``pg_snapshot_xmin``): every transaction
    below it has ended, so every row below it is visible to that read. A follower asks
    for rows at or above its horizon: nothing is missed, and at idle nothing is read."""

    def __init__(self, url: str, connect_timeout_s: float = 3.0) -> None:
        try:
            import psycopg
        except ImportError:
            from recsys.errors import UserInputError

            raise UserInputError(
                "a postgresql:// state store needs psycopg (pip install 'psycopg[binary]')"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self._timeout = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None
        self._run(self._create_schema)

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(
                self.url, connect_timeout=max(1, int(self._timeout)), autocommit=False
            )
        return self._conn

    def _run(self, fn: Callable[[Any], T], own_connection: bool = False) -> T:
        """Run ``fn(connection)`` in one transaction; connection errors -> StoreUnavailable.
        ``own_connection``: on a connection of its own, closed after (libpq keeps its
        input buffer at the size of the largest row received for the connection's life:
        a snapshot of tens of MB read once would stay resident twice over)."""
        with self._lock:
            try:
                if own_connection:
                    with (
                        self._psycopg.connect(
                            self.url, connect_timeout=max(1, int(self._timeout)), autocommit=False
                        ) as conn,
                        conn.transaction(),
                    ):
                        return fn(conn)
                conn = self._connect()
                with conn.transaction():
                    return fn(conn)
            except self._psycopg.DatabaseError as exc:  # unreachable, disk full, read-only
                if self._conn is not None:
                    with contextlib.suppress(Exception):  # already broken
                        self._conn.close()
                self._conn = None
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no connection"
                raise StoreUnavailable(f"state store unavailable: {first}") from None

    @staticmethod
    def _create_schema(conn: Any) -> None:
        """The schema's missing migrations (``serving.stores.migrations``), one replica at a
        time; a store made before the commit-order key gets it (old rows: one key)."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        migrate(conn.execute, POSTGRES)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ping(self) -> None:
        self._run(lambda c: c.execute("SELECT 1"))

    def probe_write(self) -> None:
        def probe(c: Any) -> None:
            c.execute(POSTGRES.probe_insert, (bytes(WRITE_PROBE_BYTES),))
            c.execute("DELETE FROM write_probe")

        self._run(probe)

    # ------------------------------------------------------------------ interface

    def get_video(self, video_id: str) -> StoredVideo | None:
        return stored_video(
            self._run(lambda c: c.execute(POSTGRES.get_video, (video_id,)).fetchone())
        )

    def insert_video(
        self, video_id: str, payload_sha256: str, embedding: np.ndarray, num_frames: int
    ) -> Stamp | None:
        data = blob(embedding)
        row = self._run(
            lambda c: c.execute(
                "INSERT INTO videos (video_id, payload_sha256, embedding, num_frames) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (video_id) DO NOTHING RETURNING seq, xid",
                (video_id, payload_sha256, data, num_frames),
            ).fetchone()
        )
        return None if row is None else Stamp(int(row[0]), int(row[1]))

    def insert_watch(self, w: Watch) -> Stamp:
        row = self._run(
            lambda c: c.execute(
                POSTGRES.insert_watch + " RETURNING seq, xid",
                (w.user_id, w.video_id, w.watch_seconds, w.at),
            ).fetchone()
        )
        return Stamp(int(row[0]), int(row[1]))

    def insert_impressions(self, rows: list[Impression]) -> list[Stamp | None]:
        def insert(c: Any) -> list[Stamp | None]:
            if not rows:
                return []
            # One statement for the batch (a round trip a row cost most of its time). The
            # rows go in input order, so the k-th row inserted got the k-th sequence
            # number; a retried event_id (stored before, or twice in the batch) inserts
            # nothing and returns no row.
            got = c.execute(
                "INSERT INTO impressions (event_id, user_id, video_id, shown_at, watch_seconds) "
                "SELECT e, u, v, s, w FROM unnest(%s::text[], %s::text[], %s::text[], "
                "%s::text[], %s::float8[]) WITH ORDINALITY AS t(e, u, v, s, w, i) ORDER BY i "
                "ON CONFLICT (event_id) DO NOTHING RETURNING seq, xid, event_id",
                (
                    [r.event_id for r in rows],
                    [r.user_id for r in rows],
                    [r.video_id for r in rows],
                    [r.shown_at for r in rows],
                    [r.watch_seconds for r in rows],
                ),
            ).fetchall()
            new_events = {e for _, _, e in got if e is not None}
            stamps = iter(sorted((int(q), int(x)) for q, x, _ in got))
            out: list[Stamp | None] = []
            for r in rows:
                fresh = r.event_id is None or r.event_id in new_events
                if r.event_id is not None:
                    new_events.discard(r.event_id)  # a second copy in the batch: a retry
                out.append(Stamp(*next(stamps)) if fresh else None)
            return out

        return self._run(insert)

    def changes(self, since: dict[str, int], limit: int | None = None) -> Changes:
        def read(c: Any) -> Changes:
            # The horizon first: every transaction below it ended before the reads below
            # began (each statement sees what committed before it started).
            (xmin,) = c.execute(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
            ).fetchone()
            if limit is not None:
                cut = _cut(c, since, int(xmin), limit)
                if cut is not None:
                    return cut
            rows = [
                c.execute(sql, (since.get(t, 0),)).fetchall()
                for sql, t in zip(POSTGRES.changes, TABLES, strict=True)
            ]
            horizon = {t: max(int(xmin), since.get(t, 0)) for t in TABLES}
            return changes_from_rows(rows, horizon)

        return self._run(read)

    def remove_video(self, video_id: str) -> Stamp:
        # As on SQLite, an ingested video's row stays; the record hides it on replay.
        return self._run(lambda c: _removal(c, (), "video", video_id))

    def erase_user(self, user_id: str) -> Stamp:
        def erase(c: Any) -> Stamp:
            # After any snapshot being saved, before any later one (the same lock): every
            # snapshot that may hold the user goes, and none is saved without the erasure.
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_SNAPSHOT_LOCK,))
            c.execute(POSTGRES.DROP_SNAPSHOTS)
            return _removal(c, POSTGRES.erase, "user", user_id)

        return self._run(erase)

    def save_snapshot(
        self, artifact_version: str, body: bytes, removals_from: int, applied: list[int]
    ) -> bool:
        def save(c: Any) -> bool:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_SNAPSHOT_LOCK,))
            erasures = {r[0] for r in c.execute(POSTGRES.unapplied_erasures, (removals_from,))}
            if erasures - set(applied):
                return False
            (seq,) = c.execute(
                POSTGRES.insert_snapshot + " RETURNING seq", (artifact_version, body)
            ).fetchone()
            c.execute(POSTGRES.prune_snapshots, (artifact_version, seq))
            return True

        return self._run(save)

    def latest_snapshot(self, artifact_version: str) -> bytes | None:
        def read(c: Any) -> Any:
            with c.cursor(binary=True) as cur:  # the bytes as stored, not hex text
                return cur.execute(POSTGRES.latest_snapshot, (artifact_version,)).fetchone()

        row = self._run(read, own_connection=True)
        return None if row is None else bytes(row[0])

    def user_rows(self, user_id: str) -> Changes:
        def read(c: Any) -> Changes:
            w, i = (c.execute(sql, (user_id,)).fetchall() for sql in POSTGRES.user_rows)
            return changes_from_rows([[], w, i, []], horizon={})

        return self._run(read)

    def archive_mark(self) -> int:
        return int(self._run(lambda c: c.execute(POSTGRES.ARCHIVE_MARK).fetchone()[0]))

    def impression_seqs_between(self, lo: int, hi: int) -> list[int] | None:
        return None  # transaction ids: a later commit can still land below hi

    def archive_chunk(
        self, below: int, after_seq: int, limit: int
    ) -> list[tuple[Stamp, Impression]]:
        got = self._run(
            lambda c: c.execute(POSTGRES.archive_rows, (below, after_seq, limit)).fetchall()
        )
        return changes_from_rows([[], [], got, []], horizon={}).impressions

    def order_keeping(self, newest: int) -> int | None:
        row = self._run(lambda c: c.execute(POSTGRES.newest_order, (newest,)).fetchone())
        return None if row is None else int(row[0]) + 1

    def drop_archived(self, mark: int, below: int) -> bool:
        move, delete = POSTGRES.drop_archived

        def drop(c: Any) -> bool:
            if c.execute(move, (below, mark)).rowcount != 1:
                return False
            c.execute(delete, (below,))
            return True

        return self._run(drop)

    def counts(self) -> tuple[int, int]:
        def count(c: Any) -> tuple[int, int]:
            v, w = (int(c.execute(sql).fetchone()[0]) for sql in POSTGRES.COUNTS)
            return v, w

        return self._run(count)


def _cut(c: Any, since: dict[str, int], xmin: int, limit: int) -> Changes | None:
    """A read of at most about ``limit`` impressions, cut at a transaction id below the
    horizon (``xmin``), or None when the rows up to the horizon are fewer (read whole).

    Transaction ids commit out of order, but every transaction below ``xmin`` has ended,
    so the rows of every table with ``since <= xid < cut <= xmin`` are final: the next
    read starts at ``cut``. A cut falls between transactions; when the first one alone
    holds ``limit`` impressions (one batch, bounded by the batch limit) it is read whole."""
    lo = since.get("impressions", 0)
    below, imp_below = POSTGRES.changes_below, TABLES.index("impressions")
    got = c.execute(below[imp_below], (lo, xmin, limit)).fetchall()
    if len(got) < limit:
        return None
    first, cut = int(got[0][1]), int(got[-1][1])
    if cut == first:  # one transaction's rows: all of them
        cut = first + 1
        got = c.execute(below[imp_below], (lo, cut, None)).fetchall()
    else:
        got = [r for r in got if int(r[1]) < cut]
    rows = [
        got if t == "impressions" else c.execute(sql, (since.get(t, 0), cut)).fetchall()
        for sql, t in zip(below, TABLES, strict=True)
    ]
    out = changes_from_rows(rows, {t: max(cut, since.get(t, 0)) for t in TABLES})
    out.more = True
    return out


def _removal(c: Any, deletes: tuple[str, ...], kind: str, target: str) -> Stamp:
    """In one transaction: the deletes (each with ``target``), then the removal's record."""
    for sql in deletes:
        c.execute(sql, (target,))
    seq, xid = c.execute(POSTGRES.insert_removal + " RETURNING seq, xid", (kind, target)).fetchone()
    return Stamp(int(seq), int(xid))
