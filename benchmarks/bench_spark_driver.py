"""Does the Spark engine keep the log out of the driver? The driver's Python memory of
``fit-glmix --engine spark`` and ``evaluate --engine spark`` at two log sizes.

    .venv/bin/python -m benchmarks.bench_spark_driver --out /tmp/spark_driver
        [--impressions 1000000 5000000] [--master 'local[2]'] [--users 10200]

With ``--users`` the number of users is fixed and the log grows by days, so what the
driver holds per user stays the same and only the log grows.

Worlds: ``recsys synth`` with about 98 impressions per user (the default world's rate),
20,000 short videos of D = 16; an artifact from a quick ``train-embeddings`` (average
pooling, 20k triplets). Then each Spark job runs as its own process; the peak
anonymous memory of the driver's Python process alone (the JVM is its child and is not
counted) and the wall time are printed, with the local engine beside them for scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.bench_scale import run_job


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--impressions", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--master", default="local[2]")
    ap.add_argument(
        "--users",
        type=int,
        default=0,
        help="fixed number of users (the log grows by more days); 0: one per 98 impressions",
    )
    args = ap.parse_args()
    recsys = str(Path(sys.executable).with_name("recsys"))
    spark = ["--engine", "spark", "--spark-master", args.master]
    results: dict[str, dict[str, object]] = {}
    for n in args.impressions:
        users = args.users or max(100, n // 98)
        days = max(1, round(28 * n / (98 * users)))  # 98 impressions a user in 28 days
        tag = f"{n}" if not args.users else f"{n}u{users}"
        world, a = args.out / f"w{tag}", args.out / f"a{tag}"
        if not (world / "videos.parquet").exists():
            run_job(
                [recsys, "synth", "--out", str(world), "--videos", "20000", "--users", str(users),
                 "--days", str(days), "--feature-dim", "16"],
                None,
            )  # fmt: skip
        run_job(
            [recsys, "train-embeddings", "--data", str(world), "--out", str(a), "--overwrite",
             "--pooling", "avg", "--epochs", "1", "--max-triplets", "20000"],
            None,
        )  # fmt: skip
        jobs = {
            "fit-glmix (spark)": [recsys, "fit-glmix", "--data", str(world), "--artifacts", str(a),
                                  "--no-tune", *spark],
            "evaluate (spark)": [recsys, "evaluate", "--data", str(world), "--artifacts", str(a),
                                 "--out", str(args.out / f"e{n}"), "--no-baselines",
                                 "--bootstrap", "0", *spark],
            "fit-glmix (local)": [recsys, "fit-glmix", "--data", str(world), "--artifacts", str(a),
                                  "--no-tune"],
        }  # fmt: skip
        for name, cmd in jobs.items():
            r = run_job(cmd, None, tree=False)
            results.setdefault(name, {})[str(n)] = r
            print(
                f"{n:>9,} impressions  {name:<18} exit {r['exit']}  {r['seconds']:6.1f} s  "
                f"driver Python peak anon {r['peak_anon_mib']} MiB",
                flush=True,
            )
            if r["exit"] != 0:
                print("\n".join(r["tail"]), flush=True)
    (args.out / "bench_spark_driver.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
