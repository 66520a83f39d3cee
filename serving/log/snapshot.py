"""Snapshots of what a replica derives from the store's log, so a replica starts from the
newest snapshot plus the log after it instead of replaying the whole log.

A snapshot holds, at one point of the log (the follower's horizon and the rows applied
above it): ingested videos and their payload digests, takedowns and erasures, every
watch history, the online user effects and their windows, the online per-video
statistics with each user's share, and the counters. Restoring it over the same
artifact gives a state equal bit for bit to the one that replayed the log to that point;
the tail of the log then applies as it would have.

The body is a NumPy ``.npz`` (arrays and one JSON header; read with
``allow_pickle=False``: nothing executable) behind a magic string and the SHA-256 of the
rest. ``decode`` refuses anything else, another format version or another artifact's
snapshot with ``SnapshotError``; the caller then replays the whole log.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.online.users import Window
from recsys.online.videos import UserShares
from serving.histories import MAX_ROW

MAGIC = b"RECSYS-SNAPSHOT\n"
FORMAT = 3
#: formats this version restores: 2 had no pending refits and per-video shares summed by
#: video (a sum is a term too)
READS = (2, 3)


class SnapshotError(ValueError):
    """A snapshot that cannot be used (damaged, foreign or of another format)."""


@dataclass
class Picture:
    """What a snapshot holds. Taken: references under the state's locks (cheap, shallow
    copies; ``encode`` turns them into arrays outside the locks; every array referenced
    is never mutated by the state, which replaces arrays whole). Restored: a decoded
    snapshot checked against the state it will go into (``restore_plan``), nothing
    applied yet, so a bad snapshot leaves the state as it was."""

    meta: dict[str, Any]
    #: every catalogue id by row (the artifact's, then the uploads'): shares name rows
    catalogue_ids: list[str]
    uploads: list[str]
    upload_emb: np.ndarray
    histories: dict[str, np.ndarray]
    effects: dict[str, np.ndarray]
    windows: dict[str, Window]
    video_stats: dict[str, tuple[np.ndarray, np.ndarray]]
    shares: dict[str, UserShares]


def _ragged(values: list[list[Any]]) -> tuple[np.ndarray, list[Any]]:
    """(offsets (n + 1,), flat) of a list of lists."""
    offsets = np.zeros(len(values) + 1, np.int64)
    offsets[1:] = np.cumsum([len(v) for v in values])
    return offsets, [x for v in values for x in v]


def _stack(rows: list[np.ndarray], shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.stack(rows).astype(dtype, copy=False) if rows else np.zeros((0, *shape), dtype)


def _concat(parts: list[np.ndarray], shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return (
        np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, *shape), dtype)
    )


def encode(c: Picture, random_dim: int, video_dim: int) -> bytes:
    """The snapshot's body (``MAGIC``, SHA-256, npz)."""
    arrays: dict[str, np.ndarray] = {"upload_emb": np.asarray(c.upload_emb, np.float32)}
    hist_users = list(c.histories)
    hists = [c.histories[u] for u in hist_users]  # int32 views: one copy, in _concat
    arrays["hist_offsets"] = np.concatenate([[0], np.cumsum([len(h) for h in hists])]).astype(
        np.int64
    )
    arrays["hist_rows"] = _concat(hists, (), np.int64)
    eff_users = list(c.effects)
    arrays["effects"] = _stack([c.effects[u] for u in eff_users], (random_dim,), np.float64)
    win_users = list(c.windows)
    wins = [c.windows[u] for u in win_users]
    arrays["win_offsets"] = np.concatenate([[0], np.cumsum([len(w.y) for w in wins])]).astype(
        np.int64
    )
    # A window's keys are catalogue rows (the service) or design vectors (width q).
    width: tuple[int, ...] = () if not wins or wins[0].keys.ndim == 1 else (random_dim,)
    key_type: type = np.int64 if width == () else np.float64
    arrays["win_keys"] = _concat([w.keys for w in wins], width, key_type)
    arrays["win_y"] = _concat([w.y for w in wins], (), np.float64)
    arrays["win_offset"] = _concat([w.offset for w in wins], (), np.float64)
    stat_ids = list(c.video_stats)
    arrays["stat_g"] = _stack([c.video_stats[v][0] for v in stat_ids], (video_dim,), np.int64)
    arrays["stat_h"] = _stack(
        [c.video_stats[v][1] for v in stat_ids], (video_dim, video_dim), np.int64
    )
    share_users = list(c.shares)
    mine = [c.shares[u] for u in share_users]
    arrays["share_offsets"], share_videos = _ragged([list(m.videos) for m in mine])
    row_of = {v: i for i, v in enumerate(c.catalogue_ids)}
    arrays["share_rows"] = np.fromiter(
        (row_of[v] for v in share_videos), np.int64, len(share_videos)
    )
    arrays["share_g"] = _concat([m.g for m in mine], (video_dim,), np.int64)
    arrays["share_h"] = _concat([m.h for m in mine], (video_dim, video_dim), np.int64)
    header = {
        **c.meta,
        "format": FORMAT,
        "uploads": c.uploads,
        "hist_users": hist_users,
        "effect_users": eff_users,
        "window_users": win_users,
        "stat_videos": stat_ids,
        "share_users": share_users,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    npz = buf.getvalue()
    return MAGIC + hashlib.sha256(npz).digest() + npz


@dataclass
class Decoded:
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def histories(self) -> dict[str, np.ndarray]:
        """Each user's history, int32 views of one array (``Histories.restore`` keeps
        them as they are: no buffer a user); ``restore_plan`` checked their rows."""
        offsets, rows = self.arrays["hist_offsets"], self.arrays["hist_rows"].astype(np.int32)
        bounds = offsets.tolist()
        return {u: rows[bounds[i] : bounds[i + 1]] for i, u in enumerate(self.header["hist_users"])}

    def effects(self) -> dict[str, np.ndarray]:
        eff = self.arrays["effects"]
        return {u: eff[i].copy() for i, u in enumerate(self.header["effect_users"])}

    def windows(self, maxlen: int) -> dict[str, Window]:
        a, users = self.arrays, self.header["window_users"]
        off = a["win_offsets"]
        out = {}
        for i, u in enumerate(users):
            s, e = int(off[i]), int(off[i + 1])
            if e - s > maxlen:
                raise SnapshotError("a window longer than this service keeps")
            out[u] = Window(
                a["win_keys"][s:e].copy(), a["win_y"][s:e].copy(), a["win_offset"][s:e].copy()
            )
        return out

    def video_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        g, h = self.arrays["stat_g"], self.arrays["stat_h"]
        return {v: (g[i].copy(), h[i].copy()) for i, v in enumerate(self.header["stat_videos"])}

    def shares(self, catalogue_ids: list[str]) -> dict[str, UserShares]:
        """Each user's shares, their videos named by the catalogue's own id strings."""
        a = self.arrays
        off, rows = a["share_offsets"], a["share_rows"].tolist()
        out = {}
        for i, u in enumerate(self.header["share_users"]):
            s, e = int(off[i]), int(off[i + 1])
            out[u] = UserShares(
                tuple(catalogue_ids[r] for r in rows[s:e]),
                a["share_g"][s:e].copy(),
                a["share_h"][s:e].copy(),
            )
        return out


def decode(body: bytes, artifact_version: str) -> Decoded:
    """The snapshot in ``body``; SnapshotError when it is damaged, of another format or
    of another artifact than ``artifact_version``."""
    head = len(MAGIC) + 32
    if len(body) < head or not body.startswith(MAGIC):
        raise SnapshotError("not a snapshot")
    npz = body[head:]
    if hashlib.sha256(npz).digest() != body[len(MAGIC) : head]:
        raise SnapshotError("checksum mismatch (a damaged snapshot)")
    try:
        with np.load(io.BytesIO(npz), allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"unreadable ({exc})") from None
    # One string object per user across the lists (json gives each list its own).
    canon: dict[str, str] = {}
    for key in ("hist_users", "effect_users", "window_users", "share_users"):
        if isinstance(header.get(key), list):
            header[key] = [canon.setdefault(u, u) for u in header[key]]
    if header.get("format") not in READS:
        raise SnapshotError(f"format {header.get('format')!r}, this service reads {READS}")
    if header.get("artifact_version") != artifact_version:
        raise SnapshotError("taken over another artifact")
    return Decoded(header, arrays)


def restore_plan(d: Decoded, catalogue_ids: list[str], dim: int, window: int) -> Picture:
    """``d`` checked for a state whose artifact has the videos ``catalogue_ids`` of ``dim``
    values and whose online windows hold ``window`` rows; SnapshotError when it does not
    fit."""
    catalogue_size = len(catalogue_ids)
    try:
        h = d.header
        uploads = [str(v) for v in h["uploads"]]
        emb = d.arrays["upload_emb"]
        if emb.shape != (len(uploads), dim) or not np.isfinite(emb).all():
            raise SnapshotError("its uploads do not fit the artifact's embedding size")
        rows = catalogue_size + len(uploads)
        flat = d.arrays["hist_rows"]
        if len(flat) and (flat.min() < 0 or flat.max() >= min(rows, MAX_ROW + 1)):
            raise SnapshotError("a history names a row the catalogue does not have")
        histories = d.histories()
        share_rows = d.arrays["share_rows"]
        if len(share_rows) and (share_rows.min() < 0 or share_rows.max() >= rows):
            raise SnapshotError("a share names a row the catalogue does not have")
        keys = d.arrays["win_keys"]
        if keys.ndim == 1 and len(keys) and (keys.min() < 0 or keys.max() >= rows):
            raise SnapshotError("a window names a row the catalogue does not have")
        if len(h["counters"]) != 4 or set(h["horizon"]) != set(h["applied"]):
            raise SnapshotError("a damaged header")
        all_ids = [*catalogue_ids, *uploads]
        plan = Picture(
            h,
            all_ids,
            uploads,
            emb,
            histories,
            d.effects(),
            d.windows(window),
            d.video_stats(),
            d.shares(all_ids),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"a damaged snapshot ({type(exc).__name__}: {exc})") from None
    return plan


def return_free_memory() -> None:
    """Hand the heap's free pages back to the system after a load: restoring a snapshot
    and replaying the log free far more than the state keeps, and glibc keeps freed
    arenas otherwise (RSS stays at the load's peak). A no-op where glibc is absent."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
