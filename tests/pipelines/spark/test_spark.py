"""The Spark engine computes what the local engine computes (local[2], one shared session).

These tests need Java 17/21 and pyspark, which ``./run test`` installs; without them they
fail with the engine's own message (how to install Java), never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.spark.auc import delong_spark
from pipelines.spark.embed import embed_videos_spark
from pipelines.spark.glmix import fit_glmix_spark
from pipelines.spark.session import mine_triplets_spark, spark_session
from recsys.auc import delong_ci
from recsys.errors import UserInputError
from recsys.glmix.model import GLMixConfig, fit_glmix
from recsys.scoring import HISTORY_FEATURES
from recsys.triplets import TripletConfig, mine_triplets

# Both pytest workers would otherwise start a JVM each: keep these on one worker.
pytestmark = pytest.mark.xdist_group("spark")


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    session = spark_session("local[2]")
    yield session
    session.stop()


def _sorted_rows(table) -> list[tuple[str, ...]]:
    cols = ("anchor", "positive", "negative", "user_id")
    return sorted(zip(*(table.column(c).to_pylist() for c in cols), strict=True))


def test_triplets_are_identical_on_both_engines(spark, small_world_dir: Path) -> None:
    import duckdb

    from pipelines.data.impressions import impressions_connection, log_span
    from recsys.splits import default_test_start

    con = impressions_connection(small_world_dir)
    start = default_test_start(*log_span(con))
    for cfg in (TripletConfig(), TripletConfig(max_per_anchor=2, max_per_user=7, seed=3)):
        local = mine_triplets(con, cfg, train_end=start)
        remote = mine_triplets_spark(spark, small_world_dir / "impressions.parquet", cfg, start)
        got = [
            tuple(r) for r in remote.select("anchor", "positive", "negative", "user_id").collect()
        ]
        assert local.num_rows > 50
        assert sorted(got) == _sorted_rows(local)
    assert isinstance(con, duckdb.DuckDBPyConnection)


def test_glmix_coefficients_match_the_local_fit(spark) -> None:
    rng = np.random.default_rng(0)
    n, e, users = 3000, 4, 70
    u = rng.integers(0, users, n)
    user_ids = np.array([f"u{i}" for i in u], dtype=object)
    x = rng.normal(size=(n, e)).astype(np.float32)
    taste = rng.normal(size=(users, e))
    logit = -0.5 + x @ np.array([0.8, -0.4, 0.0, 0.3]) + (x * taste[u]).sum(1)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    cfg = GLMixConfig(random_l2=1.0, min_rows_per_user=3)
    local = fit_glmix(user_ids, x, y, cfg)
    remote = fit_glmix_spark(spark, user_ids, x, y, cfg)
    assert remote.user_ids == local.user_ids
    np.testing.assert_allclose(remote.fixed, local.fixed, atol=1e-6)
    np.testing.assert_allclose(remote.user_coef, local.user_coef, atol=1e-6)
    assert remote.user_precision is not None and local.user_precision is not None
    np.testing.assert_allclose(remote.user_precision, local.user_precision, rtol=1e-6)
    assert len(remote.history) == len(local.history)
    pl, pr = local.predict_proba(user_ids, x), remote.predict_proba(user_ids, x)
    np.testing.assert_allclose(pr, pl, atol=1e-7)
    with pytest.raises(UserInputError, match="labels 0 or 1"):
        fit_glmix_spark(spark, user_ids, x, y * 2, cfg)
    # Global features (the history similarities) ride along in their own column.
    g = np.stack([rng.normal(size=n), (rng.random(n) < 0.5).astype(float)], 1)
    local_g = fit_glmix(user_ids, x, y, cfg, g)
    remote_g = fit_glmix_spark(spark, user_ids, x, y, cfg, global_feats=g)
    assert remote_g.global_dim == 2
    np.testing.assert_allclose(remote_g.fixed, local_g.fixed, atol=1e-6)
    np.testing.assert_allclose(remote_g.user_coef, local_g.user_coef, atol=1e-6)


def test_glmix_with_per_video_effects_is_identical_on_both_engines(spark) -> None:
    """The third coordinate on Spark: rows repartitioned by video for its pass, the same
    solver, the same recentering: coefficients equal to the local fit's to 1e-6."""
    rng = np.random.default_rng(5)
    n, e, v = 3000, 3, 40
    table = rng.normal(size=(v, e)).astype(np.float32)
    vrow = rng.integers(0, v, n)
    user_ids = np.array([f"u{i}" for i in rng.integers(0, 60, n)], dtype=object)
    videos = np.array([f"v{i}" for i in vrow], dtype=object)
    x = table[vrow]
    g = rng.normal(size=(n, 1))
    logit = -0.5 + x @ [0.4, -0.2, 0.1] + rng.normal(0, 1.0, v)[vrow] + 0.3 * g[:, 0]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    for cfg, gf in (
        (GLMixConfig(random_l2=1.0, video_effects=True, video_intercept_l2=0.5), None),
        (GLMixConfig(video_effects=True, video_slopes=True), g),
    ):
        local = fit_glmix(user_ids, x, y, cfg, gf, videos=videos)
        remote = fit_glmix_spark(spark, user_ids, x, y, cfg, global_feats=gf, videos=videos)
        assert remote.user_ids == local.user_ids and remote.video_ids == local.video_ids
        assert len(remote.history) == len(local.history) and len(local.history) > 1
        np.testing.assert_allclose(remote.fixed, local.fixed, atol=1e-6)
        np.testing.assert_allclose(remote.user_coef, local.user_coef, atol=1e-6)
        assert remote.video_coef is not None and local.video_coef is not None
        np.testing.assert_allclose(remote.video_coef, local.video_coef, atol=1e-6)
        np.testing.assert_allclose(remote.video_precision, local.video_precision, rtol=1e-6)
        np.testing.assert_allclose(
            remote.predict_proba(user_ids, x, gf, videos),
            local.predict_proba(user_ids, x, gf, videos),
            atol=1e-7,
        )


