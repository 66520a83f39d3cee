"""The world suite's worlds and its summary table (the runs themselves are on demand)."""

from __future__ import annotations

from benchmarks.world_suite import WORLDS, comparison_rows, markdown, world_config
from recsys.synthetic.world import SynthConfig


def test_every_world_is_a_valid_config_that_moves_what_it_says() -> None:
    base = SynthConfig(num_videos=1200, num_users=600)
    for name, changes in WORLDS.items():
        cfg = world_config(name, 1, 1200, 600)
        assert cfg.seed == 1
        for key, value in changes.items():
            assert getattr(cfg, key) == value and getattr(base, key) != value
    assert len(WORLDS) >= 5 and WORLDS["mixture"] == {}


def _report(diff: float, verdict: str) -> dict:
    c = {
        "best_baseline": "bow_tfidf",
        "learned_auc": 0.7 + diff,
        "baseline_auc": 0.7,
        "difference": diff,
        "delong_paired_95": [diff - 0.01, diff + 0.01],
        "verdict": verdict,
    }
    return {"vs_best_baseline": {"glmix": {"all": c}}}


def test_the_table_averages_seeds_and_counts_significant_losses() -> None:
    runs = [
        {"world": "scenes", "comparisons": comparison_rows(_report(-0.03, "worse"))},
        {"world": "scenes", "comparisons": comparison_rows(_report(0.01, "better"))},
    ]
    line = next(row for row in markdown(runs).splitlines() if row.startswith("| scenes"))
    assert "-0.0100 (-0.0300..+0.0100)" in line and line.endswith("| 1 / 2 |")
