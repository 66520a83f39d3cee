"""The batched online refit (``recsys.online.refit``) against the one-user reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.online.refit import bucket, refit_effects
from recsys.online.users import refit_effect


def _problem(rng: np.random.Generator, n: int, q: int) -> tuple[np.ndarray, ...]:
    z = np.hstack([np.ones((n, 1)), rng.normal(size=(n, q - 1)) / 3])
    y = (rng.random(n) < 0.3).astype(float)
    off = rng.normal(size=n)
    mean = rng.normal(size=q) * 0.2
    lam = rng.uniform(0.5, 5.0, size=q)
    return z, y, off, mean, lam


def _solve(problems: list[tuple[np.ndarray, ...]], steps: int = 20) -> np.ndarray:
    return refit_effects(
        [p[0] for p in problems],
        [p[1] for p in problems],
        [p[2] for p in problems],
        np.array([p[3] for p in problems]),
        np.array([p[4] for p in problems]),
        steps,
    )


# Windows shorter than q take the dual (Woodbury) form, longer ones the primal.
@pytest.mark.parametrize("n", [1, 2, 3, 7, 11, 12, 13, 16, 17, 40])
def test_batched_refit_is_the_reference_map(n: int) -> None:
    rng = np.random.default_rng(n)
    p = _problem(rng, n, q=12)
    want = refit_effect(*p[:4], p[4], p[3], 50)
    np.testing.assert_allclose(_solve([p], 50)[0], want, atol=1e-10)


def test_edge_cases_no_rows_and_extreme_priors() -> None:
    rng = np.random.default_rng(0)
    q = 5
    z, _, off, mean, _ = _problem(rng, 4, q)
    empty = (np.zeros((0, q)), np.zeros(0), np.zeros(0), mean, np.ones(q))
    stuck = (z, np.ones(4), off, mean, np.full(q, 1e12))
    free = (z, np.ones(4), off, mean, np.full(q, 1e-3))
    got = _solve([empty, stuck, free])
    np.testing.assert_array_equal(got[0], mean)
    np.testing.assert_allclose(got[1], mean, atol=1e-9)
    np.testing.assert_allclose(got[2], refit_effect(*free[:4], free[4], mean, 20), atol=1e-8)
    assert (z @ got[2]).mean() > (z @ mean).mean() + 1.0  # the data moved it


def test_buckets_are_powers_of_two_then_multiples_of_eight() -> None:
    sizes = (1, 2, 3, 4, 5, 16, 17, 50, 64, 65, 200)
    assert [bucket(n) for n in sizes] == [1, 2, 4, 4, 8, 16, 24, 56, 64, 72, 200]
    assert all(bucket(n) >= n for n in range(1, 300))


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 70), min_size=1, max_size=8),
    pick=st.integers(0, 7),
    seed=st.integers(0, 2**16),
)
def test_a_users_effect_does_not_depend_on_the_batch(
    sizes: list[int], pick: int, seed: int
) -> None:
    """Replicas batch users differently: one user's bits are the same alone and in any
    batch (the same window, whoever shares the bucket)."""
    rng = np.random.default_rng(seed)
    problems = [_problem(rng, n, q=33) for n in sizes]
    i = pick % len(problems)
    together = _solve(problems)[i]
    alone = _solve([problems[i]])[0]
    assert together.tobytes() == alone.tobytes()


@pytest.mark.parametrize("n", [1, 3, 8, 11])
def test_the_dual_form_finds_the_primal_forms_effect(n: int) -> None:
    """Windows shorter than q run Newton on a in R^L (b = m + D^-1 Z^T a); the same
    bucket solved in the primal form lands on the same effect, padding rows included."""
    from recsys.online.refit import RIDGE, _Bucket, _DualWork, _Work

    rng = np.random.default_rng(10 + n)
    q, length = 12, bucket(n) + 1  # one padding row at least
    z, y, off, mean, lam = _problem(rng, n, q)
    pad = length - n
    zb = np.concatenate([z, np.zeros((pad, q))])[None]
    yb, ob = np.concatenate([y, np.zeros(pad)])[None], np.concatenate([off, np.zeros(pad)])[None]
    mask = np.concatenate([np.ones(n), np.zeros(pad)])[None]
    bucket_ = _Bucket(zb, yb, ob, mask, mean[None], (lam + RIDGE)[None])
    for work in (
        _Work(bucket_),
        _DualWork.start(bucket_),
    ):
        for _ in range(50):
            if work.gradient_bound()[0] < 1e-13:
                break
            taken, moved = work.line_search(work.newton_step())
            if not taken[0] or moved[0] < 1e-13:
                break
        got = work.effects(slice(None))[0]
        np.testing.assert_allclose(got, refit_effect(z, y, off, mean, lam, mean, 50), atol=1e-10)


def test_spd_solve_is_a_solve_and_falls_back_to_lu() -> None:
    """Cholesky where a matrix is positive definite, LU where it is not (an indefinite
    symmetric matrix), each matrix alone (the same bits in any company)."""
    from recsys.online.refit import spd_solve

    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 9, 9))
    m = a @ a.transpose(0, 2, 1) + np.eye(9)
    m[2] = np.diag(np.r_[np.ones(8), -2.0])  # symmetric, not positive definite
    rhs = rng.normal(size=(5, 9))
    got = spd_solve(m, rhs)
    np.testing.assert_allclose(np.einsum("bij,bj->bi", m, got), rhs, atol=1e-10)
    assert got[2, -1] == pytest.approx(-rhs[2, -1] / 2)
    assert spd_solve(m[3:4], rhs[3:4]).tobytes() == got[3:4].tobytes()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**16), spread=st.floats(0.0, 4.0))
def test_the_gradient_bounds_the_newton_step(n: int, seed: int, spread: float) -> None:
    """Where a user stops before a solve: the bound from g^T D^-1 g is at least the max
    norm of the Newton step H^-1 g it replaces, at any point (not only near the
    maximum), in both forms; the dual's g^T D^-1 g = v^T K v is the primal's."""
    from recsys.online.refit import RIDGE, _Bucket, _DualWork, _Work

    rng = np.random.default_rng(seed)
    q = 12
    z, y, off, mean, _ = _problem(rng, n, q)
    lam = 10.0 ** rng.uniform(-spread, spread, size=q)  # precisions over orders of magnitude
    one = _Bucket(z[None], y[None], off[None], np.ones((1, n)), mean[None], (lam + RIDGE)[None])
    dual = _DualWork.start(one)
    dual.a[:] = rng.normal(size=(1, n))  # a point away from the maximum
    dual.k_a[:] = (dual.kern @ dual.a[:, :, None])[:, :, 0]
    beta = dual.effects(slice(None))
    primal = _Work(one, beta.copy())
    bound = primal.gradient_bound()[0]
    assert dual.gradient_bound()[0] == pytest.approx(bound, rel=1e-6)
    w, grad = primal.residual  # type: ignore[misc]
    hess = z.T @ (z * w[0][:, None]) + np.diag(lam + RIDGE)
    step = np.linalg.solve(hess, grad[0])
    assert np.abs(step).max() <= bound * (1 + 1e-9)
    np.testing.assert_allclose(primal.newton_step()[0], step, rtol=1e-8, atol=1e-12)


def test_sigmoid_in_place_has_the_bits_of_the_expression() -> None:
    """The scoring path's sigmoid into its own logits equals the allocating one, bit for
    bit, from the extremes to zero of either sign."""
    from recsys.online.refit import sigmoid

    eta = np.concatenate(
        [np.random.default_rng(0).normal(0, 8, 2000), [0.0, -0.0, 1e-300, -750.0, 750.0, 40.0]]
    )
    want = sigmoid(eta)
    got = eta.copy()
    assert sigmoid(got, out=got) is got and np.array_equal(got, want)
    assert want[-2] == 1.0 and want[-3] == 0.0 and np.all((want >= 0) & (want <= 1))
