"""The data set contract and its checks.

A data set is a directory with ``videos.parquet`` and ``impressions.parquet``
(see docs/data.md). This module holds the contract and the logic that checks
and decodes it; it works on pyarrow schemas and record batches handed to it,
so the caller decides how files are opened and streamed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import DatasetError

VIDEOS_FILE = "videos.parquet"
IMPRESSIONS_FILE = "impressions.parquet"
TRUTH_FILE = "truth.parquet"
#: synthetic worlds only: each video's true features (component mixture, style), a ceiling row
VIDEO_TRUTH_FILE = "video_truth.parquet"

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


def dequantize(values: np.ndarray) -> np.ndarray:
    """uint8 YouTube-8M features -> float32, as the starter code does."""
    return (
        values.astype(np.float32) * np.float32(DEQUANT_SCALE) + np.float32(DEQUANT_BIAS)
    ).astype(np.float32, copy=False)


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


def _frame_values_type(frames_type: pa.DataType) -> pa.DataType | None:
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


def _list_lengths(arr: pa.Array) -> np.ndarray:
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

    Raises DatasetError when a video's frames are not a (T >= 1, D) matrix.
    """
    batch = _as_batch(data)
    ids = [str(v) for v in batch.column("video_id").to_pylist()]
    outer = batch.column("frames")
    lengths = _list_lengths(outer)
    inner = outer.flatten()
    d_per_frame = _list_lengths(inner)
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
        arr = values.astype(np.float32, copy=False)
    frames = arr.reshape(-1, d) if d else np.zeros((0, 0), dtype=np.float32)
    labels = None
    if "labels" in batch.schema.names:
        labels = [list(x) if x is not None else [] for x in batch.column("labels").to_pylist()]
    return VideoBatch(video_ids=ids, frames=frames, offsets=offsets, labels=labels)


# --------------------------------------------------------------------------- validation


@dataclass
class _Problems:
    """Collects violations, capping the lines printed per kind but counting all."""

    lines: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_REPORTED_PER_KIND:
            self.lines.append(message)

    def finish(self) -> list[str]:
        out = list(self.lines)
        for kind, n in self.counts.items():
            if n > MAX_REPORTED_PER_KIND:
                out.append(
                    f"{kind}: {n - MAX_REPORTED_PER_KIND} more violations of this kind not shown"
                )
        return out


@dataclass
class VideosSummary:
    num_videos: int = 0
    feature_dim: int | None = None
    frame_dtype: str = ""
    frames_per_video: list[int] = field(default_factory=list)
    num_labelled: int = 0
    video_ids: set[str] = field(default_factory=set)
    created_min: object = None
    created_max: object = None


@dataclass
class ImpressionsSummary:
    num_impressions: int = 0
    num_users: int = 0
    num_valid_watches: int = 0
    shown_min: object = None
    shown_max: object = None


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _id_type_problem(name: str, t: pa.DataType) -> str:
    """The line for an id column that is not a string (integer ids are common in real
    logs: the files are refused, never read with their ids turned into positions)."""
    hint = (
        " (integer ids: cast the column to string, e.g. pyarrow.compute.cast(col, "
        "pyarrow.string()), the same in every file)"
        if pa.types.is_integer(t)
        else ""
    )
    return f"{name}: expected string, found {t}{hint}"


def _check_timestamp(schema: pa.Schema, name: str, problems: _Problems, required: bool) -> None:
    if name not in schema.names:
        if required:
            problems.add("schema", f"{name}: missing column (timestamp, UTC)")
        return
    t = schema.field(name).type
    if not pa.types.is_timestamp(t):
        problems.add("schema", f"{name}: expected timestamp (UTC), found {t}")
    elif t.tz is None or t.tz.upper() not in ("UTC", "+00:00", "ETC/UTC", "Z"):
        problems.add("schema", f"{name}: timestamp must be in UTC, found tz={t.tz!r}")


def check_videos_schema(schema: pa.Schema) -> list[str]:
    problems = _Problems()
    if "video_id" not in schema.names:
        problems.add("schema", "video_id: missing column (string)")
    elif not _is_string(schema.field("video_id").type):
        problems.add("schema", _id_type_problem("video_id", schema.field("video_id").type))
    if "frames" not in schema.names:
        problems.add("schema", "frames: missing column (list<list<float32>>)")
    else:
        vt = _frame_values_type(schema.field("frames").type)
        if vt is None or not (pa.types.is_floating(vt) or vt == pa.uint8()):
            problems.add(
                "schema",
                f"frames: expected list<list<float32>> (or uint8), found {schema.field('frames').type}",
            )
    if "labels" in schema.names:
        t = schema.field("labels").type
        if not (pa.types.is_list(t) and pa.types.is_integer(t.value_type)):
            problems.add("schema", f"labels: expected list<int32>, found {t}")
    if "split" in schema.names and not _is_string(schema.field("split").type):
        problems.add("schema", f"split: expected string, found {schema.field('split').type}")
    _check_timestamp(schema, "created_at", problems, required=False)
    return problems.finish()


