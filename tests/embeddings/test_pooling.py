from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings import ASSIGNMENTS, GMM, POOLINGS, build_pooling
from embeddings.pooling import DSGMM, GMMAssignment, NetVLAD, PoolingConfig
from tests.embeddings import reference as ref

K, D = 3, 4


def _ubm(cov: str = "shared_full", seed: int = 0) -> GMM:
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(K) * 3)
    mu = rng.normal(size=(K, D))
    if cov == "shared_full":
        a = rng.normal(size=(D, D))
        c = a @ a.T / D + np.eye(D)
    elif cov == "diag":
        c = rng.uniform(0.5, 2.0, (K, D))
    else:
        c = rng.uniform(0.5, 2.0, (K, 1))
    return GMM(torch.tensor(w), torch.tensor(mu), torch.tensor(c), cov)  # type: ignore[arg-type]


def _covs(ubm: GMM) -> list[np.ndarray]:
    if ubm.covariance_type == "shared_full":
        return [ubm.covariance.numpy()] * K
    return [np.diag(v) for v in ubm.diagonal_variances().numpy()]


def _frames(seed: int = 1, b: int = 2, t: int = 5) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(size=(b, t, D)))


def _layer(name: str, **opts) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = build_pooling(name, D, K, **opts).double()
    if name in ("vlad", "sgmm"):
        layer.from_ubm(_ubm())
    return layer


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("cov", ["shared_full", "diag", "spherical"])
def test_vlad_over_ubm_is_eq13_with_eq2_posteriors(cov: str) -> None:
    ubm = _ubm(cov)
    layer = build_pooling("vlad", D, K, intra_norm=False).double().from_ubm(ubm)
    x = _frames()
    out = layer(x).detach().numpy().reshape(2, K, D)
    for b in range(2):
        p = ref.posteriors(x[b].numpy(), ubm.weights.numpy(), ubm.means.numpy(), _covs(ubm))
        np.testing.assert_allclose(out[b], ref.vlad(x[b].numpy(), p, ubm.means.numpy()), atol=1e-10)


@pytest.mark.parametrize("gamma", [0.0, 0.125, 2.0])
@pytest.mark.parametrize("intra", [False, True])
def test_sgmm_over_ubm_is_eq10(gamma: float, intra: bool) -> None:
    ubm = _ubm("diag")
    layer = build_pooling("sgmm", D, K, gamma=gamma, intra_norm=intra).double().from_ubm(ubm)
    x = _frames(2)
    out = layer(x).detach().numpy().reshape(2, K, D)
    for b in range(2):
        p = ref.posteriors(x[b].numpy(), ubm.weights.numpy(), ubm.means.numpy(), _covs(ubm))
        expect = ref.sgmm_means(x[b].numpy(), p, ubm.means.numpy(), gamma)
        np.testing.assert_allclose(out[b], ref.l2n(expect) if intra else expect, atol=1e-10)


def test_sgmm_gamma_limits() -> None:
    ubm = _ubm("diag")
    x = _frames(3)
    ml = (
        build_pooling("sgmm", D, K, gamma=0.0, intra_norm=False)
        .double()
        .from_ubm(ubm)(x)
        .reshape(2, K, D)
    )
    for b in range(2):
        p = ref.posteriors(x[b].numpy(), ubm.weights.numpy(), ubm.means.numpy(), _covs(ubm))
        n, sx, _ = ref.stats(x[b].numpy(), p)
        np.testing.assert_allclose(ml[b].numpy(), sx / n[:, None], atol=1e-10)
    inf = (
        build_pooling("sgmm", D, K, gamma=1e12, intra_norm=False)
        .double()
        .from_ubm(ubm)(x)
        .reshape(2, K, D)
    )
    np.testing.assert_allclose(
        inf.numpy(), np.broadcast_to(ubm.means.numpy(), (2, K, D)), atol=1e-9
    )


