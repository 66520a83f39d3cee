"""YouTube-8M TFRecords (frame-level or video-level) -> ``videos.parquet``, without
TensorFlow.

A TFRecord file is a sequence of records::

    uint64 length (little endian) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

Each record of the frame-level data set is a ``tf.train.SequenceExample`` with
context features ``id`` (bytes) and ``labels`` (int64 list), and feature lists
``rgb`` (1024 uint8 per frame) and ``audio`` (128 uint8 per frame). Each record of the
video-level data set is a ``tf.train.Example`` with features ``id``, ``labels``,
``mean_rgb`` (1024 floats) and ``mean_audio`` (128 floats): one vector a video,
already dequantised. A video-level record becomes a video of one frame (the contract's
shape; pooling one frame gives that frame), so every job reads either kind. We decode
the few protobuf messages involved by hand (wire types 0, 2 and 5) and check both CRCs
of every record.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.dataset import dequantize, frames_to_arrow
from recsys.errors import UserInputError

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class CorruptRecordError(UserInputError):
    pass


def iter_tfrecords(stream: BinaryIO, name: str = "<stream>") -> Iterator[bytes]:
    """Yield the payload of every record, verifying both CRCs."""
    index = 0
    offset = 0
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise CorruptRecordError(
                f"{name}: truncated record header at byte {offset} (record {index})"
            )
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:])
        if masked_crc32c(header[:8]) != length_crc:
            raise CorruptRecordError(
                f"{name}: length CRC mismatch at byte {offset} (record {index}); corrupt file"
            )
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise CorruptRecordError(
                f"{name}: truncated record {index} at byte {offset}: expected {length} bytes of data"
            )
        if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise CorruptRecordError(
                f"{name}: data CRC mismatch in record {index} at byte {offset}; corrupt file"
            )
        yield data
        offset += 16 + length
        index += 1


def write_tfrecord(stream: BinaryIO, payload: bytes) -> None:
    header = struct.pack("<Q", len(payload))
    stream.write(header + struct.pack("<I", masked_crc32c(header)))
    stream.write(payload + struct.pack("<I", masked_crc32c(payload)))


# --------------------------------------------------------------------------- protobuf


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a message; value is an int or the bytes."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            yield field, wire, val
        elif wire == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise ValueError("truncated length-delimited field")
            yield field, wire, buf[pos : pos + ln]
            pos += ln
        elif wire == 5:
            yield field, wire, buf[pos : pos + 4]
            pos += 4
        elif wire == 1:
            yield field, wire, buf[pos : pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _map_entries(buf: bytes, field_no: int) -> Iterator[tuple[str, bytes]]:
    for f, _, entry in _fields(buf):
        if f != field_no or not isinstance(entry, bytes):
            continue
        key, value = "", b""
        for ef, _, ev in _fields(entry):
            if ef == 1 and isinstance(ev, bytes):
                key = ev.decode("utf-8")
            elif ef == 2 and isinstance(ev, bytes):
                value = ev
        yield key, value


def _feature_bytes(feature: bytes) -> list[bytes]:
    out: list[bytes] = []
    for f, _, v in _fields(feature):
        if f == 1 and isinstance(v, bytes):  # BytesList
            out += [bv for bf, _, bv in _fields(v) if bf == 1 and isinstance(bv, bytes)]
    return out


def _list_values(feature: bytes, kind: int) -> Iterator[tuple[int, int | bytes]]:
    """(wire type, value) of each value field in a Feature's list of this kind (the
    Feature's field number: 2 FloatList, 3 Int64List)."""
    for f, _, v in _fields(feature):
        if f == kind and isinstance(v, bytes):
            for lf, wire, lv in _fields(v):
                if lf == 1:
                    yield wire, lv


def _feature_floats(feature: bytes) -> np.ndarray:
    """A FloatList feature's values (packed, or one fixed32 field per value)."""
    parts: list[np.ndarray] = []
    for wire, lv in _list_values(feature, 2):
        if wire == 2 and isinstance(lv, bytes):  # packed little-endian float32
            if len(lv) % 4:
                raise ValueError("a packed float list whose length is not a multiple of 4")
            parts.append(np.frombuffer(lv, dtype="<f4"))
        elif wire == 5 and isinstance(lv, bytes):  # one unpacked fixed32
            parts.append(np.frombuffer(lv, dtype="<f4"))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _feature_int64(feature: bytes) -> list[int]:
    out: list[int] = []
    for wire, lv in _list_values(feature, 3):
        if wire == 2 and isinstance(lv, bytes):  # packed
            pos = 0
            while pos < len(lv):
                x, pos = _varint(lv, pos)
                out.append(x - (1 << 64) if x >= 1 << 63 else x)
        elif isinstance(lv, int):
            out.append(lv - (1 << 64) if lv >= 1 << 63 else lv)
    return out


