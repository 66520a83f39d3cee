"""Choosing on validation rows with paired intervals (``pipelines.choice.validation``): each
number against a direct re-computation, and the gate's decisions on made-up scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from pipelines.choice.validation import (
    LEVEL,
    MIN_HELDOUT_ROWS,
    CandidateScores,
    ValidationSet,
    compare,
    gated_choice,
)
from pipelines.data.impressions import RecRows
from recsys.auc import delong_paired_difference
from recsys.glmix.logistic import row_log_loss


def _vset(n: int = 600, users: int = 40, held: int = 0, seed: int = 0) -> ValidationSet:
    rng = np.random.default_rng(seed)
    heldout = np.zeros(n, dtype=bool)
    heldout[rng.choice(n, held, replace=False)] = True
    return ValidationSet(
        labels=(rng.random(n) < 0.4).astype(float),
        users=rng.integers(0, users, n),
        videos=rng.integers(0, 50, n),
        heldout=heldout,
        history={},
    )


def _scores(
    vset: ValidationSet, loss_shift: float, auc_signal: float, seed: int
) -> CandidateScores:
    rng = np.random.default_rng(seed)
    n = len(vset.labels)
    p = np.clip(0.4 + loss_shift * (vset.labels - 0.4) + rng.normal(0, 0.05, n), 0.01, 0.99)
    sim = auc_signal * vset.labels + rng.normal(0, 1, n)
    return CandidateScores(row_log_loss(vset.labels, p), sim)


def test_the_criterion_weights_all_rows_and_held_out_rows_equally() -> None:
    few = _vset(held=MIN_HELDOUT_ROWS - 1)
    np.testing.assert_allclose(few.weights, 1 / len(few.labels))
    many = _vset(held=150)
    assert many.weights.sum() == pytest.approx(1.0)
    s = _scores(many, 0.3, 1.0, 1)
    summary = s.summary(many)
    assert summary["heldout_videos"] == pytest.approx(s.losses[many.heldout].mean())
    assert summary["criterion"] == pytest.approx((summary["all"] + summary["heldout_videos"]) / 2)
    assert few.weights @ s.losses == pytest.approx(s.losses.mean())


def test_compare_matches_a_direct_computation() -> None:
    vset = _vset(held=150)
    a, b = _scores(vset, 0.5, 1.0, 1), _scores(vset, 0.3, 0.5, 2)
    c = compare(a, b, vset)
    d = vset.weights * (a.losses - b.losses)
    assert c.loss == pytest.approx(d.sum())
    # Users as clusters: the spread of each user's share of the gap.
    totals = np.array([d[vset.users == u].sum() for u in np.unique(vset.users)])
    g = len(totals)
    var = g / (g - 1) * ((totals - d.sum() / g) ** 2).sum()
    half = norm.ppf(0.5 + LEVEL / 2) * math.sqrt(var)
    assert (c.loss_low, c.loss_high) == pytest.approx((d.sum() - half, d.sum() + half))
    want = delong_paired_difference(vset.labels, a.avg_similarity, b.avg_similarity)
    assert (c.auc, c.auc_low, c.auc_high) == pytest.approx(want)


def test_rows_without_a_history_are_left_out_of_the_auc() -> None:
    vset = _vset()
    a, b = _scores(vset, 0.5, 1.0, 1), _scores(vset, 0.3, 0.5, 2)
    a.avg_similarity[:100] = np.nan
    c = compare(a, b, vset)
    want = delong_paired_difference(
        vset.labels[100:], a.avg_similarity[100:], b.avg_similarity[100:]
    )
    assert c.auc == pytest.approx(want[0])


def test_the_gate_keeps_the_reference_on_a_tie_and_noise() -> None:
    vset = _vset()
    ref = _scores(vset, 0.3, 1.0, 1)
    same = CandidateScores(ref.losses.copy(), ref.avg_similarity.copy())
    noisy = _scores(vset, 0.3, 1.0, 2)  # the same quality, other noise
    chosen, comps = gated_choice({"ref": ref, "same": same, "noisy": noisy}, "ref", vset)
    assert chosen == "ref"
    assert set(comps) == {"same", "noisy"}


def test_the_gate_takes_a_clear_lead_and_the_strongest_of_several() -> None:
    vset = _vset()
    ref = _scores(vset, 0.1, 0.2, 1)
    better = _scores(vset, 0.6, 0.2, 1)  # same noise, much sharper probabilities
    best = _scores(vset, 0.6, 2.0, 1)  # and a far better similarity
    chosen, comps = gated_choice({"ref": ref, "better": better}, "ref", vset)
    assert chosen == "better" and comps["better"].better and not comps["better"].worse
    chosen, _ = gated_choice({"ref": ref, "better": better, "best": best}, "ref", vset)
    assert chosen == "best"


def test_a_lead_on_one_score_does_not_buy_a_loss_on_the_other() -> None:
    vset = _vset()
    ref = _scores(vset, 0.1, 2.0, 1)
    sharper_but_blind = _scores(vset, 0.6, 0.0, 1)
    chosen, comps = gated_choice({"ref": ref, "other": sharper_but_blind}, "ref", vset)
    assert comps["other"].loss_high < 0 and comps["other"].auc_high < 0
    assert chosen == "ref"


def test_the_validation_set_of_a_log() -> None:
    # Two users over ten times; the last tenth (times >= the 0.9 quantile) is validation.
    t = np.arange(20, dtype=np.int64)
    users = np.array([0, 1] * 10, dtype=np.int64)
    videos = np.arange(20, dtype=np.int64) % 7
    videos[18] = 7  # user 0's watch after the cut: a video seen nowhere else
    labels = np.array([1.0, 0.0] * 10)
    rows = RecRows(
        video_ids=[str(i) for i in range(8)],
        train_users=users.astype(object),
        train_videos=videos,
        train_labels=labels,
        train_times=t,
        test_users=users[:1].astype(object),
        test_videos=videos[:1],
        test_labels=np.zeros(1, dtype=np.int64),
        cold_start=np.zeros(1, dtype=bool),
        test_user_index=users[:1],
        history_rows={},
        train_user_index=users,
    )
    held = np.zeros(8, dtype=bool)
    held[videos[19]] = True
    vset = ValidationSet.of(rows, held)
    val = rows.validation_mask
    assert len(vset.labels) == val.sum() == 2
    np.testing.assert_array_equal(vset.videos, videos[val])
    assert vset.heldout.tolist() == [False, True]
    # User 0 watched every even-time video before the cut; user 1 watched nothing.
    assert sorted(vset.history[0].tolist()) == sorted(set(videos[:18:2].tolist()))
    assert set(vset.history) == {0}  # user 1 has no watch, so no history
    # Only watches before the cut: user 0's validation-period watch (time 18) is not in it.
    assert 7 not in vset.history[0].tolist()


def test_best_ranked_weighs_both_scores_and_ties_go_to_the_lower_criterion() -> None:
    from pipelines.training.starting_point import best_ranked

    def d(crit: float, auc: float | None) -> dict[str, float | None]:
        return {"all": crit, "heldout_videos": None, "criterion": crit, "avg_similarity_auc": auc}

    # a: best criterion, worst AUC; b: second on both; c: worst criterion, best AUC
    assert best_ranked({"a": d(0.50, 0.55), "b": d(0.51, 0.60), "c": d(0.52, 0.65)}) == "a"
    assert best_ranked({"a": d(0.50, 0.55), "b": d(0.51, 0.66), "c": d(0.52, 0.65)}) == "b"
    assert best_ranked({"a": d(0.50, None), "b": d(0.51, 0.60)}) == "a"
