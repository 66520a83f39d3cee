"""An in-memory (or memory-mapped) store of every video's frames, for training and embedding.

Frames are kept flat, ``(sum T, D)`` float32, with per-video offsets; batches are
padded on demand with a mask, sampling at most ``max_frames`` frames per video.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from recsys.dataset import VideoBatch
from recsys.errors import UserInputError


@dataclass
class FrameStore:
    video_ids: list[str]
    frames: np.ndarray  # (sum T, D) float32
    offsets: np.ndarray  # (N + 1,) int64

    def __post_init__(self) -> None:
        self.index = {v: i for i, v in enumerate(self.video_ids)}

    @classmethod
    def from_batches(cls, batches: Iterable[VideoBatch]) -> FrameStore:
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for vb in batches:
            ids.extend(vb.video_ids)
            chunks.append(vb.frames)
            lengths.append(vb.lengths)
        if not ids:
            raise UserInputError("no videos to load")
        frames = np.concatenate(chunks).astype(np.float32, copy=False)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
        return cls(ids, frames, offsets)

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def feature_dim(self) -> int:
        return int(self.frames.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows(self, video_ids: Sequence[str]) -> np.ndarray:
        missing = [v for v in video_ids if v not in self.index]
        if missing:
            raise UserInputError(f"unknown video id(s): {', '.join(map(repr, missing[:5]))}")
        return np.array([self.index[v] for v in video_ids], dtype=np.int64)

    def batch(
        self,
        rows: np.ndarray,
        max_frames: int,
        rng: np.random.Generator | None = None,
        min_keep: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Padded frames (B, T, D) and mask (B, T) for the given rows.

        Videos longer than ``max_frames`` get a random subset (``rng`` given, training)
        or evenly spaced frames (no ``rng``: deterministic, for embedding). With an
        ``rng`` and ``min_keep < 1`` every video keeps a random subset of between
        ``min_keep`` and all of its frames (at least one): frame subsampling as
        augmentation, so a model cannot recognise a video by one exact frame set.
        """
        if not 0.0 < min_keep <= 1.0:
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        lengths = self.lengths[rows]
        if rng is not None and min_keep < 1.0 and len(rows):
            frac = rng.uniform(min_keep, 1.0, len(rows))
            lengths = np.maximum(1, np.round(lengths * frac)).astype(np.int64)
            lengths = np.minimum(lengths, self.lengths[rows])
        t = int(min(lengths.max(), max_frames)) if len(rows) else 1
        out = np.zeros((len(rows), t, self.feature_dim), dtype=np.float32)
        mask = np.zeros((len(rows), t), dtype=bool)
        for i, r in enumerate(rows):
            start, n = int(self.offsets[r]), int(lengths[i])
            full = int(self.lengths[r])
            if n < full and rng is not None:  # augmentation: a random subset of n frames
                pick = np.sort(rng.choice(full, size=min(n, t), replace=False))
                out[i, : len(pick)] = self.frames[start + pick]
                mask[i, : len(pick)] = True
                continue
            if n <= t:
                out[i, :n] = self.frames[start : start + n]
                mask[i, :n] = True
                continue
            if rng is not None:
                pick = np.sort(rng.choice(n, size=t, replace=False))
            else:
                pick = np.linspace(0, n - 1, t).round().astype(np.int64)
            out[i] = self.frames[start + pick]
            mask[i] = True
        return out, mask

    def sample_frames(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` frames drawn uniformly from all videos (for fitting a UBM)."""
        rng = np.random.default_rng(seed)
        total = len(self.frames)
        if total <= n:
            return self.frames
        return self.frames[np.sort(rng.choice(total, size=n, replace=False))]
