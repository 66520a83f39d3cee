"""FAISS over random unit vectors: build time, single-query latency (p50/p99) and
recall@k of HNSW against exact search, in one run.

    .venv/bin/python -m benchmarks.bench_index [--n 1000000 --dim 64 --queries 500 --k 100]
"""

from __future__ import annotations

import argparse
import time

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
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = [str(i) for i in range(args.n)]
    results = {}
    for kind in ("flat", "hnsw"):
        t0 = time.perf_counter()
        idx = VideoIndex.build(ids, x, IndexConfig(kind=kind))
        build = time.perf_counter() - t0
        lat, found = [], []
        for i in range(args.queries):
            t = time.perf_counter()
            got, _ = idx.search(q[i : i + 1], args.k)
            lat.append((time.perf_counter() - t) * 1e3)
            found.append(got[0])
        results[kind] = found
        print(
            f"{kind:5s} build {build:6.1f} s  query p50 {np.percentile(lat, 50):7.3f} ms  p99 {np.percentile(lat, 99):7.3f} ms",
            flush=True,
        )
    recall = np.mean(
        [
            len(set(a) & set(b)) / args.k
            for a, b in zip(results["hnsw"], results["flat"], strict=True)
        ]
    )
    print(f"HNSW recall@{args.k} vs exact: {recall:.3f}")


if __name__ == "__main__":
    main()
