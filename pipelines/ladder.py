"""The baseline ladder for recommendation: classical representations through the same GLMix.

Every representation (the learned embedding or a baseline) is scored the same way
on the same rows: GLMix (Eq. 18) fitted on the training period with ``random_l2``
chosen on its last 10% (by time), and the max/avg similarity to the training-period
watch history (Eq. 16-17). Baselines are first reduced by PCA to a size chosen on
the same validation rows (at most the embedding's size) and L2-normalised, so a
cosine means the same thing for every row of the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys.baselines import BASELINE_NAMES, PCA, baseline_features
from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S
from recsys.errors import UserInputError
from recsys.frames import FrameStore
from recsys.glmix import GLMixConfig, fit_glmix, select_random_l2
from recsys.scoring import history_features as _history_features
from recsys.scoring import prior_history_similarity, similarity_by_user

#: PCA sizes tried for a baseline (those above the embedding size are skipped)
PCA_DIMS: tuple[int, ...] = (8, 16, 32, 64)


@dataclass
class RecRows:
    """Training and test impressions as rows into one video table (``video_ids``)."""

    video_ids: list[str]
    train_users: np.ndarray  # (N_train,) object
    train_videos: np.ndarray  # (N_train,) int64 rows into video_ids
    train_labels: np.ndarray  # (N_train,) float64 in {0, 1}
    train_times: np.ndarray  # (N_train,) int64 microseconds
    test_users: np.ndarray
    test_videos: np.ndarray
    test_labels: np.ndarray  # int64
    cold_start: np.ndarray  # bool: video without an impression before the test start
    test_user_index: np.ndarray  # int64 ids shared with history_rows
    history_rows: dict[int, np.ndarray]
    train_user_index: np.ndarray | None = None  # int64 ids shared with history_rows

    @property
    def validation_mask(self) -> np.ndarray:
        """The last 10% (by time) of the training rows: where sizes and penalties are chosen."""
        return self.train_times >= np.quantile(self.train_times, 0.9)


def load_rec_rows(
    data: Path,
    video_ids: list[str],
    test_start: datetime,
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S,
) -> RecRows:
    from pipelines.evaluate import _connection, _embedding_rows, _rows

    con = _connection(data)
    train = _rows(con, "shown_at < ?", [test_start])
    test = _rows(con, "shown_at >= ?", [test_start])
    if train.num_rows == 0 or test.num_rows == 0:
        raise UserInputError(
            "the baseline ladder needs impressions before and after the test start"
        )
    tr_v = _embedding_rows(video_ids, train.column("video_id").to_pylist(), "training impressions")
    te_v = _embedding_rows(video_ids, test.column("video_id").to_pylist(), "test impressions")
    tr_u = np.array(train.column("user_id").to_pylist(), dtype=object)
    te_u = np.array(test.column("user_id").to_pylist(), dtype=object)
    tr_y = (train.column("watch_seconds").to_numpy() >= watch_threshold_s).astype(np.float64)
    te_y = (test.column("watch_seconds").to_numpy() >= watch_threshold_s).astype(np.int64)
    times = train.column("shown_at").to_numpy().astype("datetime64[us]").astype(np.int64)
    seen = np.zeros(len(video_ids), dtype=bool)
    seen[tr_v] = True
    uindex = {u: i for i, u in enumerate(sorted(set(tr_u.tolist()) | set(te_u.tolist())))}
    hist: dict[int, list[int]] = {}
    for u, v, w in zip(tr_u.tolist(), tr_v.tolist(), tr_y.tolist(), strict=True):
        if w > 0:
            hist.setdefault(uindex[u], []).append(v)
    return RecRows(
        video_ids=video_ids,
        train_users=tr_u,
        train_videos=tr_v,
        train_labels=tr_y,
        train_times=times,
        test_users=te_u,
        test_videos=te_v,
        test_labels=te_y,
        cold_start=~seen[te_v],
        test_user_index=np.array([uindex[u] for u in te_u.tolist()], dtype=np.int64),
        history_rows={u: np.unique(np.array(r)) for u, r in hist.items()},
        train_user_index=np.array([uindex[u] for u in tr_u.tolist()], dtype=np.int64),
    )


def validation_log_loss(rows: RecRows, vectors: np.ndarray, cfg: GLMixConfig) -> float:
    """GLMix fitted on the training rows before the validation cut, log-loss after it."""
    val = rows.validation_mask
    x = vectors[rows.train_videos]
    model = fit_glmix(rows.train_users[~val], x[~val], rows.train_labels[~val], cfg)
    p = np.clip(model.predict_proba(rows.train_users[val], x[val]), 1e-12, 1 - 1e-12)
    y = rows.train_labels[val]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def score_representation(
    rows: RecRows,
    vectors: np.ndarray,
    base: GLMixConfig | None = None,
    tune: bool = True,
    history_features: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Test-row scores (max/avg similarity, GLMix) of an (N_videos, E) representation.
    ``history_features``: GLMix also gets the Eq. 16-17 similarities to the history, as
    the artifact's model does (``GLMixJobConfig.history_features``)."""
    base = base or GLMixConfig()
    x_train = vectors[rows.train_videos]
    v64 = vectors.astype(np.float64)
    info: dict[str, Any] = {}
    cfg = base
    g_train = None
    if history_features:
        if rows.train_user_index is None:
            raise ValueError("history features need the training rows' user index")
        g_train = _history_features(
            *prior_history_similarity(
                rows.train_user_index,
                rows.train_videos,
                rows.train_times,
                rows.train_labels > 0,
                v64,
            )
        )
    if tune:
        best, losses = select_random_l2(
            rows.train_users,
            x_train,
            rows.train_labels,
            rows.validation_mask,
            base=base,
            global_feats=g_train,
        )
        cfg = replace(base, random_l2=best)
        info["random_l2"] = best
        info["validation_log_loss"] = losses[best]
    model = fit_glmix(rows.train_users, x_train, rows.train_labels, cfg, g_train)
    max_s, avg_s = similarity_by_user(
        rows.test_user_index, rows.test_videos, rows.history_rows, v64
    )
    g_test = _history_features(max_s, avg_s) if history_features else None
    scores = {
        "max_similarity": max_s,
        "avg_similarity": avg_s,
        "glmix": model.predict_proba(rows.test_users, vectors[rows.test_videos], g_test),
    }
    return scores, info


