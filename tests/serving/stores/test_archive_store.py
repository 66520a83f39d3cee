"""The archive's store side on both stores: the watermark, chunks below a key, the key
that keeps the newest rows, and the move that deletes only from where it was found."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.log.archive import LogArchive, archive_log
from serving.stores import Impression, StateStore

pytestmark = pytest.mark.xdist_group("postgres")


def _batch(start: int, n: int) -> list[Impression]:
    return [
        Impression(f"u{i % 3}", f"v{i}", "2030-01-01T00:00:00+00:00", float(i), f"e{i}")
        for i in range(start, start + n)
    ]


def test_chunks_keys_and_the_guarded_move(store: StateStore) -> None:
    assert store.archive_mark() == 0
    assert store.order_keeping(0) is None  # an empty log keeps everything
    stamps = [s for b in range(4) for s in store.insert_impressions(_batch(10 * b, 10))]
    assert all(s is not None for s in stamps)
    top = max(s.order for s in stamps if s is not None)
    assert store.order_keeping(0) == top + 1  # keep nothing: every row is below
    assert store.order_keeping(40) is None
    cut = store.order_keeping(10)
    assert cut is not None
    below = [s for s in stamps if s is not None and s.order < cut]
    assert len(below) >= 30 - 10  # PostgreSQL: a batch shares its key
    got, after = [], 0
    while rows := store.archive_chunk(cut, after, 7):
        got += rows
        after = rows[-1][0].seq
    assert [s.seq for s, _ in got] == sorted(s.seq for s in below)
    assert not store.drop_archived(5, cut)  # not where the archiver found it: nothing
    assert store.archive_mark() == 0
    assert store.drop_archived(0, cut) and store.archive_mark() == cut
    assert store.archive_chunk(cut, 0, 100) == []


def test_archive_log_moves_what_the_snapshot_covers(store: StateStore, tmp_path: Path) -> None:
    stamps = [s for b in range(3) for s in store.insert_impressions(_batch(10 * b, 10))]
    covered = max(s.order for s in stamps if s is not None) + 1
    archive = LogArchive(tmp_path / "archive")
    moved = archive_log(store, archive, covered, keep=0)
    assert moved == 30 and store.archive_mark() == covered
    back, cut = archive.read(0, covered)
    assert cut == covered
    assert [(s.seq, i.event_id, i.watch_seconds) for s, i in back] == sorted(
        (s.seq, f"e{k}", float(k)) for k, s in enumerate(stamps) if s is not None
    )
    assert archive.read(covered, covered + 10) == ([], covered + 10)
    assert archive_log(store, archive, covered, keep=0) == 0


def test_the_archive_is_read_in_cuts_of_whole_keys(
    store: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups of 4 (a run writes one per ``CHUNK_ROWS``), read about 5 rows at a time:
    the cuts rise, each read holds at most the limit and a group, and together they are
    the whole read in order (PostgreSQL: a batch of 7 shares one key, across groups)."""
    import serving.log.archive

    monkeypatch.setattr(serving.log.archive, "CHUNK_ROWS", 4)
    stamps = [s for b in range(5) for s in store.insert_impressions(_batch(10 * b, 7))]
    covered = max(s.order for s in stamps if s is not None) + 1
    archive = LogArchive(tmp_path / "archive")
    assert archive_log(store, archive, covered, keep=0) == 35
    whole, _ = archive.read(0, covered)
    pieces, since, cuts = [], 0, []
    while since < covered:
        rows, cut = archive.read(since, covered, limit=5)
        assert cut > since and len(rows) <= 5 + 4
        assert all(since <= s.order < cut for s, _ in rows)
        pieces += rows
        cuts.append(cut)
        since = cut
    assert pieces == whole and len(cuts) >= 3  # each key in exactly one piece
