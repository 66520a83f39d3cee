"""A vector per video given by the platform, through ``recsys pipeline``, against GLMix
fitted directly on the same vectors, over several worlds and seeds.

    python -m benchmarks.given_vectors_check --out DIR [--worlds mixture scenes styles]
        [--seeds 0 1 2] [--videos 600] [--users 300]

Each (world, seed): the world's videos given as one vector each (the mean frame,
``recsys synth --given-vectors``), the pipeline with its defaults, then GLMix fitted by
``pipelines.choice.ladder.score_representation`` on the unit vectors (and on the raw
vectors, to show what the scaling does) with the shipped model's coordinates. Prints
the test AUCs and DeLong's paired interval of pipeline minus direct; writes
``given_vectors.json``. About a minute per (world, seed) on 2 cores: run on demand.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.world_suite import interval_text, world_config, worlds_parser
from pipelines.choice.ladder import score_representation
from pipelines.data.impressions import load_rec_rows
from pipelines.data.io import as_given_vectors, iter_video_batches, write_dataset
from pipelines.pipeline import PipelineConfig, run_pipeline
from recsys import artifact as art
from recsys.auc import delong_paired_difference
from recsys.embedders import unit_rows
from recsys.glmix.model import GLMixConfig
from recsys.synthetic.world import generate_world


def run_one(world: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = args.out / "worlds" / f"{world}_{seed}"
    if not (data / "impressions.parquet").exists():
        w = generate_world(world_config(world, seed, args.videos, args.users))
        videos = as_given_vectors(w.video_batches())
        write_dataset(data, videos, w.impressions, w.truth, w.video_truth)
    out = args.out / "runs" / f"{world}_{seed}"
    report = run_pipeline(
        data, out, PipelineConfig().with_seed(seed), overwrite=True, progress=False
    )
    a = out / "artifact"
    glm = art.load_glmix(a)
    assert glm is not None
    batches = list(iter_video_batches(data))
    ids = [v for vb in batches for v in vb.video_ids]
    raw = np.concatenate([vb.frames for vb in batches])
    rows = load_rec_rows(data, ids, art.training_cutoff(art.read_manifest(a)))
    base = GLMixConfig(
        video_effects=glm.has_video_effects, video_intercept_l2=glm.config.video_intercept_l2
    )
    test = pq.read_table(out / "test_scores.parquet")
    y, ours = np.asarray(test.column("label")), np.asarray(test.column("glmix"))
    row: dict[str, Any] = {"world": world, "seed": seed, "pipeline": report["auc"]["glmix"]}
    for name, vectors in (("unit", unit_rows(raw)), ("raw", raw)):
        scores, _ = score_representation(
            rows, vectors, base, history_features=bool(glm.global_names)
        )
        d, lo, hi = delong_paired_difference(y, ours, scores["glmix"])
        row[name] = {"difference": d, "interval": [lo, hi]}
    print(
        f"{world:8s} seed {seed}: pipeline {row['pipeline']:.4f}; minus direct (unit) "
        f"{interval_text(row['unit'])}; minus direct (raw) {interval_text(row['raw'])}",
        flush=True,
    )
    return row


def main() -> None:
    args = worlds_parser(__doc__ or "").parse_args()
    results = [run_one(w, s, args) for w in args.worlds for s in args.seeds]
    inside = sum(r["unit"]["interval"][0] <= 0 <= r["unit"]["interval"][1] for r in results)
    print(f"pipeline = direct (unit vectors) within the paired interval: {inside}/{len(results)}")
    (args.out / "given_vectors.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
