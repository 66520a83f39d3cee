"""An artifact that ships a classical rung (``--pooling bow_tfidf``): the service loads it,
and embeds a cold-start upload exactly where the same video sits in the catalogue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipelines.data.frame_cache import open_frame_store
from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import AUTH


@pytest.fixture(scope="module")
def rung_artifact(small_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path_factory.mktemp("rung") / "run"
    args = ["pipeline", "--data", str(small_world_dir), "--out", str(out)]
    args += ["--pooling", "bow_tfidf", "--bootstrap", "0", "--no-online", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out / "artifact"


def test_an_upload_lands_where_the_same_video_sits(
    rung_artifact: Path, small_world_dir: Path, tmp_path: Path
) -> None:
    assert not (rung_artifact / "embedder.pt").exists()
    assert (rung_artifact / "classical.npz").exists()
    store = open_frame_store(small_world_dir)
    row = 11
    frames = np.asarray(store.frames[store.offsets[row] : store.offsets[row + 1]], np.float32)
    settings = Settings(
        artifacts=rung_artifact, state_db=tmp_path / "s.db", api_key="s3cret", max_body_bytes=10**7
    )
    with TestClient(create_app(settings)) as c:
        body = {"video_id": "copy-11", "frames": frames.tolist()}
        assert c.post("/v1/videos", json=body, headers=AUTH).status_code == 201
        near = c.get("/v1/videos/copy-11/similar", params={"k": 1}).json()["similar"][0]
        assert near["video_id"] == store.video_ids[row]
        assert near["similarity"] == pytest.approx(1.0, abs=1e-5)
        assert c.get("/readyz").status_code == 200
