"""recsys pipeline on a small synthetic world: the report and a servable artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.artifact import load_glmix, read_manifest


def test_pipeline_writes_report_and_servable_artifact(pipeline_out: Path) -> None:
    report = json.loads((pipeline_out / "report.json").read_text())
    for block in ("auc", "auc_cold_start"):
        assert set(report[block]) == {"max_similarity", "avg_similarity", "glmix", "glmix_no_video"}
    assert 0 <= report["auc"]["glmix"] <= 1 and report["rows"]["test"] > 0
    assert report["rows"]["cold_start"] > 0 and "oracle_auc" in report
    ci = report["ci95"]["all"]["glmix"]
    assert ci["delong"][0] <= report["auc"]["glmix"] <= ci["delong"][1]
    md = (pipeline_out / "report.md").read_text()
    assert md.startswith("# Offline evaluation") and "beat the best baseline" in md
    assert "(artifact/loss_curve.png)" in md and "kept epoch" in md
    assert (pipeline_out / "roc.png").stat().st_size > 1000
    art = pipeline_out / "artifact"
    manifest = read_manifest(art)
    assert {"glmix.json", "glmix_users.parquet", "histories.parquet", "index.faiss"} <= set(
        manifest["files"]
    )
    assert manifest["glmix"]["training_rows"] > 0
    glm = load_glmix(art, "glmix")
    assert glm is not None and np.isfinite(glm.user_coef).all()


def test_report_has_the_baseline_ladder_and_paired_verdicts(pipeline_out: Path) -> None:
    report = json.loads((pipeline_out / "report.json").read_text())
    assert set(report["baselines"]) == {"avg_frames", "bow_tfidf", "vlad_kmeans"}
    # the report's ladder took each rung's frame pass (and the words) from the starting
    # point's fits, and left nothing behind
    assert report["ladder_reused"]["hits"] >= 4
    assert not list(pipeline_out.glob(".rung-memo-*"))
    emb_dim = read_manifest(pipeline_out / "artifact")["config"]["embedder"]["embedding_dim"]
    for b in report["baselines"].values():
        for block in ("auc", "auc_cold_start"):
            assert set(b[block]) == {"max_similarity", "avg_similarity", "glmix"}
        assert 0.0 <= b["auc"]["glmix"] <= 1.0
        # The PCA size is the validation-loss argmin among the sizes tried, none above
        # the embedding's.
        losses = {int(d): v for d, v in b["choice"]["pca_validation_log_loss"].items()}
        assert b["choice"]["pca_dim"] == min(losses, key=lambda d: losses[d])
        assert all(d <= emb_dim for d in losses)
    # The average frame has D = 8 values on this world: 8 is the only size to try.
    assert report["baselines"]["avg_frames"]["choice"]["pca_dim"] == 8
    ceiling = report["ceiling"]  # the synthetic world ships its true video features
    assert 0.5 <= ceiling["auc"]["glmix"] <= 1 and "pca_dim" in ceiling["choice"]
    assert "ceiling" not in report["baselines"]
    for score in ("glmix", "max_similarity", "avg_similarity"):
        c = report["vs_best_baseline"][score]["all"]
        best = c["best_baseline"]
        assert c["baseline_auc"] == max(b["auc"][score] for b in report["baselines"].values())
        assert c["baseline_auc"] == report["baselines"][best]["auc"][score]
        assert c["difference"] == pytest.approx(c["learned_auc"] - c["baseline_auc"], abs=1e-9)
        lo, hi = c["delong_paired_95"]
        assert lo <= c["difference"] <= hi
        want = "better" if lo > 0 else "worse" if hi < 0 else "no significant difference"
        assert c["verdict"] == want


def test_report_has_the_online_replay(pipeline_out: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from recsys.glmix.model import GLMix

    report = json.loads((pipeline_out / "report.json").read_text())
    on = report["online"]
    assert on["config"]["window"] >= 1
    b = on["all"]
    assert b["rows"] == report["rows"]["test"]
    # the frozen side is the report's own GLMix AUC: the same rows, the same scores
    assert b["frozen_auc"] == report["auc"]["glmix"]
    assert b["online_ci95"][0] <= b["online_auc"] <= b["online_ci95"][1]
    lo, hi = b["difference_ci95"]
    assert lo <= b["difference"] <= hi
    assert b["verdict"] in ("better", "worse", "no significant difference")
    assert "Online GLMix (progressive validation)" in (pipeline_out / "report.md").read_text()
    # with history features, also against following the histories with frozen effects
    assert report["glmix_global_features"] and "history_only_auc" in b
    lo, hi = b["difference_vs_history_only_ci95"]
    assert lo <= b["difference_vs_history_only"] <= hi
    assert "online vs history only" in (pipeline_out / "report.md").read_text()
    # AUC by day of the test period, and its plot
    days = on["by_day"]
    assert days and sum(d["rows"] for d in days) <= b["rows"]
    assert all(0 <= d[k] <= 1 for d in days for k in ("online", "frozen", "history_only"))
    assert (pipeline_out / "online.png").stat().st_size > 1000
    assert "![online AUC by day](online.png)" in (pipeline_out / "report.md").read_text()
    # the artifact keeps each user's posterior precision for the online prior
    users = pq.read_table(pipeline_out / "artifact" / "glmix_users.parquet")
    assert "precision" in users.column_names
    fixed = json.loads((pipeline_out / "artifact" / "glmix.json").read_text())
    vpath = pipeline_out / "artifact" / "glmix_videos.parquet"
    model = GLMix.from_tables(fixed, users, pq.read_table(vpath) if vpath.exists() else None)
    assert model.user_precision is not None
    # prior L2 plus a non-negative curvature, per coefficient
    assert (model.user_precision[:, 0] >= model.config.random_intercept_l2 - 1e-9).all()
    assert (model.user_precision[:, 1:] >= model.config.random_l2 - 1e-9).all()
    assert np.isfinite(model.user_precision).all()
    assert (pipeline_out / "artifact" / "projection.json").exists()


def test_report_compares_the_shipped_embedding_with_each_rung_on_validation(
    pipeline_out: Path,
) -> None:
    """Every candidate's GLMix validation log-loss, the shipped one among them, and the one
    the gate prefers (a rung only when ahead beyond the paired interval): what
    ``--pooling auto`` would ship."""
    from pipelines.evaluation.report import validation_line

    report = json.loads((pipeline_out / "report.json").read_text())
    choice = report["validation_choice"]
    losses = choice["validation_log_loss"]
    assert choice["shipped"] == "dsgmm" and set(losses) == {"dsgmm", *report["baselines"]}
    versus = choice["versus_shipped"]
    assert set(versus) == set(report["baselines"])
    ahead = [
        n
        for n, c in versus.items()
        if (c["loss_high"] < 0 or c["auc_low"] > 0) and not (c["loss_low"] > 0 or c["auc_high"] < 0)
    ]
    assert (choice["best"] in ahead) if ahead else (choice["best"] == "dsgmm")
    for name, c in versus.items():
        assert c["loss"] == pytest.approx(losses[name] - losses["dsgmm"], abs=1e-9)
        auc = (
            choice["details"][name]["avg_similarity_auc"]
            - choice["details"]["dsgmm"]["avg_similarity_auc"]
        )
        assert c["auc"] == pytest.approx(auc, abs=1e-9)
    for name, b in report["baselines"].items():
        d = choice["details"][name]
        assert d["all"] == pytest.approx(
            b["choice"]["pca_validation_log_loss"][str(b["choice"]["pca_dim"])]
        )
        want = d["all"] if d["heldout_videos"] is None else (d["all"] + d["heldout_videos"]) / 2
        assert losses[name] == pytest.approx(want)
    line = validation_line(report, pipeline_out)
    assert (line is None) == (choice["best"] == "dsgmm")
    rung = {**choice, "best": "bow_tfidf", "validation_log_loss": {**losses, "bow_tfidf": 0.0}}
    line = validation_line({**report, "validation_choice": rung}, pipeline_out)
    assert line is not None and "--pooling bow_tfidf" in line and str(pipeline_out) in line
    md = (pipeline_out / "report.md").read_text()
    assert "Which representation does validation prefer?" in md
    start = report["embedding_metrics"]["starting_point"]
    assert f"It learned on top of **{start['chosen']}**" in md
    assert f"Kept: **{start['size']['chosen']}**" in md
    # The rungs may use as many PCA values as the model had before its size was chosen.
    manifest = json.loads((pipeline_out / "artifact" / "manifest.json").read_text())
    assert report["baselines_max_dim"] == manifest["config"]["embedder"]["embedding_dim"]
    kept_trained = start["weight"]["weight"] == start["weight"]["trained_weight"]
    assert ("| trained, kept |" in md) == kept_trained
    assert ("| trained |" in md and "| kept |" in md) == (not kept_trained)


def test_a_rung_is_never_shipped_under_a_glmix_fitted_on_other_embeddings(
    pipeline_out: Path, tmp_path: Path
) -> None:
    import shutil

    from pipelines.choice.representation import Selection, ship_rung
    from recsys.errors import UserInputError

    art = tmp_path / "artifact"
    shutil.copytree(pipeline_out / "artifact", art)
    sel = Selection("dsgmm", {"dsgmm": 0.6, "bow_tfidf": 0.5})
    with pytest.raises(UserInputError, match="GLMix"):
        ship_rung(art, pipeline_out, sel, "bow_tfidf", 64)
    assert (art / "embedder.pt").exists()


def test_report_has_the_time_of_each_phase(pipeline_out: Path) -> None:
    """Every stage's phases, nested under it, in the order they ran; a parent's seconds
    hold its children's; the three stages add up to the stage timings."""
    report = json.loads((pipeline_out / "report.json").read_text())
    seconds = {r["phase"]: r["seconds"] for r in report["phases"]}
    names = list(seconds)
    for path in (
        "embeddings / mining",
        "embeddings / starting point",
        "embeddings / training",
        "embeddings / catalogue embedding",
        "embeddings / index and artifact",
        "glmix / choosing random_l2",
        "glmix / fits",
        "evaluation / online replay",
        "evaluation / baselines",
        "evaluation / baselines / ceiling",
    ):
        assert path in seconds, path
    assert names.index("embeddings") < names.index("glmix") < names.index("evaluation")
    assert names.index("embeddings / mining") < names.index("embeddings / training")
    for path, s in seconds.items():
        assert s >= 0
        parent = path.rpartition(" / ")[0]
        if parent:
            assert s <= seconds[parent] + 1e-6, path
    t = report["timings"]
    assert seconds["embeddings"] == pytest.approx(t["embeddings_s"], abs=0.05)
    assert seconds["evaluation"] == pytest.approx(t["evaluation_s"], abs=0.05)
    md = (pipeline_out / "report.md").read_text()
    assert "| evaluation / online replay |" in md
