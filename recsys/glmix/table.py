"""GLMix on any table: a fixed effect plus an ordered list of random-effect coordinates,
each keyed by its own entity column with its own features (Photon-ML's GAME, GDMix).

    logit p_i = beta_0 + x_i^T beta  +  sum_k ( b_k,e(i),0 + z_k,i^T b_k,e(i) )

where e(i) is row i's entity of coordinate k (a user, an item, a channel, ...), every
coefficient with a Gaussian (L2) prior and the global intercept without one. Fitted by
the same block coordinate descent as the co-watch model (``recsys.glmix.
coordinate_descent``; the co-watch model is the list [users on the video embedding,
videos on the global features]). Entities are keyed by ``str(id)``: integer and string
ids are one id (``recsys.glmix.model.id_keys``); an entity the fit never saw (or saw in
fewer than ``min_rows`` rows) scores 0 in its coordinate.

Features are standardised with the training rows' mean and standard deviation before the
fit (``standardize``; a constant column is centred only), so one L2 strength means the
same for a length in seconds and a share in [0, 1]; the model keeps the transform and
applies it when it scores. Arrays in, arrays out: reading tables is the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from recsys.glmix.config import GLMixConfig
from recsys.glmix.coordinate_descent import CoordinateRows, LocalBackend, coordinate_descent
from recsys.glmix.model import id_keys

#: a coordinate's entity ids, row by row: any ids (``id_keys``), or an Arrow array of
#: integers or strings (factorised in Arrow, without a Python object per row)
Keys: TypeAlias = np.ndarray | list[Any] | pa.Array | pa.ChunkedArray

#: penalties used when the configuration gives none and no validation rows choose one
DEFAULT_L2 = 1.0
#: the penalties tried on validation rows for an omitted L2 (``recsys glmix fit``)
L2_GRID = (0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class RandomEffect:
    """One random-effect coordinate: ``entity`` the id column it is keyed by, ``features``
    its slopes' columns (empty: an intercept per entity), ``l2`` on the slopes and
    ``intercept_l2`` on the intercept (None: chosen on validation, else ``DEFAULT_L2``),
    the entities' row limits (fewer than ``min_rows``: no effect; above ``max_rows``, 0 =
    no cap: subsampled and reweighted)."""

    name: str
    entity: str
    features: tuple[str, ...] = ()
    l2: float | None = None
    intercept_l2: float | None = None
    min_rows: int = 1
    max_rows: int = 0

    def __post_init__(self) -> None:
        if not self.name or not self.entity:
            raise ValueError("a random effect needs a name and an entity column")
        _check_l2(f"random effect {self.name!r}", self.l2, self.intercept_l2)
        if self.min_rows < 1 or self.max_rows < 0:
            raise ValueError(f"random effect {self.name!r}: min_rows >= 1, max_rows >= 0")


@dataclass(frozen=True)
class TableGLMixConfig:
    """The model: the 0/1 ``label`` column, the fixed effect's ``features`` and ``l2``,
    and the random-effect coordinates in the order each pass fits them."""

    label: str
    features: tuple[str, ...] = ()
    l2: float | None = None
    random: tuple[RandomEffect, ...] = ()
    standardize: bool = True
    max_passes: int = 20
    tol: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        _check_l2("fixed effect", self.l2)
        names = [r.name for r in self.random]
        if len(set(names)) != len(names):
            raise ValueError(f"random effects need distinct names, got {names}")
        if self.label in self.features or any(self.label in r.features for r in self.random):
            raise ValueError(f"the label {self.label!r} cannot be a feature too")
        if self.max_passes < 1 or not self.tol > 0:
            raise ValueError("max_passes must be >= 1 and tol > 0")

    @property
    def columns(self) -> list[str]:
        """Every column the model reads, label first."""
        cols = [self.label, *self.features]
        for r in self.random:
            cols += [r.entity, *r.features]
        return list(dict.fromkeys(cols))

    def prefix(self, k: int) -> TableGLMixConfig:
        """The model with the first ``k`` random effects only (a stage of the report)."""
        return replace(self, random=self.random[:k])

    def resolved(self) -> TableGLMixConfig:
        """Every omitted penalty set to ``DEFAULT_L2``."""
        return replace(
            self,
            l2=_or_default(self.l2),
            random=tuple(
                replace(r, l2=_or_default(r.l2), intercept_l2=_or_default(r.intercept_l2))
                for r in self.random
            ),
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = list(self.features)
        d["random"] = [{**asdict(r), "features": list(r.features)} for r in self.random]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TableGLMixConfig:
        random = tuple(
            RandomEffect(**{**r, "features": tuple(r.get("features", ()))})
            for r in d.get("random", [])
        )
        return cls(**{**d, "features": tuple(d.get("features", ())), "random": random})


def _or_default(v: float | None) -> float:
    return DEFAULT_L2 if v is None else float(v)


def _check_l2(what: str, *values: float | None) -> None:
    for v in values:
        if v is not None and not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{what}: an L2 strength must be finite and >= 0, got {v}")


@dataclass
class Standardizer:
    """Column transform (x - center) / scale, from the training rows."""

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, on: bool) -> Standardizer:
        p = x.shape[1]
        if not on or len(x) == 0:
            return cls(np.zeros(p), np.ones(p))
        center = x.mean(axis=0)
        sd = x.std(axis=0)
        return cls(center, np.where(sd > 0, sd, 1.0))

    def design(self, x: np.ndarray) -> np.ndarray:
        """(N, 1 + p) float32 [1, standardised x]."""
        out = np.empty((len(x), 1 + x.shape[1]), dtype=np.float32)
        out[:, 0] = 1.0
        out[:, 1:] = (x - self.center) / self.scale
        return out


@dataclass
class Effects:
    """A coordinate's fitted effects: ``ids`` (K,) entity keys, ``coef`` (K, 1 + q)
    [intercept, slopes] on the standardised features."""

    ids: list[str]
    coef: np.ndarray
    standardizer: Standardizer
    _index: pd.Index | None = field(default=None, repr=False)

    def rows(self, keys: Keys) -> np.ndarray:
        """(N,) row of each key's effect, -1 for an entity without one."""
        if self._index is None:
            self._index = pd.Index(self.ids, dtype=object)
        if isinstance(keys, pa.Array | pa.ChunkedArray):
            keys = keys.cast(pa.string()).to_numpy(zero_copy_only=False)
        return self._index.get_indexer(np.asarray(id_keys(keys), dtype=object)).astype(np.int64)

    def logit(self, keys: Keys, z: np.ndarray) -> np.ndarray:
        """(N,) b_e0 + z^T b_e of rows (0 where the entity has no effect)."""
        rows = self.rows(keys)
        known = rows >= 0
        out = np.zeros(len(rows))
        if known.any():
            d = self.standardizer.design(z[known]).astype(np.float64)
            out[known] = np.einsum("ij,ij->i", d, self.coef[rows[known]])
        return out


