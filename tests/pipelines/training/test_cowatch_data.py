"""The embedding's training data: validation splits and co-watch partners."""

from __future__ import annotations

import numpy as np


def test_split_by_video_keeps_held_out_videos_out_of_training() -> None:
    from pipelines.training.cowatch_data import split_by_video

    rng = np.random.default_rng(0)
    rows = rng.integers(0, 50, size=(400, 3))
    val, held = split_by_video(rows, 50, 0.2, seed=1)
    assert held.sum() == 10
    for r, v in zip(rows, val, strict=True):
        assert v == any(held[x] for x in r)  # validation = triplets naming a held-out video
    assert not held[rows[~val]].any()
    again, _ = split_by_video(rows, 50, 0.2, seed=1)
    assert (again == val).all()


def test_cowatch_partners_table_and_sampling() -> None:
    from pipelines.training.cowatch_data import CowatchPartners

    rows = np.array([[0, 1, 5], [1, 0, 4], [0, 2, 3], [3, 3, 1], [4, 2, 0]])
    t = CowatchPartners.from_triplets(rows, 6)
    got = {v: t.indices[t.indptr[v] : t.indptr[v + 1]].tolist() for v in range(6)}
    # anchor-positive pairs in both directions, unique, no self pairs; negatives ignored
    assert got == {0: [1, 2], 1: [0], 2: [0, 4], 3: [], 4: [2], 5: []}
    rng = np.random.default_rng(0)
    s = t.sample(np.array([0, 0, 3, 1]), np.array([1, 5, 1, 0]), 2, rng)
    assert s[0].tolist() == [2, 2]  # only partner left once the positive is excluded
    assert sorted(s[1].tolist()) == [1, 2]  # enough partners: without replacement
    assert s[2].tolist() == [3, 3] and s[3].tolist() == [1, 1]  # none: the anchor itself
