"""GLMix on Spark: ``recsys.glmix.coordinate_descent``'s loop over a backend whose rows are a
DataFrame hash-partitioned by user.

* the fixed effect: Newton's method over gradient and curvature sums
  (``recsys.glmix.logistic.logistic_sums``) added up across partitions;
* each random-effect pass maps the partitions with the local batched solver
  (``recsys.glmix.random_effects.fit_entity_effects``): partitioned by user for the users'
  pass, by video for the videos' (every partition holds whole users, or whole videos).

Same loop, same per-user solver: coefficients equal to the local fit to ~1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.spark.rows import whole_partitions
from pipelines.spark.session import ROWS_PER_TASK, parallelism
from recsys.errors import UserInputError
from recsys.glmix.config import fixed_prior, random_prior, video_prior
from recsys.glmix.coordinate_descent import USER, VIDEO, coordinate_descent, fixed_design
from recsys.glmix.design import dense_video
from recsys.glmix.logistic import log_likelihood, logistic_sums
from recsys.glmix.model import (
    GLMix,
    GLMixConfig,
    full_fixed_vector,
    validate_glmix_inputs,
    video_coordinate,
)
from recsys.glmix.random_effects import fit_entity_effects, posterior_precision

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_STATE_SCHEMA = (
    "user_id string, video_id string, y double, f array<float>, g array<float>, "
    "coef array<double>, prec array<double>, rand double, "
    "vcoef array<double>, vprec array<double>, vrand double, ll double"
)
#: per coordinate: (the key it groups rows by, its coefficient, precision and score columns)
_COLUMNS = {
    USER: ("user_id", "coef", "prec", "rand"),
    VIDEO: ("video_id", "vcoef", "vprec", "vrand"),
}


def fit_glmix_spark(
    spark: SparkSession,
    user_ids: np.ndarray,
    video: np.ndarray,
    labels: np.ndarray,
    cfg: GLMixConfig | None = None,
    on_pass: Callable[[int, float], None] | None = None,
    partitions: int | None = None,
    global_feats: np.ndarray | None = None,
    videos: np.ndarray | None = None,
) -> GLMix:
    """``recsys.glmix.model.fit_glmix`` with the data in Spark: the same coordinate descent,
    the same per-user (and per-video) solver, coefficients equal to the local fit to ~1e-6."""
    cfg = cfg or GLMixConfig()
    if cfg.max_rows_per_user:
        raise UserInputError("--engine spark does not subsample users' rows (max_rows_per_user)")
    y_np, checked, codes, uniq = validate_glmix_inputs(user_ids, video, labels, global_feats)
    v_codes, v_uniq, _ = video_coordinate(cfg, videos, len(y_np), global_feats)
    video = dense_video(checked)
    g = 0 if global_feats is None else global_feats.shape[1]
    rows = pd.DataFrame(
        {
            "user_id": np.asarray(uniq, dtype=object)[codes],
            "video_id": None if v_codes is None else np.asarray(v_uniq, dtype=object)[v_codes],
            "y": y_np,
            "f": list(np.asarray(video, dtype=np.float32)),
            "g": list(
                np.zeros((len(y_np), 0), np.float32)
                if global_feats is None
                else np.asarray(global_feats, dtype=np.float32)
            ),
        }
    )
    df = spark.createDataFrame(
        rows, "user_id string, video_id string, y double, f array<float>, g array<float>"
    )
    return fit_glmix_frame(
        spark,
        df,
        video.shape[1],
        cfg,
        on_pass,
        partitions,
        list(uniq),
        global_dim=g,
        video_order=[str(v) for v in v_uniq] if v_codes is not None else None,
    )


class SparkBackend:
    """The rows as a cached DataFrame of (user_id, video_id, y, f, g) plus each user's and
    video's coefficients, precision and each row's scores, hash-partitioned by user for
    the users' pass and by video for the videos'."""

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
        self.n_parts = n_parts
        self.e, self.gd, self.cfg = feature_dim, global_dim, cfg
        self.use_video = cfg.use_video_features
        self.q = 1 + (feature_dim if self.use_video else 0)  # the random effect: [1, video]
        self.p = self.q + global_dim  # the fixed effect: [1, video, global]
        self.coordinates: tuple[str, ...] = (USER, VIDEO) if cfg.video_effects else (USER,)
        #: intercept shifts taken out by ``recenter`` and not yet written into the rows:
        #: every coefficient's intercept and every score of the coordinate minus this
        self.shift = {USER: 0.0, VIDEO: 0.0}
        base = rows if global_dim else rows.withColumn("g", F.array().cast("array<float>"))
        if "video_id" not in base.columns:
            base = base.withColumn("video_id", F.lit(None).cast("string"))
        state = base.select("user_id", "video_id", "y", "f", "g")
        for c in ("coef", "prec", "vcoef", "vprec"):
            state = state.withColumn(c, F.lit(None).cast("array<double>"))
        state = state.withColumn("rand", F.lit(0.0)).withColumn("vrand", F.lit(0.0))
        # Hash-partitioned by user: every partition holds whole users, which the
        # random-effect pass solves partition by partition.
        self.state = state.repartition(n_parts, "user_id").cache()
        self._by = "user_id"

    def fixed_sums(
        self, beta: np.ndarray, derivatives: bool
    ) -> tuple[float, np.ndarray, np.ndarray]:
        p, e, gd, use_video = self.p, self.e, self.gd, self.use_video
        su, sv = self.shift[USER], self.shift[VIDEO]

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
                off = rb.column("rand").to_numpy().astype(np.float64) - su
                off = off + (rb.column("vrand").to_numpy().astype(np.float64) - sv)
                a, b, c = logistic_sums(x, y, off, np.ones(len(y)), beta)
                ll, g, h = ll + a, g + b, h + c
            yield sums_batch(ll, g, h)

        parts = self.state.select("f", "g", "y", "rand", "vrand").mapInArrow(part, SUMS_SCHEMA)
        return add_sums(parts.collect(), p)

    def random_pass(self, coordinate: str, fixed: np.ndarray, steps: int) -> float:
        from pyspark.sql import functions as F

        key = _COLUMNS[coordinate][0]
        src = self.state
        if self._by != key:  # every partition must hold whole users (or whole videos)
            src = src.repartition(self.n_parts, key)
        solve = _entity_pass(coordinate, self, fixed.copy(), steps, dict(self.shift))
        # Checkpointed, not cached: each pass would otherwise nest the previous one's plan
        # (with a shuffle per coordinate), and Spark's plan strings grew past the heap.
        new_state = src.mapInArrow(whole_partitions(solve), _STATE_SCHEMA).localCheckpoint()
        ll = float(new_state.agg(F.sum("ll")).collect()[0][0]) / self.n
        self.state.unpersist()
        self.state, self._by = new_state, key
        self.shift[coordinate] = 0.0  # the pass wrote the shifted coefficients and scores
        return ll

    def recenter(self, coordinate: str) -> float:
        from pyspark.sql import functions as F

        if coordinate == USER and self.cfg.min_rows_per_user > 1:
            return 0.0
        coef = _COLUMNS[coordinate][1]
        got = self.state.where(F.col(coef).isNotNull()).agg(F.avg(F.col(coef)[0])).first()
        if got is None or got[0] is None:
            return 0.0
        m = float(got[0]) - self.shift[coordinate]
        self.shift[coordinate] += m
        return m

    def effects(
        self, coordinate: str, order: list[str] | None
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, (K, q) coefficients, (K, q) posterior precision) of a coordinate in
        ``order`` (sorted by id when None); entities without an effect are left out."""
        from pyspark.sql import functions as F

        key, coef_col, prec_col, _ = _COLUMNS[coordinate]
        # Arrow columns, not Row objects: ~16 bytes a coefficient instead of ~1 KB a user.
        table = self.state.where(F.col(coef_col).isNotNull()).select(key, coef_col, prec_col)
        arrow = table.toArrow()
        ids = arrow.column(key).to_pylist()
        k = len(arrow.column(coef_col)[0]) if arrow.num_rows else 1
        flat_coef = arrow.column(coef_col).combine_chunks().flatten().to_numpy().reshape(-1, k)
        flat_prec = arrow.column(prec_col).combine_chunks().flatten().to_numpy().reshape(-1, k)
        flat_coef = flat_coef.copy()
        flat_coef[:, 0] -= self.shift[coordinate]
        where = {u: i for i, u in enumerate(ids)}
        wanted = order if order is not None else sorted(ids)
        pick = np.array([where[u] for u in wanted], dtype=np.int64)
        coef = flat_coef[pick] if len(pick) else np.zeros((0, k))
        precision = flat_prec[pick] if len(pick) else np.zeros((0, k))
        return wanted, coef, precision


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
    video_order: list[str] | None = None,
) -> GLMix:
    """GLMix on a DataFrame of (user_id string, y double, f array<float>) rows, plus
    ``g array<float>`` (the global features) when ``global_dim`` > 0 and ``video_id
    string`` when ``cfg.video_effects``.

    ``timings``, when given, accumulates the seconds spent in the fixed-effect steps
    (``fixed_s``) and in the random-effect passes (``random_s``)."""
    if cfg.video_effects and "video_id" not in rows.columns:
        raise UserInputError("GLMix per-video effects need each row's video")
    if cfg.video_slopes and not global_dim:
        raise UserInputError("GLMix per-video slopes need global features")
    backend = SparkBackend(spark, rows, feature_dim, global_dim, cfg, partitions)
    fixed_l2 = fixed_prior(cfg, backend.p)
    fixed, history = coordinate_descent(backend, cfg, fixed_l2, on_pass=on_pass, timings=timings)
    users, coef, precision = backend.effects(USER, user_order)
    vids: list[str] = []
    vcoef = vprec = None
    if cfg.video_effects:
        vids, vcoef, vprec = backend.effects(VIDEO, video_order)
    full = full_fixed_vector(fixed, feature_dim, cfg.use_video_features)
    return GLMix(
        cfg,
        feature_dim,
        global_dim,
        full,
        [str(u) for u in users],
        coef,
        history,
        precision,
        [],
        [str(v) for v in vids],
        vcoef,
        vprec,
    )


