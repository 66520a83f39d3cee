"""recsys evaluate: the cut-off is respected, a baseline run compares, nothing is fitted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_evaluate_refuses_a_leaky_test_start(
    run_cli, pipeline_out: Path, small_world_dir: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(
        "evaluate",
        "--data",
        small_world_dir,
        "--artifacts",
        pipeline_out / "artifact",
        "--out",
        tmp_path,
        "--test-start",
        "2000-01-01T00:00:00Z",
    )
    assert code == 2 and "before the artifact's training cut-off" in err


def test_evaluate_with_baseline(
    run_cli, pipeline_out: Path, small_world_dir: Path, tmp_path: Path
) -> None:
    code, out, err = run_cli(
        "evaluate",
        "--data",
        small_world_dir,
        "--artifacts",
        pipeline_out / "artifact",
        "--out",
        tmp_path,
        "--bootstrap",
        "0",
        "--baseline",
        pipeline_out / "report.json",
        "--no-baselines",
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "report.json").read_text())
    # The same model as its own baseline: 0% change.
    assert rep["relative_improvement"]["vs_baseline_pct"]["max_similarity"] == pytest.approx(
        0.0, abs=1e-9
    )
    assert "AUC glmix" in out and "baselines" not in rep
