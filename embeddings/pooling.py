"""Cluster-and-aggregate pooling layers (sections 3.1-3.3 of the paper).

Every layer maps ``frames (B, T, D)`` and an optional ``mask (B, T)`` (True = real
frame; padded frames have no effect) to ``(B, out_dim)``.

=========  ====================================================  =========
name       representation per cluster k                          out_dim
=========  ====================================================  =========
avg        mean of the frames                                    D
vlad       S_x(k) - n(k) mu_k over a fixed UBM (Eq. 13)          K * D
sgmm       (S_x(k) + gamma mu_k) / (n(k) + gamma), fixed UBM     K * D
netvlad    Eq. 13 with trainable assignment and centres          K * D
dsgmm      Eq. 10 with trainable assignment and centres          K * D
netrvlad   S_x(k) (no centres; Miech et al. 2017)                K * D
netfv      first- and second-order Fisher vector parts           2 * K * D
netbow     n(k) / T, the soft bag of visual words                K
=========  ====================================================  =========

Assignment (``P(k|x)``) for the trainable layers is either ``decoupled``
(Eq. 14: softmax of ``u_k^T x + b_k``) or coupled to a trainable GMM (Eq. 2) with
the covariance constrained as ``uniform_priors``, ``shared_spherical``,
``spherical``, ``shared_diagonal`` or ``diagonal``; weights are a softmax and
standard deviations an exp of free parameters (Variani et al. 2015), so they stay
valid under any optimizer step.

The aggregation never builds a (B, K, D, T) tensor: S_x is one ``bmm`` of the
(B, K, T) posteriors with the (B, T, D) frames, and the smoothing, centring and
normalisation work in place on that (B, K, D) result at inference time.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.aggregation import aggregate
from embeddings.assignment import DecoupledAssignment, GMMAssignment, make_assignment
from embeddings.gmm import GMM
from embeddings.options import (
    ASSIGNMENTS,
    NORM_EPS,
    ClusterOptions,
    PoolingConfig,
    PoolingOptions,
)
from embeddings.registry import POOLINGS

__all__ = [
    "ASSIGNMENTS",
    "NORM_EPS",
    "POOLINGS",
    "ClusterOptions",
    "DecoupledAssignment",
    "GMMAssignment",
    "PoolingConfig",
    "PoolingOptions",
]


def _check_input(frames: torch.Tensor, mask: torch.Tensor | None, feature_dim: int) -> None:
    if frames.ndim != 3:
        raise ValueError(f"frames must be (B, T, D), got shape {tuple(frames.shape)}")
    if frames.shape[-1] != feature_dim:
        raise ValueError(
            f"frames have D = {frames.shape[-1]}, this layer expects D = {feature_dim}"
        )
    if mask is not None and tuple(mask.shape) != tuple(frames.shape[:2]):
        raise ValueError(
            f"mask must be (B, T) = {tuple(frames.shape[:2])}, got {tuple(mask.shape)}"
        )


def _check_ubm_shape(ubm: GMM, expected: torch.Size) -> None:
    if ubm.means.shape != expected:
        raise ValueError(f"UBM has shape {tuple(ubm.means.shape)}, layer expects {tuple(expected)}")


def _apply_mask(
    frames: torch.Tensor, posteriors: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if mask is None:
        return frames, posteriors
    pad = ~mask.bool()
    posteriors = posteriors.masked_fill(pad.unsqueeze(-1), 0.0)
    # Padded frames meet only zero posteriors, so zeros there (what the loaders pad with)
    # add exactly nothing as they are: the (B, T, D) copy is made only for other padding.
    # masked_fill, not a multiply: padding may hold NaN/inf, and 0 * inf is NaN (NaN
    # counts as non-zero in ``any``).
    if bool(pad.any()) and bool(frames[pad].any()):
        frames = frames.masked_fill(pad.unsqueeze(-1), 0.0)
    return frames, posteriors


# --------------------------------------------------------------------------- assignment


class Pooling(nn.Module):
    """Base class: ``forward(frames (B, T, D), mask (B, T) | None) -> (B, out_dim)``.

    A layer is declared once: a subclass with its ``name`` and what it needs, decorated
    with ``@POOLINGS.register``; ``build_pooling`` and every trainer find it by name.
    """

    name: str = ""
    #: cannot run without a UBM (``from_ubm`` first)
    needs_ubm: ClassVar[bool] = False
    #: has clusters a UBM can start (``embeddings.ubm_start``)
    has_clusters: ClassVar[bool] = True
    #: can also give each cluster's share of the frames (``pool_with_occupancy``)
    offers_occupancy: ClassVar[bool] = False
    out_dim: int

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__()
        self.config = cfg

    def from_ubm(self, ubm: GMM) -> Pooling:
        """Initialise from a fitted UBM (no-op for layers without clusters); returns self."""
        return self


@POOLINGS.register
class AveragePooling(Pooling):
    """Mean of the (unmasked) frames; a video with no frames pools to zeros."""

    name = "avg"
    has_clusters = False

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__(cfg)
        self.out_dim = cfg.feature_dim

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(frames, mask, self.config.feature_dim)
        if mask is None:
            return frames.mean(1)
        m = mask.bool().unsqueeze(-1)
        count = m.sum(1).to(frames.dtype).clamp_min(1.0)
        return frames.masked_fill(~m, 0.0).sum(1) / count


class UBMPooling(Pooling):
    """VLAD (Eq. 13) or SGMM (Eq. 10) with posteriors (Eq. 2) from a fixed, EM-trained UBM."""

    needs_ubm = True

    means: torch.Tensor
    proj: torch.Tensor
    bias: torch.Tensor
    quad: torch.Tensor
    fitted: torch.Tensor
    has_quad: torch.Tensor

    def __init__(self, cfg: PoolingConfig, mode: str) -> None:
        super().__init__(cfg)
        if mode not in ("residual", "smoothed_mean"):
            raise ValueError(f"mode must be residual or smoothed_mean, got {mode!r}")
        self.mode = mode
        self.name = "vlad" if mode == "residual" else "sgmm"
        k, d = cfg.num_clusters, cfg.feature_dim
        self.out_dim = k * d
        # log w_k + log N(x; k) = x^T proj_k + bias_k - 1/2 (x*x)^T quad_k (+ terms shared by all k)
        self.register_buffer("means", torch.zeros(k, d))
        self.register_buffer("proj", torch.zeros(k, d))
        self.register_buffer("bias", torch.zeros(k))
        self.register_buffer("quad", torch.zeros(k, d))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("has_quad", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def from_ubm(self, ubm: GMM) -> UBMPooling:
        _check_ubm_shape(ubm, self.means.shape)
        ubm = ubm.to(dtype=torch.float64)
        if ubm.covariance_type == "shared_full":
            proj, bias = ubm.shared_precision_form()
            quad = torch.zeros_like(proj)
        else:
            var = ubm.diagonal_variances()
            quad = 1.0 / var
            proj = ubm.means * quad
            bias = torch.log(ubm.weights) - 0.5 * (
                (ubm.means**2 * quad).sum(1) + torch.log(var).sum(1)
            )
        dt = self.means.dtype
        self.means.copy_(ubm.means.to(dt))
        self.proj.copy_(proj.to(dt))
        self.bias.copy_(bias.to(dt))
        self.quad.copy_(quad.to(dt))
        self.fitted.fill_(True)
        self.has_quad.fill_(bool(quad.abs().sum() > 0))
        return self

    def posteriors(self, frames: torch.Tensor) -> torch.Tensor:
        logits = F.linear(frames, self.proj, self.bias)
        if bool(self.has_quad):  # per-cluster covariances: x^T Sigma_k^-1 x differs across k
            logits = logits - 0.5 * F.linear(frames * frames, self.quad)
        return torch.softmax(logits, dim=-1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(frames, mask, self.config.feature_dim)
        if not bool(self.fitted):
            raise RuntimeError(f"{self.name} pooling needs a UBM: call .from_ubm(gmm) first")
        frames, p = _apply_mask(frames, self.posteriors(frames), mask)
        cfg = self.config
        return aggregate(
            p, frames, self.means, self.mode, cfg.gamma, cfg.intra_norm, cfg.final_norm
        )


@POOLINGS.register
class VLADPooling(UBMPooling):
    """VLAD (Eq. 13) over a fixed UBM."""

    name = "vlad"

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__(replace(cfg, assignment="decoupled"), "residual")


@POOLINGS.register
class SGMMPooling(UBMPooling):
    """SGMM (Eq. 10) over a fixed UBM."""

    name = "sgmm"

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__(replace(cfg, assignment="decoupled"), "smoothed_mean")


class SoftAssignmentPooling(Pooling):
    """Base of the layers with a trainable soft assignment P(k|x) (and optionally centres).

    ``from_ubm`` starts the assignment (Eq. 20-21) and any centres from a fitted UBM.
    """

    assignment: DecoupledAssignment | GMMAssignment
    centres: nn.Parameter | None

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__(cfg)
        self.register_parameter("centres", None)  # layers with centres replace it

    def posteriors(self, frames: torch.Tensor) -> torch.Tensor:
        """P(k|x) for frames (B, T, D) -> (B, T, K)."""
        return torch.softmax(self.assignment.logits(frames, self.centres), dim=-1)

    def masked_posteriors(
        self, frames: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked input, then (frames, posteriors) with padded frames zeroed in both."""
        _check_input(frames, mask, self.config.feature_dim)
        return _apply_mask(frames, self.posteriors(frames), mask)

    @torch.no_grad()
    def soften_assignment(self, temperature: float) -> SoftAssignmentPooling:
        """Temper P(k|x) after ``from_ubm``: decoupled logits (Eq. 14) are divided by
        ``temperature``; a coupled GMM's variances are multiplied by it. Eq. 20-21 from a
        UBM fitted on well-separated clusters start nearly hard assignments, whose
        gradients vanish; a temperature above 1 keeps them soft enough to train."""
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        if isinstance(self.assignment, DecoupledAssignment):
            self.assignment.weight.div_(temperature)
            self.assignment.bias.div_(temperature)
        else:
            self.assignment.log_sigma.add_(0.5 * math.log(temperature))
        return self

    @torch.no_grad()
    def from_ubm(self, ubm: GMM) -> SoftAssignmentPooling:
        _check_ubm_shape(ubm, torch.Size((self.config.num_clusters, self.config.feature_dim)))
        ubm64 = ubm.to(dtype=torch.float64)
        if self.centres is not None:
            self.centres.copy_(ubm64.means.to(self.centres.dtype))
        self.assignment.init_from_ubm(ubm64)
        return self


