"""The report's baseline rows: each classical representation (``pipelines.choice.ladder``)
scored on the evaluation's test rows, the synthetic world's ceiling, and whether the
learned embedding beats the best baseline (DeLong's paired test)."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from embeddings.rungs import inapplicable
from pipelines.choice.ladder import (
    baseline_ladder,
    reduce_on_validation,
    score_representation,
)
from pipelines.choice.representation import (
    CRITERION,
    RULE,
    criteria,
    gated,
    heldout_mask,
    store_order,
)
from pipelines.choice.validation import CandidateScores, ValidationSet, score_candidate
from pipelines.data.frame_cache import open_frame_store
from pipelines.data.impressions import RecRows, load_rec_rows
from pipelines.evaluation.inputs import EvalConfig, TestSet
from pipelines.evaluation.statistics import auc_block, auc_table
from pipelines.phases import phase
from recsys import artifact as art
from recsys.auc import delong_paired_difference, interval_verdict
from recsys.dataset import VIDEO_TRUTH_FILE
from recsys.frames import FrameStore
from recsys.glmix.model import GLMixConfig
from recsys.side_features import SideFeatures

#: the learned scores compared with the best baseline
COMPARED = ("glmix", "max_similarity", "avg_similarity")


def add_baselines(
    report: dict[str, Any],
    data: Path,
    test: TestSet,
    scores: dict[str, np.ndarray],
    start: datetime,
    cfg: EvalConfig,
    history_features: bool = False,
    max_dim: int | None = None,
    glmix_base: GLMixConfig | None = None,
    side: SideFeatures | None = None,
) -> None:
    """Score each of ``cfg.baselines`` on the test rows into ``report["baselines"]``, the
    ceiling (synthetic worlds) into ``report["ceiling"]`` and the comparison into
    ``report["vs_best_baseline"]``. ``history_features``: the baselines' GLMix gets the
    history similarities as the learned model's does (same model family); ``glmix_base``:
    the shipped model's coordinates (its per-video effects), given to every rung's GLMix;
    ``side``: the shipped model's side features, given to every rung's GLMix too."""
    y, cold, users = test.labels, test.cold_start, test.users
    store = open_frame_store(data)
    # With one frame a video (given vectors, video-level features) some rungs say nothing.
    skipped = inapplicable(cfg.baselines, bool((np.diff(store.offsets) == 1).all()))
    if skipped:
        report["baselines_not_applicable"] = skipped
    names = tuple(n for n in cfg.baselines if n not in skipped)
    if cfg.progress:
        print(f"baselines: {', '.join(names)} (PCA size and GLMix penalty chosen on validation)")
    rows = load_rec_rows(data, store.video_ids, start, cfg.watch_threshold_s)
    if not np.array_equal(rows.test_labels, y):
        raise RuntimeError("baseline rows differ from the evaluation rows")  # a bug, not input
    if side is not None:  # every rung's GLMix on equal terms with the shipped model's
        ids = np.asarray(store.video_ids, dtype=object)
        rows.train_side = side.rows(rows.train_users, ids[rows.train_videos])
        rows.test_side = side.rows(rows.test_users, ids[rows.test_videos])
    # A rung is given at most the learned model's size (a shipped rung: the size the
    # learned model would have had, not the rung's own PCA size).
    emb_dim = max_dim or test.embeddings.shape[1]
    report["baselines_max_dim"] = emb_dim
    heldout = heldout_mask(store, art.load_heldout_videos(report["artifact"]))
    ladder = baseline_ladder(
        rows,
        store,
        emb_dim,
        names,
        seed=cfg.seed,
        base=glmix_base,
        log=print if cfg.progress else None,
        history_features=history_features,
        heldout=heldout,
    )
    out: dict[str, Any] = {}
    for name, (bscores, info) in ladder.items():
        auc_all, auc_cold, ci_all, ci_cold = auc_table(
            y, bscores, cold, users, cfg.bootstrap, cfg.seed
        )
        out[name] = {
            "auc": auc_all,
            "auc_cold_start": auc_cold,
            "ci95": {"all": ci_all, "cold_start": ci_cold},
            "choice": {
                **{k: v for k, v in info.items() if k != "validation_scores"},
                "pca_validation_log_loss": {
                    str(d): loss for d, loss in info["pca_validation_log_loss"].items()
                },
            },
        }
    report["baselines"] = out
    shipped = store_order(test.video_ids, test.embeddings, store)
    vset = ValidationSet.of(rows, heldout)
    report["validation_choice"] = validation_choice(
        report.get("pooling") or "learned",
        score_candidate(rows, shipped, vset, glmix_base),
        ladder,
        vset,
    )
    with phase("ceiling"):
        ceiling = _ceiling(data, store, rows, test, emb_dim, cfg.seed, history_features, glmix_base)
    if ceiling is not None:
        report["ceiling"] = ceiling
    base_scores = {name: bscores for name, (bscores, _) in ladder.items()}
    report["vs_best_baseline"] = _versus_best(report, out, base_scores, scores, y, cold)


def validation_choice(
    shipped: str,
    shipped_scores: CandidateScores,
    ladder: dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]],
    vset: ValidationSet,
) -> dict[str, Any]:
    """The shipped representation's validation scores (``pipelines.choice.validation``: the last
    10% of the training period, the test period unseen) beside each rung's, and the one
    the gated rule prefers: what ``--pooling auto`` would ship."""
    scores = {shipped: shipped_scores}
    for name, (_, info) in ladder.items():
        scores.setdefault(name, info["validation_scores"])
    details = {name: s.summary(vset) for name, s in scores.items()}
    best, comparisons = gated(scores, shipped, vset)
    return {
        "criterion": CRITERION,
        "rule": RULE,
        "details": details,
        "shipped": shipped,
        "validation_log_loss": criteria(details),
        "versus_shipped": comparisons,
        "best": best,
    }


def _ceiling(
    data: Path,
    store: FrameStore,
    rows: RecRows,
    test: TestSet,
    emb_dim: int,
    seed: int,
    history_features: bool,
    glmix_base: GLMixConfig | None = None,
) -> dict[str, Any] | None:
    """A synthetic world knows each video's true features: the same GLMix on them is the
    ceiling for any embedding (not a baseline to beat)."""
    truth_path = data / VIDEO_TRUTH_FILE
    if not truth_path.exists():
        return None
    t = pq.read_table(truth_path)
    index = {v: i for i, v in enumerate(t.column("video_id").to_pylist())}
    feats = np.stack(t.column("features").to_numpy(zero_copy_only=False))
    if not all(v in index for v in store.video_ids):
        return None
    y, cold, users = test.labels, test.cold_start, test.users
    raw = feats[[index[v] for v in store.video_ids]]
    vectors, info = reduce_on_validation(rows, raw, emb_dim, glmix_base)
    cscores, fit = score_representation(
        rows, vectors, glmix_base, history_features=history_features
    )
    return {
        "name": "true video features (synthetic world)",
        "auc": {k: auc_block(y, v, users, 0, seed)["auc"] for k, v in cscores.items()},
        "auc_cold_start": {
            k: auc_block(y[cold], v[cold], users[cold], 0, seed)["auc"] for k, v in cscores.items()
        },
        "choice": {"pca_dim": info["pca_dim"], **fit},
    }


def _versus_best(
    report: dict[str, Any],
    baselines: dict[str, Any],
    base_scores: dict[str, dict[str, np.ndarray]],
    scores: dict[str, np.ndarray],
    y: np.ndarray,
    cold: np.ndarray,
) -> dict[str, Any]:
    """Each learned score against the best baseline of each subset (all, cold start)."""
    comparison: dict[str, Any] = {}
    for score in COMPARED:
        for subset, sel in (("all", np.ones_like(cold)), ("cold_start", cold)):
            key = "auc" if subset == "all" else "auc_cold_start"
            valid = {
                n: e[key][score] for n, e in baselines.items() if not math.isnan(e[key][score])
            }
            if not valid or not sel.any():
                continue
            best = max(valid, key=lambda n: valid[n])
            other = base_scores[best][score]
            ok = sel & ~np.isnan(scores[score]) & ~np.isnan(other)
            diff, lo, hi = delong_paired_difference(y[ok], scores[score][ok], other[ok])
            comparison.setdefault(score, {})[subset] = {
                "best_baseline": best,
                "learned_auc": report[key][score],
                "baseline_auc": valid[best],
                "difference": diff,
                "delong_paired_95": [lo, hi],
                "verdict": interval_verdict(lo, hi),
            }
    return comparison
