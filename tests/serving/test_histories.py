"""Eq. 16-17 of a run of impressions against each user's history as it was when shown:
the grouped path (a user's history gathered once) and the per-impression path give the
same bits, and the histories end the same."""

from __future__ import annotations

import numpy as np
import pytest

from serving import histories as h


def _state(seed: int) -> tuple[h.Histories, list[h.Shown], np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    hist = h.Histories()
    for u in range(6):
        for r in rng.integers(0, 50, size=int(rng.integers(0, 40))):
            hist.add(f"u{u}", int(r))
    hist.freeze()
    run = [
        (f"u{int(rng.integers(0, 8))}", int(rng.integers(0, 50)), bool(rng.random() < 0.4))
        for _ in range(200)
    ]
    return hist, run, emb


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_and_per_impression_paths_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, seed: int, frozen: bool
) -> None:
    got = {}
    for threshold in (0, 10**9):  # every user grouped; none
        hist, run, emb = _state(seed)
        monkeypatch.setattr(h, "GROUPED_PAIRS", threshold)
        got[threshold] = (h.run_similarity(hist, run, emb.__getitem__, frozen), hist.rows())
    (a, ha), (b, hb) = got[0], got[10**9]
    assert np.array_equal(a[0], b[0], equal_nan=True) and np.array_equal(a[1], b[1], equal_nan=True)
    assert ha == hb
    # and each value is the definition: the history before the impression
    hist, run, emb = _state(seed)
    for i, (user, row, watched) in enumerate(run):
        before = list(hist.offline(user)) if frozen else list(hist.get(user) or [])
        if before:
            sims = emb[before].astype(np.float64) @ emb[row].astype(np.float64)
            assert a[0][i] == pytest.approx(sims.max(), abs=1e-12)
            assert a[1][i] == pytest.approx(sims.mean(), abs=1e-12)
        else:
            assert np.isnan(a[0][i])
        if watched and not frozen:
            hist.add(user, row)
