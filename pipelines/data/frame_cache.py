"""The on-disk frame store: ``videos.parquet``'s frames once, flat and memory-mapped.

Training samples a few frames of random videos every step; Parquet's nested lists can
only be read a row group at a time, so the frames are copied once into a flat file
(in their stored type: uint8 stays uint8) that a ``np.memmap`` reads frame by frame.
The copy is rebuilt when ``videos.parquet`` changes (size, modification time or footer
differ) and whenever it is truncated, half-written or from another file: it is never
trusted, only checked. Resident memory then holds the per-video ids and offsets, not
the frames (those are page cache, which the kernel can drop).

Where: ``DATA/.recsys-cache/frames`` when the data set directory is writable, else
``$RECSYS_CACHE_DIR`` (default ``~/.cache/recsys``) under a name derived from the data
set's path. Builds are serialised by a lock file, so torchrun ranks share one build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.io import dataset_dir, iter_video_batches
from recsys.dataset import VIDEOS_FILE
from recsys.durable import fsync_dir
from recsys.errors import UserInputError
from recsys.frames import (
    FRAMES_BIN,
    LAYOUT_JSON,
    LAYOUT_VERSION,
    OFFSETS_NPY,
    VIDEO_IDS_JSON,
    FrameStore,
    open_store_dir,
)

CACHE_SUBDIR = ".recsys-cache"
#: bytes of the Parquet file's tail hashed into its fingerprint (the footer: schema,
#: row groups, their offsets and statistics)
_TAIL_BYTES = 1 << 16


def source_fingerprint(videos: Path) -> dict[str, Any]:
    """What identifies a ``videos.parquet``: size, modification time and a hash of its
    footer; any rewrite changes at least one."""
    st = videos.stat()
    with open(videos, "rb") as fh:
        fh.seek(max(0, st.st_size - _TAIL_BYTES))
        tail = hashlib.sha256(fh.read()).hexdigest()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "tail_sha256": tail}


def cache_dir(data: Path) -> Path:
    """Where the frame store of data set ``data`` lives (see the module docstring);
    its parent directory exists."""
    inside = data / CACHE_SUBDIR / "frames"
    try:
        inside.parent.mkdir(exist_ok=True)
        if os.access(inside.parent, os.W_OK):
            return inside
    except OSError:
        pass
    root = Path(os.environ.get("RECSYS_CACHE_DIR", Path.home() / ".cache" / "recsys"))
    key = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:16]
    target = root / "frames" / key
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(
            f"cannot write a frame store for {data} ({exc.strerror}); set RECSYS_CACHE_DIR"
        ) from None
    return target


def open_frame_store(data: str | os.PathLike[str], progress: bool = False) -> FrameStore:
    """The memory-mapped frame store of a data set, built (or rebuilt) first when the
    cached one is missing, stale or damaged."""
    data_dir = dataset_dir(data)
    videos = data_dir / VIDEOS_FILE
    target = cache_dir(data_dir)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fingerprint = source_fingerprint(videos)
        store = _open_if_current(target, fingerprint)
        if store is not None:
            return store
        t0 = time.perf_counter()
        if progress:
            print(f"building the frame store of {videos} in {target} ...", flush=True)
        _build(data_dir, target, fingerprint)
        store = open_store_dir(target)
        if progress:
            gb = store.nbytes / 1e9
            print(
                f"frame store: {len(store)} videos, {len(store.frames)} frames, "
                f"{store.frames.dtype} ({gb:.2f} GB), {time.perf_counter() - t0:.1f} s"
            )
        return store


def current_frame_store(data: str | os.PathLike[str]) -> FrameStore | None:
    """The data set's frame store when one is built and current (never builds one)."""
    data_dir = dataset_dir(data)
    target = cache_dir(data_dir)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _open_if_current(target, source_fingerprint(data_dir / VIDEOS_FILE))


def _open_if_current(target: Path, fingerprint: dict[str, Any]) -> FrameStore | None:
    if not target.exists():
        return None
    try:
        layout = json.loads((target / LAYOUT_JSON).read_text())
        if layout.get("source") != fingerprint:
            return None
        return open_store_dir(target)
    except (OSError, ValueError):
        return None  # stale, truncated or half-written: rebuilt, never trusted


def _build(data_dir: Path, target: Path, fingerprint: dict[str, Any]) -> None:
    """Stream the frames into a new directory beside ``target`` and swap it in; the
    layout file is written last, so a build cut short is never mistaken for a store."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        ids, lengths, dtype, dim = _write_frames(iter_batches(data_dir), tmp / FRAMES_BIN)
        np.save(tmp / OFFSETS_NPY, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        (tmp / VIDEO_IDS_JSON).write_text(json.dumps(ids))
        layout = {
            "version": LAYOUT_VERSION,
            "dtype": dtype,
            "feature_dim": dim,
            "num_frames": int(sum(lengths)),
            "num_videos": len(ids),
            "source": fingerprint,
        }
        _write_synced(tmp / LAYOUT_JSON, json.dumps(layout).encode())
        fsync_dir(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def iter_batches(data_dir: Path) -> Iterator[Any]:
    return iter_video_batches(data_dir, batch_size=64, keep_uint8=True)


def _write_frames(batches: Iterator[Any], path: Path) -> tuple[list[str], list[int], str, int]:
    """Append every batch's frames to ``path``; (ids, frame counts, dtype name, D)."""
    ids: list[str] = []
    lengths: list[int] = []
    dtype: np.dtype[Any] | None = None
    dim = 0
    with open(path, "wb") as fh:
        for vb in batches:
            if dtype is None:
                dtype, dim = vb.frames.dtype, int(vb.frames.shape[1])
            if vb.frames.dtype != dtype or vb.frames.shape[1] != dim:
                raise UserInputError(
                    f"{VIDEOS_FILE}: frames change type or dimension between row groups "
                    f"({dtype}, D = {dim} then {vb.frames.dtype}, D = {vb.frames.shape[1]})"
                )
            fh.write(np.ascontiguousarray(vb.frames).tobytes())
            ids.extend(vb.video_ids)
            lengths.extend(int(n) for n in vb.lengths)
        fh.flush()
        os.fsync(fh.fileno())
    if not ids or dtype is None:
        raise UserInputError(f"{VIDEOS_FILE}: no videos to load")
    if len(set(ids)) != len(ids):
        raise UserInputError(f"{VIDEOS_FILE}: video ids are not unique")
    return ids, lengths, str(dtype), dim


def _write_synced(path: Path, payload: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