@dataclass(frozen=True)
class YT8MVideo:
    video_id: str
    labels: list[int]
    rgb: np.ndarray  # (T, 1024) uint8; video-level: (1, 1024) float32
    audio: np.ndarray  # (T, 128) uint8; video-level: (1, 128) float32
    #: "frame" (a SequenceExample of quantised frames) or "video" (an Example of means)
    kind: str = "frame"


#: what each kind of record is, for messages
KIND_TEXT = {
    "frame": "frame-level records (SequenceExample with rgb/audio frames)",
    "video": "video-level records (Example with mean_rgb/mean_audio)",
}


def parse_sequence_example(payload: bytes) -> YT8MVideo:
    context: dict[str, bytes] = {}
    lists: dict[str, list[bytes]] = {}
    for f, _, v in _fields(payload):
        if f == 1 and isinstance(v, bytes):
            context.update(_map_entries(v, 1))
        elif f == 2 and isinstance(v, bytes):
            for name, flist in _map_entries(v, 1):
                frames = [
                    fb
                    for ff, _, fv in _fields(flist)
                    if ff == 1 and isinstance(fv, bytes)
                    for fb in _feature_bytes(fv)
                ]
                lists[name] = frames
    if "id" not in context:
        raise ValueError("record has no 'id' context feature")
    ids = _feature_bytes(context["id"])
    if not ids:
        raise ValueError("record has an empty 'id'")
    labels = _feature_int64(context["labels"]) if "labels" in context else []
    if "mean_rgb" in context and not lists:  # a video-level tf.train.Example
        return YT8MVideo(
            ids[0].decode("utf-8"),
            labels,
            _mean(context, "mean_rgb", 1024),
            _mean(context, "mean_audio", 128),
            kind="video",
        )

    def stack(name: str, dim: int) -> np.ndarray:
        frames = lists.get(name, [])
        if any(len(fr) != dim for fr in frames):
            raise ValueError(f"feature list {name!r} has frames of size != {dim}")
        if not frames:
            return np.zeros((0, dim), dtype=np.uint8)
        return np.frombuffer(b"".join(frames), dtype=np.uint8).reshape(len(frames), dim)

    return YT8MVideo(ids[0].decode("utf-8"), labels, stack("rgb", 1024), stack("audio", 128))


def _mean(context: dict[str, bytes], name: str, dim: int) -> np.ndarray:
    """A video-level feature as one frame (1, dim) float32; (0, dim) when absent."""
    if name not in context:
        return np.zeros((0, dim), np.float32)
    values = _feature_floats(context[name])
    if len(values) != dim:
        raise ValueError(f"feature {name!r} has {len(values)} values, expected {dim}")
    if not np.isfinite(values).all():
        raise ValueError(f"feature {name!r} has NaN or inf values")
    return values.astype(np.float32).reshape(1, dim)


def encode_example(
    video_id: str, labels: list[int], mean_rgb: np.ndarray, mean_audio: np.ndarray
) -> bytes:
    """A video-level ``tf.train.Example`` (fixtures and tools; ``parse_sequence_example``
    reads it back as a one-frame video)."""

    def entry(key: str, value: bytes) -> bytes:
        return _enc_field(1, _enc_field(1, key.encode()) + _enc_field(2, value))

    def floats(values: np.ndarray) -> bytes:
        return _enc_field(2, _enc_field(1, np.asarray(values, "<f4").tobytes()))

    packed = b"".join(_enc_varint(v & 0xFFFFFFFFFFFFFFFF) for v in labels)
    features = (
        entry("id", _enc_field(1, _enc_field(1, video_id.encode())))
        + entry("labels", _enc_field(3, _enc_field(1, packed)))
        + entry("mean_rgb", floats(mean_rgb))
        + entry("mean_audio", floats(mean_audio))
    )
    return _enc_field(1, features)


def _enc_varint(x: int) -> bytes:
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_field(field: int, payload: bytes) -> bytes:
    return _enc_varint((field << 3) | 2) + _enc_varint(len(payload)) + payload


def encode_sequence_example(
    video_id: str, labels: list[int], rgb: np.ndarray, audio: np.ndarray
) -> bytes:
    """The inverse of ``parse_sequence_example`` (for writing fixtures and tools)."""

    def bytes_feature(values: list[bytes]) -> bytes:
        return _enc_field(1, b"".join(_enc_field(1, v) for v in values))

    def int64_feature(values: list[int]) -> bytes:
        packed = b"".join(_enc_varint(v & 0xFFFFFFFFFFFFFFFF) for v in values)
        return _enc_field(3, _enc_field(1, packed))

    def entry(key: str, value: bytes) -> bytes:
        return _enc_field(1, _enc_field(1, key.encode()) + _enc_field(2, value))

    context = entry("id", bytes_feature([video_id.encode()])) + entry(
        "labels", int64_feature(labels)
    )
    flists = b""
    for name, arr in (("rgb", rgb), ("audio", audio)):
        feats = b"".join(
            _enc_field(1, bytes_feature([row.tobytes()])) for row in np.asarray(arr, np.uint8)
        )
        flists += entry(name, feats)
    return _enc_field(1, context) + _enc_field(2, flists)


