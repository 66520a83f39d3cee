"""The registries: every pooling layer and every rung declared once and found by name;
each registered entry keeps the promises its declaration makes, so a new one is checked
by these tests as soon as it is declared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings import POOLINGS, RUNGS, build_pooling, fit_gmm, pooling_class, rung
from embeddings.classical import ClassicalBase
from embeddings.cowatch import EmbedderConfig
from embeddings.registry import Registry
from embeddings.ubm_start import UBMStart
from recsys.baselines import PCA, baseline_features, kmeans_codebook
from recsys.embedders import ClassicalEmbedder


def test_the_declared_names_in_order() -> None:
    assert POOLINGS.names() == (
        "avg",
        "vlad",
        "sgmm",
        "netvlad",
        "dsgmm",
        "netrvlad",
        "netfv",
        "netbow",
    )
    assert RUNGS.names() == ("avg_frames", "bow_tfidf", "vlad_kmeans")


def test_unknown_names_and_double_declarations_are_refused() -> None:
    choices = ", ".join(POOLINGS.names())
    with pytest.raises(ValueError, match=f"unknown pooling 'bogus'; choose one of {choices}$"):
        POOLINGS["bogus"]
    with pytest.raises(ValueError, match="unknown rung 'tfidf'"):
        rung("tfidf")
    with pytest.raises(ValueError, match="unknown pooling"):
        EmbedderConfig(pooling="bogus")
    reg: Registry[type] = Registry("thing")

    class A:
        name = "a"

    class Nameless:
        pass

    reg.register(A)
    with pytest.raises(ValueError, match="declared twice"):
        reg.register(A)
    with pytest.raises(ValueError, match="needs a name"):
        reg.register(Nameless)
    assert "a" in reg and list(reg) == ["a"]


@pytest.mark.parametrize("name", POOLINGS.names())
def test_each_layer_keeps_its_declaration(name: str) -> None:
    """Its class is what build_pooling builds; a layer that says it needs a UBM refuses to
    run without one; one that offers occupancy gives shares that sum to 1 over clusters;
    one without clusters is not started from a UBM."""
    cls = pooling_class(name)
    layer = build_pooling(name, 4, 3)
    assert type(layer) is cls and layer.name == name
    frames = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    if cls.needs_ubm:
        with pytest.raises(RuntimeError, match="needs a UBM"):
            layer(frames, mask)
        sample = torch.randn(200, 4)
        layer.from_ubm(fit_gmm(lambda: [sample], 3, "diag", seed=0).gmm)
    assert layer(frames, mask).shape == (2, layer.out_dim)
    if cls.offers_occupancy:
        _, share = layer.pool_with_occupancy(frames, mask)  # type: ignore[attr-defined]
        torch.testing.assert_close(share.sum(1), torch.ones(2))
    assert UBMStart(enabled=False).applies_to(name) == cls.needs_ubm
    assert UBMStart(enabled=True).applies_to(name) == (cls.needs_ubm or cls.has_clusters)
    assert EmbedderConfig(pooling=name, occupancy=False).pooling == name
    if not cls.offers_occupancy:
        with pytest.raises(ValueError, match="occupancy needs a cluster pooling"):
            EmbedderConfig(pooling=name, occupancy=True)


def _flat(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    lengths = (3, 1, 0, 6, 2)
    videos = [rng.normal(size=(n, 4)).astype(np.float32) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.concatenate(videos), offsets, videos


@pytest.mark.parametrize("name", RUNGS.names())
def test_each_rung_gives_the_same_rows_flat_and_batched(name: str) -> None:
    """``rows`` (the catalogue's numpy path) and ``batch`` (the model's torch path, padded,
    one-frame and empty videos included) agree, at the size ``raw_dim`` states; the
    embedder and the model's fixed layer built from it agree too."""
    frames, offsets, videos = _flat()
    r = rung(name)
    codebook = kmeans_codebook(frames, 3, seed=0) if r.uses_words else None
    flat, idf = r.catalogue_rows([(slice(0, len(videos)), frames, offsets)], codebook)
    assert (flat is None) == (not r.uses_idf) and (idf is None) == (not r.uses_idf)
    if flat is None:
        flat = r.rows(frames, offsets, codebook, idf)
    assert flat.shape == (len(videos), r.raw_dim(4, 3))
    np.testing.assert_allclose(baseline_features(name, frames, offsets, 3), flat, atol=1e-6)
    t = max(len(v) for v in videos)
    padded = torch.zeros(len(videos), t, 4)
    mask = torch.zeros(len(videos), t)
    for i, v in enumerate(videos):
        padded[i, : len(v)] = torch.from_numpy(v)
        mask[i, : len(v)] = 1
    cb = torch.zeros(3, 4) if codebook is None else torch.from_numpy(codebook).float()
    w = torch.zeros(3) if idf is None else torch.from_numpy(idf).float()
    got = r.batch(padded, mask, cb, w).numpy()
    np.testing.assert_allclose(got, flat, atol=1e-5)
    pca = PCA.fit(flat, 2)
    emb = ClassicalEmbedder(name, pca, codebook, idf)
    base = ClassicalBase(name, 4, 3, pca.dim).load_arrays(
        torch.from_numpy(pca.mean).float(),
        torch.from_numpy(pca.components).float(),
        cb if codebook is not None else None,
        w if idf is not None else None,
    )
    np.testing.assert_allclose(
        base(padded, mask.bool()).numpy()[[0, 1, 3, 4]],
        emb.embed_videos(frames, offsets)[[0, 1, 3, 4]],
        atol=1e-4,
    )
