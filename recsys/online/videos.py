"""Online per-video effects: each video's appeal updated from the impressions the service
sees, the same on every replica whatever order the events arrive in.

The offline fit (``recsys.glmix.model`` with ``video_effects``) leaves each video an effect
gamma_v with a diagonal posterior precision P_v; a video uploaded since has none (zero,
with the prior L2 as precision). New impressions of v move its effect by one Newton
(Laplace) step from there:

    gamma_v = gamma_v(offline) + (diag(P_v) + H_v)^-1 G_v
    G_v = sum_i z_i (y_i - mu_i),   H_v = sum_i mu_i (1 - mu_i) z_i z_i^T

with mu_i the *frozen offline model's* probability of impression i (its fixed effect
with the global features against the user's history as the offline fit left it, the
offline user effect, the offline video effect): a function of the impression alone. So
G_v and H_v are sums of per-event terms, and sums do not depend on order. They are kept
as integers (``SCALE`` units per 1.0), so even the rounding is the same on every replica
and after a restart that replays the log. A user's terms are kept per user too, so an
erasure takes exactly their contributions back out.

Array functions only: the service and the replay evaluation own the data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from recsys.glmix.config import video_prior
from recsys.glmix.model import GLMix

#: fixed-point units per 1.0 of a statistic: 2^-32 resolution, and 2^31 impressions of
#: one video before an int64 sum could overflow
SCALE = float(1 << 32)


def to_units(values: np.ndarray) -> np.ndarray:
    """Statistics as int64 fixed-point units (exact, commutative sums)."""
    return np.rint(np.asarray(values, dtype=np.float64) * SCALE).astype(np.int64)


class UserShares:
    """One user's share of the per-video sums, replaced whole on every change (a reader
    keeps a consistent one): per impression, first first, its video and its gradient
    (qv,) and curvature (qv, qv) terms in fixed-point units (a video may repeat). About
    8 (1 + qv + qv^2) bytes an impression.

    Kept as the chunks the batches appended (joined every ``JOIN_AT`` chunks), so an
    append costs the batch, not the user's whole past: a user with many impressions
    made every batch copy all of them."""

    #: chunks kept before they are joined into one (amortised: a row is copied at most
    #: a few times, and a reader joins at most this many)
    JOIN_AT = 32
    __slots__ = ("_g", "_h", "_videos")

    def __init__(self, videos: tuple[str, ...], g: np.ndarray, h: np.ndarray) -> None:
        self._videos: tuple[tuple[str, ...], ...] = (tuple(videos),)
        self._g: tuple[np.ndarray, ...] = (g,)
        self._h: tuple[np.ndarray, ...] = (h,)

    @property
    def videos(self) -> tuple[str, ...]:
        if len(self._videos) == 1:
            return self._videos[0]
        return tuple(v for part in self._videos for v in part)

    @property
    def g(self) -> np.ndarray:
        return self._g[0] if len(self._g) == 1 else np.concatenate(self._g)

    @property
    def h(self) -> np.ndarray:
        return self._h[0] if len(self._h) == 1 else np.concatenate(self._h)

    def added(self, videos: list[str], g: np.ndarray, h: np.ndarray) -> UserShares:
        """These shares plus one term per row (``g``, ``h`` are kept: pass copies)."""
        out = UserShares.__new__(UserShares)
        if len(self._g) >= self.JOIN_AT:
            out._videos, out._g, out._h = (self.videos, tuple(videos)), (self.g, g), (self.h, h)
        else:
            out._videos = (*self._videos, tuple(videos))
            out._g, out._h = (*self._g, g), (*self._h, h)
        return out


@dataclass
class VideoEffects:
    """Per-video online effects on top of an offline GLMix with per-video effects."""

    model: GLMix
    #: per video: the (qv,) and (qv, qv) int64 sums of the gradient and curvature terms,
    #: replaced as one pair (a reader never sees one updated without the other)
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: per user: that user's share of the sums (what an erasure takes out)
    shares: dict[str, UserShares] = field(default_factory=dict)
    #: per video: (the stats pair it was solved from, the effect); a hit only while that
    #: very pair is current, so a reader racing a writer never keeps a stale effect
    _solved: dict[str, tuple[tuple[np.ndarray, np.ndarray], np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )

    #: videos whose sums changed since ``take_changed`` (kept once something asks)
    changed: set[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.q = self.model.video_dim
        self.prior_precision = video_prior(self.model.config, self.q)

    def take_changed(self) -> list[str]:
        """The videos whose sums changed since the last call (from the first call on)."""
        got, self.changed = self.changed, set()
        return sorted(got) if got else []

    def effects(self, videos: list[str]) -> np.ndarray:
        """(n, qv) ``effect`` of each video, with the same bits, vectorised: the offline
        effects gathered at once, the solves not yet kept done in one batched call
        (LAPACK's gesv a matrix, as one solve is)."""
        out = np.empty((len(videos), self.q))
        todo: list[int] = []
        kept: list[int] = []
        kept_effects: list[np.ndarray] = []
        for i, v in enumerate(videos):
            got = self.stats.get(v)
            cached = None if got is None else self._solved.get(v)
            if cached is not None and cached[0] is got:
                kept.append(i)
                kept_effects.append(cached[1])
            elif got is not None:
                todo.append(i)
        mean, precision = self.offline_many(videos)
        out[:] = mean  # a video without statistics: its offline effect
        if kept:
            out[kept] = np.stack(kept_effects)
        if todo:
            pairs = [self.stats[videos[i]] for i in todo]
            a = np.stack([h for _, h in pairs]) / SCALE
            a[:, np.arange(self.q), np.arange(self.q)] += precision[todo]  # + diag(p)
            b = np.stack([g for g, _ in pairs])[:, :, None] / SCALE
            if self.q == 1:  # LAPACK's 1 x 1 solve is this one division: the same bits
                solved = mean[todo] + b[:, :, 0] / a[:, :, 0]
            else:
                solved = mean[todo] + np.linalg.solve(a, b)[:, :, 0]
            out[todo] = solved
            for i, pair, e in zip(todo, pairs, solved, strict=True):
                self._solved[videos[i]] = (pair, e)
        return out

    def offline_many(self, videos: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``offline`` of each video, (n, qv) effects and (n, qv) precisions, gathered."""
        m, n = self.model, len(videos)
        mean = np.zeros((n, self.q))
        precision = np.tile(np.asarray(self.prior_precision, np.float64), (n, 1))
        if m.video_coef is None or not n:
            return mean, precision
        rows = m.video_rows(videos)
        seen = rows >= 0
        mean[seen] = m.video_coef[rows[seen]]
        if m.video_precision is not None:
            precision[seen] = m.video_precision[rows[seen]]
        return mean, precision

    def offline(self, video: str) -> tuple[np.ndarray, np.ndarray]:
        """(offline effect, its precision): zero and the prior L2 for a video the offline
        fit did not see."""
        m = self.model
        r = m.video_row(video)
        if r is None or m.video_coef is None:
            return np.zeros(self.q), self.prior_precision
        precision = self.prior_precision if m.video_precision is None else m.video_precision[r]
        return np.asarray(m.video_coef[r], np.float64), np.asarray(precision, np.float64)

    def effect(self, video: str) -> np.ndarray:
        """(qv,) the video's effect now: the offline one moved by what was seen since."""
        got = self.stats.get(video)
        if got is None:
            return self.offline(video)[0]
        cached = self._solved.get(video)
        if cached is not None and cached[0] is got:  # the usual case: no lookups more
            return cached[1]
        mean, precision = self.offline(video)
        g, h = got
        solved = mean + np.linalg.solve(h / SCALE + np.diag(precision), g / SCALE)
        self._solved[video] = (got, solved)
        return solved

    def logit(self, videos: list[str], global_feats: np.ndarray | None = None) -> np.ndarray:
        """(n,) each row's per-video term: gamma_v0 + x^T gamma_v. Vectorised over the
        offline effects; only videos seen since the fit take a solve each."""
        stats = self.stats
        moved = [i for i, v in enumerate(videos) if v in stats]
        model_rows = self.model.video_rows(list(videos))
        return self.logit_at(
            model_rows, np.asarray(moved, np.int64), [videos[i] for i in moved], global_feats
        )

    def logit_at(
        self,
        model_rows: np.ndarray,
        moved: np.ndarray,
        moved_ids: list[str],
        global_feats: np.ndarray | None = None,
    ) -> np.ndarray:
        """``logit`` with the lookups done by the caller: ``model_rows`` (n,) each row's
        offline effect (``model.video_rows``), ``moved`` the indices of rows whose video
        has statistics and ``moved_ids`` those videos."""
        out = self.model.video_logit(model_rows, global_feats)
        return self._moved_into(out, moved, moved_ids, global_feats)

    def logit_from(
        self,
        coef: np.ndarray,
        moved: np.ndarray,
        moved_ids: list[str],
        global_feats: np.ndarray | None = None,
    ) -> np.ndarray:
        """``logit_at`` from each row's offline coefficients ``coef`` (n, qv), zero for
        a video the fit never saw (the serving side's per-row table): the same bits, as
        every global feature is finite (a zero row's sum is 0)."""
        if self.q == 1:
            out = coef[:, 0].copy()
        elif global_feats is None:
            raise ValueError("this model's per-video slopes need global features")
        else:
            out = np.einsum("ij,ij->i", coef[:, 1:], global_feats)
            out += coef[:, 0]
        return self._moved_into(out, moved, moved_ids, global_feats)

    def _moved_into(
        self,
        out: np.ndarray,
        moved: np.ndarray,
        moved_ids: list[str],
        global_feats: np.ndarray | None,
    ) -> np.ndarray:
        """``out`` with the ``moved`` rows' terms from their videos' online effects (each
        solved once and kept until its sums change)."""
        if len(moved):
            z = self.design(len(out), global_feats)[moved]
            effects = np.stack([self.effect(v) for v in moved_ids])
            out[moved] = np.einsum("ij,ij->i", z, effects)
        return out

    def design(self, n: int, global_feats: np.ndarray | None) -> np.ndarray:
        """(n, qv) the per-video design [1, global features] of n rows."""
        ones = np.ones((n, 1))
        if self.q == 1:
            return ones
        if global_feats is None:
            raise ValueError("this model's per-video slopes need global features")
        return np.hstack([ones, np.asarray(global_feats, np.float64)])

    def observe(
        self,
        user: str,
        videos: list[str],
        labels: np.ndarray,
        base_logit: np.ndarray,
        frozen_feats: np.ndarray | None = None,
    ) -> None:
        """Add impressions of one ``user`` (``stage`` with one user)."""
        n = len(videos)
        self.stage(videos, labels, base_logit, frozen_feats, rows_by_user([user] * n))

    def stage(
        self,
        videos: list[str],
        labels: np.ndarray,
        base_logit: np.ndarray,
        frozen_feats: np.ndarray | None,
        grouped: Grouped,
    ) -> None:
        """Add impressions of any users: ``videos`` (n,) each row's, labels,
        ``base_logit`` (n,) the frozen offline model's logit of each, ``frozen_feats``
        (n, G) the global features it used; ``grouped``: the rows by user
        (``rows_by_user``)."""
        y = np.asarray(labels, dtype=np.float64)
        mu = expit(np.asarray(base_logit, dtype=np.float64))
        z = self.design(len(y), frozen_feats)
        # Per row, the same products as term by term: z (y - mu), (z z^T) mu (1 - mu).
        g = to_units(z * (y - mu)[:, None])
        h = to_units(z[:, :, None] * z[:, None, :] * (mu * (1.0 - mu))[:, None, None])
        for v, gi, hi in zip(videos, g, h, strict=True):
            self._add(v, gi, hi)
        order, bounds = grouped
        g, h = g[order], h[order]
        named = [videos[i] for i in order.tolist()]
        for user, s, e in bounds:
            mine = self.shares.get(user)
            if mine is None:
                self.shares[user] = UserShares(tuple(named[s:e]), g[s:e].copy(), h[s:e].copy())
            else:
                self.shares[user] = mine.added(named[s:e], g[s:e].copy(), h[s:e].copy())

    def forget(self, user: str) -> None:
        """Take every contribution of ``user`` back out (an erasure)."""
        mine = self.shares.pop(user, None)
        if mine is not None:
            for v, g, h in zip(mine.videos, mine.g, mine.h, strict=True):
                self._add(v, -g, -h)

    def _add(self, video: str, g: np.ndarray, h: np.ndarray) -> None:
        old = self.stats.get(video)
        # A new pair, not in-place: a reader holding the old one sees a consistent pair.
        self.stats[video] = (g.copy(), h.copy()) if old is None else (old[0] + g, old[1] + h)
        self._solved.pop(video, None)
        if self.changed is not None:
            self.changed.add(video)


#: rows grouped by user: (order (n,), [(user, start, end)]) (``rows_by_user``)
Grouped = tuple[np.ndarray, list[tuple[str, int, int]]]


def rows_by_user(users: list[str]) -> Grouped:
    """Rows grouped by user, in order within each: (order (n,), [(user, start, end)]),
    with ``order[start:end]`` the user's rows; users in the order first seen. Indexing an
    array by ``order`` once makes every user's rows one slice (no copy per user)."""
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(users):
        groups.setdefault(u, []).append(i)
    order = np.fromiter(itertools.chain.from_iterable(groups.values()), np.int64, len(users))
    bounds, at = [], 0
    for u, rows in groups.items():
        bounds.append((u, at, at + len(rows)))
        at += len(rows)
    return order, bounds
