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
    # ... and paired on the same rows: every difference 0, none significant.
    paired = rep["versus_baseline_run"]
    assert set(paired) >= {"report", "glmix", "max_similarity", "avg_similarity"}
    for name in ("glmix", "max_similarity", "avg_similarity"):
        for d in paired[name].values():
            assert d["difference"] == 0.0 and "better" not in d["verdict"]
            assert "worse" not in d["verdict"]
    assert "Versus the baseline run" in (tmp_path / "report.md").read_text()
    assert "glmix (all): +0.0000" in out


def test_a_baseline_run_of_other_rows_is_not_paired(
    run_cli, pipeline_out: Path, small_world_dir: Path, tmp_path: Path
) -> None:
    """A baseline whose scores are of other rows (or missing) gets a note, not numbers."""
    import pyarrow.parquet as pq

    base = tmp_path / "base"
    base.mkdir()
    (base / "report.json").write_text((pipeline_out / "report.json").read_text())
    scores = pq.read_table(pipeline_out / "test_scores.parquet")
    pq.write_table(scores.slice(1), base / "test_scores.parquet")  # one row fewer
    args = ["--artifacts", pipeline_out / "artifact", "--bootstrap", "0", "--no-baselines"]

    def versus(out: Path) -> dict:  # type: ignore[type-arg]
        code, _, err = run_cli(
            "evaluate", "--data", small_world_dir, "--out", out, *args,
            "--baseline", base / "report.json",
        )  # fmt: skip
        assert code == 0, err
        return json.loads((out / "report.json").read_text())["versus_baseline_run"]

    assert versus(tmp_path / "o") == {
        "note": "the baseline run scored other test rows: no paired comparison"
    }
    (base / "test_scores.parquet").unlink()
    assert "no paired comparison" in versus(tmp_path / "o2")["note"]
