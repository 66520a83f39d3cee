"""``recsys fit-glmix --engine spark``: the GLMix job with its rows on Spark end to end.

The rows are built by a Spark join (``pipelines.spark.rows``), tuned and fitted by the
shared coordinate descent over the Spark backend (``pipelines.spark.glmix``), the
validation log-loss summed where the rows are, and the watch histories written by Spark.
The driver holds per-user and per-video coefficients (one row per user or video) and
sums, never a row per impression.
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

from pipelines.glmix.coordinates import choose_coordinates, fit_four
from pipelines.spark.glmix import fit_glmix_frame, global_features_of
from pipelines.spark.rows import glmix_rows_spark
from pipelines.spark.session import ROWS_PER_TASK, parallelism
from recsys.errors import UserInputError
from recsys.glmix.logistic import mean_log_loss
from recsys.glmix.model import GLMix, GLMixConfig
from recsys.glmix.tuning import RANDOM_L2_GRID, video_candidates
from recsys.scoring import HISTORY_FEATURES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def frame_log_loss(rows: DataFrame, model: GLMix, dim: int, global_dim: int) -> float:
    """Mean log-loss of ``model`` on (user_id, video_id, y, f, g) rows, summed partition
    by partition."""

    def part(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        total, count = 0.0, 0
        for rb in batches:
            if rb.num_rows == 0:
                continue
            f = rb.column("f").flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            users = rb.column("user_id").to_numpy(zero_copy_only=False)
            videos = rb.column("video_id").to_numpy(zero_copy_only=False)
            y = rb.column("y").to_numpy().astype(np.float64)
            g = global_features_of(rb.column("g"), global_dim)
            p = model.predict_proba(users, f, g, videos if model.has_video_effects else None)
            total += mean_log_loss(y, p) * len(y)
            count += len(y)
        yield pa.RecordBatch.from_pydict({"loss": [total], "n": [count]})

    got = (
        rows.select("user_id", "video_id", "y", "f", "g")
        .mapInArrow(part, "loss double, n long")
        .collect()
    )
    n = sum(r["n"] for r in got)
    return math.fsum(r["loss"] for r in got) / n if n else math.nan


def frame_losses(
    spark: SparkSession,
    rows: DataFrame,
    cut: float,
    candidates: dict[Any, GLMixConfig],
    dim: int,
    g: int,
) -> dict[Any, float]:
    """``recsys.glmix.tuning.validation_losses`` on a DataFrame: fit on rows before
    ``cut`` (time in microseconds), log-loss on the rest."""
    from pyspark.sql import functions as F

    train, val = rows.where(F.col("t") < cut), rows.where(F.col("t") >= cut)
    if train.isEmpty() or val.isEmpty():
        raise UserInputError("regularisation selection needs both training and validation rows")
    losses: dict[Any, float] = {}
    for key, cfg in candidates.items():
        model = fit_glmix_frame(spark, train, dim, cfg, global_dim=g)
        losses[key] = frame_log_loss(val, model, dim, g)
    return losses


def select_random_l2_frame(
    spark: SparkSession, rows: DataFrame, cut: float, base: GLMixConfig, dim: int, g: int
) -> tuple[float, dict[float, float]]:
    """``recsys.glmix.tuning.select_random_l2`` on a DataFrame."""
    candidates = {lam: replace(base, random_l2=lam) for lam in RANDOM_L2_GRID}
    losses = frame_losses(spark, rows, cut, candidates, dim, g)
    return min(losses, key=lambda k: losses[k]), losses


def select_video_l2_frame(
    spark: SparkSession, rows: DataFrame, cut: float, base: GLMixConfig, dim: int, g: int
) -> tuple[GLMixConfig, dict[str, float]]:
    """``recsys.glmix.tuning.select_video_l2`` on a DataFrame."""
    candidates = video_candidates(base)
    losses = frame_losses(spark, rows, cut, candidates, dim, g)
    return candidates[min(losses, key=lambda k: losses[k])], losses


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
    cfg: Any,  # pipelines.glmix.fit_glmix.GLMixJobConfig
    say: Callable[[str], None],
) -> tuple[dict[str, GLMix], Callable[[Path], None], dict[str, Any]]:
    """(models by artifact stem, the histories writer, facts)."""
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
    # Spark's exact percentile interpolates as numpy's quantile does.
    cut = float(_first(rows.agg(F.percentile("t", 0.9))))
    if cfg.tune:
        say("GLMix: choosing random_l2 on the last 10% of the training period ...")
        best, losses = select_random_l2_frame(spark, rows, cut, glm_cfg, dim, g)
        say(f"GLMix: random_l2 = {best}")
        glm_cfg = replace(glm_cfg, random_l2=best)
        tuning = {"random_l2": best, "validation_log_loss": {str(k): v for k, v in losses.items()}}
    shipped, variant, video_tuning = choose_coordinates(
        glm_cfg,
        cfg.video_effects,
        cfg.tune,
        say,
        lambda base: select_video_l2_frame(spark, rows, cut, base, dim, g),
    )
    tuning.update(video_tuning)
    # Users (and videos) in order of their first impression, as the local fit stores them.
    order = _first_seen(rows, "user_id")
    video_order = _first_seen(rows, "video_id")
    t0 = time.perf_counter()
    say(f"GLMix: fitting on Spark ({n} rows in {n_parts} partitions) ...")
    fit_rows = rows.select("user_id", "video_id", "y", "f", "g")

    def fit(c: GLMixConfig, features: bool) -> GLMix:
        model = fit_glmix_frame(
            spark,
            fit_rows if features else fit_rows.withColumn("g", F.array().cast("array<float>")),
            dim,
            c,
            on_pass=(lambda p, ll: say(f"GLMix pass {p}: log-likelihood per row {ll:.5f}"))
            if features
            else None,
            partitions=n_parts,
            user_order=order,
            global_dim=g if features else 0,
            video_order=video_order if c.video_effects else None,
        )
        if g and features:
            model.global_names = list(HISTORY_FEATURES)
        return model

    models = fit_four(shipped, variant, fit, say)
    fit_s = time.perf_counter() - t0
    facts = {"training_rows": n, "fit_seconds": fit_s, "tuning": tuning, "config": shipped}
    return models, _histories_writer(rows), facts


def _first_seen(rows: DataFrame, key: str) -> list[str]:
    """The ids of ``key`` in order of their first impression (one row each)."""
    from pyspark.sql import functions as F

    first = rows.groupBy(key).agg(F.min("okey").alias("k")).orderBy("k")
    return [str(x) for x in first.select(key).toArrow().column(key).to_pylist()]
