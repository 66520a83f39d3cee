"""``recsys experiment paper``: the paper's classification comparisons on any labelled data set.

Table 2 (avg, VLAD, SGMM, NetVLAD, DSGMM), Table 4 (intra/final norm grid), Table 5
(six assignment types), Figure 2 (metrics vs number of clusters, gamma = 1, no
normalisation) and Figure 3 (DSGMM vs gamma in powers of two, NetVLAD as reference),
written as report.md + report.json + PNG plots. Every run also lands in OUT/runs/NAME
(a normal ``recsys classify`` run directory, so ``recsys compare`` works on them).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from embeddings.classifier import ClassifierConfig
from embeddings.pooling import ASSIGNMENTS
from pipelines.classify.classify import ClassifyConfig, run_classify, scan_labelled
from pipelines.classify.comparison import compare_runs


@dataclass(frozen=True)
class Budget:
    clusters: int
    cluster_grid: tuple[int, ...]
    gamma_powers: tuple[int, ...]
    train: ClassifyConfig


BUDGETS = {
    # A few thousand videos on 2 CPU cores: few examples, so a larger learning rate and
    # a faster decay than the paper's 2e-4 / 4M examples (which assume 3.9M videos).
    "small": Budget(
        16,
        (2, 4, 8, 16, 32),
        (-9, -6, -3, 0, 3),
        ClassifyConfig(epochs=15, lr=3e-3, decay_examples=20_000),
    ),
    "full": Budget(
        64,
        (4, 16, 64, 128, 256),
        (-9, -7, -5, -3, -2, -1, 0, 1, 3),
        ClassifyConfig(epochs=30, lr=1e-3, decay_examples=200_000),
    ),
}


def _row(r: dict[str, Any]) -> dict[str, float]:
    return {
        k: r[k] for k in ("gap", "hit_at_1", "val_gap", "val_hit_at_1", "val_loss", "train_seconds")
    }


def run_paper_experiment(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    budget: str = "small",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    b = BUDGETS[budget]
    o = Path(out)
    (o / "runs").mkdir(parents=True, exist_ok=True)
    info = scan_labelled(data)
    d, c = info.feature_dim, info.num_classes
    base = ClassifierConfig(feature_dim=d, num_classes=c, num_clusters=b.clusters)
    train = replace(b.train, seed=seed)
    results: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, ClassifierConfig]] = []
    for p in ("avg", "vlad", "sgmm", "netvlad", "dsgmm"):
        plan.append((f"t2_{p}", replace(base, pooling=p)))
    for p in ("netvlad", "dsgmm"):
        for intra in (False, True):
            for final in (False, True):
                plan.append(
                    (
                        f"t4_{p}_in{int(intra)}_fn{int(final)}",
                        replace(base, pooling=p, intra_norm=intra, final_norm=final),
                    )
                )
        for a in ASSIGNMENTS:
            plan.append((f"t5_{p}_{a}", replace(base, pooling=p, assignment=a, gamma=0.5)))
        for k in b.cluster_grid:
            plan.append(
                (
                    f"f2_{p}_k{k}",
                    replace(base, pooling=p, num_clusters=k, gamma=1.0, intra_norm=False),
                )
            )
    for e in b.gamma_powers:
        plan.append((f"f3_dsgmm_g{e}", replace(base, pooling="dsgmm", gamma=2.0**e)))
    t0 = time.perf_counter()
    ladder: dict[str, Any] = {}
    done: dict[str, str] = {}  # identical configurations are trained once
    for name, cfg in tqdm(plan, desc="runs", disable=not progress):
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        if key in done:
            results[name] = {**results[done[key]], "same_as": done[key]}
            continue
        # The baseline ladder is the same for every run: fit it once, beside Table 2's DSGMM.
        run_train = replace(train, baselines=name == "t2_dsgmm")
        r = run_classify(data, o / "runs" / name, cfg, run_train, progress=False, info=info)
        results[name] = _row(r)
        if name == "t2_dsgmm":
            ladder = {k: r[k] for k in ("baselines", "vs_best_baseline") if k in r}
        done[key] = name
    stats = compare_runs(o / "runs" / "t2_dsgmm", o / "runs" / "t2_netvlad", resamples=500)
    report = {
        "budget": budget,
        "data": str(Path(data).resolve()),
        "videos": info.split_sizes,
        "num_classes": c,
        "feature_dim": d,
        "clusters": b.clusters,
        "train": {
            k: getattr(train, k)
            for k in ("epochs", "lr", "decay_examples", "frames_per_video", "batch_size")
        },
        "results": results,
        "dsgmm_vs_netvlad": stats,
        **ladder,
        "total_seconds": time.perf_counter() - t0,
    }
    (o / "report.json").write_text(json.dumps(report, indent=2))
    _plots(report, b, o)
    (o / "report.md").write_text(_markdown(report, b))
    return report


def _plots(report: dict[str, Any], b: Budget, o: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("gap", "hit_at_1"), strict=True):
        for p in ("netvlad", "dsgmm"):
            ax.plot(
                b.cluster_grid,
                [res[f"f2_{p}_k{k}"][metric] for k in b.cluster_grid],
                marker="o",
                label=p,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of clusters K")
        ax.set_ylabel(metric)
        ax.legend()
    fig.suptitle("Figure 2: clusters (gamma = 1, no normalisation)")
    fig.tight_layout()
    fig.savefig(o / "figure2_clusters.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("gap", "hit_at_1"), strict=True):
        ax.plot(
            b.gamma_powers,
            [res[f"f3_dsgmm_g{e}"][metric] for e in b.gamma_powers],
            marker="o",
            label="dsgmm",
        )
        ax.axhline(res["t2_netvlad"][metric], color="grey", linestyle="--", label="netvlad")
        ax.set_xlabel("log2(gamma)")
        ax.set_ylabel(metric)
        ax.legend()
    fig.suptitle("Figure 3: DSGMM vs gamma (intra-norm, no final norm)")
    fig.tight_layout()
    fig.savefig(o / "figure3_gamma.png", dpi=100)
    plt.close(fig)


def _markdown(report: dict[str, Any], b: Budget) -> str:
    res = report["results"]
    lines = [*_md_table2(report), *_md_tables_4_5(res), *_md_figures(res, b), ""]
    return "\n".join(lines)


def _cell(res: dict[str, Any], name: str, metric: str) -> str:
    return f"{res[name][metric]:.4f}"


def _md_table2(report: dict[str, Any]) -> list[str]:
    res = report["results"]

    def cell(name: str, metric: str) -> str:
        return _cell(res, name, metric)

    s = report["dsgmm_vs_netvlad"]
    lines = [
        f"# Paper experiments ({report['budget']} budget)",
        "",
        f"Data: {report['data']} - videos {report['videos']}, {report['num_classes']} labels, D = {report['feature_dim']}; "
        f"K = {report['clusters']}; training {report['train']}. Total {report['total_seconds'] / 60:.1f} min.",
        "",
        "## Table 2",
        "",
        "| model | GAP val | GAP test | Hit@1 val | Hit@1 test |",
        "|---|---|---|---|---|",
    ]
    for p in ("avg", "vlad", "sgmm", "netvlad", "dsgmm"):
        n = f"t2_{p}"
        lines.append(
            f"| {p} | {cell(n, 'val_gap')} | {cell(n, 'gap')} | {cell(n, 'val_hit_at_1')} | {cell(n, 'hit_at_1')} |"
        )
    for name, bl in report.get("baselines", {}).items():
        lines.append(
            f"| baseline {name} ({bl['choice']}) | {bl['val_gap']:.4f} | {bl['gap']:.4f} | - | {bl['hit_at_1']:.4f} |"
        )
    if "vs_best_baseline" in report:
        v = report["vs_best_baseline"]
        lo, hi = v["gap_difference_bootstrap_95"]
        lines += [
            "",
            f"DSGMM vs the best baseline ({v['best_baseline']}): GAP difference "
            f"{v['gap_difference']:+.4f} (95% bootstrap {lo:+.4f} .. {hi:+.4f}), McNemar p on Hit@1 "
            f"{v['hit_at_1_mcnemar_p']:.3g}: **{v['verdict']}**.",
        ]
    t = s["contingency"]
    lines += [
        "",
        f"DSGMM vs NetVLAD on test Hit@1: contingency {t}, McNemar p = {s['mcnemar_p']:.3g}; "
        f"GAP difference {s['gap_diff']:+.4f} (95% bootstrap CI {s['gap_diff_ci95'][0]:+.4f} .. {s['gap_diff_ci95'][1]:+.4f}).",
    ]
    return lines


def _md_tables_4_5(res: dict[str, Any]) -> list[str]:
    def cell(name: str, metric: str) -> str:
        return _cell(res, name, metric)

    lines = [
        "",
        "## Table 4 (test)",
        "",
        "| I-N | F-N | GAP NetVLAD | GAP DSGMM | Hit@1 NetVLAD | Hit@1 DSGMM |",
        "|---|---|---|---|---|---|",
    ]
    for intra in (0, 1):
        for final in (0, 1):
            nv, ds = f"t4_netvlad_in{intra}_fn{final}", f"t4_dsgmm_in{intra}_fn{final}"
            lines.append(
                f"| {'Yes' if intra else 'No'} | {'Yes' if final else 'No'} | {cell(nv, 'gap')} | {cell(ds, 'gap')} | "
                f"{cell(nv, 'hit_at_1')} | {cell(ds, 'hit_at_1')} |"
            )
    lines += [
        "",
        "## Table 5 (test, gamma = 0.5)",
        "",
        "| assignment | GAP NetVLAD | GAP DSGMM | Hit@1 NetVLAD | Hit@1 DSGMM |",
        "|---|---|---|---|---|",
    ]
    for a in ASSIGNMENTS:
        nv, ds = f"t5_netvlad_{a}", f"t5_dsgmm_{a}"
        lines.append(
            f"| {a} | {cell(nv, 'gap')} | {cell(ds, 'gap')} | {cell(nv, 'hit_at_1')} | {cell(ds, 'hit_at_1')} |"
        )
    return lines


def _md_figures(res: dict[str, Any], b: Budget) -> list[str]:
    def cell(name: str, metric: str) -> str:
        return _cell(res, name, metric)

    lines = [
        "",
        "## Figure 2",
        "",
        "![clusters](figure2_clusters.png)",
        "",
        "| K | GAP NetVLAD | GAP DSGMM |",
        "|---|---|---|",
    ]
    for k in b.cluster_grid:
        lines.append(
            f"| {k} | {cell(f'f2_netvlad_k{k}', 'gap')} | {cell(f'f2_dsgmm_k{k}', 'gap')} |"
        )
    lines += [
        "",
        "## Figure 3",
        "",
        "![gamma](figure3_gamma.png)",
        "",
        "| log2 gamma | GAP DSGMM | Hit@1 DSGMM |",
        "|---|---|---|",
    ]
    for e in b.gamma_powers:
        lines.append(
            f"| {e} | {cell(f'f3_dsgmm_g{e}', 'gap')} | {cell(f'f3_dsgmm_g{e}', 'hit_at_1')} |"
        )
    return lines
