"""The paper's Table 7 with and without GLMix's per-video coordinate.

Table 7 compares GLMix with video features against GLMix without them, on all test rows
and on cold-start videos. Its claim - features help more on cold-start videos - rests on
a mechanism: a warm video's own watch rate says what its features would, a new upload
has only its features. A model without per-video effects cannot show that mechanism (its
features stand in for every video's appeal, warm or cold), so the table is computed for
both: the shipped pair and the variant pair with the coordinate the other way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recsys.auc import delong_paired_difference, interval_verdict

#: the subsets every comparison is reported on
SUBSETS = ("all", "warm", "cold_start")


def _paired(y: np.ndarray, a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> dict[str, Any]:
    if not sel.any() or len(np.unique(y[sel])) < 2:
        return {"difference": float("nan"), "delong_paired_95": [float("nan")] * 2}
    diff, lo, hi = delong_paired_difference(y[sel], a[sel], b[sel])
    return {"difference": diff, "delong_paired_95": [lo, hi], "verdict": interval_verdict(lo, hi)}


def _difference_of_gains(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a - b of two gains measured on disjoint rows (cold-start and warm videos), with
    the 95% interval from their own intervals' standard errors (taken as independent)."""
    z = 1.959963984540054
    (alo, ahi), (blo, bhi) = a["delong_paired_95"], b["delong_paired_95"]
    diff = a["difference"] - b["difference"]
    half = z * math.hypot((ahi - alo) / (2 * z), (bhi - blo) / (2 * z))
    lo, hi = diff - half, diff + half
    return {"difference": diff, "interval_95": [lo, hi], "verdict": interval_verdict(lo, hi)}


def coordinate_table(
    labels: np.ndarray,
    cold: np.ndarray,
    with_effects: tuple[np.ndarray, np.ndarray],
    without_effects: tuple[np.ndarray, np.ndarray],
    shipped_has_effects: bool,
) -> dict[str, Any]:
    """Table 7 with and without per-video effects. Each pair is (scores of GLMix with
    video features, scores without them) on the same test rows; ``cold`` (N,) marks
    cold-start videos. Returns, per pair and subset (all, warm, cold start), both AUCs and
    the features' gain with DeLong's paired interval, and how much larger the gain is on
    cold-start videos than on warm ones (the paper's claim); and the per-video
    coordinate's gain (the feature models with against without it), also paired."""
    from recsys.auc import delong_ci

    y = np.asarray(labels)
    subsets = {"all": np.ones(len(y), dtype=bool), "warm": ~cold, "cold_start": cold}
    out: dict[str, Any] = {"shipped": "with" if shipped_has_effects else "without"}
    for name, (feats, none) in (("with", with_effects), ("without", without_effects)):
        block: dict[str, Any] = {}
        for subset, sel in subsets.items():
            ok = sel.any() and len(np.unique(y[sel])) == 2
            block[subset] = {
                "auc_video_features": delong_ci(y[sel], feats[sel])[0] if ok else float("nan"),
                "auc_no_video_features": delong_ci(y[sel], none[sel])[0] if ok else float("nan"),
                "feature_gain": _paired(y, feats, none, sel),
            }
        block["cold_minus_warm"] = _difference_of_gains(
            block["cold_start"]["feature_gain"], block["warm"]["feature_gain"]
        )
        out[name] = block
    out["coordinate_gain"] = {
        subset: _paired(y, with_effects[0], without_effects[0], sel)
        for subset, sel in subsets.items()
    }
    return out


def table_lines(block: dict[str, Any]) -> list[str]:
    """The Markdown rows of ``coordinate_table``'s result."""

    def cell(entry: dict[str, Any]) -> str:
        d, (lo, hi) = entry["difference"], entry["delong_paired_95"]
        return f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"

    lines = [
        "| per-video effects | subset | GLMix, video features | GLMix, none | "
        "gain from features (paired 95%) |",
        "|---|---|---|---|---|",
    ]
    for name in ("with", "without"):
        tag = " (shipped)" if block["shipped"] == name else ""
        for subset in SUBSETS:
            e = block[name][subset]
            lines.append(
                f"| {name}{tag} | {subset.replace('_', ' ')} | {e['auc_video_features']:.4f} | "
                f"{e['auc_no_video_features']:.4f} | {cell(e['feature_gain'])} |"
            )
    lines += [
        "",
        "| per-video effects | features' gain, cold start minus warm (95%) |",
        "|---|---|",
    ]
    for name in ("with", "without"):
        d = block[name]["cold_minus_warm"]
        lo, hi = d["interval_95"]
        lines.append(f"| {name} | {d['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    lines += ["", "| per-video effects' gain (video features) | paired 95% |", "|---|---|"]
    for subset in SUBSETS:
        lines.append(f"| {subset.replace('_', ' ')} | {cell(block['coordinate_gain'][subset])} |")
    return lines


def per_video_section(block: dict[str, Any] | None) -> list[str]:
    """report.md's section for ``coordinate_table``'s result (nothing without one)."""
    if not block:
        return []
    return [
        "",
        "## Table 7 with and without per-video effects",
        "",
        "GLMix with video features against GLMix without them, on the same rows (DeLong's",
        "paired interval). A warm video's own impressions tell its per-video effect its",
        "appeal; a cold-start video has only its features.",
        "",
        *table_lines(block),
    ]


def per_video_summary(block: dict[str, Any] | None) -> list[str]:
    """The terminal lines of ``coordinate_table``'s result (nothing without one)."""
    if not block:
        return []
    out = []
    for name in ("with", "without"):
        gains = ", ".join(
            f"{subset.replace('_', ' ')} {block[name][subset]['feature_gain']['difference']:+.4f}"
            for subset in ("warm", "cold_start")
        )
        tag = " (shipped)" if block["shipped"] == name else ""
        out.append(f"  video features' gain, {name} per-video effects{tag}: {gains}")
    c = block["coordinate_gain"]["all"]
    lo, hi = c["delong_paired_95"]
    out.append(f"  per-video effects' gain (all): {c['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    return out
