"""Every video's frames, flat, for training, embedding and the baseline ladder.

Frames are kept ``(sum T, D)`` in their stored type (float32, or uint8 as YouTube-8M
quantises them) with per-video offsets; the array may be a ``np.memmap`` of the on-disk
frame cache (``pipelines.data.frame_cache``), so a catalogue larger than memory is read page
by page and never widened as a whole. A batch is planned (which frames of which video:
the random part, drawn in the caller's process) and then gathered (a copy of just those
frames, which a loader worker can do); uint8 frames are dequantised per batch
(``frames_tensor``, on the accelerator when there is one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.dataset import DEQUANT_BIAS, DEQUANT_SCALE, VideoBatch, dequantize
from recsys.errors import UserInputError

#: frame types a store keeps as they are
STORED_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8))

# The on-disk layout of a frame store (written by ``pipelines.data.frame_cache``):
FRAMES_BIN = "frames.bin"  # (sum T, D) raw values, C order
OFFSETS_NPY = "offsets.npy"  # (N + 1,) int64
VIDEO_IDS_JSON = "video_ids.json"  # [N] strings
LAYOUT_JSON = "layout.json"  # dtype, feature_dim, num_frames, num_videos, source (written last)
LAYOUT_VERSION = 1


def read_layout(path: Path) -> dict[str, Any]:
    """The layout of a store directory; ValueError when it is missing or not this version."""
    try:
        layout = json.loads((path / LAYOUT_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: no readable {LAYOUT_JSON} ({exc})") from None
    if not isinstance(layout, dict) or layout.get("version") != LAYOUT_VERSION:
        raise ValueError(f"{path}: frame store layout of another version")
    return layout


def map_frames(path: Path, layout: dict[str, Any]) -> np.ndarray:
    """The frames of a store directory, memory-mapped read-only; ValueError when the file
    does not hold exactly what the layout says (truncated, or another file)."""
    dtype = np.dtype(layout["dtype"])
    shape = (int(layout["num_frames"]), int(layout["feature_dim"]))
    file = path / FRAMES_BIN
    expected = shape[0] * shape[1] * dtype.itemsize
    size = file.stat().st_size if file.exists() else -1
    if size != expected:
        raise ValueError(f"{file}: {size} bytes, the layout says {expected}")
    if expected == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(file, dtype=dtype, mode="r", shape=shape)


def open_store_dir(path: Path) -> FrameStore:
    """A memory-mapped store from a directory in the layout above; ValueError when any
    part is missing or inconsistent."""
    layout = read_layout(path)
    frames = map_frames(path, layout)
    try:
        offsets = np.load(path / OFFSETS_NPY, allow_pickle=False)
        ids = json.loads((path / VIDEO_IDS_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable offsets or video ids ({exc})") from None
    if (
        not isinstance(ids, list)
        or len(ids) != int(layout["num_videos"])
        or offsets.shape != (len(ids) + 1,)
        or int(offsets[0]) != 0
        or int(offsets[-1]) != len(frames)
        or (np.diff(offsets) < 1).any()
    ):
        raise ValueError(f"{path}: offsets and video ids do not match the frames")
    return FrameStore([str(v) for v in ids], frames, offsets, source=str(path))


def as_float(frames: np.ndarray) -> np.ndarray:
    """float32 frames from stored ones (uint8 is dequantised as the YouTube-8M starter does)."""
    if frames.dtype == np.uint8:
        return dequantize(np.asarray(frames))
    return np.asarray(frames, dtype=np.float32)


def frames_tensor(
    frames: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """A float32 tensor on ``device`` from stored frames ``(..., D)``: uint8 travels as
    uint8 (a quarter of the bytes) and is dequantised there, its padding (``mask``
    False) set back to zero as float batches pad."""
    t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    dev = torch.device(device)
    t = t.to(dev, non_blocking=dev.type == "cuda" and t.is_pinned())
    if t.dtype != torch.uint8:
        return t.float()
    # In place (the same two roundings as ``dequantize``), then only the padded frames
    # zeroed: a pass less and no temporaries over the batch's values.
    x = t.float().mul_(DEQUANT_SCALE).add_(DEQUANT_BIAS)
    if mask is not None:
        _zero_padding(x, mask.to(dev, non_blocking=dev.type == "cuda").bool())
    return x


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the frames of ``x (B, T, D)`` where ``mask (B, T)`` is False. Padding is a
    suffix of each video in every batch a loader builds: then each padded tail is one
    contiguous fill (a masked write over the whole batch read every value: a tenth of
    a training step); any other mask the general way."""
    t = mask.shape[1]
    lengths = mask.sum(1)
    prefix = torch.arange(t, device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
    if not bool(torch.equal(prefix, mask)):
        x[~mask] = 0.0
        return
    for i, n in enumerate(lengths.tolist()):
        if n < t:
            x[i, n:] = 0.0


@dataclass(frozen=True)
class FramePlan:
    """Which frames a padded batch holds: frame ``frame_rows[j]`` of the store goes to
    ``(video[j], slot[j])`` of a ``(len(rows), t, D)`` batch."""

    num_videos: int
    t: int
    video: np.ndarray  # (F,) int64
    slot: np.ndarray  # (F,) int64
    frame_rows: np.ndarray  # (F,) int64


class FrameStore:
    """``frames (sum T, D)`` in the stored type, ``offsets (N + 1,)``; video ``i`` owns
    rows ``offsets[i]:offsets[i + 1]``."""

    def __init__(
        self,
        video_ids: list[str],
        frames: np.ndarray,
        offsets: np.ndarray,
        source: str | None = None,
    ) -> None:
        if frames.ndim != 2:
            raise ValueError(f"frames must be (sum T, D), got shape {frames.shape}")
        if frames.dtype not in STORED_DTYPES:
            frames = frames.astype(np.float32)
        if len(offsets) != len(video_ids) + 1 or offsets[-1] != len(frames):
            raise ValueError("offsets must hold one more entry than videos and end at the frames")
        self.video_ids = video_ids
        self.frames = frames
        self.offsets = np.asarray(offsets, dtype=np.int64)
        #: the cache directory a memory-mapped store was opened from (pickles by path)
        self.source = source
        self.index = {v: i for i, v in enumerate(video_ids)}

    @classmethod
    def from_batches(cls, batches: Iterable[VideoBatch]) -> FrameStore:
        """An in-memory store (small catalogues and tests); frames keep the batches' type."""
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for vb in batches:
            ids.extend(vb.video_ids)
            chunks.append(vb.frames)
            lengths.append(vb.lengths)
        if not ids:
            raise UserInputError("no videos to load")
        frames = np.concatenate(chunks)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
        return cls(ids, frames, offsets)

    def __getstate__(self) -> dict[str, Any]:
        # A memory-mapped store travels to loader workers as its path, not its frames.
        state = dict(self.__dict__)
        if self.source is not None:
            state["frames"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.frames is None and self.source is not None:
            self.frames = map_frames(Path(self.source), read_layout(Path(self.source)))

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def feature_dim(self) -> int:
        return int(self.frames.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.frames.shape[0]) * self.feature_dim * self.frames.dtype.itemsize

    def rows(self, video_ids: Sequence[str]) -> np.ndarray:
        missing = [v for v in video_ids if v not in self.index]
        if missing:
            raise UserInputError(f"unknown video id(s): {', '.join(map(repr, missing[:5]))}")
        return np.array([self.index[v] for v in video_ids], dtype=np.int64)

    def plan(
        self,
        rows: np.ndarray,
        max_frames: int,
        rng: np.random.Generator | None = None,
        min_keep: float = 1.0,
    ) -> FramePlan:
        """Which frames a batch of ``rows`` holds, at most ``max_frames`` per video.

        Videos longer than ``max_frames`` get a random subset (``rng`` given, training)
        or evenly spaced frames (no ``rng``: deterministic, for embedding). With an
        ``rng`` and ``min_keep < 1`` every video keeps a random subset of between
        ``min_keep`` and all of its frames (at least one): frame subsampling as
        augmentation, so a model cannot recognise a video by one exact frame set.
        """
        if not 0.0 < min_keep <= 1.0:
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        full_lengths = self.lengths[rows]
        lengths = full_lengths
        if rng is not None and min_keep < 1.0 and len(rows):
            frac = rng.uniform(min_keep, 1.0, len(rows))
            lengths = np.maximum(1, np.round(lengths * frac)).astype(np.int64)
            lengths = np.minimum(lengths, full_lengths)
        t = int(min(lengths.max(), max_frames)) if len(rows) else 1
        picks: list[np.ndarray] = []
        for i, r in enumerate(rows):
            start, n, full = int(self.offsets[r]), int(lengths[i]), int(full_lengths[i])
            if n < full and rng is not None:  # augmentation: a random subset of n frames
                pick = np.sort(rng.choice(full, size=min(n, t), replace=False))
            elif n <= t:
                pick = np.arange(n)
            elif rng is not None:
                pick = np.sort(rng.choice(n, size=t, replace=False))
            else:
                pick = np.linspace(0, n - 1, t).round().astype(np.int64)
            picks.append(start + pick)
        counts = np.array([len(p) for p in picks], dtype=np.int64)
        video = np.repeat(np.arange(len(rows)), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(rows) else counts
        slot = np.arange(len(video)) - np.repeat(first, counts)
        frame_rows = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
        return FramePlan(len(rows), t, video, slot, frame_rows.astype(np.int64))

    def gather(self, plan: FramePlan) -> tuple[np.ndarray, np.ndarray]:
        """Padded frames ``(B, t, D)`` in the stored type and mask ``(B, t)`` of a plan:
        one read of just the planned frames (in file order, kind to a memory map)."""
        out = np.zeros((plan.num_videos, plan.t, self.feature_dim), dtype=self.frames.dtype)
        mask = np.zeros((plan.num_videos, plan.t), dtype=bool)
        if len(plan.frame_rows):
            order = np.argsort(plan.frame_rows, kind="stable")
            out[plan.video[order], plan.slot[order]] = self.frames[plan.frame_rows[order]]
            mask[plan.video, plan.slot] = True
        return out, mask

    def batch(
        self,
        rows: np.ndarray,
        max_frames: int,
        rng: np.random.Generator | None = None,
        min_keep: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Padded float32 frames ``(B, T, D)`` and mask ``(B, T)``: ``plan`` then ``gather``,
        dequantised here (the trainer dequantises on its device instead)."""
        frames, mask = self.gather(self.plan(rows, max_frames, rng, min_keep))
        out = as_float(frames)
        out[~mask] = 0.0  # uint8 padding dequantises to -2
        return out, mask

    def subset(self, rows: np.ndarray) -> FrameStore:
        """An in-memory store of just these videos (stored type), in this order."""
        parts = [self.frames[self.offsets[r] : self.offsets[r + 1]] for r in rows]
        lengths = self.lengths[rows]
        frames = np.concatenate(parts) if parts else self.frames[:0]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return FrameStore([self.video_ids[r] for r in rows], np.asarray(frames), offsets)

    def sample_frames(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` float32 frames drawn uniformly from all videos (for fitting a UBM
        or a codebook); reads only those frames."""
        rng = np.random.default_rng(seed)
        total = len(self.frames)
        if total <= n:
            return np.array(as_float(self.frames))  # a writable copy, never the map itself
        return as_float(self.frames[np.sort(rng.choice(total, size=n, replace=False))])

    def chunks(self, max_frames: int = 1 << 18) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Consecutive runs of whole videos: ``(video slice, float32 frames (F, D), local
        offsets)`` with about ``max_frames`` frames each (a longer video is its own chunk),
        so a pass over the catalogue holds one chunk at a time."""
        n = len(self)
        start = 0
        while start < n:
            limit = self.offsets[start] + max_frames
            stop = int(np.searchsorted(self.offsets, limit, side="right")) - 1
            stop = min(max(stop, start + 1), n)
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            yield (
                slice(start, stop),
                as_float(self.frames[lo:hi]),
                self.offsets[start : stop + 1] - lo,
            )
            start = stop
