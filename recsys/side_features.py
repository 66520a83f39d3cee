"""A platform's other signals as GLMix features: per-video columns (a video's length, age,
category) and per-user columns (a user's device, country, tenure), looked up for each
impression by its video and its user and added to the fixed effect beside the history
similarities (``recsys.scoring.glmix_global_features``).

A numeric column is standardised over its table's rows (an unknown entity or a null value
gets the mean: 0); a string column is one-hot over the levels its table holds (an unknown
entity, a null or a level not seen gets none of them). Feature names say where a value
comes from: ``video.length_s``, ``user.device=tv``.

Everything here works on Arrow tables and arrays; reading the files is the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import UserInputError

VIDEO, USER = "video", "user"
ENTITIES = (VIDEO, USER)
#: a string column with more levels than this is refused (one-hot would swamp the model)
MAX_LEVELS = 64


@dataclass(frozen=True)
class SideColumn:
    """One feature: ``entity``'s ``column``, standardised (``level`` None) or one level of it."""

    entity: str
    column: str
    level: str | None = None
    mean: float = 0.0
    scale: float = 1.0

    @property
    def name(self) -> str:
        base = f"{self.entity}.{self.column}"
        return base if self.level is None else f"{base}={self.level}"


def is_side_name(name: str) -> bool:
    return name.split(".", 1)[0] in ENTITIES and "." in name


def _encode(table: pa.Table, entity: str, column: str) -> tuple[list[SideColumn], np.ndarray]:
    """(the column's features, (rows, n) their values) of one column of ``table``."""
    where = f"{entity}s table column {column!r}"
    if column not in table.column_names:
        have = [c for c in table.column_names if c != f"{entity}_id"]
        raise UserInputError(f"{where} does not exist (columns: {', '.join(have) or 'none'})")
    col = table.column(column)
    kind = col.type
    if pa.types.is_dictionary(kind):
        col, kind = col.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = col.to_pandas()
        levels = sorted({str(v) for v in values.dropna()})
        if len(levels) > MAX_LEVELS:
            raise UserInputError(
                f"{where} has {len(levels)} levels (at most {MAX_LEVELS}); "
                "pass a numeric encoding of it instead"
            )
        cols = [SideColumn(entity, column, level) for level in levels]
        out = np.stack([(values == lv).to_numpy(bool) for lv in levels], 1) if levels else None
        return cols, (out.astype(np.float64) if out is not None else np.zeros((len(values), 0)))
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise UserInputError(f"{where} is {kind}; a feature must be numeric, boolean or a string")
    x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)  # nulls: NaN
    valid = ~pc.is_null(col).to_numpy(zero_copy_only=False)
    bad = valid & ~np.isfinite(x)
    if bad.any():
        first = table.column(f"{entity}_id")[int(np.flatnonzero(bad)[0])].as_py()
        raise UserInputError(f"{where} is not finite for {entity} {first!r}")
    mean = float(x[valid].mean()) if valid.any() else 0.0
    sd = float(x[valid].std()) if valid.any() else 0.0
    scale = sd if sd > 0 and math.isfinite(sd) else 1.0
    z = np.where(valid, (x - mean) / scale, 0.0)
    return [SideColumn(entity, column, None, mean, scale)], z[:, None]


def _keys(ids: Sequence[Any] | np.ndarray) -> list[str]:
    return [i if type(i) is str else str(i) for i in ids]


class _Block:
    """(n, X) standardised features of one entity, looked up by id (unknown: zeros)."""

    def __init__(self, ids: list[str], values: np.ndarray) -> None:
        self.ids = ids
        self.values = np.ascontiguousarray(values, dtype=np.float64)
        self._index = pd.Index(ids, dtype=object)
        if not self._index.is_unique:
            dup = self._index[self._index.duplicated()][0]
            raise UserInputError(f"id {dup!r} appears twice in a side-features table")

    @property
    def width(self) -> int:
        return self.values.shape[1]

    def rows(self, ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """(n,) row of each id, -1 for an id the table does not hold."""
        if len(ids) == 0:
            return np.zeros(0, np.int64)
        return self._index.get_indexer(np.asarray(_keys(ids), dtype=object)).astype(np.int64)

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), self.width))
        known = rows >= 0
        out[known] = self.values[rows[known]]
        return out


