"""GLMix: logistic regression with a fixed effect and per-user random effects (Eq. 18),
optionally per-video random effects as a third coordinate (as Photon-ML's GAME fits
per-item effects beside per-user ones).

    logit p_u(v) = beta_0 + x^T beta  +  beta_u0 + f(v)^T beta_u  [+  gamma_v0 + x^T gamma_v]

The fixed effect (global intercept, coefficients on the video embedding f(v) and
optional global features x), per user a random intercept and slope vector, and per
video an intercept (what its own watch rate says of its appeal; slopes on x optional),
each with a Gaussian (L2) prior. A video the fit never saw gets gamma_v = 0: its
features in the fixed effect are all that speaks for it. Fitted by block coordinate descent with offsets
(``recsys.glmix.coordinate_descent``, the loop both engines run); the per-user problems are
solved together in batches (``recsys.glmix.random_effects``).

Everything here works on arrays; reading and writing is the caller's business
(``to_tables`` / ``from_tables`` give Arrow tables and a JSON-able dict).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.errors import UserInputError
from recsys.glmix.config import GLMixConfig, fixed_prior
from recsys.glmix.coordinate_descent import (
    USER,
    VIDEO,
    LocalBackend,
    coordinate_descent,
    fixed_design,
)
from recsys.glmix.design import VideoDesign, VideoRows, dense_video
from recsys.glmix.logistic import CHUNK_ROWS, fit_logistic
from recsys.memory import release_free_memory

__all__ = ["GLMix", "GLMixConfig", "fit_glmix", "validate_glmix_inputs"]


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
    #: (U, 1 + E) diagonal of each user's posterior precision at the fit (prior L2 plus the
    #: data's curvature): how sure the fit is of each coefficient. Online updates use it as
    #: the prior precision around ``user_coef`` (None: only the prior L2 is known).
    user_precision: np.ndarray | None = None
    #: names of the G global features, in column order (e.g. ``recsys.scoring.
    #: HISTORY_FEATURES``): whoever scores must build the same columns
    global_names: list[str] = field(default_factory=list)
    #: per-video effects (``config.video_effects``): ids, (V, qv) coefficients
    #: [intercept, slopes on the global features] and their posterior precision
    video_ids: list[str] = field(default_factory=list)
    video_coef: np.ndarray | None = None
    video_precision: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.video_index = {v: i for i, v in enumerate(self.video_ids)}
        self._video_lookup: pd.Index | None = None
        if self.global_names and len(self.global_names) != self.global_dim:
            raise ValueError("global_names must name the global_dim features")
        if self.config.video_effects and self.video_coef is None:
            raise ValueError("a model with per-video effects needs their coefficients")

    @property
    def random_dim(self) -> int:
        return 1 + (self.embedding_dim if self.config.use_video_features else 0)

    @property
    def has_video_effects(self) -> bool:
        return self.video_coef is not None

    @property
    def video_dim(self) -> int:
        """qv: the per-video effect's size (intercept, plus a slope per global feature)."""
        return 1 + (self.global_dim if self.config.video_slopes else 0)

    def video_rows(self, videos: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Rows into ``video_coef`` of each id (-1: a video the fit never saw). Ids of any
        type: the fit keys videos by ``str(id)``, so 7, np.int64(7) and "7" are one video
        (an integer is an id here, never a row)."""
        keys = id_keys(videos)
        # Up to a few thousand ids (the service's candidates and batches): dict lookups,
        # 50 ns an id; pandas' index costs about 200 us a call before it pays off.
        if len(keys) <= 4096:
            index = self.video_index
            return np.fromiter((index.get(v, -1) for v in keys), np.int64, len(keys))
        if self._video_lookup is None:  # a hash index: one vectorised lookup per call
            self._video_lookup = pd.Index(self.video_ids, dtype=object)
        return self._video_lookup.get_indexer(np.asarray(keys, dtype=object)).astype(np.int64)

    def user_row(self, user: Any) -> int | None:
        """The row of one user's offline effect (None: not in the fit); any id type."""
        return self.user_index.get(user if type(user) is str else str(user))

    def video_row(self, video: Any) -> int | None:
        """The row of one video's offline effect (None: not in the fit); any id type."""
        return self.video_index.get(video if type(video) is str else str(video))

    def video_logit(
        self, video_rows: np.ndarray, global_feats: np.ndarray | None = None
    ) -> np.ndarray:
        """gamma_v0 + x^T gamma_v of rows naming their video (``video_rows``, -1 = 0)."""
        if self.video_coef is None:
            return np.zeros(len(video_rows), dtype=np.float64)
        known = video_rows >= 0
        every = bool(known.all())  # the usual case: no masks
        c = self.video_coef[video_rows if every else video_rows[known]]
        part = c[:, 0].copy()
        if len(c) and c.shape[1] > 1:
            if global_feats is None:
                raise ValueError("this model's per-video slopes need global features")
            part += np.einsum("ij,ij->i", c[:, 1:], global_feats if every else global_feats[known])
        if every:
            return part
        out = np.zeros(len(video_rows), dtype=np.float64)
        out[known] = part
        return out

    def fixed_logit(self, video: np.ndarray, global_feats: np.ndarray | None = None) -> np.ndarray:
        """beta_0 + x^T beta for rows of video features (N, E) (and global features (N, G))."""
        f = self.fixed
        out = np.full(len(video), f[0], dtype=np.float64)
        # Row-wise products (einsum), not a matrix-vector product: BLAS gives a row other
        # bits in a matrix of other rows, and the service's replicas batch rows differently.
        if self.config.use_video_features and self.embedding_dim:
            out += np.einsum("ij,j->i", video, f[1 : 1 + self.embedding_dim])
        if self.global_dim:
            if global_feats is None:
                raise ValueError("this model needs global features")
            out += np.einsum("ij,j->i", global_feats, f[1 + self.embedding_dim :])
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

    def user_rows(self, users: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Rows into ``user_coef`` of each id (-1: a user the fit never saw); any id type,
        as ``video_rows``."""
        index, keys = self.user_index, id_keys(users)
        return np.fromiter((index.get(u, -1) for u in keys), np.int64, len(keys))

    def predict_proba(
        self,
        users: list[str] | np.ndarray,
        video: np.ndarray | VideoRows,
        global_feats: np.ndarray | None = None,
        videos: Sequence[Any] | np.ndarray | None = None,
        *,
        video_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Watch probabilities of rows (user, video features, global features), a chunk of
        rows at a time: ``video`` may be ``VideoRows`` and is materialised per chunk.
        ``videos`` names each row's video by id (any type, as at the fit), or
        ``video_rows`` gives their rows from ``video_rows`` instead; a model with
        per-video effects needs one of them."""
        rows = self.user_rows(users)
        vrows = None
        if self.has_video_effects:
            if video_rows is not None:
                vrows = np.asarray(video_rows, dtype=np.int64)
            elif videos is None:
                raise ValueError("this model has per-video effects: name each row's video")
            else:
                vrows = self.video_rows(videos)
            if len(vrows) != len(rows):
                raise ValueError("videos must name one video per row")
        out = np.empty(len(rows), dtype=np.float64)
        for s in range(0, len(rows), CHUNK_ROWS):
            sl = slice(s, s + CHUNK_ROWS)
            v = dense_video(video[sl])
            g = None if global_feats is None else global_feats[sl]
            eta = self.fixed_logit(v, g) + self.random_logit(rows[sl], v)
            if vrows is not None:
                eta += self.video_logit(vrows[sl], g)
            out[sl] = 1.0 / (1.0 + np.exp(-eta))
        return out

    # ------------------------------------------------------------------ persistence

    def to_tables(self) -> tuple[dict[str, Any], pa.Table]:
        """(fixed effect + config as a JSON-able dict, per-user coefficients as a table);
        the per-video coefficients are ``video_table()``."""
        fixed = {
            "config": asdict(self.config),
            "embedding_dim": self.embedding_dim,
            "global_dim": self.global_dim,
            "global_features": list(self.global_names),
            "fixed": [float(x) for x in self.fixed],
            "history": self.history,
        }
        return fixed, _coef_table("user_id", self.user_ids, self.user_coef, self.user_precision)

    def video_table(self) -> pa.Table | None:
        """Per-video coefficients (video_id, coef, precision), None without the coordinate."""
        if self.video_coef is None:
            return None
        return _coef_table("video_id", self.video_ids, self.video_coef, self.video_precision)

    @classmethod
    def from_tables(
        cls, fixed: dict[str, Any], users: pa.Table, videos: pa.Table | None = None
    ) -> GLMix:
        try:
            cfg = GLMixConfig(**fixed["config"])
            e, g = int(fixed["embedding_dim"]), int(fixed["global_dim"])
            f = np.asarray(fixed["fixed"], dtype=np.float64)
            names = [str(x) for x in fixed.get("global_features", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(f"malformed GLMix model ({exc})") from None
        k = 1 + (e if cfg.use_video_features else 0)
        if len(f) != 1 + e + g or len(names) not in (0, g):
            raise UserInputError("malformed GLMix model (coefficient sizes do not match)")
        # artifacts before online GLMix lack the precision
        ids, coef, precision = _read_coef(users, "user_id", k)
        vids: list[str] = []
        vcoef = vprec = None
        if cfg.video_effects:  # artifacts before the per-video coordinate have none
            if videos is None:
                raise UserInputError("malformed GLMix model (its per-video effects are missing)")
            vids, vcoef, vprec = _read_coef(videos, "video_id", 1 + (g if cfg.video_slopes else 0))
        history = list(fixed.get("history", []))
        return cls(cfg, e, g, f, ids, coef, history, precision, names, vids, vcoef, vprec)


def _coef_table(
    key: str, ids: list[str], coef: np.ndarray, precision: np.ndarray | None
) -> pa.Table:
    """(key, coef, [precision]) with fixed-size list columns of width coef.shape[1]."""
    k = coef.shape[1]
    cols = {
        key: pa.array(ids, pa.string()),
        "coef": pa.FixedSizeListArray.from_arrays(pa.array(coef.reshape(-1), pa.float64()), k),
    }
    if precision is not None:
        cols["precision"] = pa.FixedSizeListArray.from_arrays(
            pa.array(precision.reshape(-1), pa.float64()), k
        )
    return pa.table(cols)


def _read_coef(
    table: pa.Table, key: str, k: int
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(ids, (n, k) coefficients, (n, k) precision or None) of a ``_coef_table``."""
    try:
        ids = [str(x) for x in table.column(key).to_pylist()]
        flat = table.column("coef").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        precision = None
        if "precision" in table.column_names:
            p = table.column("precision").combine_chunks().flatten()
            precision = p.to_numpy(zero_copy_only=False)
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        raise UserInputError(f"malformed GLMix model ({exc})") from None
    if len(flat) != len(ids) * k or (precision is not None and len(precision) != len(ids) * k):
        raise UserInputError("malformed GLMix model (coefficient sizes do not match)")
    return (
        ids,
        np.asarray(flat, dtype=np.float64).reshape(len(ids), k),
        None if precision is None else np.asarray(precision, np.float64).reshape(len(ids), k),
    )


# --------------------------------------------------------------------------- fitting


def validate_glmix_inputs(
    user_ids: list[str] | np.ndarray,
    video: np.ndarray | VideoRows,
    labels: np.ndarray,
    global_feats: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | VideoRows, np.ndarray, Any]:
    """(labels as float64, video features, user code per row, unique users in order of
    first appearance), or a UserInputError naming what is wrong."""
    y_np = np.asarray(labels, dtype=np.float64)
    if isinstance(video, VideoRows):
        if len(video) and not 0 <= video.rows.min() <= video.rows.max() < len(video.table):
            raise UserInputError("GLMix: a row names a video outside the feature table")
        values: np.ndarray = video.table
    else:
        video = values = np.asarray(video)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float32)
        video = VideoRows(values, video.rows) if isinstance(video, VideoRows) else values
    n = len(y_np)
    if n == 0:
        raise UserInputError("GLMix needs at least one training row")
    if video.ndim != 2 or len(video) != n or len(user_ids) != n:
        raise UserInputError(
            "GLMix: users, video features and labels must have the same number of rows"
        )
    if not np.isfinite(values).all() or not np.isin(y_np, (0.0, 1.0)).all():
        raise UserInputError("GLMix: features must be finite and labels 0 or 1")
    if global_feats is not None and (global_feats.ndim != 2 or len(global_feats) != n):
        raise UserInputError("GLMix: global features must be (N, G)")
    # pandas' hash-based factorize: ~5x faster than sorting 5M id strings with np.unique.
    codes, uniq = pd.factorize(np.asarray(id_keys(user_ids), dtype=object))  # 7 and "7": one user
    return y_np, video, codes.astype(np.int64), uniq


#: rows above 4x this start the fixed effect from a fit on this many (uniform sample)
_SUBSAMPLE_ROWS = 250_000


def id_keys(ids: Sequence[Any] | np.ndarray) -> list[str]:
    """Ids as a model keys them: ``str(id)``, strings as they are."""
    items = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    return [x if type(x) is str else str(x) for x in items]


def fit_glmix(
    user_ids: list[str] | np.ndarray,
    video: np.ndarray | VideoRows,
    labels: np.ndarray,
    cfg: GLMixConfig | None = None,
    global_feats: np.ndarray | None = None,
    on_pass: Callable[[int, float], None] | None = None,
    videos: list[str] | np.ndarray | None = None,
) -> GLMix:
    """Fit GLMix on rows (user, video features (N, E), label in {0, 1}) in this process.
    ``video`` as ``VideoRows`` (a per-video table and each row's video) keeps the design
    by reference: memory per row is an index, not E features. ``videos`` (N,) names each
    row's video: the per-video coordinate's groups (``cfg.video_effects``)."""
    cfg = cfg or GLMixConfig()
    y_np, video, codes, uniq = validate_glmix_inputs(user_ids, video, labels, global_feats)
    video_codes, video_uniq, video_z = video_coordinate(cfg, videos, len(y_np), global_feats)
    n, e = len(y_np), video.shape[1]
    g = 0 if global_feats is None else global_feats.shape[1]
    use_video = cfg.use_video_features
    x_fixed: np.ndarray | VideoDesign
    if isinstance(video, VideoRows):
        g32 = None if global_feats is None else np.asarray(global_feats, dtype=np.float32)
        x_fixed = VideoDesign(video, g32, use_video)
    else:
        x_fixed = fixed_design(video, global_feats, use_video)
    fixed_l2 = fixed_prior(cfg, x_fixed.shape[1])
    q = 1 + (e if use_video else 0)
    rng = np.random.default_rng(cfg.seed)
    backend = LocalBackend.cowatch(
        codes, len(uniq), x_fixed, y_np, q, cfg, rng, video_codes, len(video_uniq), video_z
    )
    init = None
    big = n > 4 * _SUBSAMPLE_ROWS
    if big:
        # Start the fixed effect from a fit on a uniform subsample (same prior strength per
        # row): on millions of rows that replaces most full-data Newton steps of pass 1.
        sub = np.sort(rng.choice(n, size=_SUBSAMPLE_ROWS, replace=False))
        init = fit_logistic(
            x_fixed[sub],
            y_np[sub],
            l2=fixed_l2 * (_SUBSAMPLE_ROWS / n),
            max_steps=cfg.fixed_newton_steps,
        )
    fixed, history = coordinate_descent(backend, cfg, fixed_l2, init, big, on_pass)
    coef, precision = backend.effects(USER)
    vcoef = vprec = None
    if video_codes is not None:
        vcoef, vprec = backend.effects(VIDEO)
    full = full_fixed_vector(fixed, e, use_video)
    del backend, x_fixed
    release_free_memory()  # the fit's temporaries go back before the caller's next step
    users = [str(u) for u in uniq]
    return GLMix(
        cfg,
        e,
        g,
        full,
        users,
        coef,
        history,
        precision,
        [],
        [str(v) for v in video_uniq],
        vcoef,
        vprec,
    )


def video_coordinate(
    cfg: GLMixConfig,
    videos: list[str] | np.ndarray | None,
    n: int,
    global_feats: np.ndarray | None,
) -> tuple[np.ndarray | None, Any, np.ndarray | None]:
    """(each row's video code, the videos in order of first appearance, the per-video
    design [1, global features] when it has slopes (None: the intercept alone)); all
    None when ``cfg`` has no per-video coordinate. UserInputError when it cannot have one."""
    if not cfg.video_effects:
        return None, [], None
    if videos is None or len(videos) != n:
        raise UserInputError("GLMix per-video effects need each row's video")
    codes, uniq = pd.factorize(np.asarray(id_keys(videos), dtype=object))
    z = None
    if cfg.video_slopes:
        if global_feats is None:
            raise UserInputError("GLMix per-video slopes need global features")
        z = np.empty((n, 1 + global_feats.shape[1]), dtype=np.float32)
        z[:, 0] = 1.0
        z[:, 1:] = global_feats
    return codes.astype(np.int64), uniq, z


def full_fixed_vector(fitted: np.ndarray, embedding_dim: int, use_video: bool) -> np.ndarray:
    """The stored fixed effect [intercept, video (E), global (G)] from the fitted one over
    the design's columns ([1, global] when the video is not used): the video slots are
    always there, zero when unused."""
    e = embedding_dim
    q = 1 + (e if use_video else 0)
    full = np.zeros(1 + e + len(fitted) - q)
    full[0] = fitted[0]
    full[1:q] = fitted[1:q]
    full[1 + e :] = fitted[q:]
    return full
