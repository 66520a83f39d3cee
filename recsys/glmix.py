"""GLMix: logistic regression with a fixed effect and per-user random effects (Eq. 18).

    logit p_u(v) = beta_0 + x^T beta  +  beta_u0 + f(v)^T beta_u

The fixed effect (global intercept, coefficients on the video embedding f(v) and
optional global features x) and, per user, a random intercept and slope vector,
each with a Gaussian (L2) prior. Fitted by block coordinate descent with offsets,
as GLMix / Photon-ML do:

1. fit the fixed effect with the current random-effect scores as offsets;
2. fit every user's random effect with the fixed-effect score as offset;
3. repeat until the training log-likelihood stops improving.

The per-user problems are solved together: users are grouped by row count into
power-of-two buckets, padded within a bucket, and each Newton step is a batched
``bmm`` for the Hessians plus a batched Cholesky solve. Coefficients are warm
started between passes, so one or two Newton steps per pass suffice.

Everything here works on arrays; reading and writing is the caller's business
(``to_tables`` / ``from_tables`` give Arrow tables and a JSON-able dict).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recsys.errors import UserInputError


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
    tol: float = 1e-5
    fixed_newton_steps: int = 20
    random_newton_steps: int = 2
    #: users per batched solve (bounds memory: users x p x p float64)
    user_chunk: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fixed_l2", "random_l2", "random_intercept_l2"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if self.min_rows_per_user < 1 or self.max_rows_per_user < 0:
            raise ValueError("min_rows_per_user must be >= 1 and max_rows_per_user >= 0")
        if self.max_passes < 1:
            raise ValueError("max_passes must be >= 1")


def _log_sigmoid_loss(eta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bernoulli log-likelihood of labels y given logits eta, elementwise (stable)."""
    return y * eta - torch.nn.functional.softplus(eta)


@dataclass
class GLMix:
    """A fitted model. ``fixed``: [intercept, video coefs (E), global coefs (G)];
    ``user_coef`` (U, 1 + E): [intercept, slopes] per user in ``user_ids`` order."""

    config: GLMixConfig
    embedding_dim: int
    global_dim: int
    fixed: np.ndarray
    user_ids: list[str]
    user_coef: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}

    @property
    def random_dim(self) -> int:
        return 1 + (self.embedding_dim if self.config.use_video_features else 0)

    def fixed_logit(self, video: np.ndarray, global_feats: np.ndarray | None = None) -> np.ndarray:
        """beta_0 + x^T beta for rows of video features (N, E) (and global features (N, G))."""
        f = self.fixed
        out = np.full(len(video), f[0], dtype=np.float64)
        if self.config.use_video_features and self.embedding_dim:
            out += video @ f[1 : 1 + self.embedding_dim]
        if self.global_dim:
            if global_feats is None:
                raise ValueError("this model needs global features")
            out += global_feats @ f[1 + self.embedding_dim :]
        return out

    def random_logit(self, user_rows: np.ndarray, video: np.ndarray) -> np.ndarray:
        """beta_u0 + f(v)^T beta_u; ``user_rows`` are indices into user_ids, -1 = unknown user (0)."""
        out = np.zeros(len(user_rows), dtype=np.float64)
        known = user_rows >= 0
        if known.any():
            c = self.user_coef[user_rows[known]]
            out[known] = c[:, 0]
            if self.config.use_video_features and self.embedding_dim:
                out[known] += np.einsum("ij,ij->i", c[:, 1:], video[known])
        return out

    def user_rows(self, users: list[str] | np.ndarray) -> np.ndarray:
        return np.array([self.user_index.get(u, -1) for u in users], dtype=np.int64)

    def predict_proba(
        self,
        users: list[str] | np.ndarray,
        video: np.ndarray,
        global_feats: np.ndarray | None = None,
    ) -> np.ndarray:
        rows = self.user_rows(users)
        eta = self.fixed_logit(video, global_feats) + self.random_logit(rows, video)
        return 1.0 / (1.0 + np.exp(-eta))

    # ------------------------------------------------------------------ persistence

    def to_tables(self) -> tuple[dict[str, Any], pa.Table]:
        """(fixed effect + config as a JSON-able dict, per-user coefficients as a table)."""
        fixed = {
            "config": asdict(self.config),
            "embedding_dim": self.embedding_dim,
            "global_dim": self.global_dim,
            "fixed": [float(x) for x in self.fixed],
            "history": self.history,
        }
        k = self.user_coef.shape[1]
        coef = pa.FixedSizeListArray.from_arrays(
            pa.array(self.user_coef.reshape(-1), pa.float64()), k
        )
        table = pa.table({"user_id": pa.array(self.user_ids, pa.string()), "coef": coef})
        return fixed, table

    @classmethod
    def from_tables(cls, fixed: dict[str, Any], users: pa.Table) -> GLMix:
        try:
            cfg = GLMixConfig(**fixed["config"])
            e, g = int(fixed["embedding_dim"]), int(fixed["global_dim"])
            f = np.asarray(fixed["fixed"], dtype=np.float64)
            ids = users.column("user_id").to_pylist()
            col = users.column("coef").combine_chunks()
            flat = col.flatten().to_numpy(zero_copy_only=False)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(f"malformed GLMix model ({exc})") from None
        k = 1 + (e if cfg.use_video_features else 0)
        if len(f) != 1 + e + g or len(flat) != len(ids) * k:
            raise UserInputError("malformed GLMix model (coefficient sizes do not match)")
        return cls(cfg, e, g, f, ids, flat.reshape(len(ids), k), list(fixed.get("history", [])))


