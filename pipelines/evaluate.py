"""GLMix fitting for an artifact and the offline AUC evaluation (sections 4.2-4.3).

Everything trained (triplets, embeddings, GLMix, watch histories) uses only the
impressions before the artifact's test start; the evaluation scores the
impressions at or after it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.engine import LOCAL, Engine
from pipelines.io import dataset_dir, write_parquet_atomic
from pipelines.train_embeddings import impressions_connection
from recsys.artifact import (
    extend_artifact,
    load_glmix,
    read_embeddings,
    read_manifest,
    write_json_bytes,
)
from recsys.auc import (
    bootstrap_ci,
    delong_ci,
    delong_paired_difference,
    interval_verdict,
)
from recsys.baselines import BASELINE_NAMES
from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S, TRUTH_FILE, VIDEO_TRUTH_FILE
from recsys.errors import UserInputError
from recsys.glmix import GLMix, GLMixConfig
from recsys.online import OnlineConfig, progressive_validation
from recsys.scoring import (
    HISTORY_FEATURES,
    glmix_global_features,
    history_features,
    prior_history_similarity,
    similarity_by_user,
)
from recsys.splits import parse_time

SCORES = ("max_similarity", "avg_similarity", "glmix", "glmix_no_video")


def artifact_test_start(manifest: dict[str, Any]) -> datetime:
    try:
        return parse_time(str(manifest["data"]["test_start"]).replace(" ", "T"))
    except KeyError:
        raise UserInputError("artifact manifest has no data.test_start") from None


def _rows(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> pa.Table:
    return con.sql(
        "SELECT user_id, video_id, shown_at, watch_seconds, file_row_number AS row "
        f"FROM impressions_rows WHERE {where} ORDER BY file_row_number",
        params=params,
    ).to_arrow_table()


def _connection(data: Path) -> duckdb.DuckDBPyConnection:
    con = impressions_connection(data)
    path = str(data / "impressions.parquet").replace("'", "''")
    con.execute(
        f"CREATE VIEW impressions_rows AS SELECT * FROM read_parquet('{path}', file_row_number = true)"
    )
    return con


def _embedding_rows(ids: list[str], videos: list[str], what: str) -> np.ndarray:
    index = {v: i for i, v in enumerate(ids)}
    missing = [v for v in videos if v not in index]
    if missing:
        raise UserInputError(
            f"{len(missing)} {what} name videos without an embedding, e.g. {missing[0]!r}"
        )
    return np.array([index[v] for v in videos], dtype=np.int64)


def _glmix_files(model: GLMix, stem: str) -> dict[str, Any]:
    fixed, users = model.to_tables()
    return {
        f"{stem}.json": write_json_bytes(fixed),
        f"{stem}_users.parquet": lambda p, t=users: pq.write_table(t, p),
    }


@dataclass(frozen=True)
class GLMixJobConfig:
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S
    glmix: GLMixConfig = field(default_factory=GLMixConfig)
    #: choose random_l2 on the last 10% (by time) of the training period
    tune: bool = False
    #: print each phase and coordinate-descent pass
    progress: bool = False
    #: give the watch-probability model the Eq. 16-17 similarities to the user's history
    #: (``recsys.scoring.HISTORY_FEATURES``) as global features; False: Eq. 18 alone
    history_features: bool = True


def fit_glmix_into_artifact(
    data: str | os.PathLike[str],
    artifact: str | os.PathLike[str],
    cfg: GLMixJobConfig | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Fit GLMix (with and without video features) on training-period impressions and add
    them, with the users' training-period watch histories, to the artifact."""
    cfg = cfg or GLMixJobConfig()
    engine = engine or LOCAL
    d, a = dataset_dir(data), Path(artifact)
    manifest = read_manifest(a)
    test_start = artifact_test_start(manifest)
    con = _connection(d)
    train = _rows(con, "shown_at < ?", [test_start])
    if train.num_rows == 0:
        raise UserInputError("no impressions before the test start to fit GLMix on")
    ids, emb = read_embeddings(a / "embeddings.parquet")
    vrows = _embedding_rows(ids, train.column("video_id").to_pylist(), "training impressions")
    users = np.array(train.column("user_id").to_pylist(), dtype=object)
    y = (train.column("watch_seconds").to_numpy() >= cfg.watch_threshold_s).astype(np.float64)
    x = emb[vrows]
    times = train.column("shown_at").to_numpy().astype("datetime64[us]").astype(np.int64)
    hist_feats = None
    if cfg.history_features:
        if cfg.progress:
            print("GLMix: similarity of each impression to the history before it ...", flush=True)
        codes, _ = pd.factorize(users)
        max_s, avg_s = prior_history_similarity(
            codes, vrows, times, y > 0, emb.astype(np.float64, copy=False)
        )
        hist_feats = history_features(max_s, avg_s)
    glm_cfg = cfg.glmix
    tuning: dict[str, Any] = {}
    if cfg.tune:
        cut = np.quantile(times, 0.9)
        if cfg.progress:
            print(
                "GLMix: choosing random_l2 on the last 10% of the training period ...", flush=True
            )
        best, losses = engine.select_random_l2(users, x, y, times >= cut, glm_cfg, hist_feats)
        if cfg.progress:
            print(f"GLMix: random_l2 = {best}", flush=True)
        glm_cfg = GLMixConfig(**{**asdict(glm_cfg), "random_l2": best})
        tuning = {"random_l2": best, "validation_log_loss": {str(k): v for k, v in losses.items()}}
    t0 = time.perf_counter()

    def on_pass(p: int, ll: float) -> None:
        if cfg.progress:
            print(f"GLMix pass {p}: log-likelihood per row {ll:.5f}", flush=True)

    if cfg.progress:
        print(f"GLMix: fitting on {engine.describe()} ...", flush=True)
    with_video = engine.fit_glmix(users, x, y, glm_cfg, on_pass=on_pass, global_feats=hist_feats)
    if hist_feats is not None:
        with_video.global_names = list(HISTORY_FEATURES)
    if cfg.progress:
        print("GLMix without video features ...", flush=True)
    fit_s = time.perf_counter() - t0
    no_video = engine.fit_glmix(
        users, x, y, GLMixConfig(**{**asdict(glm_cfg), "use_video_features": False})
    )
    watched = y > 0
    histories = pa.table(
        {
            "user_id": train.column("user_id").filter(pa.array(watched)),
            "video_id": train.column("video_id").filter(pa.array(watched)),
            "watched_at": train.column("shown_at").filter(pa.array(watched)),
        }
    )
    info = {
        "training_rows": int(train.num_rows),
        "users": len(with_video.user_ids),
        "fit_seconds": fit_s,
        "passes": len(with_video.history),
        "log_likelihood_per_row": with_video.history[-1]["log_likelihood_per_row"],
        "config": asdict(glm_cfg),
        "global_features": list(with_video.global_names),
        "tuning": tuning,
        "watch_threshold_s": cfg.watch_threshold_s,
        "engine": engine.describe(),
    }
    files = {
        **_glmix_files(with_video, "glmix"),
        **_glmix_files(no_video, "glmix_no_video"),
        "histories.parquet": lambda p: pq.write_table(histories, p),
    }
    extend_artifact(a, files, {"kind": "recommender", "glmix": info})
    return info


