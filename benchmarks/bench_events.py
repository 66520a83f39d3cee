"""Impression-event latency with the online GLMix update, on SQLite and on PostgreSQL.

    .venv/bin/python -m benchmarks.bench_events --artifacts RUN/artifact [--requests 2000]

Starts ``recsys serve`` (a subprocess) once per store: the embedded SQLite file and a
temporary PostgreSQL server (Debian's binaries, as the tests use). One keep-alive client
posts batches of 10 impressions (a few users, so each request refits effects over a
growing window), then /healthz on the same server as the reference. Prints p50/p95/p99 of
each and the ratio of the event p99 to the /healthz p99.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from recsys.artifact import load_embeddings
from serving.live import PostgresServer, free_port, start_server


def _latencies(port: int, method: str, path: str, bodies: list[bytes | None]) -> np.ndarray:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for body in bodies:
        headers = {"X-API-Key": "k"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        out.append(time.perf_counter() - t0)
        if resp.status not in (200, 201):
            raise SystemExit(f"{path}: HTTP {resp.status}")
    conn.close()
    return np.array(out) * 1e3


def _fmt(ms: np.ndarray) -> str:
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--users", type=int, default=50)
    args = ap.parse_args()
    ids, _ = load_embeddings(args.artifacts)
    rng = np.random.default_rng(0)
    bodies: list[bytes | None] = []
    start = datetime.now(UTC) - timedelta(hours=1)  # the service refuses future times
    for r in range(args.requests):
        user = f"bench-user-{r % args.users}"
        batch = [
            {
                "user_id": user,
                "video_id": ids[int(rng.integers(len(ids)))],
                "shown_at": (start + timedelta(seconds=i)).isoformat(),
                "watch_seconds": float(rng.choice([0.0, 60.0])),
                "event_id": f"bench-{r}-{i}",
            }
            for i in range(10)
        ]
        bodies.append(json.dumps({"impressions": batch}).encode())
    pg = PostgresServer()
    try:
        for name, url in (("sqlite", None), ("postgresql", pg.url)):
            tmp = Path(tempfile.mkdtemp(prefix="bench_events_"))
            port = free_port()
            proc = start_server(args.artifacts, tmp / "state.sqlite3", port, state_url=url)
            try:
                _latencies(port, "POST", "/v1/events/impressions", bodies[:50])  # warm-up
                ev = _latencies(port, "POST", "/v1/events/impressions", bodies[50:])
                hz = _latencies(port, "GET", "/healthz", [None] * len(ev))
            finally:
                proc.kill()
                proc.wait()
            print(
                f"{name}: events (10 impressions + online refit) {_fmt(ev)} | "
                f"/healthz {_fmt(hz)} | p99 ratio {np.percentile(ev, 99) / np.percentile(hz, 99):.1f}x",
                flush=True,
            )
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