# --------------------------------------------------------------------------- fitting


def _fixed_design(
    video: np.ndarray, global_feats: np.ndarray | None, use_video: bool
) -> np.ndarray:
    parts = [np.ones((len(video), 1))]
    if use_video:
        parts.append(video)
    if global_feats is not None:
        parts.append(global_feats)
    return np.concatenate(parts, axis=1).astype(np.float64)


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    l2: float | np.ndarray = 0.0,
    max_steps: int = 25,
    tol: float = 1e-10,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Penalised logistic regression by Newton's method with step halving.

    Maximises sum_i w_i log p(y_i | x_i^T b + offset_i) - 1/2 sum_j l2_j b_j^2.
    ``l2`` may be a vector (e.g. 0 for an unpenalised intercept).
    """
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    yt = torch.from_numpy(np.asarray(y, dtype=np.float64))
    n, p = xt.shape
    off = (
        torch.zeros(n, dtype=torch.float64)
        if offset is None
        else torch.from_numpy(np.asarray(offset, np.float64))
    )
    w = (
        torch.ones(n, dtype=torch.float64)
        if weights is None
        else torch.from_numpy(np.asarray(weights, np.float64))
    )
    lam = torch.as_tensor(np.broadcast_to(np.asarray(l2, np.float64), (p,)).copy())
    b = (
        torch.zeros(p, dtype=torch.float64)
        if init is None
        else torch.from_numpy(np.asarray(init, np.float64)).clone()
    )

    def objective(beta: torch.Tensor) -> float:
        return float(
            (w * _log_sigmoid_loss(off + xt @ beta, yt)).sum() - 0.5 * (lam * beta * beta).sum()
        )

    obj = objective(b)
    for _ in range(max_steps):
        eta = off + xt @ b
        mu = torch.sigmoid(eta)
        grad = xt.T @ (w * (yt - mu)) - lam * b
        hess = (xt * (w * mu * (1 - mu))[:, None]).T @ xt + torch.diag(lam)
        hess += 1e-9 * torch.eye(p, dtype=torch.float64)  # separable data: keep it invertible
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        for _ in range(30):
            new = objective(b + t * step)
            if new >= obj - 1e-12:
                break
            t *= 0.5
        b = b + t * step
        improved = new - obj
        obj = new
        if abs(improved) <= tol * max(1.0, abs(obj)):
            break
    return b.numpy()


@dataclass
class _Bucket:
    users: np.ndarray  # (B,) user rows into the coefficient table
    rows: np.ndarray  # (B, n) data row index, -1 = padding
    weights: np.ndarray  # (B, n) row weights (0 on padding; > 1 when subsampled)


def _buckets(
    user_of_row: np.ndarray, n_users: int, cfg: GLMixConfig, rng: np.random.Generator
) -> tuple[list[_Bucket], np.ndarray]:
    """Group users with a random effect by row count (power-of-two buckets)."""
    order = np.argsort(user_of_row, kind="stable")
    counts = np.bincount(user_of_row, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)])
    eligible = counts >= cfg.min_rows_per_user
    cap = cfg.max_rows_per_user or int(counts.max(initial=1))
    eff = np.minimum(counts, cap)
    size_class = np.ceil(np.log2(np.maximum(eff, 1))).astype(int)
    buckets: list[_Bucket] = []
    for sc in np.unique(size_class[eligible]):
        users = np.flatnonzero(eligible & (size_class == sc))
        width = int(eff[users].max())
        for c0 in range(0, len(users), cfg.user_chunk):
            chunk = users[c0 : c0 + cfg.user_chunk]
            rows = np.full((len(chunk), width), -1, dtype=np.int64)
            weights = np.zeros((len(chunk), width), dtype=np.float64)
            for i, u in enumerate(chunk):
                mine = order[starts[u] : starts[u + 1]]
                if len(mine) > cap:
                    # Reservoir-style uniform subsample, reweighted to keep the likelihood's scale.
                    mine = np.sort(rng.choice(mine, size=cap, replace=False))
                    weights[i, : len(mine)] = counts[u] / cap
                else:
                    weights[i, : len(mine)] = 1.0
                rows[i, : len(mine)] = mine
            buckets.append(_Bucket(chunk, rows, weights))
    return buckets, eligible


def _solve_random_effects(
    buckets: list[_Bucket],
    z_all: torch.Tensor,  # (N, q) random-effect design: [1, video]
    y: torch.Tensor,
    offset: torch.Tensor,  # (N,) fixed-effect score
    coef: torch.Tensor,  # (U, q), updated in place
    lam: torch.Tensor,  # (q,)
    steps: int,
) -> None:
    q = z_all.shape[1]
    eye = torch.eye(q, dtype=torch.float64)
    for bk in buckets:
        rows = torch.from_numpy(bk.rows)
        pad = rows < 0
        safe = rows.clamp_min(0)
        z = z_all[safe]  # (B, n, q)
        w = torch.from_numpy(bk.weights)
        yy = y[safe]
        off = offset[safe]
        users = torch.from_numpy(bk.users)
        b = coef[users]  # (B, q)

        def objective(
            beta: torch.Tensor, z=z, off=off, w=w, yy=yy, pad=pad
        ) -> torch.Tensor:  # penalised log-likelihood per user
            eta = off + torch.bmm(z, beta.unsqueeze(-1)).squeeze(-1)
            ll = (w * _log_sigmoid_loss(eta, yy)).masked_fill(pad, 0.0).sum(1)
            return ll - 0.5 * (lam * beta * beta).sum(1)

        obj = objective(b)
        for _ in range(steps):
            eta = off + torch.bmm(z, b.unsqueeze(-1)).squeeze(-1)
            mu = torch.sigmoid(eta)
            r = (w * (yy - mu)).masked_fill(pad, 0.0)
            grad = torch.bmm(z.transpose(1, 2), r.unsqueeze(-1)).squeeze(-1) - lam * b
            s = (w * mu * (1 - mu)).masked_fill(pad, 0.0)
            hess = torch.bmm(z.transpose(1, 2), z * s.unsqueeze(-1)) + torch.diag(lam) + 1e-9 * eye
            chol, info = torch.linalg.cholesky_ex(hess)
            step = torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
            step = torch.where((info == 0).unsqueeze(-1), step, torch.zeros_like(step))
            # One safeguard per user: halve the step (up to 10 times) where the objective drops.
            t = torch.ones(len(b), 1, dtype=torch.float64)
            new_obj = objective(b + t * step)
            for _ in range(10):
                worse = new_obj < obj - 1e-12
                if not bool(worse.any()):
                    break
                t = torch.where(worse.unsqueeze(-1), t * 0.5, t)
                new_obj = torch.where(worse, objective(b + t * step), new_obj)
            accept = new_obj >= obj - 1e-12
            b = torch.where(accept.unsqueeze(-1), b + t * step, b)
            obj = torch.where(accept, new_obj, obj)
        coef[users] = b


def fit_glmix(
    user_ids: list[str] | np.ndarray,
    video: np.ndarray,
    labels: np.ndarray,
    cfg: GLMixConfig | None = None,
    global_feats: np.ndarray | None = None,
    on_pass: Callable[[int, float], None] | None = None,
) -> GLMix:
    """Fit GLMix on rows (user, video features (N, E), label in {0, 1})."""
    cfg = cfg or GLMixConfig()
    y_np = np.asarray(labels, dtype=np.float64)
    video = np.asarray(video, dtype=np.float64)
    n = len(y_np)
    if n == 0:
        raise UserInputError("GLMix needs at least one training row")
    if video.ndim != 2 or len(video) != n or len(user_ids) != n:
        raise UserInputError(
            "GLMix: users, video features and labels must have the same number of rows"
        )
    if not np.isfinite(video).all() or not np.isin(y_np, (0.0, 1.0)).all():
        raise UserInputError("GLMix: features must be finite and labels 0 or 1")
    if global_feats is not None and (global_feats.ndim != 2 or len(global_feats) != n):
        raise UserInputError("GLMix: global features must be (N, G)")
    uniq, user_of_row = np.unique(
        np.asarray(user_ids, dtype=object).astype(str), return_inverse=True
    )
    n_users = len(uniq)
    e = video.shape[1]
    g = 0 if global_feats is None else global_feats.shape[1]
    use_video = cfg.use_video_features
    x_fixed = _fixed_design(video, global_feats, use_video)
    fixed_l2 = np.full(x_fixed.shape[1], cfg.fixed_l2)
    fixed_l2[0] = 0.0  # the global intercept is not shrunk
    q = 1 + (e if use_video else 0)
    z_all = torch.from_numpy(
        np.concatenate([np.ones((n, 1)), video], axis=1) if use_video else np.ones((n, 1))
    )
    lam = torch.full((q,), cfg.random_l2, dtype=torch.float64)
    lam[0] = cfg.random_intercept_l2
    y = torch.from_numpy(y_np)
    rng = np.random.default_rng(cfg.seed)
    buckets, _ = _buckets(user_of_row, n_users, cfg, rng)
    coef = torch.zeros(n_users, q, dtype=torch.float64)
    fixed_full = np.zeros(x_fixed.shape[1])
    history: list[dict[str, float]] = []
    prev = -math.inf
    user_of_row_t = torch.from_numpy(user_of_row)
    for p in range(cfg.max_passes):
        # 1. fixed effect with the random-effect scores as offsets
        rand_score = (z_all * coef[user_of_row_t]).sum(1).numpy()
        fixed_full = fit_logistic(
            x_fixed,
            y_np,
            offset=rand_score,
            l2=fixed_l2,
            max_steps=cfg.fixed_newton_steps,
            init=fixed_full,
        )
        fixed_score = torch.from_numpy(x_fixed @ fixed_full)
        # 2. random effects with the fixed-effect score as offset (warm start)
        _solve_random_effects(buckets, z_all, y, fixed_score, coef, lam, cfg.random_newton_steps)
        eta = fixed_score + (z_all * coef[user_of_row_t]).sum(1)
        ll = float(_log_sigmoid_loss(eta, y).mean())
        history.append({"pass": p + 1, "log_likelihood_per_row": ll})
        if on_pass is not None:
            on_pass(p + 1, ll)
        if ll - prev < cfg.tol:
            break
        prev = ll
    # The fixed vector always has slots for the video coefficients, zero when unused.
    full = np.zeros(1 + e + g)
    full[0] = fixed_full[0]
    if use_video:
        full[1 : 1 + e] = fixed_full[1 : 1 + e]
        full[1 + e :] = fixed_full[1 + e :]
    else:
        full[1 + e :] = fixed_full[1:]
    return GLMix(cfg, e, g, full, [str(u) for u in uniq], coef.numpy(), history)
