from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings.cowatch import CowatchEmbedder, EmbedderConfig, triplet_loss


def test_triplet_loss_matches_eq15() -> None:
    rng = np.random.default_rng(0)
    a, p, n = (rng.normal(size=(5, 3)) for _ in range(3))
    margin = 0.3
    expect = np.mean(
        [
            max(np.sum((a[i] - p[i]) ** 2) - np.sum((a[i] - n[i]) ** 2) + margin, 0.0)
            for i in range(5)
        ]
    )
    got = triplet_loss(*(torch.tensor(x) for x in (a, p, n)), margin=margin)
    assert float(got) == pytest.approx(expect, abs=1e-12)
    # A satisfied triplet contributes zero.
    z = torch.zeros(1, 3, dtype=torch.float64)
    far = torch.tensor([[10.0, 0, 0]], dtype=torch.float64)
    assert float(triplet_loss(z, z, far, margin=1.0)) == 0.0


@pytest.mark.parametrize("pooling", ["avg", "netvlad", "dsgmm"])
def test_embedder_outputs_unit_vectors_and_trains(pooling: str) -> None:
    torch.manual_seed(0)
    cfg = EmbedderConfig(
        feature_dim=6, pooling=pooling, num_clusters=4, hidden_dim=16, embedding_dim=8
    )
    model = CowatchEmbedder(cfg)
    x = torch.randn(6, 5, 6)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, 3:] = False
    out = model(x, mask)
    assert out.shape == (6, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(6))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        e = model(x, mask)
        loss = triplet_loss(e[0:2], e[2:4], e[4:6], margin=0.5)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_config_round_trip_and_validation() -> None:
    cfg = EmbedderConfig(feature_dim=4, pooling="netvlad", gamma=0.5)
    assert EmbedderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown pooling"):
        EmbedderConfig(feature_dim=4, pooling="nope")
    with pytest.raises(ValueError, match="unknown embedder config keys"):
        EmbedderConfig.from_dict({"feature_dim": 4, "bogus": 1})
