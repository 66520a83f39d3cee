"""The one reader of impressions, against a direct pandas computation of the same split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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
