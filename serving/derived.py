"""What a replica derives from the artifact and the store's log: the catalogue with its
uploads, watch histories, online user and video effects, takedowns and erasures.

A ``DerivedState`` loads the artifact, starts from the newest snapshot of this state
when the store has a usable one (``serving.log.snapshot``), and follows the log (``sync``):
rows apply in the order they were written across tables, so a replica that replayed the
log, one that started from a snapshot and the replica that wrote the rows hold the same
bits. ``serving.state.ServingState`` adds the service's reads and writes on top.

The math is ``recsys``'s: Eq. 16-17 (``recsys.scoring``) and GLMix with online user
and video effects (``recsys.online``).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.artifact import RecommenderArtifact, load_recommender
from recsys.glmix.model import GLMix
from recsys.online.refit import SOLVER
from recsys.online.users import OnlineConfig, OnlineEffects
from recsys.projection import fit_projection
from recsys.scoring import glmix_global_features
from serving.catalogue import Catalogue, VideoEffectRows, side_features
from serving.histories import Histories, Shown, run_similarity
from serving.log.archive import LogArchive, add_archived, archive_log
from serving.log.follower import Follower
from serving.log.snapshot import (
    Picture,
    SnapshotError,
    decode,
    encode,
    restore_plan,
    return_free_memory,
)
from serving.stores import Changes, Impression, Removal, StateStore, StoredVideo, Watch
from serving.stores.contract import TABLES, Stamp

log = logging.getLogger(__name__)

READ_ROWS = 65_536  # impressions a read (about: PostgreSQL cuts between transactions)
#: impressions staged at a time when a sync applies many (staging is row by row in its
#: numbers, so where a run is cut changes no bit)
RUN_ROWS = 8192


class DerivedState:
    """The artifact plus the log, as one replica holds it (see the module's docstring)."""

    def __init__(
        self,
        artifact: Path,
        store: StateStore,
        watch_threshold_s: float,
        online_config: OnlineConfig | None = None,
        from_snapshot: bool = True,
        archive: LogArchive | None = None,
        neighbour_cache_bytes: int = 64 << 20,
    ) -> None:
        t0 = time.perf_counter()
        loaded = load_recommender(artifact)
        self.artifact = artifact
        self.manifest = loaded.manifest
        self.version = loaded.version
        self.embedder = loaded.embedder
        self.feature_dim = self.embedder.feature_dim
        self.glmix: GLMix = (glm := loaded.glmix)
        self.catalogue = Catalogue(
            loaded.video_ids, loaded.embeddings, loaded.index, neighbour_cache_bytes
        )
        self.side = side_features(loaded)
        self.dim = self.catalogue.dim
        self.threshold = watch_threshold_s
        self._lock = threading.Lock()
        self._online_lock = threading.Lock()
        self.histories = self._offline_histories(loaded)
        # Per-video statistics use features against the history as the offline fit left
        # it: the same on every replica whatever order later events arrive in.
        self._frozen_features = self.glmix.has_video_effects and bool(self.glmix.global_names)
        if self._frozen_features:
            self.histories.freeze()
        self.store = store
        #: where impressions moved out of the store are (``serving.log.archive``)
        self.archive = archive
        #: the impressions horizon of the last snapshot this replica wrote (0: none)
        self.snapshot_covers = 0
        self.ingested = self.watch_events = self.impression_events = 0
        self.payload_hashes: dict[str, str] = {}
        #: stored rows that could not be replayed (skipped and logged, never fatal)
        self.skipped_rows = 0
        # Windows keep catalogue rows; a row's vector never changes, so a refit looks the
        # same vectors up (8 bytes a windowed impression instead of 8 (E + 1)).
        self.online = OnlineEffects(
            self.glmix, online_config or OnlineConfig(), vectors_of=self.catalogue.vectors
        )
        self.effect_rows = VideoEffectRows(
            self.catalogue, glm.video_rows, glm.video_coef, self.online.videos
        )
        #: ids taken down (never answered again) and users erased (offline data ignored)
        self.removed_videos: set[str] = set()
        self.erased_users: set[str] = set()
        self._log = Follower()
        # Refits run behind the log (``_refit_loop``): staging bumps a ticket, a pass of
        # the refitter takes every pending user and, once installed, covers the tickets
        # up to its start. Waiters (``refit_wait_s``; None = until refitted) sleep on it.
        self._refit_cv = threading.Condition(self._online_lock)
        self._staged_ticket = self._refitted_ticket = 0
        self._refitting = False
        #: users the refit pass under way took (set before they leave ``pending``)
        self._inflight: dict[str, None] = {}
        self._background = False  # refits inline until the state is loaded
        self.refit_wait_s: float | None = None
        #: effects installed by refits since start
        self.refits = 0
        #: rows applied since the last snapshot (or since start)
        self.unsnapshotted = 0
        #: where the state came from: "snapshot" (plus the log after it) or "log"
        self.started_from = "log"
        if from_snapshot:
            self._restore_snapshot()
        self.sync()  # replay every durable write (after the snapshot's, when there is one)
        # Pending refits (the tail's, a snapshot's) run behind readiness: a read refits
        # its own user first (``ServingState.refit_if_queued``).
        self._background = True
        with self._refit_cv:
            self._queue_refits()
        # The 2-D map: the artifact's projection (fitted at pipeline time), or one fitted
        # now on the catalogue for artifacts written before it existed.
        self.projection = loaded.projection or fit_projection(
            self.catalogue.emb[: self.catalogue.size_at_load]
        )
        #: users known at load (offline fit, histories), sorted for prefix search
        self.offline_users = sorted(set(self.glmix.user_ids) | self.histories.users())
        self.load_seconds = time.perf_counter() - t0
        return_free_memory()

    def _offline_histories(self, loaded: RecommenderArtifact) -> Histories:
        """The artifact's watch histories by catalogue row (videos it lacks skipped)."""
        hist = loaded.histories
        row = self.catalogue.row
        users, rows = [], []
        for u, v in zip(
            hist.column("user_id").to_pylist(), hist.column("video_id").to_pylist(), strict=True
        ):
            r = row(v)
            if r is not None:
                users.append(u)
                rows.append(r)
        return Histories.from_watches(users, np.asarray(rows, dtype=np.int64))

    # ------------------------------------------------------------------ the log

    def sync(self) -> int:
        """Apply the rows other writers (replicas) added since the last call, at most
        ``READ_ROWS`` impressions a read; returns how many. Cheap when nothing changed:
        the horizon and four indexed range queries that return no row."""
        applied, more = 0, True
        while more:
            since = dict(self._log.horizon)
            changes = self.store.changes(since, READ_ROWS)
            add_archived(changes, self.store, self.archive, since, READ_ROWS)
            with self._lock:
                n = self._apply_in_order(changes)
                self._log.advance(changes.horizon)
                self.unsnapshotted += n
            applied, more = applied + n, changes.more
        return applied

    def archive_old(self, keep: int) -> int:
        """Move the impressions the last snapshot written here covers, all but the
        ``keep`` newest, to the archive (``serving.log.archive``); returns how many moved."""
        if self.archive is None or not self.snapshot_covers:
            return 0
        return archive_log(self.store, self.archive, self.snapshot_covers, keep)

    def _apply_in_order(self, changes: Changes) -> int:
        """Apply new rows in the order they were written across the four tables (their
        commit-order key; within one key, table then sequence order), as the replica that
        wrote them did: an impression's features see the watches and takedowns before it
        and none after. Impressions are staged in runs and learnt from before anything
        that could change what they teach (an erasure). Caller holds the lock."""
        tables: tuple[list[tuple[Stamp, Any]], ...] = (
            changes.videos,
            changes.watches,
            changes.impressions,
            changes.removals,
        )
        rows = [
            (st.order, rank, st.seq, item)
            for rank, (name, table) in enumerate(zip(TABLES, tables, strict=True))
            for st, item in table
            if self._log.mark(name, st)
        ]
        rows.sort(key=lambda r: r[:3])
        this_pass = frozenset((TABLES[rank], seq) for _, rank, seq, _ in rows)
        run: list[Shown] = []
        for _, rank, _, item in rows:
            if rank == 2:
                self._queue_impression(run, item)
                if len(run) >= RUN_ROWS:  # a replay's staging memory stays bounded
                    self._stage_run(run)
                    run = []
                continue
            self._stage_run(run)  # its features see nothing written after it
            run = []
            if rank == 0:
                self._apply_video(item)
            elif rank == 1:
                self._apply_watch(item)
            else:
                self._apply_removal(item, this_pass, changes.horizon if changes.more else None)
        self._stage_run(run)
        return len(rows)

    def _apply_watch(self, w: Watch) -> None:
        self.watch_events += 1
        r = self.catalogue.row(w.video_id)
        if r is not None and w.watch_seconds >= self.threshold:
            self.histories.add(w.user_id, r)

    def _queue_impression(self, run: list[Shown], imp: Impression) -> None:
        r = self.catalogue.row(imp.video_id)
        if r is None:  # a video this artifact does not have, or one taken down
            self.skipped_rows += 1
            return
        self.impression_events += 1
        run.append((imp.user_id, r, imp.watch_seconds >= self.threshold))

    def _apply_events(self, watches: list[Watch], impressions: list[Impression]) -> None:
        """Take one user's stored watches and impressions in (caller holds the lock)."""
        for w in watches:
            self._apply_watch(w)
        run: list[Shown] = []
        for imp in impressions:
            self._queue_impression(run, imp)
        self._stage_run(run)

    def _apply_removal(
        self,
        removal: Removal,
        this_pass: frozenset[tuple[str, int]] = frozenset(),
        upto: dict[str, int] | None = None,
    ) -> None:
        """A takedown or an erasure, from this replica or another (caller holds the lock);
        ``this_pass``: the (table, seq) of rows a sync is applying in order right now;
        ``upto``: a cut read's horizon (rows at or above it come in later reads)."""
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
            self.effect_rows.refresh()

        # What the store still holds of the user was written after the erasure (a
        # concurrent write it did not delete): take it in again, whether this replica
        # had applied it already or not, so every replica ends where a restart would.
        # Rows the running sync (or a later read of it) has yet to reach come in their
        # own place, after this.
        def now(table: str, st: Stamp) -> bool:
            return (table, st.seq) not in this_pass and (upto is None or st.order < upto[table])

        again = self.store.user_rows(user)
        watches = [(st, w) for st, w in again.watches if now("watches", st)]
        imps = [(st, i) for st, i in again.impressions if now("impressions", st)]
        for st, _ in watches:
            self._log.mark("watches", st)
        for st, _ in imps:
            self._log.mark("impressions", st)
        self._apply_events([w for _, w in watches], [i for _, i in imps])

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

    # ------------------------------------------------------------------ snapshots

    def capture_snapshot(self) -> Picture:
        """What a snapshot holds, as shallow copies taken under the locks once no batch is
        half applied (its impressions staged, their refits not yet done); ``encode``
        builds the arrays outside the locks."""
        with self._lock, self._online_lock:
            videos = self.online.videos
            n = len(self.catalogue)
            meta = {
                "artifact_version": self.version,
                "horizon": dict(self._log.horizon),
                "applied": {t: sorted(a.items()) for t, a in self._log.applied.items()},
                "counters": [
                    self.ingested,
                    self.watch_events,
                    self.impression_events,
                    self.skipped_rows,
                ],
                "payload_hashes": dict(self.payload_hashes),
                "removed_videos": sorted(self.removed_videos),
                "erased_users": sorted(self.erased_users),
                "forgotten": sorted(self.online.forgotten),
                # effects not yet refitted to their windows (queued, or taken by a pass
                # that has not installed them yet): the restore refits them
                "pending": list({**self._inflight, **self.online.pending}),
                "solver": SOLVER,  # the online solver that fitted the effects
            }
            captured = Picture(
                meta,
                self.catalogue.ids[:n],
                self.catalogue.ids[self.catalogue.size_at_load : n],
                self.catalogue.emb[self.catalogue.size_at_load : n].copy(),
                self.histories.rows(),
                dict(self.online.effects),
                dict(self.online.windows),
                {} if videos is None else dict(videos.stats),
                {} if videos is None else dict(videos.shares),
            )
            self.unsnapshotted = 0
        return captured

    def write_snapshot(self) -> bool:
        """Capture, encode and store a snapshot; False when the store refused it (an
        erasure it has not applied came first: the next one will have it)."""
        c = self.capture_snapshot()
        body = encode(c, self.glmix.random_dim, self.glmix.video_dim)
        applied = [seq for seq, _ in c.meta["applied"]["removals"]]
        saved = self.store.save_snapshot(
            self.version, body, int(c.meta["horizon"]["removals"]), applied
        )
        if saved:
            self.snapshot_covers = int(c.meta["horizon"]["impressions"])
        return saved

    def _restore_snapshot(self) -> None:
        """Start from the newest snapshot of this artifact when there is a usable one;
        else (none, damaged, foreign) from the artifact alone, with a log line."""
        body = self.store.latest_snapshot(self.version)
        if body is None:
            return
        try:
            d = decode(body, self.version)
            plan = restore_plan(d, list(self.catalogue.ids), self.dim, self.online.config.window)
        except SnapshotError as exc:
            log.warning("state store: snapshot not used (%s); replaying the whole log", exc)
            return
        for video_id, vector in zip(plan.uploads, plan.upload_emb, strict=True):
            self.catalogue.append(video_id, vector)
        h = d.header
        self.removed_videos = set(h["removed_videos"])
        for video_id in h["removed_videos"]:
            self.catalogue.remove(video_id)
        self.payload_hashes = dict(h["payload_hashes"])
        self.erased_users = set(h["erased_users"])
        self.histories.restore(plan.histories, self.erased_users, checked=True)
        self.online.restore(plan.effects, plan.windows, set(h["forgotten"]))
        self.online.pending = dict.fromkeys(h.get("pending", []))
        if (solver := h.get("solver", 1)) != SOLVER:  # its effects' last bits differ: refit
            log.warning("state store: snapshot effects by solver %s: refitting them", solver)
            self.online.pending.update(dict.fromkeys(plan.windows))
        if self.online.videos is not None:
            self.online.videos.stats, self.online.videos.shares = plan.video_stats, plan.shares
            self.effect_rows.reset(plan.video_stats)
        self.ingested, self.watch_events, self.impression_events, self.skipped_rows = h["counters"]
        self._log.horizon = {t: int(k) for t, k in h["horizon"].items()}
        self._log.applied = {t: {int(q): int(o) for q, o in a} for t, a in h["applied"].items()}
        self.started_from = "snapshot"

    # ------------------------------------------------------------------ online GLMix

    def _stage_run(self, run: list[Shown]) -> int:
        """Take new impressions in, in the order shown (under the state lock): each one's
        global features as they were when it was shown, before its own watch joins the
        history (as the offline fit computes them); the histories; then the rows join
        their users' windows and the per-video statistics, and the users' effects are
        queued for a refit (``_refit_loop``). Returns the run's ticket (``wait_refitted``)."""
        if not run:
            return 0
        users = [u for u, _, _ in run]
        rows = np.fromiter((r for _, r, _ in run), np.int64, len(run))
        names = self.glmix.global_names
        g = frozen = None
        if names:  # an Eq. 18-only model has no global features: no similarity
            vectors = self.catalogue.vectors
            side = None if self.side is None else self.side.rows(users, rows, self.erased_users)
            g = glmix_global_features(names, *run_similarity(self.histories, run, vectors), side)
            if self._frozen_features:
                sims = run_similarity(self.histories, run, vectors, frozen=True)
                frozen = glmix_global_features(names, *sims, side)
        else:
            for user, row, watched in run:
                if watched:
                    self.histories.add(user, row)
        labels = np.fromiter((1.0 if w else 0.0 for _, _, w in run), np.float64, len(run))
        ids = (
            [self.catalogue.ids[r] for r in rows.tolist()] if self.glmix.has_video_effects else None
        )
        with self._refit_cv:
            self.online.stage(users, self.catalogue.vectors(rows), labels, g, ids, frozen, rows)
            changed = self.effect_rows.mark(rows) if ids is not None else []
            ticket = self._queue_refits()
        self.effect_rows.write(changed)  # solved outside the state's lock (the refits wait on it)
        return ticket

    def _queue_refits(self) -> int:
        """A new ticket for what is pending, and the refit loop started when it is not
        running (caller holds ``_refit_cv``)."""
        self._staged_ticket += 1
        if self._background and not self._refitting:
            self._refitting = True
            threading.Thread(target=self._refit_loop, name="online-refit", daemon=True).start()
        return self._staged_ticket

    def _refit_loop(self) -> None:
        """Refit pending users until none is left: a pass takes them all, solves outside
        the lock (staging goes on meanwhile) and installs; a user staged again during a
        pass gets the pass's effect now and an exact one in the next pass."""
        while True:
            with self._refit_cv:
                # In flight before they leave pending: a lock-free reader sees them in one.
                self._inflight = dict(self.online.pending)
                jobs = self.online.take_pending()
                upto = self._staged_ticket
                if not jobs:
                    self._refitting = False
                    self._refitted_ticket = upto
                    self._refit_cv.notify_all()
                    return
            try:
                effects = self.online.solve(jobs)
            except Exception:  # never lose the users: they stay pending for the next pass
                log.exception("online refit failed; will retry")
                with self._refit_cv:
                    for user, _ in jobs:
                        self.online.pending.setdefault(user, None)
                    self._inflight = {}
                    self._refitting = False
                    self._refitted_ticket = upto  # release waiters: the next batch retries
                    self._refit_cv.notify_all()
                return
            with self._refit_cv:
                self.refits += self.online.install(jobs, effects)
                self._inflight = {}
                self._refitted_ticket = upto
                self._refit_cv.notify_all()

    def wait_refitted(self, timeout_s: float | None = None, ticket: int | None = None) -> bool:
        """Wait until every impression staged so far (or up to ``ticket``) moved its
        user's effect (False on timeout)."""
        with self._refit_cv:
            ticket = self._staged_ticket if ticket is None else ticket
            return self._refit_cv.wait_for(lambda: self._refitted_ticket >= ticket, timeout_s)
