"""A store that cannot write (the disk full) answers 503 with Retry-After, not 500; the
replica says not ready until a write commits again, and nothing half-written is kept."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from serving.app import create_app
from tests.serving.conftest import AUTH
from tests.serving.helpers import catalogue


def _full(store, full: bool) -> None:
    """Cap the file at its size and fill its free space (SQLite's "database or disk is
    full", as a full disk gives), or lift the cap."""
    import sqlite3

    with store._lock:
        db = store._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages if full else 1 << 30}")
        for size in (4096, 512, 64, 8) if full else ():
            try:
                while True:
                    db.execute("INSERT INTO write_probe VALUES (zeroblob(?))", (size,))
            except sqlite3.OperationalError:
                pass


def test_disk_full_is_503_and_not_ready_until_writes_work(settings, artifact) -> None:
    settings = settings.model_copy(update={"sync_interval_s": 0.05})
    video = catalogue(artifact)[0][0]
    with TestClient(create_app(settings)) as c:
        store = c.app.state.store  # type: ignore[attr-defined]
        _full(store, True)
        big = [
            {"user_id": f"u{i}", "video_id": video, "shown_at": "2030-01-01T00:00:00Z",
             "watch_seconds": 30.0, "event_id": f"full-{i}"}
            for i in range(1000)
        ]  # fmt: skip
        r = c.post("/v1/events/impressions", json={"impressions": big}, headers=AUTH)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["detail"].startswith("state store unavailable")
        time.sleep(0.3)  # the follower's reads work; its write probe does not
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200
        # Nothing of the refused batch was kept, in memory or on disk.
        assert c.get("/v1/users/u0/history", headers=AUTH).json()["history"] == []
        _full(store, False)
        deadline = time.time() + 5
        while c.get("/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/events/impressions", json={"impressions": big}, headers=AUTH)
        assert r.status_code == 201 and r.json()["accepted"] == 1000
