"""Classical video representations that every learned embedding is measured against.

All functions take the flat frame layout of :class:`recsys.frames.FrameStore`
(``frames (sum T, D)``, ``offsets (N + 1,)``) and return one row per video; none
of them reads or writes files.

* ``mean_frames``: average pooling of the frames (D values).
* ``bow_tfidf``: a k-means codebook, hard assignment, term frequency times inverse
  document frequency, L2-normalised (K values). Frames that occur in nearly every
  video (intros, credits) get an idf near zero, which is why this simple baseline
  is hard to beat.
* ``vlad_kmeans``: VLAD over the same codebook (Eq. 13 with hard assignment),
  intra-normalised (K * D values).
* ``PCA``: centre, project on the leading principal directions, L2-normalise, so
  a baseline lands in a space of the embedding's size where cosine means something.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from embeddings.gmm import kmeans
from recsys.frames import FrameStore, as_float

BASELINE_NAMES: tuple[str, ...] = ("avg_frames", "bow_tfidf", "vlad_kmeans")


def _check(frames: np.ndarray, offsets: np.ndarray) -> None:
    if frames.ndim != 2:
        raise ValueError(f"frames must be (sum T, D), got shape {frames.shape}")
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(frames):
        raise ValueError("offsets must run from 0 to the number of frames")
    if (np.diff(offsets) < 0).any():
        raise ValueError("offsets must be non-decreasing")


def _owner(offsets: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def mean_frames(frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, D) mean frame of each video; a video without frames is all zeros."""
    _check(frames, offsets)
    counts = np.diff(offsets)
    sums = np.zeros((len(counts), frames.shape[1]), dtype=np.float64)
    has = counts > 0
    if has.any():
        # Each non-empty video's frames run from its offset to the next non-empty one's.
        sums[has] = np.add.reduceat(frames, offsets[:-1][has], axis=0, dtype=np.float64)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def kmeans_codebook(
    frames: np.ndarray, num_words: int, sample: int = 50_000, iters: int = 20, seed: int = 0
) -> np.ndarray:
    """(K, D) k-means++ / Lloyd centroids fitted on up to ``sample`` frames drawn uniformly
    (only those are read: ``frames`` may be a memory map, uint8 frames are dequantised).
    The sample stays float32 (50,000 frames of D = 1024: 205 MB, not 410 in float64);
    centroids are returned in float64."""
    if len(frames) == 0:
        raise ValueError("a codebook needs frames")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(frames), size=min(sample, len(frames)), replace=False)
    x = torch.from_numpy(np.asarray(as_float(frames[np.sort(pick)]), dtype=np.float32))
    k = min(num_words, len(x))
    return kmeans(x, k, iters=iters, seed=seed).double().numpy()


