"""What the classical rungs need beyond their statistics (``embeddings.rungs``): a
k-means codebook fitted on a sample of frames, the PCA that brings a rung to an
embedding's size, and a rung's raw rows over a ``recsys.frames.FrameStore`` a chunk of
videos at a time. Nothing here reads or writes files.

``PCA``: centre, project on the leading principal directions, L2-normalise, so a rung
lands in a space of the embedding's size where cosine means something.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from embeddings.gmm import kmeans
from embeddings.rungs import catalogue_raw, rung
from recsys.frames import FrameStore, as_float


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
    """A rung's raw rows, one run of videos at a time (each chunk holds about
    ``max_values`` frame values): bounded memory for any catalogue. Rungs with words need
    the ``codebook`` (``kmeans_codebook``); the bag of words needs its document
    frequencies over all videos first, so it yields one chunk."""
    return catalogue_raw(name, store_chunks(store, max_values), codebook)


def baseline_features(
    name: str, frames: np.ndarray, offsets: np.ndarray, num_words: int = 64, seed: int = 0
) -> np.ndarray:
    """The raw (pre-PCA) representation of every video for a rung in ``RUNGS``, its
    codebook (when it has words) fitted on these frames."""
    codebook = kmeans_codebook(frames, num_words, seed=seed) if rung(name).uses_words else None
    _, rows = next(catalogue_raw(name, [(slice(0, len(offsets) - 1), frames, offsets)], codebook))
    return rows
