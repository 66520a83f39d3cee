"""The one reader of impressions, against a direct pandas computation of the same split."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.impressions import (
    embedding_rows,
    evaluation_rows,
    group_histories,
    impressions_connection,
    load_rec_rows,
    log_span,
    training_rows,
    videos_shown_before,
)
from recsys.errors import UserInputError
from recsys.splits import default_test_start


@pytest.fixture(scope="module")
def log(small_world_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(small_world_dir / "impressions.parquet")
    df["row"] = np.arange(len(df))
    return df


def test_training_and_test_rows_split_at_the_cutoff(small_world_dir: Path, log) -> None:
    con = impressions_connection(small_world_dir)
    first, last = log_span(con)
    assert (first, last) == (log.shown_at.min().to_pydatetime(), log.shown_at.max().to_pydatetime())
    cut = default_test_start(first, last)
    train, test = training_rows(con, cut), evaluation_rows(con, cut)
    want_train = log[log.shown_at < pd.Timestamp(cut)]
    want_test = log[log.shown_at >= pd.Timestamp(cut)]
    # every row once, in file order, with its position in the file
    assert train.column("row").to_pylist() == want_train.row.tolist()
    assert test.column("row").to_pylist() == want_test.row.tolist()
    assert train.column("user_id").to_pylist() == want_train.user_id.tolist()
    assert videos_shown_before(con, cut) == set(want_train.video_id)


def test_rec_rows_match_a_direct_computation(small_world_dir: Path, log) -> None:
    con = impressions_connection(small_world_dir)
    cut = default_test_start(*log_span(con))
    ids = sorted(set(log.video_id))
    rows = load_rec_rows(small_world_dir, ids, cut, watch_threshold_s=10.0)
    train = log[log.shown_at < pd.Timestamp(cut)]
    test = log[log.shown_at >= pd.Timestamp(cut)]
    index = {v: i for i, v in enumerate(ids)}
    assert rows.train_videos.tolist() == [index[v] for v in train.video_id]
    assert rows.train_labels.tolist() == (train.watch_seconds >= 10.0).astype(float).tolist()
    assert rows.test_labels.tolist() == (test.watch_seconds >= 10.0).astype(int).tolist()
    assert rows.cold_start.tolist() == (~test.video_id.isin(set(train.video_id))).tolist()
    # histories: each user's distinct valid watches before the cut-off
    users = sorted(set(train.user_id) | set(test.user_id))
    for u in users[:20]:
        code = users.index(u)
        mine = train[(train.user_id == u) & (train.watch_seconds >= 10.0)]
        want = sorted({index[v] for v in mine.video_id})
        assert rows.history_rows.get(code, np.array([], int)).tolist() == want
    # validation: the last 10% of the training period by time
    assert rows.validation_mask.mean() == pytest.approx(0.1, abs=0.02)
    assert (
        rows.train_times[rows.validation_mask].min()
        >= rows.train_times[~rows.validation_mask].max()
    )


def test_group_histories_and_embedding_rows() -> None:
    got = group_histories([2, 0, 2, 2], [5, 1, 5, 3])
    assert {k: v.tolist() for k, v in got.items()} == {2: [3, 5], 0: [1]}
    assert embedding_rows(["a", "b", "c"], ["c", "a"], "x").tolist() == [2, 0]
    with pytest.raises(UserInputError, match="1 test rows name videos without an embedding"):
        embedding_rows(["a"], ["a", "zz"], "test rows")


def test_a_data_set_without_impressions_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"impressions\.parquet: missing"):
        impressions_connection(tmp_path)


def _log(d: Path, n: int = 40, **bad: tuple[int, object]) -> Path:
    """A data set directory whose log has n good rows, then each ``bad`` column's value put
    at its row (``watch_seconds=(3, float("nan"))``)."""
    d.mkdir(parents=True)
    cols: dict[str, list] = {
        "user_id": [f"u{i % 7}" for i in range(n)],
        "video_id": [f"v{i % 5}" for i in range(n)],
        "shown_at": list(pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC")),
        "watch_seconds": [float(i % 3) * 20.0 for i in range(n)],
    }
    for col, (row, value) in bad.items():
        cols[col][row] = value
    # pyarrow, not pandas: pandas would write a NaN as a null
    table = pa.table(
        {
            "user_id": pa.array(cols["user_id"], pa.string()),
            "video_id": pa.array(cols["video_id"], pa.string()),
            "shown_at": pa.array(cols["shown_at"], pa.timestamp("us", tz="UTC")),
            "watch_seconds": pa.array(cols["watch_seconds"], pa.float64()),
        }
    )
    pq.write_table(table, d / "impressions.parquet")
    return d


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"user_id": (7, None)}, "user_id: empty or null id at row 7"),
        ({"video_id": (3, "")}, "video_id: empty or null id at row 3"),
        ({"shown_at": (5, None)}, "shown_at: null timestamp at row 5 (user 'u5')"),
        ({"watch_seconds": (11, float("nan"))}, "watch_seconds: nan at row 11"),
        ({"watch_seconds": (12, -1.0)}, "watch_seconds: -1.0 at row 12"),
        ({"watch_seconds": (13, float("inf"))}, "watch_seconds: inf at row 13"),
        ({"watch_seconds": (14, None)}, "watch_seconds: null at row 14"),
    ],
)
def test_every_job_reading_the_log_refuses_a_bad_row_by_name(
    tmp_path: Path, bad: dict, needle: str
) -> None:
    d = _log(tmp_path / "ds", **bad)
    with pytest.raises(UserInputError) as got:
        impressions_connection(d)
    assert needle in str(got.value) and "\n" not in str(got.value)
    assert "more bad rows" not in str(got.value)  # the one bad row


def test_the_first_bad_row_is_named_and_the_rest_counted_in_a_directory_too(
    tmp_path: Path,
) -> None:
    # A NaN alone in a file whose statistics leave it out: DuckDB's WHERE isnan(x) finds
    # none there (the check must not trust it), and the first bad row is in the second file.
    d = _log(tmp_path / "one", watch_seconds=(30, float("nan")))
    with pytest.raises(UserInputError, match="watch_seconds: nan at row 30"):
        impressions_connection(d)
    arch = tmp_path / "arch" / "impressions.parquet"
    arch.mkdir(parents=True)
    good = pq.read_table(_log(tmp_path / "good") / "impressions.parquet")
    pq.write_table(good, arch / "a.parquet")
    secs = good.column("watch_seconds").to_numpy().copy()
    secs[[2, 9]] = [-3.0, np.nan]
    pq.write_table(good.set_column(3, "watch_seconds", pa.array(secs)), arch / "b.parquet")
    with pytest.raises(UserInputError) as got:
        impressions_connection(arch.parent)
    assert "watch_seconds: -3.0 at row 42" in str(got.value)
    assert "(and 1 more bad rows" in str(got.value)


def test_a_checked_log_is_scanned_again_only_when_its_file_changes(tmp_path: Path) -> None:
    d = _log(tmp_path / "ds")
    con = impressions_connection(d)  # good: remembered
    # the check left no unfinished result behind: the connection takes the next query
    assert training_rows(con, datetime(2027, 1, 1, tzinfo=UTC)).num_rows == 40
    t = pq.read_table(d / "impressions.parquet")
    secs = t.column("watch_seconds").to_numpy().copy()
    secs[4] = -2.0
    pq.write_table(t.set_column(3, "watch_seconds", pa.array(secs)), d / "impressions.parquet")
    with pytest.raises(UserInputError, match=r"watch_seconds: -2\.0 at row 4"):
        impressions_connection(d)
