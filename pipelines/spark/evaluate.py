"""``recsys evaluate --engine spark``: the test rows scored and their AUCs computed on
Spark; the driver receives sums, never a row per impression.

Test rows and the artifact's watch histories meet in partitions of whole users, where
the local functions score them (Eq. 16-17 similarities, GLMix with and without video
features) and replay the test period through online GLMix: its effects are per user, so
replaying each user's rows in time order is the local replay. AUCs and their DeLong
intervals come from ``pipelines.spark.auc.delong_spark``, paired differences from
``pipelines.spark.auc``. What needs the rows in one place stays with the local engine:
user-bootstrap intervals, the baseline ladder, AUC by day and ROC plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.impressions import group_histories
from pipelines.evaluation.evaluate import NOTES, SCORES, Evaluation, relative_improvement
from pipelines.evaluation.inputs import EvalConfig
from pipelines.evaluation.statistics import online_entry
from pipelines.spark.auc import delong_paired_spark, delong_spark
from pipelines.spark.rows import (
    by_user,
    embeddings_frame,
    impressions_frame,
    whole_partitions,
    with_embeddings,
)
from pipelines.spark.session import parallelism
from recsys import artifact as art
from recsys.errors import UserInputError
from recsys.glmix.model import GLMix
from recsys.online.replay import replay_users, replay_videos
from recsys.online.users import OnlineConfig, sigmoid
from recsys.scoring import glmix_global_features, prior_history_similarity, similarity_by_user

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SPARK_NOTE = (
    "Computed on Spark: DeLong intervals only (no user bootstrap), no baseline ladder, "
    "no AUC by day or ROC plot and no Table 7 with and without per-video effects (those "
    "need every test row in one process). The online replay runs per user partition, so "
    "online per-video effects learn from the impressions of that partition's users only."
)


def test_frame(
    spark: SparkSession, d: Path, a: Path, start: datetime, cutoff: datetime, threshold: float
) -> DataFrame:
    """The test period's rows with embeddings, label and cold-start flag, plus the
    artifact's history rows (``kind`` 1), hash-partitioned by user."""
    from pyspark.sql import functions as F

    imp = impressions_frame(spark, d, threshold)
    seen = imp.where(F.col("shown_at") < cutoff).select("video_id").distinct()
    seen = seen.withColumn("seen", F.lit(True))
    test = (
        imp.where(F.col("shown_at") >= start)
        .join(seen, "video_id", "left")
        .withColumn("cold", F.col("seen").isNull())
        .withColumn("kind", F.lit(0))
        .drop("seen", "shown_at")
    )
    emb = embeddings_frame(spark, a).localCheckpoint()  # one vkey per video in both joins
    hist = spark.read.parquet(str(a / art.HISTORIES)).select(
        "user_id", "video_id", F.lit(1).alias("kind"), F.unix_micros("watched_at").alias("t")
    )
    both = with_embeddings(test, emb, "test impressions").unionByName(
        with_embeddings(hist, emb, "history rows"), allowMissingColumns=True
    )
    return by_user(both, max(1, parallelism(spark)))


def _scorer(
    glm: GLMix, glm0: GLMix, dim: int, online: OnlineConfig | None
) -> Callable[[pa.Table], pa.Table]:
    """Scores of one partition's test rows (its users' histories beside them)."""

    def run(table: pa.Table) -> pa.Table:
        df = table.to_pandas()
        users, _ = pd.factorize(df["user_id"])
        vkeys, first, vrows = np.unique(
            df["vkey"].to_numpy(), return_index=True, return_inverse=True
        )
        flat = np.stack(df["f"].to_numpy())[first] if len(df) else np.zeros((0, dim))
        emb = np.asarray(flat, dtype=np.float64).reshape(len(vkeys), dim)
        is_hist = df["kind"].to_numpy() == 1
        hist = group_histories(users[is_hist].tolist(), vrows[is_hist].tolist())
        t = df[~is_hist]
        codes, rows = users[~is_hist], vrows[~is_hist].astype(np.int64)
        ids = t["user_id"].to_numpy(dtype=object)
        y = t["y"].to_numpy().astype(np.int64)
        x = emb[rows]
        videos = t["video_id"].to_numpy(dtype=object)  # for per-video effects
        max_s, avg_s = similarity_by_user(codes, rows, hist, emb)
        frozen_g = glmix_global_features(glm.global_names, max_s, avg_s)
        out = {
            "user_id": pa.array(ids.tolist(), pa.string()),
            "video_id": pa.array(t["video_id"].tolist(), pa.string()),
            "label": pa.array(y),
            "cold_start": pa.array(t["cold"].to_numpy(dtype=bool)),
            "new_user": pa.array(glm.user_rows(ids) < 0),
            "max_similarity": pa.array(max_s),
            "avg_similarity": pa.array(avg_s),
            "glmix": pa.array(glm.predict_proba(ids, x, frozen_g, videos)),
            "glmix_no_video": pa.array(glm0.predict_proba(ids, x, None, videos)),
        }
        if online is not None:
            times = t["t"].to_numpy().astype(np.int64)
            online_g = None
            if frozen_g is not None:
                live = prior_history_similarity(codes, rows, times, y > 0, emb, hist)
                online_g = glmix_global_features(glm.global_names, *live)
                out["history_only"] = pa.array(glm.predict_proba(ids, x, online_g, videos))
            user_logit, frozen = replay_users(
                ids, x, y, times, glm, online, online_g, videos, frozen_g
            )
            out["online"] = pa.array(sigmoid(user_logit))
            if frozen is not None:  # the per-video half runs partitioned by video
                out["user_logit"], out["frozen_logit"] = pa.array(user_logit), pa.array(frozen)
                out["t"], out["okey"] = pa.array(times), pa.array(t["okey"].to_numpy(np.int64))
                out["og"] = _feature_column(online_g, len(y))
                out["fg"] = _feature_column(frozen_g, len(y))
        return pa.table(out)

    return run


