"""GLMix on Spark: ``recsys.coordinate_descent``'s loop over a backend whose rows are a
DataFrame hash-partitioned by user.

* the fixed effect: Newton's method over gradient and curvature sums
  (``recsys.logistic.logistic_sums``) added up across partitions;
* each random-effect pass maps the partitions (every one holds whole users) with the
  local batched solver (``recsys.random_effects.fit_user_effects``).

Same loop, same per-user solver: coefficients equal to the local fit to ~1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.spark import ROWS_PER_TASK, parallelism
from pipelines.spark_rows import whole_partitions
from recsys.coordinate_descent import coordinate_descent, fixed_design
from recsys.design import dense_video
from recsys.errors import UserInputError
from recsys.glmix import GLMix, GLMixConfig, full_fixed_vector, validate_glmix_inputs
from recsys.glmix_config import fixed_prior
from recsys.logistic import log_likelihood, logistic_sums
from recsys.random_effects import fit_user_effects, posterior_precision

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_STATE_SCHEMA = (
    "user_id string, y double, f array<float>, g array<float>, coef array<double>, "
    "prec array<double>, rand double, ll double"
)


def fit_glmix_spark(
    spark: SparkSession,
    user_ids: np.ndarray,
    video: np.ndarray,
    labels: np.ndarray,
    cfg: GLMixConfig | None = None,
    on_pass: Callable[[int, float], None] | None = None,
    partitions: int | None = None,
    global_feats: np.ndarray | None = None,
) -> GLMix:
    """``recsys.glmix.fit_glmix`` with the data in Spark: the same coordinate descent,
    the same per-user solver, coefficients equal to the local fit to ~1e-6."""
    cfg = cfg or GLMixConfig()
    if cfg.max_rows_per_user:
        raise UserInputError("--engine spark does not subsample users' rows (max_rows_per_user)")
    y_np, checked, codes, uniq = validate_glmix_inputs(user_ids, video, labels, global_feats)
    video = dense_video(checked)
    g = 0 if global_feats is None else global_feats.shape[1]
    rows = pd.DataFrame(
        {
            "user_id": np.asarray(uniq, dtype=object)[codes],
            "y": y_np,
            "f": list(np.asarray(video, dtype=np.float32)),
            "g": list(
                np.zeros((len(y_np), 0), np.float32)
                if global_feats is None
                else np.asarray(global_feats, dtype=np.float32)
            ),
        }
    )
    df = spark.createDataFrame(rows, "user_id string, y double, f array<float>, g array<float>")
    return fit_glmix_frame(
        spark, df, video.shape[1], cfg, on_pass, partitions, list(uniq), global_dim=g
    )


class SparkBackend:
    """The rows as a cached DataFrame of (user_id, y, f, g) plus each user's coefficients,
    precision and each row's random-effect score, hash-partitioned by user."""

    def __init__(
        self,
        spark: SparkSession,
        rows: DataFrame,
        feature_dim: int,
        global_dim: int,
        cfg: GLMixConfig,
        partitions: int | None,
    ) -> None:
        from pyspark.sql import functions as F

        self.n = rows.count()
        # One task per core, but no partition under ~10k rows: a Spark task costs ~0.1 s
        # before any work (Spark Connect's default of 200 partitions made a 3k-row fit 144 s).
        n_parts = partitions or max(1, min(parallelism(spark), math.ceil(self.n / ROWS_PER_TASK)))
        self.e, self.gd, self.cfg = feature_dim, global_dim, cfg
        self.use_video = cfg.use_video_features
        self.q = 1 + (feature_dim if self.use_video else 0)  # the random effect: [1, video]
        self.p = self.q + global_dim  # the fixed effect: [1, video, global]
        base = rows if global_dim else rows.withColumn("g", F.array().cast("array<float>"))
        state = (
            base.withColumn("coef", F.lit(None).cast("array<double>"))
            .withColumn("prec", F.lit(None).cast("array<double>"))
            .withColumn("rand", F.lit(0.0))
        )
        # Hash-partitioned by user: every partition holds whole users, which the
        # random-effect pass solves partition by partition.
        self.state = state.repartition(n_parts, "user_id").cache()

    def fixed_sums(
        self, beta: np.ndarray, derivatives: bool
    ) -> tuple[float, np.ndarray, np.ndarray]:
        p, e, gd, use_video = self.p, self.e, self.gd, self.use_video

        def part(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            ll, g, h = 0.0, np.zeros(p), np.zeros((p, p))
            for rb in batches:
                if rb.num_rows == 0:
                    continue
                # Arrow's flat list values: the (n, E) features without a Python loop.
                f = rb.column("f").flatten().to_numpy(zero_copy_only=False).reshape(-1, e)
                x = fixed_design(
                    f.astype(np.float32, copy=False),
                    global_features_of(rb.column("g"), gd),
                    use_video,
                )
                y = rb.column("y").to_numpy().astype(np.float64)
                off = rb.column("rand").to_numpy().astype(np.float64)
                a, b, c = logistic_sums(x, y, off, np.ones(len(y)), beta)
                ll, g, h = ll + a, g + b, h + c
            yield pa.RecordBatch.from_pydict(
                {"ll": [ll], "g": [g.tolist()], "h": [h.ravel().tolist()]},
                schema=pa.schema(
                    [
                        ("ll", pa.float64()),
                        ("g", pa.list_(pa.float64())),
                        ("h", pa.list_(pa.float64())),
                    ]
                ),
            )

        out = (
            self.state.select("f", "g", "y", "rand")
            .mapInArrow(part, "ll double, g array<double>, h array<double>")
            .collect()
        )
        ll = math.fsum(r["ll"] for r in out)
        g = np.sum([np.asarray(r["g"]) for r in out], axis=0) if out else np.zeros(p)
        h = np.sum([np.asarray(r["h"]) for r in out], axis=0) if out else np.zeros(p * p)
        return ll, g, h.reshape(p, p)

    def random_pass(self, fixed: np.ndarray, steps: int) -> float:
        from pyspark.sql import functions as F

        # The state is hash-partitioned by user, so a partition holds whole users: the pass
        # maps partitions (no shuffle, no sort by group) and keeps that partitioning.
        solve = _user_pass(self.e, self.use_video, fixed.copy(), steps, self.q, self.cfg, self.gd)
        new_state = self.state.mapInArrow(whole_partitions(solve), _STATE_SCHEMA).cache()
        # One job computes the pass, caches it and sums the log-likelihood.
        ll = float(new_state.agg(F.sum("ll")).collect()[0][0]) / self.n
        self.state.unpersist()
        self.state = new_state
        return ll

    def user_effects(self, order: list[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(users, (U, q) coefficients, (U, q) posterior precision) in ``order`` (sorted
        by id when None); users without a random effect are left out."""
        from pyspark.sql import functions as F

        # Arrow columns, not Row objects: ~16 bytes a coefficient instead of ~1 KB a user.
        table = (
            self.state.where(F.col("coef").isNotNull()).select("user_id", "coef", "prec").toArrow()
        )
        q = self.q
        ids = table.column("user_id").to_pylist()
        flat_coef = table.column("coef").combine_chunks().flatten().to_numpy().reshape(-1, q)
        flat_prec = table.column("prec").combine_chunks().flatten().to_numpy().reshape(-1, q)
        where = {u: i for i, u in enumerate(ids)}
        users = order if order is not None else sorted(ids)
        pick = np.array([where[u] for u in users], dtype=np.int64)
        coef = flat_coef[pick] if len(pick) else np.zeros((0, q))
        precision = flat_prec[pick] if len(pick) else np.zeros((0, q))
        return users, coef, precision


def fit_glmix_frame(
    spark: SparkSession,
    rows: DataFrame,
    feature_dim: int,
    cfg: GLMixConfig,
    on_pass: Callable[[int, float], None] | None = None,
    partitions: int | None = None,
    user_order: list[str] | None = None,
    timings: dict[str, float] | None = None,
    global_dim: int = 0,
) -> GLMix:
    """GLMix on a DataFrame of (user_id string, y double, f array<float>) rows, plus
    ``g array<float>`` (the global features) when ``global_dim`` > 0.

    ``timings``, when given, accumulates the seconds spent in the fixed-effect steps
    (``fixed_s``) and in the random-effect passes (``random_s``)."""
    backend = SparkBackend(spark, rows, feature_dim, global_dim, cfg, partitions)
    fixed_l2 = fixed_prior(cfg, backend.p)
    fixed, history = coordinate_descent(backend, cfg, fixed_l2, on_pass=on_pass, timings=timings)
    users, coef, precision = backend.user_effects(user_order)
    full = full_fixed_vector(fixed, feature_dim, cfg.use_video_features)
    return GLMix(
        cfg, feature_dim, global_dim, full, [str(u) for u in users], coef, history, precision
    )


def global_features_of(column: pa.Array | pa.ChunkedArray, g: int) -> np.ndarray | None:
    """The (n, g) global features of an Arrow ``array<float>`` column (None when g = 0)."""
    if not g:
        return None
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, g).astype(np.float32, copy=False)


def _user_pass(
    e: int,
    use_video: bool,
    beta: np.ndarray,
    steps: int,
    q: int,
    cfg: GLMixConfig,
    g: int = 0,
) -> Callable[[pa.Table], pa.Table]:
    """The random-effect pass over one partition's rows (all rows of its users), on Arrow
    columns: the (n, E) features and (n, q) coefficients are flat buffers, no Python loop."""

    def users(table: pa.Table) -> pa.Table:
        import torch

        torch.set_num_threads(1)  # one core per Spark task
        n = table.num_rows
        codes, uniq = pd.factorize(table.column("user_id").to_numpy(zero_copy_only=False))
        f = table.column("f").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        x = fixed_design(
            f.reshape(n, e).astype(np.float32, copy=False),
            global_features_of(table.column("g"), g),
            use_video,
        )
        coef = np.zeros((len(uniq), q))
        prev = table.column("coef").combine_chunks()
        if prev.null_count < n:  # warm start: one row of each user carries its coefficients
            carriers = np.flatnonzero(prev.is_valid().to_numpy(zero_copy_only=False))
            flat = prev.flatten().to_numpy(zero_copy_only=False).reshape(len(carriers), q)
            coef[codes[carriers]] = flat
        y = table.column("y").to_numpy().astype(np.float64)
        coef, eta = fit_user_effects(codes.astype(np.int64), x, y, beta, coef, cfg, steps)
        rand = eta - x.astype(np.float64) @ beta
        # Posterior precision (diagonal) at these logits, as recsys.glmix.fit_glmix keeps it.
        prec = posterior_precision(codes, len(uniq), x[:, :q], eta, cfg)
        # Per-user values on the first row of each user only (null elsewhere): the state
        # moves through Arrow every pass, and repeating q doubles on every row dominated it.
        _, first = np.unique(codes, return_index=True)
        is_first = np.zeros(n, dtype=bool)
        is_first[first] = True
        offsets = pa.array(np.concatenate([[0], np.cumsum(is_first * q)]).astype(np.int32))
        carriers = np.flatnonzero(is_first)
        null = pa.array(~is_first)

        def per_user(values: np.ndarray) -> pa.Array:
            return pa.ListArray.from_arrays(
                offsets, pa.array(values[codes[carriers]].ravel()), mask=null
            )

        return pa.table(
            {
                "user_id": table.column("user_id"),
                "y": table.column("y"),
                "f": table.column("f"),
                "g": table.column("g"),
                "coef": per_user(coef),
                "prec": per_user(prec),
                "rand": pa.array(rand),
                "ll": pa.array(log_likelihood(eta, y)),
            }
        )

    return users
