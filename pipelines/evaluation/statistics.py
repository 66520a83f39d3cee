"""The evaluation's statistics: AUCs with DeLong and user-bootstrap intervals, paired
differences with verdicts, and the online replay's comparison (arrays in, dicts out)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from pipelines.engine import LOCAL, Engine
from recsys.auc import bootstrap_ci, delong_ci, delong_paired_difference, interval_verdict
from recsys.glmix.model import GLMix
from recsys.online.users import OnlineConfig


def auc_block(
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


def auc_table(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    cold: np.ndarray,
    users: np.ndarray,
    boot: int,
    seed: int,
    log: Any = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, Any], dict[str, Any]]:
    """(AUC over all rows, AUC over cold-start rows, their interval blocks) per score."""
    auc_all, auc_cold, ci_all, ci_cold = {}, {}, {}, {}
    for name, s in scores.items():
        if log is not None:
            log(f"AUC of {name}: DeLong and {boot} user-bootstrap resamples (all, cold start)")
        blk = auc_block(y, s, users, boot, seed)
        auc_all[name], ci_all[name] = blk["auc"], blk
        blk_c = auc_block(y[cold], s[cold], users[cold], boot, seed) if cold.any() else None
        auc_cold[name] = blk_c["auc"] if blk_c else math.nan
        ci_cold[name] = blk_c
    return auc_all, auc_cold, ci_all, ci_cold


def online_block(
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
    new_user = model.user_rows(users) < 0
    out: dict[str, Any] = {"config": asdict(cfg)}
    for name, rows in (("all", np.ones(len(y), bool)), ("new_users", new_user)):
        if rows.sum() < 2 or len(set(y[rows].tolist())) < 2:
            out[name] = {"rows": int(rows.sum()), "note": "too few rows of both classes"}
            continue
        curves = {"online": online_p[rows], "frozen": frozen_p[rows]}
        if history_only_p is not None:
            curves["history_only"] = history_only_p[rows]
        yr = y[rows]
        out[name] = online_entry(
            int(rows.sum()),
            len(set(users[rows].tolist())),
            lambda c: delong_ci(yr, curves[c]),  # noqa: B023 (called before the loop moves on)
            lambda a, b: delong_paired_difference(yr, curves[a], curves[b]),  # noqa: B023
            history_only_p is not None,
        )
    return out


Interval = tuple[float, float, float]  # estimate, 95% low, 95% high


def online_entry(
    rows: int,
    users: int,
    auc_of: Callable[[str], Interval],
    paired_of: Callable[[str, str], Interval],
    with_history: bool,
) -> dict[str, Any]:
    """One row set of the online-vs-frozen block, whatever computes the AUCs (arrays here,
    Spark in ``pipelines.spark.evaluate``): curves "online", "frozen", "history_only"."""
    on, fr, diff = auc_of("online"), auc_of("frozen"), paired_of("online", "frozen")
    entry: dict[str, Any] = {
        "rows": rows,
        "users": users,
        "online_auc": on[0],
        "online_ci95": [on[1], on[2]],
        "frozen_auc": fr[0],
        "frozen_ci95": [fr[1], fr[2]],
        "difference": diff[0],
        "difference_ci95": [diff[1], diff[2]],
        "verdict": interval_verdict(diff[1], diff[2]),
    }
    if with_history:
        ho, d2 = auc_of("history_only"), paired_of("online", "history_only")
        entry.update(
            history_only_auc=ho[0],
            history_only_ci95=[ho[1], ho[2]],
            difference_vs_history_only=d2[0],
            difference_vs_history_only_ci95=[d2[1], d2[2]],
            verdict_vs_history_only=interval_verdict(d2[1], d2[2]),
        )
    return entry


def auc_by_day(
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


#: the scores a run is compared on with another run of the same test rows
PAIRED_SCORES = ("glmix", "max_similarity", "avg_similarity")


def paired_with_run(
    labels: np.ndarray,
    cold: np.ndarray,
    scores: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
) -> dict[str, Any]:
    """This run's scores minus another run's on the same test rows, each of
    ``PAIRED_SCORES`` both runs have, all rows and cold start: DeLong's paired difference
    and its verdict (rows either run cannot score left out)."""
    out: dict[str, Any] = {}
    for name in PAIRED_SCORES:
        if name not in scores or name not in other:
            continue
        a, b = scores[name], other[name]
        for subset, sel in (("all", np.ones(len(labels), dtype=bool)), ("cold_start", cold)):
            ok = sel & ~np.isnan(a) & ~np.isnan(b)
            if len(np.unique(labels[ok])) < 2:
                continue
            diff, lo, hi = delong_paired_difference(labels[ok], a[ok], b[ok])
            out.setdefault(name, {})[subset] = {
                "difference": diff,
                "delong_paired_95": [lo, hi],
                "verdict": interval_verdict(lo, hi),
            }
    return out
