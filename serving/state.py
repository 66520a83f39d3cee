"""The loaded artifact plus everything ingested since, and the scoring logic on top.

One ``ServingState`` is immutable in what it was loaded from and grows only by
appends (new videos, new watches) under a lock. A reload builds a new state and
swaps the reference in ``StateHolder``; requests that already hold the old state
finish on it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from recsys.artifact import load_embedder, load_glmix, read_embeddings, read_manifest
from recsys.errors import UserInputError
from recsys.glmix import GLMix
from recsys.index import IndexConfig, VideoIndex
from recsys.online import OnlineConfig, OnlineEffects
from recsys.projection import fit_projection, map_sample, project
from recsys.scoring import glmix_global_features
from serving.store import Impression, StateStore, StoredVideo, Watch

log = logging.getLogger(__name__)

#: a user's impressions of one batch: store rows, labels, global features at each
_Staged = tuple[list[int], list[float], list[np.ndarray | None]]


class ConflictError(Exception):
    """A write that contradicts what is stored (HTTP 409)."""


class NotFoundError(Exception):
    """An id the service does not know (HTTP 404)."""


@dataclass(frozen=True)
class IngestResult:
    video_id: str
    created: bool
    num_frames: int


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
        self.artifact = artifact
        self.manifest = read_manifest(artifact, verify=True)
        self.version = (
            str(self.manifest.get("created_at", ""))
            + ":"
            + str(self.manifest["files"].get("embedder.pt", ""))[:12]
        )
        self.embedder = load_embedder(artifact)
        self.feature_dim = self.embedder.config.feature_dim
        glm = load_glmix(artifact, "glmix")
        if glm is None:
            raise UserInputError(
                f"{artifact}: no GLMix model (run recsys pipeline or recsys fit-glmix)"
            )
        self.glmix: GLMix = glm
        ids, emb = read_embeddings(artifact / "embeddings.parquet")
        self.dim = emb.shape[1]
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._online_lock = threading.Lock()
        self._ids: list[str] = list(ids)
        self._rows: dict[str, int] = {v: i for i, v in enumerate(ids)}
        self._emb = np.zeros((max(2 * len(ids), 1024), self.dim), dtype=np.float32)
        self._emb[: len(ids)] = emb
        self.catalogue_size = len(ids)
        icfg = IndexConfig(**json.loads((artifact / "index.json").read_text()))
        self.index = VideoIndex.from_bytes((artifact / "index.faiss").read_bytes(), ids, icfg)
        self.threshold = watch_threshold_s
        self._history: dict[str, list[int]] = {}
        self._history_set: dict[str, set[int]] = {}
        hist = pq.read_table(artifact / "histories.parquet", columns=["user_id", "video_id"])
        for u, v in zip(
            hist.column("user_id").to_pylist(), hist.column("video_id").to_pylist(), strict=True
        ):
            r = self._rows.get(v)
            if r is not None:
                self._add_history(u, r)
        self.store = store
        self.ingested = 0
        self.watch_events = 0
        self.impression_events = 0
        self.payload_hashes: dict[str, str] = {}
        #: stored rows that could not be replayed (skipped and logged, never fatal)
        self.skipped_rows = 0
        self.online = OnlineEffects(self.glmix, online_config or OnlineConfig())
        try:  # a model whose global features this version cannot build is refused at load
            glmix_global_features(self.glmix.global_names, np.zeros(1), np.zeros(1))
        except ValueError as exc:
            raise UserInputError(str(exc)) from None
        # Follow the store's log: the newest sequence number seen per table, and the
        # numbers applied within the look-back window (rows that commit out of order).
        self._cursor = {"videos": 0, "watches": 0, "impressions": 0}
        self._applied: dict[str, set[int]] = {k: set() for k in self._cursor}
        self.sync()  # replay every durable write
        # The 2-D map: the artifact's projection (fitted at pipeline time), or one fitted
        # now on the catalogue for artifacts written before it existed.
        proj_path = artifact / "projection.json"
        self.projection = (
            json.loads(proj_path.read_text())
            if proj_path.exists()
            else fit_projection(self._emb[: self.catalogue_size])
        )
        self._offline_users = sorted(set(self.glmix.user_ids) | set(self._history))
        self.load_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ the log

    def _mark(self, table: str, seq: int) -> bool:
        """Record ``seq`` as applied; False when it was applied before."""
        applied = self._applied[table]
        if seq in applied or seq <= self._cursor[table] - self.store.lookback - 1:
            return False
        applied.add(seq)
        if seq > self._cursor[table]:
            self._cursor[table] = seq
        return True

    def sync(self) -> int:
        """Apply the rows other writers (replicas) added since the last call; returns how
        many. Cheap when nothing changed: three indexed range queries."""
        lb = self.store.lookback
        changes = self.store.changes(
            *(max(0, self._cursor[t] - lb) for t in ("videos", "watches", "impressions"))
        )
        if not changes:
            return 0
        applied = 0
        with self._lock:
            for seq, sv in changes.videos:
                if self._mark("videos", seq):
                    applied += 1
                    self._apply_video(sv)
            for seq, w in changes.watches:
                if self._mark("watches", seq):
                    applied += 1
                    self.watch_events += 1
                    r = self._rows.get(w.video_id)
                    if r is not None and w.watch_seconds >= self.threshold:
                        self._add_history(w.user_id, r)
            by_user: dict[str, _Staged] = {}
            for seq, imp in changes.impressions:
                if not self._mark("impressions", seq):
                    continue
                applied += 1
                r = self._rows.get(imp.video_id)
                if r is None:  # a video that this artifact does not have
                    self.skipped_rows += 1
                    continue
                self.impression_events += 1
                self._stage(by_user, imp.user_id, r, imp.watch_seconds >= self.threshold)
            for t in self._applied:  # forget numbers below the look-back window
                floor = self._cursor[t] - lb
                if len(self._applied[t]) > 2 * lb + 64:
                    self._applied[t] = {x for x in self._applied[t] if x > floor}
            if by_user:
                with self._online_lock:
                    for user, (rs, ys, gs) in by_user.items():
                        self._observe(user, rs, ys, gs)
        return applied

    def _apply_video(self, sv: StoredVideo) -> None:
        emb_ok = sv.embedding.shape == (self.dim,) and bool(np.isfinite(sv.embedding).all())
        if not emb_ok or sv.video_id in self._rows:
            self.skipped_rows += 1
            log.warning(
                "state store: skipped video %r (%s)",
                sv.video_id,
                "embedding not a finite vector of the artifact's size"
                if not emb_ok
                else "already in the catalogue",
            )
            return
        self._append_video(sv.video_id, sv.embedding)
        self.payload_hashes[sv.video_id] = sv.payload_sha256
        self.ingested += 1

    # ------------------------------------------------------------------ internals

    def _add_history(self, user: str, row: int) -> None:
        seen = self._history_set.setdefault(user, set())
        if row not in seen:
            seen.add(row)
            self._history.setdefault(user, []).append(row)

    def _append_video(self, video_id: str, vector: np.ndarray) -> None:
        n = len(self._ids)
        if n >= len(self._emb):  # grow by doubling; readers keep a valid old array
            grown = np.zeros((2 * len(self._emb), self.dim), dtype=np.float32)
            grown[:n] = self._emb[:n]
            self._emb = grown
        self._emb[n] = vector
        with self._index_lock:
            self.index.add([video_id], vector[None, :])
        self._rows[video_id] = n
        self._ids.append(video_id)

    @property
    def num_videos(self) -> int:
        return len(self._ids)

    def has_video(self, video_id: str) -> bool:
        return video_id in self._rows

    def history_rows(self, user: str) -> list[int]:
        return list(self._history.get(user, ()))

    # ------------------------------------------------------------------ reads

    def score(self, user_id: str, video_ids: list[str]) -> dict[str, Any]:
        rows = np.array([self._rows.get(v, -1) for v in video_ids], dtype=np.int64)
        known = rows >= 0
        emb = self._emb
        cand = emb[rows[known]]
        hist = self._history.get(user_id)
        n = len(cand)
        max_s: list[float | None] = [None] * n
        avg_s: list[float | None] = [None] * n
        mx = av = np.full(n, np.nan)
        if hist:
            sims = cand @ emb[np.asarray(hist)].T
            mx, av = sims.max(1), sims.mean(1)
            max_s, avg_s = mx.tolist(), av.tolist()
        probs = self._watch_probability(user_id, cand, mx, av).tolist()
        out: list[dict[str, Any]] = []
        j = 0
        for v, ok in zip(video_ids, known.tolist(), strict=True):
            if ok:
                out.append(
                    {
                        "video_id": v,
                        "max_similarity": max_s[j],
                        "avg_similarity": avg_s[j],
                        "watch_probability": probs[j],
                    }
                )
                j += 1
            else:
                out.append({"video_id": v, "error": "unknown video"})
        return {
            "user_id": user_id,
            "known_user": self.known_user(user_id),
            "history_size": len(hist) if hist else 0,
            "scores": out,
        }

    def _watch_probability(
        self,
        user_id: str,
        cand: np.ndarray,
        max_s: np.ndarray | None = None,
        avg_s: np.ndarray | None = None,
    ) -> np.ndarray:
        # Fixed effect plus the user's effect: refitted online when the service has seen
        # their impressions, else the offline one (none for an unknown user). No lock:
        # a refit swaps the user's effect array whole (scoring must not queue behind it).
        # max_s / avg_s: Eq. 17 / 16 of the candidates when the caller has them.
        if max_s is not None and avg_s is not None:
            g = glmix_global_features(self.glmix.global_names, max_s, avg_s)
        else:
            g = self._global_features(user_id, cand)
        eta = self.online.logit(user_id, cand, g)
        return 0.5 * (1.0 + np.tanh(0.5 * eta))

    def _global_features(self, user_id: str, cand: np.ndarray) -> np.ndarray | None:
        """The GLMix global features of candidates (M, E) for this user now (None when the
        model has none): their similarity to the user's current history."""
        names = self.glmix.global_names
        if not names:
            return None
        hist = self._history.get(user_id)
        if hist:
            sims = cand @ self._emb[np.asarray(hist)].T
            return glmix_global_features(names, sims.max(1), sims.mean(1))
        nan = np.full(len(cand), np.nan)
        return glmix_global_features(names, nan, nan)

    def _stage(self, by_user: dict[str, _Staged], user: str, row: int, watched: bool) -> None:
        """Take one new impression in (under the state lock): its global features as they
        were when it was shown, before its own watch joins the history (as the offline
        fit computes them); then the history; the refit comes after the batch."""
        rs, ys, gs = by_user.setdefault(user, ([], [], []))
        gs.append(self._global_features(user, self._emb[row][None, :]))
        if watched:
            self._add_history(user, row)
        rs.append(row)
        ys.append(1.0 if watched else 0.0)

    def _observe(
        self, user: str, rows: list[int], labels: list[float], feats: list[np.ndarray | None]
    ) -> None:
        g = None
        if feats[0] is not None:
            g = np.concatenate([f for f in feats if f is not None])
        self.online.observe(user, self._emb[np.asarray(rows)], np.asarray(labels), g)

    def known_user(self, user_id: str) -> bool:
        return user_id in self.glmix.user_index or user_id in self.online.effects

    def similar(self, video_id: str, k: int) -> list[dict[str, Any]]:
        row = self._rows.get(video_id)
        if row is None:
            raise NotFoundError(f"unknown video {video_id!r}")
        with self._index_lock:
            ids, scores = self.index.search(self._emb[row][None, :], k + 1)
        return [
            {"video_id": v, "similarity": float(s)}
            for v, s in zip(ids[0], scores[0].tolist(), strict=False)
            if v != video_id
        ][:k]

    def recommend(self, user_id: str, k: int, seeds: int) -> list[dict[str, Any]]:
        hist = self._history.get(user_id, [])
        watched = set(hist)
        if hist:
            q = self._emb[np.asarray(hist[-seeds:])]
            with self._index_lock:
                ids, _ = self.index.search(q, min(self.num_videos, 4 * k + len(hist)))
            cand_rows = sorted({self._rows[v] for row in ids for v in row} - watched)
        else:
            # No history: rank the most recent part of the catalogue by watch probability.
            cand_rows = list(range(max(0, self.num_videos - 20_000), self.num_videos))
        if not cand_rows:
            return []
        cand = self._emb[np.asarray(cand_rows)]
        mx = av = np.full(len(cand), np.nan)
        if hist:
            sims = cand @ self._emb[np.asarray(hist)].T  # (M, H)
            mx, av = sims.max(1), sims.mean(1)
        p = self._watch_probability(user_id, cand, mx, av)
        top = np.argsort(-p, kind="stable")[:k]
        result = []
        for i in top.tolist():
            item: dict[str, Any] = {
                "video_id": self._ids[cand_rows[i]],
                "watch_probability": float(p[i]),
            }
            if hist:
                item["max_similarity"] = float(mx[i])
                item["avg_similarity"] = float(av[i])
            result.append(item)
        return result

    # ------------------------------------------------------------------ explorer

    def history_ids(self, user_id: str) -> list[str]:
        """The user's valid watches, in the order they were first watched."""
        return [self._ids[r] for r in self._history.get(user_id, ())]

    def search_users(self, prefix: str, limit: int) -> list[str]:
        """Known users (offline fit, histories, online effects) whose id starts with ``prefix``."""
        i = bisect.bisect_left(self._offline_users, prefix)
        found: list[str] = []
        for u in self._offline_users[i:]:
            if not u.startswith(prefix) or len(found) >= limit:
                break
            found.append(u)
        # users first seen by this service (few): checked one by one
        extra = {u for u in self._history if u.startswith(prefix)}
        extra |= {u for u in self.online.effects if u.startswith(prefix)}
        return sorted(set(found) | extra)[:limit]

    def positions(self, video_ids: list[str]) -> list[dict[str, Any]]:
        """Map coordinates of the given videos (unknown ids are left out)."""
        rows = [self._rows[v] for v in video_ids if v in self._rows]
        return self._points(np.asarray(rows, dtype=np.int64))

    def map_points(self, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` catalogue videos, evenly sampled, plus every ingested one."""
        sample = map_sample(self.catalogue_size, limit)
        fresh = np.arange(self.catalogue_size, self.num_videos, dtype=np.int64)[-limit:]
        return self._points(np.concatenate([sample, fresh]))

    def _points(self, rows: np.ndarray) -> list[dict[str, Any]]:
        if len(rows) == 0:
            return []
        xy = project(self._emb[rows], self.projection)
        return [
            {
                "video_id": self._ids[r],
                "x": round(float(x), 5),
                "y": round(float(y), 5),
                "cold_start": r >= self.catalogue_size,
            }
            for r, (x, y) in zip(rows.tolist(), xy.tolist(), strict=True)
        ]

    # ------------------------------------------------------------------ writes

    def embed(self, frames: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[None]
            return self.embedder(x).numpy()[0].astype(np.float32)

    def ingest(self, video_id: str, frames: np.ndarray) -> IngestResult:
        digest = payload_hash(frames)
        with self._lock:
            known_hash = self.payload_hashes.get(video_id)
            if known_hash is not None:
                if known_hash == digest:
                    return IngestResult(video_id, False, len(frames))
                raise ConflictError(
                    f"video {video_id!r} was already ingested with different frames"
                )
            if video_id in self._rows:
                raise ConflictError(f"video {video_id!r} is already in the catalogue")
        vector = self.embed(frames)  # outside the lock: the slow part
        if not np.isfinite(vector).all():
            # Finite frames can still overflow inside the model (values near the float32
            # limit): refuse before anything is written, so nothing bad is ever stored.
            raise UserInputError(
                "frames: the video's embedding is not finite (frame values too large?)"
            )
        with self._lock:
            if video_id in self._rows:  # lost a race with an identical request
                if self.payload_hashes.get(video_id) == digest:
                    return IngestResult(video_id, False, len(frames))
                raise ConflictError(
                    f"video {video_id!r} was already ingested with different frames"
                )
            seq = self.store.insert_video(video_id, digest, vector, len(frames))
            if seq is None:
                stored = self.store.get_video(video_id)
                if stored is not None and stored.payload_sha256 == digest:
                    self.payload_hashes[video_id] = digest
                    self._append_video(video_id, stored.embedding)
                    return IngestResult(video_id, False, len(frames))
                raise ConflictError(
                    f"video {video_id!r} was already ingested with different frames"
                )
            # Durable from here on; now make it visible.
            self._mark("videos", seq)
            self.payload_hashes[video_id] = digest
            self._append_video(video_id, vector)
            self.ingested += 1
        return IngestResult(video_id, True, len(frames))

    def record_watch(self, user_id: str, video_id: str, watch_seconds: float, at: str) -> bool:
        row = self._rows.get(video_id)
        if row is None:
            raise NotFoundError(f"unknown video {video_id!r}")
        with self._lock:
            self._mark(
                "watches", self.store.insert_watch(Watch(user_id, video_id, watch_seconds, at))
            )
            self.watch_events += 1
            valid = watch_seconds >= self.threshold
            if valid:
                self._add_history(user_id, row)
        return valid

    def record_impressions(self, impressions: list[Impression]) -> ImpressionsResult:
        """Durably append a batch, then learn from it: valid watches extend histories and
        each user's effect is refitted. Retried ``event_id``s are acknowledged, not re-applied."""
        rows = []
        for imp in impressions:
            r = self._rows.get(imp.video_id)
            if r is None:
                raise NotFoundError(f"unknown video {imp.video_id!r}")
            rows.append(r)
        with self._lock:
            seqs = self.store.insert_impressions(impressions)
            fresh = [q is not None and self._mark("impressions", q) for q in seqs]
            by_user: dict[str, _Staged] = {}
            valid = 0
            for imp, r, new in zip(impressions, rows, fresh, strict=True):
                if not new:
                    continue
                watched = imp.watch_seconds >= self.threshold
                valid += watched
                self._stage(by_user, imp.user_id, r, watched)
            self.impression_events += sum(fresh)
        with self._online_lock:
            for user, (rs, ys, gs) in by_user.items():
                self._observe(user, rs, ys, gs)
        return ImpressionsResult(
            accepted=sum(fresh),
            duplicates=len(fresh) - sum(fresh),
            valid_watches=valid,
            users_updated=len(by_user),
        )


@dataclass(frozen=True)
class ImpressionsResult:
    accepted: int
    duplicates: int
    valid_watches: int
    users_updated: int


class StateHolder:
    """Holds the current state; reloads swap the reference atomically."""

    def __init__(self) -> None:
        self.current: ServingState | None = None
        self.reload_lock = threading.Lock()
        self.reloads = 0
