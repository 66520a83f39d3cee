"""The fixed rung layer a co-watch model starts from: the same rows as the ladder's
embedder (``recsys.embedders.ClassicalEmbedder``), on padded batches; and the model with a
base: its output, its split, and the base part staying fixed while training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from embeddings.classical import ClassicalBase, base_raw_dim
from embeddings.cowatch import CowatchEmbedder, EmbedderConfig, triplet_loss
from embeddings.rungs import idf_weights, mean_frames, tfidf, vlad_kmeans, word_counts
from pipelines.training.starting_point import load_base, with_base
from recsys.baselines import PCA, kmeans_codebook
from recsys.embedders import ClassicalEmbedder

D, K = 6, 5


def _videos(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [1, 7, 3, 12, 5, 9, 2, 4]
    return [rng.normal(size=(n, D)).astype(np.float32) for n in lengths]


def _flat(videos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(videos), np.cumsum([0] + [len(v) for v in videos])


def _embedder(name: str, videos: list[np.ndarray], dim: int = 4) -> ClassicalEmbedder:
    frames, offsets = _flat(videos)
    codebook = kmeans_codebook(frames, K, seed=0) if name != "avg_frames" else None
    idf = idf_weights(word_counts(frames, offsets, codebook)) if name == "bow_tfidf" else None
    if name == "avg_frames":
        raw = mean_frames(frames, offsets)
    elif name == "bow_tfidf":
        raw = tfidf(word_counts(frames, offsets, codebook), idf)
    else:
        raw = vlad_kmeans(frames, offsets, codebook)
    return ClassicalEmbedder(name, PCA.fit(raw, dim), codebook, idf)


def _padded(videos: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(v) for v in videos) + 2  # padding past the longest video too
    x = torch.randn(len(videos), t, D) * 50  # garbage in the padding must not count
    mask = torch.zeros(len(videos), t, dtype=torch.bool)
    for i, v in enumerate(videos):
        x[i, : len(v)] = torch.from_numpy(v)
        mask[i, : len(v)] = True
    return x, mask


def _base(emb: ClassicalEmbedder) -> ClassicalBase:
    words = 1 if emb.codebook is None else len(emb.codebook)
    layer = ClassicalBase(emb.name, D, words, emb.embedding_dim)

    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.asarray(a))

    mean, comps = t(emb.pca.mean), t(emb.pca.components)
    assert mean is not None and comps is not None
    return layer.load_arrays(mean, comps, t(emb.codebook), t(emb.idf))


@pytest.mark.parametrize("name", ["avg_frames", "bow_tfidf", "vlad_kmeans"])
def test_the_layer_gives_the_ladders_rows_on_padded_batches(name: str) -> None:
    videos = _videos()
    emb = _embedder(name, videos)
    want = emb.embed_videos(*_flat(videos))
    got = _base(emb)(*_padded(videos)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_video_without_frames_is_a_zero_row_and_no_mask_means_all_frames() -> None:
    videos = _videos()
    emb = _embedder("bow_tfidf", videos)
    layer = _base(emb)
    x, mask = _padded(videos)
    mask[2] = False
    out = layer(x, mask)
    assert torch.isfinite(out).all()
    raw = layer.raw(x, mask)
    assert float(raw[2].abs().sum()) == 0.0
    full = torch.from_numpy(videos[3])[None]
    np.testing.assert_allclose(layer(full).numpy()[0], emb.embed(videos[3]), atol=2e-5)


def test_raw_sizes_and_bad_shapes() -> None:
    assert base_raw_dim("vlad_kmeans", D, K) == K * D
    with pytest.raises(ValueError, match="unknown rung"):
        base_raw_dim("tfidf", D, K)
    layer = ClassicalBase("avg_frames", D, 1, 3)
    with pytest.raises(ValueError, match="shape"):
        layer.load_arrays(torch.zeros(D + 1), torch.zeros(3, D))


def _model(emb: ClassicalEmbedder, weight: float = 0.5) -> CowatchEmbedder:
    cfg = EmbedderConfig(pooling="dsgmm", feature_dim=D, num_clusters=3, embedding_dim=8)
    cfg = replace(with_base(cfg, emb), base_weight=weight)
    torch.manual_seed(0)
    model = CowatchEmbedder(cfg)
    load_base(model, emb)
    return model.eval()


def test_a_model_with_a_base_is_the_rung_beside_the_learned_row() -> None:
    videos = _videos()
    emb = _embedder("bow_tfidf", videos)
    model = _model(emb, weight=0.25)
    x, mask = _padded(videos)
    with torch.no_grad():
        out = model(x, mask)
    assert out.shape == (len(videos), model.config.output_dim) == (len(videos), 4 + 8)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    base, learned = model.split(out)
    np.testing.assert_allclose(base.numpy(), emb.embed_videos(*_flat(videos)), atol=2e-5)
    np.testing.assert_allclose(learned.norm(dim=1).numpy(), 1.0, atol=1e-5)
    # A cosine is w times the rung's plus (1 - w) times the learned one's.
    cos = out @ out.T
    np.testing.assert_allclose(
        cos.numpy(), (0.25 * base @ base.T + 0.75 * learned @ learned.T).numpy(), atol=1e-5
    )
    again = model.combine(base, learned, 0.25)
    np.testing.assert_allclose(again.numpy(), out.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="0 < base_weight < 1"):
        _model(emb, weight=1.0).split(out)


def test_training_moves_the_learned_part_and_never_the_base() -> None:
    videos = _videos()
    emb = _embedder("vlad_kmeans", videos)
    model = _model(emb).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, mask = _padded(videos)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(x[:6], mask[:6])
    loss = triplet_loss(out[:2], out[2:4], out[4:6], margin=1.0)
    loss.backward()
    opt.step()
    after = model.state_dict()
    for key in before:
        if key.startswith("base."):
            assert torch.equal(before[key], after[key]), key
    moved = [
        k for k in before if k.startswith("projector") and not torch.equal(before[k], after[k])
    ]
    assert moved


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="unknown rung"):
        EmbedderConfig(feature_dim=D, base="tfidf", base_dim=4)
    with pytest.raises(ValueError, match="base_dim"):
        EmbedderConfig(feature_dim=D, base="bow_tfidf")
    with pytest.raises(ValueError, match="base_weight"):
        EmbedderConfig(feature_dim=D, base="bow_tfidf", base_dim=4, base_weight=1.5)
    assert EmbedderConfig(feature_dim=D).output_dim == 64


def test_a_reduced_output_is_the_pca_of_the_full_one_and_survives_a_reload() -> None:
    videos = _videos()
    emb = _embedder("avg_frames", videos)
    model = _model(emb)
    x, mask = _padded(videos)
    with torch.no_grad():
        full = model(x, mask)
    mean = full.mean(0)
    comps = torch.linalg.svd(full - mean, full_matrices=False).Vh[:3]
    model.set_reduction(mean, comps)
    assert model.config.reduced_dim == 3 and model.config.output_dim == 3
    assert model.config.full_dim == full.shape[1]
    with torch.no_grad():
        got = model(x, mask)
    want = torch.nn.functional.normalize((full - mean) @ comps.T, dim=-1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    again = CowatchEmbedder(model.config)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        np.testing.assert_allclose(again.eval()(x, mask).numpy(), got.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="cannot be split"):
        model.split(got)
    with pytest.raises(ValueError, match="reduction"):
        model.set_reduction(mean[:-1], comps[:, :-1])
    # Without a reduction the state dict has no reduction buffers (older artifacts load).
    assert not any(k.startswith("reduce_") for k in _model(emb).state_dict())
