"""Both stores behind one fixture: each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.stores import StateStore, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    url = (
        f"sqlite:///{tmp_path / 's.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    s = open_store(url)
    yield s  # type: ignore[misc]
    s.close()
