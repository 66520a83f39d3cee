"""Similarity of candidates to a user's watch history (Eq. 16-17)."""

from __future__ import annotations

import numpy as np


def history_similarity(
    candidates: np.ndarray, history: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(max, avg) cosine similarity of each candidate (M, E) to the history (H, E).

    Embeddings are L2-normalised, so the inner product is the cosine. An empty
    history gives NaN (no similarity is defined), never a made-up number.
    """
    if len(history) == 0:
        nan = np.full(len(candidates), np.nan)
        return nan, nan.copy()
    sims = candidates @ history.T  # (M, H)
    return sims.max(axis=1), sims.mean(axis=1)


def similarity_by_user(
    user_of_row: np.ndarray,
    video_of_row: np.ndarray,
    history_rows: dict[int, np.ndarray],
    embeddings: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 16-17 for many (user, candidate) rows; rows of users without history are NaN.

    ``user_of_row`` / ``video_of_row`` index users and ``embeddings`` rows;
    ``history_rows[u]`` holds the embedding rows of user u's watched videos.
    """
    n = len(user_of_row)
    max_s = np.full(n, np.nan)
    avg_s = np.full(n, np.nan)
    order = np.argsort(user_of_row, kind="stable")
    bounds = np.flatnonzero(np.diff(user_of_row[order])) + 1
    for group in np.split(order, bounds):
        if len(group) == 0:
            continue
        hist = history_rows.get(int(user_of_row[group[0]]))
        if hist is None or len(hist) == 0:
            continue
        mx, av = history_similarity(embeddings[video_of_row[group]], embeddings[hist])
        max_s[group] = mx
        avg_s[group] = av
    return max_s, avg_s
