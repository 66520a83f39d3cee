"""A classical rung of the ladder as a fixed torch layer: the starting point the co-watch
model learns on top of (``embeddings.cowatch.CowatchEmbedder`` with ``base``).

The rung's statistic on padded batches (``embeddings.rungs``: the same statistic
``recsys.embedders.ClassicalEmbedder`` computes on a catalogue, whose arrays fill this
layer's buffers), then ``(raw - mean) @ components.T`` (a PCA fitted on the catalogue)
and L2 normalisation. Nothing here is trained; buffers travel with the model's state
dict. Hard assignment never builds more than a (B, T, K) one-hot; VLAD's sums are one
``bmm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.rungs import nearest_words, rung


def base_raw_dim(name: str, feature_dim: int, num_words: int) -> int:
    """F, the size of a rung's statistic before its PCA (ValueError for an unknown rung)."""
    return rung(name).raw_dim(feature_dim, num_words)


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
        self.rung = rung(name)
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

    def raw(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F) the rung's statistic of each video."""
        return self.rung.batch(frames, _weights(frames, mask), self.codebook, self.idf)

    @torch.no_grad()
    def forward(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor | None = None,
        words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames (B, T, D), mask (B, T) -> (B, dim) unit rows. ``words (B, T)``: each
        frame's nearest word of ``codebook`` when the caller found them before (a word is
        a property of the frame, not of the batch: ``frame_words``), else found here."""
        x = frames.float()
        z = self.rung.projected(
            x,
            _weights(x, mask),
            self.codebook,
            self.idf,
            self.pca_mean,
            self.pca_components,
            words,
        )
        return F.normalize(z, dim=-1, eps=1e-12)

    @property
    def uses_words(self) -> bool:
        """Its statistic reads each frame's nearest word (``frame_words`` can give them)."""
        return self.rung.uses_words

    @torch.no_grad()
    def frame_words(self, frames: torch.Tensor) -> torch.Tensor:
        """(n,) int64 the nearest word of each of ``frames (n, D)``: what ``forward``
        finds for these frames in any batch."""
        return nearest_words(frames.float().unsqueeze(0), self.codebook)[0]


def _weights(frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) 1 for a real frame, 0 for padding, in the frames' type (no mask: all real)."""
    if mask is None:
        return torch.ones(frames.shape[:2], dtype=frames.dtype, device=frames.device)
    return mask.to(frames.dtype)