# --------------------------------------------------------------------------- evaluation


def _global_features(model: GLMix, max_s: np.ndarray, avg_s: np.ndarray) -> np.ndarray | None:
    try:
        return glmix_global_features(model.global_names, max_s, avg_s)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None


@dataclass
class EvalInputs:
    users: np.ndarray
    video_rows: np.ndarray
    labels: np.ndarray
    cold_start: np.ndarray
    scores: dict[str, np.ndarray]
    oracle: np.ndarray | None


def _online_block(
    y: np.ndarray,
    online_p: np.ndarray,
    frozen_p: np.ndarray,
    users: np.ndarray,
    model: GLMix,
    cfg: OnlineConfig,
    history_only_p: np.ndarray | None = None,
) -> dict[str, Any]:
    """Progressive-validation AUC of online GLMix against the frozen model, overall and
    for users the offline fit never saw, with DeLong intervals and the paired difference.

    ``history_only_p``: a model with history features, its effects frozen but the
    histories followed (what the service did before online effects); the online model is
    compared with it too, which isolates what learning the effects online adds."""
    new_user = np.array([u not in model.user_index for u in users.tolist()])
    out: dict[str, Any] = {"config": asdict(cfg)}
    for name, rows in (("all", np.ones(len(y), bool)), ("new_users", new_user)):
        if rows.sum() < 2 or len(set(y[rows].tolist())) < 2:
            out[name] = {"rows": int(rows.sum()), "note": "too few rows of both classes"}
            continue
        on = delong_ci(y[rows], online_p[rows])
        fr = delong_ci(y[rows], frozen_p[rows])
        diff = delong_paired_difference(y[rows], online_p[rows], frozen_p[rows])
        out[name] = {
            "rows": int(rows.sum()),
            "users": len(set(users[rows].tolist())),
            "online_auc": on[0],
            "online_ci95": [on[1], on[2]],
            "frozen_auc": fr[0],
            "frozen_ci95": [fr[1], fr[2]],
            "difference": diff[0],
            "difference_ci95": [diff[1], diff[2]],
            "verdict": interval_verdict(diff[1], diff[2]),
        }
        if history_only_p is not None:
            ho = delong_ci(y[rows], history_only_p[rows])
            d2 = delong_paired_difference(y[rows], online_p[rows], history_only_p[rows])
            out[name].update(
                history_only_auc=ho[0],
                history_only_ci95=[ho[1], ho[2]],
                difference_vs_history_only=d2[0],
                difference_vs_history_only_ci95=[d2[1], d2[2]],
                verdict_vs_history_only=interval_verdict(d2[1], d2[2]),
            )
    return out


