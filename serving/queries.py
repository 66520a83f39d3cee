"""The read side of the service: scores, similar videos and recommendations over a
``ServingState`` (Eq. 16-17 against the history, GLMix with online user effects)."""

from __future__ import annotations

from itertools import repeat
from typing import Any

import numpy as np

from serving.state import ServingState


def score(state: ServingState, user_id: str, video_ids: list[str]) -> dict[str, Any]:
    get = state.catalogue.rows.get
    rows = np.fromiter(map(get, video_ids, repeat(-1, len(video_ids))), np.int64, len(video_ids))
    known = None if len(rows) and rows.min() >= 0 else rows >= 0  # None: every one known
    mx, av, p = state.score_rows(user_id, rows if known is None else rows[known])
    hist = state.histories.get(user_id)
    m = len(p)
    max_s: list[float | None] = mx.tolist() if hist is not None else [None] * m
    avg_s: list[float | None] = av.tolist() if hist is not None else [None] * m
    scored = [
        {"video_id": v, "max_similarity": a, "avg_similarity": b, "watch_probability": q}
        for v, a, b, q in zip(
            video_ids if known is None else [video_ids[i] for i in np.flatnonzero(known)],
            max_s,
            avg_s,
            p.tolist(),
            strict=True,
        )
    ]
    out = scored
    if known is not None:  # unknown videos in their places, per item
        it = iter(scored)
        out = [
            next(it) if ok else {"video_id": v, "error": "unknown video"}
            for v, ok in zip(video_ids, known.tolist(), strict=True)
        ]
    return {
        "user_id": user_id,
        "known_user": state.known_user(user_id),
        "history_size": 0 if hist is None else len(hist),
        "scores": out,
    }


def similar(state: ServingState, video_id: str, k: int) -> list[dict[str, Any]]:
    row = state.catalogue.row(video_id)
    if row is None:
        raise state.video_not_found(video_id)
    return [{"video_id": v, "similarity": s} for v, s in state.catalogue.similar(row, k)]


def recommend_candidates(state: ServingState, user_id: str, k: int, seeds: int) -> int:
    """At most how many candidates ``recommend`` scores for this user now (before a
    crowded history's second search)."""
    hist = state.histories.get(user_id)
    if hist is None:
        return min(state.num_videos, 20_000)
    n_seeds = min(len(hist), seeds)
    return n_seeds * min(state.num_videos, 2 * k + n_seeds)


def recommend(state: ServingState, user_id: str, k: int, seeds: int) -> list[dict[str, Any]]:
    """Neighbours of the user's last ``seeds`` watches, minus watched videos, ranked by
    GLMix (no history: the newest 20k videos of the catalogue)."""
    hist = state.histories.get(user_id)
    n = state.num_videos
    if hist is not None:
        # Each seed's 2k + (number of seeds) nearest: 2k unwatched ones even when every
        # other seed is among them, whatever the history's length. A history crowding
        # its own neighbourhoods (fewer than k left) is searched again with room for all
        # of it.
        seed_rows, watched = np.asarray(hist[-seeds:], np.int64), np.asarray(hist, np.int64)
        cand_rows = _unwatched_neighbours(state, seed_rows, watched, 2 * k + len(seed_rows))
        if len(cand_rows) < k:
            cand_rows = _unwatched_neighbours(state, seed_rows, watched, 4 * k + len(hist))
    else:
        cand_rows = np.asarray(
            state.catalogue.live_rows(np.arange(max(0, n - 20_000), n)), dtype=np.int64
        )
    if not len(cand_rows):
        return []
    mx, av, p = state.score_rows(user_id, cand_rows)
    top = top_k(p, k)
    ids = state.catalogue.ids
    rows, probs = cand_rows[top].tolist(), p[top].tolist()
    if hist is None:
        return [
            {"video_id": ids[r], "watch_probability": q} for r, q in zip(rows, probs, strict=True)
        ]
    return [
        {"video_id": ids[r], "watch_probability": q, "max_similarity": m, "avg_similarity": a}
        for r, q, m, a in zip(rows, probs, mx[top].tolist(), av[top].tolist(), strict=True)
    ]


def top_k(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest of ``p``, largest first, ties by index (NaN last): the
    head of a stable sort of ``-p``, sorting only the values at or above the k-th largest."""
    neg = -p
    if len(p) <= 4 * k:
        return np.argsort(neg, kind="stable")[:k]
    kth = np.partition(neg, k - 1)[k - 1]  # NaN sorts last, so only with fewer than k numbers
    if np.isnan(kth):
        return np.argsort(neg, kind="stable")[:k]
    head = np.flatnonzero(neg <= kth)  # k or more (ties), in index order; no NaN
    return head[np.argsort(neg[head], kind="stable")[:k]]


def _unwatched_neighbours(
    state: ServingState, seeds: np.ndarray, watched: np.ndarray, per_seed: int
) -> np.ndarray:
    """The union of each seed's ``per_seed`` nearest live videos, minus ``watched``: sorted
    catalogue rows."""
    _, found = state.catalogue.neighbours(seeds, min(state.num_videos, per_seed))
    found = np.sort(found, axis=None)  # -1 (none found) first
    # Distinct by neighbours in sorted order, watched ones out by a binary search in
    # the sorted history: the same rows as np.unique and np.isin, without their hashing
    # and dispatch (a fifth of a recommendation's CPU at 1M videos).
    keep = np.empty(len(found), dtype=bool)
    keep[:1] = True
    np.not_equal(found[1:], found[:-1], out=keep[1:])
    found = found[keep & (found >= 0)]
    if len(watched) and len(found):
        watched = np.sort(watched)
        at = np.minimum(np.searchsorted(watched, found), len(watched) - 1)
        found = found[watched[at] != found]
    return found
