"""The training data of the co-watch embedding: frames, triplet rows, validation splits
and each video's co-watch partners."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys.frames import FrameStore


def triplet_rows(store: FrameStore, triplets: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) store rows and the user of each triplet; triplets naming unknown videos are dropped."""
    cols = [triplets.column(c).to_pylist() for c in ("anchor", "positive", "negative")]
    idx = store.index
    keep = [i for i in range(triplets.num_rows) if all(c[i] in idx for c in cols)]
    rows = np.array([[idx[c[i]] for c in cols] for i in keep], dtype=np.int64).reshape(-1, 3)
    users = np.array(triplets.column("user_id").to_pylist(), dtype=object)[keep]
    return rows, users


def split_by_video(
    rows: np.ndarray, num_videos: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(validation mask over triplets, held-out video mask): triplets naming any held-out
    video validate; training never sees those videos, as it never sees cold-start ones."""
    rng = np.random.default_rng([seed, 1])
    held = np.zeros(num_videos, dtype=bool)
    held[rng.choice(num_videos, size=round(fraction * num_videos), replace=False)] = True
    return held[rows].any(1), held


def split_by_user(users: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation triplets: all triplets of ~val_fraction of users."""
    uniq = sorted(set(users.tolist()))
    rng = np.random.default_rng(seed)
    n_val = round(val_fraction * len(uniq))
    val_users = set(rng.choice(len(uniq), size=n_val, replace=False).tolist()) if n_val else set()
    val_names = {uniq[i] for i in val_users}
    return np.array([u in val_names for u in users], dtype=bool)


def triplet_batches(
    rows: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> Iterator[np.ndarray]:
    order = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
    for s in range(0, len(order), batch_size):
        yield rows[order[s : s + batch_size]]


@dataclass(frozen=True)
class CowatchPartners:
    """Each video's co-watch partners in the training triplets (anchor-positive pairs,
    both directions), as CSR arrays: partners of video v are
    ``indices[indptr[v]:indptr[v + 1]]``, sorted and without v itself."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_triplets(cls, rows: np.ndarray, num_videos: int) -> CowatchPartners:
        pairs = np.concatenate([rows[:, [0, 1]], rows[:, [1, 0]]])
        pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)  # sorted by (v, partner)
        counts = np.bincount(pairs[:, 0], minlength=num_videos)
        return cls(np.concatenate([[0], np.cumsum(counts)]), pairs[:, 1].copy())

    def sample(
        self, anchors: np.ndarray, positives: np.ndarray, k: int, rng: np.random.Generator
    ) -> np.ndarray:
        """(B, k) partners of each anchor other than its positive, without replacement
        while there are enough; an anchor with none gets itself (its own embedding)."""
        out = np.empty((len(anchors), k), dtype=np.int64)
        for i, (a, p) in enumerate(zip(anchors.tolist(), positives.tolist(), strict=True)):
            nb = self.indices[self.indptr[a] : self.indptr[a + 1]]
            nb = nb[nb != p]
            out[i] = rng.choice(nb, k, replace=len(nb) < k) if len(nb) else a
        return out
