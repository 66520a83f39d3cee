"""GLMix over a list of coordinates on Spark equals the local fit (the same loop and
solver over a DataFrame): coefficients and scores to 1e-6."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.glmix.table_data import load_config
from pipelines.glmix.table_job import fit_job, score_job
from pipelines.spark.table_glmix import spark_backend
from recsys.glmix.table import RandomEffect, TableGLMixConfig, fit_table_glmix
from tests.pipelines.glmix.test_table_command import CONFIG, _table
from tests.pipelines.spark.helpers import spark_fixture  # noqa: F401  (fixture "spark")
from tests.recsys.glmix.test_table_glmix import _problem

pytestmark = pytest.mark.xdist_group("spark")


def test_spark_fits_the_table_model_as_the_local_engine_does(spark) -> None:
    x, y, keys, z = _problem(4, n=1500)
    cfg = TableGLMixConfig(
        label="y",
        features=("a", "b"),
        l2=0.5,
        random=(
            RandomEffect("per_user", "user", ("zu",), l2=2.0, intercept_l2=1.0, min_rows=101),
            RandomEffect("per_item", "item", (), l2=1.0, intercept_l2=3.0),
            RandomEffect("per_channel", "channel", ("zc",), l2=1.5, intercept_l2=0.7),
        ),
        max_passes=3,
    )
    k = {"per_user": keys["user"], "per_item": keys["item"], "per_channel": keys["channel"]}
    zz = {"per_user": z["user"], "per_item": z["item"], "per_channel": z["channel"]}
    local = fit_table_glmix(cfg, x, y, k, zz)
    remote = fit_table_glmix(cfg, x, y, k, zz, backend=spark_backend(spark, partitions=3))
    assert len(local.history) == len(remote.history)
    np.testing.assert_allclose(remote.fixed, local.fixed, atol=1e-6)
    for name, e in local.effects.items():
        r = remote.effects[name]
        assert r.ids == e.ids
        np.testing.assert_allclose(r.coef, e.coef, atol=1e-6)
    assert len(local.effects["per_user"].ids) < 15  # min_rows left some users out
    np.testing.assert_allclose(
        remote.predict_proba(x, k, zz), local.predict_proba(x, k, zz), atol=1e-6
    )


def test_the_table_job_on_spark_scores_as_the_local_job(spark: Any, tmp_path: Path) -> None:
    """``recsys glmix fit --engine spark`` (the job with Spark's backend), penalties and
    stages included: the same model, the same scores."""
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    pq.write_table(_table(0, 1500, True), train)
    pq.write_table(_table(2, 300, True), test)
    toml = tmp_path / "m.toml"
    toml.write_text(
        "max_passes = 2\n"
        + CONFIG.replace("features = []", "features = []\nl2 = 1.0\nintercept_l2 = 1.0")
    )
    cfg = load_config(toml)
    fit_job(train, cfg, tmp_path / "local", progress=False)
    fit_job(train, cfg, tmp_path / "spark", progress=False, backend=spark_backend(spark))
    for name in ("local", "spark"):
        score_job(tmp_path / name, test, tmp_path / f"{name}.parquet")
    a = np.asarray(pq.read_table(tmp_path / "local.parquet").column("score"))
    b = np.asarray(pq.read_table(tmp_path / "spark.parquet").column("score"))
    np.testing.assert_allclose(b, a, atol=1e-6)
