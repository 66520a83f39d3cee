"""The trainable pooling layers of Miech et al. (2017) the paper compares with: NetRVLAD
(S_x(k), no centres), NetFV (first- and second-order Fisher vector parts) and NetBOW
(n(k) / T). Each is a ``SoftAssignmentPooling`` registered by name like the layers of
``embeddings.pooling``; shapes as there: ``frames (B, T, D)``, ``mask (B, T)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.assignment import DecoupledAssignment
from embeddings.gmm import GMM
from embeddings.options import NORM_EPS, PoolingConfig
from embeddings.pooling import SoftAssignmentPooling, aggregate
from embeddings.registry import POOLINGS


@POOLINGS.register
class NetRVLAD(SoftAssignmentPooling):
    """Residual-less VLAD: S_x(k) with a decoupled soft assignment (Miech et al. 2017)."""

    name = "netrvlad"

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__(cfg)
        self.out_dim = cfg.num_clusters * cfg.feature_dim
        self.assignment = DecoupledAssignment(cfg)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        frames, p = self.masked_posteriors(frames, mask)
        cfg = self.config
        return aggregate(p, frames, None, "sum", 0.0, cfg.intra_norm, cfg.final_norm)


@POOLINGS.register
class NetFV(SoftAssignmentPooling):
    """Fisher-vector-like pooling (Miech et al. 2017): first and second order parts.

    fv1_k = (S_x - n c_k) / sigma_k,  fv2_k = sum_t p_tk (x_t - c_k)^2 / sigma_k^2 - n_k;
    each part intra-normalised per cluster when ``intra_norm``; output [fv1, fv2].
    """

    name = "netfv"
    centres: nn.Parameter

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__(cfg)
        k, d = cfg.num_clusters, cfg.feature_dim
        self.out_dim = 2 * k * d
        self.assignment = DecoupledAssignment(cfg)
        self.centres = nn.Parameter(torch.randn(k, d) / math.sqrt(d))
        self.log_sigma = nn.Parameter(torch.zeros(k, d))

    @torch.no_grad()
    def from_ubm(self, ubm: GMM) -> NetFV:
        super().from_ubm(ubm)  # assignment and centres
        var = ubm.to(dtype=torch.float64).diagonal_variances()
        self.log_sigma.copy_(0.5 * torch.log(var).to(self.log_sigma.dtype))
        return self

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        frames, p = self.masked_posteriors(frames, mask)
        cfg = self.config
        b = frames.shape[0]
        pt = p.transpose(1, 2)
        n = p.sum(1).unsqueeze(-1)  # (B, K, 1)
        sx = torch.bmm(pt, frames)
        sxx = torch.bmm(pt, frames * frames)
        c = self.centres
        inv_sigma = torch.exp(-self.log_sigma)
        fv1 = (sx - n * c) * inv_sigma
        # sum_t p (x - c)^2 = S_xx - 2 c S_x + n c^2
        fv2 = (sxx - 2.0 * c * sx + n * c * c) * inv_sigma * inv_sigma - n
        if cfg.intra_norm:
            fv1, fv2 = (
                F.normalize(fv1, dim=-1, eps=NORM_EPS),
                F.normalize(fv2, dim=-1, eps=NORM_EPS),
            )
        out = torch.cat([fv1.reshape(b, -1), fv2.reshape(b, -1)], dim=1)
        return F.normalize(out, dim=-1, eps=NORM_EPS) if cfg.final_norm else out


@POOLINGS.register
class NetBOW(SoftAssignmentPooling):
    """Soft bag of visual words: n(k) / T (a histogram that sums to 1 over clusters)."""

    name = "netbow"

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__(cfg)
        self.out_dim = cfg.num_clusters
        self.assignment = DecoupledAssignment(cfg)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _, p = self.masked_posteriors(frames, mask)
        n = p.sum(1)
        out = n / n.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(out, dim=-1, eps=NORM_EPS) if self.config.final_norm else out
