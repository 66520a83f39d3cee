"""Choosing between representations on the user's own validation rows, with intervals.

The validation rows are the last 10% (by time) of the training period; the test period
is never looked at. Every candidate (a set of video vectors) is scored on them twice:

* **GLMix log-loss**: GLMix (Eq. 18) fitted on the training rows before the cut, the
  log-loss of each validation row after it. The criterion is the mean of all rows' loss
  and of the rows whose video the learned model held out (the cold-start question; all
  rows alone when fewer than ``MIN_HELDOUT_ROWS`` name one).
* **Average similarity AUC**: Eq. 16 between each validation row's video and the user's
  valid watches before the cut, ranked against the labels (what "similar videos" and the
  cold-start path rank by, where GLMix can down-weight a weak direction and Eq. 16 cannot).

A candidate replaces the reference only when it is ahead beyond the paired interval on
one score and not behind beyond it on the other (``gated_choice``): close calls keep the
reference, so noise in the validation rows does not decide what ships. The log-loss
interval treats each user as one cluster (a user's rows are not independent); the AUC's
is DeLong's paired interval over rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from pipelines.data.impressions import RecRows, group_histories, video_names
from recsys.auc import delong_ci, delong_paired_difference
from recsys.glmix.design import VideoRows
from recsys.glmix.logistic import row_log_loss
from recsys.glmix.model import GLMixConfig, fit_glmix
from recsys.scoring import similarity_by_user

#: validation rows of held-out videos below which the criterion is all validation rows
MIN_HELDOUT_ROWS = 100
#: two-sided level of every interval a choice is gated on
LEVEL = 0.95


@dataclass(frozen=True)
class ValidationSet:
    """The rows every candidate is scored on. All arrays (n,) over the validation rows."""

    labels: np.ndarray  # float64 {0, 1}
    users: np.ndarray  # int64 user index
    videos: np.ndarray  # int64 rows into the video table
    heldout: np.ndarray  # bool: the row's video was held out from the learned model
    history: dict[int, np.ndarray]  # user -> video rows watched before the cut

    @classmethod
    def of(cls, rows: RecRows, heldout_videos: np.ndarray | None = None) -> ValidationSet:
        """``heldout_videos``: (V,) mask of the videos the learned model never trained on."""
        if rows.train_user_index is None:
            raise ValueError("validation needs the training rows' user index")
        val = rows.validation_mask
        before = ~val & (rows.train_labels > 0)
        history = group_histories(
            rows.train_user_index[before].tolist(), rows.train_videos[before].tolist()
        )
        videos = rows.train_videos[val]
        held = np.zeros(len(videos), dtype=bool)
        if heldout_videos is not None:
            held = np.asarray(heldout_videos, dtype=bool)[videos]
        return cls(rows.train_labels[val], rows.train_user_index[val], videos, held, history)

    @property
    def weights(self) -> np.ndarray:
        """(n,) each row's weight in the log-loss criterion (they sum to 1)."""
        n, h = len(self.labels), int(self.heldout.sum())
        w = np.full(n, 1.0 / max(n, 1))
        if h >= MIN_HELDOUT_ROWS:
            w = 0.5 * w + 0.5 * self.heldout / h
        return w


@dataclass(frozen=True)
class CandidateScores:
    """A candidate's per-row validation scores (n,)."""

    losses: np.ndarray  # GLMix log-loss of each row
    avg_similarity: np.ndarray  # Eq. 16 against the pre-cut history; NaN without one

    def summary(self, vset: ValidationSet) -> dict[str, float | None]:
        """``all`` / ``heldout_videos`` mean log-loss, ``criterion`` (their weighted mean,
        ``ValidationSet.weights``) and ``avg_similarity_auc``."""
        held = None
        if int(vset.heldout.sum()) >= MIN_HELDOUT_ROWS:
            held = float(self.losses[vset.heldout].mean())
        has = ~np.isnan(self.avg_similarity)
        auc = delong_ci(vset.labels[has], self.avg_similarity[has])[0] if has.any() else None
        return {
            "all": float(self.losses.mean()) if len(self.losses) else float("nan"),
            "heldout_videos": held,
            "criterion": float(vset.weights @ self.losses),
            "avg_similarity_auc": None if auc is None or math.isnan(auc) else float(auc),
        }


