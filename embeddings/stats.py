"""Sufficient statistics of a video under a GMM and the smoothed video GMM (Eq. 3-12).

Shapes: ``frames (B, T, D)``, ``posteriors (B, T, K)``, ``mask (B, T)`` (True = real
frame). Padded frames get zero posterior mass, so they contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from embeddings.gmm import GMM

#: Below this total (n + gamma) a cluster's smoothed estimate falls back to the UBM;
#: it keeps gamma = 0 finite (values and gradients) for clusters without frames.
MASS_EPS = 1e-6


@dataclass(frozen=True)
class SufficientStats:
    """n(k) (B, K) (Eq. 3), S_x(k) (B, K, D) (Eq. 4), S_x2(k) (Eq. 5) or None.

    ``sxx`` is (B, K, D) for the diagonal of Eq. 5 or (B, K, D, D) for the full matrix.
    """

    n: torch.Tensor
    sx: torch.Tensor
    sxx: torch.Tensor | None = None


def masked_posteriors(posteriors: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return posteriors
    return posteriors.masked_fill(~mask.bool().unsqueeze(-1), 0.0)


def sufficient_statistics(
    frames: torch.Tensor,
    posteriors: torch.Tensor,
    mask: torch.Tensor | None = None,
    second_order: str = "none",
) -> SufficientStats:
    """Eq. 3-5 for a batch of videos. ``second_order``: "none", "diag" or "full"."""
    if second_order not in ("none", "diag", "full"):
        raise ValueError(f"second_order must be none, diag or full, got {second_order!r}")
    p = masked_posteriors(posteriors, mask)
    if mask is not None:
        # Padded frames may hold anything; zero them so 0 * inf cannot poison the sums.
        frames = frames.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
    pt = p.transpose(1, 2)  # (B, K, T)
    n = p.sum(1)
    sx = torch.bmm(pt, frames)
    sxx: torch.Tensor | None = None
    if second_order == "diag":
        sxx = torch.bmm(pt, frames * frames)
    elif second_order == "full":
        # (B, K, D, D) = sum_t p_tk x_t x_t^T; only for small D (analysis, tests).
        sxx = torch.einsum("btk,btd,bte->bkde", p, frames, frames)
    return SufficientStats(n=n, sx=sx, sxx=sxx)


def relevance(n: torch.Tensor, gamma: float) -> torch.Tensor:
    """lambda = n / (n + gamma) (Eq. 12), defined as 0 when n + gamma == 0."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    return n / (n + gamma).clamp_min(MASS_EPS)


def smoothed_means(stats: SufficientStats, ubm_means: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 10: lambda S_x/n + (1 - lambda) mu = (S_x + gamma mu) / (n + gamma); (B, K, D).

    Written as mu + (S_x - n mu) / (n + gamma), which equals the above and stays finite
    for a cluster with no frames at gamma = 0 (it returns the UBM mean there).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    n = stats.n.unsqueeze(-1)
    resid = stats.sx - n * ubm_means
    return ubm_means + resid / (n + gamma).clamp_min(MASS_EPS)


def vlad(stats: SufficientStats, centres: torch.Tensor) -> torch.Tensor:
    """Eq. 13: S_x - n mu; (B, K, D)."""
    return stats.sx - stats.n.unsqueeze(-1) * centres


@dataclass(frozen=True)
class SmoothedGMM:
    weights: torch.Tensor  # (B, K)
    means: torch.Tensor  # (B, K, D)
    covariances: torch.Tensor  # (B, K, D) diagonal or (B, K, D, D) full


def smoothed_gmm(
    stats: SufficientStats,
    ubm: GMM,
    gamma: float | None = None,
    gamma_w: float | None = None,
    gamma_mu: float | None = None,
    gamma_sigma: float | None = None,
) -> SmoothedGMM:
    """The video GMM of Eq. 9-11, smoothed toward ``ubm``.

    One ``gamma`` for all statistics, or one per statistic (``gamma_w``, ``gamma_mu``,
    ``gamma_sigma``; each defaults to ``gamma``). Covariances are diagonal when
    ``stats.sxx`` is (B, K, D) and full when it is (B, K, D, D).
    """
    g_w = gamma_w if gamma_w is not None else gamma
    g_mu = gamma_mu if gamma_mu is not None else gamma
    g_s = gamma_sigma if gamma_sigma is not None else gamma
    if g_w is None or g_mu is None or g_s is None:
        raise ValueError("give gamma, or all of gamma_w, gamma_mu and gamma_sigma")
    if stats.sxx is None:
        raise ValueError(
            "smoothed covariances need second-order statistics (second_order='diag' or 'full')"
        )
    n = stats.n
    total = n.sum(1, keepdim=True).clamp_min(MASS_EPS)
    lam_w = relevance(n, g_w)
    weights = lam_w * n / total + (1 - lam_w) * ubm.weights  # Eq. 9
    # With one lambda per cluster Eq. 9 need not sum to one; like Reynolds et al. (2000)
    # we rescale so the weights form a distribution.
    weights = weights / weights.sum(1, keepdim=True)
    means = smoothed_means(stats, ubm.means, g_mu)  # Eq. 10
    lam_s = relevance(n, g_s).unsqueeze(-1)
    nn = n.clamp_min(MASS_EPS).unsqueeze(-1)
    full = stats.sxx.ndim == 4
    if full:
        if ubm.covariance_type == "shared_full":
            ubm_cov = ubm.covariance.expand(ubm.num_clusters, -1, -1)
        else:
            ubm_cov = torch.diag_embed(ubm.diagonal_variances())
        prior = ubm.means.unsqueeze(-1) * ubm.means.unsqueeze(-2) + ubm_cov  # (K, D, D)
        cov = (
            lam_s.unsqueeze(-1) * stats.sxx / nn.unsqueeze(-1)
            + (1 - lam_s.unsqueeze(-1)) * prior
            - means.unsqueeze(-1) * means.unsqueeze(-2)
        )  # Eq. 11
    else:
        prior = ubm.means**2 + ubm.diagonal_variances()
        cov = lam_s * stats.sxx / nn + (1 - lam_s) * prior - means**2  # Eq. 11, diagonal
    return SmoothedGMM(weights=weights, means=means, covariances=cov)
