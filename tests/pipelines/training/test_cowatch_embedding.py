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
        for key, plan in _triplet_plans(store, rows, cfg, None, partners):
            frames, mask = store.gather(plan)
            loss = _triplet_loss(
                model, key, torch.from_numpy(frames), torch.from_numpy(mask), cfg, cpu
            )
            total += float(loss) * len(key.triplets)
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


def _with_base(store, name: str = "vlad_kmeans"):  # type: ignore[no-untyped-def]
    """A small model over ``store`` with a fixed ``name`` base of random arrays."""
    d, words, dim = store.feature_dim, 6, 5
    torch.manual_seed(1)
    model = CowatchEmbedder(
        EmbedderConfig(
            feature_dim=d, num_clusters=4, hidden_dim=8, embedding_dim=4,
            base=name, base_words=words, base_dim=dim, base_weight=0.4,
        )
    ).eval()  # fmt: skip
    assert model.base is not None
    raw = model.base.pca_mean.shape[0]
    model.base.load_arrays(
        torch.randn(raw) * 0.1,
        torch.linalg.qr(torch.randn(raw, dim))[0].T.contiguous(),
        torch.randn(words, d),
        torch.rand(words) + 0.5,
    )
    return model


@pytest.mark.parametrize("name", ["vlad_kmeans", "bow_tfidf"])
def test_base_rows_are_the_base_on_the_frames_the_catalogue_embedding_uses(
    small_world_dir: Path, name: str
) -> None:
    store = open_frame_store(small_world_dir)
    model = _with_base(store, name)
    videos = np.array([7, 3, 7, 150, 0, 3])
    base = ce.base_rows(model, store, videos, 12, torch.device("cpu"))
    assert base is not None and list(base.videos) == [0, 3, 7, 150]
    for v in (150, 3, 0):
        frames, mask = store.gather(store.plan(np.array([v]), 12, None))
        with torch.no_grad():
            want = model.base(torch.from_numpy(frames).float(), torch.from_numpy(mask))  # type: ignore[misc]
        np.testing.assert_allclose(base.take(np.array([v])).numpy(), want.numpy(), atol=1e-6)
    np.testing.assert_array_equal(base.take(videos)[0].numpy(), base.take(videos)[2].numpy())
    with pytest.raises(KeyError):
        base.take(np.array([3, 4]))
    with pytest.raises(KeyError):
        base.take(np.array([151]))


def test_the_validation_loss_is_the_same_with_the_base_rows(small_world_dir: Path) -> None:
    """``_embed_rows`` sorts videos by length: the rows it takes must follow them."""
    store = open_frame_store(small_world_dir)
    model = _with_base(store)
    rows = np.random.default_rng(2).integers(0, len(store), (50, 3))
    cpu = torch.device("cpu")
    base = ce.base_rows(model, store, rows.reshape(-1), 20, cpu)
    kw = {"batch_size": 8, "max_frames": 20, "margin": 0.2}
    without = ce.evaluate_loss(model, store, rows, cpu, **kw)  # type: ignore[arg-type]
    with_rows = ce.evaluate_loss(model, store, rows, cpu, base=base, **kw)  # type: ignore[arg-type]
    assert with_rows == pytest.approx(without, abs=1e-6)
    whole = ce._embed_rows(model, store, np.unique(rows), 20, cpu, None)
    given = ce._embed_rows(model, store, np.unique(rows), 20, cpu, None, base=base)
    np.testing.assert_allclose(given.numpy(), whole.numpy(), atol=1e-6)


def test_a_training_step_takes_the_whole_videos_base_and_learns_on_its_sample(
    small_world_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.training.cowatch_training as ct

    store = open_frame_store(small_world_dir)
    model = _with_base(store)
    rows = np.random.default_rng(3).integers(0, len(store), (12, 3))
    cpu = torch.device("cpu")
    base = ce.base_rows(model, store, rows.reshape(-1), 300, cpu)
    assert base is not None
    cfg = TrainConfig(batch_size=12, max_frames=4)
    ((key, plan),) = list(_triplet_plans(store, rows, cfg, np.random.default_rng(0), None))
    np.testing.assert_array_equal(key.videos, rows.T.reshape(-1))
    frames, mask = (torch.from_numpy(a) for a in store.gather(plan))
    seen = []
    real = ct.embed_frames

    def spy(*args):  # type: ignore[no-untyped-def]
        out = real(*args)
        seen.append(out)
        return out

    monkeypatch.setattr(ct, "embed_frames", spy)
    model.train()
    with torch.no_grad():
        _triplet_loss(model, key, frames, mask, cfg, cpu, base)
        (emb,) = seen
        b_part, learned = model.split(emb)
        np.testing.assert_allclose(b_part.numpy(), base.take(key.videos).numpy(), atol=1e-6)
        sampled = model(frames.float(), mask)  # the base on the sampled frames instead
        same_learned = model.split(sampled)[1]
        np.testing.assert_allclose(learned.numpy(), same_learned.numpy(), atol=1e-6)
        assert not np.allclose(model.split(sampled)[0].numpy(), b_part.numpy(), atol=1e-3)


@pytest.mark.parametrize("name", ["vlad_kmeans", "bow_tfidf"])
def test_a_steps_base_reads_its_frames_words_found_once(small_world_dir: Path, name: str) -> None:
    """Each frame's word found once (across chunk edges) is the word the step's base finds
    on the sampled batch, and the step's loss is the same with them as without."""
    from embeddings.rungs import nearest_words
    from recsys.frames import frames_tensor

    store = open_frame_store(small_world_dir)
    model = _with_base(store, name)
    cpu = torch.device("cpu")
    words = ce.frame_words(model, store, cpu, chunk=37)
    assert words is not None and len(words.words) == len(store.frames)
    assert ce.frame_words(_with_base(store, "avg_frames"), store, cpu) is None
    rows = np.random.default_rng(4).integers(0, len(store), (10, 3))
    cfg = TrainConfig(batch_size=10, max_frames=6)
    plans = _triplet_plans(store, rows, cfg, np.random.default_rng(0), None, words)
    ((key, plan),) = list(plans)
    frames, mask = (torch.from_numpy(a) for a in store.gather(plan))
    assert model.base is not None and key.words is not None
    found = nearest_words(frames_tensor(frames, cpu, mask), model.base.codebook)
    real = mask.bool()
    np.testing.assert_array_equal(key.words[real].numpy(), found[real].numpy())
    model.train()
    with torch.no_grad():
        given = _triplet_loss(model, key, frames, mask, cfg, cpu)
        itself = _triplet_loss(model, key._replace(words=None), frames, mask, cfg, cpu)
    assert float(given) == float(itself)