def validation_predictions(rows: RecRows, vectors: np.ndarray, cfg: GLMixConfig) -> np.ndarray:
    """GLMix fitted on the training rows before the validation cut on ``vectors`` (V, E)
    (per-video effects too when ``cfg`` has them): its probabilities after the cut."""
    val = rows.validation_mask
    x = VideoRows(vectors, rows.train_videos)  # by reference: no (N, E) copy
    names = video_names(rows, rows.train_videos, cfg)
    model = fit_glmix(
        rows.train_users[~val],
        x[~val],
        rows.train_labels[~val],
        cfg,
        videos=None if names is None else names[~val],
    )
    return model.predict_proba(
        rows.train_users[val], x[val], None, None if names is None else names[val]
    )


def score_candidate(
    rows: RecRows,
    vectors: np.ndarray,
    vset: ValidationSet,
    cfg: GLMixConfig | None = None,
    predictions: np.ndarray | None = None,
) -> CandidateScores:
    """GLMix fitted before the cut on ``vectors`` (V, E), scored after it; and Eq. 16.
    ``predictions``: that fit's ``validation_predictions`` when the caller made it already."""
    p = predictions
    if p is None:
        p = validation_predictions(rows, vectors, cfg or GLMixConfig())
    _, avg = similarity_by_user(vset.users, vset.videos, vset.history, vectors.astype(np.float64))
    return CandidateScores(row_log_loss(vset.labels, p), avg)


@dataclass(frozen=True)
class Comparison:
    """A candidate against the reference: differences with their ``LEVEL`` intervals.
    ``loss``: criterion difference (negative = the candidate is better); ``auc``: average
    similarity AUC difference (positive = better)."""

    loss: float
    loss_low: float
    loss_high: float
    auc: float
    auc_low: float
    auc_high: float

    @property
    def better(self) -> bool:
        return self.loss_high < 0 or self.auc_low > 0

    @property
    def worse(self) -> bool:
        return self.loss_low > 0 or self.auc_high < 0

    @property
    def strength(self) -> float:
        """Sum of the two standardised gains (how far beyond noise the lead is)."""
        z = norm.ppf(0.5 + LEVEL / 2)
        total = 0.0
        for diff, low, high, sign in (
            (self.loss, self.loss_low, self.loss_high, -1.0),
            (self.auc, self.auc_low, self.auc_high, 1.0),
        ):
            half = (high - low) / 2
            if half > 0 and math.isfinite(half):
                total += sign * diff / (half / z)
        return total

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def compare(
    cand: CandidateScores, ref: CandidateScores, vset: ValidationSet, level: float = LEVEL
) -> Comparison:
    """``cand`` minus ``ref`` on the same validation rows."""
    d = vset.weights * (cand.losses - ref.losses)  # each row's share of the criterion gap
    total = float(d.sum())
    _, inverse = np.unique(vset.users, return_inverse=True)
    per_user = np.bincount(inverse, weights=d)
    g = len(per_user)
    var = g / max(g - 1, 1) * float(((per_user - total / g) ** 2).sum()) if g > 1 else math.nan
    half = norm.ppf(0.5 + level / 2) * math.sqrt(var) if not math.isnan(var) else math.nan
    has = ~np.isnan(cand.avg_similarity) & ~np.isnan(ref.avg_similarity)
    auc = delong_paired_difference(
        vset.labels[has], cand.avg_similarity[has], ref.avg_similarity[has], level
    )
    return Comparison(total, total - half, total + half, *auc)


def gated_choice(
    scores: dict[str, CandidateScores], reference: str, vset: ValidationSet
) -> tuple[str, dict[str, Comparison]]:
    """The candidate to use: ``reference`` unless another is ahead of it beyond the
    interval on a score and not behind on either; among several, the strongest lead."""
    comparisons = {
        name: compare(s, scores[reference], vset) for name, s in scores.items() if name != reference
    }
    ahead = {n: c for n, c in comparisons.items() if c.better and not c.worse}
    if not ahead:
        return reference, comparisons
    return max(ahead, key=lambda n: ahead[n].strength), comparisons


def choice_json(
    scores: dict[str, CandidateScores],
    vset: ValidationSet,
    reference: str,
    chosen: str,
    comparisons: dict[str, Comparison],
) -> dict[str, Any]:
    """What was tried, each candidate's summary and lead over the reference, the winner."""
    return {
        "reference": reference,
        "chosen": chosen,
        "candidates": {
            name: {
                **s.summary(vset),
                **(
                    {"versus_reference": comparisons[name].to_json()} if name in comparisons else {}
                ),
            }
            for name, s in scores.items()
        },
    }
