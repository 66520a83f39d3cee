from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.dataset import (
    DEQUANT_BIAS,
    DEQUANT_SCALE,
    decode_video_batch,
    dequantize,
    frames_to_arrow,
)
from recsys.errors import DatasetError


def _videos(frames: list[np.ndarray], ids: list[str] | None = None) -> pa.Table:
    ids = ids or [f"v{i}" for i in range(len(frames))]
    lengths = np.array([len(f) for f in frames])
    flat = np.concatenate(frames) if frames else np.zeros((0, 1), np.float32)
    return pa.table({"video_id": ids, "frames": frames_to_arrow(flat, lengths)})


def test_decode_round_trips_variable_lengths() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(t, 5)).astype(np.float32) for t in (1, 4, 2)]
    vb = decode_video_batch(_videos(frames))
    assert vb.video_ids == ["v0", "v1", "v2"]
    assert list(vb.lengths) == [1, 4, 2]
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(vb.video(i), f)


def test_decode_respects_slices() -> None:
    rng = np.random.default_rng(1)
    frames = [rng.normal(size=(t, 3)).astype(np.float32) for t in (2, 3, 1, 4)]
    batch = _videos(frames).to_batches()[0].slice(1, 2)
    vb = decode_video_batch(batch)
    assert vb.video_ids == ["v1", "v2"]
    np.testing.assert_array_equal(vb.video(0), frames[1])
    np.testing.assert_array_equal(vb.video(1), frames[2])


def test_padded_and_mask() -> None:
    frames = [np.ones((1, 2), np.float32), 2 * np.ones((3, 2), np.float32)]
    x, mask = decode_video_batch(_videos(frames)).padded()
    assert x.shape == (2, 3, 2)
    assert mask.tolist() == [[True, False, False], [True, True, True]]
    assert x[0, 1:].sum() == 0 and x[1].sum() == 12


def test_uint8_frames_are_dequantised_like_the_starter_code() -> None:
    q = np.array([[0, 128, 255]], dtype=np.uint8)
    vb = decode_video_batch(_videos([q]))
    expected = q.astype(np.float64) * (4.0 / 255.0) + 4.0 / 512.0 - 2.0
    np.testing.assert_allclose(vb.frames, expected, rtol=0, atol=1e-6)
    assert pytest.approx(4 / 255) == DEQUANT_SCALE and pytest.approx(4 / 512 - 2) == DEQUANT_BIAS
    assert dequantize(q).dtype == np.float32


def test_decode_rejects_ragged_and_empty() -> None:
    inner = pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32()))
    ragged = pa.ListArray.from_arrays(pa.array([0, 2], pa.int32()), inner)
    with pytest.raises(DatasetError, match="'a' frame 1 has dimension 1"):
        decode_video_batch(pa.table({"video_id": ["a"], "frames": ragged}))
    empty = pa.ListArray.from_arrays(
        pa.array([0, 0, 1], pa.int32()), pa.array([[1.0]], pa.list_(pa.float32()))
    )
    with pytest.raises(DatasetError, match="'e' has no frames"):
        decode_video_batch(pa.table({"video_id": ["e", "f"], "frames": empty}))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_decode_names_each_video_whose_frames_are_not_finite(bad: float) -> None:
    # 1e300: finite in a float64 file, inf once read as float32
    frames = [np.ones((t, 3)) for t in (2, 3, 1, 4)]
    frames[1][2, 0] = bad  # the last frame of v1
    frames[3][0, 2] = bad  # the first value after v2's one frame
    table = pa.table(
        {
            "video_id": ["v0", "v1", "v2", "v3"],
            "frames": pa.array([f.tolist() for f in frames], pa.list_(pa.list_(pa.float64()))),
        }
    )
    with pytest.raises(DatasetError) as got:
        decode_video_batch(table)
    assert got.value.problems == [
        "frames: video 'v1' contains NaN or inf values",
        "frames: video 'v3' contains NaN or inf values",
    ]
    frames[1][2, 0] = frames[3][0, 2] = 2.0
    ok = table.set_column(1, "frames", pa.array([f.tolist() for f in frames], table.schema[1].type))
    assert decode_video_batch(ok).lengths.tolist() == [2, 3, 1, 4]


@pytest.mark.parametrize("shape", [(0,), (1,), (7, 3), (5, 11), (2, 3, 4)])
@pytest.mark.parametrize("block", [1, 4, 1 << 16])
def test_dequantize_is_the_formula_bit_for_bit(shape, block, monkeypatch) -> None:
    """A block at a time or whole, contiguous or not, every byte value: the bits of
    float32(v) * scale + bias in float32, the starter code's formula."""
    import recsys.dataset as ds

    monkeypatch.setattr(ds, "DEQUANT_BLOCK", block)
    rng = np.random.default_rng(len(shape) * 7 + block)
    values = rng.integers(0, 256, size=shape, dtype=np.uint8)
    want = values.astype(np.float32) * np.float32(ds.DEQUANT_SCALE) + np.float32(ds.DEQUANT_BIAS)
    got = ds.dequantize(values)
    assert got.dtype == np.float32 and got.shape == values.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if values.ndim == 2 and values.shape[1] > 1:  # a strided view
        np.testing.assert_array_equal(ds.dequantize(values[:, ::2]), want[:, ::2])
    every = np.arange(256, dtype=np.uint8)
    table = every.astype(np.float32) * np.float32(ds.DEQUANT_SCALE) + np.float32(ds.DEQUANT_BIAS)
    np.testing.assert_array_equal(ds.dequantize(every).view(np.uint32), table.view(np.uint32))
