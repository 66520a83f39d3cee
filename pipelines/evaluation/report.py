"""Writing the evaluation: report.json, report.md, the plots and the per-row scores,
once, from ``pipelines.evaluation.evaluate.Evaluation``; and the summary the CLI prints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.data.io import write_parquet_atomic
from pipelines.evaluation.coordinate_comparison import per_video_section, per_video_summary
from pipelines.evaluation.evaluate import SCORES, Evaluation
from pipelines.phases import phase_table
from pipelines.plots import plot_online, plot_roc

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def write_report(out: str | Path, evaluation: Evaluation) -> Path:
    """Write OUT/report.json, report.md, roc.png (online.png with an online replay) and
    test_scores.parquet; returns OUT."""
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    report, t = evaluation.report, evaluation.test
    online = report.get("online")
    if online is not None and online["by_day"]:
        plot_online(online["by_day"], o / "online.png")
    if t is None:  # computed on Spark: the rows stay there
        if evaluation.write_scores is not None:
            evaluation.write_scores(o / "test_scores.parquet")
    else:
        plot_roc(t.labels, evaluation.scores, t.cold_start, evaluation.oracle, o / "roc.png")
        write_parquet_atomic(
            pa.table(
                {
                    "user_id": pa.array(t.users.tolist(), pa.string()),
                    "video_id": t.rows.column("video_id"),
                    "label": pa.array(t.labels),
                    "cold_start": pa.array(t.cold_start),
                    **{k: pa.array(v) for k, v in evaluation.scores.items()},
                }
            ),
            o / "test_scores.parquet",
        )
    (o / REPORT_JSON).write_text(json.dumps(clean(report), indent=2, default=str))
    (o / REPORT_MD).write_text(render_markdown(report))
    return o


def clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the AUC table with baseline rows, the online replay, the comparison
    with the best baseline, then the notes."""
    lines = [
        *_md_scores(report),
        *per_video_section(report.get("per_video_effects")),
        *_md_online(report.get("online")),
        *_md_versus_best(report),
        *_md_validation_choice(report),
        *_md_starting_point(report),
        *_md_settings_search(report),
        *_md_footer(report),
    ]
    return "\n".join(lines)


def _interval_cells(a: dict[str, Any], c: dict[str, Any]) -> str:
    """The AUC cells of one row: all rows (DeLong, bootstrap), cold start (bootstrap)."""
    cb = c.get("bootstrap_users") or [None, None]
    return (
        f"{_fmt(a['auc'])} | {_fmt(a['delong'][0])}-{_fmt(a['delong'][1])} | "
        f"{_fmt(a['bootstrap_users'][0])}-{_fmt(a['bootstrap_users'][1])} | {_fmt(c.get('auc'))} | "
        f"{_fmt(cb[0])}-{_fmt(cb[1])} |"
    )


def _md_scores(report: dict[str, Any]) -> list[str]:
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
    coords = report.get("glmix_coordinates") or {}
    lines += [
        "GLMix: Eq. 18"
        + (
            f" plus global features {', '.join(names)} (similarity to the history as it was "
            "when each impression was shown; the baselines' GLMix rows get the same)."
            if names
            else " alone (no history features)."
        ),
        "Per-video effects (a third coordinate, chosen on the validation rows): "
        + (
            f"yes, intercept L2 {coords['video_intercept_l2']:g} (the baselines' GLMix too)."
            if coords.get("per_video_effects")
            else "none."
        ),
        "",
        "| score | AUC (all) | 95% DeLong | 95% bootstrap (users) | AUC (cold start) | 95% bootstrap (users) |",
        "|---|---|---|---|---|---|",
    ]
    for k in SCORES:
        c = report["ci95"]["cold_start"][k] or {}
        lines.append(f"| {k} | " + _interval_cells(report["ci95"]["all"][k], c))
    for name, b in report.get("baselines", {}).items():
        ch = b.get("choice", {})
        for k in ("max_similarity", "avg_similarity", "glmix"):
            c = b["ci95"]["cold_start"].get(k) or {}
            lines.append(
                f"| baseline {name} (PCA {ch.get('pca_dim')}): {k} | "
                + _interval_cells(b["ci95"]["all"][k], c)
            )
    for name, why in report.get("baselines_not_applicable", {}).items():
        lines.append(f"| baseline {name}: not applicable ({why}) | | | | | |")
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
    return lines


