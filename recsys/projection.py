"""A 2-D map of the embedding space, fitted once at pipeline time and stored in the
artifact (``projection.json``), so the service places every video, cold-start uploads
included, on the same map. Array functions only.

* ``fit_map`` (the default): t-SNE of an even sample of the catalogue (the videos the
  explorer draws), which keeps neighbours together so topics show as regions; any other
  video is placed among its nearest sampled videos. Its trustworthiness (how many of a
  point's map neighbours are true neighbours) is stored beside the PCA's.
* ``fit_projection``: PCA, a linear map of every video (older artifacts; tiny catalogues).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: rows used to fit the projection (a deterministic sample of larger catalogues)
FIT_ROWS = 50_000
#: videos t-SNE lays out (the explorer draws at most this many catalogue videos)
MAP_ANCHORS = 4000
#: a video that is not an anchor sits at the weighted mean of this many nearest anchors
PLACE_NEIGHBOURS = 5


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


def fit_map(embeddings: np.ndarray, seed: int = 0, anchors: int = MAP_ANCHORS) -> dict[str, Any]:
    """t-SNE (scikit-learn, Barnes-Hut, PCA start) of ``map_sample``'s videos, with the
    PCA beside it; PCA alone below 10 videos, where t-SNE has no neighbourhoods."""
    from sklearn.manifold import TSNE, trustworthiness

    x = np.asarray(embeddings, dtype=np.float32)
    pca = fit_projection(x, seed)
    rows = map_sample(len(x), anchors)
    if len(rows) < 10:
        return pca
    a = x[rows]
    perplexity = float(min(30.0, (len(a) - 1) / 3))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(a)
    xy = (xy - xy.mean(0)) / max(float(xy.std()), 1e-12)
    k = min(10, (len(a) - 1) // 2)
    return {
        "method": "tsne",
        "perplexity": perplexity,
        "anchor_rows": rows.tolist(),
        "anchors": np.round(a, 6).tolist(),
        "anchor_xy": np.round(xy, 5).tolist(),
        "trustworthiness": {
            "tsne": float(trustworthiness(a, xy, n_neighbors=k)),
            "pca": float(trustworthiness(a, project(a, pca), n_neighbors=k)),
            "neighbours": k,
        },
        "explained_variance_ratio": pca["explained_variance_ratio"],
        "pca": pca,
    }


def _place(embeddings: np.ndarray, projection: dict[str, Any]) -> np.ndarray:
    """Map positions from a t-SNE map's anchors: an anchor's own position, else the mean
    of its ``PLACE_NEIGHBOURS`` nearest anchors (cosine) weighted by similarity."""
    anchors = np.asarray(projection["anchors"], dtype=np.float32)
    anchors = anchors / np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
    xy = np.asarray(projection["anchor_xy"], dtype=np.float64)
    x = np.asarray(embeddings, dtype=np.float32).reshape(-1, anchors.shape[1])
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(PLACE_NEIGHBOURS, len(anchors))
    out = np.empty((len(x), 2))
    for s0 in range(0, len(x), 512):  # (512, A) similarities at a time
        sims = x[s0 : s0 + 512] @ anchors.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, part, axis=1).astype(np.float64)
        order = np.argsort(-s, axis=1, kind="stable")
        near, s = np.take_along_axis(part, order, axis=1), np.take_along_axis(s, order, axis=1)
        w = np.exp((s - s[:, :1]) / 0.02)  # an exact match (an anchor itself) takes it all
        chunk = (w[:, :, None] * xy[near]).sum(1) / w.sum(1, keepdims=True)
        same = s[:, 0] > 1 - 1e-5
        chunk[same] = xy[near[same, 0]]
        out[s0 : s0 + 512] = chunk
    return out


def project(embeddings: np.ndarray, projection: dict[str, Any]) -> np.ndarray:
    """(N, 2) map coordinates of (N, E) embeddings."""
    if projection.get("method") == "tsne":
        return _place(embeddings, projection)
    mean = np.asarray(projection["mean"], dtype=np.float64)
    comps = np.asarray(projection["components"], dtype=np.float64)
    return (np.asarray(embeddings, dtype=np.float64) - mean) @ comps.T


def map_sample(n: int, limit: int) -> np.ndarray:
    """Row indices of at most ``limit`` of ``n`` videos, evenly spread (deterministic)."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
