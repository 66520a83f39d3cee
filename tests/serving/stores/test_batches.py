"""An impression batch in one statement on both stores: each row's stamp, retried
event_ids (stored before, or twice in the batch) acknowledged without a row."""

from __future__ import annotations

import pytest

from serving.stores import Impression, StateStore

pytestmark = pytest.mark.xdist_group("postgres")


def _imp(event: str | None, user: str = "u") -> Impression:
    return Impression(user, "v", "2030-01-01T00:00:00+00:00", 3.0, event)


def test_a_batch_returns_each_rows_stamp_and_skips_retries(store: StateStore) -> None:
    (first,) = store.insert_impressions([_imp("e-old")])
    assert first is not None
    batch = [_imp(None, "a"), _imp("e1", "b"), _imp("e1", "c"), _imp("e-old", "d"), _imp(None, "e")]
    got = store.insert_impressions(batch)
    assert [s is None for s in got] == [False, False, True, True, False]
    seqs = [s.seq for s in got if s is not None]
    assert seqs == sorted(seqs) and seqs[0] > first.seq
    stored = {s.seq: i for s, i in store.changes({}).impressions}
    assert [stored[s.seq].user_id for s in got if s is not None] == ["a", "b", "e"]
    assert store.insert_impressions([]) == []
