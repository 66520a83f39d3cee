"""recsys fit-glmix: GLMix with and without video features and the histories, into the artifact."""

from __future__ import annotations

import json
from pathlib import Path

from recsys.artifact import read_manifest
from recsys.scoring import HISTORY_FEATURES


def test_fit_glmix_cli_extends_artifact(run_cli, small_world_dir: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    code, _, err = run_cli(
        "train-embeddings",
        "--data",
        small_world_dir,
        "--out",
        art,
        "--epochs",
        "1",
        "--clusters",
        "4",
        "--max-triplets",
        "500",
        "--quiet",
    )
    assert code == 0, err
    assert "glmix.json" not in read_manifest(art)["files"]
    code, out, err = run_cli(
        "fit-glmix", "--data", small_world_dir, "--artifacts", art, "--random-l2", "5"
    )
    assert code == 0, err
    assert "GLMix:" in out
    m = read_manifest(art)
    assert "glmix.json" in m["files"] and m["glmix"]["config"]["random_l2"] == 5.0
    # Per-video effects by default (untuned: no choice), the variant pair without them.
    assert m["glmix"]["config"]["video_effects"] is True
    assert "glmix_videos.parquet" in m["files"] and "glmix_variant.json" in m["files"]
    assert "glmix_variant_videos.parquet" not in m["files"]
    assert m["config"]["embedder"]["pooling"] == "dsgmm"  # the rest of the manifest survives
    assert m["glmix"]["global_features"] == list(HISTORY_FEATURES)
    # Eq. 18 alone on request; evaluate follows whichever model the artifact holds.
    code, _, err = run_cli(
        "fit-glmix", "--data", small_world_dir, "--artifacts", art, "--no-history-features"
    )
    assert code == 0, err
    assert read_manifest(art)["glmix"]["global_features"] == []
    assert read_manifest(art)["glmix"]["config"]["video_effects"] is True
    code, _, err = run_cli(
        "evaluate",
        "--data",
        small_world_dir,
        "--artifacts",
        art,
        "--out",
        tmp_path / "ev",
        "--no-baselines",
        "--bootstrap",
        "10",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["glmix_global_features"] == [] and "online" in report
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "Eq. 18 alone" in md and "## Table 7 with and without per-video effects" in md
    assert report["per_video_effects"]["shipped"] == "with"
    # --no-video-effects: the shipped pair without them, the variant with them.
    code, _, err = run_cli(
        "fit-glmix", "--data", small_world_dir, "--artifacts", art, "--no-video-effects"
    )
    assert code == 0, err
    m = read_manifest(art)
    assert m["glmix"]["config"]["video_effects"] is False
    assert "glmix_variant_videos.parquet" in m["files"]
    code, _, err = run_cli(
        "fit-glmix", "--data", small_world_dir, "--artifacts", art, "--random-l2", "-1"
    )
    assert code == 2 and "random_l2" in err
