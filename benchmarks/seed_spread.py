"""How much the headline numbers move with the training seed.

    python -m benchmarks.seed_spread --data DIR --out DIR [--seeds 0 1 2] [--no-history-features]
        [--anchor-neighbours K]

Runs ``recsys pipeline`` (defaults, in process) once per seed into OUT/seed_N, then
prints one Markdown row per seed and the mean, min and max of each column: the learned
GLMix AUC (all / cold start), its paired difference with the best baseline, the same for
average similarity (Eq. 16), and the online replay's gain over the frozen model. A
single run's interval says how sure one draw is; this says how much another draw of
the same recipe differs. Several minutes per seed on 2 cores; run on demand, not in CI.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.pipeline import PipelineConfig, run_pipeline

COLUMNS = (
    "GLMix all",
    "GLMix cold",
    "GLMix vs best baseline",
    "avg sim. vs best baseline",
    "avg sim. cold vs best baseline",
    "online vs frozen",
)


def summarise(report: dict[str, Any]) -> dict[str, float]:
    """The columns of one run's report.json (NaN where the report lacks a part)."""
    vs = report.get("vs_best_baseline", {})

    def diff(score: str, subset: str) -> float:
        return float(vs.get(score, {}).get(subset, {}).get("difference", np.nan))

    online = report.get("online", {}).get("all", {})
    return {
        "GLMix all": float(report["auc"]["glmix"]),
        "GLMix cold": float(report["auc_cold_start"]["glmix"]),
        "GLMix vs best baseline": diff("glmix", "all"),
        "avg sim. vs best baseline": diff("avg_similarity", "all"),
        "avg sim. cold vs best baseline": diff("avg_similarity", "cold_start"),
        "online vs frozen": float(online.get("difference", np.nan)),
    }


def _cell(column: str, v: float) -> str:
    return f"{v:.4f}" if column.startswith("GLMix ") and "vs" not in column else f"{v:+.4f}"


def table(rows: dict[int, dict[str, float]]) -> str:
    head = "| seed | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for seed, r in rows.items():
        lines.append(f"| {seed} | " + " | ".join(_cell(c, r[c]) for c in COLUMNS) + " |")
    values = np.array([[r[c] for c in COLUMNS] for r in rows.values()])
    for name, fn in (("mean", np.nanmean), ("min", np.nanmin), ("max", np.nanmax)):
        cells = " | ".join(_cell(c, v) for c, v in zip(COLUMNS, fn(values, 0), strict=True))
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-history-features", action="store_true")
    ap.add_argument("--anchor-neighbours", type=int, default=None, help="TrainConfig's if unset")
    args = ap.parse_args()
    base = PipelineConfig()
    base = replace(base, glmix=replace(base.glmix, history_features=not args.no_history_features))
    rows: dict[int, dict[str, float]] = {}
    for seed in args.seeds:
        out = args.out / f"seed_{seed}"
        cfg = base.with_seed(seed)
        if args.anchor_neighbours is not None:
            e = cfg.embedding
            train = replace(e.train, anchor_neighbours=args.anchor_neighbours)
            cfg = replace(cfg, embedding=replace(e, train=train))
        report = run_pipeline(args.data, out, cfg, overwrite=True, progress=False)
        rows[seed] = summarise(report)
        print(f"seed {seed}: " + json.dumps({k: round(v, 4) for k, v in rows[seed].items()}))
    text = table(rows)
    print(text)
    (args.out / "seed_spread.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
