"""SQLite's per-user indexes on (log position range, user): a user's rows read and erased
through them are exactly the rows a scan by user finds, across many ranges and with rows
from before log positions existed; the queries search the index, never scan the table."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.stores import Impression, SqliteStore, Watch
from serving.stores.contract import SQLITE

_SCAN = {
    "watches": "SELECT seq, pos, user_id, video_id, watch_seconds, at FROM watches "
    "WHERE user_id = ? ORDER BY seq",
    "impressions": "SELECT seq, pos, event_id, user_id, video_id, shown_at, watch_seconds "
    "FROM impressions WHERE user_id = ? ORDER BY seq",
}


def _filled(path: Path, rng: np.random.Generator) -> SqliteStore:
    """A store whose rows span several position ranges (2^12 positions each), a few
    of them at position 0 as rows written before positions existed."""
    store = SqliteStore(path)
    users = [f"u{i}" for i in range(7)]
    for batch in range(5):
        picks = rng.integers(len(users), size=3000)
        store.insert_impressions(
            [Impression(users[u], f"v{j}", "t", float(j % 3), None) for j, u in enumerate(picks)]
        )
        store.insert_watch(Watch(users[batch % len(users)], "w", 9.0, f"t{batch}"))
    db = sqlite3.connect(path)
    db.execute("UPDATE impressions SET pos = 0 WHERE seq <= 40")  # from before positions
    db.execute("UPDATE watches SET pos = 0 WHERE seq = 1")
    db.commit()
    db.close()
    return store


def _query(path: Path, sql: str, *params: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def _scan(path: Path, table: str, user: str) -> list[tuple]:
    return _query(path, _SCAN[table], user)


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[Path, SqliteStore]]:
    path = tmp_path / "s.db"
    store = _filled(path, np.random.default_rng(0))
    yield path, store
    store.close()


def test_a_users_rows_read_through_the_index_are_the_scans(filled) -> None:
    path, store = filled
    top = _query(path, "SELECT MAX(pos) FROM impressions")[0][0]
    assert top >> SQLITE.user_shift >= 3  # several ranges
    for user in ("u0", "u3", "u6", "nobody"):
        got = store.user_rows(user)
        scan_w, scan_i = _scan(path, "watches", user), _scan(path, "impressions", user)
        assert [(st.seq, st.order) for st, _ in got.impressions] == [r[:2] for r in scan_i]
        assert [i.event_id for _, i in got.impressions] == [r[2] for r in scan_i]
        assert [(st.seq, w.at) for st, w in got.watches] == [(r[0], r[5]) for r in scan_w]
        assert (len(scan_i) > 0) == (user != "nobody")


def test_erasing_a_user_deletes_exactly_their_rows(filled) -> None:
    path, store = filled
    users = ("u0", "u1", "u2")
    before = {u: len(_scan(path, "impressions", u)) for u in users}
    total = _query(path, "SELECT COUNT(*) FROM impressions")[0][0]
    store.erase_user("u1")
    assert _scan(path, "impressions", "u1") == [] and _scan(path, "watches", "u1") == []
    assert {u: len(_scan(path, "impressions", u)) for u in users} == {**before, "u1": 0}
    assert _query(path, "SELECT COUNT(*) FROM impressions")[0][0] == total - before["u1"]


def test_the_per_user_queries_search_the_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    names = {r[0] for r in _query(path, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"watches_user_pos", "impressions_user_pos"} <= names
    assert not {"watches_user", "impressions_user"} & names  # the random-page ones
    for sql in (*SQLITE.user_rows, *SQLITE.erase):
        plan = " | ".join(r[3] for r in _query(path, "EXPLAIN QUERY PLAN " + sql, "u"))
        assert "USING INDEX watches_user_pos" in plan or "USING INDEX impressions_user_pos" in plan
        assert "SCAN watches" not in plan and "SCAN impressions" not in plan, plan
