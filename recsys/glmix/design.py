"""GLMix rows by reference: each row names a video, the video's features live once.

A log has many impressions per video. Materialising the fixed-effect design [1, f(v_i),
g_i] costs (1 + E + G) values per impression (E = 64 float32: ~270 bytes a row) and its
copies more; here a row costs its video's index and its G global features, and a chunk
of rows is built when a pass reaches it. ``VideoRows`` is what a caller hands to
``recsys.glmix.model.fit_glmix`` in place of an (N, E) array; ``VideoDesign`` is the design
the fit builds from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VideoRows:
    """(N, E) video features of N rows as ``table[rows]``, never materialised whole.

    table: (V, E) features per video; rows: (N,) int row of each impression's video.
    Indexing with a slice, a mask or indices gives the VideoRows of those rows.
    """

    table: np.ndarray
    rows: np.ndarray

    def __post_init__(self) -> None:
        if self.table.ndim != 2 or self.rows.ndim != 1:
            raise ValueError("VideoRows needs a (V, E) table and (N,) rows")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.table.shape[1])

    @property
    def ndim(self) -> int:
        return 2

    def __getitem__(self, key: Any) -> VideoRows:
        return VideoRows(self.table, self.rows[key])

    def dense(self) -> np.ndarray:
        """(N, E) the rows materialised (for the few rows a prediction scores)."""
        return self.table[self.rows]


def dense_video(video: np.ndarray | VideoRows) -> np.ndarray:
    return video.dense() if isinstance(video, VideoRows) else video


@dataclass(frozen=True)
class VideoDesign:
    """The fixed-effect design [1, f(v_i) (when ``use_video``), g_i] of N rows.

    Behaves like the (N, p) float32 matrix where GLMix reads it: ``len``, ``shape`` and
    ``design[rows]`` (a slice or indices: those rows materialised). ``random_table``
    (V, q) and ``rows`` give the random-effect design [1, f(v)] of a row by a gather.
    """

    video: VideoRows
    extra: np.ndarray | None  # (N, G) global features, or None
    use_video: bool

    def __post_init__(self) -> None:
        if self.extra is not None and len(self.extra) != len(self.video):
            raise ValueError("global features must have one row per design row")

    def __len__(self) -> int:
        return len(self.video)

    @property
    def q(self) -> int:
        return 1 + (self.video.table.shape[1] if self.use_video else 0)

    @property
    def shape(self) -> tuple[int, int]:
        g = 0 if self.extra is None else self.extra.shape[1]
        return (len(self.video), self.q + g)

    @property
    def rows(self) -> np.ndarray:
        return self.video.rows

    @property
    def random_table(self) -> np.ndarray:
        """(V, q) float32 [1, f(v)] per video: a row's random-effect design is
        ``random_table[rows[i]]``."""
        table = self.video.table
        out = np.ones((len(table), self.q), dtype=np.float32)
        if self.use_video:
            out[:, 1:] = table
        return out

    @cached_property
    def videos_used(self) -> tuple[np.ndarray, np.ndarray]:
        """(U,) the table rows some design row names, sorted, and (N,) each design row's
        index into them: per-video sums run over the U videos a fit sees, never over the
        whole catalogue's table."""
        used, code = np.unique(self.video.rows, return_inverse=True)
        return used, code.reshape(-1)

    def table_chunks(self, chunk: int = 1 << 16) -> Iterator[tuple[slice, np.ndarray]]:
        """(slice of ``videos_used``, (n, E) float64 features of those videos), a chunk of
        videos at a time: float64 products over the used videos without a float64 copy of
        the table."""
        used = self.videos_used[0]
        table = self.video.table
        for s in range(0, len(used), chunk):
            sl = slice(s, s + chunk)
            yield sl, np.asarray(table[used[sl]], dtype=np.float64)

    def video_scores(self, beta: np.ndarray) -> np.ndarray:
        """(U,) float64 f(v)^T beta_v of each used video (``videos_used``), beta_v the
        video block ``beta[1:q]`` of a coefficient vector over the design's columns."""
        out = np.empty(len(self.videos_used[0]))
        for sl, t in self.table_chunks():
            out[sl] = t @ beta[1 : self.q]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        """(n, p) float32 rows [1, f(v), g] of a slice or index array."""
        vid = self.video.rows[key]
        out = np.empty((len(vid), self.shape[1]), dtype=np.float32)
        out[:, 0] = 1.0
        q = self.q
        if self.use_video:
            out[:, 1:q] = self.video.table[vid]
        if self.extra is not None:
            out[:, q:] = self.extra[key]
        return out


#: what a GLMix pass reads rows from: the (N, p) matrix or the design by reference
DesignMatrix = np.ndarray | VideoDesign
