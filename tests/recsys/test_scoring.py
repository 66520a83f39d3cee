from __future__ import annotations

import numpy as np

from recsys.scoring import history_similarity, similarity_by_user


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
