"""GLMix's options (Eq. 18): priors, per-user row limits and the solver's budget.

Its own module so that the solver's parts (``recsys.glmix.random_effects``,
``recsys.glmix.coordinate_descent``) and the model (``recsys.glmix.model``) all read one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GLMixConfig:
    #: L2 strength on the fixed-effect coefficients (not on the global intercept)
    fixed_l2: float = 1.0
    #: L2 strength on each user's slope vector beta_u
    random_l2: float = 10.0
    #: L2 strength on each user's intercept beta_u0
    random_intercept_l2: float = 1.0
    #: users with fewer training rows get no random effect (fixed effect alone)
    min_rows_per_user: int = 1
    #: users with more rows are reservoir-sampled down to this many and reweighted (0 = no cap)
    max_rows_per_user: int = 0
    #: use the video embedding (False: fixed intercept + user intercept only)
    use_video_features: bool = True
    max_passes: int = 8
    #: stop when the log-likelihood per row improves by less than this
    tol: float = 1e-4
    fixed_newton_steps: int = 20
    random_newton_steps: int = 2
    #: users per batched solve (bounds memory: users x p x p float64)
    user_chunk: int = 8192
    seed: int = 0
    #: a third coordinate: per-video random effects (a video's own appeal, learnt from its
    #: impressions; a video the fit never saw gets zero and relies on the fixed effect)
    video_effects: bool = False
    #: L2 strength on each video's intercept
    video_intercept_l2: float = 1.0
    #: per-video slopes on the global features (how much a video's appeal depends on the
    #: user's history similarity); needs global features
    video_slopes: bool = False
    #: L2 strength on each video's slopes
    video_slope_l2: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "fixed_l2",
            "random_l2",
            "random_intercept_l2",
            "video_intercept_l2",
            "video_slope_l2",
        ):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if self.min_rows_per_user < 1 or self.max_rows_per_user < 0:
            raise ValueError("min_rows_per_user must be >= 1 and max_rows_per_user >= 0")
        if self.max_passes < 1:
            raise ValueError("max_passes must be >= 1")


def fixed_prior(cfg: GLMixConfig, p: int) -> np.ndarray:
    """(p,) L2 strengths of the fixed effect [intercept, video, global]: the global
    intercept is not shrunk."""
    lam = np.full(p, cfg.fixed_l2)
    lam[0] = 0.0
    return lam


def random_prior(cfg: GLMixConfig, q: int) -> np.ndarray:
    """(q,) prior precision of a user's effect [intercept, slopes]: the L2 strengths."""
    lam = np.full(q, cfg.random_l2)
    lam[0] = cfg.random_intercept_l2
    return lam


def video_prior(cfg: GLMixConfig, q: int) -> np.ndarray:
    """(q,) prior precision of a video's effect [intercept, slopes on global features]."""
    lam = np.full(q, cfg.video_slope_l2)
    lam[0] = cfg.video_intercept_l2
    return lam
