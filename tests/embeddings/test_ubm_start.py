"""The UBM start both trainers use (Eq. 20-21, softened)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings import build_pooling
from embeddings.cowatch import EmbedderConfig
from embeddings.ubm_start import UBMStart, start_from_ubm


@pytest.mark.parametrize(
    ("pooling", "enabled", "want"),
    [
        ("vlad", False, True),  # cannot run without one
        ("sgmm", False, True),
        ("dsgmm", True, True),
        ("dsgmm", False, False),
        ("netbow", True, True),
        ("avg", True, False),  # nothing to start
    ],
)
def test_which_layers_start_from_a_ubm(pooling: str, enabled: bool, want: bool) -> None:
    assert UBMStart(enabled=enabled).applies_to(pooling) is want


def _frames(n: int = 600, d: int = 3, seed: int = 0, spread: float = 4.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = spread * np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]])
    return (centres[rng.integers(0, 3, n)] + rng.normal(0, 0.5, (n, d))).astype(np.float32)


def test_the_temperature_softens_the_assignment() -> None:
    x = _frames(spread=1.5)
    peaks = {}
    for t in (1.0, 4.0):
        layer = build_pooling("dsgmm", 3, 3)
        start_from_ubm(layer, x, 3, temperature=t, seed=0)
        post = layer.posteriors(torch.from_numpy(x)[None])[0]  # type: ignore[operator]
        peaks[t] = float(post.max(1).values.mean())
    assert peaks[1.0] > 0.85  # Eq. 20-21 as is: nearly hard
    assert peaks[4.0] < peaks[1.0] - 0.1


def test_start_samples_only_when_it_applies_and_refuses_too_few_frames() -> None:
    asked: list[int] = []

    def sample(n: int) -> np.ndarray:
        asked.append(n)
        return _frames(min(n, 600))

    off = EmbedderConfig(feature_dim=3, pooling="dsgmm", num_clusters=3)
    assert (
        UBMStart(enabled=False, frames=500).start(build_pooling("dsgmm", 3, 3), off, sample, 0)
        is None
    )
    assert asked == []
    ubm = UBMStart(frames=500).start(build_pooling("dsgmm", 3, 3), off, sample, 0)
    assert ubm is not None and asked == [500] and tuple(ubm.means.shape) == (3, 3)
    with pytest.raises(ValueError, match="3 clusters need at least as many frames, have 2"):
        start_from_ubm(build_pooling("dsgmm", 3, 3), _frames(2), 3, 4.0, 0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        UBMStart(temperature=0.0)
