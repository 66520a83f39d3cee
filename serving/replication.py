"""Following the state store's log: which rows of each table this replica has applied.

Rows get sequence numbers at insert and become visible at commit, so on PostgreSQL a row
can appear after rows with higher numbers; a follower re-reads ``lookback`` numbers
below the newest it has seen and skips those it applied already.
"""

from __future__ import annotations

TABLES = ("videos", "watches", "impressions")


class LogCursor:
    def __init__(self, lookback: int) -> None:
        self.lookback = lookback
        #: the newest sequence number seen per table
        self.newest = dict.fromkeys(TABLES, 0)
        #: the numbers applied within the look-back window
        self.applied: dict[str, set[int]] = {t: set() for t in TABLES}

    def mark(self, table: str, seq: int) -> bool:
        """Record ``seq`` as applied; False when it was applied before (or is below the
        window, so it was applied on an earlier read)."""
        applied = self.applied[table]
        if seq in applied or seq <= self.newest[table] - self.lookback - 1:
            return False
        applied.add(seq)
        if seq > self.newest[table]:
            self.newest[table] = seq
        return True

    def read_from(self) -> tuple[int, int, int]:
        """The sequence numbers to read after, per table (``TABLES`` order)."""
        lb = self.lookback
        v, w, i = (max(0, self.newest[t] - lb) for t in TABLES)
        return v, w, i

    def forget_old(self) -> None:
        """Drop remembered numbers below the window (bounded memory)."""
        for t in TABLES:
            floor = self.newest[t] - self.lookback
            if len(self.applied[t]) > 2 * self.lookback + 64:
                self.applied[t] = {x for x in self.applied[t] if x > floor}
