"""The Spark engine: the same jobs as the local engine, run on a Spark cluster.

``--engine spark`` on mine-triplets, embed, fit-glmix, evaluate and pipeline sends the
heavy parts here. Each part reuses the local engine's logic functions per partition, so
both engines compute the same thing:

* triplet mining: ``recsys.triplets.TRIPLETS_SQL_TEMPLATE`` rendered for Spark SQL;
* embedding: ``mapInArrow`` over the videos, with the embedder's weights broadcast;
* GLMix: coordinate descent driven from here. The fixed effect is Newton's method over
  gradient and curvature sums (``recsys.glmix.logistic_sums``) added up across partitions;
  each random-effect pass maps the partitions of the rows hash-partitioned by user
  (``mapInArrow``: every partition holds whole users) with the local batched solver
  (``recsys.glmix.fit_user_effects``);
* AUC with DeLong's interval from per-score class counts, range-partitioned by score
  (nothing proportional to the test set comes back to the driver).

The session: ``SPARK_REMOTE`` (a Spark Connect URL) when set, else ``--spark-master``
(default ``local[*]``). Executors need this package and its dependencies installed (see
docs/scale.md).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.errors import UserInputError
from recsys.glmix import (
    GLMix,
    GLMixConfig,
    _fixed_design,
    _log_sigmoid_loss_np,
    fit_user_effects,
    full_fixed_vector,
    logistic_sums,
    newton_logistic,
    posterior_precision,
    validate_glmix_inputs,
)
from recsys.triplets import TRIPLETS_SQL_TEMPLATE, TripletConfig, render_sql, triplet_params

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_MASTER = "local[*]"
#: fewest rows worth a Spark task of their own
ROWS_PER_TASK = 10_000


# --------------------------------------------------------------------------- session


def _java_problem() -> str | None:
    """Why Spark cannot start here (no Java 17/21), or None."""
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else None
    exe = str(java) if java is not None and java.exists() else shutil.which("java")
    how = (
        "install Java 17 or 21 (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless) "
        "or set JAVA_HOME to one"
    )
    if exe is None:
        return f"--engine spark needs Java: {how}"
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"--engine spark: cannot run {exe} ({exc}); {how}"
    first = out.splitlines()[0] if out else ""
    major = first.split('"')[1].split(".")[0] if '"' in first else ""
    if major not in ("17", "21"):
        return f"--engine spark needs Java 17 or 21, {exe} is {first.strip() or 'unknown'}: {how}"
    return None


def spark_session(master: str | None = None, app_name: str = "recsys") -> SparkSession:
    """A Spark session: Spark Connect when ``SPARK_REMOTE`` is set, else ``master``.

    Local masters bind to 127.0.0.1 and run Python workers with this interpreter (workers
    otherwise pick another Python that lacks the dependencies).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise UserInputError(
            "--engine spark needs pyspark (pip install 'pyspark==4.3.0')"
        ) from None
    remote = os.environ.get("SPARK_REMOTE")
    builder = SparkSession.builder.appName(app_name)
    if remote:
        builder = builder.remote(remote)
    else:
        problem = _java_problem()
        if problem:
            raise UserInputError(problem)
        if master != "":  # "": the master comes from spark-submit or spark-defaults.conf
            builder = builder.master(master or DEFAULT_MASTER)
        if master != "" and (master or DEFAULT_MASTER).startswith("local"):
            # One machine: loopback only, and Python workers run this interpreter (they
            # otherwise pick another Python that lacks the dependencies).
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
            builder = (
                builder.config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.sql.shuffle.partitions", "8")
                .config("spark.executorEnv.OMP_NUM_THREADS", "1")
                .config(
                    "spark.driver.extraJavaOptions",
                    f"-Dlog4j2.configurationFile=file:{Path(__file__).with_name('log4j2.properties')}",
                )
                # Local mode runs executors inside the driver JVM: the 1 GB default
                # heap runs out on GLMix's cached passes (measured on the default world).
                .config("spark.driver.memory", os.environ.get("RECSYS_SPARK_DRIVER_MEMORY", "4g"))
            )
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.ui.enabled", "false").config(
            "spark.ui.showConsoleProgress", "false"
        )
    builder = builder.config("spark.sql.session.timeZone", "UTC").config(
        "spark.sql.execution.arrow.pyspark.enabled", "true"
    )
    # pyspark warns on every pandas conversion that it "does not yet fully support pandas
    # >= 3"; the paths used here are tested with it.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    spark = builder.getOrCreate()
    if not remote:
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def _parallelism(spark: SparkSession) -> int:
    try:
        return max(1, int(spark.sparkContext.defaultParallelism))
    except Exception:  # Spark Connect has no SparkContext
        return int(spark.conf.get("spark.sql.shuffle.partitions") or 8)


