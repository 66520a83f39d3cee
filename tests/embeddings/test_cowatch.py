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


def _semi_hard_reference(a, p, c, allowed, margin):
    losses = []
    for i in range(len(a)):
        d_pos = np.sum((a[i] - p[i]) ** 2)
        d = [np.sum((a[i] - c[j]) ** 2) for j in range(len(c)) if allowed[i, j]]
        if not d:
            continue
        farther = [x for x in d if x > d_pos]
        d_neg = min(farther) if farther else max(d)
        losses.append(max(d_pos - d_neg + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_hard_loss_matches_loop(seed: int) -> None:
    from embeddings.cowatch import semi_hard_triplet_loss

    rng = np.random.default_rng(seed)
    a, p = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    c = rng.normal(size=(9, 3))
    allowed = rng.random((6, 9)) < 0.5
    allowed[0] = False  # an anchor without candidates is left out
    got = semi_hard_triplet_loss(*(torch.tensor(x) for x in (a, p, c)), torch.tensor(allowed), 0.5)
    assert float(got) == pytest.approx(_semi_hard_reference(a, p, c, allowed, 0.5), abs=1e-10)
    none = torch.zeros(6, 9, dtype=torch.bool)
    t = torch.tensor(a, requires_grad=True)
    zero = semi_hard_triplet_loss(t, torch.tensor(p), torch.tensor(c), none)
    assert float(zero.detach()) == 0.0
    zero.backward()  # still differentiable
    with pytest.raises(ValueError, match="allowed"):
        semi_hard_triplet_loss(t, torch.tensor(p), torch.tensor(c), none[:, :3])


def test_occupancy_input_matches_posterior_counts() -> None:
    torch.manual_seed(0)
    cfg = EmbedderConfig(feature_dim=5, pooling="dsgmm", num_clusters=3, occupancy=True)
    model = CowatchEmbedder(cfg).eval()
    x = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    g = model.pooled(x, mask)
    assert g.shape == (2, 3 * 5 + 3)
    post = torch.softmax(model.pooling.assignment.logits(x[0, :3]), dim=-1)  # type: ignore[union-attr, operator]
    share = post.sum(0) / 3
    torch.testing.assert_close(g[0, 15:], torch.sqrt(share * 3 + 1e-6))
    # A video without frames: zero occupancy (the floor only), finite everywhere.
    torch.testing.assert_close(g[1, 15:], torch.full((3,), 1e-3))
    assert torch.isfinite(model(x, mask)).all()
    with pytest.raises(ValueError, match="occupancy"):
        EmbedderConfig(feature_dim=5, pooling="avg", occupancy=True)


def test_output_centring_subtracts_the_mean_and_renormalises() -> None:
    torch.manual_seed(1)
    model = CowatchEmbedder(EmbedderConfig(feature_dim=4, pooling="avg", embedding_dim=3)).eval()
    x = torch.randn(10, 2, 4)
    with torch.no_grad():
        raw = model(x)
        model.set_output_mean(raw)
        centred = model(x)
    want = torch.nn.functional.normalize(raw - raw.mean(0), dim=-1)
    torch.testing.assert_close(centred, want, atol=1e-6, rtol=1e-5)
    # Centring spreads the space: the mean pairwise cosine drops to about -1/(N-1).
    assert float((centred @ centred.T).mean()) < float((raw @ raw.T).mean())
    with pytest.raises(ValueError):
        model.set_output_mean(torch.zeros(2, 5))


@pytest.mark.parametrize("opts", [{}, {"occupancy": True}, {"pooling": "netvlad"}])
def test_bf16_inference_copy_keeps_directions_and_float32_io(opts: dict) -> None:
    torch.manual_seed(0)
    model = CowatchEmbedder(EmbedderConfig(feature_dim=16, num_clusters=4, **opts)).eval()
    assert model.for_inference(torch.float32) is model
    low = model.for_inference(torch.bfloat16)
    assert low is not model and next(model.pooling.parameters()).dtype == torch.float32
    x = torch.randn(5, 7, 16)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 1, 3, 7, 2])[:, None]
    with torch.no_grad():
        want, got = model(x, mask), low(x, mask)
    assert got.dtype == torch.float32 and x.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99
    assert torch.allclose(got.norm(dim=1), torch.ones(5), atol=1e-5)