def _md_online(on: dict[str, Any] | None) -> list[str]:
    if not on:
        return []
    lines = [
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
    return lines


def _md_versus_best(report: dict[str, Any]) -> list[str]:
    if not report.get("vs_best_baseline"):
        return []
    lines = [
        "",
        f"## Does the shipped embedding ({report.get('pooling')}) beat the best baseline?",
        "",
        "DeLong's paired test on the same rows (95% interval of the AUC difference).",
        "",
        "| score | subset | shipped | best baseline | difference [95%] | verdict |",
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
    return lines


def _md_validation_choice(report: dict[str, Any]) -> list[str]:
    """What was tried on validation and why the winner won (``--pooling auto`` ships it)."""
    choice = report.get("validation_choice")
    if not choice:
        return []
    losses = choice["validation_log_loss"]
    lines = [
        "",
        "## Which representation does validation prefer?",
        "",
        f"Criterion: {choice['criterion']}. Rule: {choice.get('rule', 'the lowest criterion')}. "
        "The test period is not used; `--pooling auto` ships the preferred one.",
        "",
        "| representation | log-loss, all validation rows | on held-out videos | criterion "
        "| avg sim. AUC | vs shipped: criterion [95%] | vs shipped: avg sim. AUC [95%] | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    details = choice.get("details", {})
    versus = choice.get("versus_shipped", {})
    for name, loss in sorted(losses.items(), key=lambda kv: kv[1]):
        d, v = details.get(name, {}), versus.get(name)
        tags = _tags(name, shipped=choice["shipped"], preferred=choice["best"])
        lines.append(
            f"| {name} | {_fmt(d.get('all'))} | {_fmt(d.get('heldout_videos'))} | {loss:.5f} | "
            f"{_fmt(d.get('avg_similarity_auc'))} {_gaps(v)} {tags} |"
        )
    selection = report.get("embedding_metrics", {}).get("selection")
    if selection:
        lines += ["", f"This artifact was chosen by `--pooling auto`: {selection['winner']} won."]
    return lines


def _md_starting_point(report: dict[str, Any]) -> list[str]:
    """Which rung the learned model started from and how much of it the embedding keeps."""
    start = report.get("embedding_metrics", {}).get("starting_point")
    if not start:
        return []
    lines = [
        "",
        "## What the learned model started from",
        "",
        f"It learned on top of **{start['chosen']}** (the reference is "
        f"{start.get('reference', start.get('lowest_criterion'))}; another rung replaces it "
        "only when ahead beyond the paired interval on validation). Its share w of the final cosine, chosen on the same rows "
        "(w = 1: the rung alone; w = 0: the learned part alone):",
        "",
        "| w | criterion | avg sim. AUC | vs trained w: criterion [95%] | vs trained w: avg sim. "
        "AUC [95%] | |",
        "|---|---|---|---|---|---|",
    ]
    weight = start.get("weight", {})
    versus = weight.get("versus_trained", {})
    for name, d in weight.get("candidates", {}).items():
        w = float(name.removeprefix("w="))
        tags = _tags(w, trained=weight["trained_weight"], kept=weight["weight"])
        lines.append(
            f"| {w:g} | {_fmt(d.get('criterion'))} | {_fmt(d.get('avg_similarity_auc'))} "
            f"{_gaps(versus.get(name))} {tags} |"
        )
    size = start.get("size")
    if size:
        lines += [
            "",
            f"Then its size: the {size['full_dim']} values kept whole or reduced to their leading "
            f"principal directions. Kept: **{size['chosen']}**.",
            "",
            "| size | criterion | avg sim. AUC | vs full: criterion [95%] | vs full: avg sim. AUC "
            "[95%] |",
            "|---|---|---|---|---|",
        ]
        for name, d in size["candidates"].items():
            v = size["versus_full"].get(name)
            gaps = _gaps(v)
            lines.append(
                f"| {name} | {_fmt(d.get('criterion'))} | {_fmt(d.get('avg_similarity_auc'))} {gaps}"
            )
    return lines


def _md_settings_search(report: dict[str, Any]) -> list[str]:
    """The variants ``--search-budget`` trained, each against the default on validation."""
    found = report.get("embedding_metrics", {}).get("settings_search")
    if not found:
        return []
    lines = [
        "",
        "## Which settings did the search try?",
        "",
        f"Budget {found['budget_seconds']:.0f} s; a variant replaces the default only when "
        f"ahead beyond the paired interval. Kept: **{found['chosen']}**."
        + (
            f" Not tried for time: {', '.join(found['skipped_for_time'])}."
            if found["skipped_for_time"]
            else ""
        ),
        "",
        "| variant | seconds | w | criterion | avg sim. AUC | vs default: criterion [95%] "
        "| vs default: avg sim. AUC [95%] |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, c in found["candidates"].items():
        v = c.get("versus_default")
        gaps = _gaps(v)
        lines.append(
            f"| {label} | {c['seconds']:.0f} | {c['base_weight']:g} | {_fmt(c.get('criterion'))} "
            f"| {_fmt(c.get('avg_similarity_auc'))} {gaps}"
        )
    return lines


def _tags(value: object, **named: object) -> str:
    """The names whose value is ``value``, comma-separated (a row's "shipped, preferred")."""
    return ", ".join(tag for tag, x in named.items() if x == value)


def _gaps(v: dict[str, float] | None) -> str:
    """The two interval cells of a comparison (empty for the reference itself)."""
    return "| |" if v is None else f"| {_gap(v, 'loss')} | {_gap(v, 'auc')} |"


def _gap(v: dict[str, float], key: str) -> str:
    return f"{v[key]:+.4f} [{v[key + '_low']:+.4f}, {v[key + '_high']:+.4f}]"


def _md_footer(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
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
    lines += _versus_run_lines(report.get("versus_baseline_run"))
    if report.get("evaluated_on") != "spark":  # the ROC plot needs every test row in one process
        lines += ["", "![ROC](roc.png)"]
    lines += [""]
    if report.get("loss_curve"):
        em = report.get("embedding_metrics", {})
        kept = f" (kept epoch {em['best_epoch']})" if "best_epoch" in em else ""
        lines += [
            f"Embedding training{kept}: ![triplet loss per epoch]({report['loss_curve']})",
            "",
        ]
    lines += [*[f"- {n}" for n in report["notes"]], ""]
    if report.get("phases"):  # the pipeline's time, phase by phase
        lines += ["Time by phase (seconds; a nested phase is part of its parent's):", ""]
        lines += [*phase_table(report["phases"]), ""]
    return lines


def validation_line(report: dict[str, Any], out: Path) -> str | None:
    """One line when a rung beats the shipped representation on validation, with the
    command that ships the rung instead."""
    choice = report.get("validation_choice")
    if not choice or choice["best"] == choice["shipped"]:
        return None
    losses, best, shipped = choice["validation_log_loss"], choice["best"], choice["shipped"]
    data = report.get("data") or "DATA"
    return (
        f"  validation prefers {best} to the shipped {shipped} beyond the paired interval "
        f"(criterion {losses[best]:.5f} vs {losses[shipped]:.5f}); to ship it: "
        f"recsys pipeline --data {data} --out {out} --pooling {best}"
    )


def terminal_summary(report: dict[str, Any], out: Path) -> list[str]:
    """The lines ``recsys evaluate`` and ``recsys pipeline`` print: AUCs, baselines,
    the online replay, the ceiling and the comparison with the best baseline."""
    lines: list[str] = []
    for k, v in report["auc"].items():
        lines.append(f"  AUC {k:15s} all {v:.4f}   cold start {report['auc_cold_start'][k]:.4f}")
    if "oracle_auc" in report:
        lines.append(
            f"  oracle AUC          all {report['oracle_auc']['all']:.4f}   cold start {report['oracle_auc']['cold_start']:.4f}"
        )
    for name, b in report.get("baselines", {}).items():
        for k, v in b["auc"].items():
            cold = b["auc_cold_start"][k]
            lines.append(f"  baseline {name:11s} {k:15s} all {v:.4f}   cold start {cold:.4f}")
    for name, why in report.get("baselines_not_applicable", {}).items():
        lines.append(f"  baseline {name:11s} not applicable ({why})")
    for name, b in report.get("online", {}).items():
        if isinstance(b, dict) and "online_auc" in b:
            lo, hi = b["difference_ci95"]
            lines.append(
                f"  online GLMix ({name}): {b['online_auc']:.4f} vs frozen {b['frozen_auc']:.4f}, "
                f"difference {b['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]: {b['verdict']}"
            )
            if "history_only_auc" in b:
                lo, hi = b["difference_vs_history_only_ci95"]
                lines.append(
                    f"    vs histories followed, effects frozen {b['history_only_auc']:.4f}: "
                    f"{b['difference_vs_history_only']:+.4f} [{lo:+.4f}, {hi:+.4f}]: "
                    f"{b['verdict_vs_history_only']}"
                )
    lines += per_video_summary(report.get("per_video_effects"))
    if "ceiling" in report:
        c = report["ceiling"]
        lines.append(
            f"  ceiling ({c['name']}): glmix all {c['auc']['glmix']:.4f}   "
            f"cold start {c['auc_cold_start']['glmix']:.4f}"
        )
    line = validation_line(report, out)
    if line:
        lines.append(line)
    for score, subsets in report.get("vs_best_baseline", {}).items():
        for subset, c in subsets.items():
            lo, hi = c["delong_paired_95"]
            lines.append(
                f"  {score} ({subset}): {report.get('pooling') or 'shipped'} {c['learned_auc']:.4f} "
                f"vs {c['best_baseline']} "
                f"{c['baseline_auc']:.4f}, difference {c['difference']:+.4f} "
                f"[{lo:+.4f}, {hi:+.4f}]: {c['verdict']}"
            )
    lines += ["  " + x for x in _versus_run_lines(report.get("versus_baseline_run")) if x]
    lines.append(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return lines


def _versus_run_lines(paired: dict[str, Any] | None) -> list[str]:
    """The paired differences with a baseline run (``--baseline``), a line a score."""
    if not paired:
        return []
    if "note" in paired:
        return ["", f"Versus the baseline run: {paired['note']}."]
    lines = ["", f"Versus the baseline run ({paired['report']}), paired DeLong on the same rows:"]
    for name in ("glmix", "max_similarity", "avg_similarity"):
        for subset, d in paired.get(name, {}).items():
            lo, hi = d["delong_paired_95"]
            lines.append(
                f"- {name} ({subset}): {d['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]: {d['verdict']}"
            )
    return lines