def reduce_on_validation(
    rows: RecRows, raw: np.ndarray, max_dim: int, base: GLMixConfig | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """PCA of ``raw`` to the size in ``PCA_DIMS`` (<= max_dim) with the lowest GLMix
    validation log-loss; returns the L2-normalised reduced vectors and the choice."""
    base = base or GLMixConfig()
    dims = [d for d in PCA_DIMS if d <= max_dim and d <= min(raw.shape)] or [
        max(1, min(max_dim, *raw.shape))
    ]
    losses: dict[int, float] = {}
    reduced: dict[int, np.ndarray] = {}
    full = PCA.fit(raw, max(dims))  # one SVD; each size keeps its leading directions
    for d in dims:
        reduced[d] = full.truncated(d).transform(raw)
        losses[d] = validation_log_loss(rows, reduced[d], base)
    best = min(losses, key=lambda k: losses[k])
    return reduced[best], {"pca_dim": best, "pca_validation_log_loss": losses}


def baseline_ladder(
    rows: RecRows,
    store: FrameStore,
    max_dim: int,
    names: tuple[str, ...] = BASELINE_NAMES,
    base: GLMixConfig | None = None,
    num_words: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    history_features: bool = False,
) -> dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Scores of each classical baseline on ``rows``; ``store`` must list ``rows.video_ids``.
    ``history_features``: their GLMix gets the history similarities too (as the model it
    is compared with does)."""
    if store.video_ids != rows.video_ids:
        raise ValueError("the frame store and the rows must list the same videos in one order")
    out: dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
    for name in names:
        t0 = time.perf_counter()
        raw = baseline_features(name, store.frames, store.offsets, num_words, seed)
        vectors, info = reduce_on_validation(rows, raw, max_dim, base)
        scores, fit_info = score_representation(
            rows, vectors, base, history_features=history_features
        )
        info.update(fit_info, seconds=time.perf_counter() - t0)
        out[name] = (scores, info)
        if log is not None:
            log(f"baseline {name}: PCA {info['pca_dim']}, {info['seconds']:.1f} s")
    return out


def read_embedding_vectors(path: Path, video_ids: list[str]) -> np.ndarray:
    """Embeddings from an artifact's embeddings.parquet, in the order of ``video_ids``."""
    from recsys.artifact import read_embeddings

    ids, emb = read_embeddings(path)
    index = {v: i for i, v in enumerate(ids)}
    missing = [v for v in video_ids if v not in index]
    if missing:
        raise UserInputError(f"{len(missing)} videos have no embedding, e.g. {missing[0]!r}")
    return emb[[index[v] for v in video_ids]]
