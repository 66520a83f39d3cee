from __future__ import annotations

import numpy as np
import pytest

from recsys.classification import gap_at_k, gap_from_topk, hit_at_1, mcnemar_test, top_k


def _gap_bruteforce(pred, labels, k):
    """Straight from the definition: pool top-k per video, sort, sum precision at each hit."""
    pooled = []
    for v in range(len(pred)):
        order = sorted(range(pred.shape[1]), key=lambda c: (-pred[v, c], c))[:k]
        pooled += [(pred[v, c], bool(labels[v, c]), v, rank) for rank, c in enumerate(order)]
    pooled.sort(key=lambda t: -t[0])  # stable: ties keep video/rank order
    total = labels.sum()
    hits, ap = 0, 0.0
    for i, (_, pos, _, _) in enumerate(pooled):
        if pos:
            hits += 1
            ap += hits / (i + 1)
    return ap / total


def test_gap_hand_worked() -> None:
    # Video 0: labels {0}, video 1: labels {1, 2}. Top-2 per video pooled:
    # 0.9 (v0,c0,+), 0.8 (v1,c1,+), 0.3 (v1,c0,-), 0.2 (v0,c1,-) ; c2 of v1 never ranked.
    pred = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.05]])
    labels = np.array([[1, 0, 0], [0, 1, 1]])
    # precision at the two hits: 1/1, 2/2; three positives in total.
    assert gap_at_k(pred, labels, k=2) == pytest.approx((1 + 1) / 3)
    assert gap_at_k(pred, labels, k=3) == pytest.approx((1 + 1 + 3 / 6) / 3)
    assert hit_at_1(pred, labels).tolist() == [True, True]


@pytest.mark.parametrize("seed", range(4))
def test_gap_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.random((30, 25)).round(2)  # rounding: ties
    labels = (rng.random((30, 25)) < 0.1).astype(int)
    labels[0, 3] = 1
    assert gap_at_k(pred, labels, 20) == pytest.approx(_gap_bruteforce(pred, labels, 20), abs=1e-12)
    idx, sc = top_k(pred, 20)
    hits = np.take_along_axis(labels.astype(bool), idx, axis=1)
    assert gap_from_topk(sc, hits, labels.sum(1)) == pytest.approx(gap_at_k(pred, labels, 20))


def test_mcnemar() -> None:
    a = np.array([True] * 50 + [False] * 50)
    b = np.array([True] * 30 + [False] * 20 + [True] * 5 + [False] * 45)
    table, p = mcnemar_test(a, b)
    assert table.tolist() == [[30, 20], [5, 45]]
    assert p < 0.01
    _, p_same = mcnemar_test(a, a)
    assert p_same == 1.0
