"""DeLong on Spark: an AUC with its interval, and the paired difference of two scores'
AUCs on the same rows, without bringing the rows to the driver.

Placement values depend only on the score (ties share them), so a table of (distinct
score, class counts, V10, V01) is built from class counts per score, range-partitioned
by score, with the counts below each partition from a first pass. One AUC sums over the
table; a paired difference joins both scores' tables back to the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import norm

from pipelines.spark.session import ROWS_PER_TASK, parallelism

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def placement_table(scored: DataFrame, score: str, label: str) -> tuple[DataFrame, int, int]:
    """((s, pos, neg, v10, v01) for every distinct score, positives m, negatives n): the
    class counts at s; V10 of a
    positive at s = share of negatives below it (ties half), V01 of a negative at s =
    share of positives above it."""
    from pyspark.sql import functions as F

    counts = (
        scored.select(F.col(score).cast("double").alias("s"), F.col(label).cast("int").alias("y"))
        .groupBy("s")
        .agg(F.sum("y").alias("pos"), F.sum(1 - F.col("y")).alias("neg"))
    )
    distinct = counts.count()
    parts = max(1, min(parallelism(scored.sparkSession), math.ceil(distinct / ROWS_PER_TASK)))
    ranged = counts.repartitionByRange(parts, "s").sortWithinPartitions("s").localCheckpoint()
    totals = (
        ranged.groupBy(F.spark_partition_id().alias("part"))
        .agg(F.min("s").alias("lo"), F.sum("pos").alias("pos"), F.sum("neg").alias("neg"))
        .collect()
    )
    summary = sorted((r["lo"], int(r["pos"]), int(r["neg"])) for r in totals)
    m, n = sum(r[1] for r in summary), sum(r[2] for r in summary)
    offsets: dict[float, tuple[int, int]] = {}
    neg_below, pos_seen = 0, 0
    for lo, pos, neg in summary:
        offsets[lo] = (neg_below, m - pos_seen - pos)
        neg_below += neg
        pos_seen += pos

    def placements(it: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        frames = [pdf for pdf in it if len(pdf)]
        if not frames:
            return
        pdf = pd.concat(frames).sort_values("s")
        below, above = offsets[float(pdf["s"].iloc[0])]
        pos = pdf["pos"].to_numpy(np.float64)
        neg = pdf["neg"].to_numpy(np.float64)
        neg_lt = below + np.cumsum(neg) - neg
        pos_gt = above + pos[::-1].cumsum()[::-1] - pos
        yield pd.DataFrame(
            {
                "s": pdf["s"].to_numpy(),
                "pos": pos,
                "neg": neg,
                "v10": (neg_lt + 0.5 * neg) / max(n, 1),
                "v01": (pos_gt + 0.5 * pos) / max(m, 1),
            }
        )

    table = ranged.mapInPandas(
        placements, "s double, pos double, neg double, v10 double, v01 double"
    )
    return table, m, n


def delong_spark(
    scored: DataFrame, score: str = "score", label: str = "label", level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC, low, high) as ``recsys.auc.delong_ci`` computes it, from a DataFrame of
    (score, label in {0, 1}) rows of any size: the sums of the placement values and
    their squares over the placement table (``placement_table``)."""
    from pyspark.sql import functions as F

    from recsys.auc import delong_from_moments

    table, m, n = placement_table(scored, score, label)
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    v10, v01, pos, neg = F.col("v10"), F.col("v01"), F.col("pos"), F.col("neg")
    sums = table.agg(
        F.sum(pos * v10).alias("s10"),
        F.sum(pos * v10 * v10).alias("s10sq"),
        F.sum(neg * v01).alias("s01"),
        F.sum(neg * v01 * v01).alias("s01sq"),
    ).first()
    assert sums is not None  # an aggregate always has its row
    return delong_from_moments(m, n, sums["s10"], sums["s10sq"], sums["s01"], sums["s01sq"], level)


def delong_paired_spark(
    scored: DataFrame, a: str, b: str, label: str = "label", level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC_a - AUC_b, low, high) as ``recsys.auc.delong_paired_difference`` computes it,
    from a DataFrame with both scores and the label on every row (rows where either is
    NaN or null dropped)."""
    from pyspark.sql import functions as F

    rows = scored.select(
        F.col(a).cast("double").alias("a"),
        F.col(b).cast("double").alias("b"),
        F.col(label).cast("int").alias("y"),
    ).where(F.col("a").isNotNull() & F.col("b").isNotNull() & ~F.isnan("a") & ~F.isnan("b"))
    ta, m, n = placement_table(rows, "a", "y")
    tb, _, _ = placement_table(rows, "b", "y")
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    both = (
        rows.join(ta.withColumnRenamed("s", "a"), "a")  # tables as long as the distinct scores
        .withColumnsRenamed({"v10": "v10a", "v01": "v01a"})
        .join(tb.withColumnRenamed("s", "b"), "b")
        .withColumnsRenamed({"v10": "v10b", "v01": "v01b"})
    )
    d = F.when(F.col("y") == 1, F.col("v10a") - F.col("v10b")).otherwise(
        F.col("v01a") - F.col("v01b")
    )
    sums = (
        both.withColumn("d", d)
        .groupBy("y")
        .agg(F.sum("d").alias("s"), F.sum(F.col("d") * F.col("d")).alias("sq"))
        .collect()
    )
    got = {int(r["y"]): (float(r["s"]), float(r["sq"])) for r in sums}
    (s10, sq10), (s01, sq01) = got[1], got[0]
    diff = s10 / m
    if m < 2 or n < 2:
        return diff, float("nan"), float("nan")
    var = (
        max(sq10 - s10 * s10 / m, 0.0) / (m - 1) / m + max(sq01 - s01 * s01 / n, 0.0) / (n - 1) / n
    )
    half = float(norm.ppf(0.5 + level / 2)) * math.sqrt(var)
    return diff, diff - half, diff + half