#: one partition's log-likelihood, gradient and (flattened) curvature sums
SUMS_SCHEMA = "ll double, g array<double>, h array<double>"


def sums_batch(ll: float, g: np.ndarray, h: np.ndarray) -> pa.RecordBatch:
    """A partition's ``logistic_sums`` as one Arrow row of ``SUMS_SCHEMA``."""
    schema = pa.schema(
        [("ll", pa.float64()), ("g", pa.list_(pa.float64())), ("h", pa.list_(pa.float64()))]
    )
    return pa.RecordBatch.from_pydict(
        {"ll": [ll], "g": [g.tolist()], "h": [h.ravel().tolist()]}, schema=schema
    )


def add_sums(rows: list[Any], p: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The partitions' sums (collected ``SUMS_SCHEMA`` rows) added up: (ll, (p,), (p, p))."""
    ll = math.fsum(r["ll"] for r in rows)
    g = np.sum([np.asarray(r["g"]) for r in rows], axis=0) if rows else np.zeros(p)
    h = np.sum([np.asarray(r["h"]) for r in rows], axis=0) if rows else np.zeros(p * p)
    return ll, g, h.reshape(p, p)


def global_features_of(column: pa.Array | pa.ChunkedArray, g: int) -> np.ndarray | None:
    """The (n, g) global features of an Arrow ``array<float>`` column (None when g = 0)."""
    if not g:
        return None
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, g).astype(np.float32, copy=False)


