"""A classical rung of the ladder as a fixed torch layer: the starting point the co-watch
model learns on top of (``embeddings.cowatch.CowatchEmbedder`` with ``base``).

The same maps as ``recsys.baselines`` / ``recsys.embedders.ClassicalEmbedder`` (which
fill this layer's buffers), on padded batches:

=============  ======================================================  ===========
name           raw statistic of a video                                raw size F
=============  ======================================================  ===========
avg_frames     mean of its frames                                      D
bow_tfidf      (n(k) / T) idf(k) over hard k-means words, L2-norm      K
vlad_kmeans    sum_{t: w(t)=k} (x_t - c_k), each word L2-normalised   K * D
=============  ======================================================  ===========

then ``(raw - mean) @ components.T`` (a PCA fitted on the catalogue) and L2 normalisation.
Nothing here is trained; buffers travel with the model's state dict. Hard assignment
never builds more than a (B, T, K) one-hot; VLAD's sums are one ``bmm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the rungs a model can start from, as named by ``recsys.baselines.BASELINE_NAMES``
BASE_NAMES: tuple[str, ...] = ("avg_frames", "bow_tfidf", "vlad_kmeans")


def base_raw_dim(name: str, feature_dim: int, num_words: int) -> int:
    """F, the size of a rung's statistic before its PCA."""
    if name == "avg_frames":
        return feature_dim
    if name == "bow_tfidf":
        return num_words
    if name == "vlad_kmeans":
        return num_words * feature_dim
    raise ValueError(f"unknown base {name!r}; one of {', '.join(BASE_NAMES)}")


class ClassicalBase(nn.Module):
    """frames (B, T, D), mask (B, T) -> (B, dim) unit rows (zero for a video without frames).

    Buffers: codebook (K, D) and idf (K,) (unused entries stay zero for avg_frames),
    pca_mean (F,), pca_components (dim, F).
    """

    codebook: torch.Tensor
    idf: torch.Tensor
    pca_mean: torch.Tensor
    pca_components: torch.Tensor

    def __init__(self, name: str, feature_dim: int, num_words: int, dim: int) -> None:
        super().__init__()
        raw = base_raw_dim(name, feature_dim, num_words)
        if dim < 1 or feature_dim < 1 or num_words < 1:
            raise ValueError("a base needs feature_dim, num_words and dim >= 1")
        self.name = name
        self.register_buffer("codebook", torch.zeros(num_words, feature_dim))
        self.register_buffer("idf", torch.zeros(num_words))
        self.register_buffer("pca_mean", torch.zeros(raw))
        self.register_buffer("pca_components", torch.zeros(dim, raw))

    @property
    def dim(self) -> int:
        return int(self.pca_components.shape[0])

    @torch.no_grad()
    def load_arrays(
        self,
        pca_mean: torch.Tensor,
        pca_components: torch.Tensor,
        codebook: torch.Tensor | None = None,
        idf: torch.Tensor | None = None,
    ) -> ClassicalBase:
        """Fill the buffers (shapes must match the layer's)."""
        for buf, value in (
            (self.pca_mean, pca_mean),
            (self.pca_components, pca_components),
            (self.codebook, codebook),
            (self.idf, idf),
        ):
            if value is None:
                continue
            if tuple(value.shape) != tuple(buf.shape):
                raise ValueError(
                    f"base array of shape {tuple(value.shape)}, expected {tuple(buf.shape)}"
                )
            buf.copy_(value.to(buf.dtype))
        return self

    def _words(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, K) one-hot of each real frame's nearest word (zero rows for padding)."""
        c = self.codebook.to(frames.dtype)
        # |x|^2 is the same for every word: argmin |c|^2 - 2 x.c
        score = (c * c).sum(1) - 2.0 * frames @ c.T
        hot = F.one_hot(score.argmin(-1), c.shape[0]).to(frames.dtype)
        return hot * mask.unsqueeze(-1)

    def raw(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F) the rung's statistic of each video."""
        m = (
            torch.ones(frames.shape[:2], dtype=frames.dtype, device=frames.device)
            if mask is None
            else mask.to(frames.dtype)
        )
        if self.name == "avg_frames":
            total = (frames * m.unsqueeze(-1)).sum(1)
            return total / m.sum(1, keepdim=True).clamp_min(1.0)
        hot = self._words(frames, m)
        if self.name == "bow_tfidf":
            counts = hot.sum(1)  # (B, K)
            tf = counts / counts.sum(1, keepdim=True).clamp_min(1.0)
            return F.normalize(tf * self.idf.to(frames.dtype), dim=-1, eps=1e-12)
        # VLAD: per-word sums minus count x centre, each word's row normalised.
        sums = torch.bmm(hot.transpose(1, 2), frames)  # (B, K, D)
        resid = sums - hot.sum(1).unsqueeze(-1) * self.codebook.to(frames.dtype)
        return F.normalize(resid, dim=-1, eps=1e-12).flatten(1)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.raw(frames.float(), mask)
        z = (x - self.pca_mean) @ self.pca_components.T
        return F.normalize(z, dim=-1, eps=1e-12)