def _videos_with_nonfinite(
    values: np.ndarray, d_per_frame: np.ndarray, frame_offsets: np.ndarray
) -> np.ndarray:
    """(videos,) whether each video holds a NaN or inf value, through cumulative counts:
    no Python loop over values, so a batch of long videos stays fast. ``frame_offsets``:
    (videos + 1,) each video's first frame."""
    finite = np.isfinite(values) if values.dtype.kind == "f" else np.ones(len(values), bool)
    rel = np.concatenate([[0], np.cumsum(d_per_frame)])
    bad_cum = np.concatenate([[0], np.cumsum(~finite)])
    frame_bad = (bad_cum[rel[1:]] - bad_cum[rel[:-1]]) > 0
    frame_bad_cum = np.concatenate([[0], np.cumsum(frame_bad)])
    return (frame_bad_cum[frame_offsets[1:]] - frame_bad_cum[frame_offsets[:-1]]) > 0


def _check_optional_columns(
    batch: pa.RecordBatch, ids: list[Any], summary: VideosSummary, problems: _Problems
) -> None:
    """labels (none negative), split (a known name), created_at (its span)."""
    if "labels" in batch.schema.names:
        labels = batch.column("labels")
        summary.num_labelled += len(labels) - labels.null_count
        flat = labels.flatten()
        if len(flat) and pc.min(flat).as_py() is not None and pc.min(flat).as_py() < 0:
            for i, labs in enumerate(labels.to_pylist()):
                if labs and min(labs) < 0:
                    problems.add("labels", f"labels: video {ids[i]!r} has a negative label")
    if "split" in batch.schema.names:
        for i, s in enumerate(batch.column("split").to_pylist()):
            if s is not None and s not in SPLITS:
                problems.add(
                    "split",
                    f"split: video {ids[i]!r} has split {s!r}, expected one of {SPLITS}",
                )
    if "created_at" in batch.schema.names:
        col = batch.column("created_at")
        if len(col) - col.null_count:
            lo, hi = pc.min(col).as_py(), pc.max(col).as_py()
            summary.created_min = (
                lo if summary.created_min is None else min(summary.created_min, lo)
            )
            summary.created_max = (
                hi if summary.created_max is None else max(summary.created_max, hi)
            )


def validate_videos(
    schema: pa.Schema, batches: Iterable[pa.RecordBatch]
) -> tuple[VideosSummary, list[str]]:
    """Check every row of ``videos.parquet``; returns a summary and all violations."""
    problems = _Problems()
    schema_problems = check_videos_schema(schema)
    summary = VideosSummary()
    if schema_problems:
        return summary, schema_problems
    vt = _frame_values_type(schema.field("frames").type)
    summary.frame_dtype = str(vt)
    seen: set[str] = summary.video_ids
    for batch in batches:
        ids = batch.column("video_id").to_pylist()
        frames = batch.column("frames")
        t_per_video = _list_lengths(frames)
        outer_valid = np.asarray(frames.is_valid())
        inner = frames.flatten()
        d_per_frame = _list_lengths(inner)
        inner_valid = np.asarray(inner.is_valid())
        values = inner.flatten()
        values_null = values.null_count > 0
        val_np = values.to_numpy(zero_copy_only=False) if len(values) else np.zeros(0)
        orel = np.concatenate([[0], np.cumsum(t_per_video)])
        video_nonfinite = _videos_with_nonfinite(val_np, d_per_frame, orel)

        for i, vid in enumerate(ids):
            label = repr(vid)
            if vid is None or vid == "":
                problems.add(
                    "video_id", f"video_id: empty or null id at row {summary.num_videos + i}"
                )
            elif vid in seen:
                problems.add("video_id", f"video_id: duplicate id {label}")
            else:
                seen.add(vid)
            if not outer_valid[i]:
                problems.add("frames", f"frames: video {label} has null frames")
                continue
            t = int(t_per_video[i])
            if t == 0:
                problems.add("frames", f"frames: video {label} has no frames (T = 0)")
                continue
            ds = d_per_frame[orel[i] : orel[i + 1]]
            if summary.feature_dim is None:
                summary.feature_dim = int(ds[0])
            bad_d = ds != summary.feature_dim
            if bad_d.any() or not inner_valid[orel[i] : orel[i + 1]].all():
                j = int(np.flatnonzero(bad_d)[0]) if bad_d.any() else 0
                problems.add(
                    "frames",
                    f"frames: video {label} frame {j} has dimension {int(ds[j])}, expected D = {summary.feature_dim}"
                    " (ragged D)",
                )
                continue
            if video_nonfinite[i]:
                problems.add("frames", f"frames: video {label} contains NaN or inf values")
            summary.frames_per_video.append(t)
        if values_null:
            problems.add("frames", "frames: null values inside frames")
        if summary.feature_dim == 0:
            problems.add("frames", "frames: feature dimension D is 0")
        _check_optional_columns(batch, ids, summary, problems)
        summary.num_videos += batch.num_rows
    if summary.num_videos == 0:
        problems.add("videos", "videos.parquet: no videos")
    return summary, problems.finish()


