"""The report is written once, from the evaluation's data, with the pipeline's additions."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.evaluation.report import render_markdown, terminal_summary


def test_pipeline_report_is_written_once_with_every_section(pipeline_out: Path) -> None:
    rep = json.loads((pipeline_out / "report.json").read_text())
    # the pipeline's additions and the evaluation's data are in one file
    for key in ("timings", "engine", "embedding_metrics", "glmix", "auc", "baselines", "online"):
        assert key in rep, key
    md = (pipeline_out / "report.md").read_text()
    assert md == render_markdown(rep)  # report.md renders exactly report.json
    assert "loss_curve.png" in md and "![ROC](roc.png)" in md
    for png in ("roc.png", "online.png"):
        assert (pipeline_out / png).stat().st_size > 1000


def test_terminal_summary_lists_every_score_and_baseline(pipeline_out: Path) -> None:
    rep = json.loads((pipeline_out / "report.json").read_text())
    lines = terminal_summary(rep, pipeline_out)
    text = "\n".join(lines)
    for score, auc in rep["auc"].items():
        assert f"AUC {score:15s} all {auc:.4f}" in text
    for name in rep["baselines"]:
        assert f"baseline {name}" in text
    assert lines[-1].startswith("wrote ") and "report.json" in lines[-1]