def _layer_posteriors(layer, x: torch.Tensor) -> np.ndarray:
    """Eq. 2 / Eq. 14 recomputed with numpy from the layer's own parameters."""
    a = layer.assignment
    if isinstance(a, GMMAssignment):
        w = a.weights.detach().numpy()
        var = a.variances.detach().numpy()
        mu = layer.centres.detach().numpy()
        return np.stack([ref.posteriors(xb, w, mu, [np.diag(v) for v in var]) for xb in x.numpy()])
    u, bias = a.weight.detach().numpy(), a.bias.detach().numpy()
    z = x.numpy() @ u.T + bias
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_dsgmm_equals_smoothed_means(assignment: str) -> None:
    gamma = 0.5
    layer = _layer("dsgmm", gamma=gamma, intra_norm=False, assignment=assignment)
    with torch.no_grad():  # move off the symmetric init so every variant is exercised
        for prm in layer.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    x = _frames(4)
    out = layer(x).detach().numpy().reshape(2, K, D)
    p = _layer_posteriors(layer, x)
    mu = layer.centres.detach().numpy()
    for b in range(2):
        _, sx, _ = ref.stats(x[b].numpy(), p[b])
        n = p[b].sum(0)
        np.testing.assert_allclose(out[b], (sx + gamma * mu) / (n + gamma)[:, None], atol=1e-10)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_netvlad_equals_residuals(assignment: str) -> None:
    layer = _layer("netvlad", intra_norm=False, assignment=assignment)
    with torch.no_grad():
        for prm in layer.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    x = _frames(5)
    out = layer(x).detach().numpy().reshape(2, K, D)
    p = _layer_posteriors(layer, x)
    for b in range(2):
        np.testing.assert_allclose(
            out[b], ref.vlad(x[b].numpy(), p[b], layer.centres.detach().numpy()), atol=1e-10
        )


def test_decoupled_from_shared_covariance_ubm_equals_ubm_posterior() -> None:
    ubm = _ubm("shared_full")
    layer = build_pooling("dsgmm", D, K).double().from_ubm(ubm)
    x = _frames(6)
    got = layer.posteriors(x).detach().numpy()
    for b in range(2):
        expect = ref.posteriors(x[b].numpy(), ubm.weights.numpy(), ubm.means.numpy(), _covs(ubm))
        np.testing.assert_allclose(got[b], expect, atol=1e-10)
    np.testing.assert_allclose(layer.centres.detach().numpy(), ubm.means.numpy())


@pytest.mark.parametrize(
    "assignment", ["diagonal", "spherical", "shared_diagonal", "shared_spherical"]
)
def test_coupled_from_ubm_reproduces_its_posteriors(assignment: str) -> None:
    # A UBM whose covariance fits the variant exactly: posteriors must match Eq. 2.
    ubm = _ubm("diag")
    var = ubm.covariance
    if assignment == "spherical":
        var = var.mean(1, keepdim=True).expand(K, D)
    elif assignment == "shared_diagonal":
        var = var[:1].expand(K, D)
    elif assignment == "shared_spherical":
        var = torch.full((K, D), 1.3, dtype=torch.float64)
    ubm = GMM(ubm.weights, ubm.means, var.contiguous(), "diag")
    layer = build_pooling("netvlad", D, K, assignment=assignment).double().from_ubm(ubm)
    x = _frames(7)
    got = layer.posteriors(x).detach().numpy()
    for b in range(2):
        expect = ref.posteriors(x[b].numpy(), ubm.weights.numpy(), ubm.means.numpy(), _covs(ubm))
        np.testing.assert_allclose(got[b], expect, atol=1e-10)


def test_uniform_priors_has_fixed_uniform_weights() -> None:
    layer = _layer("dsgmm", assignment="uniform_priors")
    names = {n for n, _ in layer.named_parameters()}
    assert "assignment.weight_logits" not in names
    assert "assignment.log_sigma" in names and layer.assignment.log_sigma.shape == (1, 1)
    torch.testing.assert_close(
        layer.assignment.weights, torch.full((K,), 1 / K, dtype=torch.float64)
    )


def test_parameter_counts_follow_section_4_1_7() -> None:
    # Decoupled: 2KD + K for the clustering; only Diagonal matches it.
    def count(assignment: str) -> int:
        return sum(
            p.numel() for p in build_pooling("dsgmm", D, K, assignment=assignment).parameters()
        )

    assert count("decoupled") == 2 * K * D + K
    assert count("diagonal") == 2 * K * D + K
    assert count("uniform_priors") == K * D + 1
    assert count("shared_spherical") == K * D + K + 1
    assert count("spherical") == K * D + 2 * K
    assert count("shared_diagonal") == K * D + K + D


