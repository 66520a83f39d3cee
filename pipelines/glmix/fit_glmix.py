"""``recsys fit-glmix``: GLMix (Eq. 18) on the training period's impressions, with and
without video features, plus the users' watch histories, added to an artifact.

Everything fitted uses only the impressions before the artifact's test start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data.impressions import (
    embedding_rows,
    impressions_connection,
    labels,
    times_us,
    training_rows,
    users_of,
)
from pipelines.data.io import dataset_dir
from pipelines.data.side import read_side_features
from pipelines.engine import LOCAL, Engine
from pipelines.glmix.coordinates import choose_coordinates, fit_four
from pipelines.phases import phase
from recsys import artifact as art
from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S
from recsys.errors import UserInputError
from recsys.glmix.design import VideoRows
from recsys.glmix.model import GLMix, GLMixConfig, fit_glmix
from recsys.glmix.tuning import select_video_l2
from recsys.scoring import HISTORY_FEATURES, history_features, prior_history_similarity
from recsys.side_features import SideFeatures


@dataclass(frozen=True)
class GLMixJobConfig:
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S
    glmix: GLMixConfig = field(default_factory=GLMixConfig)
    #: choose random_l2 on the last 10% (by time) of the training period
    tune: bool = False
    #: print each phase and coordinate-descent pass
    progress: bool = False
    #: give the watch-probability model the Eq. 16-17 similarities to the user's history
    #: (``recsys.scoring.HISTORY_FEATURES``) as global features; False: Eq. 18 alone
    history_features: bool = True
    #: per-video random effects as a third coordinate; with ``tune`` their penalty (or
    #: none at all) is chosen on the validation rows
    video_effects: bool = True
    #: side features (``recsys.side_features``): columns of videos.parquet and of the data
    #: set's users.parquet, in the fixed effect of every model (and in the per-video
    #: slopes when ``glmix.video_slopes``)
    video_features: tuple[str, ...] = ()
    user_features: tuple[str, ...] = ()


def _glmix_files(model: GLMix, stem: str) -> dict[str, Any]:
    fixed, users = model.to_tables()
    jname, uname = art.glmix_file_names(stem)
    files: dict[str, Any] = {
        jname: art.write_json_bytes(fixed),
        uname: lambda p, t=users: pq.write_table(t, p),
    }
    videos = model.video_table()
    if videos is not None:
        files[art.glmix_videos_file(stem)] = lambda p, t=videos: pq.write_table(t, p)
    return files


def _say(cfg: GLMixJobConfig, message: str) -> None:
    if cfg.progress:
        print(message, flush=True)


def _history_features(
    users: np.ndarray, vrows: np.ndarray, times: np.ndarray, y: np.ndarray, emb: np.ndarray
) -> np.ndarray:
    """Each impression's similarity to the user's history as it was when it was shown."""
    codes, _ = pd.factorize(users)
    max_s, avg_s = prior_history_similarity(
        codes, vrows, times, y > 0, emb.astype(np.float64, copy=False)
    )
    return history_features(max_s, avg_s)


def _global_features(
    cfg: GLMixJobConfig,
    d: Path,
    users: np.ndarray,
    videos: np.ndarray,
    vrows: np.ndarray,
    times: np.ndarray,
    y: np.ndarray,
    emb: np.ndarray,
) -> tuple[SideFeatures | None, np.ndarray | None, np.ndarray | None, list[str]]:
    """(side features, their rows, all global features, their names): the history
    similarities (when asked for), then the side features."""
    side = read_side_features(d, cfg.video_features, cfg.user_features)
    side_rows = None if side is None else side.rows(users, videos)
    names = [] if side is None else side.names
    if not cfg.history_features:
        return side, side_rows, side_rows, names
    _say(cfg, "GLMix: similarity of each impression to the history before it ...")
    hist = _history_features(users, vrows, times, y, emb)
    if side_rows is not None:
        hist = np.hstack([hist, side_rows])
    return side, side_rows, hist, list(HISTORY_FEATURES) + names


def fit_glmix_into_artifact(
    data: str | os.PathLike[str],
    artifact: str | os.PathLike[str],
    cfg: GLMixJobConfig | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Fit GLMix (with and without video features) on training-period impressions and add
    them, with the users' training-period watch histories, to the artifact. On Spark the
    rows never come to this process (the engine's ``glmix_models``)."""
    cfg = cfg or GLMixJobConfig()
    engine = engine or LOCAL
    d, a = dataset_dir(data), Path(artifact)
    if (cfg.video_features or cfg.user_features) and engine.name != LOCAL.name:
        raise UserInputError(
            "side features (--video-features, --user-features) need --engine local"
        )
    test_start = art.training_cutoff(art.read_manifest(a))
    models, write_histories, facts = engine.glmix_models(
        d, a, test_start, cfg, lambda m: _say(cfg, m), here=lambda: _fit_here(d, a, test_start, cfg)
    )
    with_video = models[art.GLMIX]
    info = {
        "training_rows": facts["training_rows"],
        "users": len(with_video.user_ids),
        "videos_with_an_effect": len(with_video.video_ids),
        "fit_seconds": facts["fit_seconds"],
        "passes": len(with_video.history),
        "log_likelihood_per_row": with_video.history[-1]["log_likelihood_per_row"],
        "config": asdict(facts["config"]),
        "global_features": list(with_video.global_names),
        "side_features": facts.get("side_features", []),
        "tuning": facts["tuning"],
        "watch_threshold_s": cfg.watch_threshold_s,
        "engine": engine.describe(),
    }
    files: dict[str, Any] = {art.HISTORIES: write_histories}
    if facts.get("side") is not None:
        files.update(art.side_feature_files(facts["side"]))
    for stem, model in models.items():
        files.update(_glmix_files(model, stem))
    art.extend_artifact(a, files, {"kind": "recommender", "glmix": info})
    return info


