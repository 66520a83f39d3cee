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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.durable import fsync_dir, fsync_file
from recsys.errors import UserInputError
from serving.stores import Changes, Impression, StateStore
from serving.stores.contract import TABLES, Stamp

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

    def read(
        self, since: int, below: int, limit: int | None = None
    ) -> tuple[list[tuple[Stamp, Impression]], int]:
        """The archived impressions with a key in [since, cut), in key then sequence order,
        and ``cut`` (a replica behind the watermark, or replaying without a snapshot).

        With ``limit``, about that many rows: whole row groups are read (a run writes one
        per ``CHUNK_ROWS``), taken by their smallest key, and ``cut`` is the smallest key
        of the first group not taken, so every row below it has been read and a key is
        never split; without, ``cut`` is ``below``. Row groups are chosen by their
        ``log_order`` statistics, so memory is bounded by the limit and a group, not by
        the archive."""
        groups = self._groups(since, below)
        taken: dict[Path, list[int]] = {}
        count, cut = 0, below
        for low, rows, path, index in groups:
            if limit is not None and count >= limit and low > since:
                cut = low
                break
            taken.setdefault(path, []).append(index)
            count += rows
        out: list[tuple[Stamp, Impression]] = []
        for path, indices in taken.items():
            t = pq.ParquetFile(path).read_row_groups(indices)
            key = t.column("log_order")
            out += _rows(t.filter(pc.and_(pc.greater_equal(key, since), pc.less(key, cut))))
        out.sort(key=lambda r: (r[0].order, r[0].seq))
        return out, cut

    def _groups(self, since: int, below: int) -> list[tuple[int, int, Path, int]]:
        """(smallest key, rows, file, index) of the row groups that may hold a key in
        [since, below), by smallest key (a group without statistics: its file's range)."""
        out = []
        for lo, hi, path in self.parts():
            if hi <= since or lo >= below:
                continue
            meta = pq.ParquetFile(path).metadata
            column = meta.schema.to_arrow_schema().get_field_index("log_order")
            for index in range(meta.num_row_groups):
                group = meta.row_group(index)
                stats = group.column(column).statistics
                low, high = (
                    (int(stats.min), int(stats.max))
                    if stats is not None and stats.has_min_max
                    else (lo, hi - 1)
                )
                if high >= since and low < below and group.num_rows:
                    out.append((low, group.num_rows, path, index))
        return sorted(out, key=lambda g: g[0])

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
    changes: Changes,
    store: StateStore,
    archive: LogArchive | None,
    since: dict[str, int],
    limit: int | None = None,
) -> None:
    """Add the archived impressions at or above the reader's impressions horizon to
    ``changes``, read from the store just before (rows archived since are in the archive,
    and a row in both is applied once). With ``limit``, about that many: the read stops
    at a cut key, and every table's rows at or above it are left for the next read (the
    four tables are applied in key order, so none may run ahead of the impressions)."""
    mark = store.archive_mark()
    start = since.get("impressions", 0)
    if mark <= start:
        return
    if archive is None:
        raise UserInputError(
            f"the state store's impressions below log key {mark} were archived and this "
            "replica has no archive: set RECSYS_ARCHIVE_DIR to the archive's directory"
        )
    rows, cut = archive.read(start, mark, limit)
    if cut >= mark:
        changes.impressions = rows + changes.impressions
        changes.horizon["impressions"] = max(changes.horizon.get("impressions", 0), mark)
        return
    changes.videos = [r for r in changes.videos if r[0].order < cut]
    changes.watches = [r for r in changes.watches if r[0].order < cut]
    changes.removals = [r for r in changes.removals if r[0].order < cut]
    changes.impressions = rows  # the store holds none below the watermark
    # Every impression below the cut is in this read (the store holds none below the
    # watermark, which lies below a snapshot's horizon: final); the other tables keep
    # the store's horizon, held back to the cut, since their rows above it wait.
    for table in TABLES:
        held = cut if table == "impressions" else min(changes.horizon.get(table, 0), cut)
        changes.horizon[table] = max(since.get(table, 0), held)
    changes.more = True
