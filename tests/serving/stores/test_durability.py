"""A real server is killed with SIGKILL mid-ingestion; every acknowledged video survives."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from serving.live import free_port, start_server


def test_acknowledged_ingestions_survive_sigkill(artifact: Path, tmp_path: Path) -> None:
    d = json.loads((artifact / "embedder.json").read_text())["feature_dim"]
    db = tmp_path / "state.sqlite3"
    port = free_port()
    proc = start_server(artifact, db, port)
    acked: list[str] = []
    stop = threading.Event()
    rng = np.random.default_rng(0)
    payloads = [rng.normal(size=(6, d)).round(4).tolist() for _ in range(400)]

    def writer(offset: int) -> None:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": "k"}, timeout=5
        ) as c:
            for i in range(offset, len(payloads), 2):
                if stop.is_set():
                    return
                try:
                    r = c.post("/v1/videos", json={"video_id": f"crash-{i}", "frames": payloads[i]})
                except httpx.HTTPError:
                    return
                if r.status_code == 201:
                    acked.append(f"crash-{i}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    while len(acked) < 30 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no shutdown hooks, no flushing
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 30

    proc = start_server(artifact, db, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            for start in range(0, len(acked), 200):
                body = {"user_id": "anyone", "video_ids": acked[start : start + 200]}
                scores = c.post("/v1/score", json=body).json()["scores"]
                missing = [s["video_id"] for s in scores if "error" in s]
                assert not missing, f"acknowledged but lost: {missing}"
            # Re-sending an acknowledged video is idempotent after the restart.
            r = c.post(
                "/v1/videos",
                json={"video_id": acked[0], "frames": payloads[int(acked[0].split("-")[1])]},
                headers={"X-API-Key": "k"},
            )
            assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
