"""Classifier heads of Miech et al. (2017), Figure 1 of the paper."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class ContextGating(nn.Module):
    """y = x * sigmoid(W x + b): re-weights features by context. x: (B, F) -> (B, F)."""

    def __init__(self, dim: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=not batch_norm)
        self.norm: nn.Module = nn.BatchNorm1d(dim) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.norm(self.linear(x)))


@dataclass(frozen=True)
class MoEConfig:
    input_dim: int
    num_classes: int
    num_mixtures: int = 2


class MixtureOfExperts(nn.Module):
    """Per class c: p(c|x) = sum_m g_m(x) sigmoid(e_m(x)), gates a softmax over M + 1
    (the extra gate is a "no expert" option whose expert always says 0, as in the
    YouTube-8M starter code). x: (B, F) -> probabilities (B, C)."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.config = cfg
        c, m = cfg.num_classes, cfg.num_mixtures
        self.gates = nn.Linear(cfg.input_dim, c * (m + 1))
        self.experts = nn.Linear(cfg.input_dim, c * m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, m = self.config.num_classes, self.config.num_mixtures
        gates = torch.softmax(self.gates(x).view(-1, c, m + 1), dim=-1)[..., :m]
        experts = torch.sigmoid(self.experts(x).view(-1, c, m))
        return (gates * experts).sum(-1)