def _fit_here(
    d: Path, a: Path, test_start: datetime, cfg: GLMixJobConfig
) -> tuple[dict[str, GLMix], Callable[[Path], None], dict[str, Any]]:
    """(models by artifact stem, the histories writer, facts), the rows in this process."""
    engine = LOCAL
    train = training_rows(impressions_connection(d), test_start)
    if train.num_rows == 0:
        raise UserInputError("no impressions before the test start to fit GLMix on")
    ids, emb = art.load_embeddings(a)
    vrows = embedding_rows(ids, train.column("video_id").to_pylist(), "training impressions")
    # Each row's video id: references to the catalogue's id strings, no copy per row.
    videos = np.asarray(ids, dtype=object)[vrows]
    users = users_of(train)
    y = labels(train, cfg.watch_threshold_s).astype(np.float64)
    x = VideoRows(emb, vrows)  # each row names its video: no (N, E) copy of the log
    times = times_us(train)
    with phase("history similarities"):
        side, side_rows, hist_feats, names = _global_features(
            cfg, d, users, videos, vrows, times, y, emb
        )
    glm_cfg = cfg.glmix
    tuning: dict[str, Any] = {}
    cut = np.quantile(times, 0.9)
    if cfg.tune:
        _say(cfg, "GLMix: choosing random_l2 on the last 10% of the training period ...")
        with phase("choosing random_l2"):
            best, losses = engine.select_random_l2(users, x, y, times >= cut, glm_cfg, hist_feats)
        _say(cfg, f"GLMix: random_l2 = {best}")
        glm_cfg = replace(glm_cfg, random_l2=best)
        tuning = {"random_l2": best, "validation_log_loss": {str(k): v for k, v in losses.items()}}

    def select_video(base: GLMixConfig) -> tuple[GLMixConfig, dict[str, float]]:
        return select_video_l2(
            users, x, y, times >= cut, videos, base=base, global_feats=hist_feats
        )

    with phase("choosing the per-video coordinate"):
        shipped, variant, video_tuning = choose_coordinates(
            glm_cfg, cfg.video_effects, cfg.tune, lambda m: _say(cfg, m), select_video
        )
    tuning.update(video_tuning)
    t0 = time.perf_counter()
    _say(cfg, f"GLMix: fitting on {engine.describe()} ...")

    def fit(c: GLMixConfig, features: bool) -> GLMix:
        # Without video features, no similarity to the history either; side features stay
        # (they are not the video's embedding), so Table 7 compares on equal terms.
        g = hist_feats if features else side_rows
        model = fit_glmix(
            users,
            x,
            y,
            c,
            g,
            on_pass=(lambda p, ll: _say(cfg, f"GLMix pass {p}: log-likelihood per row {ll:.5f}"))
            if features
            else None,
            videos=videos if c.video_effects else None,
        )
        if g is not None:
            model.global_names = names if features else side.names if side else []
        return model

    with phase("fits"):
        models = fit_four(shipped, variant, fit, lambda m: _say(cfg, m))
    fit_s = time.perf_counter() - t0
    watched = pa.array(y > 0)
    histories = pa.table(
        {
            "user_id": train.column("user_id").filter(watched),
            "video_id": train.column("video_id").filter(watched),
            "watched_at": train.column("shown_at").filter(watched),
        }
    )
    facts = {
        "training_rows": int(train.num_rows),
        "fit_seconds": fit_s,
        "tuning": tuning,
        "config": shipped,
        "side": side,
        "side_features": names[len(HISTORY_FEATURES) :] if cfg.history_features else names,
    }
    return models, lambda p: pq.write_table(histories, p), facts