def test_delong_auc_matches_the_local_computation(spark) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 5000)
    s = np.round(rng.normal(size=5000) + y, 1)  # many ties
    import pandas as pd

    df = spark.createDataFrame(pd.DataFrame({"score": s, "label": y}))
    got = delong_spark(df)
    want = delong_ci(y, s)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    one = spark.createDataFrame(pd.DataFrame({"score": [0.9, 0.1, 0.2], "label": [1, 0, 0]}))
    a, lo, hi = delong_spark(one)
    assert a == 1.0 and np.isnan(lo) and np.isnan(hi)


def test_embeddings_match_the_local_path(spark, pipeline_out: Path, small_world_dir: Path) -> None:
    import io

    import torch

    from pipelines.training.embed import embed_dataset
    from recsys.artifact import load_embedder

    artifact = pipeline_out / "artifact"
    model = load_embedder(artifact)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    from dataclasses import asdict

    df = embed_videos_spark(
        spark, small_world_dir / "videos.parquet", asdict(model.config), buf.getvalue()
    )
    remote = {r["video_id"]: np.asarray(r["embedding"]) for r in df.collect()}
    out = pipeline_out / "local_embed.parquet"
    embed_dataset(artifact, small_world_dir, out, progress=False)
    t = pq.read_table(out)
    local = dict(
        zip(t.column("video_id").to_pylist(), t.column("embedding").to_pylist(), strict=True)
    )
    assert set(remote) == set(local)
    for v, emb in local.items():
        np.testing.assert_allclose(remote[v], emb, atol=1e-5)


