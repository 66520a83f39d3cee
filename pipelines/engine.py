"""Where a job's heavy steps run: one convention for every job.

A job takes an ``Engine`` and calls its steps; no job imports Spark. ``Engine`` runs every
step in this process (DuckDB, numpy, torch); ``pipelines.spark.engine.SparkEngine``
overrides each step to run it on a cluster with the same result. The steps are of two
kinds:

* computations (``mine_triplets``, ``fit_glmix``, ``select_random_l2``, ``delong``): the
  same inputs and outputs on every engine;
* phases whose rows should never come to this process on a cluster (``glmix_models``,
  ``evaluation``, ``embed_dataset``): the job hands over its in-process plan (``here``),
  which this engine runs; a cluster engine runs its own plan over the same files and
  returns the same kind of result.

``pipelines.commands.options.engine_from`` makes an engine from ``--engine``; another
backend subclasses ``Engine`` and overrides the steps it can run elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa

from pipelines.data.impressions import impressions_connection
from recsys.auc import delong_ci
from recsys.glmix.design import VideoRows
from recsys.glmix.model import GLMix, GLMixConfig, fit_glmix
from recsys.glmix.tuning import select_random_l2
from recsys.triplets import TripletConfig, mine_triplets

ENGINES = ("local", "spark")
T = TypeVar("T")


class Engine:
    """The local engine: every step in this process."""

    name: ClassVar[str] = "local"

    def describe(self) -> str:
        return self.name

    def stop(self) -> None:
        """Release what the engine holds (a cluster session); nothing here."""

    # ------------------------------------------------------------ computations

    def mine_triplets(
        self, data_dir: Path, cfg: TripletConfig, train_end: datetime | None
    ) -> pa.Table:
        """(anchor, positive, negative, user_id) sorted by (anchor, positive, negative)."""
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
        """GLMix's per-user penalty with the lowest validation log-loss, and every loss."""
        return select_random_l2(
            users, video, labels, is_validation, base=base, global_feats=global_feats
        )

    def delong(self, labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
        """(AUC, low, high) with DeLong's 95% interval."""
        return delong_ci(labels, scores)

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
        """The fit-glmix job's models, histories writer and facts
        (``pipelines.glmix.fit_glmix``; ``cfg`` is its ``GLMixJobConfig``)."""
        return here()

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
        """The evaluation of ``models`` (with and without video features) on the test
        rows from ``window`` = (test start, training cut-off) (``pipelines.evaluation``;
        ``cfg`` is its ``EvalConfig``, ``head`` the report's first entries)."""
        return here()

    def embed_dataset(
        self, artifact: Path, data: Path, out: Path, batch_size: int, here: Callable[[], int]
    ) -> int:
        """Every video of ``data`` embedded by the artifact's model into ``out``; the
        number of videos."""
        return here()


LOCAL = Engine()
