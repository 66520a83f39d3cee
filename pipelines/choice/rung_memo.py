"""A rung's reduction computed once per job, however many stages fit the rung.

``recsys pipeline`` fits every rung of the ladder twice on the same catalogue: to choose
the learned model's starting point (``pipelines.training.starting_point``) and again as
the report's baselines (``pipelines.evaluation.baseline_comparison``). What a rung's fit
reads the frames for (the k-means words, the raw statistic of every video, the PCA and
each PCA size's rows) depends on the frame store, the rung and its seed alone, not on the
GLMix that scores it; only the size choice and the scoring do. Inside
``reusing_rungs(directory)`` that part is written to ``directory`` by the first fit and
read back by the next, bit for bit (``.npy`` files, no pickle), instead of a second pass
over every frame (at 10,000 YouTube-8M-shaped videos the first stage's ladder took 200 s
and the report's 370 s).

Outside ``reusing_rungs`` nothing is kept (a stage run on its own behaves as before). The
files sit on disk, not in memory, so holding them across training costs no memory; the
directory is removed when the block ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.baselines import PCA
from recsys.frames import FrameStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reduction:
    """What a rung's fit computes from the frames: each tried PCA size's L2-normalised
    rows (V, d) in store order, the PCA at the largest size, the words and idf (rungs that
    have them), and how many videos the PCA was fitted on when it was sampled."""

    candidates: dict[int, np.ndarray]
    pca: PCA
    codebook: np.ndarray | None = None
    idf: np.ndarray | None = None
    sampled_videos: int | None = None


class RungMemo:
    """Reductions and k-means words on disk under ``directory``, keyed by everything they
    depend on (``key``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        #: a write failed (a full disk): nothing more is written
        self.failed = False
        #: each store's key, computed once (a store in memory hashes its frames)
        self._store_keys: weakref.WeakKeyDictionary[FrameStore, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def store_key(self, store: FrameStore) -> dict[str, Any]:
        """``store_key(store)``, once per store object while it lives."""
        key = self._store_keys.get(store)
        if key is None:
            key = self._store_keys[store] = store_key(store)
        return key

    def _dir(self, key: dict[str, Any]) -> Path:
        text = json.dumps(key, sort_keys=True)
        return self.directory / hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: dict[str, Any]) -> Reduction | None:
        d = self._dir(key)
        if not (d / "meta.json").exists():  # written last: a partial entry is absent
            self.misses += 1
            return None
        meta = json.loads((d / "meta.json").read_text())
        self.hits += 1
        return Reduction(
            candidates={int(k): _load(d / f"rows_{k}.npy") for k in meta["dims"]},
            pca=PCA(_load(d / "pca_mean.npy"), _load(d / "pca_components.npy")),
            codebook=_load(d / "codebook.npy") if meta["codebook"] else None,
            idf=_load(d / "idf.npy") if meta["idf"] else None,
            sampled_videos=meta["sampled_videos"],
        )

    def put(self, key: dict[str, Any], r: Reduction) -> None:
        """Keep ``r`` for the next fit; a full or failing disk costs the reuse, never the
        job (the entry is dropped, the memo stops writing, with a log line)."""
        d = self._dir(key)

        def write() -> None:
            for k, rows in r.candidates.items():
                np.save(d / f"rows_{k}.npy", rows)
            np.save(d / "pca_mean.npy", r.pca.mean)
            np.save(d / "pca_components.npy", r.pca.components)
            if r.codebook is not None:
                np.save(d / "codebook.npy", r.codebook)
            if r.idf is not None:
                np.save(d / "idf.npy", r.idf)
            meta = {
                "dims": sorted(r.candidates),
                "codebook": r.codebook is not None,
                "idf": r.idf is not None,
                "sampled_videos": r.sampled_videos,
                "key": key,
            }
            (d / "meta.json").write_text(json.dumps(meta))  # last: the entry is complete

        self._write(d, write)

    def _write(self, d: Path, write: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            d.mkdir(parents=True, exist_ok=True)
            write()
        except OSError as exc:
            self.failed = True
            shutil.rmtree(d, ignore_errors=True)
            log.warning(
                "not keeping the ladder's fits for reuse (%s): each fit reads the frames", exc
            )

    def get_words(self, key: dict[str, Any]) -> np.ndarray | None:
        path = self._dir(key) / "words.npy"
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        return _load(path)

    def put_words(self, key: dict[str, Any], words: np.ndarray) -> None:
        d = self._dir(key)

        def write() -> None:
            tmp = d / "words.tmp.npy"
            np.save(tmp, words)
            tmp.replace(d / "words.npy")

        self._write(d, write)


def _load(path: Path) -> np.ndarray:
    return np.asarray(np.load(path, allow_pickle=False))


_CURRENT: ContextVar[RungMemo | None] = ContextVar("rung_memo", default=None)


def current() -> RungMemo | None:
    """The memo of the enclosing ``reusing_rungs`` block, if any."""
    return _CURRENT.get()


@contextmanager
def reusing_rungs(parent: Path) -> Iterator[RungMemo]:
    """Within the block, a rung fitted twice on the same store reads its frames once.
    What is reused lives in a directory of this process's own under ``parent`` (torchrun's
    ranks never share one), removed when the block ends."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    memo = RungMemo(Path(tempfile.mkdtemp(prefix=".rung-memo-", dir=parent)))
    token = _CURRENT.set(memo)
    try:
        yield memo
    finally:
        _CURRENT.reset(token)
        shutil.rmtree(memo.directory, ignore_errors=True)


def store_key(store: FrameStore) -> dict[str, Any]:
    """What identifies a frame store's content here: its videos in order, their frame
    counts, the frames' type and width, and the file they are mapped from."""
    ids = hashlib.sha256("\n".join(store.video_ids).encode()).hexdigest()
    offsets = hashlib.sha256(np.ascontiguousarray(store.offsets, np.int64).tobytes()).hexdigest()
    name = getattr(store.frames, "filename", None)
    if name:  # a memory map: the file, as it is now
        st = Path(name).stat()
        frames = f"{name}:{st.st_size}:{st.st_mtime_ns}"
    else:  # frames in memory: their bytes
        frames = hashlib.sha256(np.ascontiguousarray(store.frames).data).hexdigest()
    return {
        "videos": ids,
        "offsets": offsets,
        "frames": frames,
        "dtype": str(store.frames.dtype),
        "feature_dim": int(store.feature_dim),
    }
