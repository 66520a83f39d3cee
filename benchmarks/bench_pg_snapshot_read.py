"""Resident memory after a replica reads a snapshot from PostgreSQL.

A throwaway PostgreSQL server (``serving.live.PostgresServer``) stores one snapshot of
``--mb`` random bytes; the store reads it back and the process's RSS is printed before
and after (freed blocks returned with ``malloc_trim``), while the store's own connection
stays open. libpq keeps its input buffer at the size of the largest row a connection has
received, so a snapshot read on the long-lived connection used to stay resident (hex
text: twice its size); the store now reads it on a connection of its own.

    python -m benchmarks.bench_pg_snapshot_read [--mb 64]
"""

from __future__ import annotations

import argparse
import gc
import os

from recsys.memory import release_free_memory
from serving.live import PostgresServer
from serving.stores import open_store


def _rss_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) >> 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=64, help="the snapshot's size")
    args = ap.parse_args()
    pg = PostgresServer()
    try:
        store = open_store(pg.url)
        assert store.save_snapshot("v1", os.urandom(args.mb << 20), 0, [])
        gc.collect()
        release_free_memory()
        before = _rss_mb()
        body = store.latest_snapshot("v1")
        assert body is not None and len(body) == args.mb << 20
        del body
        gc.collect()
        release_free_memory()
        print(f"a {args.mb} MB snapshot read: RSS {before} -> {_rss_mb()} MB (connection open)")
        store.close()
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
