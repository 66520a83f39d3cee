"""Following the store's log: each committed row applied exactly once, whatever order
transactions commit in (a model of PostgreSQL's visibility rules, driven by hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from serving.log.follower import Follower
from serving.stores.contract import Stamp


class ModelStore:
    """Transactions get increasing ids when they begin and rows increasing sequence
    numbers when inserted; rows become visible when their transaction commits. A read's
    horizon is the oldest open transaction (or the next id), as pg_snapshot_xmin."""

    def __init__(self) -> None:
        self.next_xid = 1
        self.next_seq = 1
        self.open: dict[int, list[int]] = {}
        self.committed: list[Stamp] = []

    def begin(self) -> int:
        xid = self.next_xid
        self.next_xid += 1
        self.open[xid] = []
        return xid

    def insert(self, xid: int) -> None:
        self.open[xid].append(self.next_seq)
        self.next_seq += 1

    def commit(self, xid: int) -> list[Stamp]:
        rows = [Stamp(s, xid) for s in self.open.pop(xid)]
        self.committed += rows
        return rows

    def read(self, since: int) -> tuple[list[Stamp], int]:
        horizon = min(self.open, default=self.next_xid)
        rows = sorted((r for r in self.committed if r.order >= since), key=lambda r: r.seq)
        return rows, horizon


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("bicr"), st.integers(0, 7)), max_size=80))
def test_every_committed_row_is_applied_exactly_once(script: list[tuple[str, int]]) -> None:
    store, follower = ModelStore(), Follower()
    applied: list[int] = []
    own: set[int] = set()
    for op, pick in script:
        live = sorted(store.open)
        if op == "b":
            store.begin()
        elif op == "i" and live:
            store.insert(live[pick % len(live)])
        elif op == "c" and live:
            xid = live[pick % len(live)]
            # Half the commits are this replica's own writes, applied (marked) at once.
            rows = store.commit(xid)
            if pick % 2:
                for r in rows:
                    assert follower.mark("impressions", r)
                    applied.append(r.seq)
                    own.add(r.seq)
        elif op == "r":
            rows, horizon = store.read(follower.horizon["impressions"])
            applied += [r.seq for r in rows if follower.mark("impressions", r)]
            follower.advance({"impressions": horizon})
    for xid in sorted(store.open):
        store.commit(xid)
    rows, horizon = store.read(follower.horizon["impressions"])
    applied += [r.seq for r in rows if follower.mark("impressions", r)]
    follower.advance({"impressions": horizon})
    assert sorted(applied) == sorted(r.seq for r in store.committed)  # all, once each
    assert follower.applied["impressions"] == {}  # at idle nothing is remembered


def test_tables_are_followed_apart_and_the_horizon_never_moves_back() -> None:
    f = Follower()
    assert f.mark("videos", Stamp(1, 10)) and f.mark("watches", Stamp(1, 10))
    assert not f.mark("videos", Stamp(1, 10))
    f.advance({"videos": 20, "watches": 5})
    assert f.horizon["videos"] == 20 and f.applied["videos"] == {}
    assert f.applied["watches"] == {1: 10}
    f.advance({"videos": 15})
    assert f.horizon["videos"] == 20
    assert not f.mark("videos", Stamp(2, 19))  # below the horizon: read before
