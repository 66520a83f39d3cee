"""Does bfloat16 inference change what the classifier answers? GAP@20 and Hit@1 over
several worlds and seeds.

    python -m benchmarks.bf16_gap_check --out DIR [--worlds mixture short noisy]
        [--seeds 0 1 2] [--videos 3000] [--users 100] [--pooling dsgmm] [--epochs 4]

The worlds differ in their frames (``benchmarks.world_suite.WORLDS``: the defaults, 3-12
frames a video, three times the frame noise); ``scenes`` and ``styles`` differ only in
what users watch, so their videos and labels are the defaults'.

Each (world, seed): ``recsys classify`` trained once, in float32 as it trains, its test
split scored in float32 and again with bfloat16 inference on the same frame samples
(``ClassifyConfig.bfloat16_check``). Prints both GAP@20, the paired bootstrap interval of
bf16 minus float32, McNemar's p on Hit@1 and the test pass's time in each; writes
``bf16_gap.json``. A minute or two per (world, seed) on 2 cores: run on demand.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from benchmarks.world_suite import world_config, worlds_parser
from embeddings.classifier import ClassifierConfig
from pipelines.classify.classify import ClassifyConfig, run_classify, scan_labelled
from pipelines.data.io import write_dataset
from recsys.synthetic.world import generate_world


def run_one(world: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = args.out / "worlds" / f"{world}_{seed}"
    if not (data / "impressions.parquet").exists():
        w = generate_world(world_config(world, seed, args.videos, args.users))
        write_dataset(data, w.video_batches(), w.impressions, w.truth, w.video_truth)
    info = scan_labelled(data)
    model = ClassifierConfig(
        feature_dim=info.feature_dim, num_classes=info.num_classes, pooling=args.pooling
    )
    cfg = replace(ClassifyConfig(), seed=seed, epochs=args.epochs, baselines=False)
    out = args.out / "runs" / f"{world}_{seed}"
    report = run_classify(data, out, model, cfg, progress=False, info=info)
    b = report.get("bfloat16_inference")
    if b is None:
        raise SystemExit("this CPU does not multiply bfloat16: nothing to compare")
    lo, hi = b["gap_difference_bootstrap_95"]
    s = b["seconds"]
    print(
        f"{world:8s} seed {seed}: GAP@20 fp32 {report['gap']:.4f} bf16 {b['gap']:.4f}, "
        f"bf16 - fp32 {b['gap_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] ({b['verdict']}); "
        f"Hit@1 {report['hit_at_1']:.4f} / {b['hit_at_1']:.4f}, McNemar p "
        f"{b['hit_at_1_mcnemar_p']:.3f}; largest probability change "
        f"{b['max_probability_change']:.4f}; test pass {s['float32']:.1f} s / "
        f"{s['bfloat16']:.1f} s",
        flush=True,
    )
    return {"world": world, "seed": seed, "gap": report["gap"], "bfloat16": b}


def main() -> None:
    parser = worlds_parser(__doc__ or "", videos=3000, users=100)
    parser.set_defaults(worlds=["mixture", "short", "noisy"])
    parser.add_argument("--pooling", default="dsgmm")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    results = [run_one(w, s, args) for w in args.worlds for s in args.seeds]
    inside = sum(
        lo <= 0 <= hi for lo, hi in (r["bfloat16"]["gap_difference_bootstrap_95"] for r in results)
    )
    print(f"GAP@20: bf16 = float32 within the paired interval in {inside}/{len(results)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_gap.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
