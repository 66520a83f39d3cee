"""Validation losses from a table of embeddings, and forward passes in chunks, equal the
direct per-batch computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pipelines.training.cowatch_embedding as ce
from embeddings.cowatch import CowatchEmbedder, EmbedderConfig
from pipelines.data.frame_cache import open_frame_store
from pipelines.training.cowatch_data import CowatchPartners
from pipelines.training.cowatch_training import TrainConfig, _triplet_loss, _triplet_plans


@pytest.fixture
def setup(small_world_dir: Path):  # type: ignore[no-untyped-def]
    store = open_frame_store(small_world_dir)
    torch.manual_seed(0)
    model = CowatchEmbedder(
        EmbedderConfig(feature_dim=store.feature_dim, num_clusters=4, hidden_dim=8, embedding_dim=4)
    ).eval()
    rows = np.random.default_rng(0).integers(0, len(store), (70, 3))
    return store, model, rows


@pytest.mark.parametrize("neighbours", [0, 2])
def test_the_table_loss_is_the_per_batch_loss(setup, neighbours: int) -> None:  # type: ignore[no-untyped-def]
    store, model, rows = setup
    cpu = torch.device("cpu")
    partners = CowatchPartners.from_triplets(rows, len(store)) if neighbours else None
    cfg = TrainConfig(batch_size=16, eval_max_frames=20, anchor_neighbours=neighbours)
    total = 0.0
    with torch.no_grad():
        for batch, plan in _triplet_plans(store, rows, cfg, None, partners):
            frames, mask = store.gather(plan)
            loss = _triplet_loss(
                model, batch, torch.from_numpy(frames), torch.from_numpy(mask), cfg, cpu
            )
            total += float(loss) * len(batch)
    got = ce.evaluate_loss(
        model, store, rows, cpu, batch_size=16, max_frames=20, margin=cfg.margin,
        partners=partners, anchor_neighbours=neighbours,
    )  # fmt: skip
    assert got == pytest.approx(total / len(rows), rel=1e-5)


def test_chunked_forward_passes_equal_one_pass(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    store, model, _ = setup
    whole = ce.embed_store(model, store, max_frames=30)
    monkeypatch.setattr(ce, "EVAL_CHUNK_VALUES", 50)  # a video or two per pass
    np.testing.assert_allclose(ce.embed_store(model, store, max_frames=30), whole, atol=1e-5)
    some = np.array([5, 1, 9, 1])
    table = ce._embed_rows(model, store, some, 30, torch.device("cpu"), None)
    np.testing.assert_allclose(table.numpy(), whole[some], atol=1e-5)
