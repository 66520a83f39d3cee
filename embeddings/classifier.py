"""The video classifier of Figure 1: pooling -> (hidden + BN) -> context gating -> MoE."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from embeddings.heads import ContextGating, MixtureOfExperts, MoEConfig
from embeddings.pooling import Pooling, PoolingOptions, build_pooling_from


@dataclass(frozen=True)
class ClassifierConfig(PoolingOptions):
    """The pooling (``PoolingOptions``) and the heads above it."""

    feature_dim: int
    num_classes: int
    #: small data sets; the paper uses 256 on YouTube-8M
    num_clusters: int = field(default=16, kw_only=True)
    #: 0 = no hidden layer (K=256, D=1024 with a 1024 hidden layer is 268M weights)
    hidden_size: int = 0
    num_mixtures: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VideoClassifier(nn.Module):
    """frames (B, T, D), mask (B, T) -> per-label probabilities (B, C)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.config = cfg
        self.pooling: Pooling = build_pooling_from(cfg, cfg.feature_dim)
        width = self.pooling.out_dim
        self.hidden: nn.Module = nn.Identity()
        if cfg.hidden_size > 0:
            self.hidden = nn.Sequential(
                nn.Linear(width, cfg.hidden_size), nn.BatchNorm1d(cfg.hidden_size), nn.ReLU6()
            )
            width = cfg.hidden_size
        self.gating = ContextGating(width)
        self.moe = MixtureOfExperts(MoEConfig(width, cfg.num_classes, cfg.num_mixtures))

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.moe(self.gating(self.hidden(self.pooling(frames, mask))))
