"""The nearest videos of catalogue videos, remembered: a related-videos table filled on
demand, for an approximate index (HNSW, IVF), where one search costs far more than the
rest of a request (a 1M-video HNSW at the width that gives recall@20 of 0.95: about half a
millisecond a query, and a recommendation asks for the neighbours of 20 watches).

An entry is what the index answered for a row when it held ``indexed`` videos. Videos
added since are few (uploads) and are searched exactly over their rows and merged in; an
entry whose tail grew past ``MAX_TAIL`` is searched again. Taken-down videos are left out
when an answer is read, never stored out, so a takedown needs no invalidation. Least
recently used entries go first once the table holds ``budget_bytes``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

#: videos added since an entry was searched that are merged in exactly (rows x E
#: products a query); beyond, the entry is searched again
MAX_TAIL = 4096


@dataclass(frozen=True)
class Entry:
    #: how many videos the index held when it answered
    indexed: int
    #: (m,) float32 inner products and (m,) int64 rows, best first (-1 padding last)
    scores: np.ndarray
    rows: np.ndarray
    #: how many of ``rows`` are videos (not -1 padding): read on every hit
    live: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "live", int(np.count_nonzero(self.rows >= 0)))

    @property
    def nbytes(self) -> int:
        return int(self.scores.nbytes + self.rows.nbytes) + 64


class NeighbourCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, row: int, size: int) -> Entry | None:
        """The entry of ``row``, unless the catalogue (``size`` videos now) has grown past
        it by more than ``MAX_TAIL``. Whether it holds enough neighbours is the caller's
        question (``enough``); ``record`` counts the outcome."""
        return self.get_many([row], size)[0]

    def get_many(self, rows: list[int], size: int) -> list[Entry | None]:
        """``get`` of each row, under one acquisition of the lock."""
        out: list[Entry | None] = []
        with self._lock:
            entries = self._entries
            for row in rows:
                entry = entries.get(row)
                if entry is None or size - entry.indexed > MAX_TAIL:
                    out.append(None)
                else:
                    entries.move_to_end(row)
                    out.append(entry)
        return out

    def record(self, hit: bool, times: int = 1) -> None:
        if hit:
            self.hits += times
        else:
            self.misses += times

    def put(self, row: int, entry: Entry) -> None:
        if entry.nbytes > self.budget_bytes:
            return
        with self._lock:
            old = self._entries.pop(row, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[row] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.budget_bytes:
                _, gone = self._entries.popitem(last=False)
                self._bytes -= gone.nbytes


def enough(entry: Entry, k: int, removed: np.ndarray) -> bool:
    """Whether an entry answers a query for ``k`` live neighbours: it holds ``k`` rows not
    taken down (``removed``: sorted rows), or every video the index held."""
    if entry.live >= entry.indexed:
        return True
    if not len(removed) or entry.live < k:
        return entry.live >= k
    live = entry.rows[entry.rows >= 0]
    return int(np.count_nonzero(~np.isin(live, removed))) >= k


def merge_tail(
    entry: Entry, query: np.ndarray, tail: np.ndarray, start: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """An entry's answer with the videos added since merged in: ``tail`` (t, E) the
    vectors of rows ``start .. start + t``, scored exactly against ``query`` (E,).
    (scores, rows) of the best ``k``, best first; ties keep the entry's order first."""
    if not len(tail):
        return entry.scores[:k], entry.rows[:k]
    extra = tail @ query
    scores = np.concatenate([entry.scores, extra])
    rows = np.concatenate([entry.rows, np.arange(start, start + len(tail), dtype=np.int64)])
    valid = rows >= 0
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, kind="stable")[:k]
    return scores[order], np.where(valid[order], rows[order], -1)
