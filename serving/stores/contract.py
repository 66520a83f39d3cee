"""What the service needs from durable storage, and the SQL both stores share.

Every row has a sequence number (its name) and a commit-order key (its place): on
PostgreSQL the id of the transaction that wrote it, on SQLite, whose writers take turns,
the sequence number itself. A replica applies its own writes at once and follows the
others' through ``changes`` (polled): rows whose key is at or above a per-table horizon,
with the new horizon, below which every row was visible to that read
(``serving.log.follower``). So every committed row reaches every replica once, whatever
the order transactions commit in, and all replicas converge on the same state: the
in-memory index, histories and online user effects are derived from the artifact plus
this log, and rebuilt from it on start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np


class StoreUnavailable(Exception):
    """The store cannot be reached (HTTP 503 with Retry-After; the replica is not ready)."""


TABLES = ("videos", "watches", "impressions", "removals")
#: a write probe's size: more than a page, so it needs space the store does not have free
WRITE_PROBE_BYTES = 8192


class Stamp(NamedTuple):
    """A written row: its sequence number and its commit-order key."""

    seq: int
    order: int


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


@dataclass(frozen=True)
class Removal:
    """A takedown (``kind`` "video": never recommend or show it again) or an erasure
    ("user": their watches and impressions are deleted with it; replicas forget them)."""

    kind: str
    target: str


@dataclass
class Changes:
    """Rows whose commit-order key is at or above the asked horizons, per table, in
    sequence order; ``horizon``: per table, a key below which every row committed before
    this read (so it is in this read or an earlier one)."""

    videos: list[tuple[Stamp, StoredVideo]] = field(default_factory=list)
    watches: list[tuple[Stamp, Watch]] = field(default_factory=list)
    impressions: list[tuple[Stamp, Impression]] = field(default_factory=list)
    removals: list[tuple[Stamp, Removal]] = field(default_factory=list)
    horizon: dict[str, int] = field(default_factory=dict)
    #: a read cut at its ``limit``: more rows wait above the horizon
    more: bool = False

    def __len__(self) -> int:
        return len(self.videos) + len(self.watches) + len(self.impressions) + len(self.removals)


class StateStore(Protocol):
    """What the service needs from durable storage. Inserts return the rows' stamps."""

    def close(self) -> None: ...
    def get_video(self, video_id: str) -> StoredVideo | None: ...
    def insert_video(
        self, video_id: str, payload_sha256: str, embedding: np.ndarray, num_frames: int
    ) -> Stamp | None: ...
    def insert_watch(self, w: Watch) -> Stamp: ...
    def insert_impressions(self, rows: list[Impression]) -> list[Stamp | None]: ...
    def changes(self, since: dict[str, int], limit: int | None = None) -> Changes:
        """Rows at or above ``since`` per table; with ``limit``, a store may stop after
        that many impressions (every row of every table below the cut is in the read,
        ``more`` says rows remain)."""
        ...

    def remove_video(self, video_id: str) -> Stamp:
        """Record a takedown (an ingested video's row stays; the record hides it)."""

    def erase_user(self, user_id: str) -> Stamp:
        """Delete the user's watches and impressions and record the erasure, atomically."""

    def user_rows(self, user_id: str) -> Changes:
        """The user's watches and impressions now stored (after an erasure: only what
        was written after it)."""

    def probe_write(self) -> None:
        """Commit a write that needs fresh space (and take it back); raises
        ``StoreUnavailable`` while writes fail (disk full, read-only, server down)."""

    def counts(self) -> tuple[int, int]: ...

    def archive_mark(self) -> int:
        """Impressions with a commit-order key below this were archived (0: none)."""

    def impression_seqs_between(self, lo: int, hi: int) -> list[int] | None:
        """The sequence numbers of the impressions with a key in [lo, hi); None where
        keys do not rise as rows commit (PostgreSQL's transaction ids), so that a range
        below a key says nothing about what commits later."""

    def archive_chunk(
        self, below: int, after_seq: int, limit: int
    ) -> list[tuple[Stamp, Impression]]:
        """Up to ``limit`` impressions with a key below ``below`` and a sequence number
        above ``after_seq``, in sequence order."""

    def order_keeping(self, newest: int) -> int | None:
        """A key such that the ``newest`` most recent impressions are at or above it (None:
        there are not more than that many)."""

    def drop_archived(self, mark: int, below: int) -> bool:
        """Delete the impressions below ``below`` and record it as the watermark, if the
        watermark is still ``mark`` (False, nothing done: another archiver moved it)."""

    def save_snapshot(
        self, artifact_version: str, body: bytes, removals_from: int, applied: list[int]
    ) -> bool:
        """Store a snapshot of the state derived from the log (``serving.log.snapshot``) and
        drop the older ones of the artifact version. False, nothing written, when a user
        erasure it has not applied is stored (one at or above ``removals_from``, the
        snapshot's commit-order horizon, and not among ``applied``): it predates the
        erasure and must not outlive it. Erasures delete every snapshot."""

    def latest_snapshot(self, artifact_version: str) -> bytes | None:
        """The newest snapshot of the artifact version, or None."""


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


