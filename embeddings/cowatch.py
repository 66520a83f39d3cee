"""The co-watch embedding model f(g(v)) and the triplet loss (section 3.4.1, Eq. 15)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.gmm import GMM
from embeddings.pooling import POOLING_NAMES, Pooling, build_pooling_from


@dataclass(frozen=True)
class EmbedderConfig:
    """g(v): a pooling layer by name; f: Linear -> BatchNorm -> ReLU -> Linear -> L2-normalise."""

    feature_dim: int
    pooling: str = "dsgmm"
    num_clusters: int = 32
    gamma: float = 0.125
    intra_norm: bool = True
    final_norm: bool = False
    assignment: str = "decoupled"
    hidden_dim: int = 256
    embedding_dim: int = 64
    #: dropout on the pooled vector during training (the pooled vectors are large and
    #: distinctive enough to memorise individual videos)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_NAMES:
            raise ValueError(
                f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLING_NAMES)}"
            )
        if self.hidden_dim < 1 or self.embedding_dim < 1:
            raise ValueError("hidden_dim and embedding_dim must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown embedder config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


class CowatchEmbedder(nn.Module):
    """frames (B, T, D), mask (B, T) -> L2-normalised embeddings (B, E)."""

    def __init__(self, cfg: EmbedderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.pooling: Pooling = build_pooling_from(cfg)
        # Batch norm after the first layer: pooled vectors of different videos share a
        # large common part (with intra-norm, clusters a video barely visits all sit
        # at their normalised UBM mean), which otherwise starts every embedding at
        # nearly the same point (mean cosine ~0.99 measured) and stalls the triplet loss.
        self.projector = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(self.pooling.out_dim, cfg.hidden_dim),
            nn.BatchNorm1d(cfg.hidden_dim),
            nn.ReLU(),
            nn.Linear(cfg.hidden_dim, cfg.embedding_dim),
        )

    @property
    def needs_ubm(self) -> bool:
        """vlad/sgmm cannot run without a UBM; the trainable layers only start from one."""
        return self.config.pooling in ("vlad", "sgmm")

    def from_ubm(self, ubm: GMM) -> CowatchEmbedder:
        self.pooling.from_ubm(ubm)
        return self

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.pooling(frames, mask)
        return F.normalize(self.projector(pooled), dim=-1)


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Eq. 15 averaged over the batch: max(|a - p|^2 - |a - n|^2 + margin, 0); inputs (B, E)."""
    d_pos = (anchor - positive).square().sum(-1)
    d_neg = (anchor - negative).square().sum(-1)
    return F.relu(d_pos - d_neg + margin).mean()
