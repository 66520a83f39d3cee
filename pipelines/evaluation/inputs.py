"""What an evaluation is given: its configuration and the test period's rows as the
artifact sees them (shared by ``pipelines.evaluation.evaluate`` and ``pipelines.evaluation.baseline_comparison``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from embeddings.registry import RUNGS
from pipelines.data.impressions import (
    embedding_rows,
    evaluation_rows,
    group_histories,
    impressions_connection,
    labels,
    times_us,
    users_of,
    videos_shown_before,
)
from recsys import artifact as art
from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S
from recsys.errors import UserInputError
from recsys.online.users import OnlineConfig


@dataclass(frozen=True)
class EvalConfig:
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S
    #: default: the artifact's training cut-off (never earlier)
    test_start: datetime | None = None
    #: user-bootstrap resamples per AUC (0 = DeLong intervals only)
    bootstrap: int = 200
    seed: int = 0
    #: classical baselines scored on the same rows (``recsys.baselines``; () = none)
    baselines: tuple[str, ...] = RUNGS.names()
    #: replay the test period through online GLMix (None = skip)
    online: OnlineConfig | None = field(default_factory=OnlineConfig)
    #: report.json of an earlier run (e.g. avg pooling) to state relative improvements against
    baseline_report: Path | None = None
    progress: bool = False


@dataclass
class TestSet:
    """The test period's rows and the artifact's view of them."""

    rows: pa.Table  # user_id, video_id, shown_at, watch_seconds, row
    users: np.ndarray  # (N,) object
    video_rows: np.ndarray  # (N,) rows into the embeddings
    labels: np.ndarray  # (N,) int64
    cold_start: np.ndarray  # (N,) bool: no impression of the video before the cut-off
    times: np.ndarray  # (N,) int64 microseconds
    user_index: np.ndarray  # (N,) user codes shared with ``history_rows``
    history_rows: dict[int, np.ndarray]  # training-period watches per user code
    embeddings: np.ndarray  # (V, E) float64
    video_ids: list[str] = field(default_factory=list)  # names of the embeddings' rows


def load_test_set(d: Path, a: Path, start: datetime, cutoff: datetime, threshold: float) -> TestSet:
    """The impressions at or after ``start``; cold start = no impression before ``cutoff``."""
    con = impressions_connection(d)
    test = evaluation_rows(con, start)
    if test.num_rows == 0:
        raise UserInputError(f"no impressions at or after the test start {start.isoformat()}")
    train_videos = videos_shown_before(con, cutoff)
    ids, emb = art.load_embeddings(a)
    vrows = embedding_rows(ids, test.column("video_id").to_pylist(), "test impressions")
    users = users_of(test)
    # Histories: the artifact's training-period valid watches.
    hist = art.load_histories(a)
    hist_users = hist.column("user_id").to_pylist()
    hist_rows = embedding_rows(ids, hist.column("video_id").to_pylist(), "history rows")
    uindex = {u: i for i, u in enumerate(sorted(set(users.tolist()) | set(hist_users)))}
    return TestSet(
        rows=test,
        users=users,
        video_rows=vrows,
        labels=labels(test, threshold),
        cold_start=np.array([v not in train_videos for v in test.column("video_id").to_pylist()]),
        times=times_us(test),
        user_index=np.array([uindex[u] for u in users], dtype=np.int64),
        history_rows=group_histories([uindex[u] for u in hist_users], hist_rows.tolist()),
        embeddings=emb.astype(np.float64),
        video_ids=ids,
    )
