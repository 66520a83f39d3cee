"""``fit-glmix --engine spark``: the rows are built, tuned and fitted on Spark, and the
driver never receives a row per impression; the models equal the local engine's."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact
from pipelines.spark.engine import SparkEngine
from recsys import artifact as art
from tests.pipelines.spark.helpers import RowsToDriver, spark_fixture  # noqa: F401  (fixture "spark")

pytestmark = pytest.mark.xdist_group("spark")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_spark_fit_equals_local_and_keeps_rows_off_the_driver(
    spark: Any, pipeline_out: Path, small_world_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = GLMixJobConfig(tune=True, history_features=True)
    local_a = _copy(pipeline_out / "artifact", tmp_path / "local")
    spark_a = _copy(pipeline_out / "artifact", tmp_path / "spark")
    local = fit_glmix_into_artifact(small_world_dir, local_a, cfg)
    watch = RowsToDriver(spark, monkeypatch)
    remote = fit_glmix_into_artifact(small_world_dir, spark_a, cfg, SparkEngine(session=spark))
    # No action returned anything near a row per impression (or per watch): at most a
    # row per user or per video (their coefficients, their first-seen order).
    assert remote["training_rows"] == local["training_rows"] > 1000
    n_videos = len(art.load_embeddings(local_a)[0])
    assert watch.largest <= max(local["users"], n_videos) + 10 < remote["training_rows"] / 5
    assert remote["tuning"]["random_l2"] == local["tuning"]["random_l2"]
    # The per-video coordinate: the same choice from the same validation losses.
    assert remote["tuning"]["video_effects"] == local["tuning"]["video_effects"]
    for key, loss in local["tuning"]["video_validation_log_loss"].items():
        assert remote["tuning"]["video_validation_log_loss"][key] == pytest.approx(loss, abs=1e-6)
    stems = (art.GLMIX, art.GLMIX_NO_VIDEO, art.GLMIX_VARIANT, art.GLMIX_NO_VIDEO_VARIANT)
    with_effects = 0
    for stem in stems:
        want, got = art.load_glmix(local_a, stem), art.load_glmix(spark_a, stem)
        assert want is not None and got is not None
        np.testing.assert_allclose(got.fixed, want.fixed, atol=1e-6)
        assert got.global_names == want.global_names and got.user_ids == want.user_ids
        np.testing.assert_allclose(got.user_coef, want.user_coef, atol=1e-6)
        assert got.has_video_effects == want.has_video_effects
        if want.video_coef is not None:
            with_effects += 1
            assert got.video_ids == want.video_ids and got.video_coef is not None
            np.testing.assert_allclose(got.video_coef, want.video_coef, atol=1e-6)
    assert with_effects == 2  # the shipped pair or the variant pair has them
    h_local = pq.read_table(local_a / art.HISTORIES).to_pylist()
    h_spark = pq.read_table(spark_a / art.HISTORIES).to_pylist()
    assert h_spark == h_local and len(h_local) > 100


def test_an_unknown_video_is_named(
    spark: Any, pipeline_out: Path, small_world_dir: Path, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from pipelines.spark.rows import glmix_rows_spark
    from recsys.errors import UserInputError

    ids, emb = art.load_embeddings(pipeline_out / "artifact")
    (tmp_path / "a").mkdir()
    pq.write_table(art.embeddings_table(ids[1:], emb[1:]), tmp_path / "a" / art.EMBEDDINGS)
    with pytest.raises(UserInputError, match=f"not in the artifact: '{ids[0]}'"):
        glmix_rows_spark(
            spark, small_world_dir, tmp_path / "a", datetime(2100, 1, 1, tzinfo=UTC), 10.0, True, 2
        )
