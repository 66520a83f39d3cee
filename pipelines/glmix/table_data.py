"""The table GLMix's inputs: its TOML configuration and the columns of a Parquet table
as arrays (``recsys.glmix.table``), with every problem a one-line ``UserInputError``
naming the key or the column.

A feature is a numeric column (integer, float or bool: one value a row) or a
``list<float>`` column of one length (an embedding: that many values a row). Entity
columns are ids of any type (integer or string; ``recsys.glmix.model.id_keys``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.io import open_parquet
from recsys.errors import UserInputError
from recsys.glmix.table import RandomEffect, TableGLMixConfig

_TOP = {"label", "fixed", "random", "standardize", "max_passes", "tol", "seed"}
_FIXED = {"features", "l2"}
_RANDOM = {"name", "entity", "features", "l2", "intercept_l2", "min_rows", "max_rows"}


def load_config(path: str | os.PathLike[str]) -> TableGLMixConfig:
    """The model a TOML file states: top-level ``label``; ``[fixed]`` with ``features``
    and optional ``l2``; ``[[random]]`` tables with ``name``, ``entity``, ``features``
    and optional ``l2``, ``intercept_l2``, ``min_rows``, ``max_rows``."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as exc:
        raise UserInputError(f"{p}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"{p}: not valid TOML ({exc})") from None
    _no_unknown(p, "the top level", doc, _TOP)
    if not isinstance(doc.get("label"), str):
        raise UserInputError(f"{p}: label: the 0/1 label column's name is required")
    fixed = doc.get("fixed", {})
    randoms = doc.get("random", [])
    if not isinstance(fixed, dict) or not isinstance(randoms, list):
        raise UserInputError(f"{p}: [fixed] must be a table and [[random]] a list of tables")
    _no_unknown(p, "[fixed]", fixed, _FIXED)
    try:
        effects = []
        for i, r in enumerate(randoms):
            _no_unknown(p, f"[[random]] {i + 1}", r, _RANDOM)
            effects.append(RandomEffect(**{**r, "features": _names(p, f"random {i + 1}", r)}))
        return TableGLMixConfig(
            label=doc["label"],
            features=_names(p, "fixed", fixed),
            l2=fixed.get("l2"),
            random=tuple(effects),
            **{k: doc[k] for k in ("standardize", "max_passes", "tol", "seed") if k in doc},
        )
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{p}: {exc}") from None


def _no_unknown(p: Path, where: str, d: Any, known: set[str]) -> None:
    if not isinstance(d, dict):
        raise UserInputError(f"{p}: {where} must be a table")
    extra = sorted(set(d) - known)
    if extra:
        raise UserInputError(
            f"{p}: {where}: unknown key {extra[0]!r} (known: {', '.join(sorted(known))})"
        )


def _names(p: Path, where: str, d: dict[str, Any]) -> tuple[str, ...]:
    f = d.get("features", [])
    if not isinstance(f, list) or not all(isinstance(x, str) for x in f):
        raise UserInputError(f"{p}: {where}: features must be a list of column names")
    return tuple(f)


@dataclass
class Rows:
    """A table's rows as the model reads them: ``x`` (N, p) fixed features, ``y`` (N,)
    labels (None when scoring), per coordinate its entity keys and features (N, q);
    ``widths`` each feature column's number of values."""

    x: np.ndarray
    y: np.ndarray | None
    keys: dict[str, pa.Array]
    z: dict[str, np.ndarray]
    widths: dict[str, int]

    def __len__(self) -> int:
        return len(self.x)


def table_batches(
    path: str | os.PathLike[str], columns: list[str], batch_rows: int = 1 << 16
) -> Iterator[pa.RecordBatch]:
    """The table's record batches with ``columns`` (each must exist), streamed."""
    pf = open_parquet(path)
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise UserInputError(f"{Path(path).name}: {missing[0]}: no such column")
    yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def read_rows(
    path: str | os.PathLike[str],
    cfg: TableGLMixConfig,
    with_label: bool = True,
    widths: dict[str, int] | None = None,
) -> Rows:
    """Every row of the table at ``path`` (the fit needs them together)."""
    cols = cfg.columns if with_label else cfg.columns[1:]
    parts = [rows_of(b, cfg, with_label, widths) for b in table_batches(path, cols)]
    if not parts:
        raise UserInputError(f"{Path(path).name}: no rows")
    return Rows(
        np.concatenate([r.x for r in parts]),
        np.concatenate([r.y for r in parts]) if with_label else None,  # type: ignore[misc]
        {k: pa.concat_arrays([r.keys[k] for r in parts]) for k in parts[0].keys},
        {k: np.concatenate([r.z[k] for r in parts]) for k in parts[0].z},
        parts[0].widths,
    )


def rows_of(
    batch: pa.RecordBatch,
    cfg: TableGLMixConfig,
    with_label: bool = True,
    widths: dict[str, int] | None = None,
) -> Rows:
    """One record batch as ``Rows``; ``widths`` (from the fit) fixes each list column's
    length."""
    widths = dict(widths or {})
    y = _label(batch, cfg.label) if with_label else None
    x = _features(batch, cfg.features, widths)
    keys, z = {}, {}
    for r in cfg.random:
        col = batch.column(r.entity)
        if not (
            pa.types.is_integer(col.type)
            or pa.types.is_string(col.type)
            or pa.types.is_large_string(col.type)
        ):
            raise UserInputError(
                f"{r.entity}: entity ids must be integers or strings, found {col.type}"
            )
        if col.null_count:
            raise UserInputError(f"{r.entity}: null entity ids (coordinate {r.name!r})")
        # as text, as the model keys entities: 7 and "7" are one entity
        keys[r.name] = col.cast(pa.string())
        z[r.name] = _features(batch, r.features, widths)
    return Rows(x, y, keys, z, widths)


def _label(batch: pa.RecordBatch, name: str) -> np.ndarray:
    col = batch.column(name)
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise UserInputError(f"{name}: the label must be 0 or 1, found type {t}")
    if col.null_count:
        raise UserInputError(f"{name}: null labels")
    y = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False))
    bad = np.flatnonzero((y != 0) & (y != 1))
    if len(bad):
        raise UserInputError(f"{name}: the label must be 0 or 1, found {y[bad[0]]!r}")
    return y


def _features(batch: pa.RecordBatch, names: tuple[str, ...], widths: dict[str, int]) -> np.ndarray:
    """(N, sum of widths) float64 of the named columns, side by side."""
    blocks = [np.zeros((batch.num_rows, 0))]
    for name in names:
        col = batch.column(name)
        t = col.type
        if col.null_count:
            raise UserInputError(f"{name}: null values")
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            block = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False))[:, None]
        elif (
            pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
        ) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
            lengths = np.asarray(pc.list_value_length(col))
            width = widths.get(name, int(lengths[0]) if len(lengths) else 0)
            if len(lengths) and (lengths != width).any():
                raise UserInputError(
                    f"{name}: every row needs {width} values, found {int(lengths[lengths != width][0])}"
                )
            values = col.flatten().cast(pa.float64()).to_numpy(zero_copy_only=False)
            block = np.asarray(values).reshape(batch.num_rows, width)
        else:
            raise UserInputError(f"{name}: a feature must be numeric or list<float>, found {t}")
        if not np.isfinite(block).all():
            raise UserInputError(f"{name}: non-finite values (NaN or inf)")
        if widths.setdefault(name, block.shape[1]) != block.shape[1]:
            raise UserInputError(
                f"{name}: {block.shape[1]} values a row, the model has {widths[name]}"
            )
        blocks.append(block)
    return np.hstack(blocks)