def test_cli_mine_triplets_same_file_on_both_engines(run_cli, small_world_dir, tmp_path) -> None:
    local, remote = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    code, _out, err = run_cli("mine-triplets", "--data", small_world_dir, "--out", local)
    assert code == 0, err
    code, _out, err = run_cli(
        "mine-triplets",
        "--data",
        small_world_dir,
        "--out",
        remote,
        "--engine",
        "spark",
        "--spark-master",
        "local[2]",
    )
    assert code == 0, err
    assert pq.read_table(local).equals(pq.read_table(remote))


def test_cli_bad_input_on_the_spark_path_is_one_line(run_cli, tmp_path) -> None:
    (tmp_path / "videos.parquet").write_bytes(b"not parquet")
    (tmp_path / "impressions.parquet").write_bytes(b"PAR1 nor this")
    code, _out, err = run_cli(
        "mine-triplets", "--data", tmp_path, "--out", tmp_path / "t.parquet", "--engine", "spark"
    )
    assert code == 2 and "Traceback" not in err and "Exception" not in err
    assert err.startswith("error: ") and "impressions.parquet" in err
    code, _out, err = run_cli(
        "mine-triplets", "--data", tmp_path, "--out", tmp_path / "t.parquet", "--engine", "gpu"
    )
    assert code == 2 and "--engine must be local or spark" in err


def test_fit_glmix_job_on_spark_matches_local(
    spark, pipeline_out: Path, small_world_dir, tmp_path
) -> None:
    import json
    import shutil

    from pipelines.engine import LOCAL
    from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact
    from pipelines.spark.engine import SparkEngine
    from recsys.artifact import load_glmix

    fits = {}
    for name in ("local", "spark"):
        art = tmp_path / name
        shutil.copytree(pipeline_out / "artifact", art)
        # the Spark engine uses the module's shared session
        engine = LOCAL if name == "local" else SparkEngine(session=spark)
        info = fit_glmix_into_artifact(small_world_dir, art, GLMixJobConfig(), engine)
        assert info["engine"].startswith(name)
        fits[name] = load_glmix(art, "glmix")
        json.loads((art / "glmix.json").read_text())
    a, b = fits["local"], fits["spark"]
    assert a.user_ids == b.user_ids
    np.testing.assert_allclose(b.fixed, a.fixed, atol=1e-6)
    np.testing.assert_allclose(b.user_coef, a.user_coef, atol=1e-6)
    assert a.global_names == b.global_names == list(HISTORY_FEATURES)


def test_spark_connect_gives_the_same_triplets(small_world_dir: Path, tmp_path: Path) -> None:
    """SPARK_REMOTE: the job runs on a Spark Connect server (started here from pyspark's
    own scripts on a free port) and writes the same file as the local engine."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import pyspark

    home = Path(pyspark.__file__).parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOG_DIR": str(tmp_path / "logs"),
        "SPARK_PID_DIR": str(tmp_path / "pids"),
        "SPARK_IDENT_STRING": f"recsys-test-{port}",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    start = [
        "bash",
        str(home / "sbin" / "start-connect-server.sh"),
        "--master",
        "local[2]",
        "--conf",
        f"spark.connect.grpc.binding.port={port}",
        "--conf",
        "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf",
        "spark.driver.bindAddress=127.0.0.1",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        local, remote = tmp_path / "local.parquet", tmp_path / "connect.parquet"
        cli = [
            sys.executable,
            "-m",
            "pipelines.cli",
            "mine-triplets",
            "--data",
            str(small_world_dir),
        ]
        subprocess.run([*cli, "--out", str(local)], check=True, capture_output=True, timeout=300)
        run = subprocess.run(
            [*cli, "--out", str(remote), "--engine", "spark"],
            env={**os.environ, "SPARK_REMOTE": f"sc://127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert pq.read_table(local).equals(pq.read_table(remote))
    finally:
        subprocess.run(
            ["bash", str(home / "sbin" / "stop-connect-server.sh")],
            env=env,
            capture_output=True,
            timeout=120,
        )
