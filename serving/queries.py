"""The read side of the service: scores, similar videos and recommendations over a
``ServingState`` (Eq. 16-17 against the history, GLMix with online user effects)."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.errors import NotFoundError
from serving.state import ServingState


def score(state: ServingState, user_id: str, video_ids: list[str]) -> dict[str, Any]:
    rows = np.array([state.catalogue.rows.get(v, -1) for v in video_ids], dtype=np.int64)
    known = rows >= 0
    cand = state.catalogue.vectors(rows[known])
    mx, av = state.similarity(user_id, cand)
    probs = state.watch_probability(user_id, cand, mx, av, rows[known]).tolist()
    hist = state.histories.get(user_id)
    max_s: list[float | None] = mx.tolist() if hist else [None] * len(cand)
    avg_s: list[float | None] = av.tolist() if hist else [None] * len(cand)
    out: list[dict[str, Any]] = []
    j = 0
    for v, ok in zip(video_ids, known.tolist(), strict=True):
        if not ok:
            out.append({"video_id": v, "error": "unknown video"})
            continue
        out.append(
            {
                "video_id": v,
                "max_similarity": max_s[j],
                "avg_similarity": avg_s[j],
                "watch_probability": probs[j],
            }
        )
        j += 1
    return {
        "user_id": user_id,
        "known_user": state.known_user(user_id),
        "history_size": len(hist) if hist else 0,
        "scores": out,
    }


def similar(state: ServingState, video_id: str, k: int) -> list[dict[str, Any]]:
    row = state.catalogue.row(video_id)
    if row is None:
        gone = video_id in state.removed_videos
        raise NotFoundError(
            f"video {video_id!r} was taken down" if gone else f"unknown video {video_id!r}"
        )
    return [{"video_id": v, "similarity": s} for v, s in state.catalogue.similar(row, k)]


def recommend(state: ServingState, user_id: str, k: int, seeds: int) -> list[dict[str, Any]]:
    """Neighbours of the user's last ``seeds`` watches, minus watched videos, ranked by
    GLMix (no history: the newest 20k videos of the catalogue)."""
    hist = state.histories.get(user_id) or []
    n = state.num_videos
    if hist:
        ids = state.catalogue.search(
            state.catalogue.vectors(hist[-seeds:]), min(n, 4 * k + len(hist))
        )
        rows = state.catalogue.rows
        found = {rows.get(v, -1) for row in ids for v in row} - {-1}  # -1: just taken down
        cand_rows = sorted(found - set(hist))
    else:
        cand_rows = state.catalogue.live_rows(np.arange(max(0, n - 20_000), n))
    if not cand_rows:
        return []
    cand = state.catalogue.vectors(cand_rows)
    mx, av = state.similarity(user_id, cand)
    p = state.watch_probability(user_id, cand, mx, av, cand_rows)
    result = []
    for i in np.argsort(-p, kind="stable")[:k].tolist():
        item: dict[str, Any] = {
            "video_id": state.catalogue.ids[cand_rows[i]],
            "watch_probability": float(p[i]),
        }
        if hist:
            item["max_similarity"] = float(mx[i])
            item["avg_similarity"] = float(av[i])
        result.append(item)
    return result