# --------------------------------------------------------------------------- triplets


def mine_triplets_spark(
    spark: SparkSession,
    impressions: str | os.PathLike[str],
    cfg: TripletConfig,
    train_end: datetime | None = None,
) -> DataFrame:
    """The mining query on Spark over ``impressions`` (a Parquet path); a DataFrame of
    (anchor, positive, negative, user_id), the same rows the local engine returns."""
    df = spark.read.parquet(str(impressions))
    missing = {"user_id", "video_id", "shown_at", "watch_seconds"} - set(df.columns)
    if missing:
        raise UserInputError(f"{impressions}: missing columns {', '.join(sorted(missing))}")
    df.createOrReplaceTempView("impressions")
    sql = render_sql(TRIPLETS_SQL_TEMPLATE, "spark")
    return spark.sql(sql, args=triplet_params(cfg, train_end))


# --------------------------------------------------------------------------- embedding


def embed_videos_spark(
    spark: SparkSession,
    videos: str | os.PathLike[str],
    embedder_config: dict[str, Any],
    state_dict_bytes: bytes,
    batch_size: int = 256,
    max_frames: int = 300,
) -> DataFrame:
    """(video_id, embedding) for every video of ``videos`` (a Parquet path), computed
    by ``mapInArrow`` with the embedder's weights broadcast to the executors."""
    weights = spark.sparkContext.broadcast(state_dict_bytes) if _has_context(spark) else None
    local_bytes = None if weights is not None else state_dict_bytes
    dim = int(embedder_config["feature_dim"])

    def embed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        from embeddings.cowatch import CowatchEmbedder, EmbedderConfig
        from recsys.dataset import decode_video_batch

        blob = weights.value if weights is not None else local_bytes
        assert blob is not None
        model = CowatchEmbedder(EmbedderConfig.from_dict(embedder_config))
        model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
        model.eval()
        for big in batches:
            for start in range(0, big.num_rows, batch_size):
                vb = decode_video_batch(big.slice(start, batch_size), dim)
                frames, mask = vb.padded(max_frames)
                with torch.no_grad():
                    emb = model(torch.from_numpy(frames), torch.from_numpy(mask)).numpy()
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(vb.video_ids, pa.string()),
                        pa.array(list(emb.astype(np.float32)), pa.list_(pa.float32())),
                    ],
                    names=["video_id", "embedding"],
                )

    df = spark.read.parquet(str(videos)).select("video_id", "frames")
    return df.mapInArrow(embed, "video_id string, embedding array<float>")


