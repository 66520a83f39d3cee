"""The data set contract and its checks.

A data set is a directory with ``videos.parquet`` and ``impressions.parquet``
(see docs/data.md). This module holds the contract and the logic that decodes it (the
checks are ``recsys.validation``); it works on pyarrow schemas and record batches handed
to it, so the caller decides how files are opened and streamed.

A video is either frames (``frames``: T x D, the embedding is learned from them) or one
vector given by the platform (``embedding``: D values, used as the embedding itself). A
vector decodes as a video of one frame, so every reader of frames reads vectors too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import DatasetError

VIDEOS_FILE = "videos.parquet"
IMPRESSIONS_FILE = "impressions.parquet"
TRUTH_FILE = "truth.parquet"
#: synthetic worlds only: each video's true features (component mixture, style), a ceiling row
VIDEO_TRUTH_FILE = "video_truth.parquet"
#: the two ways a video is given: its frames, or one vector (``video_column``)
FRAMES_COLUMN = "frames"
VECTOR_COLUMN = "embedding"

#: An impression is a valid watch when ``watch_seconds >= DEFAULT_WATCH_THRESHOLD_S``.
DEFAULT_WATCH_THRESHOLD_S = 10.0
SPLITS = ("train", "validation", "test")

# YouTube-8M quantises features to uint8 over [-2, 2]; the starter code maps them
# back with x * range/255 + range/512 + min. We apply the same map to uint8 frames.
_Q_MIN, _Q_MAX = -2.0, 2.0
_Q_RANGE = _Q_MAX - _Q_MIN
DEQUANT_SCALE = _Q_RANGE / 255.0
DEQUANT_BIAS = _Q_RANGE / 512.0 + _Q_MIN

# Errors of one kind beyond this many are summarised as a count, so that a
# badly broken file still produces a readable report.
MAX_REPORTED_PER_KIND = 20


#: values dequantised at a time: a 256 KB float32 block, whose second pass finds it in cache
DEQUANT_BLOCK = 1 << 16


def dequantize(values: np.ndarray) -> np.ndarray:
    """uint8 YouTube-8M features -> float32, as the starter code does."""
    # The same two roundings as out * scale + bias (the uint8 -> float32 cast is exact),
    # a block at a time into the one float32 output: the product reads the bytes and
    # writes floats, the bias is added while they are in cache (a whole-array astype,
    # multiply and add made three passes over the floats in memory: 25% slower).
    out = np.empty(values.shape, np.float32)
    flat_in, flat_out = values.reshape(-1), out.reshape(-1)
    scale, bias = np.float32(DEQUANT_SCALE), np.float32(DEQUANT_BIAS)
    for start in range(0, flat_in.size, DEQUANT_BLOCK):
        block = flat_out[start : start + DEQUANT_BLOCK]
        np.multiply(flat_in[start : start + DEQUANT_BLOCK], scale, out=block, dtype=np.float32)
        block += bias
    return out


def frames_to_arrow(frames: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """list<list<value>> from a flat (sum T, D) array and per-video frame counts T.

    The value type follows the array (float32 or uint8); built from offsets, no copies
    of Python lists, so it is fast for long videos.
    """
    n, d = frames.shape
    values = pa.array(np.ascontiguousarray(frames).reshape(-1))
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)), values)
    outer_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


@dataclass(frozen=True)
class VideoBatch:
    """Decoded videos of one record batch.

    ``frames`` is a flat (sum T, D) float32 array; video ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``. Flat storage avoids padding until a model needs it.
    """

    video_ids: list[str]
    frames: np.ndarray
    offsets: np.ndarray
    labels: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def video(self, i: int) -> np.ndarray:
        return self.frames[self.offsets[i] : self.offsets[i + 1]]

    def padded(self, max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, D) zero-padded frames and a (B, T) bool mask (True = real frame).

        With ``max_frames`` videos longer than that keep their first ``max_frames`` frames.
        """
        lengths = self.lengths
        t_max = int(lengths.max()) if len(lengths) else 0
        if max_frames is not None:
            t_max = min(t_max, max_frames)
        b, d = len(self), self.frames.shape[1]
        out = np.zeros((b, max(t_max, 1), d), dtype=np.float32)
        mask = np.zeros((b, max(t_max, 1)), dtype=bool)
        for i in range(b):
            n = min(int(lengths[i]), t_max)
            out[i, :n] = self.frames[self.offsets[i] : self.offsets[i] + n]
            mask[i, :n] = True
        return out, mask


def frame_values_type(frames_type: pa.DataType) -> pa.DataType | None:
    """The scalar type inside list<list<scalar>>, or None when it is not that shape."""
    if not (pa.types.is_list(frames_type) or pa.types.is_large_list(frames_type)):
        return None
    inner = frames_type.value_type
    if not (
        pa.types.is_list(inner)
        or pa.types.is_large_list(inner)
        or pa.types.is_fixed_size_list(inner)
    ):
        return None
    return inner.value_type


