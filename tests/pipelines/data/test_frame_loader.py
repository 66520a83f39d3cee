"""Worker processes gather the planned frames; the batches (and so training) do not
depend on how many workers there are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.data.frame_loader import LoaderConfig, load_batches
from recsys.frames import FrameStore


def _store() -> FrameStore:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, 50)
    frames = rng.integers(0, 256, (int(lengths.sum()), 5)).astype(np.uint8)
    return FrameStore(
        [f"v{i}" for i in range(50)], frames, np.concatenate([[0], np.cumsum(lengths)])
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_the_batches_of_the_training_process(workers: int) -> None:
    store = _store()

    def plans(seed: int):
        rng = np.random.default_rng(seed)
        for s in range(0, 50, 8):
            rows = np.arange(s, min(s + 8, 50))
            yield rows, store.plan(rows, 10, rng, 0.5)

    cpu = torch.device("cpu")
    inline = list(load_batches(store, plans(1), cpu, LoaderConfig(workers=0)))
    pooled = list(load_batches(store, plans(1), cpu, LoaderConfig(workers=workers, prefetch=1)))
    assert len(inline) == len(pooled) == 7
    for (k1, f1, m1), (k2, f2, m2) in zip(inline, pooled, strict=True):
        np.testing.assert_array_equal(k1, k2)
        assert f1.dtype == f2.dtype == torch.uint8
        assert torch.equal(f1, f2) and torch.equal(m1, m2)


def test_training_does_not_depend_on_the_workers(small_world_dir: Path) -> None:
    from embeddings.cowatch import EmbedderConfig
    from pipelines.data.frame_cache import open_frame_store
    from pipelines.training.cowatch_training import TrainConfig, train_embedder

    store = open_frame_store(small_world_dir)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(store), (96, 3))
    model_cfg = EmbedderConfig(
        feature_dim=store.feature_dim, num_clusters=4, hidden_dim=8, embedding_dim=4
    )
    weights = []
    for workers in (0, 1):
        cfg = TrainConfig(epochs=1, batch_size=32, loader=LoaderConfig(workers=workers))
        res = train_embedder(store, rows[:64], rows[64:], model_cfg, cfg, progress=False)
        weights.append(res.model.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
