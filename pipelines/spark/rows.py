"""The GLMix rows on Spark: impressions joined with the artifact's embeddings and each
row's similarity to the user's history, computed where the rows are.

With ``--engine spark`` the driver never holds the impression log: the rows are a
DataFrame hash-partitioned by user (the partitioning the GLMix fit and the evaluation
use), and the history features run as ``recsys.scoring.prior_history_similarity`` over
each partition's whole users, the same function the local engine calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys import artifact as art
from recsys.dataset import IMPRESSIONS_FILE
from recsys.errors import UserInputError
from recsys.scoring import history_features, prior_history_similarity

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def impressions_frame(spark: SparkSession, data_dir: Path, threshold: float) -> DataFrame:
    """(user_id, video_id, shown_at, t, y, okey) of every impression: ``t`` microseconds,
    ``y`` 1.0 for a valid watch, ``okey`` increasing in file order (ties in time)."""
    from pyspark.sql import functions as F

    return (
        spark.read.parquet(str(data_dir / IMPRESSIONS_FILE))
        .withColumn("okey", F.monotonically_increasing_id())
        .withColumn("t", F.unix_micros("shown_at"))
        .withColumn("y", (F.col("watch_seconds") >= F.lit(threshold)).cast("double"))
        .select("user_id", "video_id", "shown_at", "t", "y", "okey")
    )


def embeddings_frame(spark: SparkSession, artifact: Path) -> DataFrame:
    """(video_id, f array<float>, vkey) of the artifact's catalogue; ``vkey`` follows the
    artifact's order (the local engine's embedding rows)."""
    from pyspark.sql import functions as F

    return (
        spark.read.parquet(str(artifact / art.EMBEDDINGS))
        .withColumn("vkey", F.monotonically_increasing_id())
        .select("video_id", F.col("embedding").cast("array<float>").alias("f"), "vkey")
    )


def with_embeddings(rows: DataFrame, emb: DataFrame, what: str) -> DataFrame:
    """``rows`` joined with their videos' embeddings; an unknown video is a one-line
    error naming a few (the local engine refuses the same rows)."""
    from pyspark.sql import functions as F

    joined = rows.join(F.broadcast(emb), "video_id", "left")
    missing = joined.where(F.col("f").isNull()).select("video_id").distinct().limit(5).collect()
    if missing:
        names = ", ".join(repr(r["video_id"]) for r in missing)
        raise UserInputError(f"{what} name video(s) not in the artifact: {names}")
    return joined


def by_user(rows: DataFrame, partitions: int) -> DataFrame:
    """Hash-partitioned by user, each partition in (user, time, file order): whole users."""
    return rows.repartition(partitions, "user_id").sortWithinPartitions("user_id", "t", "okey")


def _partition_history_features(dim: int) -> Callable[[pa.Table], pa.Table]:
    def run(table: pa.Table) -> pa.Table:
        n = table.num_rows
        users, _ = pd.factorize(table.column("user_id").to_numpy(zero_copy_only=False))
        vkey = table.column("vkey").to_numpy()
        _, first, vrows = np.unique(vkey, return_index=True, return_inverse=True)
        f = table.column("f").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        emb = f.reshape(n, dim)[first].astype(np.float64)
        max_s, avg_s = prior_history_similarity(
            users,
            vrows.astype(np.int64),
            table.column("t").to_numpy(),
            table.column("y").to_numpy() > 0,
            emb,
        )
        g = history_features(max_s, avg_s).astype(np.float32)
        values = pa.array(g.reshape(-1))
        offsets = pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32))
        return table.append_column("g", pa.ListArray.from_arrays(offsets, values))

    return run


def whole_partitions(
    fn: Callable[[pa.Table], pa.Table],
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``fn`` over all rows of a partition at once (Arrow hands them over in batches)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        got = [b for b in batches if b.num_rows]
        if got:
            yield from fn(pa.Table.from_batches(got)).to_batches()

    return run


def glmix_rows_spark(
    spark: SparkSession,
    data_dir: Path,
    artifact: Path,
    test_start: datetime,
    threshold: float,
    history: bool,
    partitions: int,
) -> DataFrame:
    """(user_id, video_id, shown_at, t, y, f, g, okey, vkey) of the training period,
    hash-partitioned by user; ``g`` the history features (an empty array without them)."""
    from pyspark.sql import functions as F

    imp = impressions_frame(spark, data_dir, threshold).where(F.col("shown_at") < test_start)
    rows = by_user(
        with_embeddings(imp, embeddings_frame(spark, artifact), "training impressions"),
        partitions,
    )
    if not history:
        return rows.withColumn("g", F.array().cast("array<float>"))
    first = spark.read.parquet(str(artifact / art.EMBEDDINGS)).first()
    if first is None:
        raise UserInputError(f"{artifact}: the artifact has no embeddings")
    dim = len(first["embedding"])
    from pyspark.sql.types import ArrayType, FloatType, StructType

    schema = StructType([*rows.schema.fields]).add("g", ArrayType(FloatType()))
    return rows.mapInArrow(whole_partitions(_partition_history_features(dim)), schema)
