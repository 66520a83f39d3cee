"""Classical baselines against direct loop re-computations."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.rungs import (
    bow_tfidf,
    idf_weights,
    mean_frames,
    nearest_word,
    tfidf,
    vlad_kmeans,
    word_counts,
)
from recsys.baselines import PCA, baseline_features, kmeans_codebook


def _videos(
    seed: int = 0, lengths: tuple[int, ...] = (3, 1, 0, 5, 2)
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.normal(size=(int(offsets[-1]), 4)).astype(np.float32), offsets


def test_mean_frames_matches_loop_and_empty_video_is_zero() -> None:
    frames, offsets = _videos()
    out = mean_frames(frames, offsets)
    for i in range(len(offsets) - 1):
        seg = frames[offsets[i] : offsets[i + 1]]
        want = seg.mean(0) if len(seg) else np.zeros(4)
        np.testing.assert_allclose(out[i], want, rtol=1e-6, atol=1e-7)


def test_counts_tfidf_and_vlad_match_loops() -> None:
    frames, offsets = _videos(1)
    codebook = np.random.default_rng(2).normal(size=(3, 4))
    words = nearest_word(frames, codebook)
    for t, x in enumerate(frames):
        assert words[t] == np.argmin(((codebook - x) ** 2).sum(1))
    counts = word_counts(frames, offsets, codebook)
    n = len(offsets) - 1
    for i in range(n):
        for k in range(3):
            assert counts[i, k] == sum(words[offsets[i] : offsets[i + 1]] == k)
    idf = idf_weights(counts)
    for k in range(3):
        df = sum(counts[i, k] > 0 for i in range(n))
        assert idf[k] == pytest.approx(np.log((1 + n) / (1 + df)) + 1)
    x = tfidf(counts, idf)
    for i in range(n):
        total = counts[i].sum()
        if total == 0:
            assert not x[i].any()  # an empty video stays zero, never NaN
            continue
        v = counts[i] / total * idf
        np.testing.assert_allclose(x[i], v / np.linalg.norm(v), rtol=1e-5)
    np.testing.assert_allclose(bow_tfidf(frames, offsets, codebook), x)
    vl = vlad_kmeans(frames, offsets, codebook).reshape(n, 3, 4)
    for i in range(n):
        for k in range(3):
            r = sum(
                (
                    frames[t] - codebook[k]
                    for t in range(offsets[i], offsets[i + 1])
                    if words[t] == k
                ),
                np.zeros(4),
            )
            nr = np.linalg.norm(r)
            np.testing.assert_allclose(vl[i, k], r / nr if nr > 0 else r, rtol=1e-5, atol=1e-6)


def test_idf_downweights_words_in_every_video() -> None:
    counts = np.array([[5.0, 1.0, 0.0], [5.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    idf = idf_weights(counts)
    assert idf[0] < idf[1] == idf[2]


def test_pca_matches_numpy_eigendecomposition() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    pca = PCA.fit(x, 3)
    cov = np.cov(x - x.mean(0), rowvar=False)
    _, evecs = np.linalg.eigh(cov)
    top = evecs[:, ::-1][:, :3]
    # Same subspace (signs may differ): |cos| = 1 per direction.
    np.testing.assert_allclose(np.abs((pca.components @ top).diagonal()), 1.0, atol=1e-8)
    z = pca.transform(x)
    assert z.shape == (50, 3)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    assert PCA.fit(x, 100).dim == 6  # capped at the rank available
    np.testing.assert_allclose(
        np.abs(PCA.fit(x, 6).truncated(3).components @ pca.components.T), np.eye(3), atol=1e-8
    )
    with pytest.raises(ValueError):
        PCA.fit(x[:1], 2)


def test_codebook_and_features_shapes_and_errors() -> None:
    frames, offsets = _videos(4, (6, 7, 8))
    cb = kmeans_codebook(frames, 4, seed=0)
    assert cb.shape == (4, 4) and np.isfinite(cb).all()
    assert baseline_features("avg_frames", frames, offsets).shape == (3, 4)
    assert baseline_features("bow_tfidf", frames, offsets, num_words=4).shape == (3, 4)
    assert baseline_features("vlad_kmeans", frames, offsets, num_words=4).shape == (3, 16)
    with pytest.raises(ValueError, match="unknown rung"):
        baseline_features("nope", frames, offsets)
    with pytest.raises(ValueError, match="offsets"):
        mean_frames(frames, np.array([0, 3]))


# ---------------------------------------------------------------- streamed over a store


def _store_of(frames: np.ndarray, offsets: np.ndarray):
    from recsys.frames import FrameStore

    return FrameStore([f"v{i}" for i in range(len(offsets) - 1)], frames, offsets)


@pytest.mark.parametrize("name", ["avg_frames", "bow_tfidf", "vlad_kmeans"])
def test_chunked_rows_equal_the_whole_array_rows(name: str) -> None:
    """A pass a few videos at a time gives the rows of the whole-array functions."""
    from recsys.baselines import baseline_features, kmeans_codebook, raw_features

    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 12, 40)
    frames = rng.normal(size=(int(lengths.sum()), 5)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    store = _store_of(frames, offsets)
    codebook = None if name == "avg_frames" else kmeans_codebook(frames, 6, seed=0)
    got = np.zeros((40, {"avg_frames": 5, "bow_tfidf": 6, "vlad_kmeans": 30}[name]), np.float32)
    chunks = 0
    for sl, rows in raw_features(name, store, codebook, max_values=60):
        got[sl] = rows
        chunks += 1
    assert chunks == 1 if name == "bow_tfidf" else chunks > 5
    np.testing.assert_allclose(got, baseline_features(name, frames, offsets, 6, 0), atol=1e-6)


def test_the_codebook_reads_uint8_frames_dequantised() -> None:
    from recsys.baselines import kmeans_codebook
    from recsys.dataset import dequantize

    q = np.random.default_rng(0).integers(0, 256, (300, 4)).astype(np.uint8)
    np.testing.assert_allclose(
        kmeans_codebook(q, 3, seed=1), kmeans_codebook(dequantize(q), 3, seed=1), atol=1e-9
    )


def test_gram_pca_finds_the_svd_directions() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 200)) * np.linspace(3, 0.1, 200)  # wide, decaying variance
    exact, gram = PCA.fit(x, 5), PCA.fit_gram(x, 5, block=37)
    np.testing.assert_allclose(gram.mean, exact.mean, atol=1e-6)  # float32 rows
    for a, b in zip(exact.components, gram.components, strict=True):
        assert abs(float(a @ b)) == pytest.approx(1.0, abs=1e-6)  # same up to sign
    z_exact, z_gram = np.abs(exact.transform(x)), np.abs(gram.transform(x))
    np.testing.assert_allclose(z_exact, z_gram, atol=1e-5)
    assert PCA.fit_gram(x[:3], 10).dim == 2  # at most N - 1 directions of N rows


def test_pca_by_covariance_matches_the_svd() -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(500, 6)) * np.array([5, 4, 3, 2, 1, 0.5])).astype(np.float32)
    a, b = PCA.fit(x, 4), PCA.fit_covariance(x, 4, block=64)
    np.testing.assert_allclose(b.mean, a.mean, atol=1e-9)
    # the same directions up to sign
    np.testing.assert_allclose(np.abs((a.components * b.components).sum(1)), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.abs(b.transform(x)), np.abs(a.transform(x)), atol=1e-5)
