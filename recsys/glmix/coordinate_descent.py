"""GLMix's block coordinate descent (Eq. 18), once, over a small backend interface.

    logit p_u(v) = beta_0 + x^T beta  +  beta_u0 + f(v)^T beta_u

As GLMix / Photon-ML fit it:

1. the fixed effect by Newton's method, the random-effect scores as offsets;
2. each random-effect coordinate in turn - every user's effect, then (when the model has
   them) every video's - the other coordinates' scores as offset;
3. repeat until the training log-likelihood per row stops improving.

Where the rows live is the backend's business: ``LocalBackend`` holds arrays in this
process; the Spark engine's backend (``pipelines/spark/glmix.py``) holds a DataFrame
partitioned by user for the users' pass and by video for the videos'. Both run this
loop, so both engines take the same steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from recsys.glmix.config import GLMixConfig, random_prior, video_prior
from recsys.glmix.design import VideoDesign
from recsys.glmix.logistic import log_likelihood_torch, logistic_sums, newton_logistic
from recsys.glmix.random_effects import (
    Bucket,
    design_dot,
    entity_buckets,
    posterior_precision,
    solve_random_effects,
)

#: the random-effect coordinates, in the order each pass fits them
USER, VIDEO = "user", "video"


class GLMixBackend(Protocol):
    """Where the rows are: what the coordinate-descent loop asks of them."""

    #: the random-effect coordinates this model has, in the order a pass fits them
    coordinates: tuple[str, ...]
    #: the number of rows
    n: int

    def fixed_sums(
        self, beta: np.ndarray, derivatives: bool
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Log-likelihood, gradient and curvature of the fixed effect ``beta`` summed over
        all rows, the current random-effect scores as offsets (``logistic_sums``)."""
        ...

    def random_pass(self, coordinate: str, fixed: np.ndarray, steps: int) -> float:
        """Refit every effect of ``coordinate`` (``steps`` Newton steps, warm started)
        with the fixed effect ``fixed`` and the other coordinates' scores as offset; keep
        the new scores; return the log-likelihood per row of the full model."""
        ...

    def recenter(self, coordinate: str) -> float:
        """Take the mean intercept m out of ``coordinate``'s effects (every one minus m,
        so every score minus m) and return it: the loop adds it to the fixed intercept,
        which leaves every prediction as it was. Only when every row has an unweighted
        effect of this coordinate (else return 0 and change nothing)."""
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
        for coordinate in backend.coordinates:
            ll = backend.random_pass(coordinate, fixed, steps)
            if len(backend.coordinates) > 1:
                # With two crossed coordinates, a shift of all of one's intercepts against
                # the fixed intercept is nearly flat in the likelihood: block descent
                # crawls along it (0.3 off after 8 passes on a small log). At the optimum
                # each coordinate's intercepts sum to zero (equal priors, every row
                # covered), so moving their mean into the fixed intercept is exact.
                fixed = fixed.copy()
                fixed[0] += backend.recenter(coordinate)
        clock["random_s"] += time.perf_counter() - t0
        if not backend.coordinates:  # the fixed effect alone: Newton solved it
            ll = backend.fixed_sums(fixed, False)[0] / max(backend.n, 1)
        history.append({"pass": k + 1, "log_likelihood_per_row": ll})
        if on_pass is not None:
            on_pass(k + 1, ll)
        if ll - prev < cfg.tol:
            break
        prev = ll
    return fixed, history


@dataclass(frozen=True)
class CoordinateRows:
    """One random-effect coordinate as ``LocalBackend`` takes it: every row's entity and
    design, the prior and the row limits. A model is a fixed effect plus a list of these
    (the co-watch model: users on [1, video], then optionally videos on [1, global]).

    of_row: (N,) entity code 0..n-1 of each row; z: (N, q) float32 design ([1, features]),
    or (V, q) gathered per row through ``row_map`` (N,); prior: (q,) L2 strengths
    [intercept, slopes]; entities with fewer than ``min_rows`` rows get no effect; above
    ``max_rows`` (0: no cap) they are subsampled and reweighted.
    """

    name: str
    of_row: np.ndarray
    n: int
    z: torch.Tensor
    prior: np.ndarray
    min_rows: int = 1
    max_rows: int = 0
    row_map: torch.Tensor | None = None


@dataclass
class _Coordinate:
    """One random-effect coordinate's rows and state in this process."""

    of_row: np.ndarray  # (N,) entity code 0..K-1
    z: torch.Tensor  # (N, q) design, or (V, q) gathered through ``row_map``
    row_map: torch.Tensor | None
    lam: torch.Tensor  # (q,) prior precision
    min_rows: int
    max_rows: int
    buckets: list[Bucket]
    coef: torch.Tensor  # (K, q) float64
    score: torch.Tensor  # (N,) float64: this coordinate's logit of each row