def _has_context(spark: SparkSession) -> bool:
    try:
        spark.sparkContext  # noqa: B018
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- GLMix


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
    y_np, video, codes, uniq = validate_glmix_inputs(user_ids, video, labels, global_feats)
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
    import time

    clock = timings if timings is not None else {}
    clock.setdefault("fixed_s", 0.0)
    clock.setdefault("random_s", 0.0)
    from pyspark.sql import functions as F

    n = rows.count()
    # One task per core, but no partition under ~10k rows: a Spark task costs ~0.1 s
    # before any work (Spark Connect's default of 200 partitions made a 3k-row fit 144 s).
    n_parts = partitions or max(1, min(_parallelism(spark), math.ceil(n / ROWS_PER_TASK)))
    e = feature_dim
    gd = global_dim
    use_video = cfg.use_video_features
    q = 1 + (e if use_video else 0)  # the random effect: [1, video]
    p = q + gd  # the fixed effect: [1, video, global]
    fixed_l2 = np.full(p, cfg.fixed_l2)
    fixed_l2[0] = 0.0
    base = rows if gd else rows.withColumn("g", F.array().cast("array<float>"))
    state = (
        base.withColumn("coef", F.lit(None).cast("array<double>"))
        .withColumn("prec", F.lit(None).cast("array<double>"))
        .withColumn("rand", F.lit(0.0))
    )
    # Hash-partitioned by user: every partition holds whole users, which the random-effect
    # pass solves partition by partition.
    state = state.repartition(n_parts, "user_id").cache()
    state_schema = (
        "user_id string, y double, f array<float>, g array<float>, coef array<double>, "
        "prec array<double>, rand double, ll double"
    )

    def fixed_sums(beta: np.ndarray, frame: DataFrame) -> tuple[float, np.ndarray, np.ndarray]:
        def part(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            ll, g, h = 0.0, np.zeros(p), np.zeros((p, p))
            for rb in batches:
                if rb.num_rows == 0:
                    continue
                # Arrow's flat list values: the (n, E) features without a Python loop.
                f = rb.column("f").flatten().to_numpy(zero_copy_only=False).reshape(-1, e)
                x = _fixed_design(
                    f.astype(np.float32, copy=False), _global(rb.column("g"), gd), use_video
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
            frame.select("f", "g", "y", "rand")
            .mapInArrow(part, "ll double, g array<double>, h array<double>")
            .collect()
        )
        ll = math.fsum(r["ll"] for r in out)
        g = np.sum([np.asarray(r["g"]) for r in out], axis=0) if out else np.zeros(p)
        h = np.sum([np.asarray(r["h"]) for r in out], axis=0) if out else np.zeros(p * p)
        return ll, g, h.reshape(p, p)

    fixed = np.zeros(p)
    history: list[dict[str, float]] = []
    prev = -math.inf
    for k in range(cfg.max_passes):
        frame = state

        def sums(
            beta: np.ndarray, derivatives: bool, frame: DataFrame = frame
        ) -> tuple[float, np.ndarray, np.ndarray]:
            return fixed_sums(beta, frame)

        t0 = time.perf_counter()
        fixed = newton_logistic(
            sums,
            p,
            fixed_l2,
            max_steps=min(2, cfg.fixed_newton_steps) if k > 0 else cfg.fixed_newton_steps,
            init=fixed,
        )
        clock["fixed_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        steps = cfg.random_newton_steps if k == 0 else max(1, cfg.random_newton_steps // 2)
        beta = fixed.copy()

        # The state is hash-partitioned by user, so a partition holds whole users: the pass
        # maps partitions (no shuffle, no sort by group) and keeps that partitioning.
        new_state = state.mapInArrow(
            _whole_partition(_user_pass(e, use_video, beta, steps, q, cfg, gd)), state_schema
        ).cache()
        # One job computes the pass, caches it and sums the log-likelihood.
        ll = float(new_state.agg(F.sum("ll")).collect()[0][0]) / n
        clock["random_s"] += time.perf_counter() - t0
        state.unpersist()
        state = new_state
        history.append({"pass": k + 1, "log_likelihood_per_row": ll})
        if on_pass is not None:
            on_pass(k + 1, ll)
        if ll - prev < cfg.tol:
            break
        prev = ll
    got = {
        r["user_id"]: (np.asarray(r["coef"]), np.asarray(r["prec"]))
        for r in state.where(F.col("coef").isNotNull()).select("user_id", "coef", "prec").collect()
    }
    order = user_order if user_order is not None else sorted(got)
    coef = np.stack([got[u][0] for u in order]) if order else np.zeros((0, q))
    precision = np.stack([got[u][1] for u in order]) if order else np.zeros((0, q))
    full = full_fixed_vector(fixed, e, use_video)
    return GLMix(cfg, e, gd, full, [str(u) for u in order], coef, history, precision)


def _global(column: pa.Array | pa.ChunkedArray, g: int) -> np.ndarray | None:
    """The (n, g) global features of an Arrow ``array<float>`` column (None when g = 0)."""
    if not g:
        return None
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, g).astype(np.float32, copy=False)


def _whole_partition(
    fn: Callable[[pa.Table], pa.Table],
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``fn`` over all rows of a partition at once (Arrow hands them over in batches)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        got = [b for b in batches if b.num_rows]
        if got:
            yield from fn(pa.Table.from_batches(got)).to_batches()

    return run


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
        x = _fixed_design(
            f.reshape(n, e).astype(np.float32, copy=False), _global(table.column("g"), g), use_video
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
                "ll": pa.array(_log_sigmoid_loss_np(eta, y)),
            }
        )

    return users


# --------------------------------------------------------------------------- AUC


def delong_spark(
    scored: DataFrame, score: str = "score", label: str = "label", level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC, low, high) as ``recsys.auc.delong_ci`` computes it, from a DataFrame of
    (score, label in {0, 1}) rows of any size.

    Rows are reduced to class counts per distinct score, range-partitioned by score; a
    first pass gives each partition's class totals, the driver turns them into the counts
    below each partition, and a second pass sums the placement values and their squares.
    """
    from pyspark.sql import functions as F

    from recsys.auc import delong_from_moments

    counts = (
        scored.select(F.col(score).cast("double").alias("s"), F.col(label).cast("int").alias("y"))
        .groupBy("s")
        .agg(F.sum("y").alias("pos"), F.sum(1 - F.col("y")).alias("neg"))
    )
    distinct = counts.count()
    parts = max(1, min(_parallelism(scored.sparkSession), math.ceil(distinct / ROWS_PER_TASK)))
    ranged = counts.repartitionByRange(parts, "s").sortWithinPartitions("s").localCheckpoint()

    def totals(it: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        lo, pos, neg = math.inf, 0, 0
        for pdf in it:
            if len(pdf):
                lo = min(lo, float(pdf["s"].min()))
                pos += int(pdf["pos"].sum())
                neg += int(pdf["neg"].sum())
        if pos + neg:
            yield pd.DataFrame({"lo": [lo], "pos": [pos], "neg": [neg]})

    summary = sorted(
        (r["lo"], r["pos"], r["neg"])
        for r in ranged.mapInPandas(totals, "lo double, pos long, neg long").collect()
    )
    m = sum(r[1] for r in summary)
    n = sum(r[2] for r in summary)
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    # counts of negatives strictly below, and positives strictly above, each partition
    offsets: dict[float, tuple[int, int]] = {}
    neg_below, pos_seen = 0, 0
    for lo, pos, neg in summary:
        offsets[lo] = (neg_below, m - pos_seen - pos)
        neg_below += neg
        pos_seen += pos

    def moments(it: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        frames = [pdf for pdf in it if len(pdf)]
        if not frames:
            return
        pdf = pd.concat(frames).sort_values("s")
        below, above = offsets[float(pdf["s"].iloc[0])]
        pos = pdf["pos"].to_numpy(np.float64)
        neg = pdf["neg"].to_numpy(np.float64)
        neg_lt = below + np.cumsum(neg) - neg
        pos_gt = above + pos[::-1].cumsum()[::-1] - pos
        v10 = (neg_lt + 0.5 * neg) / n  # each positive at this score
        v01 = (pos_gt + 0.5 * pos) / m  # each negative at this score
        yield pd.DataFrame(
            {
                "s10": [float((pos * v10).sum())],
                "s10sq": [float((pos * v10 * v10).sum())],
                "s01": [float((neg * v01).sum())],
                "s01sq": [float((neg * v01 * v01).sum())],
            }
        )

    rows = ranged.mapInPandas(
        moments, "s10 double, s10sq double, s01 double, s01sq double"
    ).collect()
    tot = {k: math.fsum(r[k] for r in rows) for k in ("s10", "s10sq", "s01", "s01sq")}
    return delong_from_moments(m, n, tot["s10"], tot["s10sq"], tot["s01"], tot["s01sq"], level)
