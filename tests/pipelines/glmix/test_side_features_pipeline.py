"""A platform's side features (a video's length, a user's device) through the pipeline:
fitted into every model, kept in the artifact, scored the same by the evaluation and the
service, given to every rung; bad names refused with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact
from recsys import artifact as art
from recsys.errors import UserInputError
from recsys.scoring import HISTORY_FEATURES
from serving.app import create_app
from serving.settings import Settings

SIDE_NAMES = ["video.length_s", "user.device=desktop", "user.device=mobile", "user.device=tv"]


def test_every_model_gets_the_side_features(side_pipeline_out: Path) -> None:
    a = side_pipeline_out / "artifact"
    report = json.loads((side_pipeline_out / "report.json").read_text())
    assert report["glmix_global_features"] == [*HISTORY_FEATURES, *SIDE_NAMES]
    manifest = art.read_manifest(a)
    assert manifest["glmix"]["side_features"] == SIDE_NAMES
    side = art.load_side_features(a)
    assert side is not None and side.names == SIDE_NAMES
    for stem in (art.GLMIX, art.GLMIX_VARIANT):
        assert art.load_glmix(a, stem).global_names == [*HISTORY_FEATURES, *SIDE_NAMES]  # type: ignore[union-attr]
    for stem in (art.GLMIX_NO_VIDEO, art.GLMIX_NO_VIDEO_VARIANT):  # no video, same side
        assert art.load_glmix(a, stem).global_names == SIDE_NAMES  # type: ignore[union-attr]
    # the ladder's rungs were fitted and scored with them too
    assert set(report["baselines"]) >= {"avg_frames"}


def test_the_evaluation_scores_with_each_rows_side_features(side_pipeline_out: Path) -> None:
    a = side_pipeline_out / "artifact"
    scores = pq.read_table(side_pipeline_out / "test_scores.parquet")
    users = np.array(scores.column("user_id").to_pylist(), dtype=object)
    videos = np.array(scores.column("video_id").to_pylist(), dtype=object)
    ids, emb = art.load_embeddings(a)
    row = {v: i for i, v in enumerate(ids)}
    glm0 = art.load_glmix(a, art.GLMIX_NO_VIDEO)
    side = art.load_side_features(a)
    assert glm0 is not None and side is not None
    x = emb[[row[v] for v in videos]].astype(np.float64)
    want = glm0.predict_proba(users, x, side.rows(users, videos), videos)
    np.testing.assert_allclose(scores.column("glmix_no_video").to_numpy(), want, atol=1e-12)
    # ... and the features matter: the same model without them scores otherwise
    zero = glm0.predict_proba(users, x, np.zeros((len(users), len(SIDE_NAMES))), videos)
    assert not np.allclose(zero, want)


def test_the_service_scores_with_the_side_features(side_pipeline_out: Path, tmp_path: Path) -> None:
    a = side_pipeline_out / "artifact"
    glm, side = art.load_glmix(a), art.load_side_features(a)
    assert glm is not None and side is not None
    ids, emb = art.load_embeddings(a)
    settings = Settings(artifacts=a, state_db=tmp_path / "s.db", api_key="k")
    users = ["u000003", "someone-new"]  # one in users.parquet, one nobody knows
    with TestClient(create_app(settings)) as c:
        for user in users:
            body = c.post("/v1/score", json={"user_id": user, "video_ids": ids[:5]}).json()
            for item, v in zip(body["scores"], ids[:5], strict=True):
                mx, av = item["max_similarity"], item["avg_similarity"]
                has = mx is not None
                hist = np.array([[mx if has else 0.0, av if has else 0.0, float(has)]])
                g = np.hstack([hist, side.rows([user], [v])])
                p = glm.predict_proba([user], emb[ids.index(v)][None].astype(np.float64), g, [v])
                assert item["watch_probability"] == pytest.approx(p[0], abs=1e-6)


def test_unknown_side_columns_exit_2_naming_them(
    side_world_dir: Path, side_pipeline_out: Path, run_cli, tmp_path: Path
) -> None:
    import shutil

    a = tmp_path / "artifact"
    shutil.copytree(side_pipeline_out / "artifact", a)
    code, _, err = run_cli(
        "fit-glmix", "--data", side_world_dir, "--artifacts", a, "--video-features", "duration"
    )
    assert code == 2 and "'duration'" in err and "length_s" in err and "Traceback" not in err
    code, _, err = run_cli(
        "fit-glmix", "--data", side_world_dir, "--artifacts", a, "--video-features", "frames"
    )
    assert code == 2 and "data contract" in err
    code, _, err = run_cli(
        "fit-glmix", "--data", side_world_dir, "--artifacts", a, "--user-features", "country"
    )
    assert code == 2 and "'country'" in err and "device" in err


def test_user_features_without_a_users_table_are_refused(
    given_world_dir: Path, given_pipeline_out: Path
) -> None:
    with pytest.raises(UserInputError, match=r"users\.parquet"):
        fit_glmix_into_artifact(
            given_world_dir,
            given_pipeline_out / "artifact",
            GLMixJobConfig(user_features=("device",)),
        )


def test_spark_engine_refuses_side_features(side_world_dir: Path, side_pipeline_out: Path) -> None:
    class Elsewhere:
        name = "spark"

    cfg = GLMixJobConfig(video_features=("length_s",))
    with pytest.raises(UserInputError, match="--engine local"):
        fit_glmix_into_artifact(side_world_dir, side_pipeline_out / "artifact", cfg, Elsewhere())  # type: ignore[arg-type]


def test_validate_checks_a_users_table(side_world_dir: Path, run_cli, tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa

    code, out, _ = run_cli("validate", side_world_dir)
    assert code == 0, out
    bad = tmp_path / "bad"
    shutil.copytree(side_world_dir, bad)
    users = pq.read_table(bad / "users.parquet")
    tenure = pa.array([float("inf")] + [1.0] * (users.num_rows - 1))
    pq.write_table(users.append_column("tenure", tenure), bad / "users.parquet")
    code, _, err = run_cli("validate", bad)
    assert code == 2 and "users.parquet" in err and "'tenure' is not finite" in err
    pq.write_table(pa.concat_tables([users, users.slice(0, 1)]), bad / "users.parquet")
    code, _, err = run_cli("validate", bad)
    assert code == 2 and "repeated ids" in err
