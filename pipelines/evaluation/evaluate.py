"""``recsys evaluate``: offline AUCs of an artifact's scores on the test period
(sections 4.2-4.3), returned as data; ``pipelines.evaluation.report`` writes them.

Everything the artifact learnt used only impressions before its test start; the
evaluation scores the impressions at or after it. It never fits a model it was not
asked to fit: an artifact without GLMix is refused with what to run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data.io import dataset_dir
from pipelines.engine import LOCAL, Engine
from pipelines.evaluation.baseline_comparison import add_baselines
from pipelines.evaluation.coordinate_comparison import coordinate_table
from pipelines.evaluation.inputs import EvalConfig, TestSet, load_test_set
from pipelines.evaluation.statistics import (
    PAIRED_SCORES,
    auc_block,
    auc_by_day,
    auc_table,
    online_block,
    paired_with_run,
)
from pipelines.phases import phase
from recsys import artifact as art
from recsys.dataset import TRUTH_FILE
from recsys.errors import UserInputError
from recsys.glmix.design import VideoRows
from recsys.glmix.model import GLMix, GLMixConfig
from recsys.memory import release_free_memory
from recsys.online.replay import progressive_validation
from recsys.online.users import OnlineConfig
from recsys.scoring import (
    HISTORY_FEATURES,
    glmix_global_features,
    prior_history_similarity,
    similarity_by_user,
)

SCORES = ("max_similarity", "avg_similarity", "glmix", "glmix_no_video")


@dataclass
class Evaluation:
    """What ``pipelines.evaluation.report`` writes: the report and the per-row arrays behind it
    (``test`` None on Spark: the rows stay there and ``write_scores`` writes them)."""

    report: dict[str, Any]
    test: TestSet | None
    scores: dict[str, np.ndarray]
    oracle: np.ndarray | None
    write_scores: Callable[[Path], None] | None = None


def _load_models(a: Path) -> tuple[GLMix, GLMix]:
    glm, glm0 = art.load_glmix(a, art.GLMIX), art.load_glmix(a, art.GLMIX_NO_VIDEO)
    if glm is None or glm0 is None:
        raise UserInputError(
            f"{a}: no GLMix model to evaluate; run recsys fit-glmix --artifacts {a} first "
            "(recsys pipeline does it)"
        )
    return glm, glm0


def _coordinate_block(
    a: Path,
    t: TestSet,
    x: VideoRows,
    videos: np.ndarray,
    frozen_g: np.ndarray | None,
    side: np.ndarray | None,
    glm: GLMix,
    scores: dict[str, np.ndarray],
) -> dict[str, Any] | None:
    """Table 7 with and without the per-video coordinate (``pipelines.
    coordinate_comparison``), when the artifact has the variant pair (None otherwise)."""
    var, var0 = art.load_glmix(a, art.GLMIX_VARIANT), art.load_glmix(a, art.GLMIX_NO_VIDEO_VARIANT)
    if var is None or var0 is None:
        return None
    variant = (
        var.predict_proba(t.users, x, frozen_g, videos),
        var0.predict_proba(t.users, x, side if var0.global_names else None, videos),
    )
    shipped = (scores["glmix"], scores["glmix_no_video"])
    has = glm.has_video_effects
    return coordinate_table(
        t.labels, t.cold_start, shipped if has else variant, variant if has else shipped, has
    )


def _global_features(
    model: GLMix, max_s: np.ndarray, avg_s: np.ndarray, side: np.ndarray | None
) -> np.ndarray | None:
    try:
        return glmix_global_features(model.global_names, max_s, avg_s, side)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None


def _online(
    t: TestSet,
    glm: GLMix,
    frozen_g: np.ndarray | None,
    frozen: np.ndarray,
    cfg: OnlineConfig,
    side: np.ndarray | None,
) -> dict[str, Any]:
    """The test period replayed in time order through online GLMix, against the frozen model."""
    x = VideoRows(t.embeddings, t.video_rows)
    online_g = frozen_g  # side features alone do not change as the log is replayed
    if HISTORY_FEATURES[0] in glm.global_names:
        # Online, each watch replayed joins the history before the next impression.
        live_max, live_avg = prior_history_similarity(
            t.user_index, t.video_rows, t.times, t.labels > 0, t.embeddings, t.history_rows
        )
        online_g = _global_features(glm, live_max, live_avg, side)
    videos = np.asarray(t.video_ids, dtype=object)[t.video_rows]
    online_p = progressive_validation(
        t.users, x, t.labels, t.times, glm, cfg, online_g, videos, frozen_g
    )
    history_only = None
    if online_g is not None and HISTORY_FEATURES[0] in glm.global_names:
        history_only = glm.predict_proba(t.users, x, online_g, videos)
    block = online_block(t.labels, online_p, frozen, t.users, glm, cfg, history_only)
    curves = {"online": online_p, "frozen": frozen}
    if history_only is not None:
        curves["history_only"] = history_only
    block["by_day"] = auc_by_day(t.labels, t.times, curves)
    return block


def _oracle(d: Path, t: TestSet) -> np.ndarray | None:
    """True watch probabilities of the test rows, when the data set is synthetic."""
    path = d / TRUTH_FILE
    if not path.exists():
        return None
    truth = pq.read_table(path, columns=["watch_probability"]).column("watch_probability")
    return truth.to_numpy()[t.rows.column("row").to_numpy()]


def _row_counts(t: TestSet, max_s: np.ndarray) -> dict[str, Any]:
    y, cold, users = t.labels, t.cold_start, t.users
    no_history = np.isnan(max_s)
    return {
        "test": len(y),
        "cold_start": int(cold.sum()),
        "test_with_history": int((~no_history).sum()),
        "cold_start_with_history": int((cold & ~no_history).sum()),
        "test_users": len(set(users.tolist())),
        "test_users_without_history": len({u for u, m in zip(users, no_history, strict=True) if m}),
        "positive_rate": float(y.mean()),
    }


def relative_improvement(
    auc_all: dict[str, float], auc_cold: dict[str, float], has_cold: bool, base: Path | None
) -> dict[str, Any]:
    rel: dict[str, Any] = {
        "glmix_vs_no_video_pct": {
            "all": 100 * (auc_all["glmix"] / auc_all["glmix_no_video"] - 1),
            "cold_start": 100 * (auc_cold["glmix"] / auc_cold["glmix_no_video"] - 1)
            if has_cold
            else math.nan,
        }
    }
    if base is not None:
        try:
            other = json.loads(Path(base).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserInputError(f"{base}: cannot read baseline report ({exc})") from None
        rel["vs_baseline_pct"] = {
            "baseline_pooling": other.get("pooling"),
            **{
                k: 100 * (auc_all[k] / other["auc"][k] - 1)
                for k in ("max_similarity", "avg_similarity")
            },
            "glmix_cold_start": 100 * (auc_cold["glmix"] / other["auc_cold_start"]["glmix"] - 1),
        }
    return rel


def evaluate_artifact(
    data: str | os.PathLike[str],
    artifact: str | os.PathLike[str],
    cfg: EvalConfig | None = None,
    engine: Engine | None = None,
) -> Evaluation:
    """Offline AUCs of the artifact's scores on the test period, beside the classical
    baselines (``pipelines.choice.ladder``) scored on the same rows. On Spark the test rows are
    scored and their AUCs computed there (the engine's ``evaluation``)."""
    cfg = cfg or EvalConfig()
    d, a = dataset_dir(data), Path(artifact)
    manifest = art.read_manifest(a)
    cutoff = art.training_cutoff(manifest)
    start = cfg.test_start or cutoff
    if start < cutoff:
        raise UserInputError(
            f"test start {start.isoformat()} is before the artifact's training cut-off "
            f"{cutoff.isoformat()}: the model has seen test impressions"
        )
    glm, glm0 = _load_models(a)
    head: dict[str, Any] = {
        "artifact": str(a.resolve()),
        "data": str(d.resolve()),
        "pooling": manifest.get("config", {}).get("embedder", {}).get("pooling"),
        "test_start": start.isoformat(),
        "watch_threshold_s": cfg.watch_threshold_s,
        "glmix_global_features": list(glm.global_names),
    }
    if (engine or LOCAL).name != LOCAL.name and art.load_side_features(a) is not None:
        raise UserInputError("an artifact with GLMix side features is evaluated on --engine local")
    return (engine or LOCAL).evaluation(
        d,
        a,
        (start, cutoff),
        cfg,
        (glm, glm0),
        head,
        here=lambda: _evaluate_here(d, a, start, cutoff, cfg, glm, glm0, head, manifest),
    )


def _evaluate_here(
    d: Path,
    a: Path,
    start: datetime,
    cutoff: datetime,
    cfg: EvalConfig,
    glm: GLMix,
    glm0: GLMix,
    head: dict[str, Any],
    manifest: dict[str, Any],
) -> Evaluation:
    """The evaluation with every test row in this process."""
    t = load_test_set(d, a, start, cutoff, cfg.watch_threshold_s)
    users = t.users
    max_s, avg_s = similarity_by_user(t.user_index, t.video_rows, t.history_rows, t.embeddings)
    x = VideoRows(t.embeddings, t.video_rows)  # rows by reference: no (N, E) copy
    videos = np.asarray(t.video_ids, dtype=object)[t.video_rows]  # for per-video effects
    side_features = art.load_side_features(a)
    side = None if side_features is None else side_features.rows(users, videos)
    # The frozen model sees the histories as they were at the test start.
    frozen_g = _global_features(glm, max_s, avg_s, side)
    scores = {
        "max_similarity": max_s,
        "avg_similarity": avg_s,
        "glmix": glm.predict_proba(users, x, frozen_g, videos),
        "glmix_no_video": glm0.predict_proba(
            users, x, _global_features(glm0, max_s, avg_s, side), videos
        ),
    }
    online_report = None
    if cfg.online is not None:
        _say(cfg, "online GLMix: replaying the test period in time order ...")
        t0 = time.perf_counter()
        with phase("online replay"):
            online_report = _online(t, glm, frozen_g, scores["glmix"], cfg.online, side)
        release_free_memory()
        _say(cfg, f"online GLMix: {len(t.labels)} impressions in {time.perf_counter() - t0:.1f} s")
    oracle = _oracle(d, t)
    report: dict[str, Any] = {**head, "rows": _row_counts(t, max_s), "notes": list(NOTES)}
    with phase("AUCs and intervals"):
        _auc_sections(report, t, scores, oracle, cfg)
    if online_report is not None:
        report["online"] = online_report
    table7 = _coordinate_block(a, t, x, videos, frozen_g, side, glm, scores)
    if table7 is not None:
        report["per_video_effects"] = table7
    report["glmix_coordinates"] = {
        "per_video_effects": glm.has_video_effects,
        "video_intercept_l2": glm.config.video_intercept_l2 if glm.has_video_effects else None,
    }
    if cfg.baselines:
        embedder = manifest.get("config", {}).get("embedder", {})
        with phase("baselines"):
            add_baselines(
                report,
                d,
                t,
                scores,
                start,
                cfg,
                history_features=HISTORY_FEATURES[0] in glm.global_names,
                # the rungs' PCA cap is the model's own size before any choice after training
                # (a learned embedding reduced to 8 values must not cap the rungs at 8)
                max_dim=embedder.get("max_dim") or embedder.get("embedding_dim"),
                # every rung gets the shipped model's coordinates (per-video effects or not)
                glmix_base=GLMixConfig(
                    video_effects=glm.has_video_effects,
                    video_intercept_l2=glm.config.video_intercept_l2,
                ),
                side=side_features,
            )
    return Evaluation(report=report, test=t, scores=scores, oracle=oracle)


def _auc_sections(
    report: dict[str, Any],
    t: TestSet,
    scores: dict[str, np.ndarray],
    oracle: np.ndarray | None,
    cfg: EvalConfig,
) -> None:
    """The AUC tables (all rows, cold start, intervals), the oracle's and the relative
    improvements, into ``report``."""
    y, cold, users = t.labels, t.cold_start, t.users
    log = print if cfg.progress else None
    auc_all, auc_cold, ci_all, ci_cold = auc_table(
        y, scores, cold, users, cfg.bootstrap, cfg.seed, log
    )
    report["auc"] = auc_all
    report["auc_cold_start"] = auc_cold
    report["ci95"] = {"all": ci_all, "cold_start": ci_cold}
    if oracle is not None:
        report["oracle_auc"] = {
            "all": auc_block(y, oracle, users, 0, cfg.seed)["auc"],
            "cold_start": auc_block(y[cold], oracle[cold], users[cold], 0, cfg.seed)["auc"]
            if cold.any()
            else math.nan,
        }
    report["relative_improvement"] = relative_improvement(
        auc_all, auc_cold, bool(cold.any()), cfg.baseline_report
    )
    if cfg.baseline_report is not None:
        report["versus_baseline_run"] = _versus_run(cfg.baseline_report, t, scores)


def _versus_run(base: Path, t: TestSet, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """Paired differences with the baseline run's scores (its test_scores.parquet beside
    its report.json) when both runs scored the same test rows in the same order."""
    path = Path(base).with_name("test_scores.parquet")
    if not path.exists():
        return {"note": f"no {path.name} beside the baseline report: no paired comparison"}
    try:
        other = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        return {"note": f"{path}: unreadable ({exc}): no paired comparison"}
    same = other.num_rows == len(t.labels) and all(
        c in other.column_names for c in ("user_id", "video_id", "label")
    )
    same = same and (
        other.column("user_id").to_pylist() == [str(u) for u in t.users]
        and other.column("video_id").to_pylist() == t.rows.column("video_id").to_pylist()
        and np.array_equal(other.column("label").to_numpy(), t.labels)
    )
    if not same:
        return {"note": "the baseline run scored other test rows: no paired comparison"}
    theirs = {
        n: other.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
        for n in PAIRED_SCORES
        if n in other.column_names
    }
    return {"report": str(base), **paired_with_run(t.labels, t.cold_start, scores, theirs)}


NOTES = (
    "Similarity AUCs use the test rows of users with a training-period watch history "
    "(Eq. 16-17 are undefined otherwise); GLMix AUCs use all test rows, and unknown users "
    "get the fixed effect alone.",
    "Cold-start videos have no impression before the test start.",
)


def _say(cfg: EvalConfig, message: str) -> None:
    if cfg.progress:
        print(message, flush=True)
