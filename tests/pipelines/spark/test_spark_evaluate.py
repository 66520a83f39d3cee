"""``evaluate --engine spark``: the test rows are scored and their AUCs computed on Spark
(the driver receives sums, at most a row per user), equal to the local evaluation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.evaluation.evaluate import evaluate_artifact
from pipelines.evaluation.inputs import EvalConfig
from pipelines.evaluation.report import write_report
from pipelines.spark.engine import SparkEngine
from recsys.auc import delong_paired_difference
from tests.pipelines.spark.helpers import RowsToDriver, spark_fixture  # noqa: F401  (fixture "spark")

pytestmark = pytest.mark.xdist_group("spark")


@pytest.mark.parametrize("per_video_effects", [True, False])
def test_spark_evaluation_equals_local(
    spark: Any,
    pipeline_out: Path,
    small_world_dir: Path,
    tmp_path: Path,
    monkeypatch,
    per_video_effects: bool,
) -> None:
    """With and without per-video effects (the online replay's per-video half runs
    partitioned by video on Spark, in one pass here)."""
    import shutil

    from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact
    from recsys.artifact import load_glmix

    artifact = tmp_path / "artifact"
    shutil.copytree(pipeline_out / "artifact", artifact)
    job = GLMixJobConfig(tune=False, video_effects=per_video_effects)
    fit_glmix_into_artifact(small_world_dir, artifact, job)
    model = load_glmix(artifact)
    assert model is not None and model.has_video_effects == per_video_effects
    cfg = EvalConfig(bootstrap=0, baselines=())
    local = evaluate_artifact(small_world_dir, artifact, cfg)
    watch = RowsToDriver(spark, monkeypatch)
    remote = evaluate_artifact(small_world_dir, artifact, cfg, SparkEngine(session=spark))
    assert local.test is not None and remote.test is None
    n_users = local.report["rows"]["test_users"]
    assert watch.largest <= n_users + 10 < local.report["rows"]["test"]
    assert remote.report["rows"] == local.report["rows"]
    for key in ("auc", "auc_cold_start"):
        for score, value in local.report[key].items():
            assert remote.report[key][score] == pytest.approx(value, abs=1e-9), (key, score)
    for score, blk in local.report["ci95"]["all"].items():
        np.testing.assert_allclose(remote.report["ci95"]["all"][score]["delong"], blk["delong"])
    lo, ro = local.report["online"], remote.report["online"]
    for part in ("all", "new_users"):
        for k, v in lo[part].items():
            if isinstance(v, float):
                assert ro[part][k] == pytest.approx(v, abs=1e-9, nan_ok=True), (part, k)
            elif isinstance(v, list):
                np.testing.assert_allclose(ro[part][k], v, rtol=1e-9, err_msg=f"{part} {k}")
            else:
                assert ro[part][k] == v, (part, k)
    # The report is written without the rows coming here: scores come from Spark's file.
    out = write_report(tmp_path / "spark", remote)
    scores = pq.read_table(out / "test_scores.parquet")
    assert scores.num_rows == local.report["rows"]["test"]
    assert "roc.png" not in (out / "report.md").read_text()


def test_paired_delong_on_spark_matches_the_local_test(spark: Any) -> None:
    import pandas as pd

    from pipelines.spark.auc import delong_paired_spark

    rng = np.random.default_rng(3)
    y = rng.random(3000) < 0.3
    a = y * 0.8 + rng.normal(size=3000)
    b = np.round(y * 0.5 + rng.normal(size=3000), 1)  # ties
    b[:5] = np.nan
    df = spark.createDataFrame(pd.DataFrame({"a": a, "b": b, "label": y.astype(int)}))
    got = delong_paired_spark(df, "a", "b")
    ok = ~np.isnan(b)
    want = delong_paired_difference(y[ok], a[ok], b[ok])
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert not math.isnan(got[1])
