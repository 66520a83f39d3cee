"""Independent fits side by side (``recsys.parallel.map_independent``)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from recsys import parallel
from recsys.glmix.config import GLMixConfig
from recsys.glmix.design import VideoRows
from recsys.glmix.tuning import RANDOM_L2_GRID, select_random_l2, validation_losses
from recsys.parallel import map_independent


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "cores", lambda: 2)


def test_results_come_in_order_from_workers_running_together(two_cores: None) -> None:
    both = threading.Barrier(2, timeout=30)  # passes only if two calls run at once
    callers: set[int] = set()

    def square(x: int) -> int:
        callers.add(threading.get_ident())
        if x < 2:
            both.wait()
        return x * x

    before = torch.get_num_threads()
    assert map_independent(square, list(range(7))) == [x * x for x in range(7)]
    assert len(callers) == 2 and threading.get_ident() not in callers
    assert torch.get_num_threads() == before


def test_one_item_too_much_memory_or_a_nested_call_run_in_the_callers_thread(
    two_cores: None,
) -> None:
    me = threading.get_ident()

    def where(_: int) -> int:
        return threading.get_ident()

    assert map_independent(where, [0]) == [me]
    big = parallel.CONCURRENT_BYTES + 1
    assert map_independent(where, [0, 1, 2], bytes_each=big) == [me] * 3

    def outer(_: int) -> list[int]:
        return [threading.get_ident(), *map_independent(where, [0, 1])]

    for row in map_independent(outer, [0, 1]):
        assert row[0] != me and row[1:] == [row[0]] * 2  # the inner calls stay in the worker


def test_the_memory_allowance_caps_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four cores, and calls of half the allowance each: three run at once (two beside
    the first), never four."""
    monkeypatch.setattr(parallel, "cores", lambda: 4)
    three = threading.Barrier(3, timeout=30)
    callers: set[int] = set()

    def call(x: int) -> int:
        callers.add(threading.get_ident())
        if x < 3:
            three.wait()
        return x

    assert map_independent(call, list(range(9)), parallel.CONCURRENT_BYTES // 2) == list(range(9))
    assert len(callers) == 3


def test_an_error_reaches_the_caller_and_the_thread_count_is_restored(two_cores: None) -> None:
    before = torch.get_num_threads()

    def fail(x: int) -> int:
        if x == 3:
            raise ValueError("candidate 3 failed")
        return x

    with pytest.raises(ValueError, match="candidate 3"):
        map_independent(fail, list(range(5)))
    assert torch.get_num_threads() == before


def _log(seed: int) -> tuple[np.ndarray, VideoRows, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, users, videos, e = 3000, 60, 80, 6
    table = rng.normal(size=(videos, e)).astype(np.float32)
    rows = rng.integers(0, videos, n)
    u = rng.integers(0, users, n).astype(str)
    taste = rng.normal(size=(users, e))
    logit = (table[rows] * taste[rng.integers(0, users, n)]).sum(1) - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    val = np.zeros(n, dtype=bool)
    val[-600:] = True
    g = rng.normal(size=(n, 2)).astype(np.float32)
    return u, VideoRows(table, rows), y, val, g


def test_a_grid_fitted_side_by_side_equals_one_candidate_at_a_time(two_cores: None) -> None:
    """Each worker runs with one BLAS and torch thread: the losses are those of the
    candidates fitted in turn on one thread each, whichever candidates ran together."""
    u, x, y, val, g = _log(4)
    best, together = select_random_l2(u, x, y, val, global_feats=g)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            cands = {lam: GLMixConfig(random_l2=lam) for lam in RANDOM_L2_GRID}
            one = [
                validation_losses({k: c}, u, x, y, val, global_feats=g)[k] for k, c in cands.items()
            ]
    finally:
        torch.set_num_threads(before)
    assert list(together) == list(RANDOM_L2_GRID)
    np.testing.assert_allclose(list(together.values()), one, rtol=1e-12)
    assert best == RANDOM_L2_GRID[int(np.argmin(one))]
