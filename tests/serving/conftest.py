from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recsys.artifact import load_glmix
from serving.app import create_app
from serving.live import PostgresServer
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


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for one test module (initdb in a temporary directory)."""
    server = PostgresServer()
    yield server
    server.destroy()


@pytest.fixture
def pg_url(pg: PostgresServer) -> str:
    """A fresh database per test on the shared server."""
    import psycopg

    name = f"t{time.time_ns()}"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def video_artifact(artifact: Path, small_world_dir: Path) -> Path:
    """The artifact refitted with the per-video coordinate (whatever validation picked)."""
    from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact

    fit_glmix_into_artifact(small_world_dir, artifact, GLMixJobConfig(tune=False))
    model = load_glmix(artifact)
    assert model is not None and model.has_video_effects and model.global_names
    return artifact