class ClusterPooling(SoftAssignmentPooling):
    """Trainable assignment and centres: NetVLAD (residual) and DSGMM (smoothed mean)."""

    mode = "residual"
    offers_occupancy = True
    centres: nn.Parameter

    def __init__(self, cfg: PoolingConfig) -> None:
        super().__init__(cfg)
        k, d = cfg.num_clusters, cfg.feature_dim
        self.out_dim = k * d
        self.centres = nn.Parameter(torch.randn(k, d) / math.sqrt(d))  # mu_k: (K, D)
        self.assignment = make_assignment(cfg)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool_with_occupancy(frames, mask)[0]

    def pool_with_occupancy(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, K * D), occupancy (B, K)): the layer's output and n(k) / T, the share
        of the video's frames in each cluster (the ML weights of Eq. 9), from one set of
        posteriors. Intra-normalisation discards how many frames a cluster got; the
        occupancy keeps it. A video without frames has zero occupancy."""
        frames, p = self.masked_posteriors(_autocast_once(frames, self.assignment), mask)
        cfg = self.config
        n = p.sum(1)  # (B, K)
        occupancy = n / n.sum(1, keepdim=True).clamp_min(1.0)
        pooled = aggregate(
            p, frames, self.centres, self.mode, cfg.gamma, cfg.intra_norm, cfg.final_norm
        )
        return pooled, occupancy


def _autocast_once(
    frames: torch.Tensor, assignment: DecoupledAssignment | GMMAssignment
) -> torch.Tensor:
    """Under autocast, the frames in the autocast type once: both products of a
    decoupled layer (the assignment's and S_x) would each cast the whole (B, T, D)
    batch to it, to the same values. (A coupled GMM also squares the frames outside any
    product, in float32: left as it is.)"""
    device = frames.device.type
    if (
        frames.dtype == torch.float32
        and isinstance(assignment, DecoupledAssignment)
        and torch.is_autocast_enabled(device)
    ):
        return frames.to(torch.get_autocast_dtype(device))
    return frames


@POOLINGS.register
class NetVLAD(ClusterPooling):
    name = "netvlad"
    mode = "residual"


@POOLINGS.register
class DSGMM(ClusterPooling):
    name = "dsgmm"
    mode = "smoothed_mean"


def build_pooling(
    name: str,
    feature_dim: int,
    num_clusters: int = 64,
    *,
    gamma: float = 0.125,
    intra_norm: bool = True,
    final_norm: bool = False,
    assignment: str = "decoupled",
    ubm: GMM | None = None,
    **unknown: Any,
) -> Pooling:
    """Build a pooling layer by name (``POOLINGS``: the registered layers).

    Options that a layer does not use (``gamma`` for netvlad, ``assignment`` for avg, ...)
    are accepted and ignored, so callers can pass one option set to every method.
    ``ubm`` initialises the layer from a fitted UBM (required before vlad/sgmm run).
    """
    if unknown:
        raise TypeError(f"unknown pooling option(s): {', '.join(sorted(unknown))}")
    cls = pooling_class(name)
    cfg = PoolingConfig(
        feature_dim=feature_dim,
        num_clusters=num_clusters,
        gamma=gamma,
        intra_norm=intra_norm,
        final_norm=final_norm,
        assignment=assignment,
    )
    layer = cls(cfg)
    if ubm is not None:
        layer.from_ubm(ubm)
    return layer


def pooling_class(name: str) -> type[Pooling]:
    """The layer registered under ``name`` (ValueError naming the choices)."""
    cls: type[Pooling] = POOLINGS[name]
    return cls


def build_pooling_from(options: PoolingOptions, feature_dim: int) -> Pooling:
    """``build_pooling`` from a model config that extends ``PoolingOptions``."""
    return build_pooling(
        options.pooling,
        feature_dim,
        options.num_clusters,
        gamma=options.gamma,
        intra_norm=options.intra_norm,
        final_norm=options.final_norm,
        assignment=options.assignment,
    )
