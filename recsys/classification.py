"""Classification metrics as the YouTube-8M starter code computes them, and significance tests."""

from __future__ import annotations

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar


def top_k(predictions: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Per video, the indices and scores of the k highest predictions (ties: lower index first)."""
    p = np.asarray(predictions, dtype=np.float64)
    k = min(k, p.shape[1])
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(p, idx, axis=1)


def average_precision(scores: np.ndarray, positives: np.ndarray, num_positives: int) -> float:
    """AP of a ranked list: sum over positives at rank i of precision@i, divided by
    ``num_positives`` (all positives, including those never ranked)."""
    if num_positives <= 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(positives, dtype=bool)[order]
    ranks = np.arange(1, len(hits) + 1)
    return float((np.cumsum(hits)[hits] / ranks[hits]).sum() / num_positives)


def gap_at_k(predictions: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """Global average precision (Eq. 19): the top-k predictions of every video pooled into
    one ranked list; the denominator counts every positive label of every video."""
    y = np.asarray(labels).astype(bool)
    idx, sc = top_k(predictions, k)
    pos = np.take_along_axis(y, idx, axis=1)
    return average_precision(sc.reshape(-1), pos.reshape(-1), int(y.sum()))


def gap_from_topk(scores: np.ndarray, hits: np.ndarray, num_positives: np.ndarray) -> float:
    """GAP from stored per-video top-k (scores, hit flags) and positive counts (for resampling)."""
    return average_precision(scores.reshape(-1), hits.reshape(-1), int(num_positives.sum()))


def hit_at_1(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per video: is the top prediction a true label? (bool array)"""
    top = np.argmax(np.asarray(predictions), axis=1)
    return np.asarray(labels).astype(bool)[np.arange(len(top)), top]


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[np.ndarray, float]:
    """McNemar's test on paired correctness; exact binomial when discordant pairs < 25."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    exact = (table[0, 1] + table[1, 0]) < 25
    res = mcnemar(table, exact=exact, correction=True)
    return table, float(res.pvalue)
