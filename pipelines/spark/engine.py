"""``SparkEngine``: every step of ``pipelines.engine.Engine`` on a Spark cluster.

Jobs never import this package; ``--engine spark`` makes this engine
(``pipelines.commands.options.engine_from``) and the jobs call the same steps. The
session starts on first use, so a job that needs no Spark step never starts a JVM.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.engine import Engine
from recsys.glmix.design import VideoRows, dense_video
from recsys.glmix.model import GLMix, GLMixConfig
from recsys.glmix.tuning import select_random_l2
from recsys.triplets import TripletConfig

T = TypeVar("T")


@dataclass
class SparkEngine(Engine):
    name: ClassVar[str] = "spark"
    #: Spark master URL (ignored when SPARK_REMOTE names a Spark Connect server)
    master: str | None = None
    #: a running session to use (tests share one); else started on first use
    session: Any = field(default=None, repr=False)

    @property
    def spark(self) -> Any:
        if self.session is None:
            from pipelines.spark.session import spark_session

            self.session = spark_session(self.master)
        return self.session

    def describe(self) -> str:
        return f"spark ({os.environ.get('SPARK_REMOTE') or self.master or 'local[*]'})"

    def stop(self) -> None:
        if self.session is not None:
            self.session.stop()
            self.session = None

    # ------------------------------------------------------------ computations

    def mine_triplets(
        self, data_dir: Path, cfg: TripletConfig, train_end: datetime | None
    ) -> pa.Table:
        from pipelines.spark.session import mine_triplets_spark

        df = mine_triplets_spark(self.spark, data_dir / "impressions.parquet", cfg, train_end)
        return cast(pa.Table, df.toArrow())

    def fit_glmix(
        self,
        users: np.ndarray,
        video: np.ndarray | VideoRows,
        labels: np.ndarray,
        cfg: GLMixConfig,
        on_pass: Callable[[int, float], None] | None = None,
        global_feats: np.ndarray | None = None,
        videos: np.ndarray | None = None,
    ) -> GLMix:
        from pipelines.spark.glmix import fit_glmix_spark

        return fit_glmix_spark(
            self.spark,
            users,
            dense_video(video),
            labels,
            cfg,
            on_pass,
            global_feats=global_feats,
            videos=videos,
        )

    def select_random_l2(
        self,
        users: np.ndarray,
        video: np.ndarray | VideoRows,
        labels: np.ndarray,
        is_validation: np.ndarray,
        base: GLMixConfig,
        global_feats: np.ndarray | None = None,
    ) -> tuple[float, dict[float, float]]:
        from pipelines.spark.glmix import fit_glmix_spark

        def fit(
            u: np.ndarray,
            x: np.ndarray,
            y: np.ndarray,
            cfg: GLMixConfig,
            g: np.ndarray | None,
            v: np.ndarray | None = None,
        ) -> GLMix:
            return fit_glmix_spark(self.spark, u, x, y, cfg, global_feats=g, videos=v)

        return select_random_l2(
            users,
            dense_video(video),
            labels,
            is_validation,
            base=base,
            fit=fit,
            global_feats=global_feats,
        )

    def delong(self, labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
        from pipelines.spark.auc import delong_spark

        df = self.spark.createDataFrame(
            pd.DataFrame({"score": np.asarray(scores, np.float64), "label": labels})
        )
        return delong_spark(df)

    # ------------------------------------------------------------ whole phases

    def glmix_models(
        self,
        data_dir: Path,
        artifact: Path,
        test_start: datetime,
        cfg: Any,
        say: Callable[[str], None],
        here: Callable[[], T],
    ) -> T:
        from pipelines.spark.fit_glmix import fit_glmix_on_spark

        return cast(T, fit_glmix_on_spark(self.spark, data_dir, artifact, test_start, cfg, say))

    def evaluation(
        self,
        data_dir: Path,
        artifact: Path,
        window: tuple[datetime, datetime],
        cfg: Any,
        models: tuple[GLMix, GLMix],
        head: dict[str, Any],
        here: Callable[[], T],
    ) -> T:
        from pipelines.spark.evaluate import evaluate_on_spark

        return cast(
            T,
            evaluate_on_spark(
                self.spark, self.describe(), data_dir, artifact, window, cfg, models, head
            ),
        )

    def embed_dataset(
        self, artifact: Path, data: Path, out: Path, batch_size: int, here: Callable[[], int]
    ) -> int:
        from pipelines.spark.embed import embed_dataset_spark

        return embed_dataset_spark(self.spark, artifact, data, out, batch_size=batch_size)
