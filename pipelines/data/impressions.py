"""The one reader of impressions: DuckDB over ``impressions.parquet`` (out of core), the
training and test rows of a cut-off, and the watch histories built from them.

Training, triplet mining, GLMix, evaluation and the baseline ladder all read the log
here, so every stage splits it the same way: training is everything shown strictly
before the test start, testing everything at or after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from pipelines.data.io import impression_batches, open_parquet
from pipelines.data.log_rows import check_rows, log_connection
from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S, IMPRESSIONS_FILE
from recsys.errors import UserInputError
from recsys.glmix.config import GLMixConfig


def impressions_connection(data: Path) -> duckdb.DuckDBPyConnection:
    """DuckDB with two views over the data set's Parquet file (or directory of Parquet
    files): ``impressions`` and ``impressions_rows`` (the same with each row's position in
    the file, or in the files in name order, ``file_row_number``); the rows checked first
    (``log_rows.check_rows``)."""
    path = data / IMPRESSIONS_FILE
    if not path.exists():
        raise UserInputError(
            f"{path}: missing; this job needs impressions (a videos-only data set serves "
            "classification and embedding only, see docs/data.md)"
        )
    if path.is_dir():  # Parquet files (the service's archive): rows in file-name order
        impression_batches(path)  # clear error for a directory without readable files
    else:
        open_parquet(path)  # clear error for an unreadable file
    con = log_connection(path)
    check_rows(con, path)
    return con


def log_span(con: duckdb.DuckDBPyConnection) -> tuple[datetime, datetime]:
    """(first, last) ``shown_at`` of the log."""
    row = con.execute("SELECT min(shown_at), max(shown_at) FROM impressions").fetchall()[0]
    if row is None or row[0] is None:
        raise UserInputError("impressions.parquet has no impressions")
    return row[0], row[1]


def impression_rows(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> pa.Table:
    """(user_id, video_id, shown_at, watch_seconds, row) of the impressions matching
    ``where``, in file order; ``row`` is the position in the file (truth lookups)."""
    return con.sql(
        "SELECT user_id, video_id, shown_at, watch_seconds, file_row_number AS row "
        f"FROM impressions_rows WHERE {where} ORDER BY file_row_number",
        params=params,
    ).to_arrow_table()


def training_rows(con: duckdb.DuckDBPyConnection, test_start: datetime) -> pa.Table:
    return impression_rows(con, "shown_at < ?", [test_start])


def evaluation_rows(con: duckdb.DuckDBPyConnection, test_start: datetime) -> pa.Table:
    return impression_rows(con, "shown_at >= ?", [test_start])


def videos_shown_before(con: duckdb.DuckDBPyConnection, cutoff: datetime) -> set[str]:
    """Videos with an impression before ``cutoff`` (the others are cold start after it)."""
    got = con.execute(
        "SELECT DISTINCT video_id FROM impressions WHERE shown_at < ?", [cutoff]
    ).fetchall()
    return {r[0] for r in got}


def embedding_rows(ids: list[str], videos: list[str], what: str) -> np.ndarray:
    """Rows of ``videos`` in the table ``ids``; every video must be there."""
    index = {v: i for i, v in enumerate(ids)}
    missing = [v for v in videos if v not in index]
    if missing:
        raise UserInputError(
            f"{len(missing)} {what} name videos without an embedding, e.g. {missing[0]!r}"
        )
    return np.array([index[v] for v in videos], dtype=np.int64)


def labels(rows: pa.Table, watch_threshold_s: float) -> np.ndarray:
    """(N,) 1 where the impression is a valid watch (watch_seconds >= the threshold)."""
    return (rows.column("watch_seconds").to_numpy() >= watch_threshold_s).astype(np.int64)


def users_of(rows: pa.Table) -> np.ndarray:
    """(N,) object array of user ids; rows of one user share one ``str`` (a string per
    row would cost ~60 bytes a row)."""
    col = rows.column("user_id").combine_chunks().dictionary_encode()
    names = np.array([*col.dictionary.to_pylist(), None], dtype=object)  # None: a null id
    return names[col.indices.fill_null(len(names) - 1).to_numpy(zero_copy_only=False)]


def times_us(rows: pa.Table) -> np.ndarray:
    """(N,) ``shown_at`` as int64 microseconds."""
    return rows.column("shown_at").to_numpy().astype("datetime64[us]").astype(np.int64)


def group_histories(user_codes: list[int], video_rows: list[int]) -> dict[int, np.ndarray]:
    """{user code: the distinct video rows they watched} from parallel lists of watches."""
    by_user: dict[int, list[int]] = {}
    for u, r in zip(user_codes, video_rows, strict=True):
        by_user.setdefault(u, []).append(r)
    return {u: np.unique(np.array(r)) for u, r in by_user.items()}


@dataclass
class RecRows:
    """Training and test impressions as rows into one video table (``video_ids``)."""

    video_ids: list[str]
    train_users: np.ndarray  # (N_train,) object
    train_videos: np.ndarray  # (N_train,) int64 rows into video_ids
    train_labels: np.ndarray  # (N_train,) float64 in {0, 1}
    train_times: np.ndarray  # (N_train,) int64 microseconds
    test_users: np.ndarray
    test_videos: np.ndarray
    test_labels: np.ndarray  # int64
    cold_start: np.ndarray  # bool: video without an impression before the test start
    test_user_index: np.ndarray  # int64 ids shared with history_rows
    history_rows: dict[int, np.ndarray]
    train_user_index: np.ndarray | None = None  # int64 ids shared with history_rows
    #: (N_train, X) / (N_test, X) side features of the rows (``recsys.side_features``):
    #: what GLMix gets beside the representation when the shipped model has them
    train_side: np.ndarray | None = None
    test_side: np.ndarray | None = None

    @property
    def validation_mask(self) -> np.ndarray:
        """The last 10% (by time) of the training rows: where sizes and penalties are chosen."""
        return self.train_times >= np.quantile(self.train_times, 0.9)


def load_rec_rows(
    data: Path,
    video_ids: list[str],
    test_start: datetime,
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S,
) -> RecRows:
    """The training and test rows of ``data`` split at ``test_start``, with each user's
    training-period valid watches as their history."""
    con = impressions_connection(data)
    train = training_rows(con, test_start)
    test = evaluation_rows(con, test_start)
    if train.num_rows == 0 or test.num_rows == 0:
        raise UserInputError(
            "the baseline ladder needs impressions before and after the test start"
        )
    tr_v = embedding_rows(video_ids, train.column("video_id").to_pylist(), "training impressions")
    te_v = embedding_rows(video_ids, test.column("video_id").to_pylist(), "test impressions")
    tr_u, te_u = users_of(train), users_of(test)
    tr_y = labels(train, watch_threshold_s).astype(np.float64)
    seen = np.zeros(len(video_ids), dtype=bool)
    seen[tr_v] = True
    uindex = {u: i for i, u in enumerate(sorted(set(tr_u.tolist()) | set(te_u.tolist())))}
    watched = tr_y > 0
    history = group_histories([uindex[u] for u in tr_u[watched].tolist()], tr_v[watched].tolist())
    return RecRows(
        video_ids=video_ids,
        train_users=tr_u,
        train_videos=tr_v,
        train_labels=tr_y,
        train_times=times_us(train),
        test_users=te_u,
        test_videos=te_v,
        test_labels=labels(test, watch_threshold_s),
        cold_start=~seen[te_v],
        test_user_index=np.array([uindex[u] for u in te_u.tolist()], dtype=np.int64),
        history_rows=history,
        train_user_index=np.array([uindex[u] for u in tr_u.tolist()], dtype=np.int64),
    )


def video_names(rows: RecRows, videos: np.ndarray, cfg: GLMixConfig) -> np.ndarray | None:
    """Each row's video id for GLMix's per-video coordinate (None without one): references
    to the catalogue's id strings, no copy per row."""
    if not cfg.video_effects:
        return None
    return np.asarray(rows.video_ids, dtype=object)[videos]
