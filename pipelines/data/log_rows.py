"""The log's DuckDB views and its row check, apart from the readers: every job's input
check (``pipelines.data.io.check_job_input``) and the log's reader
(``pipelines.data.impressions``) both use them, and neither imports the other's module
for it.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from recsys.dataset import IMPRESSIONS_FILE
from recsys.errors import UserInputError


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def log_connection(path: Path) -> duckdb.DuckDBPyConnection:
    """DuckDB with the views ``impressions`` and ``impressions_rows`` (each row's position
    in the file, or in the files in name order, as ``file_row_number``) over ``path``: a
    Parquet file or a directory of them (the service's archive). No check of its own."""
    con = duckdb.connect()
    if path.is_dir():
        files = f"read_parquet('{_sql_str(path)}/*.parquet', union_by_name = true"
        con.execute(f"CREATE VIEW impressions AS SELECT * FROM {files})")
        con.execute(
            "CREATE VIEW impressions_rows AS SELECT * EXCLUDE (filename, file_row_number), "
            "row_number() OVER (ORDER BY filename, file_row_number) - 1 AS file_row_number "
            f"FROM {files}, filename = true, file_row_number = true)"
        )
    else:
        con.execute(f"CREATE VIEW impressions AS SELECT * FROM read_parquet('{_sql_str(path)}')")
        con.execute(
            "CREATE VIEW impressions_rows AS SELECT * FROM "
            f"read_parquet('{_sql_str(path)}', file_row_number = true)"
        )
    return con


#: a row the contract refuses (``recsys validate``'s checks). Evaluated in aggregates'
#: FILTER clauses: DuckDB 2.0 pushes ``WHERE isnan(x)`` into the Parquet scan and then
#: finds no NaN at all (the files' statistics leave NaN out)
_BAD_ROW = """
    user_id IS NULL OR length(user_id) = 0 OR video_id IS NULL OR length(video_id) = 0
    OR shown_at IS NULL OR watch_seconds IS NULL
    OR NOT (isfinite(watch_seconds) AND watch_seconds >= 0)
"""
#: logs whose rows passed ``check_rows``: (path, size and mtime of each file); a
#: pipeline opens its log several times and pays the scan once
_CHECKED: set[tuple[str, tuple[tuple[int, int], ...]]] = set()


def _fingerprint(path: Path) -> tuple[str, tuple[tuple[int, int], ...]]:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    stats = [f.stat() for f in files]
    return str(path.resolve()), tuple((s.st_size, s.st_mtime_ns) for s in stats)


def check_rows(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Every job's row check of the log (out of core; once per file version): ids
    non-empty, a timestamp, watch time finite and >= 0. A bad row stops the job with one
    line naming the first (exit 2), as ``recsys validate`` would, never a traceback or a
    null taken for an id or a NaN for "not watched".

    One streaming pass counts each file's rows and bad rows and finds its first bad one
    (a directory's global row numbers would need a sort of every row: 2.3 GB for 8.3M
    rows); the first bad row's place is then summed from the files before it."""
    key = _fingerprint(path)
    if key in _CHECKED:
        return
    source = (
        f"read_parquet('{_sql_str(path)}/*.parquet', union_by_name = true, "
        if path.is_dir()
        else f"read_parquet('{_sql_str(path)}', "
    )
    # fetchall: DuckDB 2.0 keeps a result fetched by fetchone unfinished, and the
    # connection then refuses the caller's next query
    files = con.execute(
        f"SELECT filename, count(*), count(*) FILTER (WHERE {_BAD_ROW}), "
        f"min(file_row_number) FILTER (WHERE {_BAD_ROW}) "
        f"FROM {source}filename = true, file_row_number = true) GROUP BY filename"
    ).fetchall()
    files.sort()  # the views' order: file name, then the row in the file
    n = sum(f[2] for f in files)
    if n:
        k = next(i for i, f in enumerate(files) if f[2])
        name, first = files[k][0], files[k][3]
        before = sum(f[1] for f in files[:k])
        user, video, shown, secs = con.execute(
            "SELECT user_id, video_id, shown_at, watch_seconds FROM "
            f"read_parquet('{_sql_str(Path(name))}', file_row_number = true) "
            "WHERE file_row_number = ?",
            [first],
        ).fetchall()[0]
        row = before + first
        if not user or not video:
            what = f"{'user_id' if not user else 'video_id'}: empty or null id at row {row}"
        elif shown is None:
            what = f"shown_at: null timestamp at row {row} (user {user!r})"
        else:
            value = "null" if secs is None else secs
            what = (
                f"watch_seconds: {value} at row {row} (user {user!r}, video {video!r}) "
                "must be finite and >= 0"
            )
        more = f" (and {n - 1} more bad rows: `recsys validate` lists them)" if n > 1 else ""
        raise UserInputError(f"{IMPRESSIONS_FILE}: {what}{more}")
    _CHECKED.add(key)
