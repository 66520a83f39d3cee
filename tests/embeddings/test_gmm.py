from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings.gmm import GMM, fit_gmm, kmeans
from tests.embeddings import reference as ref


def _planted(seed: int = 0, k: int = 4, d: int = 3, per: int = 400):
    rng = np.random.default_rng(seed)
    centres = np.eye(k, d) * 12.0 + rng.normal(0, 0.5, (k, d))
    x = np.concatenate([c + rng.normal(0, 1.0, (per, d)) for c in centres])
    return centres, rng.permutation(x)


@pytest.mark.parametrize("cov", ["diag", "spherical", "shared_full"])
def test_em_recovers_planted_clusters_and_is_monotone(cov: str) -> None:
    centres, x = _planted()
    batches = lambda: (x[i : i + 256] for i in range(0, len(x), 256))  # noqa: E731
    seen: list[float] = []
    res = fit_gmm(
        batches, 4, cov, max_iter=30, tol=1e-8, seed=0, on_iteration=lambda i, ll: seen.append(ll)
    )
    ll = np.array(res.log_likelihood)
    assert seen == res.log_likelihood and len(ll) >= 2
    assert np.all(np.diff(ll) >= -1e-9), ll
    est = res.gmm.means.numpy()
    # Every planted centre has an estimated mean within 0.3.
    dist = np.linalg.norm(centres[:, None] - est[None], axis=-1)
    assert dist.min(1).max() < 0.3
    np.testing.assert_allclose(res.gmm.weights.numpy(), 0.25, atol=0.02)
    var = res.gmm.diagonal_variances().numpy()
    np.testing.assert_allclose(var, 1.0, atol=0.25)
    assert res.num_frames == len(x)


def test_log_joint_matches_direct_density() -> None:
    rng = np.random.default_rng(1)
    k, d = 3, 2
    w = np.array([0.2, 0.3, 0.5])
    mu = rng.normal(size=(k, d))
    x = rng.normal(size=(5, d))
    a = rng.normal(size=(d, d))
    full = a @ a.T + np.eye(d)
    diag = rng.uniform(0.5, 2.0, (k, d))
    sph = rng.uniform(0.5, 2.0, (k, 1))
    cases = [
        (GMM(torch.tensor(w), torch.tensor(mu), torch.tensor(full), "shared_full"), [full] * k),
        (
            GMM(torch.tensor(w), torch.tensor(mu), torch.tensor(diag), "diag"),
            [np.diag(v) for v in diag],
        ),
        (
            GMM(torch.tensor(w), torch.tensor(mu), torch.tensor(sph), "spherical"),
            [np.eye(d) * s for s in sph[:, 0]],
        ),
    ]
    for gmm, covs in cases:
        lj = gmm.log_joint(torch.tensor(x)).numpy()
        for i in range(len(x)):
            for j in range(k):
                assert lj[i, j] == pytest.approx(
                    np.log(w[j] * ref.gaussian_pdf(x[i], mu[j], covs[j])), abs=1e-10
                )
        np.testing.assert_allclose(
            gmm.posteriors(torch.tensor(x)).numpy(), ref.posteriors(x, w, mu, covs), atol=1e-12
        )


def test_variance_floor_keeps_degenerate_data_stable() -> None:
    # All frames identical in one dimension: the variance would collapse to 0 without a floor.
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(300, 1)), np.zeros((300, 1))], axis=1)
    res = fit_gmm(lambda: [x], 2, "diag", var_floor=1e-3, max_iter=10)
    assert torch.isfinite(res.gmm.covariance).all()
    assert float(res.gmm.covariance.min()) >= 1e-3 - 1e-12
    assert np.all(np.isfinite(res.log_likelihood))


def test_more_clusters_than_distinct_points() -> None:
    x = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 50, axis=0)
    res = fit_gmm(lambda: [x], 4, "spherical", max_iter=5)
    assert torch.isfinite(res.gmm.means).all() and torch.isfinite(res.gmm.weights).all()
    assert float(res.gmm.weights.sum()) == pytest.approx(1.0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="covariance_type"):
        fit_gmm(lambda: [np.zeros((4, 2))], 2, "full")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_gmm(lambda: [np.array([[np.nan, 0.0], [1.0, 1.0]])], 1)
    with pytest.raises(ValueError, match="at least one frame"):
        fit_gmm(lambda: [], 1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit_gmm(lambda: [np.zeros(3)], 1)
    with pytest.raises(ValueError, match="GMM shapes"):
        GMM(torch.ones(2) / 2, torch.zeros(2, 3), torch.ones(2, 2), "diag")


def test_kmeans_finds_separated_centres() -> None:
    centres, x = _planted(seed=4)
    c = kmeans(torch.tensor(x), 4, iters=20, seed=1).numpy()
    dist = np.linalg.norm(centres[:, None] - c[None], axis=-1)
    assert dist.min(1).max() < 0.3


def test_kmeans_a_block_of_rows_at_a_time_is_the_same_kmeans(monkeypatch) -> None:
    """Distances computed over row blocks (bounded temporaries) give the same centres."""
    import embeddings.gmm as gmm

    x = torch.randn(3000, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = gmm.kmeans(x, 6, iters=5, seed=3)
    monkeypatch.setattr(gmm, "_KMEANS_BLOCK_VALUES", 7 * 128)  # 128 rows a block
    assert len(gmm._row_blocks(x)) == 24
    torch.testing.assert_close(gmm.kmeans(x, 6, iters=5, seed=3), whole, rtol=0, atol=1e-12)
