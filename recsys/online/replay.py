"""The online replay (progressive validation): the test period through online GLMix in
time order, each row scored before the model learns from it.

It runs as two halves so that a distributed engine can run each where its rows are:

1. ``replay_users``: per user, in time order, the logit without any per-video term
   (fixed effect plus the user's online effect) and the frozen logit the per-video
   statistics use. A user's rows are all it needs.
2. ``replay_videos``: per video, in time order, its online effect before each row added
   to that logit (``recsys.online.videos``). A video's rows are all it needs.

``progressive_validation`` runs both over all rows in this process; the Spark engine
runs the first per user partition and the second per video partition, with the same
functions, so both give the same scores.
"""

from __future__ import annotations

import numpy as np

from recsys.glmix.design import VideoRows
from recsys.glmix.model import GLMix
from recsys.online.users import OnlineConfig, OnlineEffects, sigmoid
from recsys.online.videos import VideoEffects, rows_by_user


def _f64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def _rows(video: np.ndarray | VideoRows, n: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(video, VideoRows):  # a row's features are its video's table row
        return np.asarray(video.table, dtype=np.float64), video.rows
    return np.asarray(video, dtype=np.float64), np.arange(n)


def rounds(keys: np.ndarray, times: np.ndarray) -> list[np.ndarray]:
    """The rows in rounds: round r holds the r-th row (in time order, ties in input order)
    of every key (user or video) with more than r rows, so a key appears at most once a
    round. A user's effect depends on that user's rows alone, and a video's on that
    video's alone, so a replay in rounds gives each row what the row-by-row replay gives
    it: one batched refit per round instead of one per row."""
    order = np.argsort(np.asarray(times), kind="stable")
    _, key = np.unique(np.asarray(keys, dtype=object)[order].astype(str), return_inverse=True)
    by_key = np.argsort(key, kind="stable")  # each key's rows together, in time order
    sorted_key = key[by_key]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_key] = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    by_round = np.argsort(rank, kind="stable")  # within a round, time order
    cuts = np.flatnonzero(np.diff(rank[by_round])) + 1
    return np.split(order[by_round], cuts) if len(order) else []


