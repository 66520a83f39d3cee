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
from dataclasses import replace
from typing import Any

import numpy as np

from pipelines.impressions import RecRows
from recsys.baselines import BASELINE_NAMES, PCA, baseline_features
from recsys.frames import FrameStore
from recsys.glmix import GLMixConfig, fit_glmix, select_random_l2
from recsys.logistic import mean_log_loss
from recsys.scoring import history_features as _history_features
from recsys.scoring import prior_history_similarity, similarity_by_user

#: PCA sizes tried for a baseline (those above the embedding size are skipped)
PCA_DIMS: tuple[int, ...] = (8, 16, 32, 64)


def validation_log_loss(rows: RecRows, vectors: np.ndarray, cfg: GLMixConfig) -> float:
    """GLMix fitted on the training rows before the validation cut, log-loss after it."""
    val = rows.validation_mask
    x = vectors[rows.train_videos]
    model = fit_glmix(rows.train_users[~val], x[~val], rows.train_labels[~val], cfg)
    return mean_log_loss(rows.train_labels[val], model.predict_proba(rows.train_users[val], x[val]))


def score_representation(
    rows: RecRows,
    vectors: np.ndarray,
    base: GLMixConfig | None = None,
    tune: bool = True,
    history_features: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Test-row scores (max/avg similarity, GLMix) of an (N_videos, E) representation.
    ``history_features``: GLMix also gets the Eq. 16-17 similarities to the history, as
    the artifact's model does (``pipelines.fit_glmix.GLMixJobConfig``)."""
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
