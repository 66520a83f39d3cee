"""Numbered schema migrations: stores of the version before open, keep their rows and
reach the newest version; a store newer than the code is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from recsys.errors import UserInputError
from serving.stores import Impression, SqliteStore, Watch
from serving.stores.contract import POSTGRES, SQLITE
from serving.stores.migrations import LATEST, MIGRATIONS, Migration, migrate, schema_version

pytestmark = pytest.mark.xdist_group("postgres")

_OLD_VIDEO = ("old-v", "sha", np.arange(4, dtype=np.float32).tobytes(), 3)


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == LATEST


def _old_sqlite_store(path: Path, recorded: int | None) -> None:
    """A store as the code before recorded versions made it (``recorded`` None), or one
    at version ``recorded`` of the numbered scheme; with a row in each table."""
    db = sqlite3.connect(path)
    if recorded is None:
        db.executescript(SQLITE.tables)
    else:  # the real migrations up to that version
        migrate(db.execute, SQLITE, MIGRATIONS[:recorded])
    db.execute(
        "INSERT INTO videos (video_id, payload_sha256, embedding, num_frames) VALUES (?,?,?,?)",
        _OLD_VIDEO,
    )
    db.execute("INSERT INTO watches (user_id, video_id, watch_seconds, at) VALUES ('u','v',5,'t')")
    db.execute(
        "INSERT INTO impressions (event_id, user_id, video_id, shown_at, watch_seconds) "
        "VALUES ('e1', 'u', 'v', 't', 5)"
    )
    db.commit()
    db.close()


def _versions(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
    finally:
        db.close()


@pytest.mark.parametrize("recorded", [None, LATEST - 1])
def test_a_sqlite_store_of_the_version_before_opens_with_its_rows(
    tmp_path: Path, recorded: int | None
) -> None:
    path = tmp_path / "old.db"
    _old_sqlite_store(path, recorded)
    store = SqliteStore(path)
    try:
        got = store.changes({})
        assert [v.video_id for _, v in got.videos] == ["old-v"]
        np.testing.assert_array_equal(got.videos[0][1].embedding, np.arange(4, dtype=np.float32))
        assert [(w.user_id, w.video_id) for _, w in got.watches] == [("u", "v")]
        assert [i.event_id for _, i in got.impressions] == ["e1"]
        # and it takes new writes after the old rows
        stamp = store.insert_watch(Watch("u2", "v", 9.0, "t2"))
        assert stamp.seq > got.watches[0][0].seq
        assert store.insert_impressions([Impression("u", "v", "t", 5.0, "e1")]) == [None]
    finally:
        store.close()
    assert _versions(path)[-1] == LATEST


def test_opening_twice_applies_each_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    SqliteStore(path).close()
    assert _versions(path) == list(range(1, LATEST + 1))
    db = sqlite3.connect(path)
    try:
        assert migrate(db.execute, SQLITE) == []
        assert schema_version(db.execute) == LATEST
    finally:
        db.close()


def test_a_new_migration_is_applied_to_a_store_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    nxt = Migration(LATEST + 1, "a column", ("ALTER TABLE watches ADD COLUMN device TEXT",), ())
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        assert migrate(db.execute, SQLITE, (*MIGRATIONS, nxt)) == [LATEST + 1]
        db.execute("COMMIT")
        cols = [r[1] for r in db.execute("PRAGMA table_info(watches)")]
        assert "device" in cols
    finally:
        db.close()


def test_a_store_newer_than_the_code_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version (version, what) VALUES (?, 'future')", (LATEST + 1,))
    db.commit()
    db.close()
    with pytest.raises(UserInputError, match=f"schema version {LATEST + 1}, newer"):
        SqliteStore(path)
    assert _versions(path)[-1] == LATEST + 1


def test_a_postgres_store_from_before_the_commit_order_key_is_migrated(pg_url: str) -> None:
    """The store as the code before ``xid`` and recorded versions made it: opening it adds
    the key to every table, records the versions, and the old rows are read once."""
    import psycopg

    from serving.stores.postgres import PostgresStore

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(POSTGRES.tables)
        c.execute(
            "INSERT INTO videos (video_id, payload_sha256, embedding, num_frames) "
            "VALUES (%s, %s, %s, %s)",
            _OLD_VIDEO,
        )
        c.execute(
            "INSERT INTO watches (user_id, video_id, watch_seconds, at) VALUES ('u','v',5,'t')"
        )
    store = PostgresStore(pg_url)
    try:
        got = store.changes({})
        assert [v.video_id for _, v in got.videos] == ["old-v"]
        assert [w.user_id for _, w in got.watches] == ["u"]
        assert not store.changes(got.horizon)  # read once
        store.insert_watch(Watch("u2", "v", 9.0, "t2"))
        assert [w.user_id for _, w in store.changes(got.horizon).watches] == ["u2"]
    finally:
        store.close()
    with psycopg.connect(pg_url) as c:
        versions = [r[0] for r in c.execute("SELECT version FROM schema_version ORDER BY 1")]
        xid_tables = {
            r[0]
            for r in c.execute(
                "SELECT table_name FROM information_schema.columns WHERE column_name = 'xid'"
            )
        }
    assert versions == list(range(1, LATEST + 1))
    assert xid_tables == {"videos", "watches", "impressions", "removals"}
