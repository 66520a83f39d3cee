"""SQLite's checkpoints run on a thread of their own: a commit never copies the WAL into
the database file itself, the checkpointer does, and its thread ends with the store."""

from __future__ import annotations

import gc
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

import serving.stores.sqlite as sqlite_store
from serving.stores import Impression, SqliteStore


def _batch(n: int, tag: str) -> list[Impression]:
    return [Impression(f"u{i % 7}", f"v{i}", "t", 1.0, f"{tag}-{i}") for i in range(n)]


def _in_file(path: Path) -> int:
    """Impressions in the database file itself, ignoring the WAL (``immutable``)."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM impressions").fetchone()[0])
    finally:
        db.close()


def _wait_for(check: object, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_commit_leaves_the_copy_to_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store._checkpointer.stop()  # no pass from here on
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema into the file
    assert _in_file(path) == 0
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for b in range(
        8
    ):  # past the 1,000 WAL pages (about 6 batches) an automatic checkpoint waits for
        store.insert_impressions(_batch(10_000, f"b{b}"))
    stored = store._db.execute("SELECT count(*) FROM impressions").fetchone()[0]
    assert stored == 80_000  # committed, and read back from the WAL
    assert _in_file(path) == 0  # but nothing copied into the file inside a commit
    store.close()  # the last connection's close checkpoints
    assert _in_file(path) == 80_000


def test_the_checkpointer_copies_the_wal_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        store.insert_impressions(_batch(500, "a"))
        seen = store._checkpointer.passes
        # Two passes after the write: the second began after it committed.
        assert _wait_for(lambda: store._checkpointer.passes >= seen + 2)
        assert _in_file(path) == 500
        store.insert_impressions(_batch(300, "b"))
        seen = store._checkpointer.passes
        assert _wait_for(lambda: store._checkpointer.passes >= seen + 2)
        assert _in_file(path) == 800
    finally:
        store.close()


def test_the_thread_ends_with_the_store(tmp_path: Path) -> None:
    closed = SqliteStore(tmp_path / "a.db")
    thread = closed._checkpointer._thread
    assert thread.is_alive()
    closed.close()
    assert not thread.is_alive()

    dropped = SqliteStore(tmp_path / "b.db")
    thread = dropped._checkpointer._thread
    del dropped  # never closed: the thread still ends, at its next wake
    gc.collect()
    assert _wait_for(lambda: not thread.is_alive(), timeout_s=5.0)


def test_the_wal_starts_over_under_a_steady_stream_of_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers that never pause leave a passive checkpoint no moment with every frame
    copied and no writer between, so the WAL never started over (it grew by every
    commit); the checkpointer then lets writers wait for the last few frames."""
    monkeypatch.setattr(sqlite_store, "RESTART_FRAMES", 256)
    monkeypatch.setattr(sqlite_store, "WAL_KEPT_BYTES", 2**18)
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store._checkpointer.stop()
    store._db.execute(f"PRAGMA journal_size_limit={2**18}")
    store._checkpointer = sqlite_store._Checkpointer(store, interval_s=0.02)
    rng = np.random.default_rng(0)
    try:
        store.insert_impressions(_batch(20_000, "fill"))
        written = 0
        end = time.monotonic() + 3.0
        while time.monotonic() < end:  # random ids: each batch dirties many index pages
            keys = rng.integers(0, 2**62, size=500)
            store.insert_impressions(
                [Impression("u", "v", "t", 1.0, f"k{k}") for k in keys.tolist()]
            )
            written += 1
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert written >= 20 and store._checkpointer.passes >= 5
        assert wal < 16 * 2**20, f"WAL {wal / 2**20:.0f} MB after {written} batches"
    finally:
        store.close()
