"""The impression log's archive: old impressions moved out of the state store into Parquet
files, which replicas and the offline jobs read.

Layout: ``ROOT/impressions.parquet/`` is a directory of Parquet files, one per archiving
run, named ``part-<lo>-<hi>.parquet`` by the commit-order keys [lo, hi) they cover, with
the data contract's impression columns (``docs/data.md``: ``user_id``, ``video_id``,
``shown_at``, ``watch_seconds``) plus ``event_id``, ``seq`` and ``log_order``. Spark reads
the directory as it is, and so do the offline jobs (``pipelines.data.impressions``).

A run (``archive_log``) never loses an acknowledged event: it moves only rows below the
newest snapshot's horizon (the state they built is in the snapshot), writes and fsyncs
the file under a temporary name and renames it before the store deletes the rows and
moves its watermark in one transaction. A run that dies in between leaves a file whose
``lo`` is the watermark; the next run discards it (its rows are still in the store).
One run at a time, and no run beside an erasure: both hold ``ROOT/.lock`` (``flock``;
replicas on other hosts need a shared file system where ``flock`` works).

An erasure rewrites every file that holds the user before the store deletes the rest
(``ServingState.erase``). A retried ``event_id`` is recognised while its first copy is
in the store: archive rows older than any retry can arrive.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.durable import fsync_dir, fsync_file
from recsys.errors import UserInputError
from serving.stores import Changes, Impression, StateStore
from serving.stores.contract import Stamp

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("video_id", pa.string()),
        ("shown_at", pa.timestamp("us", tz="UTC")),
        ("watch_seconds", pa.float64()),
        ("event_id", pa.string()),
        ("seq", pa.int64()),
        ("log_order", pa.int64()),
    ]
)
#: impressions read from the store at a time while archiving (bounded memory)
CHUNK_ROWS = 50_000
_PART = re.compile(r"part-(\d+)-(\d+)\.parquet$")


class LogArchive:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "impressions.parquet"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The archive to this caller alone (archiving runs and erasures, all replicas)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def parts(self) -> list[tuple[int, int, Path]]:
        """(lo, hi, path) of every file, by ``lo``."""
        if not self.dir.is_dir():
            return []
        got = [(m, p) for p in self.dir.iterdir() if (m := _PART.fullmatch(p.name))]
        return sorted((int(m.group(1)), int(m.group(2)), p) for m, p in got)

    def discard_uncommitted(self, mark: int) -> None:
        """Remove files a run wrote but the store never recorded (``lo`` >= the watermark)."""
        for lo, _, path in self.parts():
            if lo >= mark:
                log.warning("archive: discarding %s (its run did not finish)", path.name)
                path.unlink()

    def write(self, chunks: Iterator[list[tuple[Stamp, Impression]]], lo: int, hi: int) -> int:
        """Write one file of the chunks' rows, durably; returns how many."""
        final = self.dir / f"part-{lo:020d}-{hi:020d}.parquet"
        tmp = final.with_suffix(".tmp")
        n = 0
        with pq.ParquetWriter(tmp, SCHEMA) as out:
            for rows in chunks:
                out.write_table(_table(rows))
                n += len(rows)
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(self.dir)
        return n

    def read(self, since: int, below: int) -> list[tuple[Stamp, Impression]]:
        """The archived impressions with a key in [since, below), in key then sequence
        order (a replica that is behind the watermark, or replays without a snapshot)."""
        out: list[tuple[Stamp, Impression]] = []
        for lo, hi, path in self.parts():
            if hi <= since or lo >= below:
                continue
            t = pq.read_table(path)
            keep = [since <= k < below for k in t.column("log_order").to_pylist()]
            out += _rows(t.filter(pa.array(keep, pa.bool_())))
        out.sort(key=lambda r: (r[0].order, r[0].seq))
        return out

    def erase_user(self, user_id: str) -> int:
        """Rewrite every file holding ``user_id`` without their rows (caller holds the
        lock); returns the rows removed."""
        removed = 0
        for _, _, path in self.parts():
            users = pq.read_table(path, columns=["user_id"]).column("user_id").to_pylist()
            drop = [u == user_id for u in users]
            if not any(drop):
                continue
            t = pq.read_table(path).filter(pa.array([not d for d in drop], pa.bool_()))
            tmp = path.with_suffix(".tmp")
            pq.write_table(t, tmp)
            fsync_file(tmp)
            os.replace(tmp, path)
            removed += sum(drop)
        if removed:
            fsync_dir(self.dir)
        return removed


def archive_log(store: StateStore, archive: LogArchive, covered_below: int, keep: int) -> int:
    """Move the impressions below ``covered_below`` (a snapshot's impressions horizon:
    its state holds them) that are not among the ``keep`` newest into the archive;
    returns how many moved."""
    with archive.locked():
        mark = store.archive_mark()
        archive.discard_uncommitted(mark)
        keeping = store.order_keeping(keep)
        if keeping is None:
            return 0
        below = min(covered_below, keeping)
        if below <= mark:
            return 0

        def chunks() -> Iterator[list[tuple[Stamp, Impression]]]:
            after = 0
            while rows := store.archive_chunk(below, after, CHUNK_ROWS):
                yield rows
                after = rows[-1][0].seq

        n = archive.write(chunks(), mark, below)
        if not store.drop_archived(mark, below):  # cannot happen under the lock
            raise RuntimeError("archive: the store's watermark moved during a run")
        return n


def _table(rows: list[tuple[Stamp, Impression]]) -> pa.Table:
    shown = pd.to_datetime([i.shown_at for _, i in rows], utc=True, format="ISO8601")
    return pa.table(
        {
            "user_id": [i.user_id for _, i in rows],
            "video_id": [i.video_id for _, i in rows],
            "shown_at": pa.array(shown.as_unit("us"), pa.timestamp("us", tz="UTC")),
            "watch_seconds": [i.watch_seconds for _, i in rows],
            "event_id": [i.event_id for _, i in rows],
            "seq": [s.seq for s, _ in rows],
            "log_order": [s.order for s, _ in rows],
        },
        schema=SCHEMA,
    )


def _rows(t: pa.Table) -> list[tuple[Stamp, Impression]]:
    cols = {name: t.column(name).to_pylist() for name in SCHEMA.names}
    return [
        (Stamp(seq, order), Impression(u, v, shown.isoformat(), float(w), e))
        for u, v, shown, w, e, seq, order in zip(*(cols[n] for n in SCHEMA.names), strict=True)
    ]


def add_archived(
    changes: Changes, store: StateStore, archive: LogArchive | None, since: int
) -> None:
    """Add the archived impressions at or above ``since`` (the reader's impressions
    horizon) to ``changes``, read from the store just before (rows archived since are in
    the archive, and a row in both is applied once)."""
    mark = store.archive_mark()
    if mark <= since:
        return
    if archive is None:
        raise UserInputError(
            f"the state store's impressions below log key {mark} were archived and this "
            "replica has no archive: set RECSYS_ARCHIVE_DIR to the archive's directory"
        )
    changes.impressions = archive.read(since, mark) + changes.impressions
    changes.horizon["impressions"] = max(changes.horizon.get("impressions", 0), mark)
