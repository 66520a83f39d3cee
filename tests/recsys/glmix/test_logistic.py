"""Penalised logistic regression and the log-losses, against statsmodels and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.glmix.design import VideoDesign, VideoRows
from recsys.glmix.logistic import (
    fit_logistic,
    log_likelihood,
    logistic_sums,
    mean_log_loss,
    newton_logistic,
)
from recsys.glmix.random_effects import design_dot
from tests.recsys.reference import scipy_penalised as _scipy_penalised


def test_penalised_fit_matches_statsmodels_ridge() -> None:
    rng = np.random.default_rng(2)
    x = np.c_[np.ones(300), rng.normal(size=(300, 2))]
    y = (rng.random(300) < 0.4).astype(float)
    off = rng.normal(0, 0.5, 300)
    lam = 3.0
    ours = fit_logistic(x, y, offset=off, l2=lam)
    # statsmodels minimises -llf/n + alpha/2 |b|^2, i.e. alpha = lam / n; its elastic-net
    # solver stops early, so it agrees to ~1e-4. An exact optimiser pins it to 1e-7.
    ref = sm.GLM(y, x, family=sm.families.Binomial(), offset=off).fit_regularized(
        alpha=lam / 300, L1_wt=0.0, cnvrg_tol=1e-12, maxiter=1000
    )
    np.testing.assert_allclose(ours, ref.params, atol=2e-4)
    exact = _scipy_penalised(x, y, off, np.full(3, lam))
    np.testing.assert_allclose(ours, exact, atol=1e-7)


def test_sums_over_chunks_and_over_parts_equal_one_pass() -> None:
    """``logistic_sums`` is additive over rows: Newton over two halves' sums (what the
    Spark backend adds up across partitions) gives the one-pass fit."""
    rng = np.random.default_rng(3)
    x = np.c_[np.ones(500), rng.normal(size=(500, 3))].astype(np.float32)
    y = (rng.random(500) < 0.3).astype(float)
    off, w = rng.normal(0, 0.2, 500), np.ones(500)
    whole = fit_logistic(x, y, offset=off, l2=1.0)

    def halves(beta: np.ndarray, derivatives: bool) -> tuple[float, np.ndarray, np.ndarray]:
        a = logistic_sums(x[:200], y[:200], off[:200], w[:200], beta, derivatives, chunk_rows=7)
        b = logistic_sums(x[200:], y[200:], off[200:], w[200:], beta, derivatives)
        return a[0] + b[0], a[1] + b[1], a[2] + b[2]

    np.testing.assert_allclose(newton_logistic(halves, 4, 1.0), whole, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), p=st.integers(1, 6), chunk=st.integers(1, 50), seed=st.integers(0, 99))
def test_sums_are_the_direct_formulas(n: int, p: int, chunk: int, seed: int) -> None:
    """Log-likelihood, X^T w (y - mu) and X^T diag(w mu (1 - mu)) X against a direct
    float64 re-computation, with zero weights and chunk edges anywhere."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)).astype(np.float32)
    y = (rng.random(n) < 0.4).astype(float)
    off, beta = rng.normal(size=n), rng.normal(size=p)
    w = rng.random(n) * (rng.random(n) < 0.8)  # some rows weigh nothing
    ll, grad, curv = logistic_sums(x, y, off, w, beta, True, chunk_rows=chunk)
    xd = x.astype(np.float64)
    eta = off + xd @ beta
    mu = 1 / (1 + np.exp(-eta))
    assert ll == pytest.approx(float((w * (y * eta - np.logaddexp(0, eta))).sum()), rel=1e-12)
    np.testing.assert_allclose(grad, xd.T @ (w * (y - mu)), rtol=1e-10, atol=1e-12)
    # the curvature's chunks in float32 (only Newton's steps read it)
    want = (xd * (w * mu * (1 - mu))[:, None]).T @ xd
    scale = (np.abs(xd) * (w * mu * (1 - mu))[:, None]).T @ np.abs(xd)
    assert (np.abs(curv - want) <= 1e-5 * scale + 1e-12).all()
    np.testing.assert_array_equal(curv, curv.T)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    n_videos=st.integers(1, 12),
    e=st.integers(1, 5),
    g=st.integers(0, 3),
    chunk=st.integers(1, 70),
    seed=st.integers(0, 99),
)
def test_sums_of_a_design_by_reference_are_the_direct_formulas(
    n: int, n_videos: int, e: int, g: int, chunk: int, seed: int
) -> None:
    """A ``VideoDesign`` sums its video block per video first: log-likelihood, gradient,
    curvature and ``design_dot`` against the materialised rows [1, f(v_i), g_i] in
    float64, with unused table rows, repeated videos, zero weights and chunk edges."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(n_videos, e)).astype(np.float32)
    rows = rng.integers(0, n_videos, n)
    extra = rng.normal(size=(n, g)).astype(np.float32) if g else None
    design = VideoDesign(VideoRows(table, rows), extra, use_video=True)
    xd = np.c_[np.ones(n), table[rows], np.zeros((n, 0)) if extra is None else extra]
    xd = xd.astype(np.float64)
    y = (rng.random(n) < 0.4).astype(float)
    off, beta = rng.normal(size=n), rng.normal(size=xd.shape[1])
    w = rng.random(n) * (rng.random(n) < 0.8)
    ll, grad, curv = logistic_sums(design, y, off, w, beta, True, chunk_rows=chunk)
    eta = off + xd @ beta
    mu = 1 / (1 + np.exp(-eta))
    assert ll == pytest.approx(float((w * (y * eta - np.logaddexp(0, eta))).sum()), rel=1e-12)
    np.testing.assert_allclose(grad, xd.T @ (w * (y - mu)), rtol=1e-10, atol=1e-12)
    want = (xd * (w * mu * (1 - mu))[:, None]).T @ xd
    np.testing.assert_allclose(curv, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(curv, curv.T)
    assert logistic_sums(design, y, off, w, beta, False, chunk)[0] == pytest.approx(ll, rel=1e-12)
    np.testing.assert_allclose(design_dot(design, beta, chunk), xd @ beta, rtol=1e-12, atol=1e-12)


def test_a_float32_curvature_reaches_the_float64_optimum() -> None:
    """Newton steered by float32 chunk curvatures stops where the float64 gradient of the
    penalised objective vanishes: the same coefficients as a float64 curvature gives."""
    rng = np.random.default_rng(11)
    n, p = 20_000, 9
    x = np.c_[np.ones(n), rng.normal(size=(n, p - 1)) * 3].astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ rng.normal(size=p) * 0.5)))).astype(float)
    off, w = rng.normal(0, 0.3, n), rng.random(n) + 0.5

    def sums64(beta: np.ndarray, derivatives: bool) -> tuple[float, np.ndarray, np.ndarray]:
        xd = x.astype(np.float64)
        eta = off + xd @ beta
        mu = 1 / (1 + np.exp(-eta))
        ll = float((w * (y * eta - np.logaddexp(0, eta))).sum())
        return ll, xd.T @ (w * (y - mu)), (xd * (w * mu * (1 - mu))[:, None]).T @ xd

    def sums32(beta: np.ndarray, derivatives: bool) -> tuple[float, np.ndarray, np.ndarray]:
        return logistic_sums(x, y, off, w, beta, derivatives, chunk_rows=4096)

    want = newton_logistic(sums64, p, 0.5)
    got = newton_logistic(sums32, p, 0.5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    _, grad, _ = sums64(got, True)
    assert np.abs(grad - 0.5 * got).max() < 1e-6 * n


def test_negative_weights_are_refused() -> None:
    x = np.ones((3, 1))
    with pytest.raises(ValueError, match="weights"):
        fit_logistic(x, np.array([0.0, 1.0, 1.0]), weights=np.array([1.0, -1.0, 1.0]))


@settings(max_examples=50, deadline=None)
@given(
    eta=st.lists(st.floats(-700, 700), min_size=1, max_size=20),
    seed=st.integers(0, 10),
)
def test_log_likelihood_is_stable_and_matches_the_definition(eta: list[float], seed: int) -> None:
    e = np.asarray(eta)
    y = np.random.default_rng(seed).integers(0, 2, len(e)).astype(float)
    got = log_likelihood(e, y)
    assert np.isfinite(got).all() and (got <= 0).all()
    small = np.abs(e) < 10  # where the naive formula loses < 1e-11 to cancellation
    p = 1 / (1 + np.exp(-e[small]))
    want = y[small] * np.log(p) + (1 - y[small]) * np.log(1 - p)
    np.testing.assert_allclose(got[small], want, rtol=1e-9, atol=1e-12)
    # Far out, log(1 + e^-|eta|) < 1e-13: the likelihood is 0 when right, -|eta| when wrong.
    big = np.abs(e) >= 30
    wrong = np.where(y == 1, e < 0, e > 0)
    np.testing.assert_allclose(got[big], np.where(wrong, -np.abs(e), 0.0)[big], atol=1e-12)


def test_mean_log_loss_clips_and_matches_a_direct_computation() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.9, 0.2, 0.6, 0.5])
    want = -np.mean(np.log([0.9, 0.8, 0.6, 0.5]))
    assert mean_log_loss(y, p) == pytest.approx(want)
    # certain and wrong: clipped at 1e-12, finite
    assert mean_log_loss(np.array([1.0]), np.array([0.0])) == pytest.approx(-np.log(1e-12))