def scored_test_rows(
    spark: SparkSession,
    d: Path,
    a: Path,
    start: datetime,
    cutoff: datetime,
    threshold: float,
    glm: GLMix,
    glm0: GLMix,
    online: OnlineConfig | None,
) -> DataFrame:
    """One row per test impression with every score, computed on the executors."""
    rows = test_frame(spark, d, a, start, cutoff, threshold)
    dim = glm.embedding_dim
    schema = (
        "user_id string, video_id string, label long, cold_start boolean, new_user boolean, "
        "max_similarity double, avg_similarity double, glmix double, glmix_no_video double"
    )
    if online is not None:
        schema += ", history_only double" if glm.global_names else ""
        schema += ", online double"
    per_video = online is not None and glm.has_video_effects
    extra = _REPLAY_COLUMNS if per_video else ""
    scorer = whole_partitions(_scorer(glm, glm0, dim, online))
    scored = rows.mapInArrow(scorer, schema + extra).localCheckpoint()
    if not per_video:
        return scored
    # The online replay's per-video half: whole videos per partition, in time order.
    by_video = scored.repartition(max(1, parallelism(spark)), "video_id").sortWithinPartitions(
        "video_id", "t", "okey"
    )
    done = by_video.mapInArrow(whole_partitions(_video_replay(glm)), schema + extra)
    names = [c.split()[0] for c in schema.split(", ")]
    return done.select(*names).localCheckpoint()


#: the per-user half's columns the per-video half reads (``recsys.online.replay``)
_REPLAY_COLUMNS = (
    ", user_logit double, frozen_logit double, t long, okey long, "
    "og array<double>, fg array<double>"
)


def _feature_column(g: np.ndarray | None, n: int) -> pa.Array:
    if g is None:
        return pa.nulls(n, pa.list_(pa.float64()))
    return pa.array(list(np.asarray(g, dtype=np.float64)), pa.list_(pa.float64()))


def _features(column: pa.ChunkedArray, n: int) -> np.ndarray | None:
    if column.null_count == n or n == 0:
        return None
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float64).reshape(n, -1)


def _video_replay(glm: GLMix) -> Callable[[pa.Table], pa.Table]:
    """The online replay's per-video half over one partition's whole videos."""

    def run(table: pa.Table) -> pa.Table:
        n = table.num_rows
        users = table.column("user_id").to_numpy(zero_copy_only=False)
        videos = table.column("video_id").to_numpy(zero_copy_only=False)
        probs = replay_videos(
            users,
            videos,
            table.column("label").to_numpy().astype(np.float64),
            table.column("t").to_numpy(),
            glm,
            table.column("user_logit").to_numpy(),
            table.column("frozen_logit").to_numpy(),
            _features(table.column("og"), n),
            _features(table.column("fg"), n),
        )
        return table.set_column(table.column_names.index("online"), "online", pa.array(probs))

    return run


def auc_block_spark(rows: DataFrame, score: str) -> dict[str, Any]:
    """``pipelines.evaluation.statistics.auc_block`` on Spark (no bootstrap: NaN bounds)."""
    from pyspark.sql import functions as F

    ok = rows.where(F.col(score).isNotNull() & ~F.isnan(score))
    a, lo, hi = delong_spark(ok, score=score, label="label")
    return {
        "auc": a,
        "delong": [lo, hi],
        "bootstrap_users": [math.nan, math.nan],
        "rows": ok.count(),
    }


