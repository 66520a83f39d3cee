"""Does the frame loader keep the model busy? Training steps per second from the
memory-mapped store (plan, gather in worker processes, dequantise on the device)
against the same model's forward+backward on one in-memory batch of the same shape.

    .venv/bin/python -m benchmarks.bench_loader --data DIR [--steps 20 --workers 0 1 2]

Prints steps/s of both and their ratio per worker count (1.0 = loading costs nothing).
The default model is the pipeline's (DSGMM, K = 32); ``--device cuda`` on a GPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from embeddings.cowatch import CowatchEmbedder, EmbedderConfig
from embeddings.runtime import autocast, resolve_device
from pipelines.data.frame_cache import open_frame_store
from pipelines.data.frame_loader import LoaderConfig, load_batches
from pipelines.training.cowatch_training import TrainConfig, _step, _triplet_loss, _triplet_plans


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    store = open_frame_store(args.data, progress=True)
    model_cfg = EmbedderConfig(feature_dim=store.feature_dim)
    cfg = TrainConfig(batch_size=args.batch_size, device=args.device)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(store), (args.batch_size * (args.steps + 2), 3))
    model = CowatchEmbedder(model_cfg).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type in ("cpu", "cuda"))  # as training
    print(
        f"{len(store)} videos, D = {store.feature_dim}, {store.frames.dtype}; "
        f"{args.batch_size} triplets a step, <= {cfg.max_frames} frames a video; {device}, "
        f"precision {cfg.precision}, "
        f"{torch.get_num_threads()} threads"
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # The reference: one batch already in memory (stored type, on the device), reused.
    plan_rng = np.random.default_rng(1)
    batch, plan = next(_triplet_plans(store, rows, cfg, plan_rng, None))
    frames, mask = (torch.from_numpy(a).to(device) for a in store.gather(plan))
    for i in range(args.steps + 2):
        if i == 2:
            sync()
            t0 = time.perf_counter()
        with autocast(cfg.precision, device):  # as training runs its steps
            loss = _triplet_loss(model, batch, frames, mask, cfg, device)
        _step(opt, loss, params, 1.0)
    sync()
    ref = args.steps / (time.perf_counter() - t0)
    print(f"in-memory batch: {ref:.2f} steps/s")
    for workers in args.workers:
        plans = _triplet_plans(store, rows, cfg, np.random.default_rng(2), None)
        loader = load_batches(store, plans, device, LoaderConfig(workers=workers))
        for i, (b, f, m) in enumerate(loader):
            if i == 2:
                sync()
                t0 = time.perf_counter()
            with autocast(cfg.precision, device):
                loss = _triplet_loss(model, b, f, m, cfg, device)
            _step(opt, loss, params, 1.0)
        sync()
        rate = args.steps / (time.perf_counter() - t0)
        print(f"loader, {workers} workers: {rate:.2f} steps/s, {rate / ref:.2f} of in-memory")


if __name__ == "__main__":
    main()
