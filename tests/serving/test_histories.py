"""Eq. 16-17 of a run of impressions against each user's history as it was when shown:
the grouped path (a user's history gathered once) and the per-impression path give the
same bits, and the histories end the same."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import histories as h


def _state(seed: int) -> tuple[h.Histories, list[h.Shown], np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    hist = h.Histories()
    for u in range(6):
        for r in rng.integers(0, 50, size=int(rng.integers(0, 40))):
            hist.add(f"u{u}", int(r))
    hist.freeze()
    run = [
        (f"u{int(rng.integers(0, 8))}", int(rng.integers(0, 50)), bool(rng.random() < 0.4))
        for _ in range(200)
    ]
    return hist, run, emb


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_and_per_impression_paths_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, seed: int, frozen: bool
) -> None:
    got = {}
    for threshold in (0, 10**9):  # every user grouped; none
        hist, run, emb = _state(seed)
        monkeypatch.setattr(h, "GROUPED_PAIRS", threshold)
        got[threshold] = (h.run_similarity(hist, run, emb.__getitem__, frozen), hist.rows())
    (a, ha), (b, hb) = got[0], got[10**9]
    assert np.array_equal(a[0], b[0], equal_nan=True) and np.array_equal(a[1], b[1], equal_nan=True)
    assert ha.keys() == hb.keys() and all(ha[u].tolist() == hb[u].tolist() for u in ha)
    # and each value is the definition: the history before the impression
    hist, run, emb = _state(seed)
    for i, (user, row, watched) in enumerate(run):
        got = hist.offline(user) if frozen else hist.get(user)
        before = [] if got is None else got.tolist()
        if before:
            sims = emb[before].astype(np.float64) @ emb[row].astype(np.float64)
            assert a[0][i] == pytest.approx(sims.max(), abs=1e-12)
            assert a[1][i] == pytest.approx(sims.mean(), abs=1e-12)
        else:
            assert np.isnan(a[0][i])
        if watched and not frozen:
            hist.add(user, row)


class _Reference:
    """The histories as they were kept before the arrays: a list and a set a user."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}

    def add(self, user: str, row: int) -> None:
        got = self.rows.setdefault(user, [])
        if row not in got:
            got.append(row)

    def drop_row(self, row: int) -> None:
        self.rows = {u: [r for r in rs if r != row] for u, rs in self.rows.items()}

    def forget(self, user: str) -> None:
        self.rows.pop(user, None)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add"] * 8 + ["drop", "forget"]),
            st.integers(0, 2),
            st.integers(0, 60),  # past 32 distinct rows: the duplicate check's numpy path
        ),
        max_size=300,
    )
)
@settings(max_examples=150, deadline=None)
def test_the_arrays_hold_what_a_list_and_a_set_held_and_a_view_never_changes(ops) -> None:
    got, want = h.Histories(), _Reference()
    taken: list[tuple[np.ndarray, list[int]]] = []  # views a reader holds, and their contents
    for op, u, row in ops:
        user = f"u{u}"
        view = got.get(user)
        if view is not None:
            taken.append((view, view.tolist()))
        if op == "add":
            got.add(user, row)
            want.add(user, row)
        elif op == "drop":
            got.drop_row(row)
            want.drop_row(row)
        else:
            got.forget(user)
            want.forget(user)
    for user in {f"u{i}" for i in range(3)}:
        rows = got.get(user)
        assert (rows.tolist() if rows is not None else []) == want.rows.get(user, [])
        assert rows is None or (rows.dtype == np.int32 and not rows.flags.writeable)
    assert {u: r.tolist() for u, r in got.rows().items()} == {
        u: r for u, r in want.rows.items()
    } | {u: [] for u in got.users() - set(want.rows)}
    for view, seen in taken:  # appends past it, growth and takedowns replaced it whole
        assert view.tolist() == seen


def test_a_restored_history_is_a_view_of_the_snapshot_and_is_never_written() -> None:
    flat = np.array([5, 6, 7, 8, 9], np.int32)
    flat.setflags(write=False)
    hist = h.Histories()
    hist.restore({"a": flat[:2], "b": flat[2:]}, set())
    assert np.shares_memory(hist.get("a"), flat)  # no buffer a user
    hist.add("a", 4)
    hist.add("b", 7)  # already there
    assert hist.get("a").tolist() == [5, 6, 4] and hist.get("b").tolist() == [7, 8, 9]
    assert flat.tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="history rows must be in"):
        hist.add("c", h.MAX_ROW + 1)
    with pytest.raises(ValueError, match="history rows must be in"):
        hist.restore({"d": [-1]}, set())
    with pytest.raises(ValueError, match="history rows must be in"):
        hist.restore({"d": np.array([-1], np.int32)}, set())
    # A snapshot's reader checked the range of all of them at once: taken as they are.
    hist.restore({"e": flat[1:3]}, set(), checked=True)
    assert hist.get("e").base is flat or np.shares_memory(hist.get("e"), flat)


def test_a_long_history_takes_each_video_once() -> None:
    # Past 32 rows the duplicate check is numpy's, not a list's: both paths tested.
    hist, want = h.Histories(), _Reference()
    rng = np.random.default_rng(0)
    views = []
    for row in rng.integers(0, 150, size=600).tolist():
        hist.add("u", row)
        want.add("u", row)
        views.append((hist.get("u"), list(want.rows["u"])))
    assert hist.get("u").tolist() == want.rows["u"] and len(want.rows["u"]) > 100
    assert all(v.tolist() == seen for v, seen in views)


def test_a_takedown_reaches_every_user_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h, "_DROP_CHUNK", 3)  # 10 users: four chunks, one partial
    hist, want = h.Histories(), _Reference()
    rng = np.random.default_rng(1)
    for u in range(10):
        for row in rng.integers(0, 12, size=int(rng.integers(1, 40))).tolist():
            hist.add(f"u{u}", row)
            want.add(f"u{u}", row)
    hist.restore({**hist.rows(), "r": np.array([3, 5, 7], np.int32)}, set())
    want.rows["r"] = [3, 5, 7]
    for row in (5, 11, 5, 0):
        hist.drop_row(row)
        want.drop_row(row)
        assert {u: r.tolist() for u, r in hist.rows().items()} == want.rows


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), max_size=200))
@settings(max_examples=100, deadline=None)
def test_histories_from_watches_are_the_adds_one_at_a_time(watches) -> None:
    users = [f"u{u}" for u, _ in watches]
    rows = np.array([r for _, r in watches], dtype=np.int64)
    got, want = h.Histories.from_watches(users, rows), h.Histories()
    for u, r in zip(users, rows.tolist(), strict=True):
        want.add(u, r)
    g, w = got.rows(), want.rows()
    assert list(g) == list(w)  # users in the order first seen, as the adds insert them
    assert all(g[u].tolist() == w[u].tolist() for u in w)
    before = {u: r.tolist() for u, r in g.items()}
    for u in list(g):
        got.add(u, 31)  # grows out of the shared array, never into a neighbour's rows
    assert all(got.get(u).tolist() == before[u] + [31] for u in before)
    assert {u: r.tolist() for u, r in g.items()} == before