class LocalBackend:
    """The rows as arrays in this process.

    x_fixed: (N, p) float32 design [1, features] of the fixed effect, or a ``VideoDesign``
    (rows by reference); y: (N,) float64 labels; coordinates: the random effects in the
    order each pass fits them (``CoordinateRows``); ``batch``: entities per batched solve.
    ``LocalBackend.cowatch`` builds the co-watch model's (Eq. 18) from its arrays.
    """

    def __init__(
        self,
        x_fixed: np.ndarray | VideoDesign,
        y: np.ndarray,
        coordinates: list[CoordinateRows],
        batch: int,
        rng: np.random.Generator,
    ) -> None:
        self.x_fixed, self.y_np = x_fixed, y
        self.n = n = len(y)
        self.coords: dict[str, _Coordinate] = {}
        for c in coordinates:  # in order: the buckets' draws from ``rng`` are the same
            q = c.z.shape[1]
            buckets, _ = entity_buckets(c.of_row, c.n, c.min_rows, c.max_rows, batch, rng, q)
            self.coords[c.name] = _Coordinate(
                c.of_row,
                c.z,
                c.row_map,
                torch.from_numpy(np.asarray(c.prior, dtype=np.float64)),
                c.min_rows,
                c.max_rows,
                buckets,
                torch.zeros(c.n, q, dtype=torch.float64),
                torch.zeros(n, dtype=torch.float64),
            )
        if len(self.coords) != len(coordinates):
            raise ValueError("coordinate names must differ")
        self.coordinates: tuple[str, ...] = tuple(self.coords)
        self.y = torch.from_numpy(y)
        self.fixed_score = torch.zeros(n, dtype=torch.float64)
        self._fixed: np.ndarray | None = None
        self._ones = np.ones(n)

    @classmethod
    def cowatch(
        cls,
        user_of_row: np.ndarray,
        n_users: int,
        x_fixed: np.ndarray | VideoDesign,
        y: np.ndarray,
        q: int,
        cfg: GLMixConfig,
        rng: np.random.Generator,
        video_of_row: np.ndarray | None = None,
        n_videos: int = 0,
        video_z: np.ndarray | None = None,
    ) -> LocalBackend:
        """The co-watch model's coordinates (Eq. 18): per user on [1, video], the first
        ``q`` columns of the fixed design (or the design's per-video table); with
        ``video_of_row`` (N,) codes 0..V-1 per video on ``video_z`` (N, qv) ([1, global
        features]; None: the intercept alone)."""
        if isinstance(x_fixed, VideoDesign):  # [1, video] per video, gathered per row
            z_user = torch.from_numpy(x_fixed.random_table)
            row_map = torch.from_numpy(x_fixed.rows)
        else:  # [1, video] is the first q columns of the fixed design: a view, no copy
            z_user, row_map = torch.from_numpy(x_fixed[:, :q]), None
        coords = [
            CoordinateRows(
                USER,
                user_of_row,
                n_users,
                z_user,
                random_prior(cfg, q),
                cfg.min_rows_per_user,
                cfg.max_rows_per_user,
                row_map,
            )
        ]
        if video_of_row is not None:
            # The intercept's design is a column of ones: a broadcast view, no (N,) copy.
            zv = torch.ones(1, 1, dtype=torch.float32).expand(len(y), 1)
            if video_z is not None:
                zv = torch.from_numpy(np.ascontiguousarray(video_z, dtype=np.float32))
            coords.append(
                CoordinateRows(VIDEO, video_of_row, n_videos, zv, video_prior(cfg, zv.shape[1]))
            )
        return cls(x_fixed, y, coords, cfg.user_chunk, rng)

    def _random_total(self, leave_out: str | None = None) -> torch.Tensor:
        """The random-effect scores summed over the coordinates (but ``leave_out``)."""
        scores = [c.score for name, c in self.coords.items() if name != leave_out]
        if len(scores) == 1:  # one coordinate (users alone): its scores, no (N,) copy
            return scores[0]
        total = torch.zeros(len(self.y_np), dtype=torch.float64)
        for score in scores:
            total += score
        return total

    def fixed_sums(
        self, beta: np.ndarray, derivatives: bool
    ) -> tuple[float, np.ndarray, np.ndarray]:
        return logistic_sums(
            self.x_fixed, self.y_np, self._random_total().numpy(), self._ones, beta, derivatives
        )

    def random_pass(self, coordinate: str, fixed: np.ndarray, steps: int) -> float:
        if self._fixed is None or not np.array_equal(self._fixed, fixed):
            self.fixed_score = torch.from_numpy(design_dot(self.x_fixed, fixed))
            self._fixed = np.array(fixed, copy=True)
        c = self.coords[coordinate]
        offset = self.fixed_score + self._random_total(leave_out=coordinate)
        solve_random_effects(
            c.buckets, c.z, self.y, offset, c.coef, c.lam, steps, c.score, c.row_map
        )
        eta = offset + c.score
        return float(log_likelihood_torch(eta, self.y).mean())

    def recenter(self, coordinate: str) -> float:
        c = self.coords[coordinate]
        # Exact only when every row has an unweighted effect: no entity below the row
        # minimum, none subsampled and reweighted.
        if c.min_rows > 1 or c.max_rows > 0 or not len(c.coef):
            return 0.0
        m = float(c.coef[:, 0].mean())
        c.coef[:, 0] -= m
        c.score -= m
        self.fixed_score += m  # the fixed intercept the loop raises by m
        self._fixed = None if self._fixed is None else self._fixed + _intercept(len(self._fixed), m)
        return m

    def effects(self, coordinate: str = USER) -> tuple[np.ndarray, np.ndarray]:
        """(K, q) coefficients of a coordinate and the diagonal of their posterior
        precision at the last pass's logits (how sure the fit is: the online prior)."""
        c = self.coords[coordinate]
        eta = (self.fixed_score + self._random_total()).numpy()
        precision = posterior_precision(
            c.of_row,
            len(c.coef),
            c.z.numpy(),
            eta,
            c.lam.numpy(),
            c.min_rows,
            row_video=None if c.row_map is None else c.row_map.numpy(),
        )
        return c.coef.numpy(), precision


def _intercept(p: int, m: float) -> np.ndarray:
    out = np.zeros(p)
    out[0] = m
    return out
