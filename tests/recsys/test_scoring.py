from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.scoring import (
    HISTORY_FEATURES,
    glmix_global_features,
    history_features,
    history_similarity,
    prefix_similarity,
    prior_history_similarity,
    segment_similarity,
    similarity_by_user,
)


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_history_similarity_matches_eq16_17_loops() -> None:
    c, h = _unit(4, 5, 0), _unit(3, 5, 1)
    mx, av = history_similarity(c, h)
    for i in range(4):
        cos = [
            float(np.dot(c[i], h[j]) / (np.linalg.norm(c[i]) * np.linalg.norm(h[j])))
            for j in range(3)
        ]
        assert abs(mx[i] - max(cos)) < 1e-12 and abs(av[i] - sum(cos) / 3) < 1e-12
    mx, av = history_similarity(c, h[:0])
    assert np.isnan(mx).all() and np.isnan(av).all()


def test_similarity_by_user() -> None:
    emb = _unit(6, 4, 2)
    users = np.array([1, 0, 1, 2])
    videos = np.array([0, 1, 2, 3])
    hist = {0: np.array([4]), 1: np.array([4, 5])}
    mx, av = similarity_by_user(users, videos, hist, emb)
    assert abs(mx[1] - emb[1] @ emb[4]) < 1e-12
    assert abs(av[0] - (emb[0] @ emb[4] + emb[0] @ emb[5]) / 2) < 1e-12
    assert np.isnan(mx[3]) and np.isnan(av[3])  # user 2 has no history


# --------------------------------------------------------------------------- history features


def _prior_history_by_loop(users, videos, times, watched, emb, initial):
    """Eq. 16-17 against each row's history then, by a direct double loop."""
    n = len(users)
    mx, av = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        hist = set(initial.get(int(users[i]), ()))
        for j in range(n):
            if users[j] == users[i] and watched[j] and times[j] < times[i]:
                hist.add(int(videos[j]))
        if hist:
            sims = [float(emb[videos[i]] @ emb[h]) for h in sorted(hist)]
            mx[i], av[i] = max(sims), sum(sims) / len(sims)
    return mx, av


def test_prior_history_similarity_matches_a_loop() -> None:
    rng = np.random.default_rng(4)
    emb = _unit(12, 5, 3)
    n = 60
    users = rng.integers(0, 4, n)
    videos = rng.integers(0, 12, n)  # repeats: a video watched twice counts once (a set)
    times = rng.integers(0, 25, n)  # ties: a row never sees a watch at its own time
    watched = rng.random(n) < 0.5
    initial = {0: np.array([3, 3, 7]), 2: np.array([11])}
    got = prior_history_similarity(users, videos, times, watched, emb, initial, chunk_rows=7)
    want = _prior_history_by_loop(users, videos, times, watched, emb, initial)
    np.testing.assert_allclose(got[0], want[0], atol=1e-12)
    np.testing.assert_allclose(got[1], want[1], atol=1e-12)
    assert np.isnan(got[0]).any()  # some rows had no history yet (user 1 or 3 at first)


def test_prior_history_similarity_edge_cases() -> None:
    emb = _unit(3, 4, 5)
    # One row: nothing before it.
    mx, av = prior_history_similarity(
        np.array([0]), np.array([1]), np.array([5]), np.array([True]), emb
    )
    assert np.isnan(mx[0]) and np.isnan(av[0])
    # Only the initial history: the same as similarity_by_user on it.
    users, videos = np.array([0, 0, 1]), np.array([0, 1, 2])
    hist = {0: np.array([2]), 1: np.array([0, 1])}
    got = prior_history_similarity(
        users, videos, np.zeros(3, np.int64), np.zeros(3, bool), emb, hist
    )
    want = similarity_by_user(users, videos, hist, emb)
    np.testing.assert_allclose(got[0], want[0], atol=1e-12)
    np.testing.assert_allclose(got[1], want[1], atol=1e-12)
    # A watch is seen by the user's later rows only, not by other users'.
    mx, _ = prior_history_similarity(
        np.array([0, 0, 1]),
        np.array([0, 1, 1]),
        np.array([1, 2, 3]),
        np.array([True, False, False]),
        emb,
    )
    assert abs(mx[1] - emb[1] @ emb[0]) < 1e-12 and np.isnan(mx[0]) and np.isnan(mx[2])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_prior_history_similarity_ignores_row_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    emb = _unit(8, 3, seed)
    n = int(rng.integers(1, 30))
    users, videos = rng.integers(0, 3, n), rng.integers(0, 8, n)
    times, watched = rng.integers(0, 10, n), rng.random(n) < 0.6
    perm = rng.permutation(n)
    a = prior_history_similarity(users, videos, times, watched, emb)
    b = prior_history_similarity(users[perm], videos[perm], times[perm], watched[perm], emb)
    np.testing.assert_allclose(b[0], a[0][perm], atol=1e-12)
    np.testing.assert_allclose(b[1], a[1][perm], atol=1e-12)


