"""Triplet mining SQL against a pure-Python reference on hand-made logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.triplets import TripletConfig, mine_cowatch_pairs, mine_triplets

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _log(rows: list[tuple[str, str, float, float]]) -> pa.Table:
    """rows: (user, video, minutes after T0, watch seconds)."""
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "video_id": pa.array([r[1] for r in rows], pa.string()),
            "shown_at": pa.array(
                [T0 + timedelta(minutes=r[2]) for r in rows], pa.timestamp("us", tz="UTC")
            ),
            "watch_seconds": pa.array([r[3] for r in rows], pa.float64()),
        }
    )


def reference(
    rows, threshold=10.0, window_min=30.0, train_end_min=None
) -> set[tuple[str, str, str, str]]:
    rows = [r for r in rows if train_end_min is None or r[2] < train_end_min]
    watches = [r for r in rows if r[3] >= threshold]
    out = set()
    for u, a, ta, _ in watches:
        near = [r for r in rows if r[0] == u and abs(r[2] - ta) <= window_min]
        watched_near = {r[1] for r in near if r[3] >= threshold}
        positives = {r[1] for r in near if r[3] >= threshold and r[1] != a}
        negatives = {
            r[1] for r in near if r[3] < threshold and r[1] != a and r[1] not in watched_near
        }
        for p in positives:
            for n in negatives:
                out.add((a, p, n, u))
    return out


def _mine(rows, **kw) -> set[tuple[str, str, str, str]]:
    train_end = kw.pop("train_end", None)
    con = duckdb.connect()
    con.register("impressions", _log(rows))
    t = mine_triplets(con, TripletConfig(max_per_anchor=10**6, max_per_user=10**6, **kw), train_end)
    return set(
        zip(
            *(t.column(c).to_pylist() for c in ("anchor", "positive", "negative", "user_id")),
            strict=True,
        )
    )


BOUNDARY_LOG = [
    # user a: v1 watched, v2 watched exactly 30 min later (inclusive), v3 skipped at 15 min,
    # v4 skipped 30 min + 1 s after v1 (outside v1's window, inside v2's).
    ("a", "v1", 0.0, 12.0),
    ("a", "v2", 30.0, 10.0),  # threshold equality: a valid watch
    ("a", "v3", 15.0, 9.999),
    ("a", "v4", 30.0 + 1 / 60, 0.0),
    # user b: the same video twice, and a skip of a video b watched elsewhere in the window.
    ("b", "v1", 0.0, 50.0),
    ("b", "v1", 5.0, 50.0),
    ("b", "v5", 6.0, 20.0),
    ("b", "v5", 7.0, 0.0),  # skipped once, watched within the window: never a negative
    ("b", "v6", 8.0, 1.0),
    # user c: one watch only -> no positives.
    ("c", "v1", 0.0, 100.0),
    ("c", "v2", 1.0, 0.0),
]


def test_matches_reference_on_boundary_cases() -> None:
    got = _mine(BOUNDARY_LOG)
    want = reference(BOUNDARY_LOG)
    assert got == {(a, p, n, u) for a, p, n, u in want}
    # Exactly 30 minutes counts; threshold equality counts as a watch.
    assert ("v1", "v2", "v3", "a") in got
    # 30 min + 1 s is outside v1's window but inside v2's.
    assert not any(t[0] == "v1" and t[2] == "v4" for t in got)
    assert ("v2", "v1", "v4", "a") in got
    # Same video twice never pairs with itself; a video watched in the window is never a negative.
    assert all(t[0] != t[1] for t in got)
    assert not any(t[3] == "b" and t[2] == "v5" for t in got)
    assert ("v1", "v5", "v6", "b") in got
    # The single-watch user contributes nothing.
    assert not any(t[3] == "c" for t in got)


def test_threshold_and_window_options() -> None:
    assert _mine(BOUNDARY_LOG, watch_threshold_s=10.5) == reference(BOUNDARY_LOG, threshold=10.5)
    assert _mine(BOUNDARY_LOG, window_s=10 * 60) == reference(BOUNDARY_LOG, window_min=10)


def test_train_end_excludes_later_impressions() -> None:
    got = _mine(BOUNDARY_LOG, train_end=T0 + timedelta(minutes=20))
    assert got == reference(BOUNDARY_LOG, train_end_min=20)
    assert not any("v2" in t[:3] for t in got if t[3] == "a")


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2"]),
            st.sampled_from(["v1", "v2", "v3", "v4"]),
            st.sampled_from([0.0, 10.0, 29.0, 30.0, 31.0, 45.0, 60.0]),
            st.sampled_from([0.0, 9.99, 10.0, 30.0]),
        ),
        max_size=14,
    )
)
def test_matches_reference_on_random_logs(rows) -> None:
    got, want = _mine(rows), reference(rows)
    # Each (anchor, positive, negative) is kept once, attributed to one of its users.
    assert {t[:3] for t in got} == {t[:3] for t in want}
    assert len(got) == len({t[:3] for t in got})
    assert got <= want


def test_caps_dedup_and_reproducibility() -> None:
    rows = [("u", f"v{i}", float(i), 20.0 if i % 2 == 0 else 0.0) for i in range(12)]
    rows += [("w", f"v{i}", float(i), 20.0 if i % 2 == 0 else 0.0) for i in range(12)]
    con = duckdb.connect()
    con.register("impressions", _log(rows))
    full = mine_triplets(con, TripletConfig(max_per_anchor=10**6, max_per_user=10**6))
    # Identical behaviour of users u and w: each (a, p, n) is kept once.
    keys = list(
        zip(
            full.column("anchor").to_pylist(),
            full.column("positive").to_pylist(),
            full.column("negative").to_pylist(),
            strict=True,
        )
    )
    assert len(keys) == len(set(keys)) == len(reference(rows)) // 2
    capped = mine_triplets(con, TripletConfig(max_per_anchor=3, max_per_user=10, seed=1))
    again = mine_triplets(con, TripletConfig(max_per_anchor=3, max_per_user=10, seed=1))
    other = mine_triplets(con, TripletConfig(max_per_anchor=3, max_per_user=10, seed=2))
    assert capped.equals(again)
    assert not capped.equals(other)
    users = capped.column("user_id").to_pylist()
    assert max(users.count(u) for u in set(users)) <= 10
    pairs = list(zip(users, capped.column("anchor").to_pylist(), strict=True))
    assert max(pairs.count(p) for p in set(pairs)) <= 3
    assert set(
        zip(
            *(capped.column(c).to_pylist() for c in ("anchor", "positive", "negative")), strict=True
        )
    ) <= set(keys)


def test_cowatch_pairs() -> None:
    con = duckdb.connect()
    con.register("impressions", _log(BOUNDARY_LOG))
    pairs = mine_cowatch_pairs(con)
    got = set(
        zip(pairs.column("video_a").to_pylist(), pairs.column("video_b").to_pylist(), strict=True)
    )
    assert got == {("v1", "v2"), ("v1", "v5")}


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        TripletConfig(window_s=-1)
    with pytest.raises(ValueError):
        TripletConfig(max_per_user=0)
