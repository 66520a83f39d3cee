"""``recsys fit-glmix --engine spark``: the GLMix job with its rows on Spark end to end.

The rows are built by a Spark join (``pipelines.spark_rows``), tuned and fitted by the
shared coordinate descent over the Spark backend (``pipelines.spark_glmix``), the
validation log-loss summed where the rows are, and the watch histories written by Spark.
The driver holds per-user coefficients (one row per user) and sums, never a row per
impression.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines.spark import ROWS_PER_TASK, parallelism
from pipelines.spark_glmix import fit_glmix_frame, global_features_of
from pipelines.spark_rows import glmix_rows_spark
from recsys.errors import UserInputError
from recsys.glmix import GLMix, GLMixConfig
from recsys.glmix_tuning import RANDOM_L2_GRID
from recsys.logistic import mean_log_loss
from recsys.scoring import HISTORY_FEATURES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def frame_log_loss(rows: DataFrame, model: GLMix, dim: int, global_dim: int) -> float:
    """Mean log-loss of ``model`` on (user_id, y, f, g) rows, summed partition by partition."""

    def part(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        total, count = 0.0, 0
        for rb in batches:
            if rb.num_rows == 0:
                continue
            f = rb.column("f").flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            users = rb.column("user_id").to_numpy(zero_copy_only=False)
            y = rb.column("y").to_numpy().astype(np.float64)
            p = model.predict_proba(users, f, global_features_of(rb.column("g"), global_dim))
            total += mean_log_loss(y, p) * len(y)
            count += len(y)
        yield pa.RecordBatch.from_pydict({"loss": [total], "n": [count]})

    got = rows.select("user_id", "y", "f", "g").mapInArrow(part, "loss double, n long").collect()
    n = sum(r["n"] for r in got)
    return math.fsum(r["loss"] for r in got) / n if n else math.nan


def select_random_l2_frame(
    spark: SparkSession, rows: DataFrame, cut: float, base: GLMixConfig, dim: int, g: int
) -> tuple[float, dict[float, float]]:
    """``recsys.glmix.select_random_l2`` on a DataFrame: fit on rows before ``cut`` (time
    in microseconds), log-loss on the rest, the lowest wins."""
    from pyspark.sql import functions as F

    train, val = rows.where(F.col("t") < cut), rows.where(F.col("t") >= cut)
    if train.isEmpty() or val.isEmpty():
        raise UserInputError("regularisation selection needs both training and validation rows")
    losses: dict[float, float] = {}
    for lam in RANDOM_L2_GRID:
        model = fit_glmix_frame(spark, train, dim, replace(base, random_l2=lam), global_dim=g)
        losses[lam] = frame_log_loss(val, model, dim, g)
    return min(losses, key=lambda k: losses[k]), losses


def _histories_writer(rows: DataFrame) -> Callable[[Path], None]:
    """The artifact's histories file (user_id, video_id, watched_at: valid watches in log
    order), written by Spark into one Parquet file."""
    from pyspark.sql import functions as F

    watches = (
        rows.where(F.col("y") > 0)
        .orderBy("t", "okey")
        .select("user_id", "video_id", F.col("shown_at").alias("watched_at"))
    )

    def write(path: Path) -> None:
        tmp = tempfile.mkdtemp(prefix=".histories.", dir=Path(path).parent)
        try:
            watches.coalesce(1).write.mode("overwrite").parquet(os.path.join(tmp, "out"))
            parts = sorted(Path(tmp, "out").glob("part-*.parquet"))
            if len(parts) != 1:
                raise RuntimeError(f"expected one histories file from Spark, got {len(parts)}")
            _with_utc_times(parts[0], Path(path))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return write


def _first(df: DataFrame) -> Any:
    row = df.first()
    if row is None:
        raise UserInputError("no rows")  # checked before: a bug, not input
    return row[0]


def _with_utc_times(src: Path, dst: Path) -> None:
    """Spark's Parquet timestamps read back without a zone; the histories' contract is
    UTC microseconds. Rewritten batch by batch (bounded memory)."""
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(src)
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("video_id", pa.string()),
            ("watched_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    with pq.ParquetWriter(dst, schema) as writer:
        for batch in reader.iter_batches(batch_size=1 << 16):
            times = batch.column("watched_at").cast(pa.timestamp("us"))
            cols = [batch.column("user_id"), batch.column("video_id"), times.cast(schema[2].type)]
            writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))


def fit_glmix_on_spark(
    spark: SparkSession,
    data_dir: Path,
    artifact: Path,
    test_start: datetime,
    cfg: Any,  # pipelines.fit_glmix.GLMixJobConfig (imported there; no circle)
    say: Callable[[str], None],
) -> tuple[GLMix, GLMix, Callable[[Path], None], dict[str, Any]]:
    """(model with video features, model without, the histories writer, facts)."""
    from pyspark.sql import functions as F

    parts = max(1, parallelism(spark))
    rows = glmix_rows_spark(
        spark,
        data_dir,
        artifact,
        test_start,
        cfg.watch_threshold_s,
        cfg.history_features,
        parts,
    )
    rows = rows.localCheckpoint()  # the join and the history features, computed once
    n = rows.count()
    if n == 0:
        raise UserInputError("no impressions before the test start to fit GLMix on")
    n_parts = max(1, min(parts, math.ceil(n / ROWS_PER_TASK)))
    dim = len(_first(rows.select("f")))
    g = len(HISTORY_FEATURES) if cfg.history_features else 0
    glm_cfg, tuning = cfg.glmix, {}
    if cfg.tune:
        say("GLMix: choosing random_l2 on the last 10% of the training period ...")
        # Spark's exact percentile interpolates as numpy's quantile does.
        cut = float(_first(rows.agg(F.percentile("t", 0.9))))
        best, losses = select_random_l2_frame(spark, rows, cut, glm_cfg, dim, g)
        say(f"GLMix: random_l2 = {best}")
        glm_cfg = replace(glm_cfg, random_l2=best)
        tuning = {"random_l2": best, "validation_log_loss": {str(k): v for k, v in losses.items()}}
    # Users in order of their first impression, as the local fit stores them (one row each).
    first_seen = rows.groupBy("user_id").agg(F.min("okey").alias("k")).orderBy("k")
    order = first_seen.select("user_id").toArrow().column("user_id").to_pylist()
    t0 = time.perf_counter()
    say(f"GLMix: fitting on Spark ({n} rows in {n_parts} partitions) ...")
    fit_rows = rows.select("user_id", "y", "f", "g")
    with_video = fit_glmix_frame(
        spark,
        fit_rows,
        dim,
        glm_cfg,
        on_pass=lambda p, ll: say(f"GLMix pass {p}: log-likelihood per row {ll:.5f}"),
        partitions=n_parts,
        user_order=order,
        global_dim=g,
    )
    if g:
        with_video.global_names = list(HISTORY_FEATURES)
    fit_s = time.perf_counter() - t0
    say("GLMix without video features ...")
    no_video = fit_glmix_frame(
        spark,
        fit_rows.withColumn("g", F.array().cast("array<float>")),
        dim,
        replace(glm_cfg, use_video_features=False),
        partitions=n_parts,
        user_order=order,
    )
    facts = {"training_rows": n, "fit_seconds": fit_s, "tuning": tuning, "config": glm_cfg}
    return with_video, no_video, _histories_writer(rows), facts