def _entity_pass(
    coordinate: str,
    backend: SparkBackend,
    beta: np.ndarray,
    steps: int,
    shift: dict[str, float],
) -> Callable[[pa.Table], pa.Table]:
    """One coordinate's random-effect pass over one partition's rows (all rows of its
    users, or of its videos), on Arrow columns: the (n, E) features and (n, q)
    coefficients are flat buffers, no Python loop. ``shift``: the intercept shifts not
    yet in the rows (``SparkBackend.shift``)."""
    e, gd, use_video, cfg, q = backend.e, backend.gd, backend.use_video, backend.cfg, backend.q
    key, coef_col, prec_col, score_col = _COLUMNS[coordinate]
    other = VIDEO if coordinate == USER else USER
    other_score = _COLUMNS[other][3]

    def solve(table: pa.Table) -> pa.Table:
        import torch

        torch.set_num_threads(1)  # one core per Spark task
        n = table.num_rows
        codes, uniq = pd.factorize(table.column(key).to_numpy(zero_copy_only=False))
        f = table.column("f").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        glob = global_features_of(table.column("g"), gd)
        x = fixed_design(f.reshape(n, e).astype(np.float32, copy=False), glob, use_video)
        if coordinate == USER:
            z, prior, min_rows = x[:, :q], random_prior(cfg, q), cfg.min_rows_per_user
        else:
            z = np.ones((n, 1), dtype=np.float32)
            if cfg.video_slopes and glob is not None:
                z = np.c_[z, glob]
            prior, min_rows = video_prior(cfg, z.shape[1]), 1
        k = z.shape[1]
        coef = np.zeros((len(uniq), k))
        prev = table.column(coef_col).combine_chunks()
        if prev.null_count < n:  # warm start: one row of each entity carries its coefficients
            carriers = np.flatnonzero(prev.is_valid().to_numpy(zero_copy_only=False))
            flat = prev.flatten().to_numpy(zero_copy_only=False).reshape(len(carriers), k)
            coef[codes[carriers]] = flat
            coef[codes[carriers], 0] -= shift[coordinate]
        y = table.column("y").to_numpy().astype(np.float64)
        others = table.column(other_score).to_numpy().astype(np.float64) - shift[other]
        offset = x.astype(np.float64) @ beta + others
        coef, score = fit_entity_effects(
            codes.astype(np.int64), z, y, offset, coef, prior, min_rows, steps
        )
        eta = offset + score
        # Posterior precision (diagonal) at these logits, as recsys.glmix.model.fit_glmix keeps it.
        prec = posterior_precision(codes, len(uniq), z, eta, prior, min_rows)
        # Per-entity values on the first row of each only (null elsewhere): the state
        # moves through Arrow every pass, and repeating q doubles on every row dominated it.
        _, first = np.unique(codes, return_index=True)
        is_first = np.zeros(n, dtype=bool)
        is_first[first] = True
        offsets = pa.array(np.concatenate([[0], np.cumsum(is_first * k)]).astype(np.int32))
        carriers = np.flatnonzero(is_first)
        null = pa.array(~is_first)

        def per_entity(values: np.ndarray) -> pa.Array:
            return pa.ListArray.from_arrays(
                offsets, pa.array(values[codes[carriers]].ravel()), mask=null
            )

        out = {c: table.column(c) for c in table.column_names if c != "ll"}
        out[coef_col], out[prec_col] = per_entity(coef), per_entity(prec)
        out[score_col] = pa.array(score)
        out["ll"] = pa.array(log_likelihood(eta, y))
        return pa.table({c: out[c] for c in _STATE_COLUMNS})

    return solve


_STATE_COLUMNS = [c.split()[0] for c in _STATE_SCHEMA.split(", ")]
