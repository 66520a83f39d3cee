"""Remembered neighbour lists (serving/neighbours.py): what the catalogue answers from
them equals a fresh search, with uploads since and takedowns, and the memory stays in its
budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.index import IndexConfig, VideoIndex
from serving.catalogue import Catalogue
from serving.neighbours import MAX_TAIL, Entry, NeighbourCache, enough, merge_tail


def _unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _catalogue(n: int, kind: str, cache_bytes: int, seed: int = 0) -> Catalogue:
    x = _unit(n, seed=seed)
    ids = [f"v{i}" for i in range(n)]
    cfg = IndexConfig(kind, hnsw_ef_search=512, ivf_nlist=4, ivf_nprobe=4)
    return Catalogue(ids, x, VideoIndex.build(ids, x, cfg), cache_bytes)


def _exact(cat: Catalogue, rows: np.ndarray, k: int) -> list[list[int]]:
    """Brute force over the live rows, ties by row."""
    emb = cat.emb[: len(cat.ids)]
    live = np.array([r for r in range(len(cat.ids)) if r not in cat.removed_rows])
    out = []
    for r in rows.tolist():
        s = emb[live] @ emb[r]
        out.append(live[np.lexsort((live, -s))][:k].tolist())
    return out


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_answers_from_the_table_equal_a_fresh_search(kind: str) -> None:
    cat = _catalogue(300, kind, 1 << 20)
    fresh = _catalogue(300, kind, 0)
    assert cat.neighbour_cache is not None and fresh.neighbour_cache is None
    rows = np.array([0, 5, 17, 5, 299])
    first = cat.neighbours(rows, 10)
    assert cat.neighbour_cache.misses == 5 and cat.neighbour_cache.hits == 0
    # ... and 5, asked twice, searched once
    assert len(cat.neighbour_cache) == 4
    again = cat.neighbours(rows, 10)
    assert cat.neighbour_cache.hits == 5
    want = fresh.neighbours(rows, 10)
    for got in (first, again):
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    # Small graph, wide search: the answers are the exact ones.
    assert first[1].tolist() == _exact(cat, rows, 10)
    assert (first[1][:, 0] == rows).all()  # each row finds itself first


def test_uploads_since_are_merged_and_takedowns_left_out() -> None:
    cat = _catalogue(200, "hnsw", 1 << 20, seed=1)
    rows = np.arange(0, 200, 7)
    cat.neighbours(rows, 12)  # fills the table
    new = _unit(30, seed=9)
    new[:10] = cat.emb[rows[:10]] * 0.999 + 0.001 * new[:10]  # near twins of seeds
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    for i, v in enumerate(new):
        cat.append(f"up{i}", v)
    for r in [*rows[10:14].tolist(), int(rows[0]) + 1]:
        cat.remove(f"v{r}")
    cache = cat.neighbour_cache
    assert cache is not None
    # An entry still answers unless a takedown left it fewer than 12 live neighbours.
    short = sum(
        bool(set(cache.get(r, len(cat.ids)).rows.tolist()) & cat.removed_rows)
        for r in rows.tolist()
    )
    assert 0 < short < len(rows)
    hits = cache.hits
    _, got = cat.neighbours(rows, 12)
    assert cache.hits == hits + len(rows) - short
    assert got.tolist() == _exact(cat, rows, 12)
    assert not np.isin(got, list(cat.removed_rows)).any()
    assert (got[:10, :2] >= 200).any(axis=1).all()  # the twins uploaded since are found


def test_an_entry_with_too_long_a_tail_or_too_few_live_neighbours_is_searched_again() -> None:
    cache = NeighbourCache(1 << 20)
    e = Entry(100, np.zeros(5, np.float32), np.arange(5, dtype=np.int64))
    cache.put(3, e)
    assert cache.get(3, 100) is e and cache.get(3, 100 + MAX_TAIL) is e
    assert cache.get(3, 101 + MAX_TAIL) is None
    assert cache.get_many([3, 4, 3], 100) == [e, None, e]
    assert cache.get_many([3], 101 + MAX_TAIL) == [None]
    none = np.zeros(0, np.int64)
    assert enough(e, 5, none) and not enough(e, 6, none)
    assert not enough(e, 5, np.array([2])) and enough(e, 4, np.array([2, 77]))
    padded = Entry(100, np.zeros(5, np.float32), np.array([0, 1, 2, -1, -1]))
    assert padded.live == 3 and not enough(padded, 4, none) and enough(padded, 3, none)
    assert not enough(padded, 3, np.array([1])) and enough(padded, 2, np.array([1]))
    # An entry over the whole index answers any k.
    whole = Entry(3, np.zeros(3, np.float32), np.arange(3, dtype=np.int64))
    assert enough(whole, 50, np.array([0, 1]))


def test_the_table_stays_within_its_budget_least_recently_used_first() -> None:
    e = Entry(10, np.zeros(10, np.float32), np.zeros(10, np.int64))
    cache = NeighbourCache(3 * e.nbytes)
    for r in range(3):
        cache.put(r, e)
    assert cache.get(0, 10) is e  # 0 is now the most recent
    cache.put(3, e)
    assert len(cache) == 3 and cache.nbytes <= 3 * e.nbytes
    assert cache.get(1, 10) is None and cache.get(0, 10) is e
    big = Entry(0, np.zeros(10_000, np.float32), np.zeros(10_000, np.int64))
    cache.put(9, big)  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.get(9, 0) is None and len(cache) == 3


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 12),
    t=st.integers(0, 12),
    k=st.integers(1, 20),
    pad=st.integers(0, 3),
    seed=st.integers(0, 10_000),
)
def test_merging_a_tail_is_the_best_k_of_both(m: int, t: int, k: int, pad: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.normal(size=m).astype(np.float32))[::-1]
    rows = rng.permutation(1000)[:m].astype(np.int64)
    scores = np.concatenate([scores, np.full(pad, -np.inf, np.float32)])
    rows = np.concatenate([rows, np.full(pad, -1, np.int64)])
    tail = rng.normal(size=(t, 4)).astype(np.float32)
    q = rng.normal(size=4).astype(np.float32)
    _, got_r = merge_tail(Entry(2000, scores, rows), q, tail, 2000, k)
    pairs = [(float(s), int(r)) for s, r in zip(scores, rows, strict=True) if r >= 0]
    pairs += [(float(s), 2000 + i) for i, s in enumerate((tail @ q).tolist())]
    want = sorted(pairs, key=lambda p: -p[0])[:k]
    assert [r for r in got_r.tolist() if r >= 0] == [r for _, r in want]
    assert len(got_r) == min(k, m + pad + t)


def test_video_effect_rows_follow_uploads_marks_and_resets() -> None:
    from serving.catalogue import VideoEffectRows

    cat = _catalogue(6, "flat", 0)
    fitted = {"v1": 0, "v4": 1, "up1": 2}  # the offline fit saw v1, v4 and (say) up1
    asked: list[list[str]] = []

    def rows_of(names: list[str]) -> np.ndarray:
        asked.append(list(names))
        return np.array([fitted.get(v, -1) for v in names], np.int64)

    coef = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # the fit's, by its rows
    eff = VideoEffectRows(cat, rows_of, coef)
    assert eff.coef is not None and eff.coef.tolist() == [
        [0, 0],
        [1, 2],
        [0, 0],
        [0, 0],
        [3, 4],
        [0, 0],
    ]
    for i, v in enumerate(_unit(2, seed=5)):
        cat.append(f"up{i}", v)
    model_rows, moved = eff.lookup(np.array([7, 1, 4, 6, 0]))
    assert model_rows.tolist() == [2, 0, 1, -1, -1] and moved.tolist() == []
    assert asked[-1] == ["up1", "up0"]  # only uploads are looked up by id
    gathered, moved = eff.coefficients(np.array([7, 1, 4, 6, 0]))  # uploads among them
    assert gathered.tolist() == [[5, 6], [1, 2], [3, 4], [0, 0], [0, 0]] and moved.tolist() == []
    eff.mark(np.array([4, 7]))
    eff.mark(np.array([5000]))  # grows past its size, keeping what it held
    assert len(eff.moved) > 5000 and eff.moved[5000] and eff.moved[[4, 7]].all()
    assert eff.lookup(np.array([7, 1, 4, 6]))[1].tolist() == [0, 2]
    assert eff.coefficients(np.array([1, 4, 5]))[1].tolist() == [1]  # the table's own rows
    assert eff.coefficients(np.array([7, 1, 4, 6]))[1].tolist() == [0, 2]
    cat.remove("v4")
    eff.reset(["v1", "up0", "v4", "gone"])  # taken down and unknown ids left out
    assert eff.lookup(np.array([0, 1, 4, 6, 7]))[1].tolist() == [1, 3]