def replay_users(
    users: np.ndarray,
    video: np.ndarray | VideoRows,
    labels: np.ndarray,
    times: np.ndarray,
    model: GLMix,
    config: OnlineConfig | None = None,
    global_feats: np.ndarray | None = None,
    videos: np.ndarray | None = None,
    frozen_feats: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """((N,) each row's online logit without a per-video term, scored before its user's
    effect learns from it; (N,) the frozen logit of each row, None without per-video
    effects). Rows in time order, ties in input order."""
    online = OnlineEffects(model, config or OnlineConfig(), track_videos=False)
    table, video_of = _rows(video, len(labels))
    y, g = np.asarray(labels, dtype=np.float64), _f64(global_feats)
    out = np.empty(len(y), dtype=np.float64)
    for idx in rounds(users, times):
        # Each user at most once: score with the effect before the row, then learn.
        names = [str(u) for u in users[idx]]
        gi = None if g is None else g[idx]
        vi = None if videos is None else [str(v) for v in videos[idx]]
        xi = table[video_of[idx]]
        out[idx] = online.user_logits(names, xi, gi)
        online.stage(names, xi, y[idx], gi, vi)
        online.refit(online.take_pending())
    frozen = None
    if model.has_video_effects:
        if videos is None:
            raise ValueError("this model has per-video effects: name each row's video")
        x = table[video_of]
        fg = _f64(frozen_feats)
        frozen = model.fixed_logit(x, fg) + model.random_logit(model.user_rows(users), x)
        frozen += model.video_logit(model.video_rows(np.asarray(videos, dtype=object)), fg)
    return out, frozen


def replay_videos(
    users: np.ndarray,
    videos: np.ndarray,
    labels: np.ndarray,
    times: np.ndarray,
    model: GLMix,
    user_logit: np.ndarray,
    frozen_logit: np.ndarray,
    global_feats: np.ndarray | None = None,
    frozen_feats: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) online watch probabilities: ``user_logit`` plus each video's online effect as
    it was before the row (then the row joins its video's statistics). Rows in time
    order, ties in input order."""
    effects = VideoEffects(model)
    y, g, fg = np.asarray(labels, dtype=np.float64), _f64(global_feats), _f64(frozen_feats)
    out = np.empty(len(y), dtype=np.float64)
    for idx in rounds(videos, times):
        # Each video at most once: its effect before the row, then the row's terms.
        names = [str(v) for v in videos[idx]]
        gi = None if g is None else g[idx]
        fi = None if fg is None else fg[idx]
        out[idx] = sigmoid(user_logit[idx] + effects.logit(names, gi))
        by_user = rows_by_user([str(u) for u in users[idx]])
        effects.stage(names, y[idx], frozen_logit[idx], fi, by_user)
    return out


def progressive_validation(
    users: np.ndarray,
    video: np.ndarray | VideoRows,
    labels: np.ndarray,
    times: np.ndarray,
    model: GLMix,
    config: OnlineConfig | None = None,
    global_feats: np.ndarray | None = None,
    videos: np.ndarray | None = None,
    frozen_feats: np.ndarray | None = None,
) -> np.ndarray:
    """Replay impressions in time order through online GLMix: each row is scored before
    the model learns from it. Returns the (N,) online watch probabilities, aligned with
    the input rows (the frozen model's are ``model.predict_proba``).

    ``global_feats`` (N, G): the model's global features of each row as the service
    would compute them at that moment (for history similarities: against the history
    including the watches replayed before the row, ``recsys.scoring.
    prior_history_similarity``). A model with per-video effects also needs ``videos``
    (N,) each row's video id and ``frozen_feats`` (N, G) the global features against the
    histories as the offline fit left them (``OnlineEffects.observe``)."""
    user_logit, frozen = replay_users(
        users, video, labels, times, model, config, global_feats, videos, frozen_feats
    )
    if frozen is None or videos is None:
        return sigmoid(user_logit)
    return replay_videos(
        users, videos, labels, times, model, user_logit, frozen, global_feats, frozen_feats
    )


def replay_row_by_row(
    users: np.ndarray,
    video: np.ndarray,
    labels: np.ndarray,
    times: np.ndarray,
    model: GLMix,
    global_feats: np.ndarray | None = None,
    videos: np.ndarray | None = None,
) -> np.ndarray:
    """``progressive_validation`` as it is defined, one row at a time: each row in time
    order (ties in input order) scored by its user's and its video's effects as they
    stand, then learnt from (the frozen features equal to ``global_feats``). The plain
    statement the rounds are tested and timed against; one refit a row."""
    users_online = OnlineEffects(model, track_videos=False)
    video_effects = VideoEffects(model) if model.has_video_effects else None
    x = np.asarray(video, dtype=np.float64)
    g = _f64(global_feats)
    out = np.empty(len(labels))
    for i in np.argsort(np.asarray(times), kind="stable").tolist():
        row = slice(i, i + 1)
        gi = None if g is None else g[row]
        vi = None if videos is None else [str(videos[i])]
        eta = users_online.user_logit(str(users[i]), x[row], gi)[0]
        if video_effects is not None and vi is not None:
            eta += video_effects.logit(vi, gi)[0]
        out[i] = float(sigmoid(np.array([eta]))[0])
        y = np.asarray(labels[row], dtype=np.float64)
        users_online.observe(str(users[i]), x[row], y, gi, vi)
        if video_effects is not None and vi is not None:
            frozen = model.fixed_logit(x[row], gi)
            frozen += model.random_logit(model.user_rows([str(users[i])]), x[row])
            frozen += model.video_logit(model.video_rows(vi), gi)
            video_effects.observe(str(users[i]), vi, y, frozen, gi)
    return out