def test_netrvlad_netfv_netbow_match_loops() -> None:
    x = _frames(8)
    rv = _layer("netrvlad", intra_norm=False)
    p = _layer_posteriors(rv, x)
    out = rv(x).detach().numpy().reshape(2, K, D)
    for b in range(2):
        np.testing.assert_allclose(out[b], ref.stats(x[b].numpy(), p[b])[1], atol=1e-10)

    fv = _layer("netfv", intra_norm=False)
    with torch.no_grad():
        fv.log_sigma.add_(0.2 * torch.randn_like(fv.log_sigma))
    p = _layer_posteriors(fv, x)
    out = fv(x).detach().numpy().reshape(2, 2, K, D)
    c, sig = fv.centres.detach().numpy(), np.exp(fv.log_sigma.detach().numpy())
    for b in range(2):
        fv1 = np.zeros((K, D))
        fv2 = np.zeros((K, D))
        for k in range(K):
            for t in range(x.shape[1]):
                r = (x[b, t].numpy() - c[k]) / sig[k]
                fv1[k] += p[b, t, k] * r
                fv2[k] += p[b, t, k] * (r * r - 1.0)
        np.testing.assert_allclose(out[b, 0], fv1, atol=1e-10)
        np.testing.assert_allclose(out[b, 1], fv2, atol=1e-10)

    bow = _layer("netbow")
    p = _layer_posteriors(bow, x)
    np.testing.assert_allclose(bow(x).detach().numpy(), p.sum(1) / x.shape[1], atol=1e-12)


def test_average_pooling_masked_mean() -> None:
    x = _frames(9, t=4)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = _layer("avg")(x, mask)
    np.testing.assert_allclose(out[0].numpy(), x[0, :2].numpy().mean(0))
    np.testing.assert_allclose(out[1].numpy(), x[1].numpy().mean(0))


@pytest.mark.parametrize("name", ["vlad", "sgmm", "netvlad", "dsgmm", "netrvlad", "netfv"])
def test_norms(name: str) -> None:
    x = _frames(10)
    both = _layer(name, intra_norm=True, final_norm=True)(x).detach()
    assert torch.allclose(both.norm(dim=1), torch.ones(2, dtype=torch.float64))
    intra = _layer(name, intra_norm=True, final_norm=False)(x).detach()
    blocks = intra.reshape(2, -1, D).norm(dim=-1)
    assert torch.allclose(blocks, torch.ones_like(blocks))


