"""Every user's valid watches as catalogue rows, first watched first, each once: one
int32 array a user, not a Python object a watch.

A history is kept as (buffer, length): a watch is written past the length, into room
the buffer has or into a new buffer of twice the size, and the pair is then replaced
whole. So the prefix a reader took with ``get`` never changes under it: writers hold
the state's lock, readers take no lock. A takedown replaces the arrays it touches whole.

About 4-8 bytes a watch (the buffer's spare room included) and about 200 a user, where
a list and a set held about 130 bytes a watch (docs/scale.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from recsys.scoring import prefix_similarity, segment_similarity

#: (impression, history) pairs of one user in a run above which its history is gathered
#: once for all its impressions (``run_similarity``)
GROUPED_PAIRS = 4096

#: an impression in staging order: (user, catalogue row, valid watch)
Shown = tuple[str, int, bool]

#: the catalogue rows a history can hold (int32)
MAX_ROW = np.iinfo(np.int32).max
#: the room a user's first buffer has
_FIRST_ROOM = 4
#: users whose buffers a takedown compares at once
_DROP_CHUNK = 1 << 16
_EMPTY = np.zeros(0, np.int32)
_EMPTY.setflags(write=False)


def _rows_array(rows: Iterable[int] | np.ndarray) -> np.ndarray:
    a = rows if isinstance(rows, np.ndarray) else np.asarray(list(rows), dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"history rows must be integers, got {a.dtype}")
    if len(a) and (a.min() < 0 or a.max() > MAX_ROW):
        raise ValueError(f"history rows must be in [0, {MAX_ROW}]")
    return a.astype(np.int32, copy=False)


def _prefix(buf: np.ndarray, n: int) -> np.ndarray:
    """buf[:n], read-only: what a reader keeps."""
    out = buf[:n]
    out.setflags(write=False)
    return out


class Histories:
    def __init__(self) -> None:
        #: user -> (buffer, length): the history is buffer[:length]
        self._rows: dict[str, tuple[np.ndarray, int]] = {}
        #: the artifact's histories as loaded, takedowns included (``offline``)
        self._offline: dict[str, np.ndarray] = {}

    @classmethod
    def from_watches(cls, users: Sequence[str], rows: np.ndarray) -> Histories:
        """The histories of watches given as parallel ``users`` and catalogue ``rows`` in
        log order: each user's distinct rows, first watched first, as ``add`` one at a time
        would leave them (tested), in one vectorised pass instead of ``add``'s 1-3 us a
        watch. The users' histories are views of one array."""
        out = cls()
        if not len(rows):
            return out
        index: dict[str, int] = {}
        codes = np.fromiter((index.setdefault(u, len(index)) for u in users), np.int64, len(rows))
        flat = _rows_array(rows).astype(np.int64)
        # Each (user, row) pair's first watch, in log order, then grouped by user.
        _, first = np.unique((codes << 32) | flat, return_index=True)
        first.sort()
        by_user = first[np.argsort(codes[first], kind="stable")]
        c, r = codes[by_user], flat[by_user].astype(np.int32)
        cuts = np.flatnonzero(np.diff(c)) + 1
        names = list(index)
        for s, e in zip([0, *cuts.tolist()], [*cuts.tolist(), len(c)], strict=True):
            out._rows[names[c[s]]] = (r[s:e], e - s)
        return out

    def freeze(self) -> None:
        """Mark every history as it is now as the offline one (call once, after loading
        the artifact's): ``offline`` returns it from then on, whatever is added or taken
        down later."""
        self._offline = {u: self._view(u) for u in self._rows}

    def offline(self, user: str) -> np.ndarray:
        """The user's history as the offline fit left it (empty once forgotten)."""
        return self._offline.get(user, _EMPTY)

    def add(self, user: str, row: int) -> None:
        buf, n = self._rows.get(user, (_EMPTY, 0))
        # Short histories (most) through a list: a numpy comparison costs more than it.
        if n and (row in buf[:n].tolist() if n <= 32 else (buf[:n] == row).any()):
            return
        if not 0 <= row <= MAX_ROW:
            raise ValueError(f"history rows must be in [0, {MAX_ROW}]")
        if n == len(buf):  # full (or a user's first watch): twice the room
            grown = np.full(max(2 * n, _FIRST_ROOM), -1, np.int32)  # spare room: never a row
            grown[:n] = buf[:n]
            buf = grown
        buf[n] = row  # past every reader's prefix
        self._rows[user] = (buf, n + 1)

    def _view(self, user: str) -> np.ndarray:
        return _prefix(*self._rows[user])

    def length(self, user: str) -> int:
        """How many videos the user's history holds (0 without one): ``get`` without the
        view, for a loop over impressions."""
        got = self._rows.get(user)
        return 0 if got is None else got[1]

    def get(self, user: str) -> np.ndarray | None:
        """The user's history (H,) int32, a read-only view that stays as it is; None
        without one (never an empty array)."""
        got = self._rows.get(user)
        return None if got is None or not got[1] else _prefix(*got)

    def __len__(self) -> int:
        return len(self._rows)

    def users(self) -> set[str]:
        return set(self._rows)

    def drop_row(self, row: int) -> None:
        """A video taken down leaves every history (rare: a pass over all users, under
        the state's lock). The users' buffers are compared a chunk at a time, whole: the
        spare room past a history holds -1, never a row, so no slicing a user."""
        users = list(self._rows)
        for s in range(0, len(users), _DROP_CHUNK):
            part = users[s : s + _DROP_CHUNK]
            bufs = [self._rows[u][0] for u in part]
            hit = np.concatenate(bufs) == row
            if not hit.any():
                continue
            sizes = np.fromiter(map(len, bufs), np.int64, len(bufs))
            for i in np.unique(np.repeat(np.arange(len(part)), sizes)[hit]).tolist():
                buf, n = self._rows[part[i]]
                keep = buf[:n] != row
                self._rows[part[i]] = (buf[:n][keep].copy(), int(keep.sum()))

    def rows(self) -> dict[str, np.ndarray]:
        """Every history (read-only views that stay as they are: a snapshot's picture)."""
        return {u: self._view(u) for u in self._rows}

    def restore(
        self,
        rows: Mapping[str, Iterable[int] | np.ndarray],
        forgotten: set[str],
        checked: bool = False,
    ) -> None:
        """Take the histories of a snapshot in (after the artifact's were loaded and
        frozen); the offline histories of users forgotten since go as ``forget`` does.
        An array given is not written to: the first watch after moves it. int32 arrays
        are taken as they are when ``checked`` (a snapshot's reader checked the range of
        all of them at once: a check a user cost 5 us, seconds at a million users)."""
        self._rows = {}
        for user, r in rows.items():
            a = r if checked and isinstance(r, np.ndarray) and r.dtype == np.int32 else None
            a = _rows_array(r) if a is None else a
            self._rows[user] = (a, len(a))
        for user in forgotten:
            self._offline.pop(user, None)

    def forget(self, user: str) -> None:
        self._rows.pop(user, None)
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
        mine.setdefault(user, []).append((i, histories.length(user)))
        if watched:
            histories.add(user, row)
    max_s, avg_s = np.full(len(run), np.nan), np.full(len(run), np.nan)
    # Users with many pairs (a long history, several impressions): their history gathered
    # once. The rest together, each impression's segment copied out: one vectorised call,
    # cheaper than a call per user when most have one impression and a short history.
    flat: list[np.ndarray] = []
    index: list[int] = []
    counts: list[int] = []
    for user, shown in mine.items():
        got = histories.offline(user) if frozen else histories.get(user)
        history = _EMPTY if got is None else got
        pairs = sum(n for _, n in shown)
        if len(shown) > 1 and pairs >= GROUPED_PAIRS:
            at = np.array([i for i, _ in shown], dtype=np.int64)
            prefix = np.array([n for _, n in shown], dtype=np.int64)
            rows = np.array([run[i][1] for i in at.tolist()], dtype=np.int64)
            mx, av = prefix_similarity(vectors_of, rows, history.astype(np.int64), prefix)
            max_s[at], avg_s[at] = mx, av
            continue
        for i, n in shown:
            index.append(i)
            counts.append(n)
            flat.append(history[:n])
    if index:
        at = np.array(index, dtype=np.int64)
        rows = np.array([run[i][1] for i in index], dtype=np.int64)
        segments = np.concatenate(flat).astype(np.int64)
        mx, av = segment_similarity(vectors_of, rows, segments, np.array(counts))
        max_s[at], avg_s[at] = mx, av
    return max_s, avg_s
