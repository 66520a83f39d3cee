"""The Spark engine against the local engine on this machine: triplet mining and GLMix.

    .venv/bin/python -m benchmarks.bench_spark [--impressions 1000000 --users 20000]

Writes a synthetic impression log (users watching in sessions), then times:
* triplet mining: DuckDB (local engine) vs Spark SQL on local[1] and local[2];
* GLMix on one row per impression (E-dimensional video features): the local fit vs the
  Spark fit on local[1] and local[2], with the random-effect passes timed apart (the part
  that is embarrassingly parallel over users), and the largest coefficient difference.
Session start-up is reported apart. Ratios are against the local engine, same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.glmix.model import GLMixConfig, fit_glmix
from recsys.triplets import TripletConfig


def synth_log(n: int, users: int, videos: int, seed: int) -> pa.Table:
    """Sessions of ~10 impressions a few minutes apart; 30% watched past the threshold."""
    rng = np.random.default_rng(seed)
    sessions = n // 10
    session_user = rng.integers(0, users, sessions)
    session_start = rng.integers(0, 14 * 86400, sessions)
    user = np.repeat(session_user, 10)[:n]
    t = (np.repeat(session_start, 10) + np.tile(np.arange(10) * 120, sessions))[:n]
    video = rng.zipf(1.3, n) % videos
    base = datetime(2026, 1, 1, tzinfo=UTC)
    shown = np.datetime64(base.replace(tzinfo=None), "us") + t.astype("timedelta64[s]")
    return pa.table(
        {
            "user_id": pa.array([f"u{u:06d}" for u in user]),
            "video_id": pa.array([f"v{v:06d}" for v in video]),
            "shown_at": pa.array(shown, pa.timestamp("us", tz="UTC")),
            "watch_seconds": pa.array(np.where(rng.random(n) < 0.3, 60.0, 2.0)),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--videos", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from pipelines.data.impressions import impressions_connection
    from pipelines.spark.glmix import fit_glmix_frame
    from pipelines.spark.session import mine_triplets_spark, spark_session
    from recsys.triplets import mine_triplets

    tmp = Path(tempfile.mkdtemp(prefix="bench_spark_"))
    log = synth_log(args.impressions, args.users, args.videos, args.seed)
    pq.write_table(log, tmp / "impressions.parquet")
    train_end = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=12)
    cfg = TripletConfig()
    print(f"{log.num_rows} impressions, {args.users} users, {args.videos} videos", flush=True)

    t0 = time.perf_counter()
    local_triplets = mine_triplets(impressions_connection(tmp), cfg, train_end)
    mine_local = time.perf_counter() - t0
    print(f"mining local (DuckDB): {mine_local:.2f} s, {local_triplets.num_rows} triplets")

    # GLMix rows: one per impression, a fixed random feature vector per video.
    rng = np.random.default_rng(args.seed + 1)
    vid = np.array([int(v[1:]) for v in log.column("video_id").to_pylist()])
    feats = rng.normal(size=(args.videos, args.dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    x = feats[vid]
    users = np.array(log.column("user_id").to_pylist(), dtype=object)
    y = (log.column("watch_seconds").to_numpy() >= 10).astype(np.float64)
    gcfg = GLMixConfig(random_l2=1.0)
    t0 = time.perf_counter()
    local_model = fit_glmix(users, x, y, gcfg)
    glmix_local = time.perf_counter() - t0
    print(f"GLMix local: {glmix_local:.2f} s ({len(local_model.history)} passes)", flush=True)
    rows = pa.table(
        {
            "user_id": pa.array(users.tolist(), pa.string()),
            "y": pa.array(y),
            "f": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), args.dim).cast(
                pa.list_(pa.float32())
            ),
        }
    )
    pq.write_table(rows, tmp / "glmix_rows.parquet")

    results: dict[str, dict[str, float]] = {}
    for master in ("local[1]", "local[2]"):
        t0 = time.perf_counter()
        spark = spark_session(master)
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = mine_triplets_spark(spark, tmp / "impressions.parquet", cfg, train_end).toArrow()
        mine = time.perf_counter() - t0
        same = got.equals(local_triplets)
        df = spark.read.parquet(str(tmp / "glmix_rows.parquet"))
        clock: dict[str, float] = {}
        t0 = time.perf_counter()
        model = fit_glmix_frame(
            spark,
            df,
            args.dim,
            gcfg,
            partitions=args.partitions,
            user_order=list(local_model.user_ids),
            timings=clock,
        )
        fit = time.perf_counter() - t0
        diff = float(np.abs(model.user_coef - local_model.user_coef).max())
        results[master] = {"mine": mine, "fit": fit, **clock}
        print(
            f"{master}: session start {start:.1f} s | mining {mine:.2f} s "
            f"({mine / mine_local:.1f}x local, identical triplets: {same}) | GLMix {fit:.2f} s "
            f"({fit / glmix_local:.1f}x local; fixed {clock['fixed_s']:.2f} s, random-effect "
            f"passes {clock['random_s']:.2f} s; max |coef diff| {diff:.1e})",
            flush=True,
        )
        spark.stop()
    one, two = results["local[1]"], results["local[2]"]
    print(
        f"local[1] -> local[2] speed-up: mining {one['mine'] / two['mine']:.2f}x, "
        f"GLMix {one['fit'] / two['fit']:.2f}x, random-effect passes "
        f"{one['random_s'] / two['random_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
