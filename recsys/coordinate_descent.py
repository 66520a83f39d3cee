"""GLMix's block coordinate descent (Eq. 18), once, over a small backend interface.

    logit p_u(v) = beta_0 + x^T beta  +  beta_u0 + f(v)^T beta_u

As GLMix / Photon-ML fit it:

1. the fixed effect by Newton's method, the random-effect scores as offsets;
2. every user's random effect, the fixed-effect score as offset;
3. repeat until the training log-likelihood per row stops improving.

Where the rows live is the backend's business: ``LocalBackend`` holds arrays in this
process; the Spark engine's backend (``pipelines/spark_glmix.py``) holds a DataFrame
partitioned by user. Both run this loop, so both engines take the same steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from recsys.design import VideoDesign
from recsys.glmix_config import GLMixConfig, random_prior
from recsys.logistic import log_likelihood_torch, logistic_sums, newton_logistic
from recsys.random_effects import (
    design_dot,
    posterior_precision,
    solve_random_effects,
    user_buckets,
)


class GLMixBackend(Protocol):
    """Where the rows are: what the coordinate-descent loop asks of them."""

    def fixed_sums(
        self, beta: np.ndarray, derivatives: bool
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Log-likelihood, gradient and curvature of the fixed effect ``beta`` summed over
        all rows, the current random-effect scores as offsets (``logistic_sums``)."""
        ...

    def random_pass(self, fixed: np.ndarray, steps: int) -> float:
        """Refit every user's effect (``steps`` Newton steps, warm started) with the fixed
        effect ``fixed`` as offset; keep the new random-effect scores; return the
        log-likelihood per row of the full model."""
        ...


def fixed_design(video: np.ndarray, global_feats: np.ndarray | None, use_video: bool) -> np.ndarray:
    """[1, video, global] as one float32 matrix, filled in place (no float64 copies)."""
    e = video.shape[1] if use_video else 0
    g = 0 if global_feats is None else global_feats.shape[1]
    x = np.empty((len(video), 1 + e + g), dtype=np.float32)
    x[:, 0] = 1.0
    if use_video:
        x[:, 1 : 1 + e] = video
    if global_feats is not None:
        x[:, 1 + e :] = global_feats
    return x


def coordinate_descent(
    backend: GLMixBackend,
    cfg: GLMixConfig,
    fixed_l2: np.ndarray,
    init: np.ndarray | None = None,
    warm_start: bool = False,
    on_pass: Callable[[int, float], None] | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Fit the fixed effect and (through the backend) the random effects.

    fixed_l2: (p,) the fixed effect's L2 strengths; init: its starting point (zeros);
    warm_start: ``init`` is already close (a subsample fit), so the first pass takes the
    few Newton steps of a later one. ``timings`` accumulates ``fixed_s`` and ``random_s``.
    Returns the fixed effect over the design's columns and the per-pass history.
    """
    clock = timings if timings is not None else {}
    clock.setdefault("fixed_s", 0.0)
    clock.setdefault("random_s", 0.0)
    p = len(fixed_l2)
    fixed = np.zeros(p) if init is None else np.asarray(init, np.float64)
    history: list[dict[str, float]] = []
    prev = -math.inf
    for k in range(cfg.max_passes):
        # 1. The fixed effect: warm starts make later passes a few Newton steps.
        warm = k > 0 or warm_start
        t0 = time.perf_counter()
        fixed = newton_logistic(
            backend.fixed_sums,
            p,
            fixed_l2,
            max_steps=min(2, cfg.fixed_newton_steps) if warm else cfg.fixed_newton_steps,
            init=fixed,
        )
        clock["fixed_s"] += time.perf_counter() - t0
        # 2. The random effects, warm started after the first pass: one step is enough.
        steps = cfg.random_newton_steps if k == 0 else max(1, cfg.random_newton_steps // 2)
        t0 = time.perf_counter()
        ll = backend.random_pass(fixed, steps)
        clock["random_s"] += time.perf_counter() - t0
        history.append({"pass": k + 1, "log_likelihood_per_row": ll})
        if on_pass is not None:
            on_pass(k + 1, ll)
        if ll - prev < cfg.tol:
            break
        prev = ll
    return fixed, history


class LocalBackend:
    """The rows as arrays in this process.

    user_of_row: (N,) codes 0..U-1; x_fixed: (N, p) float32 design [1, video, global],
    or a ``VideoDesign`` (rows by reference); y: (N,) float64 labels. The random-effect
    design [1, video] is the first q columns (or the design's per-video table).
    """

    def __init__(
        self,
        user_of_row: np.ndarray,
        n_users: int,
        x_fixed: np.ndarray | VideoDesign,
        y: np.ndarray,
        q: int,
        cfg: GLMixConfig,
        rng: np.random.Generator,
    ) -> None:
        self.user_of_row, self.n_users, self.cfg = user_of_row, n_users, cfg
        self.x_fixed, self.y_np = x_fixed, y
        self.row_video: np.ndarray | None = None
        if isinstance(x_fixed, VideoDesign):  # [1, video] per video, gathered per row
            self.z_all = torch.from_numpy(x_fixed.random_table)
            self.row_video = x_fixed.rows
        else:  # [1, video] is the first q columns of the fixed design: a view, no copy
            self.z_all = torch.from_numpy(x_fixed[:, :q])
        self.y = torch.from_numpy(y)
        self.lam = torch.from_numpy(random_prior(cfg, q))
        self.buckets, _ = user_buckets(user_of_row, n_users, cfg, rng, q)
        self.coef = torch.zeros(n_users, q, dtype=torch.float64)
        self.rand_score = torch.zeros(len(y), dtype=torch.float64)
        self.fixed_score = torch.zeros(len(y), dtype=torch.float64)
        self._ones = np.ones(len(y))

    def fixed_sums(
        self, beta: np.ndarray, derivatives: bool
    ) -> tuple[float, np.ndarray, np.ndarray]:
        return logistic_sums(
            self.x_fixed, self.y_np, self.rand_score.numpy(), self._ones, beta, derivatives
        )

    def random_pass(self, fixed: np.ndarray, steps: int) -> float:
        self.fixed_score = torch.from_numpy(design_dot(self.x_fixed, fixed))
        solve_random_effects(
            self.buckets,
            self.z_all,
            self.y,
            self.fixed_score,
            self.coef,
            self.lam,
            steps,
            self.rand_score,
            None if self.row_video is None else torch.from_numpy(self.row_video),
        )
        eta = self.fixed_score + self.rand_score
        return float(log_likelihood_torch(eta, self.y).mean())

    def user_effects(self) -> tuple[np.ndarray, np.ndarray]:
        """(U, q) coefficients and the diagonal of their posterior precision at the last
        pass's logits (how sure the fit is: the online update's prior)."""
        eta = (self.fixed_score + self.rand_score).numpy()
        precision = posterior_precision(
            self.user_of_row,
            self.n_users,
            self.z_all.numpy(),
            eta,
            self.cfg,
            row_video=self.row_video,
        )
        return self.coef.numpy(), precision