@dataclass
class TableGLMix:
    """A fitted table model: ``fixed`` (1 + p) over [1, standardised features] and each
    coordinate's ``Effects`` by name; ``history`` the log-likelihood per row per pass."""

    config: TableGLMixConfig
    fixed: np.ndarray
    fixed_standardizer: Standardizer
    effects: dict[str, Effects]
    history: list[dict[str, float]] = field(default_factory=list)

    def logit(
        self, x: np.ndarray, keys: Mapping[str, Keys], z: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """(N,) the logit of rows: ``x`` (N, p) the fixed features, and per coordinate
        name its entity keys (N,) and features (N, q)."""
        d = self.fixed_standardizer.design(x).astype(np.float64)
        eta = np.einsum("ij,j->i", d, self.fixed)
        for r in self.config.random:
            eta += self.effects[r.name].logit(keys[r.name], z[r.name])
        return eta

    def predict_proba(
        self, x: np.ndarray, keys: Mapping[str, Keys], z: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(x, keys, z)))


#: makes the backend that holds the rows: (fixed design (N, 1 + p) float32, labels,
#: the coordinates, entities per batched solve, rng) -> a ``GLMixBackend`` with
#: ``effects(name) -> ((K, q) coefficients by entity code, precision)``
BackendFactory = Callable[
    [np.ndarray, np.ndarray, list[CoordinateRows], int, np.random.Generator], Any
]


def factorize(keys: Keys) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N,) int64 in order of first appearance, the distinct keys as ``str``)."""
    if isinstance(keys, pa.Array | pa.ChunkedArray):
        arr = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        enc = arr.cast(pa.string()).dictionary_encode()
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        return codes, np.asarray(enc.dictionary.to_pylist(), dtype=object)
    codes, uniq = pd.factorize(np.asarray(id_keys(keys), dtype=object))
    return codes.astype(np.int64), np.asarray(uniq, dtype=object)


def fit_table_glmix(
    cfg: TableGLMixConfig,
    x: np.ndarray,
    y: np.ndarray,
    keys: Mapping[str, Keys],
    z: Mapping[str, np.ndarray],
    backend: BackendFactory = LocalBackend,
) -> TableGLMix:
    """Fit on rows: ``x`` (N, p) fixed features, ``y`` (N,) 0/1 labels, per coordinate
    name its entity keys (N,) and features (N, q) (q may be 0). Omitted penalties take
    ``DEFAULT_L2``. ``backend``: where the rows live (this process, or Spark's
    ``pipelines.spark.table_glmix.SparkTableBackend``): the same loop either way."""
    cfg = cfg.resolved()
    y64 = np.asarray(y, dtype=np.float64)
    fixed_std = Standardizer.fit(np.asarray(x, np.float64), cfg.standardize)
    x_fixed = fixed_std.design(np.asarray(x, np.float64))
    rng = np.random.default_rng(cfg.seed)
    coords, kept = [], {}
    for r in cfg.random:
        codes, uniq = factorize(keys[r.name])
        zr = np.asarray(z[r.name], np.float64).reshape(len(y64), -1)
        std = Standardizer.fit(zr, cfg.standardize)
        prior = np.full(1 + zr.shape[1], float(r.l2))  # type: ignore[arg-type]
        prior[0] = float(r.intercept_l2)  # type: ignore[arg-type]
        design = torch.from_numpy(std.design(zr))
        coords.append(
            CoordinateRows(r.name, codes, len(uniq), design, prior, r.min_rows, r.max_rows)
        )
        counts = np.bincount(codes, minlength=len(uniq))
        kept[r.name] = (uniq, counts >= r.min_rows, std)
    gcfg = GLMixConfig(max_passes=cfg.max_passes, tol=cfg.tol, seed=cfg.seed)
    rows = backend(x_fixed, y64, coords, gcfg.user_chunk, rng)
    fixed_l2 = np.full(x_fixed.shape[1], float(cfg.l2))  # type: ignore[arg-type]
    fixed_l2[0] = 0.0  # the global intercept is not shrunk
    fixed, history = coordinate_descent(rows, gcfg, fixed_l2)
    effects = {}
    for r in cfg.random:
        uniq, has, std = kept[r.name]
        coef, _ = rows.effects(r.name)
        effects[r.name] = Effects([str(u) for u in uniq[has]], np.array(coef[has]), std)
    return TableGLMix(cfg, fixed, fixed_std, effects, history)
