"""The Spark engine: the same jobs as the local engine, run on a Spark cluster.

``--engine spark`` on mine-triplets, embed, fit-glmix, evaluate and pipeline sends the
heavy parts here. Each part reuses the local engine's logic functions per partition, so
both engines compute the same thing:

* triplet mining: ``recsys.triplets.TRIPLETS_SQL_TEMPLATE`` rendered for Spark SQL;
* embedding: ``mapInArrow`` over the videos, with the embedder's weights broadcast;
* GLMix: the same coordinate-descent loop over a Spark backend (``pipelines/spark/glmix.py``);
* AUC with DeLong's interval from per-score class counts, range-partitioned by score
  (nothing proportional to the test set comes back to the driver).

The session: ``SPARK_REMOTE`` (a Spark Connect URL) when set, else ``--spark-master``
(default ``local[*]``). Executors need this package and its dependencies installed (see
docs/scale.md).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from recsys.errors import UserInputError
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


def parallelism(spark: SparkSession) -> int:
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


# --------------------------------------------------------------------------- AUC
