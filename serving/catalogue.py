"""The videos the service can score: the artifact's catalogue plus every ingested video,
their embeddings (one growable array) and the FAISS index over them.

Appends happen under the state's lock; readers never take it. The embedding array grows
by doubling and a reader keeps the array it read, which stays valid for the rows it saw.
Searches share the index (FAISS searches may run concurrently; an add may not run beside
them): a shared lock, many searches or one add.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from recsys.artifact import RecommenderArtifact
from recsys.errors import UserInputError
from recsys.index import VideoIndex
from recsys.online.videos import VideoEffects
from recsys.scoring import glmix_global_features
from recsys.side_features import CatalogueSide
from serving.neighbours import Entry, NeighbourCache, enough, merge_tail


class SharedLock:
    """Many readers or one writer; a writer waiting holds new readers back (uploads are
    not starved by a steady stream of searches)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


_omp = threading.local()


def _one_omp_thread() -> None:
    """One OpenMP thread for FAISS in the calling thread (the setting is per thread):
    requests run side by side already, and an OpenMP team per query stalls on busy
    cores (see ``serving.lifespan``)."""
    if not getattr(_omp, "set", False):
        faiss.omp_set_num_threads(1)
        _omp.set = True


class Catalogue:
    def __init__(
        self,
        video_ids: list[str],
        embeddings: np.ndarray,
        index: VideoIndex,
        neighbour_cache_bytes: int = 0,
    ) -> None:
        self.dim = embeddings.shape[1]
        self.ids: list[str] = list(video_ids)
        self.rows: dict[str, int] = {v: i for i, v in enumerate(video_ids)}
        self.emb = np.zeros((max(2 * len(video_ids), 1024), self.dim), dtype=np.float32)
        self.emb[: len(video_ids)] = embeddings
        #: videos from the artifact; rows from here on were ingested
        self.size_at_load = len(video_ids)
        self.index = index
        self._index_lock = SharedLock()
        #: rows of videos taken down: still in the arrays and the index, never answered
        self.removed_rows: set[int] = set()
        self._removed_sorted = np.zeros(0, np.int64)
        #: an approximate index's answers remembered (``serving.neighbours``); exact
        #: search is cheap enough and stays as it is
        self.neighbour_cache = (
            NeighbourCache(neighbour_cache_bytes)
            if neighbour_cache_bytes > 0 and index.config.kind in ("hnsw", "ivf")
            else None
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.rows

    def row(self, video_id: str) -> int | None:
        return self.rows.get(video_id)

    def vectors(self, rows: list[int] | np.ndarray) -> np.ndarray:
        """(n, E) embeddings of store rows."""
        return self.emb[np.asarray(rows, dtype=np.int64)]

    def append(self, video_id: str, vector: np.ndarray) -> None:
        """Add a video (caller holds the state's write lock)."""
        n = len(self.ids)
        if n >= len(self.emb):  # grow by doubling; readers keep a valid old array
            grown = np.zeros((2 * len(self.emb), self.dim), dtype=np.float32)
            grown[:n] = self.emb[:n]
            self.emb = grown
        self.emb[n] = vector
        with self._index_lock.exclusive():
            self.index.add([video_id], vector[None, :])
        self.rows[video_id] = n
        self.ids.append(video_id)

    def remove(self, video_id: str) -> bool:
        """Take a video down (caller holds the state's write lock): unknown from now on
        and left out of every search. False when it was not here."""
        row = self.rows.pop(video_id, None)
        if row is None:
            return False
        self.removed_rows.add(row)
        self._removed_sorted = np.array(sorted(self.removed_rows), np.int64)
        return True

    def live_rows(self, rows: list[int] | np.ndarray) -> list[int]:
        return [r for r in np.asarray(rows, dtype=np.int64).tolist() if r not in self.removed_rows]

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of each query (Q, E): (scores, rows), both (Q, k), row -1
        where there is none (taken-down videos left out, the rest moved up)."""
        # Taken-down videos are still indexed: ask for enough more to make up for them.
        wanted = min(len(self.ids), k + len(self._removed_sorted))
        _one_omp_thread()
        with self._index_lock.shared():
            scores, rows = self.index.search_rows(queries, wanted)
        return self._drop_removed(scores, rows, k)

    def neighbours(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``search_rows`` of catalogue rows' own vectors (each row finds itself), from the
        neighbour cache where it holds them."""
        rows = np.asarray(rows, dtype=np.int64)
        cache = self.neighbour_cache
        if cache is None:
            return self.search_rows(self.emb[rows], k)
        n, emb = len(self.ids), self.emb
        wanted = min(n, k + len(self._removed_sorted))
        scores = np.full((len(rows), wanted), -np.inf, np.float32)
        found = np.full((len(rows), wanted), -1, np.int64)
        missed: dict[int, list[int]] = {}  # row -> where it was asked (once searched)
        removed = self._removed_sorted
        asked_rows = rows.tolist()
        entries = cache.get_many(asked_rows, n)
        for i, (r, entry) in enumerate(zip(asked_rows, entries, strict=True)):
            if entry is None or r in missed or not enough(entry, k, removed):
                missed.setdefault(r, []).append(i)
                continue
            if entry.indexed == n:  # nothing added since it was searched
                s, f = entry.scores[:wanted], entry.rows[:wanted]
            else:
                s, f = merge_tail(entry, emb[r], emb[entry.indexed : n], entry.indexed, wanted)
            scores[i, : len(s)], found[i, : len(f)] = s, f
        n_missed = sum(map(len, missed.values()))
        cache.record(hit=True, times=len(asked_rows) - n_missed)
        cache.record(hit=False, times=n_missed)
        if missed:
            _one_omp_thread()
            asked = np.fromiter(missed, np.int64, len(missed))
            with self._index_lock.shared():
                indexed = len(self.index)
                s, f = self.index.search_rows(emb[asked], wanted)
            for j, (r, at) in enumerate(missed.items()):
                cache.put(r, Entry(indexed, s[j].copy(), f[j].astype(np.int64)))
                scores[at, : s.shape[1]], found[at, : f.shape[1]] = s[j], f[j]
        return self._drop_removed(scores, found, k)

    def _drop_removed(
        self, scores: np.ndarray, rows: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Taken-down rows out, what is left moved up in order, -1 padding; ``k`` columns."""
        removed = self._removed_sorted
        gone = rows < 0
        if len(removed):
            gone |= np.isin(rows, removed)
        if gone.any():  # stable: keep the order of what is left, pad with -1
            order = np.argsort(gone, axis=1, kind="stable")
            kept = np.take_along_axis(rows, order, 1)
            rows = np.where(np.take_along_axis(gone, order, 1), -1, kept)
            scores = np.take_along_axis(scores, order, 1)
        return scores[:, :k], rows[:, :k]

    def similar(self, row: int, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest other videos of a row, with their cosine similarity."""
        scores, rows = self.neighbours(np.array([row]), k + 1)
        ids = self.ids
        pairs = zip(rows[0].tolist(), scores[0].tolist(), strict=True)
        return [(ids[r], float(s)) for r, s in pairs if r >= 0 and r != row][:k]


#: no rows (the indices of no candidate)
_NO_ROWS = np.zeros(0, np.int64)


class VideoEffectRows:
    """Per catalogue row, what scoring a candidate needs for its per-video effect, in
    arrays, so a candidate costs no string lookup and no Python step (2,000 candidates
    cost 1-2 ms of id and dict lookups before; a score of 100 candidates that all had
    online statistics, 0.8 us each of per-video solves and lookups): ``coef`` (n, q),
    each of the artifact's videos' coefficients now (the online effect of a video with
    statistics, else the offline fit's, 0 for a video it never saw; q x 8 bytes a
    video), kept current by ``mark``, ``refresh`` and ``reset`` as the statistics
    change; for uploads since the load, the row in the offline fit (looked up by id)
    and whether the service holds statistics (``moved``). The writers run under the
    state's lock; a reader sees arrays replaced whole, or ``coef`` rows written one at a
    time (a row written while a gather copies it is the one transient mix)."""

    def __init__(
        self,
        catalogue: Catalogue,
        model_rows_of: Callable[[list[str]], np.ndarray],
        video_coef: np.ndarray | None = None,
        videos: VideoEffects | None = None,
    ):
        self._catalogue = catalogue
        self._model_rows_of = model_rows_of
        n = len(catalogue)
        #: the artifact's videos; rows added later (uploads) are looked up by id
        self.model_rows = np.asarray(model_rows_of(catalogue.ids[:n]), np.int64)
        self.moved = np.zeros(max(n, 1024), bool)
        self._video_coef = video_coef
        self._videos = videos
        self._table_lock = threading.Lock()
        if videos is not None:
            videos.take_changed()  # from now on, the videos whose sums change are kept
        self.coef = None if video_coef is None else self._with_effects(self.model_rows)

    def _gather(self, model_rows: np.ndarray) -> np.ndarray:
        assert self._video_coef is not None
        out = np.zeros((len(model_rows), self._video_coef.shape[1]))
        seen = model_rows >= 0
        out[seen] = self._video_coef[model_rows[seen]]
        return out

    def _with_effects(self, model_rows: np.ndarray) -> np.ndarray:
        """The table from the offline fit, with every video holding statistics now on
        its online effect."""
        table = self._gather(model_rows)
        if self._videos is not None:
            self._videos.take_changed()
            self._write(table, list(self._videos.stats))
        return table

    def _write(self, table: np.ndarray, video_ids: list[str]) -> None:
        assert self._videos is not None
        where = self._catalogue.rows
        held = [(r, v) for v in video_ids if 0 <= (r := where.get(v, -1)) < len(table)]
        effects = self._videos.effects([v for _, v in held])
        for (r, _), e in zip(held, effects, strict=True):
            table[r] = e  # a row at a time: a gather never sees half of one

    def coefficients(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(each row's per-video coefficients now (n, q), the indices of the rows whose
        online effect the caller must still solve: uploads since the load that hold
        statistics, or any row that does when no ``videos`` keep the table current); a
        model with per-video effects."""
        coef = self.coef
        assert coef is not None
        if self._videos is None:  # the table holds the fit's alone
            model_rows, moving = self.lookup(rows)
            return self._gather(model_rows), moving
        if len(coef) >= len(self._catalogue) or not len(rows) or rows.max() < len(coef):
            return coef[rows], _NO_ROWS  # the usual case: no upload among them
        inside = rows < len(coef)
        model_rows, moving = self.lookup(rows)
        out = self._gather(model_rows)
        out[inside] = coef[rows[inside]]
        return out, moving[~inside[moving]]

    def mark(self, rows: np.ndarray) -> list[str]:
        """Rows whose statistics changed (under the state's lock): the rows flagged as
        holding statistics; returns the videos whose sums changed, for ``write``."""
        rows = np.asarray(rows, np.int64)
        changed = [] if self._videos is None else self._videos.take_changed()
        if not len(rows):
            return changed
        top = int(rows.max()) + 1
        if top > len(self.moved):  # grown, filled, then published
            grown = np.zeros(max(top, 2 * len(self.moved)), bool)
            grown[: len(self.moved)] = self.moved
            grown[rows] = True
            self.moved = grown
        else:
            self.moved[rows] = True
        return changed

    def write(self, video_ids: list[str]) -> None:
        """The effects of ``video_ids`` (whose sums changed) into the table, under the
        table's own lock, which may be taken after the state's is released: each video's
        effect is solved from the sums current then, and the writes are serialised, so
        the last write for a video follows its last change."""
        if video_ids and self._videos is not None and self.coef is not None:
            with self._table_lock:
                self._write(self.coef, video_ids)

    def refresh(self) -> None:
        """The effects of the videos whose statistics changed (an erasure) into the
        table (under the state's lock, as the change was)."""
        if self._videos is not None:
            self.write(self._videos.take_changed())

    def reset(self, video_ids: Iterable[str]) -> None:
        """The statistics were replaced whole (a snapshot restored): ``video_ids`` have
        them now (ids no longer in the catalogue are left out: never a candidate)."""
        where = self._catalogue.rows
        rows = np.fromiter((where.get(v, -1) for v in video_ids), np.int64)
        rows = rows[rows >= 0]
        self.moved = np.zeros(max(len(self._catalogue), 1024), bool)
        self.mark(rows)
        if self._video_coef is not None:
            with self._table_lock:
                self.coef = self._with_effects(self.model_rows)

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(model rows (n,), the indices of ``rows`` with online statistics)."""
        rows = np.asarray(rows, np.int64)
        known, moved = self.model_rows, self.moved
        top = int(rows.max()) if len(rows) else -1
        if top < len(known) and top < len(moved):  # the usual case: no upload among them
            return known[rows], np.flatnonzero(moved[rows])
        inside = rows < len(known)
        if inside.all():
            model_rows = known[rows]
        else:
            model_rows = np.empty(len(rows), np.int64)
            model_rows[inside] = known[rows[inside]]
            ids = self._catalogue.ids
            later = [ids[r] for r in rows[~inside].tolist()]
            model_rows[~inside] = self._model_rows_of(later)
        flags = np.zeros(len(rows), bool)
        ok = rows < len(moved)
        flags[ok] = moved[rows[ok]]
        return model_rows, np.flatnonzero(flags)


def side_features(loaded: RecommenderArtifact) -> CatalogueSide | None:
    """The side features by catalogue row and user (None: the model has none); a model
    whose global features this version cannot build is refused at load."""
    side = None if loaded.side is None else CatalogueSide(loaded.side, loaded.video_ids)
    width = 0 if loaded.side is None else len(loaded.side)
    try:
        glmix_global_features(
            loaded.glmix.global_names, np.zeros(1), np.zeros(1), np.zeros((1, width))
        )
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    return side
