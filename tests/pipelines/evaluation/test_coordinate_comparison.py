"""Table 7 with and without per-video effects: every number re-computed directly."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.coordinate_comparison import (
    coordinate_table,
    per_video_section,
    per_video_summary,
)
from recsys.auc import delong_ci, delong_paired_difference


def test_every_cell_is_the_auc_or_paired_difference_of_its_subset() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    y = (rng.random(n) < 0.3).astype(int)
    cold = rng.random(n) < 0.3
    noise = lambda s: y + rng.normal(0, s, n)  # noqa: E731
    with_pair = (noise(1.0), noise(1.6))
    without_pair = (noise(1.2), noise(1.5))
    got = coordinate_table(y, cold, with_pair, without_pair, shipped_has_effects=True)
    assert got["shipped"] == "with"
    subsets = {"all": np.ones(n, bool), "warm": ~cold, "cold_start": cold}
    for name, (feats, none) in (("with", with_pair), ("without", without_pair)):
        for subset, sel in subsets.items():
            cell = got[name][subset]
            assert cell["auc_video_features"] == pytest.approx(delong_ci(y[sel], feats[sel])[0])
            assert cell["auc_no_video_features"] == pytest.approx(delong_ci(y[sel], none[sel])[0])
            d, lo, hi = delong_paired_difference(y[sel], feats[sel], none[sel])
            assert cell["feature_gain"]["difference"] == pytest.approx(d)
            assert cell["feature_gain"]["delong_paired_95"] == pytest.approx([lo, hi])
        # Cold minus warm: the difference of the two gains, their variances added.
        c, w = got[name]["cold_start"]["feature_gain"], got[name]["warm"]["feature_gain"]
        se = [(e["delong_paired_95"][1] - e["delong_paired_95"][0]) / (2 * 1.96) for e in (c, w)]
        diff = got[name]["cold_minus_warm"]
        assert diff["difference"] == pytest.approx(c["difference"] - w["difference"])
        half = (diff["interval_95"][1] - diff["interval_95"][0]) / 2
        assert half == pytest.approx(1.96 * np.hypot(*se), rel=1e-3)
    for subset, sel in subsets.items():
        d, _, _ = delong_paired_difference(y[sel], with_pair[0][sel], without_pair[0][sel])
        assert got["coordinate_gain"][subset]["difference"] == pytest.approx(d)
    # Noise 1.0 against 1.6 on 3,000 rows: the features' gain is clearly positive.
    assert got["with"]["all"]["feature_gain"]["delong_paired_95"][0] > 0
    text = "\n".join(per_video_section(got))
    assert "| with (shipped) | cold start |" in text and "| without | warm |" in text
    assert "cold start minus warm" in text
    assert per_video_section(None) == [] and per_video_summary(None) == []
    lines = per_video_summary(got)
    assert lines[0].startswith("  video features' gain, with per-video effects (shipped): warm")
    assert f"{got['coordinate_gain']['all']['difference']:+.4f}" in lines[-1]


def test_a_subset_without_both_classes_is_reported_as_unknown() -> None:
    y = np.array([0, 1, 0, 1, 0, 0])
    cold = np.array([False, False, False, False, True, True])  # cold rows: no positive
    s = np.linspace(0, 1, 6)
    got = coordinate_table(y, cold, (s, s[::-1]), (s, s), shipped_has_effects=False)
    assert got["shipped"] == "without"
    assert np.isnan(got["with"]["cold_start"]["auc_video_features"])
    assert np.isnan(got["coordinate_gain"]["cold_start"]["difference"])
