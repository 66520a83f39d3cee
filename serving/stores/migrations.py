"""The stores' schema as numbered migrations, the same numbers on both stores.

Each store records the versions it has applied (table ``schema_version``) and applies
the missing ones when it opens, all in one transaction under a lock (PostgreSQL: an
advisory lock, so replicas starting together apply each migration once; SQLite: ``BEGIN
IMMEDIATE``). A store at a version newer than this code is refused, so an old replica
never writes into a schema it does not know.

A change to the schema is a new ``Migration`` at the end of ``MIGRATIONS`` with its
statements for each store (none where a store needs nothing), plus a test that opens a
store of the version before. Stores made before versions were recorded hold what
migrations 1 and 2 create; those two are written so they can run again on such a store
(``IF NOT EXISTS``), so an unrecorded store counts as version 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recsys.errors import UserInputError
from serving.stores.contract import POSTGRES, SQLITE, TABLES, Dialect


@dataclass(frozen=True)
class Migration:
    version: int
    #: what it changes, recorded beside its number
    what: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect is SQLITE else self.postgres


def _statements(script: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in script.split(";") if s.strip())


_XID = "BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "videos, watches, impressions, removals and the write probe",
        _statements(SQLITE.tables),
        _statements(POSTGRES.tables),
    ),
    Migration(
        2,
        "a commit-order key on every table (PostgreSQL: the writing transaction's id; "
        "SQLite's sequence numbers already are one)",
        (),
        tuple(
            s
            for table in TABLES
            for s in (
                f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS xid {_XID}",
                f"CREATE INDEX IF NOT EXISTS {table}_xid ON {table} (xid)",
            )
        ),
    ),
)
MIGRATIONS += (
    Migration(
        3,
        "snapshots of the state derived from the log (serving.log.snapshot), per artifact version",
        (
            "CREATE TABLE snapshots (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "artifact_version TEXT NOT NULL, body BLOB NOT NULL, created_at TEXT NOT NULL "
            "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
            "CREATE INDEX snapshots_version ON snapshots (artifact_version, seq)",
        ),
        (
            "CREATE TABLE snapshots (seq BIGSERIAL PRIMARY KEY, artifact_version TEXT NOT NULL, "
            "body BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            "CREATE INDEX snapshots_version ON snapshots (artifact_version, seq)",
        ),
    ),
)
MIGRATIONS += (
    Migration(
        4,
        "SQLite: one log position across the four tables (the order rows were written in), "
        "so a replay applies videos, events and removals in the order the writer did",
        (
            "CREATE TABLE log_clock (pos INTEGER NOT NULL)",
            "INSERT INTO log_clock (pos) VALUES (0)",
            *(
                s
                for table in TABLES
                for s in (
                    f"ALTER TABLE {table} ADD COLUMN pos INTEGER NOT NULL DEFAULT 0",
                    f"CREATE INDEX {table}_pos ON {table} (pos)",
                )
            ),
        ),
        (),
    ),
)
MIGRATIONS += (
    Migration(
        5,
        "the archive watermark: impressions with a commit-order key below it were moved to "
        "the Parquet archive (serving.log.archive) and deleted here",
        (
            "CREATE TABLE log_archive (below INTEGER NOT NULL)",
            "INSERT INTO log_archive (below) VALUES (0)",
        ),
        (
            "CREATE TABLE log_archive (below BIGINT NOT NULL)",
            "INSERT INTO log_archive (below) VALUES (0)",
        ),
    ),
)
MIGRATIONS += (
    Migration(
        6,
        "SQLite: the per-user indexes on (log position >> 12, user_id), not user_id alone: "
        "a batch's inserts write the newest positions' pages, not a random page each",
        tuple(
            s
            for table in ("watches", "impressions")
            for s in (
                f"DROP INDEX IF EXISTS {table}_user",
                # 12: SQLITE.user_shift, written out (a migration never changes once
                # released; the queries' plans are tested against this index)
                f"CREATE INDEX {table}_user_pos ON {table} ((pos >> 12), user_id)",
            )
        ),
        (),
    ),
)
LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = {
    SQLITE.param: "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
    "what TEXT NOT NULL, applied_at TEXT NOT NULL "
    "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
    POSTGRES.param: "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
    "what TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
}


def migrate(
    execute: Callable[..., Any], dialect: Dialect, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Bring a store to the newest version inside the caller's transaction (which holds
    the store's lock); ``execute(sql, params=())`` runs one statement and returns a
    cursor. Returns the versions applied now. UserInputError when the store is newer."""
    execute(_VERSION_TABLE[dialect.param])
    current = schema_version(execute)
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise UserInputError(
            f"the state store is at schema version {current}, newer than this service's "
            f"{latest}: run a newer recsys against it"
        )
    applied = []
    p = dialect.param
    for m in migrations:
        if m.version <= current:
            continue
        for sql in m.statements(dialect):
            execute(sql)
        execute(
            f"INSERT INTO schema_version (version, what) VALUES ({p}, {p})", (m.version, m.what)
        )
        applied.append(m.version)
    return applied


def schema_version(execute: Callable[..., Any]) -> int:
    """The version a store is at (0: none recorded)."""
    row = execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0