def test_inplace_inference_equals_autograd_path() -> None:
    x = _frames(11)
    for opts in ({"gamma": 0.5}, {"gamma": 0.0}, {"intra_norm": False, "final_norm": True}):
        layer = _layer("dsgmm", **opts)
        with torch.no_grad():
            fast = layer(x)
        slow = layer(x.clone().requires_grad_(True))
        torch.testing.assert_close(fast, slow.detach())


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("name", POOLINGS.names())
def test_out_dim_and_single_frame(name: str) -> None:
    layer = _layer(name)
    x = _frames(12, t=1)
    out = layer(x)
    assert out.shape == (2, layer.out_dim)
    assert torch.isfinite(out).all()


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(POOLINGS.names()),
    seed=st.integers(0, 10_000),
    t=st.integers(1, 7),
    pad=st.integers(0, 4),
    garbage=st.sampled_from([0.0, 1e3, float("nan")]),
)
def test_permutation_and_padding_invariance(
    name: str, seed: int, t: int, pad: int, garbage: float
) -> None:
    layer = _layer(name)
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(size=(1, t, D)))
    base = layer(x).detach()
    perm = layer(x[:, torch.tensor(rng.permutation(t))]).detach()
    torch.testing.assert_close(perm, base, atol=1e-10, rtol=1e-9)
    padded = torch.cat([x, torch.full((1, pad, D), garbage, dtype=torch.float64)], dim=1)
    mask = torch.tensor([[True] * t + [False] * pad])
    torch.testing.assert_close(layer(padded, mask).detach(), base, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize(
    "name", ["vlad", "sgmm", "netvlad", "dsgmm", "netrvlad", "netfv", "netbow", "avg"]
)
@pytest.mark.parametrize("gamma", [0.0, 0.125])
def test_empty_video_and_empty_clusters_are_finite_with_finite_gradients(
    name: str, gamma: float
) -> None:
    layer = _layer(name, gamma=gamma, intra_norm=True, final_norm=True)
    x = _frames(13, t=3).requires_grad_(True)
    mask = torch.tensor([[False, False, False], [True, False, False]])  # empty video; one frame
    out = layer(x, mask)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for prm in [x, *layer.parameters()]:
        assert prm.grad is None or torch.isfinite(prm.grad).all()


def test_hard_assignment_leaves_clusters_without_mass() -> None:
    # Far-apart centres with sharp assignment: most clusters get ~0 mass.
    layer = _layer("dsgmm", gamma=0.0, assignment="diagonal")
    with torch.no_grad():
        layer.centres.mul_(100.0)
        layer.assignment.log_sigma.fill_(-3.0)
    x = _frames(14).requires_grad_(True)
    out = layer(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@pytest.mark.parametrize("assignment", ASSIGNMENTS[1:])
def test_coupled_variants_stay_valid_after_optimizer_steps(assignment: str) -> None:
    torch.manual_seed(0)
    layer = build_pooling("dsgmm", D, K, assignment=assignment).double()
    opt = torch.optim.SGD(layer.parameters(), lr=5.0)  # deliberately large steps
    x = _frames(15, b=4, t=6)
    for _ in range(20):
        opt.zero_grad()
        loss = -(layer(x) ** 2).sum() + layer(x).sum()
        loss.backward()
        opt.step()
        w = layer.assignment.weights.detach()
        var = layer.assignment.variances.detach()
        assert torch.isfinite(w).all() and (w > 0).all() and abs(float(w.sum()) - 1) < 1e-9
        assert torch.isfinite(var).all() and (var > 0).all()


# --------------------------------------------------------------------------- errors and factory


def test_bad_shapes_get_clear_errors() -> None:
    layer = _layer("dsgmm")
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        layer(torch.zeros(3, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="expects D = 4"):
        layer(torch.zeros(1, 2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="mask must be"):
        layer(torch.zeros(1, 2, D, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool))


def test_factory_errors_and_defaults() -> None:
    with pytest.raises(ValueError, match="unknown pooling 'bogus'"):
        build_pooling("bogus", D, K)
    with pytest.raises(TypeError, match="unknown pooling option"):
        build_pooling("dsgmm", D, K, gama=1.0)
    with pytest.raises(ValueError, match="assignment must be one of"):
        build_pooling("dsgmm", D, K, assignment="full")
    with pytest.raises(ValueError, match="gamma must be"):
        build_pooling("dsgmm", D, K, gamma=-1.0)
    with pytest.raises(RuntimeError, match="needs a UBM"):
        build_pooling("vlad", D, K)(torch.zeros(1, 2, D))
    layer = build_pooling("dsgmm", D, K)
    assert isinstance(layer, DSGMM)
    assert layer.config == PoolingConfig(
        feature_dim=D, num_clusters=K, gamma=0.125, intra_norm=True, final_norm=False
    )
    assert isinstance(build_pooling("netvlad", D, K), NetVLAD)
    with pytest.raises(ValueError, match="UBM has shape"):
        build_pooling("dsgmm", D, K + 1, ubm=_ubm())


@pytest.mark.parametrize("cov", ["shared_full", "diag"])
def test_state_dict_round_trip_with_weights_only(tmp_path, cov: str) -> None:
    layer = build_pooling("sgmm", D, K).double().from_ubm(_ubm(cov))
    path = tmp_path / "w.pt"
    torch.save(layer.state_dict(), path)
    fresh = build_pooling("sgmm", D, K).double()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = _frames(16)
    torch.testing.assert_close(fresh(x), layer(x))


@pytest.mark.parametrize(("env", "want"), [("", "True"), ("1", "False")])
def test_allocator_setting_applies_on_import_unless_opted_out(env: str, want: str) -> None:
    import os
    import subprocess
    import sys

    code = "import embeddings, embeddings.runtime as r; print(r._configured)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "RECSYS_KEEP_MALLOC": env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == want
