"""Ablation of the co-watch embedding recipe, beside the classical baselines.

    python -m benchmarks.ablation_cowatch --data DIR [--variants default,no_ubm_init,...]

Every variant trains on the same mined triplets and is scored on the same test rows
by the same code as ``recsys pipeline`` (GLMix with random_l2 chosen on validation,
max/avg similarity to the history); the baselines run once. Prints a Markdown table
(AUC all / cold start) and writes it to ``--out`` when given. Minutes per variant on
2 cores; run on demand, not in CI.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embeddings.cowatch import EmbedderConfig
from embeddings.runtime import configure_cpu_allocator
from embeddings.ubm_start import UBMStart
from pipelines.choice.ladder import baseline_ladder, score_representation
from pipelines.data.frame_cache import open_frame_store
from pipelines.data.impressions import impressions_connection, load_rec_rows, log_span
from pipelines.training.cowatch_data import split_by_user, split_by_video, triplet_rows
from pipelines.training.cowatch_embedding import embed_store
from pipelines.training.cowatch_training import TrainConfig, train_embedder
from recsys.metrics import auc
from recsys.splits import default_test_start
from recsys.triplets import TripletConfig, mine_triplets

#: name -> (embedder overrides, training overrides), each against the defaults
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "default": ("default recipe", {}, {}),
    "previous": (
        "previous default (random init, all frames, user validation, uncentred)",
        {},
        {
            "ubm": UBMStart(enabled=False),
            "min_keep": 1.0,
            "holdout_videos": 0.0,
            "center_output": False,
        },
    ),
    "all_frames": ("- frame subsampling (all frames)", {}, {"min_keep": 1.0}),
    "uncentred": ("- output centring", {}, {"center_output": False}),
    "random_init": ("- UBM init (random init)", {}, {"ubm": UBMStart(enabled=False)}),
    "hard_init": (
        "UBM init at temperature 1 (Eq. 20-21 as is)",
        {},
        {"ubm": UBMStart(temperature=1.0)},
    ),
    "user_validation": ("validation on held-out users, not videos", {}, {"holdout_videos": 0.0}),
    "semi_hard": ("+ semi-hard in-batch negatives", {}, {"negatives": "semi_hard"}),
    "pretrain": ("+ self-supervised pre-training (10 epochs)", {}, {"pretrain_epochs": 10}),
    "occupancy": ("+ cluster occupancy input", {"occupancy": True}, {}),
    "dropout_wd": ("+ dropout 0.3, weight decay 0.05", {"dropout": 0.3}, {"weight_decay": 0.05}),
    "centroid_anchor": (
        "+ Eq. 15 also from the anchor's co-watch centroid (3 partners)",
        {},
        {"anchor_neighbours": 3},
    ),
    "netvlad": ("NetVLAD, same recipe", {"pooling": "netvlad"}, {}),
    "avg": ("average pooling, same recipe", {"pooling": "avg"}, {"ubm": UBMStart(enabled=False)}),
}


def _aucs(rows: Any, scores: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    y, cold = rows.test_labels, rows.cold_start
    out = {}
    for k, s in scores.items():
        ok = ~np.isnan(s)
        out[k] = (auc(y[ok], s[ok]), auc(y[ok & cold], s[ok & cold]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument(
        "--history-features",
        action="store_true",
        help="GLMix also gets the history similarities (the pipeline's default); without "
        "it, Eq. 18 alone (the tables in docs/results.md)",
    )
    args = ap.parse_args()
    configure_cpu_allocator()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s): {unknown}; known: {list(VARIANTS)}")

    con = impressions_connection(args.data)
    first, last = log_span(con)
    test_start = default_test_start(first, last)
    store = open_frame_store(args.data)
    rows = load_rec_rows(args.data, store.video_ids, test_start)
    trip_rows, users = triplet_rows(store, mine_triplets(con, TripletConfig(), test_start))
    print(f"{len(store)} videos, {len(trip_rows)} triplets, {len(rows.test_labels)} test rows")

    table: list[tuple[str, dict[str, tuple[float, float]], str]] = []
    if not args.no_baselines:
        ladder = baseline_ladder(rows, store, 64, log=print, history_features=args.history_features)
        for name, (scores, info) in ladder.items():
            table.append((f"baseline {name}", _aucs(rows, scores), f"PCA {info['pca_dim']}"))
    for name in names:
        label, m_over, t_over = VARIANTS[name]
        model_cfg = replace(EmbedderConfig(feature_dim=store.feature_dim), **m_over)
        cfg = replace(TrainConfig(), **t_over)
        if cfg.holdout_videos > 0:
            val, held = split_by_video(trip_rows, len(store), cfg.holdout_videos, cfg.seed)
        else:
            val, held = split_by_user(users, cfg.val_fraction, cfg.seed), np.zeros(len(store), bool)
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        res = train_embedder(
            store, trip_rows[~val], trip_rows[val], model_cfg, cfg, False, np.flatnonzero(~held)
        )
        vectors = embed_store(res.model, store)
        if cfg.center_output:
            vectors = vectors - vectors.mean(0)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        scores, _ = score_representation(rows, vectors, history_features=args.history_features)
        note = f"epoch {res.best_epoch}, {time.perf_counter() - t0:.0f} s"
        table.append((label, _aucs(rows, scores), note))
        print(label, json.dumps({k: [round(x, 4) for x in v] for k, v in table[-1][1].items()}))

    lines = [
        "| variant | GLMix all / cold | max sim. all / cold | avg sim. all / cold | note |",
        "|---|---|---|---|---|",
    ]
    for name, a, note in table:
        cells = [
            f"{a[k][0]:.4f} / {a[k][1]:.4f}" for k in ("glmix", "max_similarity", "avg_similarity")
        ]
        lines.append(f"| {name} | {' | '.join(cells)} | {note} |")
    text = "\n".join(lines)
    print(text)
    print("defaults:", json.dumps(asdict(TrainConfig()), default=str))
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
