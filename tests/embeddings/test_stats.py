from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings.gmm import GMM
from embeddings.stats import relevance, smoothed_gmm, smoothed_means, sufficient_statistics, vlad
from tests.embeddings import reference as ref


def _setup(seed: int = 0, t: int = 6, k: int = 3, d: int = 2):
    rng = np.random.default_rng(seed)
    frames = rng.normal(size=(t, d))
    p = rng.dirichlet(np.ones(k), size=t)
    mu = rng.normal(size=(k, d))
    return frames, p, mu


def _st(frames, p, second="none", mask=None):
    return sufficient_statistics(
        torch.tensor(frames)[None],
        torch.tensor(p)[None],
        None if mask is None else torch.tensor(mask)[None],
        second,
    )


def test_sufficient_statistics_match_loops() -> None:
    frames, p, _ = _setup()
    n, sx, sxx = ref.stats(frames, p)
    full = _st(frames, p, "full")
    diag = _st(frames, p, "diag")
    np.testing.assert_allclose(full.n[0].numpy(), n, atol=1e-12)
    np.testing.assert_allclose(full.sx[0].numpy(), sx, atol=1e-12)
    np.testing.assert_allclose(full.sxx[0].numpy(), sxx, atol=1e-12)
    np.testing.assert_allclose(diag.sxx[0].numpy(), np.diagonal(sxx, axis1=1, axis2=2), atol=1e-12)


def test_mask_removes_padded_frames_even_non_finite() -> None:
    frames, p, _ = _setup()
    padded = np.concatenate([frames, np.full((3, 2), np.nan)])
    pp = np.concatenate([p, np.full((3, 3), 1 / 3)])
    mask = np.array([True] * 6 + [False] * 3)
    a, b = _st(frames, p, "diag"), _st(padded, pp, "diag", mask)
    for x, y in ((a.n, b.n), (a.sx, b.sx), (a.sxx, b.sxx)):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("gamma", [0.0, 0.125, 1.0, 7.5])
def test_smoothed_means_match_eq10(gamma: float) -> None:
    frames, p, mu = _setup(1)
    got = smoothed_means(_st(frames, p), torch.tensor(mu), gamma)[0].numpy()
    np.testing.assert_allclose(got, ref.sgmm_means(frames, p, mu, gamma), atol=1e-12)


def test_gamma_zero_gives_ml_means_and_infinite_gives_ubm() -> None:
    frames, p, mu = _setup(2)
    st = _st(frames, p)
    n, sx, _ = ref.stats(frames, p)
    np.testing.assert_allclose(
        smoothed_means(st, torch.tensor(mu), 0.0)[0].numpy(), sx / n[:, None], atol=1e-12
    )
    np.testing.assert_allclose(smoothed_means(st, torch.tensor(mu), 1e12)[0].numpy(), mu, atol=1e-9)


def test_cluster_without_frames_keeps_ubm_mean_and_finite_gradient() -> None:
    frames, p, mu = _setup(3)
    p[:, 2] = 0.0
    p /= p.sum(1, keepdims=True)
    for gamma in (0.0, 0.5):
        x = torch.tensor(frames, requires_grad=True)
        post = torch.tensor(p, requires_grad=True)
        m = torch.tensor(mu, requires_grad=True)
        out = smoothed_means(sufficient_statistics(x[None], post[None]), m, gamma)
        np.testing.assert_allclose(out[0, 2].detach().numpy(), mu[2], atol=1e-12)
        out.sum().backward()
        for g in (x.grad, post.grad, m.grad):
            assert g is not None and torch.isfinite(g).all()


def test_vlad_matches_residual_sum() -> None:
    frames, p, mu = _setup(4)
    got = vlad(_st(frames, p), torch.tensor(mu))[0].numpy()
    np.testing.assert_allclose(got, ref.vlad(frames, p, mu), atol=1e-12)


def test_relevance_edges() -> None:
    n = torch.tensor([0.0, 1.0, 3.0])
    assert relevance(n, 0.0).tolist() == [0.0, 1.0, 1.0]
    torch.testing.assert_close(relevance(n, 1.0), torch.tensor([0.0, 0.5, 0.75]))
    with pytest.raises(ValueError):
        relevance(n, -1.0)


@pytest.mark.parametrize("second", ["diag", "full"])
def test_smoothed_gmm_matches_eq9_to_11(second: str) -> None:
    frames, p, mu = _setup(5, t=5, k=3, d=2)
    p[:, 1] = 0.0  # a cluster with no frames
    p /= p.sum(1, keepdims=True)
    rng = np.random.default_rng(5)
    w = np.array([0.5, 0.3, 0.2])
    var = rng.uniform(0.5, 2, (3, 2))
    ubm = GMM(torch.tensor(w), torch.tensor(mu), torch.tensor(var), "diag")
    gw, gm, gs = 0.7, 0.25, 2.0
    got = smoothed_gmm(_st(frames, p, second), ubm, gamma_w=gw, gamma_mu=gm, gamma_sigma=gs)
    n, sx, sxx = ref.stats(frames, p)
    raw_w = np.array(
        [n[k] / (n[k] + gw) * n[k] / n.sum() + (1 - n[k] / (n[k] + gw)) * w[k] for k in range(3)]
    )
    np.testing.assert_allclose(got.weights[0].numpy(), raw_w / raw_w.sum(), atol=1e-12)
    for k in range(3):
        lm, ls = (n[k] / (n[k] + g) for g in (gm, gs))
        ml_mean = sx[k] / n[k] if n[k] > 0 else 0
        mean_k = lm * ml_mean + (1 - lm) * mu[k]
        np.testing.assert_allclose(got.means[0, k].numpy(), mean_k, atol=1e-12)
        ml_sxx = sxx[k] / n[k] if n[k] > 0 else 0
        cov_k = (
            ls * ml_sxx
            + (1 - ls) * (np.outer(mu[k], mu[k]) + np.diag(var[k]))
            - np.outer(mean_k, mean_k)
        )
        expect = cov_k if second == "full" else np.diag(cov_k)
        np.testing.assert_allclose(got.covariances[0, k].numpy(), expect, atol=1e-12)
    assert got.weights.sum().item() == pytest.approx(1.0)
    # The empty cluster is exactly the UBM's.
    np.testing.assert_allclose(got.means[0, 1].numpy(), mu[1], atol=1e-12)
    if second == "diag":
        np.testing.assert_allclose(got.covariances[0, 1].numpy(), var[1], atol=1e-12)


def test_smoothed_gmm_single_gamma_and_errors() -> None:
    frames, p, mu = _setup(6)
    ubm = GMM(
        torch.ones(3, dtype=torch.float64) / 3,
        torch.tensor(mu),
        torch.ones(3, 2, dtype=torch.float64),
        "diag",
    )
    a = smoothed_gmm(_st(frames, p, "diag"), ubm, gamma=0.5)
    b = smoothed_gmm(_st(frames, p, "diag"), ubm, gamma_w=0.5, gamma_mu=0.5, gamma_sigma=0.5)
    torch.testing.assert_close(a.covariances, b.covariances)
    with pytest.raises(ValueError, match="second-order"):
        smoothed_gmm(_st(frames, p), ubm, gamma=0.5)
    with pytest.raises(ValueError, match="give gamma"):
        smoothed_gmm(_st(frames, p, "diag"), ubm)
