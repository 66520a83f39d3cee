"""The baseline ladder's representations, reduced by PCA on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pipelines.choice.ladder as ladder
import pipelines.choice.validation as validation
from pipelines.choice.validation import MIN_HELDOUT_ROWS
from pipelines.data.frame_cache import open_frame_store
from pipelines.data.impressions import impressions_connection, load_rec_rows, log_span
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
    exact_v, exact, _ = ladder.fit_rung(rows, store, "vlad_kmeans", 16, num_words=8)
    monkeypatch.setattr(ladder, "EXACT_PCA_VALUES", 10)
    sampled_v, sampled, _ = ladder.fit_rung(rows, store, "vlad_kmeans", 16, num_words=8)
    assert sampled["pca_fitted_on_videos"] == len(store) and "pca_fitted_on_videos" not in exact
    assert sampled["pca_dim"] == exact["pca_dim"]
    for d, loss in exact["pca_validation_log_loss"].items():
        assert sampled["pca_validation_log_loss"][d] == pytest.approx(loss, rel=1e-4)
    np.testing.assert_allclose(np.abs(sampled_v), np.abs(exact_v), atol=1e-4)


@pytest.mark.parametrize("name", ["avg_frames", "vlad_kmeans"])
def test_the_pca_sample_rows_are_the_catalogue_rows_of_those_videos(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampled videos' rows, read a few videos at a time, equal the rows the whole
    catalogue gives those videos."""
    from embeddings.rungs import rung
    from recsys.baselines import baseline_features, kmeans_codebook
    from recsys.frames import FrameStore

    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 9, 30)
    frames = rng.normal(size=(int(lengths.sum()), 4)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    store = FrameStore([f"v{i}" for i in range(30)], frames, offsets)
    codebook = None if name == "avg_frames" else kmeans_codebook(frames, 5, seed=0)
    sample = np.array([0, 3, 4, 11, 12, 13, 20, 29])
    monkeypatch.setattr(ladder, "_SAMPLE_BLOCK", 3)
    got = ladder._sample_rows(name, store, codebook, sample, rung(name).raw_dim(4, 5))
    whole = baseline_features(name, frames, offsets, num_words=5, seed=0)
    np.testing.assert_allclose(got, whole[sample], atol=1e-6)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("name", ["avg_frames", "bow_tfidf", "vlad_kmeans"])
def test_a_rungs_embedder_gives_the_rows_the_ladder_scored(
    name: str, exact: bool, small_world_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The servable embedder of a rung (codebook, idf, PCA of the chosen size) maps each
    video's frames to the row the ladder scored, whole catalogue or one upload at a
    time, and reads back from its files the same."""
    from recsys.embedders import ClassicalEmbedder

    store = open_frame_store(small_world_dir)
    first, last = log_span(impressions_connection(small_world_dir))
    rows = load_rec_rows(small_world_dir, store.video_ids, default_test_start(first, last), 10.0)
    if not exact:
        monkeypatch.setattr(ladder, "EXACT_PCA_VALUES", 10)
    vectors, info, emb = ladder.fit_rung(rows, store, name, 16, num_words=8)
    assert emb.embedding_dim == info["pca_dim"] == vectors.shape[1]
    np.testing.assert_allclose(emb.embed_store(store), vectors, atol=1e-4)
    for i in (0, 7):
        frames = store.frames[store.offsets[i] : store.offsets[i + 1]]
        np.testing.assert_allclose(emb.embed(frames), vectors[i], atol=1e-4)
    for fname, content in emb.to_files().items():
        (tmp_path / fname).write_bytes(content)
    back = ClassicalEmbedder.load(tmp_path)
    np.testing.assert_array_equal(back.embed_store(store), emb.embed_store(store))


def test_the_validation_criterion_weighs_the_videos_training_held_out(
    small_world_dir: Path,
) -> None:
    """With enough validation rows on held-out videos, the criterion is the mean of the
    log-loss on all validation rows and on theirs (one GLMix fit); with too few, the
    first alone."""
    from recsys.glmix.model import GLMixConfig

    store = open_frame_store(small_world_dir)
    first, last = log_span(impressions_connection(small_world_dir))
    rows = load_rec_rows(small_world_dir, store.video_ids, default_test_start(first, last), 10.0)
    vectors, _, _ = ladder.fit_rung(rows, store, "avg_frames", 8)
    half = np.arange(len(store)) % 2 == 0
    s = ladder.validation_summary(rows, vectors, half)
    assert s["heldout_videos"] is not None
    assert s["criterion"] == pytest.approx((s["all"] + s["heldout_videos"]) / 2)
    assert s["all"] == pytest.approx(ladder.validation_log_loss(rows, vectors, GLMixConfig()))
    on = half[rows.train_videos[rows.validation_mask]]
    assert MIN_HELDOUT_ROWS <= on.sum() < len(on)
    few = np.zeros(len(store), dtype=bool)
    few[rows.train_videos[rows.validation_mask][0]] = True
    t = ladder.validation_summary(rows, vectors, few)
    assert t["heldout_videos"] is None and t["criterion"] == pytest.approx(s["all"])


def test_a_rung_is_scored_from_its_size_choice_fit_not_a_second_one(
    small_world_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """iter_rungs fits GLMix once per PCA size tried; the chosen size's validation scores
    are those of its fit (the same numbers a separate fit gives)."""
    store = open_frame_store(small_world_dir)
    first, last = log_span(impressions_connection(small_world_dir))
    rows = load_rec_rows(small_world_dir, store.video_ids, default_test_start(first, last), 10.0)
    calls: list[int] = []
    real = ladder.validation_predictions

    def counted(r, vectors, cfg):
        calls.append(vectors.shape[1])
        return real(r, vectors, cfg)

    monkeypatch.setattr(ladder, "validation_predictions", counted)
    monkeypatch.setattr(validation, "validation_predictions", counted)  # score_candidate's
    (_, vectors, info, _, scores), *_ = ladder.iter_rungs(rows, store, 16, ("avg_frames",))
    assert sorted(calls) == sorted(int(d) for d in info["pca_validation_log_loss"])
    monkeypatch.undo()
    fresh = ladder.score_candidate(rows, vectors, ladder.ValidationSet.of(rows, None))
    np.testing.assert_array_equal(scores.losses, fresh.losses)
    assert info["validation"]["all"] == pytest.approx(
        info["pca_validation_log_loss"][info["pca_dim"]]
    )
