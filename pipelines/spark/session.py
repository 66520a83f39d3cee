"""The Spark session, and triplet mining on Spark.

``--engine spark`` (``pipelines.spark.engine.SparkEngine``) runs each job's heavy steps
on a cluster. Each step reuses the local engine's logic functions per partition, so both
engines compute the same thing:

* triplet mining: ``recsys.triplets.TRIPLETS_SQL_TEMPLATE`` rendered for Spark SQL (here);
* embedding: ``mapInArrow`` over the videos, with the embedder's weights broadcast
  (``pipelines.spark.embed``);
* GLMix: the same coordinate-descent loop over a Spark backend (``pipelines.spark.glmix``,
  the job in ``pipelines.spark.fit_glmix``);
* the evaluation and AUC with DeLong's interval from per-score class counts,
  range-partitioned by score (``pipelines.spark.evaluate``, ``pipelines.spark.auc``).

The session: ``SPARK_REMOTE`` (a Spark Connect URL) when set, else ``--spark-master``
(default ``local[*]``). Executors need this package and its dependencies installed (see
docs/scale.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

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


def has_context(spark: SparkSession) -> bool:
    try:
        spark.sparkContext  # noqa: B018
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- AUC
