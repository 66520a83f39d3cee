"""Similarity of candidates to a user's watch history (Eq. 16-17)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsys.side_features import is_side_name


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


def segment_similarity(
    vectors_of: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    history_rows: np.ndarray,
    counts: np.ndarray,
    chunk_pairs: int = 1 << 16,
) -> tuple[np.ndarray, np.ndarray]:
    """(max, avg) of Eq. 17 / Eq. 16 for N rows each against its own history: row i
    (``rows[i]``) against the next ``counts[i]`` entries of ``history_rows`` (catalogue
    rows; ``vectors_of`` looks vectors up). NaN where a count is 0.

    Each similarity is one row-wise float64 product and each average a sum over the row's
    own segment, so a row's numbers do not depend on the other rows computed with it (a
    batch of impressions gives the bits one impression at a time would). Memory: at most
    ``chunk_pairs`` (row, history) pairs at a time."""
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    max_s, avg_s = np.full(n, np.nan), np.full(n, np.nan)
    ends = np.cumsum(counts)
    starts = ends - counts
    i = 0
    while i < n:
        # rows i..j-1: at most chunk_pairs pairs (always at least one row)
        j = max(int(np.searchsorted(ends, starts[i] + chunk_pairs, side="right")), i + 1)
        part = np.flatnonzero(counts[i:j]) + i
        if len(part):
            lo, hi = int(starts[i]), int(ends[j - 1])
            cand = np.repeat(np.asarray(rows, dtype=np.int64)[part], counts[part])
            a = np.asarray(vectors_of(cand), dtype=np.float64)
            b = np.asarray(vectors_of(history_rows[lo:hi]), dtype=np.float64)
            sims = np.einsum("ij,ij->i", a, b)
            seg = np.concatenate([[0], np.cumsum(counts[part])[:-1]])
            max_s[part] = np.maximum.reduceat(sims, seg)
            avg_s[part] = np.add.reduceat(sims, seg) / counts[part]
        i = j
    return max_s, avg_s


def prefix_similarity(
    vectors_of: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    history: np.ndarray,
    prefix: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(max, avg) of Eq. 17 / Eq. 16 for M rows of one user: row j (``rows[j]``) against
    the first ``prefix[j]`` entries of ``history`` (catalogue rows). NaN where a prefix
    is 0.

    The bits ``segment_similarity`` gives for the same segments (the same row-wise float64
    products, the same segment sums), with the history's vectors gathered once for all
    M rows instead of once per row: a user with a long history and many impressions in a
    batch costs one gather of it."""
    prefix = np.asarray(prefix, dtype=np.int64)
    m = len(prefix)
    max_s, avg_s = np.full(m, np.nan), np.full(m, np.nan)
    if m == 0 or not prefix.max():
        return max_s, avg_s
    hv = np.asarray(vectors_of(np.asarray(history[: prefix.max()], dtype=np.int64)), np.float64)
    cand = np.asarray(vectors_of(np.asarray(rows, dtype=np.int64)), dtype=np.float64)
    first = np.zeros(1, dtype=np.int64)
    for j in np.flatnonzero(prefix).tolist():
        n = int(prefix[j])
        sims = np.einsum("ij,ij->i", np.repeat(cand[j : j + 1], n, axis=0), hv[:n])
        max_s[j] = sims.max()
        avg_s[j] = np.add.reduceat(sims, first)[0] / n
    return max_s, avg_s


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


# --------------------------------------------------------------------------- GLMix features

#: Global GLMix features from the watch history: Eq. 17 and Eq. 16 against the user's
#: history, and whether there is one (both similarities are 0 when there is not).
HISTORY_FEATURES = ("max_similarity", "avg_similarity", "has_history")


def history_features(max_s: np.ndarray, avg_s: np.ndarray) -> np.ndarray:
    """(N, 3) ``HISTORY_FEATURES`` from Eq. 17 / Eq. 16 scores, NaN where no history."""
    mx = np.asarray(max_s, dtype=np.float64)
    av = np.asarray(avg_s, dtype=np.float64)
    has = np.isfinite(mx)
    if has.all():  # every row has a history (one user's candidates): the columns as given
        out = np.empty((len(mx), 3))
        out[:, 0], out[:, 1], out[:, 2] = mx, av, 1.0
        return out
    return np.stack([np.where(has, mx, 0.0), np.where(has, av, 0.0), has.astype(np.float64)], 1)


