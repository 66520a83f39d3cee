"""Evaluation metrics that work on arrays."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present (instead of raising)."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def pair_auc(
    embeddings: np.ndarray,
    positive_pairs: np.ndarray,
    num_random: int | None = None,
    seed: int = 0,
) -> float:
    """AUC of cosine similarity separating co-watched pairs from random pairs.

    ``embeddings`` (N, E) are L2-normalised; ``positive_pairs`` (P, 2) are row indices.
    Random pairs (two different rows, uniform) number ``num_random`` (default P).
    """
    pos = np.asarray(positive_pairs, dtype=np.int64).reshape(-1, 2)
    if len(pos) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = len(embeddings)
    m = num_random or len(pos)
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n  # never the same row
    pos_s = (embeddings[pos[:, 0]] * embeddings[pos[:, 1]]).sum(1)
    neg_s = (embeddings[a] * embeddings[b]).sum(1)
    return auc(np.r_[np.ones(len(pos_s)), np.zeros(len(neg_s))], np.r_[pos_s, neg_s])