def changes_from_rows(rows: list[Any], horizon: dict[str, int]) -> Changes:
    """``Changes`` from the rows of ``Dialect.changes``' queries (``TABLES`` order), in
    their column order: (seq, order, video_id, payload_sha256, embedding, num_frames),
    (seq, order, user_id, video_id, watch_seconds, at), (seq, order, event_id, user_id,
    video_id, shown_at, watch_seconds), (seq, order, kind, target)."""
    videos, watches, impressions, removals = rows
    return Changes(
        [(_stamp(r), StoredVideo(r[2], r[3], vector(r[4]), r[5])) for r in videos],
        [(_stamp(r), Watch(r[2], r[3], float(r[4]), r[5])) for r in watches],
        [(_stamp(r), Impression(r[3], r[4], r[5], float(r[6]), r[2])) for r in impressions],
        [(_stamp(r), Removal(r[2], r[3])) for r in removals],
        horizon,
    )


def _stamp(row: Any) -> Stamp:
    return Stamp(int(row[0]), int(row[1]))


def next_horizon(changes: Changes, since: dict[str, int]) -> dict[str, int]:
    """Where the next read starts when rows commit in sequence order (SQLite): past the
    newest row read, per table."""
    out = dict(since)
    tables: tuple[list[Any], ...] = (
        changes.videos,
        changes.watches,
        changes.impressions,
        changes.removals,
    )
    for table, rows in zip(TABLES, tables, strict=True):
        if rows:
            out[table] = max(out.get(table, 0), max(s.order for s, _ in rows) + 1)
    return out


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
CREATE TABLE IF NOT EXISTS removals (
    seq {serial},
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    at {now}
);
CREATE TABLE IF NOT EXISTS write_probe (
    payload {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS watches (
    seq {serial},
    user_id TEXT NOT NULL,
    video_id TEXT NOT NULL,
    watch_seconds {real} NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS watches_user ON watches (user_id);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions (user_id);
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
    #: how each table's commit-order key is read (``migrations``: PostgreSQL's ``xid``
    #: column; SQLite's sequence number)
    video_order: str
    order: str
    #: each table's commit-order key rises with its sequence number (SQLite's log
    #: position; 0 on rows from before it existed), so ``ORDER BY key, seq`` is sequence
    #: order and the key's index serves a read of the log's tail without a sort (ordered
    #: by the sequence alone, SQLite walked every row of the table on each poll)
    order_follows_seq: bool = False
    #: SQLite: each table's per-user index is on (log position >> this, user_id), so a
    #: batch's inserts land in the newest positions' few pages (on user_id alone they
    #: land on a random page each: a 1,000-impression batch wrote about a thousand index
    #: pages, 33 ms against 4 at a million stored); a user's rows are then found by one
    #: index search per range of 2^shift positions (about 1 ms at a million)
    user_shift: int | None = None

    @property
    def tables(self) -> str:
        """The tables as the first migration creates them (``serving.stores.migrations``)."""
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
    def changes(self) -> tuple[str, str, str, str]:
        """The videos, watches, impressions and removals at or above a commit-order key,
        in sequence order (``TABLES`` order)."""
        p, v, vo, o = self.param, self.video_seq, self.video_order, self.order
        by_video, by = (f"{vo}, {v}", f"{o}, seq") if self.order_follows_seq else (v, "seq")
        return (
            f"SELECT {v}, {vo}, video_id, payload_sha256, embedding, num_frames FROM videos "
            f"WHERE {vo} >= {p} ORDER BY {by_video}",
            f"SELECT seq, {o}, user_id, video_id, watch_seconds, at FROM watches "
            f"WHERE {o} >= {p} ORDER BY {by}",
            f"SELECT seq, {o}, event_id, user_id, video_id, shown_at, watch_seconds "
            f"FROM impressions WHERE {o} >= {p} ORDER BY {by}",
            f"SELECT seq, {o}, kind, target FROM removals WHERE {o} >= {p} ORDER BY {by}",
        )

    @property
    def changes_below(self) -> tuple[str, str, str, str]:
        """``changes`` cut at a key: rows with ``lo <= key < hi`` (two parameters), in
        key then sequence order; the impressions query also takes a ``LIMIT``."""
        p, v, vo, o = self.param, self.video_seq, self.video_order, self.order
        return (
            f"SELECT {v}, {vo}, video_id, payload_sha256, embedding, num_frames FROM videos "
            f"WHERE {vo} >= {p} AND {vo} < {p} ORDER BY {vo}, {v}",
            f"SELECT seq, {o}, user_id, video_id, watch_seconds, at FROM watches "
            f"WHERE {o} >= {p} AND {o} < {p} ORDER BY {o}, seq",
            f"SELECT seq, {o}, event_id, user_id, video_id, shown_at, watch_seconds "
            f"FROM impressions WHERE {o} >= {p} AND {o} < {p} ORDER BY {o}, seq LIMIT {p}",
            f"SELECT seq, {o}, kind, target FROM removals "
            f"WHERE {o} >= {p} AND {o} < {p} ORDER BY {o}, seq",
        )

    @property
    def user_rows(self) -> tuple[str, str]:
        """``changes``' watches and impressions queries for one user."""
        o = self.order
        return (
            self._of_user("watches", f"seq, {o}, user_id, video_id, watch_seconds, at"),
            self._of_user(
                "impressions", f"seq, {o}, event_id, user_id, video_id, shown_at, watch_seconds"
            ),
        )

    @property
    def erase(self) -> tuple[str, str]:
        return self._erase_user("watches"), self._erase_user("impressions")

    def _erase_user(self, table: str) -> str:
        if self.user_shift is None:
            return f"DELETE FROM {table} WHERE user_id = {self.param}"
        return f"DELETE FROM {table} WHERE seq IN ({self._of_user(table, 'seq', ordered=False)})"

    def _of_user(self, table: str, columns: str, ordered: bool = True) -> str:
        """The ``columns`` of ``table``'s rows of one user (one parameter), in sequence
        order when ``ordered``: through the (position range, user) index when the store
        has one, a search per range from the oldest row's to the newest's."""
        order = f" ORDER BY {table}.seq" if ordered else ""
        if self.user_shift is None:
            return f"SELECT {columns} FROM {table} WHERE user_id = {self.param}{order}"
        s = self.user_shift
        return (
            f"WITH RECURSIVE k(b) AS (SELECT (SELECT MIN(pos) FROM {table}) >> {s} "
            f"UNION ALL SELECT b + 1 FROM k WHERE b < (SELECT MAX(pos) FROM {table}) >> {s}) "
            f"SELECT {columns} FROM k CROSS JOIN {table} "
            f"ON ({table}.pos >> {s}) = k.b AND {table}.user_id = {self.param}{order}"
        )

    @property
    def unapplied_erasures(self) -> str:
        """Sequence numbers of user erasures at or above a commit-order key."""
        return f"SELECT seq FROM removals WHERE kind = 'user' AND {self.order} >= {self.param}"

    @property
    def insert_snapshot(self) -> str:
        p = self.param
        return f"INSERT INTO snapshots (artifact_version, body) VALUES ({p}, {p})"

    @property
    def prune_snapshots(self) -> str:
        """Older snapshots of an artifact version than a sequence number."""
        p = self.param
        return f"DELETE FROM snapshots WHERE artifact_version = {p} AND seq < {p}"

    @property
    def latest_snapshot(self) -> str:
        return (
            "SELECT body FROM snapshots WHERE artifact_version = "
            f"{self.param} ORDER BY seq DESC LIMIT 1"
        )

    DROP_SNAPSHOTS = "DELETE FROM snapshots"

    ARCHIVE_MARK = "SELECT below FROM log_archive"

    @property
    def impressions_between(self) -> str:
        p, o = self.param, self.order
        return f"SELECT seq FROM impressions WHERE {o} >= {p} AND {o} < {p}"

    @property
    def archive_rows(self) -> str:
        """A chunk of impressions below a commit-order key, after a sequence number, in
        sequence order (what ``archive_chunk`` reads)."""
        p, o = self.param, self.order
        return (
            f"SELECT seq, {o}, event_id, user_id, video_id, shown_at, watch_seconds "
            f"FROM impressions WHERE {o} < {p} AND seq > {p} ORDER BY seq LIMIT {p}"
        )

    @property
    def newest_order(self) -> str:
        """The commit-order key of the impression ``OFFSET`` rows from the newest."""
        o = self.order
        return f"SELECT {o} FROM impressions ORDER BY {o} DESC LIMIT 1 OFFSET {self.param}"

    @property
    def drop_archived(self) -> tuple[str, str]:
        """Move the watermark (only from where the archiver found it), then delete."""
        p, o = self.param, self.order
        return (
            f"UPDATE log_archive SET below = {p} WHERE below = {p}",
            f"DELETE FROM impressions WHERE {o} < {p}",
        )

    @property
    def insert_removal(self) -> str:
        p = self.param
        return f"INSERT INTO removals (kind, target) VALUES ({p}, {p})"

    COUNTS = ("SELECT count(*) FROM videos", "SELECT count(*) FROM watches")

    @property
    def probe_insert(self) -> str:
        return f"INSERT INTO write_probe (payload) VALUES ({self.param})"


SQLITE = Dialect(
    param="?",
    video_seq="rowid",
    video_key="video_id TEXT PRIMARY KEY",
    serial="INTEGER PRIMARY KEY AUTOINCREMENT",
    blob="BLOB",
    real="REAL",
    now="TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    video_order="pos",
    order="pos",
    order_follows_seq=True,
    user_shift=12,
)
POSTGRES = Dialect(
    param="%s",
    video_seq="seq",
    video_key="seq BIGSERIAL PRIMARY KEY,\n    video_id TEXT NOT NULL UNIQUE",
    serial="BIGSERIAL PRIMARY KEY",
    blob="BYTEA",
    real="DOUBLE PRECISION",
    now="TIMESTAMPTZ NOT NULL DEFAULT now()",
    video_order="xid",
    order="xid",
)
