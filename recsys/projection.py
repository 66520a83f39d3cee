"""A 2-D map of the embedding space: PCA, fitted once, applied to any video.

Fitted at pipeline time on the catalogue's embeddings and stored in the artifact
(``projection.json``), so the service places every video, cold-start uploads included,
with the same map. Array functions only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: rows used to fit the projection (a deterministic sample of larger catalogues)
FIT_ROWS = 50_000


def fit_projection(embeddings: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """{"mean": (E,), "components": (2, E), "explained_variance_ratio": (2,)} by PCA."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("a projection needs at least two embeddings")
    if len(x) > FIT_ROWS:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), FIT_ROWS, replace=False))]
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:2]
    if len(comps) < 2:  # one-dimensional embeddings: the second axis is zero
        comps = np.vstack([comps, np.zeros_like(comps)])
    # A sign convention, so refits on the same data give the same picture.
    comps *= np.where(comps[np.arange(2), np.abs(comps).argmax(1)] < 0, -1.0, 1.0)[:, None]
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return {
        "method": "pca",
        "mean": mean.tolist(),
        "components": comps.tolist(),
        "explained_variance_ratio": [float(r) for r in ratio] + [0.0] * (2 - len(ratio)),
    }


def project(embeddings: np.ndarray, projection: dict[str, Any]) -> np.ndarray:
    """(N, 2) map coordinates of (N, E) embeddings."""
    mean = np.asarray(projection["mean"], dtype=np.float64)
    comps = np.asarray(projection["components"], dtype=np.float64)
    return (np.asarray(embeddings, dtype=np.float64) - mean) @ comps.T


def map_sample(n: int, limit: int) -> np.ndarray:
    """Row indices of at most ``limit`` of ``n`` videos, evenly spread (deterministic)."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