class SideFeatures:
    """The videos' and users' side features of a GLMix model, videos' columns first."""

    def __init__(
        self,
        columns: list[SideColumn],
        video_ids: list[str],
        video_values: np.ndarray,
        user_ids: list[str],
        user_values: np.ndarray,
    ) -> None:
        self.columns = columns
        nv = sum(c.entity == VIDEO for c in columns)
        shapes = ((len(video_ids), nv), (len(user_ids), len(columns) - nv))
        if video_values.size != np.prod(shapes[0]) or user_values.size != np.prod(shapes[1]):
            raise ValueError("side features: the columns do not match the values")
        self.videos = _Block(video_ids, video_values.reshape(shapes[0]))
        self.users = _Block(user_ids, user_values.reshape(shapes[1]))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __len__(self) -> int:
        return len(self.columns)

    @classmethod
    def fit(
        cls,
        videos: pa.Table | None,
        video_columns: Sequence[str],
        users: pa.Table | None,
        user_columns: Sequence[str],
    ) -> SideFeatures:
        """Encode ``video_columns`` of ``videos`` (keyed by ``video_id``) and
        ``user_columns`` of ``users`` (keyed by ``user_id``)."""
        columns: list[SideColumn] = []
        blocks: dict[str, tuple[list[str], np.ndarray]] = {}
        for entity, table, wanted in ((VIDEO, videos, video_columns), (USER, users, user_columns)):
            if not wanted:
                blocks[entity] = ([], np.zeros((0, 0)))
                continue
            if table is None:
                raise UserInputError(f"{entity} features {list(wanted)} need a {entity}s table")
            if len(set(wanted)) != len(wanted):
                raise UserInputError(f"{entity} features name a column twice: {list(wanted)}")
            key = f"{entity}_id"
            if key not in table.column_names:
                raise UserInputError(f"the {entity}s table has no {key} column")
            parts = [_encode(table, entity, c) for c in wanted]
            columns += [c for cols, _ in parts for c in cols]
            ids = _keys(table.column(key).to_pylist())
            blocks[entity] = (ids, np.hstack([v for _, v in parts]))
        return cls(columns, *blocks[VIDEO], *blocks[USER])

    def rows(
        self, users: Sequence[Any] | np.ndarray, videos: Sequence[Any] | np.ndarray
    ) -> np.ndarray:
        """(N, X) features of N impressions, each named by its user and its video."""
        return self.at(self.users.rows(users), self.videos.rows(videos))

    def at(self, user_rows: np.ndarray, video_rows: np.ndarray) -> np.ndarray:
        """(N, X) features from rows into the users' and videos' tables (-1: unknown)."""
        return np.hstack([self.videos.take(video_rows), self.users.take(user_rows)])

    def to_tables(self) -> tuple[dict[str, Any], pa.Table, pa.Table]:
        """(JSON-able description, videos' table, users' table) for an artifact."""
        meta = {"columns": [asdict(c) for c in self.columns], "names": self.names}
        tables = []
        for entity, block in ((VIDEO, self.videos), (USER, self.users)):
            names = [c.name for c in self.columns if c.entity == entity]
            data: dict[str, Any] = {f"{entity}_id": pa.array(block.ids, pa.string())}
            for j, n in enumerate(names):
                data[n] = pa.array(block.values[:, j], pa.float64())
            tables.append(pa.table(data))
        return meta, tables[0], tables[1]

    @classmethod
    def from_tables(cls, meta: dict[str, Any], videos: pa.Table, users: pa.Table) -> SideFeatures:
        columns = [SideColumn(**c) for c in meta["columns"]]
        blocks = []
        for entity, table in ((VIDEO, videos), (USER, users)):
            names = [c.name for c in columns if c.entity == entity]
            ids = table.column(f"{entity}_id").to_pylist()
            values = (
                np.stack([table.column(n).to_numpy() for n in names], 1)
                if names
                else np.zeros((len(ids), 0))
            )
            blocks.append((ids, values))
        return cls(columns, *blocks[0], *blocks[1])


class CatalogueSide:
    """Side features of a service's catalogue rows and of users by id, for scoring.

    Rows before ``len(catalogue_ids)`` are the artifact's videos; a row after them (an
    upload) and a user the table does not hold get zeros (the mean; no level).
    """

    def __init__(self, side: SideFeatures, catalogue_ids: Sequence[Any]) -> None:
        self.side = side
        self.video_rows = side.videos.rows(catalogue_ids)
        self._user_rows = {u: i for i, u in enumerate(side.users.ids)}

    def rows(
        self, users: Sequence[str], rows: np.ndarray, forgotten: Container[str] = ()
    ) -> np.ndarray:
        """(N, X) features of N impressions: ``users[i]`` shown catalogue row ``rows[i]``;
        a user in ``forgotten`` (erased) is unknown, whatever the table says of them."""
        get = self._user_rows.get
        ur = np.fromiter(
            (-1 if u in forgotten else get(u, -1) for u in users), np.int64, len(users)
        )
        return self.side.at(ur, self._video_rows(rows))

    def for_user(self, user: str, rows: np.ndarray, forgotten: Container[str] = ()) -> np.ndarray:
        """(M, X) features of one user's M candidates (catalogue rows): the user is looked
        up once (the scoring path)."""
        row = -1 if user in forgotten else self._user_rows.get(user, -1)
        return self.side.at(np.full(len(rows), row, dtype=np.int64), self._video_rows(rows))

    def _video_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows into the side table of catalogue ``rows`` (-1: an upload)."""
        rows = np.asarray(rows, dtype=np.int64)
        known = rows < len(self.video_rows)
        out = np.full(len(rows), -1, dtype=np.int64)
        out[known] = self.video_rows[rows[known]]
        return out
