"""The read routes over a large catalogue: a copy of an artifact whose catalogue is
grown to ``--videos`` (1M by default) with synthetic vectors, indexed as the jobs index a
catalogue (``--index auto``: HNSW above 100,000 videos, its search widened at build until
recall@20 against exact search on the catalogue's own rows reaches 0.95), then served.

The synthetic videos lie between the artifact's real ones (a point between a video and
one of its nearest, plus a little noise, L2-normalised), so the catalogue keeps the shape
of a trained one; the first rows are the artifact's own videos, so its GLMix, per-video
effects and histories still apply.

Printed: the index build (seconds, kind, search width, recall@20), the server's start-up
and RSS, then at ``--clients`` keep-alive clients: ``GET /v1/users/{u}/recommendations
?k=20`` for users with 50-video histories (videos drawn by a Zipf law over a random
popularity order, users taken in turn), ``GET /v1/videos/{v}/similar?k=20``,
``POST /v1/score`` with 100 candidates and ``/healthz`` on the same server (req/s,
p50/p99, server CPU a request, ratio against /healthz).

    python -m benchmarks.bench_catalogue_scale --artifacts RUN/artifact --out /tmp/big \\
        [--videos 1000000 --clients 8 --seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_service_scale import matmul_gflops
from benchmarks.bench_serving import _load, _rss_mb
from pipelines.choice.representation import index_with_recall
from recsys import artifact as art
from recsys.index import IndexConfig, VideoIndex
from serving.live import free_port, start_server


def grown_catalogue(
    ids: list[str], vectors: np.ndarray, n: int, seed: int = 0, noise: float = 0.05
) -> tuple[list[str], np.ndarray]:
    """``ids``/``vectors`` first, then synthetic videos up to ``n``: each a point between a
    real video and one of its 10 nearest real videos (uniformly along the segment) plus
    Gaussian noise of norm about ``noise``, L2-normalised, so the catalogue keeps the
    shape of the real one (built a chunk at a time). Isotropic blobs around each real
    video (noise 0.35) are an adversarial case instead: at 1M, HNSW's recall@20 stays at
    0.72 however wide the search (the graph misses neighbours; a finer build is needed)."""
    rng = np.random.default_rng(seed)
    e = vectors.shape[1]
    near = VideoIndex.build([str(i) for i in range(len(ids))], vectors, IndexConfig("flat"))
    _, nbrs = near.search_rows(vectors, min(11, len(ids)))
    out = np.empty((max(n, len(ids)), e), np.float32)
    out[: len(ids)] = vectors
    for s in range(len(ids), n, 65_536):
        m = min(65_536, n - s)
        a = rng.integers(0, len(ids), m)
        b = nbrs[a, rng.integers(1, nbrs.shape[1], m)] if nbrs.shape[1] > 1 else a
        t = rng.random((m, 1), dtype=np.float32)
        x = (1 - t) * vectors[a] + t * vectors[b]
        x += rng.normal(scale=noise / np.sqrt(e), size=(m, e)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return ids + [f"syn-{i:08d}" for i in range(len(ids), n)], out


def build(source: Path, out: Path, n: int) -> dict[str, Any]:
    """A copy of ``source`` at ``out`` with the grown catalogue and its index (reused
    when ``out`` already holds one of ``n`` videos)."""
    if (out / art.MANIFEST).exists():
        facts = art.read_manifest(out, verify=False).get("metrics", {}).get("index", {})
        if facts.get("videos") == n:
            print(f"reusing {out} ({n:,} videos)", flush=True)
            return dict(facts)
        shutil.rmtree(out)
    ids, vectors = art.load_embeddings(source)
    t0 = time.perf_counter()
    ids, vectors = grown_catalogue(ids, vectors, n)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index, facts = index_with_recall(ids, vectors, IndexConfig(kind="auto"))
    facts = {**facts, "videos": n, "build_s": time.perf_counter() - t0, "generate_s": gen_s}
    print(
        f"index: {facts['kind']} over {n:,} videos built and tuned in {facts['build_s']:.0f} s; "
        f"recall@20 {facts['recall']:.3f} at search width {facts.get('search_width', '-')} "
        f"(tried {facts.get('widths_tried', [])})",
        flush=True,
    )
    shutil.copytree(source, out)
    blob = index.to_bytes()
    config = json.dumps(
        {k: getattr(index.config, k) for k in index.config.__dataclass_fields__}
    ).encode()
    del index
    art.extend_artifact(
        out,
        {
            art.EMBEDDINGS: lambda p: pq.write_table(
                art.embeddings_table(ids, vectors), p, row_group_size=65_536
            ),
            art.INDEX: blob,
            art.INDEX_CONFIG: config,
        },
        {"metrics": {"index": facts}},
    )
    return facts


def _cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _post(conn: http.client.HTTPConnection, path: str, obj: Any) -> int:
    conn.request("POST", path, body=json.dumps(obj), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def serve_and_measure(
    artifact: Path, clients: int, seconds: float, users: int
) -> list[dict[str, Any]]:
    ids, _ = art.load_embeddings(artifact)
    rng = np.random.default_rng(1)
    port = free_port()
    db = Path(tempfile.mkdtemp()) / "state.sqlite3"
    t0 = time.perf_counter()
    proc = start_server(artifact, db, port, api_key=None, single_thread=False)
    ready_s = time.perf_counter() - t0
    print(f"server ready in {ready_s:.1f} s, RSS {_rss_mb(proc.pid):.0f} MB", flush=True)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        # Histories as a platform has them: 50 watches a user, videos drawn by a Zipf
        # law over a random popularity order (popular videos shared by many users).
        popularity = rng.permutation(len(ids))
        ranks = np.minimum(rng.zipf(1.2, size=(users, 50)) - 1, len(ids) - 1)
        names = [f"bench-user-{u}" for u in range(users)]
        for s in range(0, users * 50, 1000):
            imps = [
                {
                    "user_id": names[j // 50],
                    "video_id": ids[popularity[ranks[j // 50, j % 50]]],
                    "shown_at": datetime.now(UTC).isoformat(),  # within the clock allowance
                    "watch_seconds": 60.0,
                }
                for j in range(s, min(s + 1000, users * 50))
            ]
            assert _post(conn, "/v1/events/impressions", {"impressions": imps}) == 201
        cands = [ids[v] for v in rng.choice(len(ids), 100, replace=False).tolist()]
        similar = [f"/v1/videos/{ids[v]}/similar?k=20" for v in rng.choice(len(ids), 500).tolist()]
        loads: list[tuple[str, str, Any, bytes | None]] = [
            (
                "recommendations",
                "GET",
                [f"/v1/users/{u}/recommendations?k=20" for u in names],
                None,
            ),
            ("similar", "GET", similar, None),
            (
                "score",
                "POST",
                "/v1/score",
                json.dumps({"user_id": names[0], "video_ids": cands}).encode(),
            ),
            ("healthz", "GET", "/healthz", None),
        ]
        rows: list[dict[str, Any]] = []
        for name, method, path, body in loads:
            _load(port, method, path, body, clients, 2.0)  # warm-up
            c0 = _cpu_s(proc.pid)
            got = _load(port, method, path, body, clients, seconds)
            got["cpu_ms"] = (_cpu_s(proc.pid) - c0) / max(got["requests"], 1) * 1e3
            rows.append({"route": name, **got, **_cache_counts(port)})
        health = rows[-1]["req_per_s"]
        for r in rows:
            print(
                f"{r['route']:>16}: {r['req_per_s']:7.0f} req/s ({r['req_per_s'] / health:.2f}x "
                f"/healthz) p50 {r['p50_ms']:6.1f} ms p99 {r['p99_ms']:6.1f} ms, server CPU "
                f"{r['cpu_ms']:.2f} ms a request, errors {r['errors']} (503s {r['overload_503']}, "
                f"connection {r['connection_errors']}); neighbour table so far: "
                f"{r.get('neighbour_cache_hits', 0):,.0f} hits, "
                f"{r.get('neighbour_cache_misses', 0):,.0f} misses, "
                f"{r.get('neighbour_cache_bytes', 0) / 1e6:.1f} MB",
                flush=True,
            )
        print(f"server RSS after the load {_rss_mb(proc.pid):.0f} MB", flush=True)
        return [{"ready_s": ready_s}, *rows]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _cache_counts(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        key = name.removeprefix("recsys_")
        if key.startswith("neighbour_cache_"):
            out[key] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--artifacts", type=Path, required=True, help="a pipeline's artifact")
    ap.add_argument("--out", type=Path, required=True, help="where the grown copy goes")
    ap.add_argument("--videos", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--users", type=int, default=2000, help="users with 50-watch histories")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    print(f"reference: float32 matmul {matmul_gflops():.0f} GFLOP/s now", flush=True)
    facts = build(args.artifacts, args.out, args.videos)
    rows = serve_and_measure(args.out, args.clients, args.seconds, args.users)
    print(f"reference: float32 matmul {matmul_gflops():.0f} GFLOP/s at the end", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"index": facts, "routes": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
