"""Reading and writing data sets (the dataset contract in docs/data.md).

Readers stream record batches through pyarrow with memory mapping, so a data set
larger than memory can be processed batch by batch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.data.log_rows import check_rows, log_connection
from pipelines.data.side import USERS_FILE, validate_users
from recsys.dataset import (
    DEFAULT_WATCH_THRESHOLD_S,
    FRAMES_COLUMN,
    IMPRESSIONS_FILE,
    TRUTH_FILE,
    VECTOR_COLUMN,
    VIDEO_TRUTH_FILE,
    VIDEOS_FILE,
    VideoBatch,
    decode_video_batch,
    video_column,
)
from recsys.durable import fsync_dir
from recsys.errors import DatasetError, UserInputError
from recsys.validation import (
    ImpressionsSummary,
    VideosSummary,
    check_impressions_schema,
    check_videos_schema,
    validate_impressions,
    validate_videos,
)


def open_parquet(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """Open a Parquet file memory-mapped; unreadable files raise a one-line UserInputError."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{p}: file not found")
    if not p.is_file():
        raise UserInputError(f"{p}: not a file")
    try:
        return pq.ParquetFile(p, memory_map=True)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{p.name}: not a readable Parquet file ({first})") from None


def impression_batches(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The impressions' schema and record batches, streamed: one Parquet file, or a
    directory of them (the service's archive, ``serving.log.archive``, or a Spark output)."""
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise UserInputError(f"{path.name}: a directory without Parquet files")
        try:
            data = ds.dataset([str(f) for f in files], format="parquet")
        except (pa.ArrowException, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserInputError(f"{path.name}: not readable Parquet files ({first})") from None
        return data.schema, data.to_batches(batch_size=65536)
    pf = open_parquet(path)
    return pf.schema_arrow, pf.iter_batches(batch_size=65536)


def check_job_input(
    data: str | os.PathLike[str], videos: bool = True, impressions: bool = True
) -> None:
    """The contract's checks before a job does any work: the directory, the files the job
    reads, their schemas (footers), and the log's rows (``log_rows.check_rows``: one
    pass, once per version of the files; videos' rows are checked as they are read).
    DatasetError with one line per problem (the CLI: exit 2, no traceback). A URI
    (``s3://...``: Spark reads it) is left to the engine."""
    if "://" in str(data):
        return
    d = Path(data)
    if not d.is_dir():
        raise UserInputError(f"{d}: not a data set directory")
    problems: list[str] = []
    wanted = [(VIDEOS_FILE, videos), (IMPRESSIONS_FILE, impressions)]
    for name, needed in wanted:
        path = d / name
        if not needed:
            continue
        if not path.exists():
            why = (
                "; this job needs impressions (a videos-only data set serves classification "
                "and embedding only, see docs/data.md)"
                if name == IMPRESSIONS_FILE
                else ""
            )
            problems.append(f"{name}: missing{why}")
            continue
        try:
            if name == VIDEOS_FILE:
                schema = open_parquet(path).schema_arrow
                found = check_videos_schema(schema)
            else:
                schema, _ = impression_batches(path)
                found = check_impressions_schema(schema)
        except UserInputError as exc:
            problems.append(str(exc))
            continue
        problems += [f"{name}: {p}" for p in found]
    if problems:
        raise DatasetError(problems)
    if impressions:
        # The log's rows too (one scan, remembered per file version), on every engine:
        # Spark's jobs read the same files and would take a NaN watch time as given.
        path = d / IMPRESSIONS_FILE
        con = log_connection(path)
        try:
            check_rows(con, path)
        finally:
            con.close()


def dataset_dir(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UserInputError(f"{p}: not a data set directory")
    if not (p / VIDEOS_FILE).exists():
        raise UserInputError(f"{p}: missing {VIDEOS_FILE}")
    return p


def iter_record_batches(
    path: str | os.PathLike[str], batch_size: int = 1024, columns: Sequence[str] | None = None
) -> Iterator[pa.RecordBatch]:
    pf = open_parquet(path)
    try:
        yield from pf.iter_batches(
            batch_size=batch_size, columns=list(columns) if columns else None
        )
    except pa.ArrowException as exc:
        raise UserInputError(
            f"{Path(path).name}: cannot read ({str(exc).splitlines()[0]})"
        ) from None


def iter_video_batches(
    data: str | os.PathLike[str],
    batch_size: int = 256,
    with_labels: bool = False,
    feature_dim: int | None = None,
    keep_uint8: bool = False,
) -> Iterator[VideoBatch]:
    """Stream decoded videos of ``DATA/videos.parquet`` in batches (frames float32, or
    uint8 as stored with ``keep_uint8``; a given vector per video as one frame)."""
    path = dataset_dir(data) / VIDEOS_FILE
    cols = ["video_id", video_column(open_parquet(path).schema_arrow.names)]
    if with_labels:
        if "labels" not in open_parquet(path).schema_arrow.names:
            raise UserInputError(f"{path.name}: no labels column")
        cols.append("labels")
    for batch in iter_record_batches(path, batch_size, cols):
        yield decode_video_batch(batch, feature_dim, keep_uint8)


def vectors_given(data: str | os.PathLike[str]) -> bool:
    """Whether the data set gives a vector per video (an ``embedding`` column) rather than
    frames."""
    path = dataset_dir(data) / VIDEOS_FILE
    return video_column(open_parquet(path).schema_arrow.names) == VECTOR_COLUMN


def vector_source(data: str | os.PathLike[str]) -> dict[str, Any]:
    """Where a data set's given vectors come from, for the manifest: the file, the column,
    the column's Parquet metadata (a platform can name its model there, e.g.
    ``{"model": "clip-vit-b32"}``) and the file's size and modification time."""
    path = dataset_dir(data) / VIDEOS_FILE
    f = open_parquet(path).schema_arrow.field(VECTOR_COLUMN)
    meta = {
        k.decode(errors="replace"): v.decode(errors="replace")
        for k, v in (f.metadata or {}).items()
    }
    st = path.stat()
    return {
        "file": str(path.resolve()),
        "column": VECTOR_COLUMN,
        "metadata": meta,
        "size": st.st_size,
        "modified_ns": st.st_mtime_ns,
    }


def video_feature_dim(data: str | os.PathLike[str]) -> int:
    """D of a data set, read from its first video."""
    for vb in iter_video_batches(data, batch_size=1):
        return int(vb.frames.shape[1])
    raise UserInputError(f"{data}: {VIDEOS_FILE} has no videos")


@dataclass
class ValidationReport:
    videos: VideosSummary
    impressions: ImpressionsSummary | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_lines(self) -> list[str]:
        v = self.videos
        if v.kind == VECTOR_COLUMN:
            lines = [
                f"videos: {v.num_videos} (a given vector each, D = {v.feature_dim}, {v.frame_dtype})"
            ]
        else:
            lines = [f"videos: {v.num_videos} (D = {v.feature_dim}, frames {v.frame_dtype})"]
        if v.frames_per_video and v.kind != VECTOR_COLUMN:
            q = np.percentile(v.frames_per_video, [0, 10, 50, 90, 100]).astype(int)
            lines.append("frames per video: min {} / p10 {} / p50 {} / p90 {} / max {}".format(*q))
        if v.num_labelled:
            lines.append(f"labelled videos: {v.num_labelled}")
        if v.created_min is not None:
            lines.append(f"uploads: {v.created_min} .. {v.created_max}")
        if self.impressions is not None:
            i = self.impressions
            lines.append(
                f"impressions: {i.num_impressions} from {i.num_users} users, "
                f"{i.num_valid_watches} valid watches"
            )
            lines.append(f"time span: {i.shown_min} .. {i.shown_max}")
            if isinstance(i.shown_max, datetime) and i.shown_max > datetime.now(UTC):
                lines.append(
                    "warning: the latest impression is after this machine's clock; the "
                    "default test start (90% into the time span) follows it: check the "
                    "times, or pass --test-start"
                )
        return lines


PURPOSES: tuple[str, ...] = ("any", "recommendation", "classification")


def validate_dataset(
    data: str | os.PathLike[str],
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S,
    batch_size: int = 512,
    purpose: str = "any",
) -> ValidationReport:
    """Check a data set against the contract (docs/data.md) for a purpose: ``any`` (videos
    required, impressions checked when present), ``recommendation`` (impressions required)
    or ``classification`` (labels required)."""
    if purpose not in PURPOSES:
        raise UserInputError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    d = Path(data)
    if not d.is_dir():
        raise UserInputError(f"{d}: not a directory")
    problems: list[str] = []
    vpath = d / VIDEOS_FILE
    videos = VideosSummary()
    if not vpath.exists():
        problems.append(f"{VIDEOS_FILE}: missing")
    else:
        try:
            pf = open_parquet(vpath)
            videos, vp = validate_videos(pf.schema_arrow, pf.iter_batches(batch_size=batch_size))
            problems += [f"{VIDEOS_FILE}: {p}" for p in vp]
        except UserInputError as exc:
            problems.append(str(exc))
        except pa.ArrowException as exc:
            problems.append(f"{VIDEOS_FILE}: cannot read ({str(exc).splitlines()[0]})")
    ipath = d / IMPRESSIONS_FILE
    impressions = None
    if not ipath.exists():
        if purpose == "recommendation":
            problems.append(f"{IMPRESSIONS_FILE}: missing (recommendation needs impressions)")
    else:
        try:
            schema, batches = impression_batches(ipath)
            known = videos.video_ids if videos.num_videos else None
            impressions, ip = validate_impressions(schema, batches, known, watch_threshold_s)
            problems += [f"{IMPRESSIONS_FILE}: {p}" for p in ip]
        except UserInputError as exc:
            problems.append(str(exc))
        except pa.ArrowException as exc:
            problems.append(f"{IMPRESSIONS_FILE}: cannot read ({str(exc).splitlines()[0]})")
    if (d / USERS_FILE).exists():
        problems += validate_users(d / USERS_FILE)
    if purpose == "recommendation" and impressions is not None and not impressions.num_impressions:
        problems.append(f"{IMPRESSIONS_FILE}: no impressions (recommendation needs some)")
    if purpose == "classification" and videos.num_videos and not videos.num_labelled:
        problems.append(f"{VIDEOS_FILE}: no labelled videos (classification needs labels)")
    return ValidationReport(videos=videos, impressions=impressions, problems=problems)


_SYNC_BYTES = 64 << 20


@contextlib.contextmanager
def parquet_stream(dest: str | os.PathLike[str]) -> Iterator[Callable[[pa.Table], None]]:
    """``write(table)`` appends to ``.DEST.partial``; on a clean exit the file replaces
    DEST (a reader sees the old file or the whole new one), on an error it is removed.
    Nothing written: no file (the caller decides whether that is an error)."""
    path = Path(dest)
    tmp = path.with_name(f".{path.name}.partial")
    writer: list[pq.ParquetWriter] = []

    def write(table: pa.Table) -> None:
        if not writer:
            writer.append(pq.ParquetWriter(tmp, table.schema))
        writer[0].write_table(table)

    try:
        yield write
        if writer:
            writer.pop().close()
            os.replace(tmp, path)
    finally:
        if writer:
            writer[0].close()
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(
    table: pa.Table | Iterable[pa.Table],
    path: str | os.PathLike[str],
    row_group_size: int | None = None,
) -> None:
    """Write to a temporary file in the same directory, fsync, then rename into place.
    An iterable of tables (one schema) is written one after another, so a file larger
    than memory is never held whole."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    os.close(fd)
    try:
        if isinstance(table, pa.Table):
            pq.write_table(table, tmp, row_group_size=row_group_size)
        else:
            _write_tables(table, tmp, row_group_size)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        fsync_dir(p.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_tables(tables: Iterable[pa.Table], path: str, row_group_size: int | None) -> None:
    """Each table as it comes; synced every ``_SYNC_BYTES`` so that dirty page cache (which
    a container's memory limit charges) stays bounded however large the file grows."""
    writer: pq.ParquetWriter | None = None
    unsynced = 0
    with open(path, "wb") as fh:
        try:
            for t in tables:
                if writer is None:
                    writer = pq.ParquetWriter(fh, t.schema)
                writer.write_table(t, row_group_size=row_group_size)
                unsynced += t.nbytes
                if unsynced >= _SYNC_BYTES:
                    fh.flush()
                    os.fsync(fh.fileno())
                    unsynced = 0
        finally:
            if writer is not None:
                writer.close()
    if writer is None:
        raise ValueError("no tables to write")


def as_given_vectors(batches: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[pa.Table]:
    """Videos with frames -> the same videos given as one vector each (an ``embedding``
    column, the mean frame, in place of ``frames``; every other column kept): the shape a
    platform with a content model per video has (``recsys synth --given-vectors``)."""
    from embeddings.rungs import mean_frames

    for b in batches:
        vb = decode_video_batch(b)
        means = mean_frames(vb.frames, vb.offsets).astype(np.float32)
        t = b if isinstance(b, pa.Table) else pa.Table.from_batches([b])
        col = pa.array(list(means), pa.list_(pa.float32()))
        yield t.drop_columns([FRAMES_COLUMN]).append_column(VECTOR_COLUMN, col)


def write_dataset(
    out: str | os.PathLike[str],
    videos: pa.Table | Iterable[pa.Table],
    impressions: pa.Table,
    truth: pa.Table | None = None,
    video_truth: pa.Table | None = None,
    users: pa.Table | None = None,
) -> Path:
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    # Small row groups keep streaming reads of long videos bounded in memory.
    write_parquet_atomic(videos, o / VIDEOS_FILE, row_group_size=512)
    write_parquet_atomic(impressions, o / IMPRESSIONS_FILE)
    if truth is not None:
        write_parquet_atomic(truth, o / TRUTH_FILE)
    if video_truth is not None:
        write_parquet_atomic(video_truth, o / VIDEO_TRUTH_FILE)
    if users is not None:
        write_parquet_atomic(users, o / USERS_FILE)
    return o