def _auc_by_day(
    y: np.ndarray, times_us: np.ndarray, curves: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """AUC of each score per day of the test period (days with both classes only):
    does the online model pull away from the frozen one as it sees more?"""
    day = (np.asarray(times_us) - np.min(times_us)) // 86_400_000_000
    out: list[dict[str, Any]] = []
    for d in np.unique(day).tolist():
        rows = day == d
        if len(set(y[rows].tolist())) < 2:
            continue
        entry: dict[str, Any] = {"day": int(d) + 1, "rows": int(rows.sum())}
        for name, p in curves.items():
            entry[name] = delong_ci(y[rows], p[rows])[0]
        out.append(entry)
    return out


def _auc_block(
    y: np.ndarray,
    s: np.ndarray,
    users: np.ndarray,
    boot: int,
    seed: int,
    engine: Engine | None = None,
) -> dict[str, Any]:
    ok = ~np.isnan(s)
    a, lo, hi = (engine or LOCAL).delong(y[ok], s[ok])
    blo, bhi = (
        bootstrap_ci(y[ok], s[ok], users[ok], num_resamples=boot, seed=seed)
        if boot
        else (math.nan, math.nan)
    )
    return {"auc": a, "delong": [lo, hi], "bootstrap_users": [blo, bhi], "rows": int(ok.sum())}


def evaluate_artifact(
    data: str | os.PathLike[str],
    artifact: str | os.PathLike[str],
    out: str | os.PathLike[str],
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S,
    test_start: datetime | None = None,
    bootstrap: int = 200,
    baseline: str | os.PathLike[str] | None = None,
    seed: int = 0,
    baselines: tuple[str, ...] = BASELINE_NAMES,
    progress: bool = False,
    engine: Engine | None = None,
    online: OnlineConfig | None = None,
) -> dict[str, Any]:
    """Offline AUCs of the artifact's scores on the test period, beside the classical
    ``baselines`` (see pipelines.ladder) scored on the same rows; writes report.json/.md."""
    d, a, o = dataset_dir(data), Path(artifact), Path(out)
    manifest = read_manifest(a)
    trained_until = artifact_test_start(manifest)
    start = test_start or trained_until
    if start < trained_until:
        raise UserInputError(
            f"test start {start.isoformat()} is before the artifact's training cut-off "
            f"{trained_until.isoformat()}: the model has seen test impressions"
        )
    glm = load_glmix(a, "glmix")
    glm0 = load_glmix(a, "glmix_no_video")
    if glm is None or glm0 is None:
        fit_glmix_into_artifact(d, a, GLMixJobConfig(watch_threshold_s=watch_threshold_s))
        glm, glm0 = load_glmix(a, "glmix"), load_glmix(a, "glmix_no_video")
        assert glm is not None and glm0 is not None
    con = _connection(d)
    test = _rows(con, "shown_at >= ?", [start])
    if test.num_rows == 0:
        raise UserInputError(f"no impressions at or after the test start {start.isoformat()}")
    train_videos = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT video_id FROM impressions WHERE shown_at < ?", [trained_until]
        ).fetchall()
    }
    ids, emb = read_embeddings(a / "embeddings.parquet")
    vrows = _embedding_rows(ids, test.column("video_id").to_pylist(), "test impressions")
    users = np.array(test.column("user_id").to_pylist(), dtype=object)
    y = (test.column("watch_seconds").to_numpy() >= watch_threshold_s).astype(np.int64)
    cold = np.array([v not in train_videos for v in test.column("video_id").to_pylist()])

    # Histories: the artifact's training-period valid watches.
    hist = pq.read_table(a / "histories.parquet")
    hist_users = hist.column("user_id").to_pylist()
    hist_rows = _embedding_rows(ids, hist.column("video_id").to_pylist(), "history rows")
    uindex = {u: i for i, u in enumerate(sorted(set(users.tolist()) | set(hist_users)))}
    by_user: dict[int, list[int]] = {}
    for u, r in zip(hist_users, hist_rows.tolist(), strict=True):
        by_user.setdefault(uindex[u], []).append(r)
    history_rows = {u: np.unique(np.array(r)) for u, r in by_user.items()}
    user_idx = np.array([uindex[u] for u in users], dtype=np.int64)
    emb64 = emb.astype(np.float64)
    max_s, avg_s = similarity_by_user(user_idx, vrows, history_rows, emb64)
    x = emb[vrows].astype(np.float64)
    # The frozen model sees the histories as they were at the test start.
    frozen_g = _global_features(glm, max_s, avg_s)
    scores = {
        "max_similarity": max_s,
        "avg_similarity": avg_s,
        "glmix": glm.predict_proba(users, x, frozen_g),
        "glmix_no_video": glm0.predict_proba(users, x),
    }
    online_report = None
    if online is not None:
        if progress:
            print("online GLMix: replaying the test period in time order ...", flush=True)
        times = test.column("shown_at").to_numpy().astype("datetime64[us]").astype(np.int64)
        online_g = None
        if frozen_g is not None:
            # Online, each watch replayed joins the history before the next impression.
            live_max, live_avg = prior_history_similarity(
                user_idx, vrows, times, y > 0, emb64, history_rows
            )
            online_g = _global_features(glm, live_max, live_avg)
        online_p = progressive_validation(users, x, y, times, glm, online, online_g)
        history_only = None if online_g is None else glm.predict_proba(users, x, online_g)
        online_report = _online_block(
            y, online_p, scores["glmix"], users, glm, online, history_only
        )
        curves = {"online": online_p, "frozen": scores["glmix"]}
        if history_only is not None:
            curves["history_only"] = history_only
        online_report["by_day"] = _auc_by_day(y, times, curves)
    oracle = None
    truth_path = d / TRUTH_FILE
    if truth_path.exists():
        truth = (
            pq.read_table(truth_path, columns=["watch_probability"])
            .column("watch_probability")
            .to_numpy()
        )
        oracle = truth[test.column("row").to_numpy()]

    report: dict[str, Any] = {
        "artifact": str(a.resolve()),
        "pooling": manifest.get("config", {}).get("embedder", {}).get("pooling"),
        "test_start": start.isoformat(),
        "watch_threshold_s": watch_threshold_s,
        "glmix_global_features": list(glm.global_names),
        "rows": {
            "test": len(y),
            "cold_start": int(cold.sum()),
            "test_with_history": int((~np.isnan(max_s)).sum()),
            "cold_start_with_history": int((cold & ~np.isnan(max_s)).sum()),
            "test_users": len(set(users.tolist())),
            "test_users_without_history": len(
                {u for u, m in zip(users, np.isnan(max_s), strict=True) if m}
            ),
            "positive_rate": float(y.mean()),
        },
        "notes": [
            "Similarity AUCs use the test rows of users with a training-period watch history "
            "(Eq. 16-17 are undefined otherwise); GLMix AUCs use all test rows, and unknown users "
            "get the fixed effect alone.",
            "Cold-start videos have no impression before the test start.",
        ],
    }
    auc_all, auc_cold, ci_all, ci_cold = {}, {}, {}, {}
    for name, s in scores.items():
        if progress:
            print(
                f"AUC of {name}: DeLong and {bootstrap} user-bootstrap resamples (all, cold start)",
                flush=True,
            )
        blk = _auc_block(y, s, users, bootstrap, seed)
        auc_all[name], ci_all[name] = blk["auc"], blk
        blk_c = _auc_block(y[cold], s[cold], users[cold], bootstrap, seed) if cold.any() else None
        auc_cold[name] = blk_c["auc"] if blk_c else math.nan
        ci_cold[name] = blk_c
    report["auc"] = auc_all
    report["auc_cold_start"] = auc_cold
    report["ci95"] = {"all": ci_all, "cold_start": ci_cold}
    if online_report is not None:
        report["online"] = online_report
    if oracle is not None:
        report["oracle_auc"] = {
            "all": _auc_block(y, oracle, users, 0, seed)["auc"],
            "cold_start": _auc_block(y[cold], oracle[cold], users[cold], 0, seed)["auc"]
            if cold.any()
            else math.nan,
        }
    rel: dict[str, Any] = {
        "glmix_vs_no_video_pct": {
            "all": 100 * (auc_all["glmix"] / auc_all["glmix_no_video"] - 1),
            "cold_start": 100 * (auc_cold["glmix"] / auc_cold["glmix_no_video"] - 1)
            if cold.any()
            else math.nan,
        }
    }
    if baseline is not None:
        try:
            base = json.loads(Path(baseline).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserInputError(f"{baseline}: cannot read baseline report ({exc})") from None
        rel["vs_baseline_pct"] = {
            "baseline_pooling": base.get("pooling"),
            **{
                k: 100 * (auc_all[k] / base["auc"][k] - 1)
                for k in ("max_similarity", "avg_similarity")
            },
            "glmix_cold_start": 100 * (auc_cold["glmix"] / base["auc_cold_start"]["glmix"] - 1),
        }
    report["relative_improvement"] = rel
    if baselines:
        _add_baselines(
            report,
            d,
            emb,
            start,
            watch_threshold_s,
            y,
            cold,
            users,
            scores,
            baselines,
            bootstrap,
            seed,
            progress,
            history_features=bool(glm.global_names),
        )
    o.mkdir(parents=True, exist_ok=True)
    _plot_roc(y, scores, cold, oracle, o / "roc.png")
    if online_report is not None and online_report["by_day"]:
        _plot_online(online_report["by_day"], o / "online.png")
    write_parquet_atomic(
        pa.table(
            {
                "user_id": pa.array(users.tolist(), pa.string()),
                "video_id": test.column("video_id"),
                "label": pa.array(y),
                "cold_start": pa.array(cold),
                **{k: pa.array(v) for k, v in scores.items()},
            }
        ),
        o / "test_scores.parquet",
    )
    (o / "report.json").write_text(json.dumps(_clean(report), indent=2))
    (o / "report.md").write_text(render_markdown(report))
    return report


def _add_baselines(
    report: dict[str, Any],
    data: Path,
    emb: np.ndarray,
    start: datetime,
    watch_threshold_s: float,
    y: np.ndarray,
    cold: np.ndarray,
    users: np.ndarray,
    scores: dict[str, np.ndarray],
    names: tuple[str, ...],
    bootstrap: int,
    seed: int,
    progress: bool,
    history_features: bool = False,
) -> None:
    """Score each classical baseline on the same test rows; compare the learned scores
    with the best baseline by DeLong's paired test. ``history_features``: the baselines'
    GLMix gets the history similarities as the learned model's does (same model family)."""
    from pipelines.ladder import baseline_ladder, load_rec_rows
    from pipelines.train_embeddings import load_frame_store

    if progress:
        print(f"baselines: {', '.join(names)} (PCA size and GLMix penalty chosen on validation)")
    store = load_frame_store(data)
    rows = load_rec_rows(data, store.video_ids, start, watch_threshold_s)
    if not np.array_equal(rows.test_labels, y):
        raise RuntimeError("baseline rows differ from the evaluation rows")  # a bug, not input
    ladder = baseline_ladder(
        rows,
        store,
        emb.shape[1],
        names,
        seed=seed,
        log=print if progress else None,
        history_features=history_features,
    )
    out: dict[str, Any] = {}
    base_scores: dict[str, dict[str, np.ndarray]] = {}
    for name, (bscores, info) in ladder.items():
        entry: dict[str, Any] = {
            "auc": {},
            "auc_cold_start": {},
            "ci95": {"all": {}, "cold_start": {}},
        }
        for k, s in bscores.items():
            blk = _auc_block(y, s, users, bootstrap, seed)
            entry["auc"][k], entry["ci95"]["all"][k] = blk["auc"], blk
            blk_c = (
                _auc_block(y[cold], s[cold], users[cold], bootstrap, seed) if cold.any() else None
            )
            entry["auc_cold_start"][k] = blk_c["auc"] if blk_c else math.nan
            entry["ci95"]["cold_start"][k] = blk_c
        entry["choice"] = {
            **info,
            "pca_validation_log_loss": {
                str(d): loss for d, loss in info["pca_validation_log_loss"].items()
            },
        }
        out[name] = entry
        base_scores[name] = bscores
    report["baselines"] = out
    truth_path = data / VIDEO_TRUTH_FILE
    if truth_path.exists():
        # A synthetic world knows each video's true features: the same GLMix on them is
        # the ceiling for any embedding (not a baseline to beat).
        from pipelines.ladder import reduce_on_validation, score_representation

        t = pq.read_table(truth_path)
        index = {v: i for i, v in enumerate(t.column("video_id").to_pylist())}
        feats = np.stack(t.column("features").to_numpy(zero_copy_only=False))
        if all(v in index for v in store.video_ids):
            raw = feats[[index[v] for v in store.video_ids]]
            vectors, info = reduce_on_validation(rows, raw, emb.shape[1])
            cscores, fit = score_representation(rows, vectors, history_features=history_features)
            report["ceiling"] = {
                "name": "true video features (synthetic world)",
                "auc": {k: _auc_block(y, v, users, 0, seed)["auc"] for k, v in cscores.items()},
                "auc_cold_start": {
                    k: _auc_block(y[cold], v[cold], users[cold], 0, seed)["auc"]
                    for k, v in cscores.items()
                },
                "choice": {"pca_dim": info["pca_dim"], **fit},
            }
    comparison: dict[str, Any] = {}
    for score in ("glmix", "max_similarity", "avg_similarity"):
        for subset, sel in (("all", np.ones_like(cold)), ("cold_start", cold)):
            key = "auc" if subset == "all" else "auc_cold_start"
            valid = {n: e[key][score] for n, e in out.items() if not math.isnan(e[key][score])}
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
    report["vs_best_baseline"] = comparison


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    r = report["rows"]
    lines = [
        f"# Offline evaluation ({report.get('pooling')} embeddings)",
        "",
        f"Test period from {report['test_start']}; valid watch = watch_seconds >= {report['watch_threshold_s']} s.",
        f"{r['test']} test impressions ({r['cold_start']} of cold-start videos) from {r['test_users']} users; "
        f"{r['test_users_without_history']} test users have no training-period watch history.",
        "",
    ]
    names = report.get("glmix_global_features") or []
    lines += [
        "GLMix: Eq. 18"
        + (
            f" plus global features {', '.join(names)} (similarity to the history as it was "
            "when each impression was shown; the baselines' GLMix rows get the same)."
            if names
            else " alone (no history features)."
        ),
        "",
        "| score | AUC (all) | 95% DeLong | 95% bootstrap (users) | AUC (cold start) | 95% bootstrap (users) |",
        "|---|---|---|---|---|---|",
    ]
    for k in SCORES:
        a = report["ci95"]["all"][k]
        c = report["ci95"]["cold_start"][k] or {}
        lines.append(
            f"| {k} | {_fmt(a['auc'])} | {_fmt(a['delong'][0])}-{_fmt(a['delong'][1])} | "
            f"{_fmt(a['bootstrap_users'][0])}-{_fmt(a['bootstrap_users'][1])} | {_fmt(c.get('auc'))} | "
            f"{_fmt((c.get('bootstrap_users') or [None, None])[0])}-{_fmt((c.get('bootstrap_users') or [None, None])[1])} |"
        )
    for name, b in report.get("baselines", {}).items():
        ch = b.get("choice", {})
        for k in ("max_similarity", "avg_similarity", "glmix"):
            a = b["ci95"]["all"][k]
            c = b["ci95"]["cold_start"].get(k) or {}
            lines.append(
                f"| baseline {name} (PCA {ch.get('pca_dim')}): {k} | {_fmt(a['auc'])} | "
                f"{_fmt(a['delong'][0])}-{_fmt(a['delong'][1])} | "
                f"{_fmt(a['bootstrap_users'][0])}-{_fmt(a['bootstrap_users'][1])} | {_fmt(c.get('auc'))} | "
                f"{_fmt((c.get('bootstrap_users') or [None, None])[0])}-{_fmt((c.get('bootstrap_users') or [None, None])[1])} |"
            )
    if "ceiling" in report:
        c = report["ceiling"]
        lines += [
            "",
            f"Ceiling, {c['name']} through the same GLMix: "
            + ", ".join(
                f"{k} {_fmt(c['auc'][k])} (cold start {_fmt(c['auc_cold_start'][k])})"
                for k in ("glmix", "max_similarity", "avg_similarity")
            )
            + ".",
        ]
    if report.get("online"):
        on = report["online"]
        lines += [
            "",
            "## Online GLMix (progressive validation)",
            "",
            "The test period replayed in time order; each impression is scored before the "
            "user's effect is refitted from it (window "
            f"{on['config']['window']}, prior mean = the offline effect). Against the frozen "
            "offline model on the same rows (DeLong's paired 95% interval).",
            "",
            "| users | rows | online | frozen | difference [95%] | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("all", "new_users"):
            b = on.get(name, {})
            if "online_auc" not in b:
                lines.append(f"| {name} | {b.get('rows', 0)} | | | | {b.get('note', '')} |")
                continue
            lo, hi = b["difference_ci95"]
            lines.append(
                f"| {name} | {b['rows']} | {_fmt(b['online_auc'])} | {_fmt(b['frozen_auc'])} | "
                f"{b['difference']:+.4f} [{_fmt(lo)}, {_fmt(hi)}] | **{b['verdict']}** |"
            )
        if on.get("by_day"):
            lines += ["", "![online AUC by day](online.png)"]
        if "history_only_auc" in on.get("all", {}):
            lines += [
                "",
                "Frozen means histories and effects as of the test start. With the history "
                "features, following the histories alone (effects frozen) already moves the "
                "score; learning the effects online adds to that:",
                "",
                "| users | history only | online vs history only [95%] | verdict |",
                "|---|---|---|---|",
            ]
            for name in ("all", "new_users"):
                b = on.get(name, {})
                if "history_only_auc" not in b:
                    continue
                lo, hi = b["difference_vs_history_only_ci95"]
                lines.append(
                    f"| {name} | {_fmt(b['history_only_auc'])} | "
                    f"{b['difference_vs_history_only']:+.4f} [{_fmt(lo)}, {_fmt(hi)}] | "
                    f"**{b['verdict_vs_history_only']}** |"
                )
    if report.get("vs_best_baseline"):
        lines += [
            "",
            f"## Does the learned ({report.get('pooling')}) embedding beat the best baseline?",
            "",
            "DeLong's paired test on the same rows (95% interval of the AUC difference).",
            "",
            "| score | subset | learned | best baseline | difference [95%] | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for score, subsets in report["vs_best_baseline"].items():
            for subset, c in subsets.items():
                lo, hi = c["delong_paired_95"]
                lines.append(
                    f"| {score} | {subset} | {_fmt(c['learned_auc'])} | {c['best_baseline']} "
                    f"{_fmt(c['baseline_auc'])} | {c['difference']:+.4f} [{_fmt(lo)}, {_fmt(hi)}] | "
                    f"**{c['verdict']}** |"
                )
    if "oracle_auc" in report:
        lines += [
            "",
            f"Oracle AUC (true watch probabilities): all {_fmt(report['oracle_auc']['all'])}, "
            f"cold start {_fmt(report['oracle_auc']['cold_start'])}.",
        ]
    rel = report["relative_improvement"]["glmix_vs_no_video_pct"]
    lines += [
        "",
        f"GLMix with video features vs without: {rel['all']:+.2f}% (all), {rel['cold_start']:+.2f}% (cold start).",
    ]
    if "vs_baseline_pct" in report["relative_improvement"]:
        b = report["relative_improvement"]["vs_baseline_pct"]
        lines.append(
            f"Relative to {b['baseline_pooling']} pooling: max similarity {b['max_similarity']:+.2f}%, "
            f"avg similarity {b['avg_similarity']:+.2f}%."
        )
    lines += ["", "![ROC](roc.png)", ""]
    if report.get("loss_curve"):
        em = report.get("embedding_metrics", {})
        kept = f" (kept epoch {em['best_epoch']})" if "best_epoch" in em else ""
        lines += [
            f"Embedding training{kept}: ![triplet loss per epoch]({report['loss_curve']})",
            "",
        ]
    lines += [*[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def _plot_online(by_day: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "online": "online (effects refitted, histories followed)",
        "history_only": "histories followed, effects frozen",
        "frozen": "frozen at the test start",
    }
    fig, ax = plt.subplots(figsize=(7, 4))
    days = [b["day"] for b in by_day]
    for key, label in labels.items():
        if key in by_day[0]:
            ax.plot(days, [b[key] for b in by_day], marker="o", label=label)
    ax.set_xlabel("day of the test period")
    ax.set_ylabel("AUC of that day's impressions")
    ax.set_title("GLMix watch probability, progressive validation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_roc(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    cold: np.ndarray,
    oracle: np.ndarray | None,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, subset, title in (
        (axes[0], np.ones_like(cold), "all test impressions"),
        (axes[1], cold, "cold-start videos"),
    ):
        curves = dict(scores)
        if oracle is not None:
            curves["oracle"] = oracle
        for name, s in curves.items():
            ok = subset & ~np.isnan(s)
            if ok.sum() == 0 or len(set(y[ok].tolist())) < 2:
                continue
            fpr, tpr, _ = roc_curve(y[ok], s[ok])
            ax.plot(fpr, tpr, label=name, linestyle="--" if name == "oracle" else "-")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.set_title(title)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
