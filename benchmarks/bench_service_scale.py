"""How a replica's start-up grows with the stored log, with and without a snapshot.

For each size, impressions are written straight into a SQLite state store (the bulk
path: ``SqliteStore.insert_impressions`` in batches of 10,000, as the event route would
store them; a quarter are watches; users drawn from the artifact's plus new ones; each
with a random UUID as its event id, as clients send them), then a
real server (``serving.live.start_server``) is started three ways and timed to
``/readyz``: replaying the whole log; after it has written a snapshot
(``RECSYS_SNAPSHOT_INTERVAL_S``), from that snapshot plus the log after it. Then 8
clients post 30 batches of 1,000 impressions through ``POST /v1/events/impressions``,
once with each batch waiting for its users' refits (``RECSYS_REFIT_WAIT_MS=-1``) and once
on a server that acknowledges when staged (``RECSYS_REFIT_WAIT_MS=0``, the default),
then 30 more from users no one has seen (the same state per user at every size: what
the stored log itself costs). Printed per size: ready seconds, RSS when ready, the
snapshot's size; ingest rate, server CPU an impression, batch latency and when every
effect was refitted; ratios against the empty store measured in the same run.

    python -m benchmarks.bench_service_scale --artifacts RUN/artifact --sizes 0,100000,1000000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from recsys.artifact import load_glmix, read_embeddings
from serving.live import PostgresServer, free_port, start_server
from serving.stores import Impression, SqliteStore, open_store

#: the stored impressions' time: a day before the ones the run posts (the service refuses
#: times ahead of its clock)
STORED_AT = (datetime.now(UTC) - timedelta(days=1)).isoformat()


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def fill(db: Path | str, artifact: Path, n: int, seed: int = 0, users: int = 20_000) -> float:
    """Write ``n`` impressions into the store at ``db`` (a SQLite path or a store URL);
    returns seconds."""
    ids, _ = read_embeddings(artifact / "embeddings.parquet")
    glm = load_glmix(artifact)
    known = list(glm.user_ids) if glm is not None else []
    names = known + [f"bench-{i}" for i in range(max(users - len(known), 0))]
    rng = np.random.default_rng(seed)
    store = SqliteStore(db) if isinstance(db, Path) else open_store(db)
    t0 = time.perf_counter()
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        u = rng.integers(len(names), size=m)
        v = rng.integers(len(ids), size=m)
        w = np.where(rng.random(m) < 0.25, 60.0, 0.0)
        events = _event_ids(rng, m)
        store.insert_impressions(
            [
                Impression(names[u[i]], ids[v[i]], STORED_AT, float(w[i]), events[i])
                for i in range(m)
            ]
        )
    store.close()
    return time.perf_counter() - t0


def _event_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Random (version 4) UUIDs, as clients make idempotency keys: scattered over the
    ``event_id`` index, not in the order they are written."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    return [str(uuid.UUID(bytes=bytes(r), version=4)) for r in raw]


#: the PostgreSQL store's URL when measuring one (``--store postgresql``)
_URL: list[str] = []


def _metric(port: int, name: str) -> float:
    text = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"X-API-Key": "k"}, timeout=10
    ).text
    m = re.search(rf"^\S*{name}\S* (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _start(artifact: Path, db: Path, env: dict[str, str]) -> tuple[float, float, int, object]:
    port = free_port()
    env = {**env, **({"RECSYS_STATE_URL": _URL[0]} if _URL else {})}
    t0 = time.perf_counter()
    proc = start_server(
        artifact, db, port, extra_env=env, single_thread=False, ready_timeout_s=3600
    )
    return time.perf_counter() - t0, _rss_mb(proc.pid), port, proc


def _snapshot_bytes(db: Path) -> int:
    sql = "SELECT length(body) FROM snapshots ORDER BY seq DESC LIMIT 1"
    if _URL:
        import psycopg

        with psycopg.connect(_URL[0]) as c:
            row = c.execute(sql).fetchone()
    else:
        with sqlite3.connect(db) as c:
            row = c.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _bodies(
    artifact: Path, batches: int, seed: int, users: int = 20_000, fresh: bool = False
) -> list[bytes]:
    """Impression batches of 1,000 as the event route takes them: the ``fill`` mix, or
    with ``fresh`` users no fill or earlier batch named (no window, history or effect)."""
    ids, _ = read_embeddings(artifact / "embeddings.parquet")
    glm = load_glmix(artifact)
    known = list(glm.user_ids) if glm is not None and not fresh else []
    prefix = f"fresh-{seed}" if fresh else "bench"
    names = known + [f"{prefix}-{i}" for i in range(max(users - len(known), 0))]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        u, v = rng.integers(len(names), size=1000), rng.integers(len(ids), size=1000)
        w = np.where(rng.random(1000) < 0.25, 60.0, 0.0)
        events = _event_ids(rng, 1000)
        imps = [
            {
                "user_id": names[u[i]],
                "video_id": ids[v[i]],
                "shown_at": datetime.now(UTC).isoformat(),
                "watch_seconds": float(w[i]),
                "event_id": events[i],
            }
            for i in range(1000)
        ]
        out.append(json.dumps({"impressions": imps}).encode())
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest(port: int, pid: int, bodies: list[bytes], clients: int = 8) -> dict[str, float]:
    """Post the batches from ``clients`` keep-alive connections; then wait until every
    effect is refitted. Returns impressions/s acknowledged, server CPU ms an impression,
    batch latency p50/p99 and the seconds until the refit backlog was empty."""
    todo = list(enumerate(bodies))
    lock = threading.Lock()
    lat: list[float] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if not todo:
                    break
                _, body = todo.pop()
            t = time.perf_counter()
            conn.request(
                "POST",
                "/v1/events/impressions",
                body=body,
                headers={"X-API-Key": "k", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise SystemExit(f"impressions: HTTP {resp.status}")
            with lock:
                lat.append(time.perf_counter() - t)
        conn.close()

    cpu0, t0 = _cpu_s(pid), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked = time.perf_counter() - t0
    while _metric(port, "online_refit_backlog_users") > 0:
        time.sleep(0.05)
    settled = time.perf_counter() - t0
    n = 1000 * len(bodies)
    p50, p99 = np.percentile(np.array(lat) * 1e3, [50, 99])
    return {
        "ingest_per_s": n / acked,
        "ingest_cpu_ms": (_cpu_s(pid) - cpu0) * 1e3 / n,
        "batch_p50_ms": float(p50),
        "batch_p99_ms": float(p99),
        "refitted_after_s": settled,
    }


def measure_start(artifact: Path, db: Path, stored: int) -> dict[str, float]:
    """Ready time and RSS replaying the log, then from a snapshot written by that server."""
    out: dict[str, float] = {}
    off = {"RECSYS_SNAPSHOT_INTERVAL_S": "0"}
    ready, rss, _, proc = _start(artifact, db, off)
    out["replay_ready_s"], out["replay_rss_mb"] = ready, rss
    _stop(proc)
    ready, rss, port, proc = _start(artifact, db, {"RECSYS_SNAPSHOT_INTERVAL_S": "1"})
    t0 = time.perf_counter()
    while stored and _metric(port, "snapshots_written") < 1 and time.perf_counter() - t0 < 600:
        time.sleep(0.5)
    out["snapshot_written_after_s"] = time.perf_counter() - t0
    _stop(proc)
    out["snapshot_mb"] = _snapshot_bytes(db) / 2**20
    ready, rss, port, proc = _start(artifact, db, off)
    out["snapshot_ready_s"], out["snapshot_rss_mb"] = ready, rss
    out["from_snapshot"] = _metric(port, "state_started_from_snapshot")
    _stop(proc)
    return out


def measure_ingest(artifact: Path, db: Path, batches: int = 30) -> dict[str, float]:
    """Ingest on top of what is stored: each batch waiting for its refits
    (``RECSYS_REFIT_WAIT_MS=-1``); then on a restarted server that acknowledges once
    staged (0, the default); then, on that server, users nobody has seen. A fresh
    user's cost is the same whatever the store holds, so its ratio to the empty
    store's isolates what the log itself costs from what the users' own windows and
    histories cost."""
    out: dict[str, float] = {}
    off = {"RECSYS_SNAPSHOT_INTERVAL_S": "0"}
    _, _, port, proc = _start(artifact, db, {**off, "RECSYS_REFIT_WAIT_MS": "-1"})
    for mode in ("wait", "nowait", "fresh"):
        if mode == "nowait":
            _stop(proc)
            _, _, port, proc = _start(artifact, db, {**off, "RECSYS_REFIT_WAIT_MS": "0"})
        bodies = _bodies(artifact, batches, seed=len(mode), fresh=mode == "fresh")
        got = ingest(port, proc.pid, bodies)  # type: ignore[attr-defined]
        out.update({f"{mode}_{k}": v for k, v in got.items()})
    _stop(proc)
    return out


def _stop(proc: object) -> None:
    proc.terminate()  # type: ignore[attr-defined]
    proc.wait(timeout=30)  # type: ignore[attr-defined]


def measure_archive(artifact: Path, db: Path, keep: int) -> dict[str, float]:
    """Archive all but ``keep`` impressions through ``POST /v1/admin/snapshot``; then the
    ready time and RSS from the snapshot, and replaying archive plus store without one."""
    env = {"RECSYS_SNAPSHOT_INTERVAL_S": "0", "RECSYS_ARCHIVE_KEEP_IMPRESSIONS": str(keep)}
    out: dict[str, float] = {}
    _, rss0, port, proc = _start(artifact, db, env)
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/admin/snapshot", headers={"X-API-Key": "k"}, timeout=3600
    ).json()
    out["archived"], out["archive_s"] = r["archived"], r["seconds"]
    out["archive_rss_growth_mb"] = _rss_mb(proc.pid) - rss0  # type: ignore[attr-defined]
    proc.terminate()  # type: ignore[attr-defined]
    proc.wait(timeout=30)  # type: ignore[attr-defined]
    files = list(db.with_suffix(".archive").rglob("*.parquet"))
    out["archive_mb"] = sum(f.stat().st_size for f in files) / 2**20
    for name, drop in (("archived_snapshot", False), ("archive_replay", True)):
        if drop:  # no usable snapshot: the replica reads the archive and the store
            with sqlite3.connect(db) as c:
                c.execute("DELETE FROM snapshots")
        ready, rss, port, proc = _start(artifact, db, env)
        out[f"{name}_ready_s"], out[f"{name}_rss_mb"] = ready, rss
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(timeout=30)  # type: ignore[attr-defined]
    return out


def matmul_gflops() -> float:
    """This machine's float32 matmul rate now (numpy, 2048^3): the reference that says how
    fast the machine was during the run (shared machines vary by 2x)."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--sizes", default="0,100000,1000000")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument(
        "--archive-keep",
        type=int,
        help="then archive all but this many impressions of each size (SQLite) and time "
        "the move, a start from the snapshot and a replay of archive plus store",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="ingest measured this many times per size, the sizes alternated within each "
        "round, each time on a copy of the store as the start-ups left it",
    )
    args = ap.parse_args()
    print(
        f"reference: float32 matmul {matmul_gflops():.0f} GFLOP/s on this machine now", flush=True
    )
    sizes = [int(x) for x in args.sizes.split(",")]
    pg = PostgresServer() if args.store == "postgresql" else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stores = [_Store(Path(tmp), i, pg.url if pg else None) for i in range(len(sizes))]
            rows: list[dict[str, Any]] = []
            for store, n in zip(stores, sizes, strict=True):
                fill_s = fill(store.url or store.db, args.artifacts, n)
                row = {"store": args.store, "stored_impressions": n, "fill_s": fill_s}
                rows.append({**row, **store.run(measure_start, args.artifacts, store.db, n)})
            for r in range(args.rounds):
                for store, row in zip(stores, rows, strict=True):
                    got = store.run(measure_ingest, args.artifacts, store.fresh_copy(), copy=True)
                    for k, v in got.items():
                        row.setdefault(f"{k}_rounds", []).append(v)
                        row[k] = float(np.median(row[f"{k}_rounds"]))
                print(f"ingest round {r + 1} of {args.rounds}", flush=True)
            for store, row in zip(stores, rows, strict=True):
                if args.archive_keep is not None and pg is None:
                    row.update(measure_archive(args.artifacts, store.db, args.archive_keep))
            for upto in range(1, len(rows) + 1):
                _report(rows[:upto])
    finally:
        if pg is not None:
            pg.destroy()
    print(f"reference: float32 matmul {matmul_gflops():.0f} GFLOP/s at the end", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


class _Store:
    """One size's store: a SQLite file or a PostgreSQL database (``url``), and the copy
    an ingest round writes into, made afresh from it each round."""

    def __init__(self, tmp: Path, i: int, server_url: str | None) -> None:
        self.db, self.copy_db = tmp / f"state-{i}.sqlite3", tmp / f"ingest-{i}.sqlite3"
        self.server_url, self.name = server_url, f"bench{i}"
        self.url = self._create(self.name) if server_url else None
        self.copy_url: str | None = None

    def _create(self, name: str, template: str | None = None) -> str:
        import psycopg

        assert self.server_url is not None
        with psycopg.connect(self.server_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name}")
            c.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return self.server_url.rsplit("/", 1)[0] + f"/{name}"

    def fresh_copy(self) -> Path:
        """A copy of the store as it is now; the copy's path (SQLite) or the original
        path with ``url`` pointing at the copy (PostgreSQL)."""
        if self.server_url:
            self.copy_url = self._create(f"{self.name}_ingest", self.name)
            return self.db
        self.copy_db.unlink(missing_ok=True)
        with sqlite3.connect(self.db) as src, sqlite3.connect(self.copy_db) as dst:
            src.backup(dst)
        return self.copy_db

    def run(self, job: Any, *args: Any, copy: bool = False) -> dict[str, float]:
        """``job(*args)`` with the servers it starts pointed at this store, or at its
        copy (``copy``: after ``fresh_copy``)."""
        _URL.clear()
        url = self.copy_url if copy else self.url
        if url:
            _URL.append(url)
        return dict(job(*args))


def _ratios(row: dict[str, Any], base: dict[str, Any], key: str) -> str:
    """Each round's ratio of ``key`` to the first size's in the same round: "0.95x", or
    with several rounds "0.95x median, 0.87-1.02x"."""
    mine, ref = row.get(f"{key}_rounds", [row[key]]), base.get(f"{key}_rounds", [base[key]])
    ratios = [a / b for a, b in zip(mine, ref, strict=True)]
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}x"
    return f"{np.median(ratios):.2f}x median, {min(ratios):.2f}-{max(ratios):.2f}x"


