"""Does embedding the catalogue in bfloat16 change what the recommender scores? Over
several worlds and seeds.

    python -m benchmarks.bf16_embedding_check --out DIR [--worlds mixture scenes styles]
        [--seeds 0 1 2] [--videos 600] [--users 300]

Each (world, seed): ``recsys pipeline`` twice with the same seed, the catalogue's
embedding pass in float32 and in bfloat16 (``--inference-precision``); training, mining
and every choice before the embedding pass are the same. Prints the test AUCs (GLMix,
Eq. 17, Eq. 16) and DeLong's paired interval of bf16 minus float32 on the same rows, and
the cosine of each video's two embeddings; writes ``bf16_embedding.json``. A few
minutes per (world, seed) on 2 cores: run on demand.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.world_suite import interval_text, world_config, worlds_parser
from pipelines.data.io import write_dataset
from pipelines.pipeline import PipelineConfig, run_pipeline
from recsys import artifact as art
from recsys.auc import delong_paired_difference
from recsys.synthetic.world import generate_world

SCORES = ("glmix", "max_similarity", "avg_similarity")


def run_one(world: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = args.out / "worlds" / f"{world}_{seed}"
    if not (data / "impressions.parquet").exists():
        w = generate_world(world_config(world, seed, args.videos, args.users))
        write_dataset(data, w.video_batches(), w.impressions, w.truth, w.video_truth)
    tables, vectors, row = {}, {}, {"world": world, "seed": seed}
    for precision in ("float32", "bfloat16"):
        out = args.out / "runs" / f"{world}_{seed}_{precision}"
        base = PipelineConfig().with_seed(seed)
        emb = base.embedding
        cfg = replace(
            base,
            embedding=replace(emb, train=replace(emb.train, inference_precision=precision)),
        )
        report = run_pipeline(data, out, cfg, overwrite=True, progress=False)
        tables[precision] = pq.read_table(out / "test_scores.parquet")
        vectors[precision] = art.load_embeddings(out / "artifact")
        row[precision] = {s: report["auc"][s] for s in SCORES}
    (ids32, v32), (ids16, v16) = vectors["float32"], vectors["bfloat16"]
    assert ids32 == ids16
    cos = (v32 * v16).sum(1) / np.linalg.norm(v32, axis=1) / np.linalg.norm(v16, axis=1)
    row["embedding_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    a, b = tables["bfloat16"], tables["float32"]
    assert a.column("user_id").equals(b.column("user_id"))
    y = np.asarray(b.column("label"))
    for s in SCORES:
        x1, x0 = np.asarray(a.column(s)), np.asarray(b.column(s))
        keep = np.isfinite(x1) & np.isfinite(x0)  # similarities need a history
        d, lo, hi = delong_paired_difference(y[keep], x1[keep], x0[keep])
        row[f"bf16_minus_fp32_{s}"] = {"difference": d, "interval": [lo, hi]}
    each = "; ".join(f"{s} {interval_text(row[f'bf16_minus_fp32_{s}'])}" for s in SCORES)
    print(f"{world:8s} seed {seed}: cosine min {cos.min():.5f}; {each}", flush=True)
    return row


def main() -> None:
    args = worlds_parser(__doc__ or "").parse_args()
    results = [run_one(w, s, args) for w in args.worlds for s in args.seeds]
    for s in SCORES:
        c = [r[f"bf16_minus_fp32_{s}"]["interval"] for r in results]
        inside = sum(lo <= 0 <= hi for lo, hi in c)
        print(f"{s}: bf16 = float32 within the paired interval in {inside}/{len(c)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_embedding.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
