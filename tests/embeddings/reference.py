"""Direct numpy/loop re-computations of the paper's formulas, for small inputs."""

from __future__ import annotations

import numpy as np


def gaussian_pdf(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> float:
    d = len(x)
    diff = x - mu
    inv = np.linalg.inv(cov)
    return float(np.exp(-0.5 * diff @ inv @ diff) / np.sqrt((2 * np.pi) ** d * np.linalg.det(cov)))


def posteriors(
    frames: np.ndarray, w: np.ndarray, mu: np.ndarray, covs: list[np.ndarray]
) -> np.ndarray:
    """Eq. 2 frame by frame, cluster by cluster. frames (T, D) -> (T, K)."""
    t, k = len(frames), len(w)
    p = np.zeros((t, k))
    for i in range(t):
        for j in range(k):
            p[i, j] = w[j] * gaussian_pdf(frames[i], mu[j], covs[j])
        p[i] /= p[i].sum()
    return p


def stats(frames: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 3-5 with loops: n (K,), S_x (K, D), S_x2 (K, D, D)."""
    t, k = p.shape
    d = frames.shape[1]
    n = np.zeros(k)
    sx = np.zeros((k, d))
    sxx = np.zeros((k, d, d))
    for j in range(k):
        for i in range(t):
            n[j] += p[i, j]
            sx[j] += p[i, j] * frames[i]
            sxx[j] += p[i, j] * np.outer(frames[i], frames[i])
    return n, sx, sxx


def vlad(frames: np.ndarray, p: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Eq. 13 as a sum of residuals."""
    out = np.zeros_like(mu)
    for j in range(len(mu)):
        for i in range(len(frames)):
            out[j] += p[i, j] * (frames[i] - mu[j])
    return out


def sgmm_means(frames: np.ndarray, p: np.ndarray, mu: np.ndarray, gamma: float) -> np.ndarray:
    """Eq. 10 with lambda of Eq. 12; a cluster with n = 0 keeps the UBM mean."""
    n, sx, _ = stats(frames, p)
    out = np.zeros_like(mu)
    for j in range(len(mu)):
        if n[j] + gamma == 0:
            out[j] = mu[j]
            continue
        lam = n[j] / (n[j] + gamma)
        ml = sx[j] / n[j] if n[j] > 0 else np.zeros_like(mu[j])
        out[j] = lam * ml + (1 - lam) * mu[j]
    return out


def l2n(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
