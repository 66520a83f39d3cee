"""The one coordinate-descent loop: what it asks of a backend, and the local backend."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.glmix.config import GLMixConfig, fixed_prior
from recsys.glmix.coordinate_descent import LocalBackend, coordinate_descent, fixed_design
from recsys.glmix.logistic import fit_logistic, logistic_sums
from recsys.glmix.model import fit_glmix


class _NoRandomEffects:
    """A backend whose users have no effects: the loop must reduce to one logistic fit."""

    coordinates = ("user",)

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.passes: list[tuple[np.ndarray, int]] = []

    def fixed_sums(
        self, beta: np.ndarray, derivatives: bool
    ) -> tuple[float, np.ndarray, np.ndarray]:
        return logistic_sums(self.x, self.y, np.zeros(len(self.y)), np.ones(len(self.y)), beta)

    def random_pass(self, coordinate: str, fixed: np.ndarray, steps: int) -> float:
        self.passes.append((fixed.copy(), steps))
        eta = self.x @ fixed
        return float(np.mean(self.y * eta - np.logaddexp(0.0, eta)))


def test_the_loop_with_no_random_effects_is_one_logistic_fit() -> None:
    rng = np.random.default_rng(0)
    x = np.c_[np.ones(300), rng.normal(size=(300, 2))]
    y = (rng.random(300) < 1 / (1 + np.exp(-(x @ [0.2, 1.0, -1.0])))).astype(float)
    cfg = GLMixConfig(fixed_l2=2.0, random_newton_steps=4)
    backend = _NoRandomEffects(x, y)
    seen: list[tuple[int, float]] = []
    timings: dict[str, float] = {}
    fixed, history = coordinate_descent(
        backend,
        cfg,
        fixed_prior(cfg, 3),
        on_pass=lambda p, ll: seen.append((p, ll)),
        timings=timings,
    )
    np.testing.assert_allclose(fixed, fit_logistic(x, y, l2=fixed_prior(cfg, 3)), atol=1e-8)
    # Nothing changes after the first pass, so the second one stops the loop.
    assert len(history) == 2 and [p for p, _ in seen] == [1, 2]
    assert history[1]["log_likelihood_per_row"] == pytest.approx(
        history[0]["log_likelihood_per_row"]
    )
    # Random steps: the configured count first, half of it (at least one) when warm.
    assert [s for _, s in backend.passes] == [4, 2]
    assert set(timings) == {"fixed_s", "random_s"} and min(timings.values()) >= 0


def test_the_loop_stops_after_max_passes() -> None:
    rng = np.random.default_rng(1)
    x = np.c_[np.ones(50), rng.normal(size=(50, 1))]
    y = (rng.random(50) < 0.5).astype(float)

    class Improving(_NoRandomEffects):
        def random_pass(self, coordinate: str, fixed: np.ndarray, steps: int) -> float:
            super().random_pass(coordinate, fixed, steps)
            return float(len(self.passes))  # always better by 1

    b = Improving(x, y)
    _, history = coordinate_descent(b, GLMixConfig(max_passes=3), fixed_prior(GLMixConfig(), 2))
    assert len(history) == 3 and len(b.passes) == 3


def test_local_backend_through_the_loop_is_fit_glmix() -> None:
    """fit_glmix is the loop over LocalBackend: driving them by hand gives its coefficients."""
    rng = np.random.default_rng(2)
    users = np.array([f"u{i}" for i in rng.integers(0, 20, 600)], dtype=object)
    video = rng.normal(size=(600, 3)).astype(np.float32)
    y = (rng.random(600) < 0.4).astype(np.float64)
    cfg = GLMixConfig(random_l2=2.0)
    model = fit_glmix(users, video, y, cfg)
    codes = np.array([model.user_index[u] for u in users])  # first-appearance order
    x = fixed_design(video, None, True)
    backend = LocalBackend.cowatch(
        codes, len(model.user_ids), x, y, 4, cfg, np.random.default_rng(0)
    )
    fixed, history = coordinate_descent(backend, cfg, fixed_prior(cfg, 4))
    coef, precision = backend.effects()
    np.testing.assert_array_equal(fixed, model.fixed)
    np.testing.assert_array_equal(coef, model.user_coef)
    np.testing.assert_array_equal(precision, model.user_precision)
    assert history == model.history
