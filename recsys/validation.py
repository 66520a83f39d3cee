"""The data set contract's checks (docs/data.md): schemas first, then every row, each
violation a line naming the column and the video or row.

Works on pyarrow schemas and record batches handed to it; the caller opens and streams
the files (``pipelines.data.io``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.dataset import (
    DEFAULT_WATCH_THRESHOLD_S,
    FRAMES_COLUMN,
    MAX_REPORTED_PER_KIND,
    SPLITS,
    VECTOR_COLUMN,
    frame_values_type,
    list_lengths,
    vector_values_type,
    video_column,
)


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
    #: how videos are given: ``frames`` or ``embedding`` (a vector each)
    kind: str = FRAMES_COLUMN
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
    hint = ""
    if pa.types.is_integer(t):
        hint = (
            " (integer ids: cast the column to string, e.g. pyarrow.compute.cast(col, "
            "pyarrow.string()), the same in every file)"
        )
    elif pa.types.is_dictionary(t) and _is_string(t.value_type):
        hint = (
            " (dictionary-encoded, as pandas writes a category column: write plain "
            "strings, e.g. df[col] = df[col].astype(str))"
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
        how = (
            "a time without a zone is ambiguous: localise it, then convert"
            if t.tz is None
            else "the instants are kept by a conversion, e.g. pyarrow.compute.cast(col, "
            "pyarrow.timestamp('us', tz='UTC')) or pandas' .dt.tz_convert('UTC')"
        )
        problems.add("schema", f"{name}: timestamp must be in UTC, found tz={t.tz!r} ({how})")


def check_videos_schema(schema: pa.Schema) -> list[str]:
    problems = _Problems()
    if "video_id" not in schema.names:
        problems.add("schema", "video_id: missing column (string)")
    elif not _is_string(schema.field("video_id").type):
        problems.add("schema", _id_type_problem("video_id", schema.field("video_id").type))
    names = schema.names
    if FRAMES_COLUMN in names and VECTOR_COLUMN in names:
        problems.add(
            "schema",
            "frames and embedding: a file gives videos one way, frames (the embedding is "
            "learned) or embedding (a vector per video, used as given); drop one",
        )
    elif VECTOR_COLUMN in names:
        vt = vector_values_type(schema.field(VECTOR_COLUMN).type)
        if vt is None or not pa.types.is_floating(vt):
            problems.add(
                "schema",
                f"embedding: expected list<float32>, found {schema.field(VECTOR_COLUMN).type}",
            )
    elif FRAMES_COLUMN not in names:
        problems.add(
            "schema",
            "frames: missing column (list<list<float32>>; or an embedding column, "
            "list<float32>, for a vector per video)",
        )
    else:
        vt = frame_values_type(schema.field("frames").type)
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
    summary.kind = video_column(schema.names)
    if summary.kind == VECTOR_COLUMN:
        summary.frame_dtype = str(vector_values_type(schema.field(VECTOR_COLUMN).type))
        check_batch = _check_vectors
    else:
        summary.frame_dtype = str(frame_values_type(schema.field(FRAMES_COLUMN).type))
        check_batch = _check_frames
    for batch in batches:
        ids = batch.column("video_id").to_pylist()
        _check_ids(ids, summary, problems)
        check_batch(batch, ids, summary, problems)
        if summary.feature_dim == 0:
            problems.add(summary.kind, f"{summary.kind}: feature dimension D is 0")
        _check_optional_columns(batch, ids, summary, problems)
        summary.num_videos += batch.num_rows
    if summary.num_videos == 0:
        problems.add("videos", "videos.parquet: no videos")
    return summary, problems.finish()


def _check_ids(ids: list[Any], summary: VideosSummary, problems: _Problems) -> None:
    for i, vid in enumerate(ids):
        if vid is None or vid == "":
            problems.add("video_id", f"video_id: empty or null id at row {summary.num_videos + i}")
        elif vid in summary.video_ids:
            problems.add("video_id", f"video_id: duplicate id {vid!r}")
        else:
            summary.video_ids.add(vid)


def _check_frames(
    batch: pa.RecordBatch, ids: list[Any], summary: VideosSummary, problems: _Problems
) -> None:
    """Each video's frames: present, T >= 1, one D for the file, finite."""
    frames = batch.column(FRAMES_COLUMN)
    t_per_video = list_lengths(frames)
    outer_valid = np.asarray(frames.is_valid())
    inner = frames.flatten()
    d_per_frame = list_lengths(inner)
    inner_valid = np.asarray(inner.is_valid())
    values = inner.flatten()
    val_np = values.to_numpy(zero_copy_only=False) if len(values) else np.zeros(0)
    orel = np.concatenate([[0], np.cumsum(t_per_video)])
    video_nonfinite = _videos_with_nonfinite(val_np, d_per_frame, orel)
    for i, vid in enumerate(ids):
        label = repr(vid)
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
                f"frames: video {label} frame {j} has dimension {int(ds[j])}, "
                f"expected D = {summary.feature_dim} (ragged D)",
            )
            continue
        if video_nonfinite[i]:
            problems.add("frames", f"frames: video {label} contains NaN or inf values")
        summary.frames_per_video.append(t)
    if values.null_count > 0:
        problems.add("frames", "frames: null values inside frames")


def _check_vectors(
    batch: pa.RecordBatch, ids: list[Any], summary: VideosSummary, problems: _Problems
) -> None:
    """Each video's given vector: present, one length for the file, finite, not all zeros
    (a zero vector has no direction: no similarity to anything)."""
    col = batch.column(VECTOR_COLUMN)
    lengths = list_lengths(col)
    valid = np.asarray(col.is_valid())
    values = col.flatten()
    if values.null_count:
        problems.add("embedding", "embedding: null values inside vectors")
        return
    if summary.feature_dim is None and valid.any():
        summary.feature_dim = int(lengths[np.flatnonzero(valid)[0]])
    d = summary.feature_dim
    val_np = values.to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(np.where(valid, lengths, 0))])
    finite_cum = np.concatenate([[0], np.cumsum(~np.isfinite(val_np))])
    nonzero_cum = np.concatenate([[0], np.cumsum(val_np != 0)])  # counts: exact
    for i, vid in enumerate(ids):
        a, b = offsets[i], offsets[i + 1]
        if not valid[i]:
            problems.add("embedding", f"embedding: video {vid!r} has no vector (null)")
        elif lengths[i] != d:
            problems.add(
                "embedding", f"embedding: video {vid!r} has {int(lengths[i])} values, expected {d}"
            )
        elif finite_cum[b] - finite_cum[a]:
            problems.add("embedding", f"embedding: video {vid!r} contains NaN or inf values")
        elif nonzero_cum[b] == nonzero_cum[a]:
            problems.add("embedding", f"embedding: video {vid!r} is all zeros (no direction)")
        else:
            summary.frames_per_video.append(1)


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
