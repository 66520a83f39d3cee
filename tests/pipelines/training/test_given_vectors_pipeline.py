"""``recsys pipeline`` on a data set that gives a vector per video: the artifact ships
those vectors at unit length (nothing trained), the manifest says where they came from,
the report leaves out the rungs that do not apply, and GLMix through the pipeline agrees
with GLMix fitted directly on the same vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.choice.ladder import score_representation
from pipelines.data.impressions import load_rec_rows
from pipelines.data.io import iter_video_batches
from recsys import artifact as art
from recsys.auc import delong_paired_difference
from recsys.embedders import GIVEN_CONFIG, unit_rows
from recsys.glmix.model import GLMixConfig


def _given(data: Path) -> tuple[list[str], np.ndarray]:
    ids: list[str] = []
    rows = []
    for vb in iter_video_batches(data):
        assert (np.diff(vb.offsets) == 1).all()
        ids += vb.video_ids
        rows.append(vb.frames)
    return ids, np.concatenate(rows)


def test_the_artifact_ships_the_given_vectors_at_unit_length(
    given_pipeline_out: Path, given_world_dir: Path
) -> None:
    a = given_pipeline_out / "artifact"
    assert (a / GIVEN_CONFIG).exists() and not (a / art.EMBEDDER_WEIGHTS).exists()
    ids, x = _given(given_world_dir)
    got_ids, got = art.load_embeddings(a)
    assert got_ids == ids
    assert np.array_equal(got, unit_rows(x))  # the known vectors, bit for bit
    embedder = art.read_manifest(a)["config"]["embedder"]
    assert embedder["pooling"] == "given" and embedder["feature_dim"] == x.shape[1]
    source = embedder["source"]
    assert source["column"] == "embedding"
    assert source["metadata"] == {"model": "mean-frame-v1"}
    assert source["file"] == str((given_world_dir / "videos.parquet").resolve())
    assert art.load_frame_embedder(a).kind == "given"


def test_the_report_leaves_out_the_bag_of_words_and_says_why(given_pipeline_out: Path) -> None:
    report = json.loads((given_pipeline_out / "report.json").read_text())
    assert report["pooling"] == "given"
    assert set(report["baselines_not_applicable"]) == {"bow_tfidf"}
    assert "bow_tfidf" not in report["baselines"] and "avg_frames" in report["baselines"]
    md = (given_pipeline_out / "report.md").read_text()
    assert "baseline bow_tfidf: not applicable" in md


def test_glmix_through_the_pipeline_equals_glmix_on_the_vectors_directly(
    given_pipeline_out: Path, given_world_dir: Path
) -> None:
    a = given_pipeline_out / "artifact"
    report = json.loads((given_pipeline_out / "report.json").read_text())
    glm = art.load_glmix(a)
    assert glm is not None
    ids, x = _given(given_world_dir)
    start = art.training_cutoff(art.read_manifest(a))
    rows = load_rec_rows(given_world_dir, ids, start, report.get("watch_threshold_s", 10.0))
    base = GLMixConfig(
        video_effects=glm.has_video_effects, video_intercept_l2=glm.config.video_intercept_l2
    )
    scores, _ = score_representation(
        rows, unit_rows(x), base, history_features=bool(glm.global_names)
    )
    test = pq.read_table(given_pipeline_out / "test_scores.parquet")
    y = np.asarray(test.column("label"))
    assert np.array_equal(y, rows.test_labels)
    ours = np.asarray(test.column("glmix"))
    diff, lo, hi = delong_paired_difference(y, ours, scores["glmix"])
    assert lo <= 0.0 <= hi, (diff, lo, hi)  # equal within the paired interval
    assert abs(diff) < 0.01


def test_embed_writes_the_artifacts_rows(
    given_pipeline_out: Path, given_world_dir: Path, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "e.parquet"
    code, _, err = run_cli(
        "embed",
        "--artifacts",
        given_pipeline_out / "artifact",
        "--data",
        given_world_dir,
        "--out",
        out,
    )
    assert code == 0, err
    t = pq.read_table(out)
    ids, emb = art.load_embeddings(given_pipeline_out / "artifact")
    assert t.column("video_id").to_pylist() == ids
    assert np.array_equal(np.stack(t.column("embedding").to_numpy(zero_copy_only=False)), emb)


def test_a_vector_artifact_refuses_a_data_set_of_frames(
    given_pipeline_out: Path, small_world_dir: Path, tmp_path: Path, run_cli
) -> None:
    code, _, err = run_cli(
        "embed",
        "--artifacts",
        given_pipeline_out / "artifact",
        "--data",
        small_world_dir,
        "--out",
        tmp_path / "e.parquet",
    )
    assert code == 2
    assert "these videos have frames" in err and "Traceback" not in err


@pytest.mark.parametrize("pooling", ["avg_frames"])
def test_a_rung_can_still_reduce_the_given_vectors(
    given_world_dir: Path, tmp_path: Path, run_cli, pooling: str
) -> None:
    code, _, err = run_cli(
        "train-embeddings",
        "--data",
        given_world_dir,
        "--out",
        tmp_path / "a",
        "--pooling",
        pooling,
        "--quiet",
    )
    assert code == 0, err
    assert art.read_manifest(tmp_path / "a")["config"]["embedder"]["pooling"] == pooling
