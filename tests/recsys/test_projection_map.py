"""The explorer's t-SNE map: neighbours kept better than by PCA, every video placed."""

from __future__ import annotations

import numpy as np

from recsys.projection import fit_map, map_sample, project


def _topics(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 32))
    label = rng.integers(0, 8, n)
    x = centres[label] + 0.7 * rng.normal(size=(n, 32))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), label


def test_tsne_keeps_neighbours_better_than_pca_and_places_new_videos_among_them() -> None:
    x, label = _topics(600)
    m = fit_map(x, anchors=400)
    assert m["method"] == "tsne" and m["trustworthiness"]["tsne"] > m["trustworthiness"]["pca"]
    rows = map_sample(len(x), 400)
    # Anchors sit exactly where t-SNE put them.
    np.testing.assert_allclose(project(x[rows], m), np.asarray(m["anchor_xy"]), atol=1e-9)
    # A video left out of the sample lands nearer its own topic's anchors than another's.
    others = np.setdiff1d(np.arange(len(x)), rows)
    xy = project(x[others], m)
    anchor_xy, anchor_label = np.asarray(m["anchor_xy"]), label[rows]
    hits = 0
    for p, lab in zip(xy, label[others], strict=True):
        d = np.linalg.norm(anchor_xy - p, axis=1)
        own = d[anchor_label == lab].mean()
        hits += own < min(d[anchor_label == o].mean() for o in set(anchor_label) - {lab})
    assert hits / len(others) > 0.9


def test_tiny_catalogues_fall_back_to_pca() -> None:
    x, _ = _topics(6)
    m = fit_map(x)
    assert m["method"] == "pca" and project(x, m).shape == (6, 2)
