"""HTTP load against a running server on loopback.

    .venv/bin/python -m benchmarks.bench_serving --artifacts RUN/artifact [--clients 8 --seconds 10]

Starts ``recsys serve`` in a subprocess, gives a user a 50-video history, then
measures with N threaded keep-alive clients: /v1/score (100 candidates) next to
/healthz (the trivial endpoint on the same server), ingestion latency of 300-frame
videos, and the server's resident memory before and after the run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from recsys.artifact import embedder_feature_dim, load_embeddings
from serving.live import free_port, start_server


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(
    port: int,
    method: str,
    path: str | list[str],
    body: bytes | None,
    clients: int,
    seconds: float,
) -> dict[str, float]:
    """``clients`` keep-alive clients for ``seconds``; a list of paths is taken in turn
    (client i starts at path i)."""
    paths = [path] if isinstance(path, str) else path
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    overload = [0] * clients  # 503 with Retry-After: the documented answer to overload
    conn_errors = [0] * clients  # resets, refusals, timeouts: never acceptable
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Content-Type": "application/json"} if body else {}
        turn = i
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            turn += 1
            try:
                conn.request(method, paths[turn % len(paths)], body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                conn_errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            latencies[i].append(time.perf_counter() - t0)
            if resp.status == 503 and resp.getheader("Retry-After"):
                overload[i] += 1
            elif resp.status != 200:
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.concatenate([np.array(x) for x in latencies]) * 1e3
    return {
        "requests": len(lat),
        "req_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": sum(errors),
        "overload_503": sum(overload),
        "connection_errors": sum(conn_errors),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-in-flight", type=int, default=0, help="0: the server's default (64)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="score/healthz alternations (memory drift check)"
    )
    args = ap.parse_args()
    port = free_port()
    state = Path(tempfile.mkdtemp()) / "bench-state.sqlite3"
    proc = start_server(
        args.artifacts,
        state,
        port,
        api_key=None,
        args=["--max-in-flight", str(args.max_in_flight)] if args.max_in_flight else [],
        single_thread=False,
    )
    try:
        ids, _ = load_embeddings(args.artifacts)
        d = embedder_feature_dim(args.artifacts)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for v in ids[:50]:
            ev = {
                "user_id": "bench-user",
                "video_id": v,
                "watch_seconds": 60,
                "at": "2026-02-01T00:00:00Z",
            }
            conn.request(
                "POST",
                "/v1/events/watch",
                body=json.dumps(ev),
                headers={"Content-Type": "application/json"},
            )
            conn.getresponse().read()
        body = json.dumps({"user_id": "bench-user", "video_ids": ids[100:200]}).encode()
        _load(port, "POST", "/v1/score", body, args.clients, 2.0)  # warm-up
        rss0 = _rss_mb(proc.pid)
        for r in range(args.rounds):
            s = _load(port, "POST", "/v1/score", body, args.clients, args.seconds)
            h = _load(port, "GET", "/healthz", None, args.clients, args.seconds)
            print(
                f"round {r + 1}: /v1/score {s['req_per_s']:.0f} req/s p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms "
                f"(errors {s['errors']}, overload 503s {s['overload_503']}, connection errors "
                f"{s['connection_errors']}) | /healthz {h['req_per_s']:.0f} req/s p50 {h['p50_ms']:.1f} ms "
                f"p99 {h['p99_ms']:.1f} ms | server RSS {_rss_mb(proc.pid):.0f} MB",
                flush=True,
            )
        rss1 = _rss_mb(proc.pid)
        rng = np.random.default_rng(0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # the old one idled out
        lat = []
        for i in range(50):
            frames = rng.normal(size=(300, d)).round(4).tolist()
            payload = json.dumps({"video_id": f"bench-new-{i}", "frames": frames})
            t0 = time.perf_counter()
            conn.request(
                "POST", "/v1/videos", body=payload, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            resp.read()
            lat.append((time.perf_counter() - t0) * 1e3)
            assert resp.status == 201, resp.status
        print(
            f"ingestion (300 frames, D={d}, JSON): p50 {np.percentile(lat, 50):.1f} ms p99 {np.percentile(lat, 99):.1f} ms"
        )
        print(
            f"server RSS after warm-up {rss0:.0f} MB, after the load rounds {rss1:.0f} MB; artifact on disk "
            f"{sum(p.stat().st_size for p in args.artifacts.iterdir()) / 1e6:.1f} MB"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
