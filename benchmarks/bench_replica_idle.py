"""What an idle replica costs: CPU of ``recsys serve`` over PostgreSQL with no traffic,
at two sizes of the stored log (the follower's work must not grow with it).

    .venv/bin/python -m benchmarks.bench_replica_idle --artifacts RUN/artifact [--rows 1000 100000]

For each size: a fresh database on a temporary PostgreSQL server, that many impressions
inserted directly, a replica started and given 3 s to replay them, then its CPU time
(user + system, from /proc) over ``--seconds`` of silence, as a share of one core.
The SQLite store is printed beside it as the reference.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from recsys.artifact import load_embeddings
from serving.live import PostgresServer, free_port, start_server


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_share(artifact: Path, db: Path, url: str | None, seconds: float) -> float:
    proc = start_server(artifact, db, free_port(), state_url=url)
    try:
        time.sleep(3.0)
        c0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(seconds)
        return (_cpu_seconds(proc.pid) - c0) / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(10)


def _fill(url: str, video: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(url) as c:
        c.execute(  # the schema as the service makes it (a replica started once makes it)
            "INSERT INTO impressions (event_id, user_id, video_id, shown_at, watch_seconds) "
            "SELECT 'e' || i, 'u' || (i %% 500), %s, '2030-01-01T00:00:00Z', 5.0 "
            "FROM generate_series(1, %s) AS i",
            (video, rows),
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    video = load_embeddings(args.artifacts)[0][0]
    tmp = Path(tempfile.mkdtemp())
    sqlite = _idle_share(args.artifacts, tmp / "idle.sqlite3", None, args.seconds)
    print(f"SQLite store, empty log: {100 * sqlite:.2f}% of a core")
    pg = PostgresServer()
    try:
        import psycopg

        for n in args.rows:
            name = f"idle{n}"
            with psycopg.connect(pg.url, autocommit=True) as c:
                c.execute(f"CREATE DATABASE {name}")
            url = pg.url.rsplit("/", 1)[0] + "/" + name
            _idle_share(args.artifacts, tmp / "unused.sqlite3", url, 0.1)  # makes the schema
            _fill(url, video, n)
            share = _idle_share(args.artifacts, tmp / "unused.sqlite3", url, args.seconds)
            print(f"PostgreSQL store, {n:,} impressions: {100 * share:.2f}% of a core idle")
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
