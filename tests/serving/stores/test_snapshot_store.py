"""Snapshots in both stores: the newest per artifact version is kept, an erasure deletes
every snapshot, and a snapshot that has not applied a stored erasure is refused."""

from __future__ import annotations

import pytest

from serving.stores import Impression, StateStore

pytestmark = pytest.mark.xdist_group("postgres")


def test_the_newest_snapshot_of_each_version_is_kept(store: StateStore) -> None:
    assert store.latest_snapshot("v1") is None
    assert store.save_snapshot("v1", b"one", 0, [])
    assert store.save_snapshot("v1", b"two", 0, [])
    assert store.save_snapshot("v2", b"other", 0, [])
    assert store.latest_snapshot("v1") == b"two"
    assert store.latest_snapshot("v2") == b"other"


def test_an_erasure_deletes_every_snapshot_and_refuses_older_ones(store: StateStore) -> None:
    store.insert_impressions([Impression("u", "v", "2030-01-01T00:00:00Z", 5.0, "e1")])
    before = store.changes({})
    horizon = before.horizon.get("removals", 0)
    assert store.save_snapshot("v1", b"with-u", horizon, [])
    stamp = store.erase_user("u")
    assert store.latest_snapshot("v1") is None
    # Taken before the erasure (its horizon is below it, and it did not apply it): refused.
    assert not store.save_snapshot("v1", b"with-u-again", horizon, [])
    assert store.latest_snapshot("v1") is None
    # One that applied it (above the horizon, among the applied) is taken.
    assert store.save_snapshot("v1", b"without-u", horizon, [stamp.seq])
    after = store.changes(before.horizon)
    assert store.save_snapshot("v1", b"later", after.horizon.get("removals", 0), [])
    assert store.latest_snapshot("v1") == b"later"


def test_postgresql_reads_a_snapshot_on_a_connection_of_its_own(pg_url: str) -> None:
    """libpq keeps its input buffer at the largest row a connection received: a snapshot
    read on the store's long-lived connection stayed resident twice over (+128 MB after
    a 64 MB snapshot, ``benchmarks/bench_pg_snapshot_read.py``). Every byte value comes
    back as stored."""
    from serving.stores import open_store

    store = open_store(pg_url)
    body = bytes(range(256)) * 64
    assert store.save_snapshot("v1", body, 0, [])
    store._conn.close()  # type: ignore[attr-defined]
    store._conn = None  # type: ignore[attr-defined]
    assert store.latest_snapshot("v1") == body
    assert store._conn is None  # type: ignore[attr-defined]  # the shared one not opened
    store.close()