def _report(rows: list[dict[str, Any]]) -> None:
    if rows:
        row, n = rows[-1], int(rows[-1]["stored_impressions"])
        base = rows[0]
        print(
            f"{n:>9,} stored: replay ready {row['replay_ready_s']:.1f} s "
            f"({row['replay_ready_s'] / base['replay_ready_s']:.2f}x empty), RSS "
            f"{row['replay_rss_mb']:.0f} MB | snapshot {row['snapshot_mb']:.1f} MB, ready "
            f"{row['snapshot_ready_s']:.1f} s ({row['snapshot_ready_s'] / base['replay_ready_s']:.2f}x "
            f"empty), RSS {row['snapshot_rss_mb']:.0f} MB, from snapshot {bool(row['from_snapshot'])}",
            flush=True,
        )
        if "archived" in row:
            print(
                f"{'':>9}  archive: {row['archived']:,.0f} impressions moved in "
                f"{row['archive_s']:.1f} s ({row['archive_mb']:.1f} MB of Parquet, RSS "
                f"+{row['archive_rss_growth_mb']:.0f} MB); then ready from the snapshot "
                f"{row['archived_snapshot_ready_s']:.1f} s (RSS "
                f"{row['archived_snapshot_rss_mb']:.0f} MB), "
                f"replaying archive and store {row['archive_replay_ready_s']:.1f} s "
                f"(RSS {row['archive_replay_rss_mb']:.0f} MB)",
                flush=True,
            )
        for mode in ("wait", "nowait", "fresh"):
            if f"{mode}_ingest_per_s" not in row:
                continue
            what = "fresh users, nowait" if mode == "fresh" else f"{mode} for refits"
            print(
                f"{'':>9}  ingest ({what}): {row[f'{mode}_ingest_per_s']:,.0f} "
                f"impressions/s ({_ratios(row, base, f'{mode}_ingest_per_s')} empty), "
                f"server CPU {row[f'{mode}_ingest_cpu_ms']:.3f} ms an impression, batch "
                f"p50 {row[f'{mode}_batch_p50_ms']:.0f} ms p99 {row[f'{mode}_batch_p99_ms']:.0f} "
                f"ms, every effect refitted after {row[f'{mode}_refitted_after_s']:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
