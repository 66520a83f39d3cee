"""Replicas over a real PostgreSQL never miss a row another replica acknowledged: a
transaction held open while thousands of rows commit past it, and a replica frozen
(SIGSTOP) with a batch in flight. No restart; every replica ends equal to the database."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from recsys.artifact import read_embeddings
from serving.app import create_app
from serving.live import free_port, start_server
from tests.serving.conftest import AUTH
from tests.serving.stores.test_postgres import _settings, _wait

pytestmark = pytest.mark.xdist_group("postgres")


def _batch(prefix: str, video: str, n: int, user: str | None = None) -> dict:
    return {
        "impressions": [
            {
                "user_id": user or f"{prefix}-u{i % 50}",
                "video_id": video,
                "shown_at": "2030-01-01T00:00:00Z",
                "watch_seconds": 30.0,
                "event_id": f"{prefix}-{i}",
            }
            for i in range(n)
        ]
    }


def _stored(text: str) -> int:
    m = re.search(r"^recsys_impression_events_stored (\S+)$", text, re.M)
    assert m is not None
    return int(float(m.group(1)))


def _db_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as c:
        return int(c.execute("SELECT count(*) FROM impressions").fetchone()[0])


def test_a_long_held_transaction_reaches_every_replica(
    artifact: Path, pg_url: str, tmp_path: Path
) -> None:
    import psycopg

    video = read_embeddings(artifact / "embeddings.parquet")[0][0]
    with (
        TestClient(create_app(_settings(artifact, pg_url, tmp_path))) as a,
        TestClient(create_app(_settings(artifact, pg_url, tmp_path))) as b,
    ):
        held = psycopg.connect(pg_url)  # a writer that takes its time to commit
        for i in range(2):
            held.execute(
                "INSERT INTO impressions (event_id, user_id, video_id, shown_at, watch_seconds) "
                "VALUES (%s, 'late-user', %s, '2030-01-01T00:00:00Z', 60.0)",
                (f"late-{i}", video),
            )
        for k in range(6):  # 12,000 rows commit past it, on both replicas
            for client, name in ((a, "a"), (b, "b")):
                r = client.post("/v1/events/impressions", json=_batch(f"{name}{k}", video, 1000),
                                headers=AUTH)  # fmt: skip
                assert r.status_code == 201
        held.commit()
        held.close()
        total = _db_count(pg_url)
        assert total == 12_002
        for client in (a, b):
            _wait(lambda c=client: _stored(c.get("/metrics").text) == total, 5.0)
            hist = client.get("/v1/users/late-user/history", headers=AUTH).json()
            assert [h["video_id"] for h in hist["history"]] == [video]


def test_a_frozen_replica_catches_up_without_a_restart(
    artifact: Path, pg_url: str, tmp_path: Path
) -> None:
    video = read_embeddings(artifact / "embeddings.parquet")[0][0]
    pa, pb = free_port(), free_port()
    a = start_server(artifact, tmp_path / "a.sqlite3", pa, state_url=pg_url)
    b = start_server(artifact, tmp_path / "b.sqlite3", pb, state_url=pg_url)
    try:
        in_flight = threading.Thread(
            target=lambda: httpx.post(f"http://127.0.0.1:{pa}/v1/events/impressions",
                                      json=_batch("frozen", video, 1000),
                                      headers={"X-API-Key": "k"}, timeout=60),
        )  # fmt: skip
        in_flight.start()
        time.sleep(0.15)
        a.send_signal(signal.SIGSTOP)  # maybe mid-transaction: the point is it may be
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{pb}", headers={"X-API-Key": "k"},
                              timeout=30) as c:  # fmt: skip
                for k in range(11):
                    assert c.post("/v1/events/impressions",
                                  json=_batch(f"b{k}", video, 1000)).status_code == 201  # fmt: skip
        finally:
            a.send_signal(signal.SIGCONT)
        in_flight.join(60)
        total = _db_count(pg_url)
        assert total >= 11_000
        for port in (pa, pb):
            _wait(lambda p=port: _stored(httpx.get(f"http://127.0.0.1:{p}/metrics").text) == total,
                  10.0)  # fmt: skip
    finally:
        for p in (a, b):
            p.terminate()
            p.wait(10)


def test_takedown_and_erasure_reach_the_other_replica_within_a_second(
    artifact: Path, pg_url: str, tmp_path: Path
) -> None:
    import psycopg

    from tests.serving.helpers import a_user_with_history, history

    user = a_user_with_history(artifact)
    gone = history(artifact, user)[0]
    with (
        TestClient(create_app(_settings(artifact, pg_url, tmp_path))) as a,
        TestClient(create_app(_settings(artifact, pg_url, tmp_path))) as b,
    ):
        video = read_embeddings(artifact / "embeddings.parquet")[0][1]
        r = b.post("/v1/events/impressions", json=_batch("er", video, 20, user=user), headers=AUTH)
        assert r.status_code == 201
        assert a.delete(f"/v1/videos/{gone}", headers=AUTH).status_code == 200
        lag = _wait(lambda: b.get(f"/v1/videos/{gone}/similar").status_code == 404, 1.0)
        hist = b.get(f"/v1/users/{user}/history", headers=AUTH).json()["history"]
        assert gone not in {h["video_id"] for h in hist}
        assert a.delete(f"/v1/users/{user}", headers=AUTH).status_code == 200

        def forgotten() -> bool:
            s = b.post("/v1/score", json={"user_id": user, "video_ids": [video]}).json()
            return not s["known_user"] and s["history_size"] == 0

        lag_user = _wait(forgotten, 1.0)
        assert lag < 1.0 and lag_user < 1.0
    with psycopg.connect(pg_url) as c:
        for table in ("watches", "impressions"):
            n = c.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s", (user,)).fetchone()
            assert n[0] == 0
