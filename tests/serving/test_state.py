"""The serving state at load: bad stored rows skipped, Eq. 18-only models served."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.artifact import load_glmix
from recsys.errors import UserInputError
from serving.app import create_app
from tests.serving.conftest import AUTH
from tests.serving.helpers import a_user_with_history, catalogue


def test_a_bad_stored_row_is_skipped_at_start_up_not_fatal(settings) -> None:
    import numpy as np

    from serving.stores import SqliteStore

    store = SqliteStore(settings.state_db)
    assert store.insert_video("nan_row", "0" * 64, np.full(64, np.nan, np.float32), 3)
    assert store.insert_video("short_row", "1" * 64, np.ones(3, np.float32), 3)
    store.close()
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").json()["status"] == "ready"
        metrics = c.get("/metrics").text
        assert "state_rows_skipped 2" in metrics
        assert c.post("/v1/admin/reload", headers=AUTH).status_code == 200


def test_an_eq18_only_model_is_served_without_history_features(
    settings, artifact, small_world_dir
) -> None:
    """Artifacts fitted with --no-history-features (or before them) score by Eq. 18 alone;
    a model naming global features this version cannot build is refused at load."""
    from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact
    from recsys.artifact import extend_artifact, write_json_bytes

    fit_glmix_into_artifact(small_world_dir, artifact, GLMixJobConfig(history_features=False))
    glm = load_glmix(artifact)
    assert glm.global_names == []
    ids, emb = catalogue(artifact)
    user = a_user_with_history(artifact)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/score", json={"user_id": user, "video_ids": [ids[2]]}).json()
        # Impressions refit the user online without history features (Eq. 18 alone).
        imp = {"user_id": "eq18-new", "video_id": ids[3], "watch_seconds": 60.0}
        got = c.post(
            "/v1/events/impressions",
            json={"impressions": [{**imp, "shown_at": "2030-01-01T00:00:00Z"}]},
            headers=AUTH,
        )
        assert got.status_code == 201 and got.json()["users_updated"] == 1
        after = c.post("/v1/score", json={"user_id": "eq18-new", "video_ids": [ids[3]]}).json()
    want = glm.predict_proba([user], emb[2][None].astype(np.float64), None, [ids[2]])[0]
    assert r["scores"][0]["watch_probability"] == pytest.approx(want, abs=1e-9)
    fresh = glm.predict_proba(["eq18-new"], emb[3][None].astype(np.float64), None, [ids[3]])[0]
    assert after["scores"][0]["watch_probability"] > fresh  # learnt from the watch
    meta = json.loads((artifact / "glmix.json").read_text())
    meta["global_features"] = ["popularity"]
    meta["global_dim"] = 1
    meta["fixed"] = [*meta["fixed"], 0.5]
    extend_artifact(artifact, {"glmix.json": write_json_bytes(meta)}, {})
    with pytest.raises(UserInputError, match="not known"), TestClient(create_app(settings)):
        pass
