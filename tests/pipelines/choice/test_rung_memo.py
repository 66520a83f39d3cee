"""A rung fitted twice in one job reads its frames once, and gives the same bits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pipelines.choice.ladder as ladder
from pipelines.choice.rung_memo import current, reusing_rungs
from pipelines.data.frame_cache import open_frame_store
from pipelines.data.impressions import impressions_connection, load_rec_rows, log_span
from recsys.frames import FrameStore
from recsys.glmix.model import GLMixConfig
from recsys.splits import default_test_start


def _rows(world: Path, store: FrameStore):  # type: ignore[no-untyped-def]
    first, last = log_span(impressions_connection(world))
    return load_rec_rows(world, store.video_ids, default_test_start(first, last), 10.0)


def _frame_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every k-means fit and every pass over a store's frames for raw rows."""
    calls: list[str] = []
    kmeans, chunks = ladder.kmeans_codebook, ladder.store_chunks

    def counted_kmeans(*a, **k):  # type: ignore[no-untyped-def]
        calls.append("kmeans")
        return kmeans(*a, **k)

    def counted_chunks(*a, **k):  # type: ignore[no-untyped-def]
        calls.append("frames")
        return chunks(*a, **k)

    monkeypatch.setattr(ladder, "kmeans_codebook", counted_kmeans)
    monkeypatch.setattr(ladder, "store_chunks", counted_chunks)
    return calls


@pytest.mark.parametrize("exact", [True, False])
def test_the_second_fit_of_the_ladder_reads_no_frames_and_gives_the_same_bits(
    small_world_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exact: bool
) -> None:
    if not exact:  # the sampled PCA, projected chunk by chunk
        monkeypatch.setattr(ladder, "EXACT_PCA_VALUES", 10)
    store = open_frame_store(small_world_dir)
    rows = _rows(small_world_dir, store)
    names = ("avg_frames", "bow_tfidf", "vlad_kmeans")

    def fit(base: GLMixConfig | None = None) -> dict[str, tuple]:  # type: ignore[type-arg]
        # a fresh store object each time, as each stage opens its own
        again = open_frame_store(small_world_dir)
        return {
            n: (v, info, emb)
            for n, v, info, emb, _ in ladder.iter_rungs(rows, again, 16, names, base, 8, 0)
        }

    plain = fit()
    calls = _frame_passes(monkeypatch)
    with reusing_rungs(tmp_path) as memo:
        first = fit()
        passes_first = len(calls)
        second = fit()
        assert len(calls) == passes_first  # nothing read the frames again
        with_effects = fit(GLMixConfig(video_effects=True))
        assert memo.hits > 0
        where = memo.directory
        assert where.exists()
    assert not where.exists() and current() is None  # removed when the block ends
    assert passes_first >= len(names)  # the first fit did read them
    for n in names:
        for got in (first[n], second[n]):
            np.testing.assert_array_equal(got[0], plain[n][0])
            assert got[1] == plain[n][1]
            np.testing.assert_array_equal(got[2].pca.components, plain[n][2].pca.components)
            np.testing.assert_array_equal(got[2].pca.mean, plain[n][2].pca.mean)
            for a, b in ((got[2].codebook, plain[n][2].codebook), (got[2].idf, plain[n][2].idf)):
                assert (a is None) == (b is None)
                if a is not None:
                    np.testing.assert_array_equal(a, b)
        # another GLMix chooses its size again over the same candidates
        assert (
            with_effects[n][1]["pca_validation_log_loss"].keys()
            == plain[n][1]["pca_validation_log_loss"].keys()
        )


def test_a_different_store_or_seed_is_fitted_afresh(tmp_path: Path) -> None:
    """The key holds what a reduction depends on: other frames under the same ids, or
    another seed, are never served an earlier fit."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(2, 6, 24)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = [f"v{i}" for i in range(24)]
    frames = rng.normal(size=(int(lengths.sum()), 6)).astype(np.float32)
    a = FrameStore(ids, frames, offsets)
    b = FrameStore(ids, frames + 1.0, offsets)
    with reusing_rungs(tmp_path) as memo:
        ra = ladder.rung_reduction(a, "avg_frames", 4)
        rb = ladder.rung_reduction(b, "avg_frames", 4)
        assert not np.array_equal(ra.pca.mean, rb.pca.mean)
        np.testing.assert_allclose(rb.pca.mean, ra.pca.mean + 1.0, atol=1e-5)
        w0 = ladder.rung_words(a, 3, seed=0)
        w1 = ladder.rung_words(a, 3, seed=1)
        assert not np.array_equal(w0, w1)
        np.testing.assert_array_equal(ladder.rung_words(a, 3, seed=0), w0)
        assert memo.hits == 1 and memo.misses == 4


def test_a_partly_written_entry_is_absent(tmp_path: Path) -> None:
    """An entry is complete once its meta file is written (last): a crash in between
    leaves files that are never read."""
    rng = np.random.default_rng(4)
    lengths = rng.integers(2, 5, 12)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    store = FrameStore(
        [f"v{i}" for i in range(12)],
        rng.normal(size=(int(lengths.sum()), 5)).astype(np.float32),
        offsets,
    )
    with reusing_rungs(tmp_path) as memo:
        ladder.rung_reduction(store, "avg_frames", 4)
        (meta,) = memo.directory.glob("*/meta.json")
        meta.unlink()
        ladder.rung_reduction(store, "avg_frames", 4)
        assert memo.misses == 2 and memo.hits == 0


def test_a_failing_disk_costs_the_reuse_not_the_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that fails (a full disk) drops the entry and stops the memo writing, with
    a log line; every fit still returns what it computed."""
    import pipelines.choice.rung_memo as rung_memo

    rng = np.random.default_rng(5)
    lengths = rng.integers(2, 5, 12)
    store = FrameStore(
        [f"v{i}" for i in range(12)],
        rng.normal(size=(int(lengths.sum()), 5)).astype(np.float32),
        np.concatenate([[0], np.cumsum(lengths)]),
    )
    plain = ladder.rung_reduction(store, "avg_frames", 4)

    def full_disk(*a, **k):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rung_memo.np, "save", full_disk)
    with reusing_rungs(tmp_path) as memo, caplog.at_level("WARNING"):
        for _ in range(2):
            got = ladder.rung_reduction(store, "avg_frames", 4)
            np.testing.assert_array_equal(got.pca.components, plain.pca.components)
        assert memo.failed and memo.hits == 0 and memo.misses == 2
        assert not list(memo.directory.iterdir())  # the partial entry went
    assert "No space left" in caplog.text
