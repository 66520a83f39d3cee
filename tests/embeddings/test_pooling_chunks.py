"""The inference path of the cluster layers (a few videos at a time, in place, padding
left as it is when it is zeros) against the whole-batch path with gradients, to 1e-5."""

from __future__ import annotations

import pytest
import torch

import embeddings.aggregation as aggregation
import embeddings.pooling as pooling
from embeddings import build_pooling

D, K = 16, 8


def _inputs(
    seed: int, b: int = 7, t: int = 5, garbage: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, D, generator=g)
    lengths = torch.tensor([t, 1, 3, t, 2, 1, 4][:b])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return x.masked_fill(~mask[..., None], garbage), mask


#: every layer with the shared aggregation, and option sets covering its modes and norms
LAYERS = ["vlad", "sgmm", "netvlad", "dsgmm", "netrvlad"]
OPTIONS = [
    {"gamma": 0.125},
    {"gamma": 0.0},
    {"gamma": 4.0, "intra_norm": False},
    {"gamma": 0.125, "final_norm": True},
    {"intra_norm": False, "final_norm": True},
]


def _layer(name: str, opts: dict) -> torch.nn.Module:
    """The layer, seeded, its UBM fitted when it needs one."""
    torch.manual_seed(0)
    layer = build_pooling(name, D, K, **opts)
    if layer.needs_ubm:
        from embeddings.gmm import fit_gmm

        data = torch.randn(200, D)
        layer.from_ubm(fit_gmm(lambda: [data], K, max_iter=3).gmm.to(dtype=torch.float32))
    return layer


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("garbage", [0.0, float("nan"), 1e3])
def test_chunked_inference_equals_the_whole_batch_with_gradients(
    name: str, opts: dict, garbage: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _layer(name, opts)
    x, mask = _inputs(1, garbage=garbage)
    whole = layer(x.clone().requires_grad_(True), mask).detach()  # the autograd path
    for chunk_bytes in (1, 2 * K * D * 4):  # one video a chunk, two
        monkeypatch.setattr(aggregation, "CHUNK_BYTES", chunk_bytes)
        with torch.no_grad():
            fast = layer(x, mask)
        torch.testing.assert_close(fast, whole, atol=1e-5, rtol=1e-5)
        assert torch.isfinite(fast).all()
    one = x[:, :1]  # every video one frame
    with torch.no_grad():
        fast = layer(one)
    torch.testing.assert_close(
        fast, layer(one.clone().requires_grad_(True)).detach(), atol=1e-5, rtol=1e-5
    )


def test_chunks_under_bf16_autocast_take_the_products_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregation, "CHUNK_BYTES", 1)
    layer = build_pooling("dsgmm", D, K)
    x, mask = _inputs(2)
    with torch.no_grad():
        ref = layer(x, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = layer(x, mask)
    assert torch.nn.functional.cosine_similarity(low.float(), ref).min() > 0.99


def test_padding_that_is_zeros_is_not_copied() -> None:
    """The cheap path is taken only where it changes nothing: zero padding."""
    x, mask = _inputs(3)
    p = torch.rand(*x.shape[:2], K)
    frames, post = pooling._apply_mask(x, p, mask)
    assert frames is x and bool((post[~mask] == 0).all())
    y, _ = _inputs(3, garbage=float("nan"))
    frames, _ = pooling._apply_mask(y, p, mask)
    assert frames is not y and bool((frames[~mask] == 0).all())


def _loss_and_grads(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None, w):
    xg = x.clone().requires_grad_(True)
    out = layer(xg, mask)
    (out * w).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad(set_to_none=True)
    return out.detach(), xg.grad, grads


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("opts", [*OPTIONS, {"assignment": "diagonal", "gamma": 1e4}])
@pytest.mark.parametrize("garbage", [0.0, float("nan")])
def test_chunked_training_equals_the_whole_batch(
    name: str, opts: dict, garbage: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tail run a few videos at a time forwards and backwards (``_ClusterTail``): the
    output and every gradient (frames, assignment, centres) equal to the whole-batch
    autograd path to 1e-5; padding, one-frame videos, gamma 0 and large included."""
    layer = _layer(name, opts)
    x, mask = _inputs(1, garbage=garbage)
    w = torch.randn(x.shape[0], layer.out_dim)
    for frames, m in ((x, mask), (x[:, :1].nan_to_num(0.0), None)):
        monkeypatch.setattr(aggregation, "CHUNK_BYTES", 1 << 62)  # the whole batch at once
        want = _loss_and_grads(layer, frames, m, w)
        for chunk_bytes in (1, 2 * K * D * 4):  # one video a chunk, two
            monkeypatch.setattr(aggregation, "CHUNK_BYTES", chunk_bytes)
            got = _loss_and_grads(layer, frames, m, w)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
            grad_x = torch.where(torch.isfinite(want[1]), want[1], 0.0)
            torch.testing.assert_close(got[1].nan_to_num(0.0), grad_x, atol=1e-5, rtol=1e-4)
            assert got[2].keys() == want[2].keys()
            for key in want[2]:
                torch.testing.assert_close(
                    got[2][key], want[2][key], atol=1e-5, rtol=1e-4, equal_nan=True
                )


def test_chunked_training_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autocast the chunked tail takes the products' type both ways, and its
    gradients agree with the whole-batch path's to bfloat16's precision."""
    torch.manual_seed(0)
    layer = build_pooling("dsgmm", D, K)
    x, mask = _inputs(2)
    w = torch.randn(x.shape[0], layer.out_dim)
    runs = []
    for chunk_bytes in (1 << 62, 1):
        monkeypatch.setattr(aggregation, "CHUNK_BYTES", chunk_bytes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(_loss_and_grads(layer, x, mask, w))
    (out_a, gx_a, ga), (out_b, gx_b, gb) = runs
    assert out_a.dtype == out_b.dtype
    cos = torch.nn.functional.cosine_similarity
    assert cos(out_a.float(), out_b.float()).min() > 0.999
    assert cos(gx_a.flatten(), gx_b.flatten(), dim=0) > 0.99
    for key in ga:
        assert cos(ga[key].flatten(), gb[key].flatten(), dim=0) > 0.99, key


@pytest.mark.parametrize("name", ["netvlad", "dsgmm"])
def test_frames_cast_once_under_autocast_change_nothing(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoupled layer under autocast casts its frames once instead of in each
    product: the output and the parameters' gradients are the same bits."""
    torch.manual_seed(0)
    layer = build_pooling(name, D, K)
    x, mask = _inputs(4)
    w = torch.randn(x.shape[0], layer.out_dim)
    runs = []
    for cast_once in (True, False):
        if not cast_once:
            monkeypatch.setattr(pooling, "_autocast_once", lambda frames, assignment: frames)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _, grads = _loss_and_grads(layer, x, mask, w)
        runs.append((out, grads))
    (out_a, ga), (out_b, gb) = runs
    assert torch.equal(out_a, out_b)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    monkeypatch.undo()
    coupled = build_pooling(name, D, K, assignment="diagonal")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pooling._autocast_once(x, layer.assignment).dtype == torch.bfloat16
        assert pooling._autocast_once(x, coupled.assignment).dtype == torch.float32
    assert pooling._autocast_once(x, layer.assignment).dtype == torch.float32
