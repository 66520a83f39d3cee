from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.data.yt8m import (
    CorruptRecordError,
    encode_example,
    encode_sequence_example,
    iter_tfrecords,
    masked_crc32c,
    parse_sequence_example,
    write_tfrecord,
)
from recsys.dataset import decode_video_batch


def _fixture(
    path: Path, n: int = 3, seed: int = 0
) -> list[tuple[str, list[int], np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    videos = []
    with open(path, "wb") as fh:
        for i in range(n):
            t = int(rng.integers(1, 6))
            rgb = rng.integers(0, 256, (t, 1024), dtype=np.uint8)
            audio = rng.integers(0, 256, (t, 128), dtype=np.uint8)
            labels = sorted(rng.choice(3862, size=int(rng.integers(1, 4)), replace=False).tolist())
            vid = f"yt{seed}{i:03d}"
            write_tfrecord(fh, encode_sequence_example(vid, labels, rgb, audio))
            videos.append((vid, labels, rgb, audio))
    return videos


def test_masked_crc_known_value() -> None:
    # CRC32C("123456789") = 0xE3069283 (the standard check value); mask it by hand.
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_sequence_example_round_trip() -> None:
    rgb = np.arange(2 * 1024, dtype=np.int64).reshape(2, 1024).astype(np.uint8)
    audio = np.full((2, 128), 7, np.uint8)
    v = parse_sequence_example(encode_sequence_example("abc", [5, 3000, 1], rgb, audio))
    assert v.video_id == "abc" and v.labels == [5, 3000, 1]
    np.testing.assert_array_equal(v.rgb, rgb)
    np.testing.assert_array_equal(v.audio, audio)


def test_convert_round_trips_and_dequantises(run_cli, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"
    videos = _fixture(a, 3, seed=1) + _fixture(b, 2, seed=2)
    code, out, err = run_cli("convert-yt8m", a, b, "--out", tmp_path / "ds")
    assert code == 0, err
    assert "5 videos" in out
    vb = decode_video_batch(
        pq.read_table(tmp_path / "ds" / "videos.parquet", columns=["video_id", "frames", "labels"])
    )
    assert vb.video_ids == [v[0] for v in videos]
    assert vb.labels == [v[1] for v in videos]
    for i, (_, _, rgb, _) in enumerate(videos):
        np.testing.assert_allclose(vb.video(i), rgb * 4.0 / 255.0 + 4.0 / 512.0 - 2.0, atol=1e-5)
    # With audio: D = 1152, audio after rgb.
    code, _, _ = run_cli("convert-yt8m", a, "--out", tmp_path / "ds2", "--audio", "--keep-uint8")
    assert code == 0
    vb2 = decode_video_batch(pq.read_table(tmp_path / "ds2" / "videos.parquet"))
    assert vb2.frames.shape[1] == 1152
    np.testing.assert_allclose(
        vb2.video(0)[:, 1024:], videos[0][3] * 4.0 / 255.0 + 4.0 / 512.0 - 2.0, atol=1e-5
    )


def test_converted_data_set_validates_for_videos(run_cli, tmp_path: Path) -> None:
    _fixture(tmp_path / "a.tfrecord", 2)
    run_cli("convert-yt8m", tmp_path / "a.tfrecord", "--out", tmp_path / "ds")
    code, out, err = run_cli("validate", tmp_path / "ds")
    assert code == 0 and "valid" in out, err  # a videos-only data set is valid
    code, _, err = run_cli("validate", tmp_path / "ds", "--purpose", "classification")
    assert code == 0, err
    code, _, err = run_cli("validate", tmp_path / "ds", "--purpose", "recommendation")
    # For recommendation the only complaint is the missing file.
    assert code == 2 and err.strip() == (
        "error: impressions.parquet: missing (recommendation needs impressions)"
    )


def test_corrupt_data_is_reported(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "c.tfrecord"
    _fixture(path, 2)
    raw = bytearray(path.read_bytes())
    raw[40] ^= 0xFF  # flip a payload byte of the first record
    path.write_bytes(bytes(raw))
    code, _, err = run_cli("convert-yt8m", path, "--out", tmp_path / "ds")
    assert code == 2
    assert "data CRC mismatch in record 0" in err and "Traceback" not in err
    assert not (tmp_path / "ds" / "videos.parquet").exists()


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "t.tfrecord"
    _fixture(path, 2)
    raw = path.read_bytes()
    with pytest.raises(CorruptRecordError, match="truncated record 1"):
        list(iter_tfrecords(io.BytesIO(raw[:-10]), "t"))
    with pytest.raises(CorruptRecordError, match="truncated record header"):
        list(iter_tfrecords(io.BytesIO(raw + b"\x01\x02"), "t"))
    bad_len = bytearray(raw)
    bad_len[0:8] = struct.pack("<Q", 5)
    with pytest.raises(CorruptRecordError, match="length CRC mismatch"):
        list(iter_tfrecords(io.BytesIO(bytes(bad_len)), "t"))


def test_non_sequence_example_payload(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as fh:
        write_tfrecord(fh, b"\x0a\x02\xff")  # field 1, length 2, but only 1 byte
    code, _, err = run_cli("convert-yt8m", path, "--out", tmp_path / "ds")
    assert code == 2 and "record 0 is not a YouTube-8M SequenceExample" in err


def _video_level(
    path: Path, n: int = 4, seed: int = 0
) -> list[tuple[str, list[int], np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    videos = []
    with open(path, "wb") as fh:
        for i in range(n):
            rgb = rng.normal(0, 0.5, 1024).astype(np.float32)
            audio = rng.normal(0, 0.5, 128).astype(np.float32)
            labels = sorted(rng.choice(3862, size=2, replace=False).tolist())
            vid = f"vl{seed}{i:03d}"
            write_tfrecord(fh, encode_example(vid, labels, rgb, audio))
            videos.append((vid, labels, rgb, audio))
    return videos


def test_a_video_level_example_reads_as_a_one_frame_video() -> None:
    rgb = np.linspace(-2, 2, 1024, dtype=np.float32)
    audio = np.linspace(1, -1, 128, dtype=np.float32)
    v = parse_sequence_example(encode_example("xyz", [7, 1], rgb, audio))
    assert v.kind == "video" and v.video_id == "xyz" and v.labels == [7, 1]
    assert v.rgb.shape == (1, 1024) and v.rgb.dtype == np.float32
    np.testing.assert_array_equal(v.rgb[0], rgb)
    np.testing.assert_array_equal(v.audio[0], audio)
    # Floats written one fixed32 field each (unpacked) read the same.
    from pipelines.data.yt8m import _enc_field, _enc_varint

    def entry(key: str, value: bytes) -> bytes:
        return _enc_field(1, _enc_field(1, key.encode()) + _enc_field(2, value))

    unpacked = b"".join(_enc_varint((1 << 3) | 5) + struct.pack("<f", x) for x in rgb)
    payload = _enc_field(
        1,
        entry("id", _enc_field(1, _enc_field(1, b"u")))
        + entry("mean_rgb", _enc_field(2, unpacked)),
    )
    u = parse_sequence_example(payload)
    assert u.kind == "video" and u.labels == [] and u.audio.shape == (0, 128)
    np.testing.assert_array_equal(u.rgb[0], rgb)
    short = encode_example("bad", [], rgb[:1000], audio)
    with pytest.raises(ValueError, match="1000 values, expected 1024"):
        parse_sequence_example(short)


def test_convert_video_level_records_validates_and_keeps_the_means(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "vl.tfrecord"
    videos = _video_level(src, 5, seed=3)
    code, out, err = run_cli("convert-yt8m", src, "--out", tmp_path / "ds", "--audio")
    assert code == 0, err
    assert "5 videos, 5 frames (video-level: one frame a video)" in out
    vb = decode_video_batch(pq.read_table(tmp_path / "ds" / "videos.parquet").to_batches()[0])
    assert vb.video_ids == [v[0] for v in videos]
    assert (vb.lengths == 1).all() and vb.frames.shape == (5, 1152)
    for i, (_, _, rgb, audio) in enumerate(videos):
        np.testing.assert_array_equal(
            vb.frames[i], np.concatenate([rgb, audio])
        )  # not dequantised again
    code, out, err = run_cli("validate", tmp_path / "ds", "--purpose", "classification")
    assert code == 0, err


def test_mixed_kinds_and_empty_outputs_are_refused(run_cli, tmp_path: Path) -> None:
    frames, means = tmp_path / "f.tfrecord", tmp_path / "m.tfrecord"
    _fixture(frames, 2, seed=4)
    _video_level(means, 2, seed=5)
    code, _, err = run_cli("convert-yt8m", frames, means, "--out", tmp_path / "mixed")
    assert code == 2 and "Traceback" not in err
    assert "video-level records" in err and "frame-level records" in err
    assert not (tmp_path / "mixed" / "videos.parquet").exists()
    hollow = tmp_path / "hollow.tfrecord"
    with open(hollow, "wb") as fh:
        for i in range(3):
            empty = np.zeros((0, 1024), np.uint8)
            write_tfrecord(
                fh, encode_sequence_example(f"h{i}", [1], empty, np.zeros((0, 128), np.uint8))
            )
    code, _, err = run_cli("convert-yt8m", hollow, "--out", tmp_path / "hollow")
    assert code == 2 and "no videos to write: all 3 records had no frames" in err
    nothing = tmp_path / "nothing.tfrecord"
    nothing.write_bytes(b"")
    code, _, err = run_cli("convert-yt8m", nothing, "--out", tmp_path / "nothing")
    assert code == 2 and "no records in the input files" in err
