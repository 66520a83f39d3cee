"""Artifact reloads while clients score and ingest: no request fails."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

from serving.live import free_port, start_server


def test_reload_during_traffic_fails_no_request(artifact: Path, tmp_path: Path) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    ids = (
        pq.read_table(artifact / "embeddings.parquet", columns=["video_id"])
        .column("video_id")
        .to_pylist()
    )
    port = free_port()
    proc = start_server(artifact, tmp_path / "state.sqlite3", port)
    base = f"http://127.0.0.1:{port}"
    failures: list[str] = []
    counts = {"score": 0, "ingest": 0}
    stop = threading.Event()

    def scorer() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/score", json={"user_id": "u", "video_ids": ids[:20]})
                if r.status_code != 200 or any("error" in s for s in r.json()["scores"]):
                    failures.append(f"score {r.status_code} {r.text[:200]}")
                counts["score"] += 1

    def ingester() -> None:
        rng = np.random.default_rng(1)
        with httpx.Client(base_url=base, timeout=30, headers={"X-API-Key": "k"}) as c:
            i = 0
            while not stop.is_set():
                body = {
                    "video_id": f"live-{i}",
                    "frames": rng.normal(size=(3, d)).round(3).tolist(),
                }
                r = c.post("/v1/videos", json=body)
                if r.status_code != 201:
                    failures.append(f"ingest {r.status_code} {r.text[:200]}")
                counts["ingest"] += 1
                i += 1

    threads = [
        threading.Thread(target=scorer),
        threading.Thread(target=scorer),
        threading.Thread(target=ingester),
    ]
    try:
        for t in threads:
            t.start()
        with httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": "k"}) as admin:
            for _ in range(3):
                # Let traffic flow between reloads, so each reload overlaps live requests.
                want = (counts["score"] + 5, counts["ingest"] + 2)
                deadline = time.time() + 60
                while not (counts["score"] >= want[0] and counts["ingest"] >= want[1]):
                    assert time.time() < deadline, "traffic stalled"
                    time.sleep(0.02)
                r = admin.post("/v1/admin/reload")
                assert r.status_code == 200, r.text
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not failures, failures[:5]
        assert counts["score"] >= 15 and counts["ingest"] >= 6
        # Every video ingested during the reloads is still there afterwards.
        with httpx.Client(base_url=base, timeout=30) as c:
            live = [f"live-{i}" for i in range(counts["ingest"])]
            scores = c.post("/v1/score", json={"user_id": "u", "video_ids": live[:1000]}).json()[
                "scores"
            ]
            assert not [s["video_id"] for s in scores if "error" in s]
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=10)