def online_block_spark(rows: DataFrame, cfg: OnlineConfig, with_history: bool) -> dict[str, Any]:
    """``pipelines.evaluation.statistics.online_block`` on Spark (AUC by day left out)."""
    from dataclasses import asdict

    from pyspark.sql import functions as F

    out: dict[str, Any] = {"config": asdict(cfg), "by_day": []}
    for name, sel in (("all", rows), ("new_users", rows.where(F.col("new_user")))):
        n = sel.count()
        classes = sel.select("label").distinct().count()
        if n < 2 or classes < 2:
            out[name] = {"rows": n, "note": "too few rows of both classes"}
            continue
        column = {"online": "online", "frozen": "glmix", "history_only": "history_only"}
        out[name] = online_entry(
            n,
            sel.select("user_id").distinct().count(),
            lambda c: delong_spark(sel, column[c], "label"),  # noqa: B023 (called at once)
            lambda a, b: delong_paired_spark(sel, column[a], column[b]),  # noqa: B023
            with_history,
        )
    return out


def spark_statistics(rows: DataFrame, scores: tuple[str, ...]) -> dict[str, Any]:
    """The AUC tables and row counts of ``pipelines.evaluation.evaluate`` from scored rows on Spark."""
    from pyspark.sql import functions as F

    cold = rows.where(F.col("cold_start"))
    counts = rows.agg(
        F.count("*").alias("test"),
        F.sum(F.col("cold_start").cast("long")).alias("cold_start"),
        F.sum((~F.isnan("max_similarity")).cast("long")).alias("with_history"),
        F.sum((F.col("cold_start") & ~F.isnan("max_similarity")).cast("long")).alias("cold_hist"),
        F.countDistinct("user_id").alias("users"),
        F.countDistinct(F.when(F.isnan("max_similarity"), F.col("user_id"))).alias("no_hist"),
        F.avg("label").alias("positive_rate"),
    ).first()
    assert counts is not None  # an aggregate always has its row
    has_cold = bool(counts["cold_start"])
    tables: dict[str, Any] = {"auc": {}, "auc_cold": {}, "ci_all": {}, "ci_cold": {}}
    for name in scores:
        blk = auc_block_spark(rows, name)
        tables["auc"][name], tables["ci_all"][name] = blk["auc"], blk
        blk_c = auc_block_spark(cold, name) if has_cold else None
        tables["auc_cold"][name] = blk_c["auc"] if blk_c else math.nan
        tables["ci_cold"][name] = blk_c
    tables["rows"] = {
        "test": int(counts["test"]),
        "cold_start": int(counts["cold_start"]),
        "test_with_history": int(counts["with_history"]),
        "cold_start_with_history": int(counts["cold_hist"]),
        "test_users": int(counts["users"]),
        "test_users_without_history": int(counts["no_hist"]),
        "positive_rate": float(counts["positive_rate"]),
    }
    tables["has_cold"] = has_cold
    return tables


def scores_writer(rows: DataFrame) -> Callable[[Path], None]:
    """test_scores.parquet written by Spark (one file), never through the driver."""
    import os
    import shutil
    import tempfile

    def write(path: Path) -> None:
        tmp = tempfile.mkdtemp(prefix=".scores.", dir=Path(path).parent)
        try:
            cols = [c for c in rows.columns if c != "new_user"]
            rows.select(*cols).coalesce(1).write.parquet(os.path.join(tmp, "out"))
            (part,) = Path(tmp, "out").glob("part-*.parquet")
            shutil.move(str(part), path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return write


def evaluate_on_spark(
    spark: SparkSession,
    where: str,
    d: Path,
    a: Path,
    window: tuple[datetime, datetime],
    cfg: EvalConfig,
    models: tuple[GLMix, GLMix],
    head: dict[str, Any],
) -> Evaluation:
    """``pipelines.evaluation.evaluate``'s report from the test rows scored on Spark:
    DeLong intervals, the online replay per user partition, no ladder (``SPARK_NOTE``)."""
    (start, cutoff), (glm, glm0) = window, models
    if cfg.progress:
        print(f"evaluating on {where} ...", flush=True)
    rows = scored_test_rows(
        spark, d, a, start, cutoff, cfg.watch_threshold_s, glm, glm0, cfg.online
    )
    if rows.isEmpty():
        raise UserInputError(f"no impressions at or after the test start {start.isoformat()}")
    stats = spark_statistics(rows, SCORES)
    report: dict[str, Any] = {**head, "evaluated_on": "spark", "rows": stats["rows"]}
    report["notes"] = [*NOTES, SPARK_NOTE]
    report["auc"], report["auc_cold_start"] = stats["auc"], stats["auc_cold"]
    report["ci95"] = {"all": stats["ci_all"], "cold_start": stats["ci_cold"]}
    if cfg.online is not None:
        if cfg.progress:
            print("online GLMix: replayed per user partition on Spark ...", flush=True)
        report["online"] = online_block_spark(rows, cfg.online, bool(glm.global_names))
    report["relative_improvement"] = relative_improvement(
        stats["auc"], stats["auc_cold"], stats["has_cold"], cfg.baseline_report
    )
    return Evaluation(report, None, {}, None, write_scores=scores_writer(rows))