def prior_history_similarity(
    user_of_row: np.ndarray,
    video_of_row: np.ndarray,
    times: np.ndarray,
    watched: np.ndarray,
    embeddings: np.ndarray,
    initial_history: dict[int, np.ndarray] | None = None,
    chunk_rows: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 16-17 for each row against the user's history *as it was when the row
    happened*: ``initial_history[u]`` (embedding rows watched before the log starts) plus
    the distinct videos of the user's watched rows strictly earlier in ``times``.

    This is what a service that extends histories as watches arrive computes, so a model
    trained on these features sees at training time what it sees when serving. Rows with
    an empty history are NaN. user_of_row, video_of_row, times (int), watched (bool): (N,).

    Cost: rows x distinct watched videos per user (memory bounded by blocks). Exact, so
    quadratic for a user with a huge log: 200k rows with 52k watches take ~40 s here.
    """
    n = len(user_of_row)
    max_s = np.full(n, np.nan)
    avg_s = np.full(n, np.nan)
    users = np.asarray(user_of_row)
    times = np.asarray(times, dtype=np.int64)
    watched = np.asarray(watched, dtype=bool)
    init = initial_history or {}
    order = np.lexsort((times, users))
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for group in np.split(order, bounds):
        if len(group) == 0:
            continue
        before = np.asarray(init.get(int(users[group[0]]), ()), dtype=np.int64)
        # The history as (video row, time it joined): the initial rows at -inf, then each
        # video at its first watch in the log.
        w = group[watched[group]]
        vids, first = np.unique(video_of_row[w], return_index=True)
        fresh = ~np.isin(vids, before)
        h_rows = np.concatenate([np.unique(before), vids[fresh]])
        h_time = np.concatenate(
            [np.full(len(np.unique(before)), np.iinfo(np.int64).min), times[w][first][fresh]]
        )
        if len(h_rows) == 0:
            continue
        h = embeddings[h_rows]
        # (rows, H) blocks of at most ~4M entries: a user with a huge history (a bot, a
        # shared account) must not need gigabytes.
        step = max(1, min(chunk_rows, (1 << 22) // len(h_rows)))
        for start in range(0, len(group), step):
            rows = group[start : start + step]
            visible = h_time[None, :] < times[rows][:, None]  # (r, H)
            count = visible.sum(1)
            sims = embeddings[video_of_row[rows]] @ h.T
            has = count > 0
            mx = np.where(visible, sims, -np.inf).max(1)
            av = np.where(visible, sims, 0.0).sum(1) / np.maximum(count, 1)
            max_s[rows[has]] = mx[has]
            avg_s[rows[has]] = av[has]
    return max_s, avg_s


def glmix_global_features(
    global_names: list[str] | tuple[str, ...],
    max_s: np.ndarray,
    avg_s: np.ndarray,
    side: np.ndarray | None = None,
) -> np.ndarray | None:
    """The global feature columns a GLMix model with these ``global_names`` scores with,
    given each row's Eq. 17 / Eq. 16 scores (NaN without history) and, for a model with
    side features (``recsys.side_features``: names ``video.*`` / ``user.*`` after the
    history's), their (N, X) values; None for a model without global features."""
    names = tuple(global_names)
    if not names:
        return None
    hist = names[: len(HISTORY_FEATURES)] == HISTORY_FEATURES
    rest = names[len(HISTORY_FEATURES) :] if hist else names
    unknown = [n for n in rest if not is_side_name(n)]
    if unknown:
        raise ValueError(f"GLMix global features {unknown} are not known to this version")
    parts = [history_features(max_s, avg_s)] if hist else []
    if rest:
        if side is None or side.ndim != 2 or side.shape[1] != len(rest):
            raise ValueError(f"this GLMix model needs its {len(rest)} side features")
        parts.append(np.asarray(side, dtype=np.float64))
    return parts[0] if len(parts) == 1 else np.hstack(parts)
