"""FAISS over random unit vectors: build time, single-query latency (p50/p99) and
recall@k of HNSW against exact search, in one run.

    .venv/bin/python -m benchmarks.bench_index [--n 1000000 --dim 64 --queries 500 --k 100]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from recsys.index import IndexConfig, VideoIndex


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads for search (1: one query per core)",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = [str(i) for i in range(args.n)]
    faiss.omp_set_num_threads(args.threads)

    def timed_queries(idx: VideoIndex) -> tuple[list[list[str]], np.ndarray]:
        lat, found = [], []
        for i in range(args.queries):
            t = time.perf_counter()
            got, _ = idx.search(q[i : i + 1], args.k)
            lat.append((time.perf_counter() - t) * 1e3)
            found.append(got[0])
        return found, np.array(lat)

    t0 = time.perf_counter()
    flat = VideoIndex.build(ids, x, IndexConfig(kind="flat"))
    print(f"flat  build {time.perf_counter() - t0:6.1f} s", flush=True)
    exact, lat = timed_queries(flat)
    print(
        f"flat  query p50 {np.percentile(lat, 50):7.3f} ms  p99 {np.percentile(lat, 99):7.3f} ms",
        flush=True,
    )
    t0 = time.perf_counter()
    hnsw = VideoIndex.build(ids, x, IndexConfig(kind="hnsw"))
    print(
        f"hnsw  build {time.perf_counter() - t0:6.1f} s (M = 32, efConstruction = 80)", flush=True
    )
    base = faiss.downcast_index(hnsw.index.index)
    for ef in args.ef_search:
        base.hnsw.efSearch = ef
        found, lat = timed_queries(hnsw)
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, exact, strict=True)])
        print(
            f"hnsw  efSearch {ef:4d}: query p50 {np.percentile(lat, 50):7.3f} ms  "
            f"p99 {np.percentile(lat, 99):7.3f} ms  recall@{args.k} {recall:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