def nearest_word(frames: np.ndarray, codebook: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(sum T,) index of the nearest centroid of every frame (squared Euclidean), in
    float64 a chunk of frames at a time (8,192 frames of D = 1024: 64 MB)."""
    c = np.asarray(codebook, dtype=np.float64)
    c2 = (c * c).sum(1)
    out = np.empty(len(frames), dtype=np.int64)
    for s in range(0, len(frames), chunk):
        x = np.asarray(frames[s : s + chunk], dtype=np.float64)
        out[s : s + chunk] = (c2 - 2.0 * x @ c.T).argmin(1)  # |x|^2 is the same for every k
    return out


def word_counts(frames: np.ndarray, offsets: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """(N, K) number of frames of each video nearest to each centroid."""
    _check(frames, offsets)
    n, k = len(offsets) - 1, len(codebook)
    words = nearest_word(frames, codebook)
    return np.bincount(_owner(offsets) * k + words, minlength=n * k).reshape(n, k).astype(float)


def idf_weights(counts: np.ndarray) -> np.ndarray:
    """(K,) smoothed inverse document frequency: log((1 + N) / (1 + df)) + 1."""
    n = len(counts)
    df = (counts > 0).sum(0)
    return np.log((1.0 + n) / (1.0 + df)) + 1.0


def tfidf(counts: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """(N, K) L2-normalised term frequency (count / frames) times idf; empty videos stay zero."""
    tf = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    x = tf * idf
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def bow_tfidf(
    frames: np.ndarray, offsets: np.ndarray, codebook: np.ndarray, idf: np.ndarray | None = None
) -> np.ndarray:
    """Bag of words over ``codebook`` with tf-idf; ``idf`` defaults to these videos' own."""
    counts = word_counts(frames, offsets, codebook)
    return tfidf(counts, idf_weights(counts) if idf is None else idf)


def vlad_kmeans(frames: np.ndarray, offsets: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """(N, K * D) hard-assignment VLAD, sum_t [w(t) = k] (x_t - c_k), intra-normalised."""
    _check(frames, offsets)
    n, (k, d) = len(offsets) - 1, codebook.shape
    words = nearest_word(frames, codebook)
    # Sorted by (video, word), each cell's frames are one run: sum_t x_t - n c_k per run.
    cell = _owner(offsets) * k + words
    order = np.argsort(cell, kind="stable")
    cells, starts, counts = np.unique(cell[order], return_index=True, return_counts=True)
    out = np.zeros((n * k, d))
    if len(cells):
        sums = np.add.reduceat(frames[order], starts, axis=0, dtype=np.float64)
        out[cells] = sums - counts[:, None] * codebook[cells % k].astype(np.float64)
    out = out.reshape(n, k, d)
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).reshape(n, k * d).astype(np.float32)


@dataclass(frozen=True)
class PCA:
    """x -> L2-normalise((x - mean) @ components.T); components (dim, F) by decreasing variance."""

    mean: np.ndarray  # (F,)
    components: np.ndarray  # (dim, F)

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> PCA:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError("PCA needs a (N >= 2, F) matrix")
        mean = x.mean(0)
        # SVD of the centred data: rows of vt are the principal directions.
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return cls(mean, vt[: max(1, min(dim, vt.shape[0]))])

    def truncated(self, dim: int) -> PCA:
        """The same fit keeping only the ``dim`` leading directions (no new SVD)."""
        return PCA(self.mean, self.components[: max(1, min(dim, len(self.components)))])

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit_gram(cls, x: np.ndarray, dim: int, block: int = 8192) -> PCA:
        """The same directions as ``fit`` (up to sign) through the N x N Gram matrix of
        the centred rows, for a few rows of many features: memory N * F float32 (``x``
        itself, centred a block of columns at a time) plus N^2, where an SVD of a wide
        matrix needs several copies of it in float64."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError("PCA needs a (N >= 2, F) matrix")
        mean = x.mean(0, dtype=np.float64)

        def centred(s: int) -> np.ndarray:
            return x[:, s : s + block].astype(np.float64) - mean[s : s + block]

        gram = np.zeros((len(x), len(x)))
        for s in range(0, x.shape[1], block):
            b = centred(s)
            gram += b @ b.T
        values, vectors = np.linalg.eigh(gram)  # ascending
        keep = max(1, min(dim, len(x) - 1))
        values, vectors = values[::-1][:keep], vectors[:, ::-1][:, :keep]
        scale = np.sqrt(np.maximum(values, 1e-300))
        comps = np.zeros((keep, x.shape[1]))
        for s in range(0, x.shape[1], block):
            comps[:, s : s + block] = vectors.T @ centred(s)
        return cls(mean, comps / scale[:, None])

    @classmethod
    def fit_covariance(cls, x: np.ndarray, dim: int, block: int = 1 << 16) -> PCA:
        """The same directions as ``fit`` (up to sign) through the F x F covariance, summed
        a block of rows at a time: for many rows of few features (a catalogue's
        embeddings), memory F^2 plus one block, never a float64 copy of ``x``."""
        if x.ndim != 2 or len(x) < 2:
            raise ValueError("PCA needs a (N >= 2, F) matrix")
        n, f = x.shape
        total = np.zeros(f)
        for s in range(0, n, block):
            total += np.asarray(x[s : s + block], dtype=np.float64).sum(0)
        mean = total / n
        cov = np.zeros((f, f))
        for s in range(0, n, block):
            b = np.asarray(x[s : s + block], dtype=np.float64) - mean
            cov += b.T @ b
        _, vectors = np.linalg.eigh(cov)  # eigenvalues ascending
        keep = max(1, min(dim, f, n - 1))
        return cls(mean, vectors[:, ::-1][:, :keep].T.copy())

    def project(self, x: np.ndarray) -> np.ndarray:
        """(N, dim) coordinates before normalisation; ``transform`` of the leading ``d``
        directions is ``l2_rows(project(x)[:, :d])``."""
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T

    def transform(self, x: np.ndarray) -> np.ndarray:
        return l2_rows(self.project(x))


def l2_rows(z: np.ndarray) -> np.ndarray:
    """float32 rows of ``z`` scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.maximum(norms, 1e-12)).astype(np.float32)


def check_name(name: str) -> None:
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINE_NAMES)}")


def raw_dim(name: str, feature_dim: int, num_words: int) -> int:
    """How many values a video's raw (pre-PCA) representation has."""
    check_name(name)
    return {
        "avg_frames": feature_dim,
        "bow_tfidf": num_words,
        "vlad_kmeans": num_words * feature_dim,
    }[name]


def store_chunks(
    store: FrameStore, max_values: int
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """``store.chunks`` with at most about ``max_values`` frame values per chunk."""
    return store.chunks(max(1, max_values // max(store.feature_dim, 1)))


def raw_features(
    name: str,
    store: FrameStore,
    codebook: np.ndarray | None = None,
    max_values: int = 1 << 24,
) -> Iterator[tuple[slice, np.ndarray]]:
    """A baseline's raw rows, one run of videos at a time (each chunk holds about
    ``max_values`` frame values): bounded memory for any catalogue. bow_tfidf and
    vlad_kmeans need the ``codebook`` (``kmeans_codebook``); the bag of words needs its
    document frequencies over all videos first, so it yields one chunk."""
    check_name(name)
    if name == "avg_frames":
        for sl, frames, offsets in store_chunks(store, max_values):
            yield sl, mean_frames(frames, offsets)
        return
    if codebook is None:
        raise ValueError(f"{name} needs a codebook")
    if name == "vlad_kmeans":
        for sl, frames, offsets in store_chunks(store, max_values):
            yield sl, vlad_kmeans(frames, offsets, codebook)
        return
    counts = np.concatenate(
        [word_counts(f, o, codebook) for _, f, o in store_chunks(store, max_values)]
    )
    yield slice(0, len(store)), tfidf(counts, idf_weights(counts))


def baseline_features(
    name: str, frames: np.ndarray, offsets: np.ndarray, num_words: int = 64, seed: int = 0
) -> np.ndarray:
    """The raw (pre-PCA) representation of every video for a baseline in ``BASELINE_NAMES``."""
    if name == "avg_frames":
        return mean_frames(frames, offsets)
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINE_NAMES)}")
    codebook = kmeans_codebook(frames, num_words, seed=seed)
    if name == "bow_tfidf":
        return bow_tfidf(frames, offsets, codebook)
    return vlad_kmeans(frames, offsets, codebook)