# --------------------------------------------------------------------------- conversion


def iter_yt8m_videos(path: str | os.PathLike[str]) -> Iterator[YT8MVideo]:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{p}: file not found")
    with open(p, "rb") as fh:
        for i, payload in enumerate(iter_tfrecords(fh, p.name)):
            try:
                yield parse_sequence_example(payload)
            except ValueError as exc:
                raise CorruptRecordError(
                    f"{p.name}: record {i} is not a YouTube-8M SequenceExample ({exc})"
                ) from None


def _videos_schema(dequantised: bool) -> pa.Schema:
    value = pa.float32() if dequantised else pa.uint8()
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("frames", pa.list_(pa.list_(value))),
            ("labels", pa.list_(pa.int32())),
        ]
    )


def convert_yt8m(
    files: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    with_audio: bool = False,
    dequantise: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Convert TFRecords into ``OUT/videos.parquet``; returns counts and the records'
    kind ("frame" or "video").

    Written to a temporary file and renamed, so a failure leaves no partial output.
    Frame-level videos with no frames are skipped and counted (the contract needs
    T >= 1). Video-level records become one-frame videos of float32 means (already
    dequantised: ``dequantise`` does not apply). Files mixing the two kinds, and a run
    that would write no video, are refused (UserInputError naming why).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".videos.parquet.partial"
    counts: dict[str, Any] = {"videos": 0, "skipped_empty": 0, "frames": 0, "kind": None}
    batch = _Batch()
    seen: set[str] = set()
    writer: pq.ParquetWriter | None = None
    try:
        for f in files:
            for video in iter_yt8m_videos(f):
                _check_kind(counts, video, Path(f).name)
                if video.video_id in seen:
                    raise UserInputError(f"{Path(f).name}: duplicate video id {video.video_id!r}")
                seen.add(video.video_id)
                feats = _features(video, with_audio, Path(f).name)
                if len(feats) == 0:
                    counts["skipped_empty"] += 1
                    continue
                if video.kind == "frame" and dequantise:
                    feats = dequantize(feats)
                if writer is None:
                    quantised = video.kind == "frame" and not dequantise
                    writer = pq.ParquetWriter(tmp, _videos_schema(not quantised))
                batch.add(video.video_id, feats, video.labels)
                counts["videos"] += 1
                counts["frames"] += len(feats)
                if len(batch.ids) >= batch_size:
                    batch.flush(writer)
        if writer is None:
            raise UserInputError(_nothing_written(counts))
        batch.flush(writer)
        writer.close()
        writer = None
        os.replace(tmp, out / "videos.parquet")
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return counts


def _check_kind(counts: dict[str, Any], video: YT8MVideo, name: str) -> None:
    kind = counts["kind"]
    if kind is None:
        counts["kind"] = video.kind
    elif kind != video.kind:
        raise UserInputError(
            f"{name}: {KIND_TEXT[video.kind]} after {KIND_TEXT[kind]}: convert each kind "
            "into its own data set"
        )


def _features(video: YT8MVideo, with_audio: bool, name: str) -> np.ndarray:
    if not with_audio:
        return video.rgb
    if len(video.audio) != len(video.rgb):
        raise UserInputError(
            f"{name}: video {video.video_id!r} has {len(video.rgb)} rgb "
            f"but {len(video.audio)} audio {'frames' if video.kind == 'frame' else 'vectors'}"
        )
    return np.concatenate([video.rgb, video.audio], axis=1)


def _nothing_written(counts: dict[str, Any]) -> str:
    if counts["kind"] is None:
        return "no records in the input files: nothing to convert"
    return (
        f"no videos to write: all {counts['skipped_empty']} records had no frames "
        "(frame-level records without rgb frames)"
    )


class _Batch:
    """Videos gathered for one row group."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.frames: list[np.ndarray] = []
        self.labels: list[list[int]] = []

    def add(self, video_id: str, frames: np.ndarray, labels: list[int]) -> None:
        self.ids.append(video_id)
        self.frames.append(frames)
        self.labels.append(labels)

    def flush(self, writer: pq.ParquetWriter) -> None:
        if not self.ids:
            return
        lengths = np.array([len(a) for a in self.frames])
        table = pa.table(
            {
                "video_id": pa.array(self.ids, pa.string()),
                "frames": frames_to_arrow(np.concatenate(self.frames), lengths),
                "labels": pa.array(self.labels, pa.list_(pa.int32())),
            },
            schema=writer.schema,
        )
        writer.write_table(table)
        self.ids.clear()
        self.frames.clear()
        self.labels.clear()