def video_column(names: list[str] | tuple[str, ...]) -> str:
    """Which column holds the videos: ``embedding`` when the file gives a vector per video
    (and no frames), else ``frames``."""
    return VECTOR_COLUMN if VECTOR_COLUMN in names and FRAMES_COLUMN not in names else FRAMES_COLUMN


def vector_values_type(t: pa.DataType) -> pa.DataType | None:
    """The scalar type inside list<scalar> (or fixed-size list), or None for another shape."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return t.value_type
    return None


def list_lengths(arr: pa.Array) -> np.ndarray:
    """Per-row list lengths as int64 (null rows count as 0); respects array slicing."""
    return np.asarray(pc.list_value_length(arr).fill_null(0), dtype=np.int64)


def _as_batch(data: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    if isinstance(data, pa.RecordBatch):
        return data
    combined = data.combine_chunks()
    batches = combined.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=data.schema)


def decode_video_batch(
    data: pa.RecordBatch | pa.Table, feature_dim: int | None = None, keep_uint8: bool = False
) -> VideoBatch:
    """Decode ``video_id`` / ``frames`` (and ``labels`` if present) of a batch; frames
    become float32 (uint8 dequantised) unless ``keep_uint8`` keeps uint8 frames as stored.

    Raises DatasetError when a video's frames are not a (T >= 1, D) matrix. A file with
    an ``embedding`` column decodes each vector as one frame.
    """
    batch = _as_batch(data)
    ids = [str(v) for v in batch.column("video_id").to_pylist()]
    if video_column(batch.schema.names) == VECTOR_COLUMN:
        return _decode_vectors(batch, ids, feature_dim)
    outer = batch.column("frames")
    lengths = list_lengths(outer)
    inner = outer.flatten()
    d_per_frame = list_lengths(inner)
    problems: list[str] = []
    if outer.null_count:
        problems.append("frames: null frames for a video")
    for i in np.flatnonzero(lengths == 0)[:MAX_REPORTED_PER_KIND]:
        problems.append(f"frames: video {ids[i]!r} has no frames (T = 0)")
    d = feature_dim if feature_dim is not None else (int(d_per_frame[0]) if len(d_per_frame) else 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    bad = np.flatnonzero(d_per_frame != d)
    if len(bad):
        owner = np.searchsorted(offsets, bad, side="right") - 1
        for j in np.unique(owner)[:MAX_REPORTED_PER_KIND]:
            first = int(bad[owner == j][0])
            problems.append(
                f"frames: video {ids[j]!r} frame {first - int(offsets[j])} has dimension "
                f"{int(d_per_frame[first])}, expected D = {d}"
            )
    if problems:
        raise DatasetError(problems)
    values = inner.flatten().to_numpy(zero_copy_only=False)
    if values.dtype == np.uint8:
        arr = values if keep_uint8 else dequantize(values)
    else:
        with np.errstate(over="ignore"):  # beyond float32: inf, refused just below
            arr = values.astype(np.float32, copy=False)
        # One pass; a NaN or inf (or a float64 beyond float32's range) would only surface
        # later as a failed SVD or NaN embeddings, far from the video that has it.
        if not np.isfinite(arr).all():
            owner = np.searchsorted(offsets * d, np.flatnonzero(~np.isfinite(arr)), "right") - 1
            raise DatasetError(
                [
                    f"frames: video {ids[j]!r} contains NaN or inf values"
                    for j in np.unique(owner)[:MAX_REPORTED_PER_KIND]
                ]
            )
    frames = arr.reshape(-1, d) if d else np.zeros((0, 0), dtype=np.float32)
    return VideoBatch(ids, frames, offsets, _labels(batch))


def _labels(batch: pa.RecordBatch) -> list[list[int]] | None:
    if "labels" not in batch.schema.names:
        return None
    return [list(x) if x is not None else [] for x in batch.column("labels").to_pylist()]


def _decode_vectors(batch: pa.RecordBatch, ids: list[str], feature_dim: int | None) -> VideoBatch:
    """The ``embedding`` column of a batch as one-frame videos (offsets 0, 1, .., N)."""
    col = batch.column(VECTOR_COLUMN)
    lengths = list_lengths(col)
    d = feature_dim if feature_dim is not None else (int(lengths[0]) if len(lengths) else 0)
    problems = [
        f"embedding: video {ids[i]!r} has no vector"
        for i in np.flatnonzero(~np.asarray(col.is_valid()))
    ]
    for i in np.flatnonzero(np.asarray(col.is_valid()) & (lengths != d))[:MAX_REPORTED_PER_KIND]:
        problems.append(
            f"embedding: video {ids[i]!r} has {int(lengths[i])} values, expected D = {d}"
        )
    if problems:
        raise DatasetError(problems[:MAX_REPORTED_PER_KIND])
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    frames = values.reshape(-1, d) if d else np.zeros((0, 0), dtype=np.float32)
    return VideoBatch(ids, frames, np.arange(len(ids) + 1, dtype=np.int64), _labels(batch))


def iter_chunks(table: pa.Table, rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``rows`` rows from an in-memory table (tests, small data)."""
    yield from table.to_batches(max_chunksize=rows)
