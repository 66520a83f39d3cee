"""The service's reads and writes over the derived state (``serving.derived``; the read
side of the routes: ``serving.queries``).

One ``ServingState`` is immutable in what it was loaded from and grows only by appends
(new videos, new watches, online user effects) under a lock. A reload builds a new state
and swaps the reference in ``StateHolder``; requests that already hold the old state
finish on it. Every write is durable in the store before it is applied here, and the
state follows the store's log (``sync``), so replicas converge.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from recsys.errors import UserInputError
from recsys.online.refit import sigmoid
from recsys.scoring import HISTORY_FEATURES, glmix_global_features
from serving.derived import DerivedState
from serving.errors import ConflictError, NotFoundError
from serving.stores import Impression, Removal, Watch
from serving.stores.contract import Stamp


@dataclass(frozen=True)
class IngestResult:
    video_id: str
    created: bool
    num_frames: int


@dataclass(frozen=True)
class ImpressionsResult:
    accepted: int
    duplicates: int
    valid_watches: int
    users_updated: int


def payload_hash(frames: np.ndarray) -> str:
    x = np.ascontiguousarray(frames, dtype=np.float32)
    h = hashlib.sha256()
    h.update(np.array(x.shape, dtype=np.int64).tobytes())
    h.update(x.tobytes())
    return h.hexdigest()


class ServingState(DerivedState):
    # ------------------------------------------------------------------ histories

    @property
    def num_videos(self) -> int:
        return len(self.catalogue)

    @property
    def catalogue_size(self) -> int:
        return self.catalogue.size_at_load

    @property
    def takes_vectors(self) -> bool:
        """Uploads give the video's vector (an artifact of the data's own vectors)."""
        return self.embedder.kind == "given"

    @property
    def refit_backlog(self) -> int:
        """Users whose effect waits for a refit: pending, or in the pass under way (a
        pass takes its users out of ``pending`` when it starts, not when it installs)."""
        # ``_inflight`` is replaced whole; the union is built in one step (GIL).
        return len(self._inflight.keys() | self.online.pending.keys())

    def has_video(self, video_id: str) -> bool:
        return video_id in self.catalogue

    def history_rows(self, user: str) -> list[int]:
        hist = self.histories.get(user)
        return [] if hist is None else hist.tolist()

    def history_ids(self, user_id: str) -> list[str]:
        """The user's valid watches, in the order they were first watched."""
        ids = self.catalogue.ids
        return [ids[r] for r in self.history_rows(user_id)]

    def users_seen_online(self) -> set[str]:
        """Users first seen by this service (histories, online windows or effects)."""
        return self.histories.users() | set(self.online.windows) | set(self.online.effects)

    def known_user(self, user_id: str) -> bool:
        """In the offline fit, or seen online (a window, whether or not its refit is done:
        the answer does not depend on how far the refits behind ingestion have got)."""
        offline = user_id in self.glmix.user_index and user_id not in self.erased_users
        return offline or user_id in self.online.windows or user_id in self.online.effects

    # ------------------------------------------------------------------ scoring

    def similarity(self, user_id: str, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 17 / Eq. 16 (float64) of candidates (M, E) against the user's current
        history (NaN without one): one (H, M) product reduced along its contiguous axis,
        averaged in float64 as the offline features are."""
        hist = self.histories.get(user_id)
        if hist is None:
            return np.full(len(cand), np.nan), np.full(len(cand), np.nan)
        sims = np.take(self.catalogue.emb, hist, axis=0) @ cand.T  # (H, M)
        avg = sims.sum(axis=0, dtype=np.float64)
        avg /= len(hist)
        return sims.max(axis=0).astype(np.float64), avg

    def score_rows(
        self, user_id: str, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(max, avg, p) of catalogue ``rows`` (M,) for the user: ``similarity`` and the
        watch probability (Eq. 18); the hot path of scores and recommendations, with the
        same bits as ``watch_probability`` over ``similarity``."""
        cand = np.take(self.catalogue.emb, rows, axis=0)  # (M, E) float32
        g = self._history_columns(user_id, cand)
        if g is None:
            mx, av = self.similarity(user_id, cand)
            return mx, av, self.watch_probability(user_id, cand, mx, av, rows)
        return g[:, 0], g[:, 1], self._probability(user_id, cand, g, rows)

    def _history_columns(self, user_id: str, cand: np.ndarray) -> np.ndarray | None:
        """The (M, 3) global features when they are exactly ``HISTORY_FEATURES`` (no side
        features) and the user has a history: ``similarity``'s reductions written into
        the columns ``glmix_global_features`` would build from them, bit for bit, with
        no array between (None otherwise: the general path)."""
        hist = self.histories.get(user_id)
        if hist is None or not self._history_globals:
            return None
        sims = np.take(self.catalogue.emb, hist, axis=0) @ cand.T  # (H, M) float32
        g = np.empty((len(cand), 3))
        # Each reduction into its own contiguous array first, then one strided write into
        # its column (a reduction straight into a column is slower).
        g[:, 0] = sims.max(axis=0)  # exact in any precision
        total = np.add.reduce(sims, axis=0, dtype=np.float64)  # the rows in order
        np.divide(total, len(hist), out=g[:, 1])
        g[:, 2] = 1.0
        return g

    @cached_property
    def _history_globals(self) -> bool:
        """The model's global features are exactly the history's (no side features)."""
        return self.side is None and tuple(self.glmix.global_names) == HISTORY_FEATURES

    def watch_probability(
        self,
        user_id: str,
        cand: np.ndarray,
        max_s: np.ndarray,
        avg_s: np.ndarray,
        rows: list[int] | np.ndarray,
    ) -> np.ndarray:
        """Eq. 18 of candidates (M, E) at catalogue ``rows`` given their Eq. 17 / Eq. 16
        scores against the user's history (NaN without one)."""
        side = (
            None
            if self.side is None
            else self.side.for_user(user_id, np.asarray(rows), self.erased_users)
        )
        g = glmix_global_features(self.glmix.global_names, max_s, avg_s, side)
        return self._probability(user_id, cand, g, rows)

    def _probability(
        self,
        user_id: str,
        cand: np.ndarray,
        g: np.ndarray | None,
        rows: list[int] | np.ndarray,
    ) -> np.ndarray:
        # Fixed effect plus the user's effect: refitted online when the service has seen
        # their impressions, else the offline one (none for an unknown user); plus each
        # video's effect when the model has them. No lock: a refit swaps the user's
        # effect array whole (scoring must not queue behind it).
        self.refit_if_queued(user_id)
        eta = self.online.serving_logit(user_id, cand, g)
        videos = self.online.videos
        if videos is not None:  # the same sum as OnlineEffects.logit, looked up by row
            rows = np.asarray(rows, dtype=np.int64)
            coef, moved = self.effect_rows.coefficients(rows)
            names = self.catalogue.ids
            moved_ids = [names[r] for r in rows[moved].tolist()] if len(moved) else []
            eta += videos.logit_from(coef, moved, moved_ids, g)
        return sigmoid(eta, out=eta)

    def refit_if_queued(self, user_id: str) -> bool:
        """Read your writes without waiting at ingest: a user whose refit is queued, or
        taken by a pass still under way, is refitted here first (their window alone: the
        bits the pass gives), so a score after an impression batch's 201 reflects it
        however long ``refit_wait_s`` let the batch wait. True when it refitted.

        Lock-free unless the user is queued: ``pending`` and the in-flight set are read
        in the order the refit pass fills them (in flight before leaving pending)."""
        if user_id not in self.online.pending and user_id not in self._inflight:
            return False
        window = self.online.windows.get(user_id)
        if window is None:
            return False
        effect = self.online.solve([(user_id, window)])[0]
        with self._refit_cv:  # a window replaced since is newer: its own refit is queued
            if self.online.windows.get(user_id) is window:
                self.online.effects[user_id] = effect
        return True

    # ------------------------------------------------------------------ writes

    def embed(self, frames: np.ndarray) -> np.ndarray:
        return self.embedder.embed(frames)

    def _known_payload(self, video_id: str, digest: str) -> bool:
        """True when ``video_id`` holds this payload already (a repeat); ConflictError when
        it holds another; False when the id is free (caller holds the lock)."""
        known = self.payload_hashes.get(video_id)
        if known == digest:
            return True
        if known is not None:
            raise ConflictError(
                f"video {video_id!r} was already ingested with different frames (or vector)"
            )
        if video_id in self.catalogue:
            raise ConflictError(f"video {video_id!r} is already in the catalogue")
        if video_id in self.removed_videos:
            raise ConflictError(f"video {video_id!r} was taken down; its id cannot be reused")
        return False

    def ingest(self, video_id: str, frames: np.ndarray) -> IngestResult:
        digest = payload_hash(frames)
        repeat = IngestResult(video_id, False, len(frames))
        with self._lock:
            if self._known_payload(video_id, digest):
                return repeat
        vector = self.embed(frames)  # outside the lock: the slow part
        if not np.isfinite(vector).all():
            # Finite frames can still overflow inside the model (values near the float32
            # limit): refuse before anything is written, so nothing bad is ever stored.
            raise UserInputError(
                "frames: the video's embedding is not finite (frame values too large?)"
            )
        with self._lock:
            if video_id in self.catalogue:  # lost a race with an identical request
                if self.payload_hashes.get(video_id) == digest:
                    return repeat
                raise ConflictError(
                    f"video {video_id!r} was already ingested with different frames (or vector)"
                )
            seq = self.store.insert_video(video_id, digest, vector, len(frames))
            if seq is None:  # another replica stored it first
                stored = self.store.get_video(video_id)
                if stored is not None and stored.payload_sha256 == digest:
                    self.payload_hashes[video_id] = digest
                    self.catalogue.append(video_id, stored.embedding)
                    self.ingested += 1  # counted here; the follower will find it applied
                    return repeat
                raise ConflictError(
                    f"video {video_id!r} was already ingested with different frames (or vector)"
                )
            # Durable from here on; now make it visible.
            self._log.mark("videos", seq)
            self.payload_hashes[video_id] = digest
            self.catalogue.append(video_id, vector)
            self.ingested += 1
        return IngestResult(video_id, True, len(frames))

    def take_down(self, video_id: str) -> bool:
        """Durably take a video down on every replica; False when it was down already.
        Unknown ids are NotFoundError (a typo must not pass for a takedown)."""
        with self._lock:
            if video_id in self.removed_videos:
                return False
            if video_id not in self.catalogue:
                raise NotFoundError(f"unknown video {video_id!r}")
            stamp = self.store.remove_video(video_id)
            self._log.mark("removals", stamp)
            self._apply_removal(Removal("video", video_id))
        return True

    def erase(self, user_id: str) -> None:
        """Durably delete everything stored about a user and forget them on every
        replica (idempotent: erasing an unknown or erased user erases nothing more)."""
        # The archive's rows first, under its lock (no archiving run moves the user's rows
        # out of the store meanwhile): acknowledged only once both are gone. Its lock is
        # taken before the state's, so writes never queue behind an archiving run (an
        # archiving run takes no state lock: no deadlock).
        with self.archive.locked() if self.archive is not None else nullcontext():
            if self.archive is not None:
                self.archive.erase_user(user_id)
            with self._lock:
                stamp = self.store.erase_user(user_id)
                self._log.mark("removals", stamp)
                self._apply_removal(Removal("user", user_id))

    def video_not_found(self, video_id: str) -> NotFoundError:
        """A request naming a video the catalogue does not serve: unknown, or taken down
        (a client's event can trail a takedown; the 404 says which)."""
        if video_id in self.removed_videos:
            return NotFoundError(f"video {video_id!r} was taken down")
        return NotFoundError(f"unknown video {video_id!r}")

    def record_watch(self, user_id: str, video_id: str, watch_seconds: float, at: str) -> bool:
        row = self.catalogue.row(video_id)
        if row is None:
            raise self.video_not_found(video_id)
        with self._lock:
            seq = self.store.insert_watch(Watch(user_id, video_id, watch_seconds, at))
            self._log.mark("watches", seq)
            self.watch_events += 1
            valid = watch_seconds >= self.threshold
            if valid:
                self.histories.add(user_id, row)
        return valid

    def record_impressions(self, impressions: list[Impression]) -> ImpressionsResult:
        """Durably append a batch, then learn from it: valid watches extend histories and
        each user's effect is refitted (waiting ``refit_wait_s`` for it; None: until it
        is). Retried ``event_id``s are acknowledged, not re-applied."""
        rows = []
        for imp in impressions:
            r = self.catalogue.row(imp.video_id)
            if r is None:
                raise self.video_not_found(imp.video_id)
            rows.append(r)
        with self._lock:
            seqs = self.store.insert_impressions(impressions)
            fresh = [q is not None and self._log.mark("impressions", q) for q in seqs]
            self._past_own_batch(seqs)  # before staging: a poll meanwhile reads past it
            run = [
                (imp.user_id, r, imp.watch_seconds >= self.threshold)
                for imp, r, new in zip(impressions, rows, fresh, strict=True)
                if new
            ]
            ticket = self._stage_run(run)
            accepted = len(run)
            self.impression_events += accepted
            self.unsnapshotted += accepted
        if self.refit_wait_s is None or self.refit_wait_s > 0:
            self.wait_refitted(self.refit_wait_s, ticket)
        return ImpressionsResult(
            accepted=accepted,
            duplicates=len(fresh) - accepted,
            valid_watches=sum(w for _, _, w in run),
            users_updated=len({u for u, _, _ in run}),
        )

    def _past_own_batch(self, stamps: list[Stamp | None]) -> None:
        """Move the follower's impressions horizon past a batch just written here when
        every impression between the horizon and the batch was applied here too, so the
        next poll does not read the batch back (a tenth of the server's CPU while
        ingesting). Caller holds the lock."""
        keys = [s.order for s in stamps if s is not None]
        if not keys:
            return
        lo, first = self._log.horizon["impressions"], min(keys)
        between = self.store.impression_seqs_between(lo, first)
        if between is not None and all(q in self._log.applied["impressions"] for q in between):
            self._log.advance({"impressions": max(keys) + 1})


class StateHolder:
    """Holds the current state; reloads swap the reference atomically."""

    def __init__(self) -> None:
        self.current: ServingState | None = None
        self.reload_lock = threading.Lock()
        self.reloads = 0
