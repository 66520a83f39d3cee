"""The index chosen by catalogue size, and its recall against exact search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recsys.index import AUTO_EXACT_MAX, IndexConfig, VideoIndex


def _unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_is_exact_up_to_the_threshold_and_hnsw_above() -> None:
    auto = IndexConfig(kind="auto")
    assert auto.resolved(AUTO_EXACT_MAX).kind == "flat"
    assert auto.resolved(AUTO_EXACT_MAX + 1).kind == "hnsw"
    assert IndexConfig(kind="ivf").resolved(10**9).kind == "ivf"  # a chosen kind stays
    x = _unit(300)
    small = VideoIndex.build([f"v{i}" for i in range(300)], x, auto)
    assert small.config.kind == "flat"
    big = VideoIndex.build(
        [f"v{i}" for i in range(300)], x, IndexConfig("auto", auto_exact_max=100)
    )
    assert big.config.kind == "hnsw"
    with pytest.raises(ValueError, match="index kind"):
        IndexConfig(kind="annoy")


def test_recall_is_one_for_exact_search_and_measured_for_approximate() -> None:
    x = _unit(2000, seed=1)
    ids = [f"v{i}" for i in range(len(x))]
    flat = VideoIndex.build(ids, x, IndexConfig("flat"))
    got = flat.recall(x, k=20, queries=300)
    assert got == {"k": 20, "queries": 300, "recall": 1.0}
    # A deliberately poor graph (few links, narrow search) misses neighbours: the number
    # is measured, not assumed.
    poor = VideoIndex.build(ids, x, IndexConfig("hnsw", hnsw_m=4, hnsw_ef_search=8))
    good = VideoIndex.build(ids, x, IndexConfig("hnsw", hnsw_ef_search=256))
    r_poor, r_good = poor.recall(x, 20, 300)["recall"], good.recall(x, 20, 300)["recall"]
    assert r_poor < r_good and r_good >= 0.95
    # Against a hand computation for a few queries.
    q = np.sort(np.random.default_rng(0).choice(len(x), 300, replace=False))
    _, rows = poor.index.search(x[q], 20)
    exact = np.argsort(-(x[q] @ x.T), axis=1)[:, :20]
    want = np.mean(
        [len(set(a) & set(b)) / 20 for a, b in zip(exact.tolist(), rows.tolist(), strict=True)]
    )
    assert r_poor == pytest.approx(want, abs=1e-12)


def test_recall_needs_the_index_own_vectors() -> None:
    x = _unit(50)
    idx = VideoIndex.build([f"v{i}" for i in range(50)], x)
    with pytest.raises(ValueError, match="own vectors"):
        idx.recall(x[:10])


def test_the_job_writes_the_chosen_index_and_its_recall(pipeline_out) -> None:
    from recsys.artifact import read_manifest

    m = read_manifest(pipeline_out / "artifact")
    assert m["config"]["index"]["kind"] == "flat"  # a small catalogue: exact search
    facts = m["metrics"]["index"]
    assert facts["kind"] == "flat" and facts["recall"] == 1.0 and facts["k"] == 20


def test_tuning_widens_the_search_until_the_target_and_the_width_travels() -> None:
    x = _unit(3000, seed=2)
    ids = [f"v{i}" for i in range(len(x))]
    cfg = IndexConfig("hnsw", hnsw_m=8, hnsw_ef_search=4, target_recall=0.97)
    idx = VideoIndex.build(ids, x, cfg)
    narrow = idx.recall(x, k=20)["recall"]
    facts = idx.tune(x, k=20)
    widths = [t["width"] for t in facts["widths_tried"]]
    assert widths[0] == 4 and all(b == 2 * a for a, b in itertools.pairwise(widths))
    assert facts["widths_tried"][0]["recall"] == narrow < 0.97
    assert facts["recall"] >= 0.97 and facts["widths_tried"][-2]["recall"] < 0.97
    assert facts["target_reached"]
    assert idx.config.hnsw_ef_search == facts["search_width"] == widths[-1]
    # The width is part of the config: an index read back with it searches the same.
    back = VideoIndex.from_bytes(idx.to_bytes(), ids, idx.config)
    assert back.recall(x, k=20) == idx.recall(x, k=20)
    reread_narrow = VideoIndex.from_bytes(idx.to_bytes(), ids, cfg)
    assert reread_narrow.recall(x, k=20)["recall"] == narrow


def test_tuning_stops_at_the_cap_and_leaves_exact_search_alone() -> None:
    x = _unit(2000, seed=3)
    ids = [f"v{i}" for i in range(len(x))]
    capped = VideoIndex.build(
        ids, x, IndexConfig("hnsw", hnsw_m=4, hnsw_ef_search=2, max_search_width=8)
    )
    facts = capped.tune(x)
    assert [t["width"] for t in facts["widths_tried"]] == [2, 4, 8]
    assert facts["target_reached"] == (facts["recall"] >= 0.95)
    off = VideoIndex.build(ids, x, IndexConfig("hnsw", hnsw_ef_search=2, target_recall=0.0))
    assert [t["width"] for t in off.tune(x)["widths_tried"]] == [2]
    ivf = VideoIndex.build(ids, x, IndexConfig("ivf", ivf_nlist=8, ivf_nprobe=1))
    got = ivf.tune(x)
    assert got["search_width"] <= 8 and (got["recall"] >= 0.95 or got["search_width"] == 8)
    flat = VideoIndex.build(ids, x, IndexConfig("flat"))
    assert "search_width" not in flat.tune(x) and flat.tune(x)["recall"] == 1.0
    with pytest.raises(ValueError, match="target_recall"):
        IndexConfig(target_recall=1.5)


def test_the_job_warns_when_the_widest_search_misses_the_target(capsys) -> None:
    from pipelines.choice.representation import index_with_recall

    x = _unit(2000, seed=4)
    ids = [f"v{i}" for i in range(len(x))]
    cfg = IndexConfig("hnsw", hnsw_m=4, hnsw_ef_search=2, max_search_width=2, target_recall=1.0)
    _, facts = index_with_recall(ids, x, cfg)
    assert facts["target_reached"] is False and facts["recall"] < 1.0
    assert "below the target" in capsys.readouterr().err
    _, fine = index_with_recall(ids, x, IndexConfig("flat"))
    assert fine["recall"] == 1.0 and "below the target" not in capsys.readouterr().err