IMPRESSION_COLUMNS = {
    "user_id": "string",
    "video_id": "string",
    "shown_at": "timestamp (UTC)",
    "watch_seconds": "float64",
}


def check_impressions_schema(schema: pa.Schema) -> list[str]:
    problems = _Problems()
    for name in ("user_id", "video_id"):
        if name not in schema.names:
            problems.add("schema", f"{name}: missing column (string)")
        elif not _is_string(schema.field(name).type):
            problems.add("schema", _id_type_problem(name, schema.field(name).type))
    _check_timestamp(schema, "shown_at", problems, required=True)
    if "watch_seconds" not in schema.names:
        problems.add("schema", "watch_seconds: missing column (float64)")
    elif not (
        pa.types.is_floating(schema.field("watch_seconds").type)
        or pa.types.is_integer(schema.field("watch_seconds").type)
    ):
        problems.add(
            "schema", f"watch_seconds: expected float64, found {schema.field('watch_seconds').type}"
        )
    return problems.finish()


def validate_impressions(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    known_video_ids: set[str] | None,
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S,
) -> tuple[ImpressionsSummary, list[str]]:
    """Check every impression; ``known_video_ids`` (from videos.parquet) finds dangling ids."""
    problems = _Problems()
    schema_problems = check_impressions_schema(schema)
    summary = ImpressionsSummary()
    if schema_problems:
        return summary, schema_problems
    users: set[str] = set()
    row = 0
    for batch in batches:
        uids = batch.column("user_id")
        vids = batch.column("video_id")
        secs = batch.column("watch_seconds").cast(pa.float64())
        shown = batch.column("shown_at")
        for name, col in (("user_id", uids), ("video_id", vids)):
            bad = pc.or_(pc.is_null(col), pc.equal(pc.utf8_length(col), 0))
            for i in np.flatnonzero(np.asarray(bad.fill_null(True))):
                problems.add(name, f"{name}: empty or null id at row {row + int(i)}")
        if shown.null_count:
            for i in np.flatnonzero(np.asarray(pc.is_null(shown))):
                problems.add(
                    "shown_at",
                    f"shown_at: null timestamp at row {row + int(i)} (user {uids[int(i)].as_py()!r})",
                )
        s = secs.to_numpy(zero_copy_only=False)
        bad_s = ~np.isfinite(s) | (s < 0)
        for i in np.flatnonzero(bad_s):
            problems.add(
                "watch_seconds",
                f"watch_seconds: {s[i]} at row {row + int(i)} (user {uids[int(i)].as_py()!r}, "
                f"video {vids[int(i)].as_py()!r}) must be finite and >= 0",
            )
        if known_video_ids is not None:
            vlist = vids.to_pylist()
            for k, v in enumerate(vlist):
                if v and v not in known_video_ids:
                    problems.add(
                        "video_id",
                        f"video_id: impression at row {row + k} names unknown video {v!r}",
                    )
        users.update(u for u in uids.to_pylist() if u)
        summary.num_valid_watches += int(np.sum(np.nan_to_num(s, nan=-1.0) >= watch_threshold_s))
        if len(shown) - shown.null_count:
            lo, hi = pc.min(shown).as_py(), pc.max(shown).as_py()
            summary.shown_min = lo if summary.shown_min is None else min(summary.shown_min, lo)
            summary.shown_max = hi if summary.shown_max is None else max(summary.shown_max, hi)
        row += batch.num_rows
    summary.num_impressions = row
    summary.num_users = len(users)
    return summary, problems.finish()


def iter_chunks(table: pa.Table, rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``rows`` rows from an in-memory table (tests, small data)."""
    yield from table.to_batches(max_chunksize=rows)
