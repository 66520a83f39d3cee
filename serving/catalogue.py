"""The videos the service can score: the artifact's catalogue plus every ingested video,
their embeddings (one growable array) and the FAISS index over them.

Appends happen under the state's lock; readers never take it. The embedding array grows
by doubling and a reader keeps the array it read, which stays valid for the rows it saw.
"""

from __future__ import annotations

import threading

import numpy as np

from recsys.index import VideoIndex


class Catalogue:
    def __init__(self, video_ids: list[str], embeddings: np.ndarray, index: VideoIndex) -> None:
        self.dim = embeddings.shape[1]
        self.ids: list[str] = list(video_ids)
        self.rows: dict[str, int] = {v: i for i, v in enumerate(video_ids)}
        self.emb = np.zeros((max(2 * len(video_ids), 1024), self.dim), dtype=np.float32)
        self.emb[: len(video_ids)] = embeddings
        #: videos from the artifact; rows from here on were ingested
        self.size_at_load = len(video_ids)
        self.index = index
        self._index_lock = threading.Lock()
        #: rows of videos taken down: still in the arrays and the index, never answered
        self.removed_rows: set[int] = set()

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
        with self._index_lock:
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
        return True

    def live_rows(self, rows: list[int] | np.ndarray) -> list[int]:
        return [r for r in np.asarray(rows, dtype=np.int64).tolist() if r not in self.removed_rows]

    def _search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        # Taken-down videos are still indexed: ask for enough more to make up for them.
        wanted = min(len(self.ids), k + len(self.removed_rows))
        with self._index_lock:
            ids, scores = self.index.search(queries, wanted)
        return ids, np.asarray(scores)

    def search(self, queries: np.ndarray, k: int) -> list[list[str]]:
        """The ``k`` nearest video ids of each query row (taken-down videos left out)."""
        ids, _ = self._search(queries, k)
        return [[v for v in row if v in self.rows][:k] for row in ids]

    def similar(self, row: int, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest other videos of a row, with their cosine similarity."""
        ids, scores = self._search(self.emb[row][None, :], k + 1)
        me = self.ids[row]
        pairs = zip(ids[0], scores[0].tolist(), strict=False)
        return [(v, float(s)) for v, s in pairs if v != me and v in self.rows][:k]
