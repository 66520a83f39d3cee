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
            taken, moved = work.line_search(work.newton_step())
            if not taken[0] or np.abs(moved).max() < 1e-12:
                break
        got = work.effects(slice(None))[0]
        np.testing.assert_allclose(got, refit_effect(z, y, off, mean, lam, mean, 50), atol=1e-10)
