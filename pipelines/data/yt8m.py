"""YouTube-8M frame-level TFRecords -> ``videos.parquet``, without TensorFlow.

A TFRecord file is a sequence of records::

    uint64 length (little endian) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

Each record of the frame-level data set is a ``tf.train.SequenceExample`` with
context features ``id`` (bytes) and ``labels`` (int64 list), and feature lists
``rgb`` (1024 uint8 per frame) and ``audio`` (128 uint8 per frame). We decode the
few protobuf messages involved by hand (wire types 0 and 2 only) and check both
CRCs of every record.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


def _feature_int64(feature: bytes) -> list[int]:
    out: list[int] = []
    for f, _, v in _fields(feature):
        if f != 3 or not isinstance(v, bytes):  # Int64List
            continue
        for lf, wire, lv in _fields(v):
            if lf != 1:
                continue
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
    rgb: np.ndarray  # (T, 1024) uint8
    audio: np.ndarray  # (T, 128) uint8


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

    def stack(name: str, dim: int) -> np.ndarray:
        frames = lists.get(name, [])
        if any(len(fr) != dim for fr in frames):
            raise ValueError(f"feature list {name!r} has frames of size != {dim}")
        if not frames:
            return np.zeros((0, dim), dtype=np.uint8)
        return np.frombuffer(b"".join(frames), dtype=np.uint8).reshape(len(frames), dim)

    return YT8MVideo(ids[0].decode("utf-8"), labels, stack("rgb", 1024), stack("audio", 128))


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
) -> dict[str, int]:
    """Convert TFRecords into ``OUT/videos.parquet``; returns counts.

    Written to a temporary file and renamed, so a failure leaves no partial output.
    Videos with no frames are skipped and counted (the contract needs T >= 1).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema = _videos_schema(dequantise)
    tmp = out / ".videos.parquet.partial"
    counts = {"videos": 0, "skipped_empty": 0, "frames": 0}
    ids: list[str] = []
    frame_arrays: list[np.ndarray] = []
    label_lists: list[list[int]] = []
    seen: set[str] = set()

    def flush(writer: pq.ParquetWriter) -> None:
        if ids:
            flat = np.concatenate(frame_arrays)
            lengths = np.array([len(a) for a in frame_arrays])
            table = pa.table(
                {
                    "video_id": pa.array(ids, pa.string()),
                    "frames": frames_to_arrow(flat, lengths),
                    "labels": pa.array(label_lists, pa.list_(pa.int32())),
                },
                schema=schema,
            )
            writer.write_table(table)
            ids.clear()
            frame_arrays.clear()
            label_lists.clear()

    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for f in files:
                for video in iter_yt8m_videos(f):
                    if video.video_id in seen:
                        raise UserInputError(
                            f"{Path(f).name}: duplicate video id {video.video_id!r}"
                        )
                    seen.add(video.video_id)
                    feats = video.rgb
                    if with_audio:
                        if len(video.audio) != len(video.rgb):
                            raise UserInputError(
                                f"{Path(f).name}: video {video.video_id!r} has {len(video.rgb)} rgb "
                                f"but {len(video.audio)} audio frames"
                            )
                        feats = np.concatenate([video.rgb, video.audio], axis=1)
                    if len(feats) == 0:
                        counts["skipped_empty"] += 1
                        continue
                    ids.append(video.video_id)
                    frame_arrays.append(dequantize(feats) if dequantise else feats)
                    label_lists.append(video.labels)
                    counts["videos"] += 1
                    counts["frames"] += len(feats)
                    if len(ids) >= batch_size:
                        flush(writer)
            flush(writer)
        os.replace(tmp, out / "videos.parquet")
    finally:
        if tmp.exists():
            tmp.unlink()
    return counts
