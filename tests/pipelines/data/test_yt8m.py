from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.data.yt8m import (
    CorruptRecordError,
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
