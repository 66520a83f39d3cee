"""Following the state store's log: which rows of each table this replica has applied.

A read returns the rows whose commit-order key is at or above this replica's horizon,
with a new horizon below which every row was visible to it (``serving.stores.contract``).
A row is therefore read at least once whatever the order transactions commit in, and
perhaps again while its key is at or above the horizon; its sequence number is
remembered until the horizon passes it, so it is applied exactly once. What is
remembered is the rows of transactions that were still open at the last read: at idle,
nothing.
"""

from __future__ import annotations

from serving.stores.contract import TABLES, Stamp


class Follower:
    def __init__(self) -> None:
        #: per table: every row whose key is below this was read (or written here)
        self.horizon = dict.fromkeys(TABLES, 0)
        #: per table: sequence number -> key of the rows applied at or above the horizon
        self.applied: dict[str, dict[int, int]] = {t: {} for t in TABLES}

    def mark(self, table: str, stamp: Stamp) -> bool:
        """Record a row as applied; False when it was applied before."""
        applied = self.applied[table]
        if stamp.seq in applied or stamp.order < self.horizon[table]:
            return False
        applied[stamp.seq] = stamp.order
        return True

    def advance(self, horizon: dict[str, int]) -> None:
        """Move to a read's horizon (never back) and forget the rows below it: no later
        read returns them."""
        for table in TABLES:
            h = max(self.horizon[table], horizon.get(table, 0))
            if h != self.horizon[table]:
                self.horizon[table] = h
                applied = self.applied[table]
                self.applied[table] = {s: o for s, o in applied.items() if o >= h}
