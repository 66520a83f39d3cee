from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


@pytest.fixture
def artifact(pipeline_out: Path, tmp_path: Path) -> Path:
    """A private copy of the pipeline's artifact (tests may reload or replace it)."""
    dst = tmp_path / "artifact"
    shutil.copytree(pipeline_out / "artifact", dst)
    return dst


@pytest.fixture
def settings(artifact: Path, tmp_path: Path) -> Settings:
    return Settings(
        artifacts=artifact,
        state_db=tmp_path / "state.sqlite3",
        api_key="s3cret",
        max_body_bytes=2_000_000,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


AUTH = {"X-API-Key": "s3cret"}
