"""Every user's valid watches as catalogue rows, first watched first, each once.

Writers hold the state's lock; readers take ``get``'s list as it is (a list is only
appended to, or replaced whole when a video is taken down).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsys.scoring import prefix_similarity, segment_similarity

#: (impression, history) pairs of one user in a run above which its history is gathered
#: once for all its impressions (``run_similarity``)
GROUPED_PAIRS = 4096

#: an impression in staging order: (user, catalogue row, valid watch)
Shown = tuple[str, int, bool]


class Histories:
    def __init__(self) -> None:
        self._rows: dict[str, list[int]] = {}
        self._seen: dict[str, set[int]] = {}
        #: the artifact's histories as loaded, takedowns included (``offline``)
        self._offline: dict[str, tuple[int, ...]] = {}

    def freeze(self) -> None:
        """Mark every history as it is now as the offline one (call once, after loading
        the artifact's): ``offline`` returns it from then on, whatever is added or taken
        down later."""
        self._offline = {u: tuple(rows) for u, rows in self._rows.items()}

    def offline(self, user: str) -> tuple[int, ...]:
        """The user's history as the offline fit left it (empty once forgotten)."""
        return self._offline.get(user, ())

    def add(self, user: str, row: int) -> None:
        seen = self._seen.setdefault(user, set())
        if row not in seen:
            seen.add(row)
            self._rows.setdefault(user, []).append(row)

    def get(self, user: str) -> list[int] | None:
        return self._rows.get(user)

    def users(self) -> set[str]:
        return set(self._rows)

    def drop_row(self, row: int) -> None:
        """A video taken down leaves every history (rare: a pass over all users)."""
        for user, seen in self._seen.items():
            if row in seen:
                seen.discard(row)
                self._rows[user] = [r for r in self._rows[user] if r != row]

    def rows(self) -> dict[str, list[int]]:
        """Every history (copies of the lists: a snapshot's picture)."""
        return {u: list(r) for u, r in self._rows.items()}

    def restore(self, rows: dict[str, list[int]], forgotten: set[str]) -> None:
        """Take the histories of a snapshot in (after the artifact's were loaded and
        frozen); the offline histories of users forgotten since go as ``forget`` does."""
        self._rows = rows
        self._seen = {u: set(r) for u, r in rows.items()}
        for user in forgotten:
            self._offline.pop(user, None)

    def forget(self, user: str) -> None:
        self._rows.pop(user, None)
        self._seen.pop(user, None)
        self._offline.pop(user, None)


def run_similarity(
    histories: Histories,
    run: list[Shown],
    vectors_of: Callable[[np.ndarray], np.ndarray],
    frozen: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(max, avg) Eq. 17 / Eq. 16 of each impression of ``run`` against its user's
    history as it was when shown: the watches before it (in the run too) count, its own
    not; each valid watch then joins the history. ``frozen``: against the history the
    offline fit left instead (nothing joins). The same bits as one impression at a time,
    each user's history gathered once for the run (``recsys.scoring.prefix_similarity``)."""
    mine: dict[str, list[tuple[int, int]]] = {}  # user -> (index in run, prefix length)
    for i, (user, row, watched) in enumerate(run):
        if frozen:
            mine.setdefault(user, []).append((i, len(histories.offline(user))))
            continue
        hist = histories.get(user)
        mine.setdefault(user, []).append((i, len(hist) if hist else 0))
        if watched:
            histories.add(user, row)
    max_s, avg_s = np.full(len(run), np.nan), np.full(len(run), np.nan)
    # Users with many pairs (a long history, several impressions): their history gathered
    # once. The rest together, each impression's segment copied out: one vectorised call,
    # cheaper than a call per user when most have one impression and a short history.
    flat: list[int] = []
    index: list[int] = []
    counts: list[int] = []
    for user, shown in mine.items():
        history = histories.offline(user) if frozen else (histories.get(user) or [])
        pairs = sum(n for _, n in shown)
        if len(shown) > 1 and pairs >= GROUPED_PAIRS:
            at = np.array([i for i, _ in shown], dtype=np.int64)
            prefix = np.array([n for _, n in shown], dtype=np.int64)
            rows = np.array([run[i][1] for i in at.tolist()], dtype=np.int64)
            mx, av = prefix_similarity(vectors_of, rows, np.asarray(history, np.int64), prefix)
            max_s[at], avg_s[at] = mx, av
            continue
        for i, n in shown:
            index.append(i)
            counts.append(n)
            flat.extend(history[:n])
    if index:
        at = np.array(index, dtype=np.int64)
        rows = np.array([run[i][1] for i in index], dtype=np.int64)
        mx, av = segment_similarity(vectors_of, rows, np.array(flat, np.int64), np.array(counts))
        max_s[at], avg_s[at] = mx, av
    return max_s, avg_s
