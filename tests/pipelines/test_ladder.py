"""The baseline ladder's representations, reduced by PCA on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pipelines.ladder as ladder
from pipelines.frame_cache import open_frame_store
from pipelines.impressions import impressions_connection, load_rec_rows, log_span
from recsys.splits import default_test_start


def test_a_sampled_pca_matches_the_exact_one_when_it_sees_every_video(
    small_world_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above EXACT_PCA_VALUES the ladder fits its PCA on a sample of videos and projects
    chunk by chunk; with the sample holding every video it finds the same directions, so
    the same validation losses."""
    store = open_frame_store(small_world_dir)
    first, last = log_span(impressions_connection(small_world_dir))
    rows = load_rec_rows(small_world_dir, store.video_ids, default_test_start(first, last), 10.0)
    exact_v, exact = ladder.reduce_store_features(rows, store, "vlad_kmeans", 16, num_words=8)
    monkeypatch.setattr(ladder, "EXACT_PCA_VALUES", 10)
    sampled_v, sampled = ladder.reduce_store_features(rows, store, "vlad_kmeans", 16, num_words=8)
    assert sampled["pca_fitted_on_videos"] == len(store) and "pca_fitted_on_videos" not in exact
    assert sampled["pca_dim"] == exact["pca_dim"]
    for d, loss in exact["pca_validation_log_loss"].items():
        assert sampled["pca_validation_log_loss"][d] == pytest.approx(loss, rel=1e-4)
    np.testing.assert_allclose(np.abs(sampled_v), np.abs(exact_v), atol=1e-4)
