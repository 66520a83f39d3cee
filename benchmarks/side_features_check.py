"""What a platform's side features add to GLMix, over several worlds and seeds.

    python -m benchmarks.side_features_check --out DIR [--worlds mixture scenes styles]
        [--seeds 0 1 2] [--videos 600] [--users 300] [--strength 1.0]

Each (world, seed): the world with side signals (``recsys synth --side-signals``: a
video's length and a user's device move the watch logit), its videos given as one vector
each (nothing trained, so the runs differ only in GLMix), plus a ``placebo`` column of
noise in videos.parquet. Three pipeline runs on the same rows: no side features, the
two real ones (``length_s``, ``device``), and the placebo alone. Prints the test AUCs of
the shipped GLMix and DeLong's paired interval of each run minus the first, over all
test rows and over cold-start videos; writes ``side_features.json``. About 1.5 minutes
per (world, seed) on 2 cores: run on demand.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.world_suite import interval_text, world_config, worlds_parser
from pipelines.data.io import as_given_vectors, write_dataset
from pipelines.pipeline import PipelineConfig, run_pipeline
from recsys.auc import delong_paired_difference
from recsys.synthetic.world import generate_world

RUNS = {"none": ((), ()), "side": (("length_s",), ("device",)), "placebo": (("placebo",), ())}


def _world(data: Path, world: str, seed: int, args: argparse.Namespace) -> None:
    if (data / "impressions.parquet").exists():
        return
    cfg = replace(world_config(world, seed, args.videos, args.users), side_signals=args.strength)
    w = generate_world(cfg)
    videos = pa.concat_tables(list(as_given_vectors(w.video_batches())))
    noise = np.random.default_rng([seed, 99]).normal(size=videos.num_rows)
    videos = videos.append_column("placebo", pa.array(noise))
    write_dataset(data, videos, w.impressions, w.truth, w.video_truth, w.users)


def run_one(world: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = args.out / "worlds" / f"{world}_{seed}"
    _world(data, world, seed, args)
    scores: dict[str, pa.Table] = {}
    row: dict[str, Any] = {"world": world, "seed": seed}
    for name, (video_cols, user_cols) in RUNS.items():
        out = args.out / "runs" / f"{world}_{seed}_{name}"
        base = PipelineConfig().with_seed(seed)
        cfg = replace(
            base,
            glmix=replace(base.glmix, video_features=video_cols, user_features=user_cols),
        )
        report = run_pipeline(data, out, cfg, overwrite=True, progress=False)
        scores[name] = pq.read_table(out / "test_scores.parquet")
        row[name] = {
            "auc": report["auc"]["glmix"],
            "auc_cold_start": report["auc_cold_start"]["glmix"],
        }
    ref = scores["none"]
    y = np.asarray(ref.column("label"))
    cold = np.asarray(ref.column("cold_start"))
    for name in ("side", "placebo"):
        assert scores[name].column("user_id").equals(ref.column("user_id"))
        a, b = np.asarray(scores[name].column("glmix")), np.asarray(ref.column("glmix"))
        for subset, mask in (("all", np.ones(len(y), bool)), ("cold_start", cold)):
            d, lo, hi = delong_paired_difference(y[mask], a[mask], b[mask])
            row[name][f"vs_none_{subset}"] = {"difference": d, "interval": [lo, hi]}
    s, p = row["side"], row["placebo"]
    print(
        f"{world:8s} seed {seed}: none {row['none']['auc']:.4f}; side "
        f"{interval_text(s['vs_none_all'])} (cold {interval_text(s['vs_none_cold_start'])}); "
        f"placebo {interval_text(p['vs_none_all'])} "
        f"(cold {interval_text(p['vs_none_cold_start'])})",
        flush=True,
    )
    return row


def main() -> None:
    p = worlds_parser(__doc__ or "")
    p.add_argument("--strength", type=float, default=1.0)
    args = p.parse_args()
    results = [run_one(w, s, args) for w in args.worlds for s in args.seeds]
    for name in ("side", "placebo"):
        for subset in ("all", "cold_start"):
            c = [r[name][f"vs_none_{subset}"] for r in results]
            better = sum(x["interval"][0] > 0 for x in c)
            worse = sum(x["interval"][1] < 0 for x in c)
            print(f"{name} vs none ({subset}): better {better}, worse {worse}, of {len(c)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "side_features.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
