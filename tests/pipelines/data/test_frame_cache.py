"""The on-disk frame store: built once, memory-mapped in the stored type, rebuilt when
the source changes or the cache is damaged, never trusted."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.data.frame_cache import cache_dir, open_frame_store
from pipelines.data.io import iter_video_batches, write_dataset
from recsys.dataset import dequantize
from recsys.frames import FRAMES_BIN, LAYOUT_JSON, FrameStore
from recsys.synthetic.world import SynthConfig, generate_world


def _world(tmp: Path, seed: int = 0, frame_dtype: str = "float32", videos: int = 40) -> Path:
    cfg = SynthConfig(
        seed=seed, num_videos=videos, num_users=10, days=3, feature_dim=6, frame_dtype=frame_dtype
    )
    world = generate_world(cfg)
    out = tmp / f"w{seed}{frame_dtype}"
    write_dataset(out, world.video_batches(max_bytes=2000), world.impressions)
    return out


def _decoded(data: Path) -> FrameStore:
    return FrameStore.from_batches(iter_video_batches(data, batch_size=7))


def test_the_store_is_a_memory_map_of_the_decoded_frames(tmp_path: Path) -> None:
    data = _world(tmp_path)
    store = open_frame_store(data)
    want = _decoded(data)
    assert isinstance(store.frames, np.memmap) and store.frames.dtype == np.float32
    assert store.video_ids == want.video_ids
    np.testing.assert_array_equal(store.offsets, want.offsets)
    np.testing.assert_array_equal(np.asarray(store.frames), want.frames)
    built = (cache_dir(data) / FRAMES_BIN).stat().st_mtime_ns
    again = open_frame_store(data)  # reused, not rebuilt
    assert (cache_dir(data) / FRAMES_BIN).stat().st_mtime_ns == built
    assert again.video_ids == store.video_ids


def test_uint8_frames_stay_uint8_and_dequantise_per_batch(tmp_path: Path) -> None:
    data = _world(tmp_path, frame_dtype="uint8")
    store = open_frame_store(data)
    assert store.frames.dtype == np.uint8
    assert store.nbytes == len(store.frames) * store.feature_dim  # one byte a value
    want = _decoded(data)  # the float32 path dequantises on read
    rows = np.array([3, 0, 17])
    got, mask = store.batch(rows, max_frames=1000)
    ref, ref_mask = want.batch(rows, max_frames=1000)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    raw, _ = store.gather(store.plan(rows, 1000))
    assert raw.dtype == np.uint8
    np.testing.assert_allclose(dequantize(raw[mask]), ref[ref_mask], atol=1e-6)


def test_a_changed_source_is_rebuilt(tmp_path: Path) -> None:
    data = _world(tmp_path, seed=0)
    first = open_frame_store(data)
    other = _world(tmp_path, seed=5, videos=30)
    shutil.copy(other / "videos.parquet", data / "videos.parquet")
    store = open_frame_store(data)
    assert len(store) == 30 != len(first)
    np.testing.assert_array_equal(np.asarray(store.frames), _decoded(other).frames)


@pytest.mark.parametrize("damage", ["truncate", "layout", "foreign", "half_written"])
def test_a_damaged_cache_is_rebuilt_never_trusted(tmp_path: Path, damage: str) -> None:
    data = _world(tmp_path)
    open_frame_store(data)
    cache = cache_dir(data)
    if damage == "truncate":
        with open(cache / FRAMES_BIN, "r+b") as fh:
            fh.truncate(100)
    elif damage == "layout":
        (cache / LAYOUT_JSON).write_text("{not json")
    elif damage == "foreign":  # a store built from another data set, copied in
        other = _world(tmp_path, seed=9)
        open_frame_store(other)
        shutil.rmtree(cache)
        shutil.copytree(cache_dir(other), cache)
    else:
        (cache / LAYOUT_JSON).unlink()
    store = open_frame_store(data)
    np.testing.assert_array_equal(np.asarray(store.frames), _decoded(data).frames)
    assert json.loads((cache / LAYOUT_JSON).read_text())["num_videos"] == 40


def test_a_read_only_data_set_caches_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _world(tmp_path)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p).parent == data else real_access(p, mode)
    )
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(tmp_path / "cache"))
    target = cache_dir(data)
    assert target.is_relative_to(tmp_path / "cache")
    assert open_frame_store(data).source == str(target)


def test_a_mapped_store_pickles_by_path(tmp_path: Path) -> None:
    store = open_frame_store(_world(tmp_path, videos=200))
    blob = pickle.dumps(store)
    assert len(blob) < store.nbytes / 4  # the frames do not travel
    back = pickle.loads(blob)
    assert isinstance(back.frames, np.memmap)
    np.testing.assert_array_equal(np.asarray(back.frames), np.asarray(store.frames))
