"""Where a job's heavy steps run: ``local`` (DuckDB and in-process code) or ``spark``.

Jobs take an ``Engine`` and call its steps; the local engine is today's code, the Spark
engine (``pipelines/spark/session.py``) computes the same results on a cluster. The Spark session
starts on first use, so a job that needs no Spark step never starts a JVM.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from pipelines.data.impressions import impressions_connection
from recsys.auc import delong_ci
from recsys.errors import UserInputError
from recsys.glmix.design import VideoRows, dense_video
from recsys.glmix.model import GLMix, GLMixConfig, fit_glmix
from recsys.glmix.tuning import select_random_l2
from recsys.triplets import TripletConfig, mine_triplets

ENGINES = ("local", "spark")
EngineName = Literal["local", "spark"]


@dataclass
class Engine:
    name: EngineName = "local"
    #: Spark master URL (ignored when SPARK_REMOTE names a Spark Connect server)
    spark_master: str | None = None
    _session: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise UserInputError(
                f"unknown engine {self.name!r}; choose one of {', '.join(ENGINES)}"
            )

    @property
    def is_spark(self) -> bool:
        return self.name == "spark"

    @property
    def spark(self) -> Any:
        if self._session is None:
            from pipelines.spark.session import spark_session

            self._session = spark_session(self.spark_master)
        return self._session

    def describe(self) -> str:
        if not self.is_spark:
            return "local"
        return f"spark ({os.environ.get('SPARK_REMOTE') or self.spark_master or 'local[*]'})"

    # ------------------------------------------------------------------ steps

    def mine_triplets(
        self, data_dir: Path, cfg: TripletConfig, train_end: datetime | None
    ) -> pa.Table:
        """(anchor, positive, negative, user_id) sorted by (anchor, positive, negative)."""
        if self.is_spark:
            from pipelines.spark.session import mine_triplets_spark

            df = mine_triplets_spark(self.spark, data_dir / "impressions.parquet", cfg, train_end)
            table: pa.Table = df.toArrow()
            return table
        return mine_triplets(impressions_connection(data_dir), cfg, train_end)

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
        if self.is_spark:
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
        return fit_glmix(users, video, labels, cfg, global_feats, on_pass=on_pass, videos=videos)

    def select_random_l2(
        self,
        users: np.ndarray,
        video: np.ndarray | VideoRows,
        labels: np.ndarray,
        is_validation: np.ndarray,
        base: GLMixConfig,
        global_feats: np.ndarray | None = None,
    ) -> tuple[float, dict[float, float]]:
        fit = None
        if self.is_spark:
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

        if self.is_spark:
            video = dense_video(video)
        return select_random_l2(
            users, video, labels, is_validation, base=base, fit=fit, global_feats=global_feats
        )

    def delong(self, labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
        """(AUC, low, high) with DeLong's 95% interval."""
        if self.is_spark:
            import pandas as pd

            from pipelines.spark.auc import delong_spark

            df = self.spark.createDataFrame(
                pd.DataFrame({"score": np.asarray(scores, np.float64), "label": labels})
            )
            return delong_spark(df)
        return delong_ci(labels, scores)

    def stop(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None


LOCAL = Engine("local")
