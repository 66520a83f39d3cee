"""The classical rungs of the ladder, each declared once: a video's raw statistic from
its frames, in the flat layout of a catalogue (numpy, float64 sums) and on padded
batches (torch, inside a model), with the size of that statistic.

=============  ======================================================  ===========
name           raw statistic of a video                                raw size F
=============  ======================================================  ===========
avg_frames     mean of its frames                                      D
bow_tfidf      (n(k) / T) idf(k) over hard k-means words, L2-norm      K
vlad_kmeans    sum_{t: w(t)=k} (x_t - c_k), each word L2-normalised   K * D
=============  ======================================================  ===========

A rung is a ``Rung`` subclass registered in ``embeddings.registry.RUNGS``; the ladder
(``pipelines.choice.ladder``), the starting point, ``recsys.embedders.ClassicalEmbedder``
and ``embeddings.classical.ClassicalBase`` find it by name. The flat functions take
``frames (sum T, D)`` and ``offsets (N + 1,)`` and return one row per video; none of them
reads or writes files. Frames that occur in nearly every video (intros, credits) get an
idf near zero, which is why the bag of words is hard to beat.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from embeddings.registry import RUNGS

#: a run of videos in the flat layout: (their rows, frames (sum T, D), offsets (n + 1,))
Chunk = tuple[slice, np.ndarray, np.ndarray]


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
        sums[has] = _run_sums(frames, offsets[:-1][has], offsets[1:][has])
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _run_sums(x: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """(R, D) float64 sums of the row runs ``x[starts[r]:stops[r]]``, each accumulated row
    after row: the bits of ``np.add.reduceat(x, starts, axis=0, dtype=np.float64)`` for
    back-to-back runs, which walks each column down the rows (13x slower here: 26 s of
    the ladder's average frames and 29 s of its VLAD at 10,000 YouTube-8M-shaped videos)."""
    out = np.empty((len(starts), x.shape[1]), dtype=np.float64)
    for r, (a, b) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
        x[a:b].sum(0, dtype=np.float64, out=out[r])
    return out


def nearest_word(frames: np.ndarray, codebook: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(sum T,) index of the nearest centroid of every frame (squared Euclidean), in
    float64 a chunk of frames at a time (8,192 frames of D = 1024: 64 MB)."""
    c = np.asarray(codebook, dtype=np.float64)
    c2 = (c * c).sum(1)
    out = np.empty(len(frames), dtype=np.int64)
    for s in range(0, len(frames), chunk):
        x = np.asarray(frames[s : s + chunk], dtype=np.float64)
        # |x|^2 is the same for every k; (2c), not (2x): the doubling on the small side
        # (exact either way: a power of two)
        out[s : s + chunk] = (c2 - x @ (2.0 * c).T).argmin(1)
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
        sums = _run_sums(frames[order], starts, starts + counts)
        out[cells] = sums - counts[:, None] * codebook[cells % k].astype(np.float64)
    out = out.reshape(n, k, d)
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).reshape(n, k * d).astype(np.float32)


def nearest_words(frames: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, T) int64: each frame's nearest word."""
    c = codebook.to(frames.dtype)
    # |x|^2 is the same for every word: argmin |c|^2 - 2 x.c
    score = (c * c).sum(1) - frames @ (2.0 * c).T  # doubled on the small side (exact)
    return score.argmin(-1)


def _word_rows(
    frames: torch.Tensor,
    mask: torch.Tensor,
    codebook: torch.Tensor,
    words: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B * T,) each frame's row b * K + its nearest word (``words (B, T)`` when the
    caller knows them already); padding's row is B * K."""
    b, k = frames.shape[0], codebook.shape[0]
    w = _nearest(frames, codebook, words)
    rows = torch.arange(b, device=frames.device).unsqueeze(1) * k + w
    return rows.masked_fill(~mask.bool(), b * k).reshape(-1)


def _nearest(
    frames: torch.Tensor, codebook: torch.Tensor, words: torch.Tensor | None
) -> torch.Tensor:
    """(B, T) int64 nearest words: ``words`` as given (each frame's, found before:
    ``frame_words``), else found now."""
    if words is None:
        return nearest_words(frames, codebook)
    if tuple(words.shape) != tuple(frames.shape[:2]):
        raise ValueError(f"words must be (B, T) = {tuple(frames.shape[:2])}")
    return words.to(device=frames.device, dtype=torch.int64)


def batch_word_counts(
    frames: torch.Tensor,
    mask: torch.Tensor,
    codebook: torch.Tensor,
    words: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, K) how many of each video's real frames have each word nearest."""
    rows = _word_rows(frames, mask, codebook, words)
    return _counts(rows, frames.shape[0], codebook.shape[0]).to(frames.dtype)


def _counts(rows: torch.Tensor, b: int, k: int) -> torch.Tensor:
    """(B, K) how many ``_word_rows`` fall on each video's words (padding's row dropped)."""
    return torch.bincount(rows, minlength=b * k + 1)[: b * k].reshape(b, k)


def batch_word_sums(
    frames: torch.Tensor,
    mask: torch.Tensor,
    codebook: torch.Tensor,
    words: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, K, D) the sum of each video's real frames per nearest word, (B, K) their
    counts): each frame added into its word's row (``index_add_``), padding into a row
    that is dropped. The one-hot product it replaces multiplied every frame by K
    weights, all but one zero (measured at B = 256, T = 200, K = 64, D = 1024: 130-148
    against 93-105 ms with the distance product, which is 59-65 of either)."""
    b, _, d = frames.shape
    k = codebook.shape[0]
    rows = _word_rows(frames, mask, codebook, words)
    sums = torch.zeros(b * k + 1, d, dtype=frames.dtype, device=frames.device)
    sums.index_add_(0, rows, frames.reshape(-1, d))
    return sums[: b * k].reshape(b, k, d), _counts(rows, b, k).to(frames.dtype)


# --------------------------------------------------------------------------- rungs


class Rung:
    """One classical representation. ``codebook`` (K, D): the k-means words of the rungs
    that use them; ``idf`` (K,): the catalogue's inverse document frequencies."""

    name: ClassVar[str] = ""
    #: needs a k-means codebook
    uses_words: ClassVar[bool] = False
    #: needs the catalogue's document frequencies: a video's row depends on every video
    uses_idf: ClassVar[bool] = False
    #: why the rung says nothing when every video is one frame (a vector given per video,
    #: video-level features); "" = it applies
    not_for_one_frame: ClassVar[str] = ""

    def raw_dim(self, feature_dim: int, num_words: int) -> int:
        """F, the size of a video's statistic before any PCA."""
        raise NotImplementedError

    def rows(
        self,
        frames: np.ndarray,
        offsets: np.ndarray,
        codebook: np.ndarray | None = None,
        idf: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N, F) float32 statistics of the videos in the flat layout."""
        raise NotImplementedError

    def batch(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor,
        codebook: torch.Tensor,
        idf: torch.Tensor,
        words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, F) statistics of padded videos ``frames (B, T, D)``, ``mask (B, T)`` (float,
        1 = real frame), as ``rows`` computes them. ``words (B, T)``: each frame's nearest
        word when the caller found them before (rungs that use words), else found here."""
        raise NotImplementedError

    def projected(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor,
        codebook: torch.Tensor,
        idf: torch.Tensor,
        mean: torch.Tensor,
        components: torch.Tensor,
        words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, dim) ``(batch(...) - mean (F,)) @ components (dim, F).T``: the statistic
        through a PCA, as a model's fixed base layer needs it."""
        return (self.batch(frames, mask, codebook, idf, words) - mean) @ components.T

    def catalogue_rows(
        self, chunks: Iterable[Chunk], codebook: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(every video's rows, idf) when a video's row depends on the whole catalogue;
        (None, None) when rows are per video (then ``rows`` a chunk at a time)."""
        return None, None


@RUNGS.register
class AverageFrames(Rung):
    name = "avg_frames"

    def raw_dim(self, feature_dim: int, num_words: int) -> int:
        return feature_dim

    def rows(
        self,
        frames: np.ndarray,
        offsets: np.ndarray,
        codebook: np.ndarray | None = None,
        idf: np.ndarray | None = None,
    ) -> np.ndarray:
        return mean_frames(frames, offsets)

    def batch(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor,
        codebook: torch.Tensor,
        idf: torch.Tensor,
        words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        total = (frames * mask.unsqueeze(-1)).sum(1)
        return total / mask.sum(1, keepdim=True).clamp_min(1.0)


@RUNGS.register
class BagOfWordsTfidf(Rung):
    name = "bow_tfidf"
    uses_words = True
    uses_idf = True
    not_for_one_frame = "one frame a video (a vector per video): a bag of one word"

    def raw_dim(self, feature_dim: int, num_words: int) -> int:
        return num_words

    def rows(
        self,
        frames: np.ndarray,
        offsets: np.ndarray,
        codebook: np.ndarray | None = None,
        idf: np.ndarray | None = None,
    ) -> np.ndarray:
        if codebook is None or idf is None:
            raise ValueError("bow_tfidf needs a codebook and the catalogue's idf")
        return tfidf(word_counts(frames, offsets, codebook), idf)

    def batch(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor,
        codebook: torch.Tensor,
        idf: torch.Tensor,
        words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        counts = batch_word_counts(frames, mask, codebook, words)  # (B, K)
        tf = counts / counts.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(tf * idf.to(frames.dtype), dim=-1, eps=1e-12)

    def catalogue_rows(
        self, chunks: Iterable[Chunk], codebook: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if codebook is None:
            raise ValueError("bow_tfidf needs a codebook")
        counts = np.concatenate([word_counts(f, o, codebook) for _, f, o in chunks])
        idf = idf_weights(counts)
        return tfidf(counts, idf), idf


@RUNGS.register
class VladKmeans(Rung):
    name = "vlad_kmeans"
    uses_words = True

    def raw_dim(self, feature_dim: int, num_words: int) -> int:
        return num_words * feature_dim

    def rows(
        self,
        frames: np.ndarray,
        offsets: np.ndarray,
        codebook: np.ndarray | None = None,
        idf: np.ndarray | None = None,
    ) -> np.ndarray:
        if codebook is None:
            raise ValueError("vlad_kmeans needs a codebook")
        return vlad_kmeans(frames, offsets, codebook)

    def batch(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor,
        codebook: torch.Tensor,
        idf: torch.Tensor,
        words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # per-word sums minus count x centre, each word's row normalised
        resid = _residuals(frames, mask, codebook, words)
        return F.normalize(resid, dim=-1, eps=1e-12).flatten(1)

    def projected(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor,
        codebook: torch.Tensor,
        idf: torch.Tensor,
        mean: torch.Tensor,
        components: torch.Tensor,
        words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # sum_k (r_k / |r_k|) . C_k - mean . C, with C_k the components' block of word k,
        # summed over the (video, word) cells some frame chose: a word no frame of a
        # video chose adds nothing, so the (B, K, D) residuals (mostly zero rows when T
        # is near K; zeroed, filled, normalised and read transposed, they were a third of
        # a pipeline-shaped training step) are never written.
        return (
            _cells_projected(frames, mask, codebook, components, words)
            - mean.to(frames.dtype) @ components.to(frames.dtype).T
        )


def _cells_projected(
    frames: torch.Tensor,
    mask: torch.Tensor,
    codebook: torch.Tensor,
    components: torch.Tensor,
    words: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, dim) sum over each video's occupied cells k of C_k r_k / |r_k|, r_k = sum_{t:
    w(t) = k} (x_t - c_k), for ``components (dim, K * D)``. The cells are sorted word
    first, so each word's cells are one run of rows, multiplied by its block at once."""
    b, _, d = frames.shape
    k = codebook.shape[0]
    blocks = components.to(frames.dtype).reshape(-1, k, d)  # (dim, K, D)
    key = _nearest(frames, codebook, words) * b + torch.arange(b, device=frames.device)[:, None]
    key = key.masked_fill(~mask.bool(), k * b).reshape(-1)  # padding: one cell past all
    cells, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(cells), d, dtype=frames.dtype, device=frames.device)
    sums.index_add_(0, inverse, frames.reshape(-1, d))  # (cells, D), frames in t order
    word = cells // b
    bounds = torch.searchsorted(word, torch.arange(k + 1, device=frames.device)).tolist()
    per_cell = torch.zeros(len(cells), blocks.shape[0], dtype=frames.dtype, device=frames.device)
    cb, n = codebook.to(frames.dtype), counts.to(frames.dtype).unsqueeze(1)
    for j in range(k):
        s, e = bounds[j], bounds[j + 1]
        if s == e:
            continue
        r = sums[s:e].addcmul_(n[s:e], cb[j], value=-1.0)  # (cells of word j, D)
        norms = torch.linalg.vector_norm(r, dim=1, keepdim=True).clamp_min(1e-12)
        per_cell[s:e] = (r @ blocks[:, j].T) / norms
    z = torch.zeros(b, blocks.shape[0], dtype=frames.dtype, device=frames.device)
    real = bounds[k]  # the cells before the padding's
    return z.index_add_(0, cells[:real] % b, per_cell[:real])


def _residuals(
    frames: torch.Tensor,
    mask: torch.Tensor,
    codebook: torch.Tensor,
    words: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, K, D) sum_t [w(t) = k] (x_t - c_k) of padded videos: ``batch_word_sums``, then the
    counts' share of the centres taken off in place."""
    sums, counts = batch_word_sums(frames, mask, codebook, words)
    return sums.addcmul_(counts.unsqueeze(-1), codebook.to(frames.dtype), value=-1.0)


def rung(name: str) -> Rung:
    """The rung registered under ``name`` (ValueError naming the choices)."""
    return cast(Rung, RUNGS[name]())


def inapplicable(names: Iterable[str], one_frame: bool) -> dict[str, str]:
    """The rungs of ``names`` that do not apply to the data, with why (``one_frame``:
    every video is one frame)."""
    if not one_frame:
        return {}
    return {n: rung(n).not_for_one_frame for n in names if rung(n).not_for_one_frame}


def catalogue_raw(
    name: str, chunks: Iterable[Chunk], codebook: np.ndarray | None
) -> Iterator[tuple[slice, np.ndarray]]:
    """A rung's raw rows of a catalogue given as chunks, in order: one chunk of every
    video when rows depend on the catalogue (bow_tfidf), else chunk by chunk."""
    r = rung(name)
    if r.uses_words and codebook is None:
        raise ValueError(f"{name} needs a codebook")
    rows, _ = r.catalogue_rows(chunks, codebook)  # consumes the chunks when it needs them
    if rows is not None:
        yield slice(0, len(rows)), rows
        return
    for sl, frames, offsets in chunks:
        yield sl, r.rows(frames, offsets, codebook, None)
