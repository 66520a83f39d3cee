"""Following the store's log: each row applied once, whatever order commits arrive in."""

from __future__ import annotations

from serving.replication import LogCursor


def test_rows_are_applied_once_and_late_commits_within_the_window_are_taken() -> None:
    c = LogCursor(lookback=3)
    assert c.read_from() == (0, 0, 0)
    assert [c.mark("watches", s) for s in (1, 2, 5)] == [True, True, True]
    assert c.mark("watches", 5) is False  # seen before
    assert c.read_from() == (0, 2, 0)  # re-read 3 numbers below the newest
    assert c.mark("watches", 4) is True  # committed late, inside the window
    assert c.mark("watches", 1) is False  # below the window: applied on an earlier read
    assert c.mark("videos", 1) is True  # tables count apart


def test_no_lookback_means_commit_order_is_sequence_order() -> None:
    c = LogCursor(lookback=0)
    assert c.mark("impressions", 7) is True
    assert c.read_from() == (0, 0, 7)
    assert c.mark("impressions", 6) is False


def test_remembered_numbers_stay_bounded() -> None:
    c = LogCursor(lookback=10)
    for s in range(1, 1001):
        c.mark("impressions", s)
    c.forget_old()
    assert len(c.applied["impressions"]) <= 2 * 10 + 64
    assert c.mark("impressions", 995) is False and c.mark("impressions", 1001) is True