def test_history_features_and_names() -> None:
    g = history_features(np.array([0.5, np.nan]), np.array([0.2, np.nan]))
    np.testing.assert_array_equal(g, [[0.5, 0.2, 1.0], [0.0, 0.0, 0.0]])
    assert glmix_global_features([], np.zeros(2), np.zeros(2)) is None
    np.testing.assert_array_equal(
        glmix_global_features(list(HISTORY_FEATURES), np.array([0.5]), np.array([0.2])),
        [[0.5, 0.2, 1.0]],
    )
    with pytest.raises(ValueError, match="not known"):
        glmix_global_features(["popularity"], np.zeros(1), np.zeros(1))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), chunk=st.sampled_from([1, 3, 50, 1 << 16]))
def test_segment_similarity_is_each_rows_own_history_similarity(seed: int, chunk: int) -> None:
    """Each row against its own segment, as history_similarity would give it one at a
    time; the same bits in any chunking and alone."""
    rng = np.random.default_rng(seed)
    emb = _unit(30, 6, seed).astype(np.float32)
    counts = rng.integers(0, 9, size=12)
    rows = rng.integers(0, 30, size=12)
    flat = rng.integers(0, 30, size=int(counts.sum()))
    mx, av = segment_similarity(lambda r: emb[r], rows, flat, counts, chunk)
    ends = np.cumsum(counts)
    for i in range(12):
        seg = flat[ends[i] - counts[i] : ends[i]]
        want = history_similarity(emb[rows[i]][None].astype(float), emb[seg].astype(float))
        np.testing.assert_allclose([mx[i], av[i]], [want[0][0], want[1][0]], atol=1e-12)
        one = segment_similarity(lambda r: emb[r], rows[i : i + 1], seg, counts[i : i + 1])
        assert np.array_equal(np.r_[one[0], one[1]], [mx[i], av[i]], equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.sampled_from([3, 6, 32, 33]))
def test_prefix_similarity_gives_segment_similaritys_bits(seed: int, dim: int) -> None:
    """One user's rows against prefixes of one history: bit for bit what the same
    segments give through segment_similarity (the history copied out per row)."""
    rng = np.random.default_rng(seed)
    emb = _unit(40, dim, seed).astype(np.float32)
    history = rng.integers(0, 40, size=int(rng.integers(0, 300)))
    m = int(rng.integers(1, 9))
    prefix = rng.integers(0, len(history) + 1, size=m)
    rows = rng.integers(0, 40, size=m)
    got = prefix_similarity(lambda r: emb[r], rows, history, prefix)
    flat = np.concatenate([history[:n] for n in prefix]).astype(np.int64)
    want = segment_similarity(lambda r: emb[r], rows, flat, prefix)
    assert np.array_equal(got[0], want[0], equal_nan=True)
    assert np.array_equal(got[1], want[1], equal_nan=True)


def test_prefix_similarity_bits_hold_for_long_histories() -> None:
    rng = np.random.default_rng(7)
    emb = _unit(500, 32, 7).astype(np.float32)
    history = rng.integers(0, 500, size=20_000)
    prefix, rows = np.array([20_000, 9_000, 1, 0]), np.array([3, 4, 5, 6])
    got = prefix_similarity(lambda r: emb[r], rows, history, prefix)
    flat = np.concatenate([history[:n] for n in prefix]).astype(np.int64)
    want = segment_similarity(lambda r: emb[r], rows, flat, prefix)
    assert np.array_equal(np.r_[got[0], got[1]], np.r_[want[0], want[1]], equal_nan=True)
