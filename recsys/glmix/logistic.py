"""Penalised logistic regression driven by row sums, and the log-losses both GLMix
engines and the baseline ladder report.

``logistic_sums`` is additive over rows, so ``newton_logistic`` runs the same way over
local row chunks or over a cluster's partitions (``recsys.glmix.coordinate_descent``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.special import expit

from recsys.glmix.design import DesignMatrix, VideoDesign


def log_likelihood(eta: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bernoulli log-likelihood of labels y given logits eta, elementwise (stable)."""
    return y * eta - np.logaddexp(0.0, eta)


def log_likelihood_torch(eta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log_likelihood`` on tensors (the batched per-user solver works in torch)."""
    return y * eta - torch.nn.functional.softplus(eta)


def row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(n,) binary cross-entropy of each row's probability p (clipped to [1e-12, 1 - 1e-12])."""
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return -(y * np.log(q) + (1 - y) * np.log(1 - q))


def mean_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities p (``row_log_loss`` averaged)."""
    return float(np.mean(row_log_loss(y, p)))


#: rows per float64 chunk of a design: two (chunk, p) buffers (~35 MB at p = 65) bound the
#: memory of a pass over any number of rows, and BLAS is as fast as with larger chunks
CHUNK_ROWS = 1 << 16


def logistic_sums(
    x: DesignMatrix,
    y: np.ndarray,
    offset: np.ndarray,
    weights: np.ndarray,
    beta: np.ndarray,
    derivatives: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Log-likelihood sum_i w_i log p(y_i | x_i^T beta + offset_i) of some rows, with its
    gradient X^T w (y - mu) and curvature X^T diag(w mu (1 - mu)) X (zeros when not asked).

    Additive over rows: a distributed fit sums these over partitions (``newton_logistic``
    needs nothing else). Sums run in float64 over row chunks (x may be float32), but for
    each chunk's curvature, which is float32 summed in float64. Weights must be >= 0
    (``fit_logistic`` checks).
    """
    if isinstance(x, VideoDesign) and x.use_video:
        return video_design_sums(x, y, offset, weights, beta, derivatives, chunk_rows)
    p = x.shape[1]
    ll = 0.0
    grad = np.zeros(p)
    curv = np.zeros((p, p))
    # Chunk buffers reused across chunks: a fresh (chunk, p) array per chunk is returned
    # to the OS and faulted in again every time (allocation churn).
    rows = min(chunk_rows, len(x))
    buf = np.empty((rows, p))
    wbuf = np.empty((rows, p), dtype=np.float32) if derivatives else None
    for i in range(0, len(x), chunk_rows):
        c = slice(i, i + chunk_rows)
        x_c = x[c]
        xc = buf[: len(x_c)]
        np.copyto(xc, x_c)
        eta = offset[c] + xc @ beta
        ll += float((weights[c] * (y[c] * eta - np.logaddexp(0.0, eta))).sum())
        if wbuf is not None:
            mu = expit(eta)
            grad += xc.T @ (weights[c] * (y[c] - mu))
            # X^T diag(v) X as (sqrt(v) X)^T (sqrt(v) X): a product of one matrix with
            # its own transpose is BLAS's syrk (half the multiplications, and about 2x
            # the speed of the general product at p = 68 and 64K rows, measured). The
            # (n, p) x (p, n) shape with its long inner side is this pass's largest cost,
            # so a chunk's runs in float32 (2.2x faster than float64 at 64K x 73 here),
            # summed over chunks in float64. The curvature only steers Newton's steps:
            # the optimum is where the float64 gradient (and its penalty) vanishes, so a
            # 1e-6-relative curvature moves no fitted coefficient past the tolerance.
            scaled = wbuf[: len(xc)]
            sqrt_v = np.sqrt(weights[c] * mu * (1 - mu)).astype(np.float32)
            np.multiply(x_c, sqrt_v[:, None], out=scaled, dtype=np.float32)
            curv += scaled.T @ scaled
    return ll, grad, curv


def video_design_sums(
    x: VideoDesign,
    y: np.ndarray,
    offset: np.ndarray,
    weights: np.ndarray,
    beta: np.ndarray,
    derivatives: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[float, np.ndarray, np.ndarray]:
    """``logistic_sums`` of a design [1, f(v_i), g_i] whose video block repeats per video,
    all in float64, the video block summed per video first.

    With s_i = w_i mu_i (1 - mu_i) and S_v = sum_{i: v_i = v} s_i, the video block of the
    curvature is sum_i s_i f(v_i) f(v_i)^T = sum_v S_v f(v) f(v)^T, and likewise its
    gradient (per-video sums of w_i (y_i - mu_i)) and its cross block with g (per-video
    sums of s_i g_i). A pass costs O(N G) over the rows plus O(U E^2) over the U videos
    they name, in place of O(N (1 + E + G)^2): a log has many rows per video.
    """
    used, code = x.videos_used
    q, p, n_used = x.q, x.shape[1], len(used)
    extra = x.extra
    video_score = x.video_scores(beta)  # (U,), gathered per row below
    ll = 0.0
    grad, curv = np.zeros(p), np.zeros((p, p))
    per_video = np.zeros((n_used, 2 + (0 if extra is None else extra.shape[1])))
    for i in range(0, len(code), chunk_rows):
        c = slice(i, i + chunk_rows)
        vc = code[c]
        eta = offset[c] + beta[0] + video_score[vc]
        g = None if extra is None else np.asarray(extra[c], dtype=np.float64)
        if g is not None:
            eta += g @ beta[q:]
        ll += float((weights[c] * (y[c] * eta - np.logaddexp(0.0, eta))).sum())
        if not derivatives:
            continue
        mu = expit(eta)
        r = weights[c] * (y[c] - mu)
        s = weights[c] * mu * (1 - mu)
        per_video[:, 0] += np.bincount(vc, r, n_used)
        per_video[:, 1] += np.bincount(vc, s, n_used)
        grad[0] += r.sum()
        curv[0, 0] += s.sum()
        if g is not None:
            gs = g * s[:, None]
            grad[q:] += g.T @ r
            curv[0, q:] += gs.sum(0)
            curv[q:, q:] += g.T @ gs
            for j in range(g.shape[1]):
                per_video[:, 2 + j] += np.bincount(vc, gs[:, j], n_used)
    if derivatives:
        for sl, t in x.table_chunks():
            sums = t.T @ per_video[sl]  # (E, 2 + G): f^T r, f^T S, f^T (S g)
            grad[1:q] += sums[:, 0]
            curv[0, 1:q] += sums[:, 1]
            curv[1:q, q:] += sums[:, 2:]
            curv[1:q, 1:q] += (t * per_video[sl, 1:2]).T @ t
        # the lower blocks mirror the upper ones; the diagonal blocks' products are
        # symmetric only to rounding
        curv[1:q, 0] = curv[0, 1:q]
        curv[q:, 0] = curv[0, q:]
        curv[q:, 1:q] = curv[1:q, q:].T
        curv = 0.5 * (curv + curv.T)
    return ll, grad, curv


#: (beta, derivatives) -> (log-likelihood, gradient, curvature) summed over all rows
LogisticSums = Callable[[np.ndarray, bool], tuple[float, np.ndarray, np.ndarray]]


def newton_logistic(
    sums: LogisticSums,
    p: int,
    l2: float | np.ndarray = 0.0,
    max_steps: int = 25,
    tol: float = 1e-10,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Penalised logistic regression by Newton's method with step halving, driven by
    row sums only: ``sums`` may loop over local chunks or over a cluster's partitions.

    Maximises loglik(b) - 1/2 sum_j l2_j b_j^2. Every trial point costs one ``sums`` call
    with derivatives, so an accepted step needs no second pass over the data.
    """
    lam = np.broadcast_to(np.asarray(l2, np.float64), (p,)).copy()
    b = np.zeros(p) if init is None else np.asarray(init, np.float64).copy()
    ll, g, h = sums(b, True)
    obj = ll - 0.5 * float((lam * b * b).sum())
    for _ in range(max_steps):
        grad = g - lam * b
        hess = h + np.diag(lam) + 1e-9 * np.eye(p)  # separable data: keep it invertible
        step = np.linalg.solve(hess, grad)
        t = 1.0
        for _ in range(30):
            trial = b + t * step
            ll_t, g_t, h_t = sums(trial, True)
            new = ll_t - 0.5 * float((lam * trial * trial).sum())
            if new >= obj - 1e-12:
                break
            t *= 0.5
        b, g, h = trial, g_t, h_t
        improved = new - obj
        obj = new
        if abs(improved) <= tol * max(1.0, abs(obj)):
            break
    return b


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    l2: float | np.ndarray = 0.0,
    max_steps: int = 25,
    tol: float = 1e-10,
    init: np.ndarray | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> np.ndarray:
    """Penalised logistic regression on in-memory rows (``newton_logistic`` over
    ``logistic_sums``). ``l2`` may be a vector (e.g. 0 for an unpenalised intercept)."""
    n, p = x.shape
    yv = np.asarray(y, dtype=np.float64)
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=np.float64)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if (w < 0).any():
        raise ValueError("row weights must be >= 0")

    def sums(beta: np.ndarray, derivatives: bool) -> tuple[float, np.ndarray, np.ndarray]:
        return logistic_sums(x, yv, off, w, beta, derivatives, chunk_rows)

    return newton_logistic(sums, p, l2, max_steps, tol, init)
