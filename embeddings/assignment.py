"""The soft assignment P(k|x) of the trainable cluster layers: decoupled (Eq. 14) or
coupled to a trainable GMM (Eq. 2) with a constrained covariance."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.gmm import GMM
from embeddings.options import PoolingConfig


class DecoupledAssignment(nn.Module):
    """P(k|x) = softmax_k(u_k^T x + b_k) (Eq. 14); parameters independent of the centres."""

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__()
        k, d = cfg.num_clusters, cfg.feature_dim
        self.weight = nn.Parameter(torch.randn(k, d) / math.sqrt(d))  # u_k: (K, D)
        self.bias = nn.Parameter(torch.zeros(k))  # b_k: (K,)

    def logits(self, frames: torch.Tensor, centres: torch.Tensor | None = None) -> torch.Tensor:
        """frames (B, T, D) -> (B, T, K); the centres play no part (decoupled)."""
        return F.linear(frames, self.weight, self.bias)

    @torch.no_grad()
    def init_from_ubm(self, ubm: GMM) -> None:
        """Eq. 20-21: u_k = Sigma^-1 mu_k, b_k = ln w_k - 1/2 mu_k^T Sigma^-1 mu_k."""
        u, b = ubm.shared_precision_form()
        self.weight.copy_(u.to(self.weight.dtype))
        self.bias.copy_(b.to(self.bias.dtype))


class GMMAssignment(nn.Module):
    """P(k|x) of Eq. 2 under a trainable GMM that shares its means with the centres.

    Free parameters: ``weight_logits (K,)`` (w = softmax; fixed at uniform for
    ``uniform_priors``) and ``log_sigma`` whose shape sets the covariance:
    (1, 1) shared spherical, (K, 1) spherical, (1, D) shared diagonal, (K, D) diagonal.
    """

    weight_logits: torch.Tensor
    # variant -> (sigma per cluster?, sigma per dimension?)
    _SIGMA_SHAPES: ClassVar[dict[str, tuple[bool, bool]]] = {
        "uniform_priors": (False, False),
        "shared_spherical": (False, False),
        "spherical": (True, False),
        "shared_diagonal": (False, True),
        "diagonal": (True, True),
    }

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__()
        if cfg.assignment not in self._SIGMA_SHAPES:
            raise ValueError(f"GMMAssignment needs a coupled assignment, got {cfg.assignment!r}")
        self.variant = cfg.assignment
        k, d = cfg.num_clusters, cfg.feature_dim
        per_cluster, per_dim = self._SIGMA_SHAPES[cfg.assignment]
        self.num_clusters, self.feature_dim = k, d
        self.log_sigma = nn.Parameter(torch.zeros(k if per_cluster else 1, d if per_dim else 1))
        if cfg.assignment == "uniform_priors":
            self.register_buffer("weight_logits", torch.zeros(k))
        else:
            self.weight_logits = nn.Parameter(torch.zeros(k))

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.weight_logits, dim=0)

    @property
    def variances(self) -> torch.Tensor:
        """sigma^2 broadcast to (K, D)."""
        return torch.exp(2.0 * self.log_sigma).expand(self.num_clusters, self.feature_dim)

    def logits(self, frames: torch.Tensor, centres: torch.Tensor | None) -> torch.Tensor:
        """log w_k + log N(x; mu_k, Sigma_k) up to terms equal for all k; (B, T, K)."""
        if centres is None:
            raise ValueError("a coupled GMM assignment needs the layer's centres (its means)")
        k, d = self.num_clusters, self.feature_dim
        prec = torch.exp(-2.0 * self.log_sigma)  # (K|1, D|1)
        prec_kd = prec.expand(k, d)
        log_w = torch.log_softmax(self.weight_logits, dim=0)
        const = log_w - 0.5 * (
            (prec_kd * centres * centres).sum(1) + 2.0 * self.log_sigma.expand(k, d).sum(1)
        )
        out = F.linear(frames, prec_kd * centres, const)  # x^T Sigma_k^-1 mu_k + const_k
        if prec.shape[0] == k:  # per-cluster covariance: x^T Sigma_k^-1 x differs across k
            sq = frames * frames
            if prec.shape[1] == d:  # - x^2 Sigma_k^-1 / 2 added by the product itself
                flat = torch.addmm(out.reshape(-1, k), sq.reshape(-1, d), prec.t(), alpha=-0.5)
                out = flat.reshape(out.shape)
            else:
                out = torch.addcmul(
                    out, sq.sum(-1, keepdim=True), prec.reshape(1, 1, k), value=-0.5
                )
        # A shared covariance adds the same x^T Sigma^-1 x to every k: it cancels in Eq. 2.
        return out

    @torch.no_grad()
    def init_from_ubm(self, ubm: GMM) -> None:
        var = ubm.diagonal_variances().to(self.log_sigma.dtype)  # (K, D)
        w = ubm.weights.to(var.dtype)
        per_cluster, per_dim = self._SIGMA_SHAPES[self.variant]
        if not per_cluster:
            var = (w[:, None] * var).sum(0, keepdim=True)  # weighted average over clusters
        if not per_dim:
            var = var.mean(1, keepdim=True)
        self.log_sigma.copy_(0.5 * torch.log(var))
        if self.variant != "uniform_priors":
            self.weight_logits.copy_(torch.log(w))


def make_assignment(cfg: PoolingConfig) -> DecoupledAssignment | GMMAssignment:
    return DecoupledAssignment(cfg) if cfg.assignment == "decoupled" else GMMAssignment(cfg)


# --------------------------------------------------------------------------- layers
