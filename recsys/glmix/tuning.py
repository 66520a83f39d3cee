"""Choosing GLMix's penalties on validation rows: the users' slope L2 and the per-video
coordinate's intercept L2 (or no per-video coordinate at all).

Each candidate is fitted on the training rows and scored by log-loss on the later
validation rows (the caller cuts them by time); the lowest loss wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from recsys.errors import UserInputError
from recsys.glmix.config import GLMixConfig
from recsys.glmix.design import VideoRows
from recsys.glmix.logistic import mean_log_loss
from recsys.glmix.model import GLMix, fit_glmix
from recsys.glmix.random_effects import BUCKET_VALUES
from recsys.parallel import map_independent

#: the random-effect L2 strengths ``select_random_l2`` tries
RANDOM_L2_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
#: the per-video intercept's L2 strengths ``select_video_l2`` tries (beside none at all)
VIDEO_L2_GRID: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0)
#: ``select_video_l2``'s key for "no per-video coordinate"
NO_VIDEO_EFFECTS = "none"

#: fit(users, video, labels, config, global_feats, videos) -> model
FitGLMix = Callable[..., GLMix]


def validation_losses(
    candidates: dict[Any, GLMixConfig],
    user_ids: np.ndarray,
    video: np.ndarray | VideoRows,
    labels: np.ndarray,
    is_validation: np.ndarray,
    fit: FitGLMix | None = None,
    global_feats: np.ndarray | None = None,
    videos: np.ndarray | None = None,
) -> dict[Any, float]:
    """Validation log-loss of each candidate config: fit on the rows not in
    ``is_validation``, score the rest. ``fit`` defaults to ``fit_glmix`` (a distributed
    engine passes its own)."""
    train = ~np.asarray(is_validation, dtype=bool)
    if train.all() or not train.any():
        raise UserInputError("regularisation selection needs both training and validation rows")
    g_train = None if global_feats is None else global_feats[train]
    g_val = None if global_feats is None else global_feats[~train]
    v_train = None if videos is None else np.asarray(videos)[train]
    v_val = None if videos is None else np.asarray(videos)[~train]

    def loss(cfg: GLMixConfig) -> float:
        v_fit = v_train if cfg.video_effects else None
        model = (fit or _fit_rows)(
            user_ids[train], video[train], labels[train], cfg, g_train, v_fit
        )
        p = model.predict_proba(user_ids[~train], video[~train], g_val, v_val)
        return mean_log_loss(labels[~train], p)

    configs = list(candidates.values())
    if fit is None:  # local fits: side by side (a distributed engine spreads each one)
        dense = 0 if isinstance(video, VideoRows) else video.shape[1]
        values = map_independent(loss, configs, fit_bytes(len(labels), dense))
    else:
        values = [loss(cfg) for cfg in configs]
    return dict(zip(candidates, values, strict=True))


def fit_bytes(rows: int, dense_columns: int = 0) -> int:
    """A rough upper estimate of one local GLMix fit's memory on ``rows`` rows
    (``recsys.parallel.map_independent``): its per-row float64 arrays, a design of
    ``dense_columns`` float32 columns when it is materialised (0: video features by
    reference), and the per-user solve's batch temporaries (a few ``BUCKET_VALUES``-sized
    arrays, whatever the log's size)."""
    # measured: one fit added 490 MiB to the peak at 370k rows, 580 MiB at 1.5M
    return rows * (160 + 4 * dense_columns) + 28 * BUCKET_VALUES


def _fit_rows(
    users: np.ndarray,
    video: np.ndarray | VideoRows,
    labels: np.ndarray,
    cfg: GLMixConfig,
    global_feats: np.ndarray | None,
    videos: np.ndarray | None,
) -> GLMix:
    return fit_glmix(users, video, labels, cfg, global_feats, videos=videos)


def select_random_l2(
    user_ids: np.ndarray,
    video: np.ndarray | VideoRows,
    labels: np.ndarray,
    is_validation: np.ndarray,
    grid: tuple[float, ...] = RANDOM_L2_GRID,
    base: GLMixConfig | None = None,
    fit: FitGLMix | None = None,
    global_feats: np.ndarray | None = None,
    videos: np.ndarray | None = None,
) -> tuple[float, dict[float, float]]:
    """Pick ``random_l2`` by validation log-loss (``validation_losses``)."""
    base = base or GLMixConfig()
    candidates = {lam: replace(base, random_l2=lam) for lam in grid}
    losses = validation_losses(
        candidates, user_ids, video, labels, is_validation, fit, global_feats, videos
    )
    best = min(losses, key=lambda k: losses[k])
    return best, losses


def select_video_l2(
    user_ids: np.ndarray,
    video: np.ndarray | VideoRows,
    labels: np.ndarray,
    is_validation: np.ndarray,
    videos: np.ndarray,
    grid: tuple[float, ...] = VIDEO_L2_GRID,
    base: GLMixConfig | None = None,
    fit: FitGLMix | None = None,
    global_feats: np.ndarray | None = None,
) -> tuple[GLMixConfig, dict[str, float]]:
    """The per-video coordinate's penalty by validation log-loss, "none" (no coordinate)
    among the candidates: a log where videos do not differ keeps the two-coordinate model.
    Returns the chosen config and each candidate's loss (keys: the L2 as text, or
    ``NO_VIDEO_EFFECTS``)."""
    candidates = video_candidates(base or GLMixConfig(), grid)
    losses = validation_losses(
        candidates, user_ids, video, labels, is_validation, fit, global_feats, videos
    )
    best = min(losses, key=lambda k: losses[k])
    return candidates[best], losses


def video_candidates(
    base: GLMixConfig, grid: tuple[float, ...] = VIDEO_L2_GRID
) -> dict[str, GLMixConfig]:
    """``select_video_l2``'s candidates: none, then each L2 of ``grid`` (keys as text)."""
    candidates = {NO_VIDEO_EFFECTS: replace(base, video_effects=False)}
    for lam in grid:
        candidates[str(lam)] = replace(base, video_effects=True, video_intercept_l2=lam)
    return candidates
