"""The loaded artifact plus everything written since (the read side: ``serving.queries``).

One ``ServingState`` is immutable in what it was loaded from and grows only by appends
(new videos, new watches, online user effects) under a lock. A reload builds a new state
and swaps the reference in ``StateHolder``; requests that already hold the old state
finish on it. Every write is durable in the store before it is applied here, and the
state follows the store's log (``sync``), so replicas converge.

The math is ``recsys``'s: Eq. 16-17 (``recsys.scoring``) and GLMix with online user
effects (``recsys.online.users``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.artifact import load_recommender
from recsys.errors import UserInputError
from recsys.glmix.model import GLMix
from recsys.online.users import OnlineConfig, OnlineEffects
from recsys.projection import fit_projection
from recsys.scoring import glmix_global_features, history_similarity
from serving.catalogue import Catalogue
from serving.errors import ConflictError, NotFoundError
from serving.histories import Histories
from serving.replication import Follower
from serving.stores import Impression, Removal, StateStore, StoredVideo, Watch

log = logging.getLogger(__name__)

#: a user's impressions of one batch: store rows, labels, global features at each, and
#: the global features against the user's offline history (per-video effects only)
_Staged = tuple[list[int], list[float], list[np.ndarray | None], list[np.ndarray | None]]


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


class ServingState:
    def __init__(
        self,
        artifact: Path,
        store: StateStore,
        watch_threshold_s: float,
        online_config: OnlineConfig | None = None,
    ) -> None:
        t0 = time.perf_counter()
        loaded = load_recommender(artifact)
        self.artifact = artifact
        self.manifest = loaded.manifest
        self.version = loaded.version
        self.embedder = loaded.embedder
        self.feature_dim = self.embedder.feature_dim
        self.glmix: GLMix = loaded.glmix
        try:  # a model whose global features this version cannot build is refused at load
            glmix_global_features(self.glmix.global_names, np.zeros(1), np.zeros(1))
        except ValueError as exc:
            raise UserInputError(str(exc)) from None
        self.catalogue = Catalogue(loaded.video_ids, loaded.embeddings, loaded.index)
        self.dim = self.catalogue.dim
        self.threshold = watch_threshold_s
        self._lock = threading.Lock()
        self._online_lock = threading.Lock()
        self.histories = Histories()
        hist = loaded.histories
        for u, v in zip(
            hist.column("user_id").to_pylist(), hist.column("video_id").to_pylist(), strict=True
        ):
            r = self.catalogue.row(v)
            if r is not None:
                self.histories.add(u, r)
        # Per-video statistics use features against the history as the offline fit left
        # it: the same on every replica whatever order later events arrive in.
        self._frozen_features = self.glmix.has_video_effects and bool(self.glmix.global_names)
        if self._frozen_features:
            self.histories.freeze()
        self.store = store
        self.ingested = self.watch_events = self.impression_events = 0
        self.payload_hashes: dict[str, str] = {}
        #: stored rows that could not be replayed (skipped and logged, never fatal)
        self.skipped_rows = 0
        self.online = OnlineEffects(self.glmix, online_config or OnlineConfig())
        #: ids taken down (never answered again) and users erased (offline data ignored)
        self.removed_videos: set[str] = set()
        self.erased_users: set[str] = set()
        self._log = Follower()
        self.sync()  # replay every durable write
        # The 2-D map: the artifact's projection (fitted at pipeline time), or one fitted
        # now on the catalogue for artifacts written before it existed.
        self.projection = loaded.projection or fit_projection(
            self.catalogue.emb[: self.catalogue.size_at_load]
        )
        #: users known at load (offline fit, histories), sorted for prefix search
        self.offline_users = sorted(set(self.glmix.user_ids) | self.histories.users())
        self.load_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ the log

    def sync(self) -> int:
        """Apply the rows other writers (replicas) added since the last call; returns how
        many. Cheap when nothing changed: the horizon and four indexed range queries
        that return no row."""
        changes = self.store.changes(dict(self._log.horizon))
        applied = 0
        with self._lock:
            for seq, sv in changes.videos:
                if self._log.mark("videos", seq):
                    applied += 1
                    self._apply_video(sv)
            fresh_w = [w for seq, w in changes.watches if self._log.mark("watches", seq)]
            fresh_i = [i for seq, i in changes.impressions if self._log.mark("impressions", seq)]
            self._apply_events(fresh_w, fresh_i)
            applied += len(fresh_w) + len(fresh_i)
            for seq, removal in changes.removals:
                if self._log.mark("removals", seq):
                    applied += 1
                    self._apply_removal(removal)
            self._log.advance(changes.horizon)
        return applied

    def _apply_events(self, watches: list[Watch], impressions: list[Impression]) -> None:
        """Take stored watches and impressions in (caller holds the lock)."""
        for w in watches:
            self.watch_events += 1
            r = self.catalogue.row(w.video_id)
            if r is not None and w.watch_seconds >= self.threshold:
                self.histories.add(w.user_id, r)
        by_user: dict[str, _Staged] = {}
        for imp in impressions:
            r = self.catalogue.row(imp.video_id)
            if r is None:  # a video this artifact does not have, or one taken down
                self.skipped_rows += 1
                continue
            self.impression_events += 1
            self._stage(by_user, imp.user_id, r, imp.watch_seconds >= self.threshold)
        if by_user:
            self._observe_all(by_user)

    def _apply_removal(self, removal: Removal) -> None:
        """A takedown or an erasure, from this replica or another (caller holds the lock)."""
        if removal.kind == "video":
            self.removed_videos.add(removal.target)
            row = self.catalogue.row(removal.target)
            if self.catalogue.remove(removal.target) and row is not None:
                self.histories.drop_row(row)
                self.payload_hashes.pop(removal.target, None)
            return
        user = removal.target
        self.erased_users.add(user)
        self.histories.forget(user)
        with self._online_lock:
            self.online.forget(user)
        # What the store still holds of the user was written after the erasure (a
        # concurrent write it did not delete): take it in again, whether this replica
        # had applied it already or not, so every replica ends where a restart would.
        again = self.store.user_rows(user)
        for seq, _ in again.watches:
            self._log.mark("watches", seq)
        for seq, _ in again.impressions:
            self._log.mark("impressions", seq)
        self._apply_events([w for _, w in again.watches], [i for _, i in again.impressions])

    def _apply_video(self, sv: StoredVideo) -> None:
        if sv.video_id in self.removed_videos:  # ingested elsewhere as it was taken down
            return
        if self.payload_hashes.get(sv.video_id) == sv.payload_sha256:
            return  # this replica lost an ingest race for it and took the winner's row in
        emb_ok = sv.embedding.shape == (self.dim,) and bool(np.isfinite(sv.embedding).all())
        if not emb_ok or sv.video_id in self.catalogue:
            self.skipped_rows += 1
            log.warning(
                "state store: skipped video %r (%s)",
                sv.video_id,
                "embedding not a finite vector of the artifact's size"
                if not emb_ok
                else "already in the catalogue",
            )
            return
        self.catalogue.append(sv.video_id, sv.embedding)
        self.payload_hashes[sv.video_id] = sv.payload_sha256
        self.ingested += 1

    # ------------------------------------------------------------------ histories

    @property
    def num_videos(self) -> int:
        return len(self.catalogue)

    @property
    def catalogue_size(self) -> int:
        return self.catalogue.size_at_load

    def has_video(self, video_id: str) -> bool:
        return video_id in self.catalogue

    def history_rows(self, user: str) -> list[int]:
        return list(self.histories.get(user) or ())

    def history_ids(self, user_id: str) -> list[str]:
        """The user's valid watches, in the order they were first watched."""
        return [self.catalogue.ids[r] for r in self.histories.get(user_id) or ()]

    def users_seen_online(self) -> set[str]:
        """Users first seen by this service (histories or online effects)."""
        return self.histories.users() | set(self.online.effects)

    def known_user(self, user_id: str) -> bool:
        offline = user_id in self.glmix.user_index and user_id not in self.erased_users
        return offline or user_id in self.online.effects

    # ------------------------------------------------------------------ scoring

    def similarity(self, user_id: str, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 17 / Eq. 16 of candidates (M, E) against the user's current history
        (NaN without one)."""
        hist = self.histories.get(user_id)
        return history_similarity(cand, self.catalogue.vectors(hist or []))

    def watch_probability(
        self,
        user_id: str,
        cand: np.ndarray,
        max_s: np.ndarray,
        avg_s: np.ndarray,
        rows: list[int] | np.ndarray,
    ) -> np.ndarray:
        # Fixed effect plus the user's effect: refitted online when the service has seen
        # their impressions, else the offline one (none for an unknown user); plus each
        # video's effect when the model has them. No lock: a refit swaps the user's
        # effect array whole (scoring must not queue behind it).
        g = glmix_global_features(self.glmix.global_names, max_s, avg_s)
        ids = None
        if self.glmix.has_video_effects:
            ids = [self.catalogue.ids[r] for r in np.asarray(rows, dtype=np.int64).tolist()]
        return self.online.probability(user_id, cand, g, ids)

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
            raise ConflictError(f"video {video_id!r} was already ingested with different frames")
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
                    f"video {video_id!r} was already ingested with different frames"
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
                    f"video {video_id!r} was already ingested with different frames"
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
        with self._lock:
            stamp = self.store.erase_user(user_id)
            self._log.mark("removals", stamp)
            self._apply_removal(Removal("user", user_id))

    def record_watch(self, user_id: str, video_id: str, watch_seconds: float, at: str) -> bool:
        row = self.catalogue.row(video_id)
        if row is None:
            raise NotFoundError(f"unknown video {video_id!r}")
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
        each user's effect is refitted. Retried ``event_id``s are acknowledged, not re-applied."""
        rows = []
        for imp in impressions:
            r = self.catalogue.row(imp.video_id)
            if r is None:
                raise NotFoundError(f"unknown video {imp.video_id!r}")
            rows.append(r)
        with self._lock:
            seqs = self.store.insert_impressions(impressions)
            fresh = [q is not None and self._log.mark("impressions", q) for q in seqs]
            by_user: dict[str, _Staged] = {}
            valid = 0
            for imp, r, new in zip(impressions, rows, fresh, strict=True):
                if not new:
                    continue
                watched = imp.watch_seconds >= self.threshold
                valid += watched
                self._stage(by_user, imp.user_id, r, watched)
            self.impression_events += sum(fresh)
        self._observe_all(by_user)
        return ImpressionsResult(
            accepted=sum(fresh),
            duplicates=len(fresh) - sum(fresh),
            valid_watches=valid,
            users_updated=len(by_user),
        )

    # ------------------------------------------------------------------ online GLMix

    def _stage(self, by_user: dict[str, _Staged], user: str, row: int, watched: bool) -> None:
        """Take one new impression in (under the state lock): its global features as they
        were when it was shown, before its own watch joins the history (as the offline
        fit computes them); then the history; the refit comes after the batch."""
        rs, ys, gs, fs = by_user.setdefault(user, ([], [], [], []))
        names = self.glmix.global_names
        # An Eq. 18-only model has no global features: no similarity to compute.
        vec = self.catalogue.vectors([row])
        sims = self.similarity(user, vec) if names else None
        gs.append(glmix_global_features(names, *sims) if sims is not None else None)
        frozen = None
        if self._frozen_features:
            offline = self.catalogue.vectors(list(self.histories.offline(user)))
            frozen = glmix_global_features(names, *history_similarity(vec, offline))
        fs.append(frozen)
        if watched:
            self.histories.add(user, row)
        rs.append(row)
        ys.append(1.0 if watched else 0.0)

    def _observe_all(self, by_user: dict[str, _Staged]) -> None:
        """Refit each staged user's effect from their new impressions."""
        with self._online_lock:
            for user, (rows, labels, feats, frozen) in by_user.items():
                g = _stacked(feats)
                ids = None
                if self.glmix.has_video_effects:
                    ids = [self.catalogue.ids[r] for r in rows]
                self.online.observe(
                    user,
                    self.catalogue.vectors(rows),
                    np.asarray(labels),
                    g,
                    ids,
                    _stacked(frozen),
                )


def _stacked(feats: list[np.ndarray | None]) -> np.ndarray | None:
    """The rows' global features as one (n, G) array (None without them)."""
    if not feats or feats[0] is None:
        return None
    return np.concatenate([f for f in feats if f is not None])


class StateHolder:
    """Holds the current state; reloads swap the reference atomically."""

    def __init__(self) -> None:
        self.current: ServingState | None = None
        self.reload_lock = threading.Lock()
        self.reloads = 0
