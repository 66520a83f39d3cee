"""A FAISS index over L2-normalised video embeddings, addressed by video id.

Inner product on unit vectors is cosine similarity. Rows are int64 FAISS ids into
``video_ids``; the index is wrapped in ``IndexIDMap2`` so ``reconstruct`` works for
flat and HNSW (IVF keeps the ids itself, with a hashtable direct map), letting the service fetch a video's embedding by id.

Kinds: ``flat`` (exact; right for catalogues up to a few hundred thousand),
``hnsw`` (graph; fast approximate search, cannot remove ids - deletions need
tombstones), ``ivf`` (inverted lists; needs training, supports removal).
A GPU is used for flat/IVF search when FAISS has GPU support and a GPU is present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np

from recsys.errors import UserInputError

INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")
#: ``auto`` picks exact search (flat) up to this many videos and HNSW above: a flat
#: search reads every vector (1M x 64: 256 MB a query), HNSW a few thousand
AUTO_EXACT_MAX = 100_000


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class IndexConfig:
    #: one of ``INDEX_KINDS``, or "auto" (resolved by catalogue size at build)
    kind: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0: about 4 * sqrt(N)
    ivf_nprobe: int = 16

    #: with ``auto``: flat up to this many videos, HNSW above
    auto_exact_max: int = AUTO_EXACT_MAX
    #: an approximate index built for a catalogue (``tune``) searches wider, efSearch
    #: (HNSW) or nprobe (IVF) doubled up to ``max_search_width``, until its recall@20
    #: against exact search on the catalogue's own rows reaches this (0: never widen)
    target_recall: float = 0.95
    max_search_width: int = 2048

    def __post_init__(self) -> None:
        if self.kind not in (*INDEX_KINDS, "auto"):
            raise ValueError(f"index kind must be auto or one of {INDEX_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in [0, 1], got {self.target_recall}")

    def resolved(self, n: int) -> IndexConfig:
        """This config with ``auto`` replaced by the kind for ``n`` videos."""
        if self.kind != "auto":
            return self
        return replace(self, kind="flat" if n <= self.auto_exact_max else "hnsw")


def check_embeddings(vectors: np.ndarray, dim: int | None = None, atol: float = 1e-3) -> np.ndarray:
    """float32 (N, E), finite and unit-norm, or a UserInputError naming the problem."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise UserInputError(f"embeddings must be (N, E), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise UserInputError(f"embeddings have dimension {x.shape[1]}, index expects {dim}")
    if not np.isfinite(x).all():
        raise UserInputError("embeddings contain NaN or inf")
    norms = np.linalg.norm(x, axis=1)
    if len(x) and np.abs(norms - 1.0).max() > atol:
        raise UserInputError("embeddings must be L2-normalised (inner product = cosine)")
    return x


class VideoIndex:
    def __init__(self, dim: int, cfg: IndexConfig | None = None) -> None:
        self.dim = dim
        self.config = cfg or IndexConfig()
        self.video_ids: list[str] = []
        self.rows: dict[str, int] = {}
        self.index = self._new_index(0)
        self._gpu_index: faiss.Index | None = None

    def _new_index(self, n_hint: int) -> faiss.Index:
        c = self.config
        base: Any
        if c.kind == "flat":
            base = faiss.IndexFlatIP(self.dim)
        elif c.kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = c.hnsw_ef_construction
            base.hnsw.efSearch = c.hnsw_ef_search
        else:
            # ~4 sqrt(N) lists, but FAISS wants >= 39 training points per list.
            nlist = c.ivf_nlist or max(1, min(int(4 * np.sqrt(max(n_hint, 1))), n_hint // 39))
            quantizer = faiss.IndexFlatIP(self.dim)
            base = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            base.nprobe = c.ivf_nprobe
            # IVF stores our ids itself; a hashtable direct map makes reconstruct(id) work.
            base.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
            return base
        return faiss.IndexIDMap2(base)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.rows

    @classmethod
    def build(
        cls, video_ids: Sequence[str], vectors: np.ndarray, cfg: IndexConfig | None = None
    ) -> VideoIndex:
        x = check_embeddings(vectors)
        idx = cls(x.shape[1], (cfg or IndexConfig()).resolved(len(x)))
        if idx.config.kind == "ivf":
            idx.index = idx._new_index(len(x))
            ivf = faiss.extract_index_ivf(idx.index)
            nlist = ivf.nlist
            if len(x) < nlist:
                raise UserInputError(
                    f"IVF with {nlist} lists needs at least that many vectors, got {len(x)}"
                )
            ivf.train(x)
        idx.add(video_ids, x)
        return idx

    def add(self, video_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add new videos; an id already present is an error (the caller decides on updates)."""
        x = check_embeddings(vectors, self.dim)
        if len(video_ids) != len(x):
            raise UserInputError(f"{len(video_ids)} ids for {len(x)} vectors")
        dup = [v for v in video_ids if v in self.rows]
        if dup or len(set(video_ids)) != len(video_ids):
            raise UserInputError(
                f"duplicate video id(s): {', '.join(map(repr, (dup or list(video_ids))[:5]))}"
            )
        start = len(self.video_ids)
        ids = np.arange(start, start + len(x), dtype=np.int64)
        self.index.add_with_ids(x, ids)
        for i, v in enumerate(video_ids):
            self.rows[v] = start + i
        self.video_ids.extend(video_ids)
        self._gpu_index = None

    def vector(self, video_id: str) -> np.ndarray:
        if video_id not in self.rows:
            raise KeyError(video_id)
        return np.asarray(self.index.reconstruct(self.rows[video_id]), dtype=np.float32)

    def vectors(self, video_ids: Sequence[str]) -> np.ndarray:
        if not video_ids:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.vector(v) for v in video_ids])

    def _apply_search_width(self) -> None:
        """The configured efSearch (HNSW) or nprobe (IVF) on the FAISS index."""
        c = self.config
        if c.kind == "hnsw":
            inner: Any = faiss.downcast_index(self.index.index)  # type: ignore[attr-defined]
            inner.hnsw.efSearch = c.hnsw_ef_search
        elif c.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = c.ivf_nprobe
        self._gpu_index = None

    def tune(self, vectors: np.ndarray, k: int = 20) -> dict[str, Any]:
        """Widen the search until recall@``k`` on the catalogue's own rows (``vectors``,
        in the index's order) reaches ``target_recall``: efSearch (HNSW) or nprobe (IVF)
        doubled up to ``max_search_width``; the width chosen goes into ``config`` (and so
        into the artifact's index.json). Returns the last measurement with the width and
        every width tried. Exact search is returned as measured."""
        c = self.config
        facts = self.recall(vectors, k=k)
        if c.kind not in ("hnsw", "ivf"):
            return facts
        field = "hnsw_ef_search" if c.kind == "hnsw" else "ivf_nprobe"
        cap = c.max_search_width
        if c.kind == "ivf":  # probing more lists than there are changes nothing
            cap = min(cap, faiss.extract_index_ivf(self.index).nlist)
        tried = [{"width": getattr(c, field), "recall": facts["recall"]}]
        while facts["recall"] < c.target_recall and getattr(self.config, field) < cap:
            wider = min(2 * getattr(self.config, field), cap)
            self.config = replace(self.config, **{field: wider})
            self._apply_search_width()
            facts = self.recall(vectors, k=k)
            tried.append({"width": wider, "recall": facts["recall"]})
        return {
            **facts,
            "search_width": getattr(self.config, field),
            "widths_tried": tried,
            # False: the widest search still misses; the graph (HNSW: hnsw_m,
            # hnsw_ef_construction) or the lists (IVF) need a finer build
            "target_reached": facts["recall"] >= c.target_recall,
        }

    def _searcher(self) -> faiss.Index:
        if self.config.kind == "hnsw" or not gpu_available():
            return self.index
        if self._gpu_index is None:  # pragma: no cover - needs a FAISS GPU build
            self._gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)
        return self._gpu_index

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` neighbours of each query (Q, E): video ids and cosine scores (Q, k')."""
        scores, rows = self.search_rows(queries, k)
        ids = [[self.video_ids[r] for r in row if r >= 0] for row in rows.tolist()]
        return ids, scores

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of each query (Q, E) as (scores, rows), both (Q, k') with
        k' = min(k, len(self)); row -1 (score -inf or NaN) where fewer were found. Rows
        are the order videos were added in (``video_ids``)."""
        q = check_embeddings(queries, self.dim)
        k = min(k, len(self))
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, rows = self._searcher().search(q, k)
        return scores, rows

    def recall(
        self, vectors: np.ndarray, k: int = 20, queries: int = 1000, seed: int = 0
    ) -> dict[str, Any]:
        """recall@k of this index against exact search over the same ``vectors`` (the
        catalogue's rows, in the index's order), on up to ``queries`` of them drawn at
        random as queries: the mean share of each query's exact k nearest (inner product)
        that the index returns among its k."""
        x = check_embeddings(vectors, self.dim)
        if len(x) != len(self):
            raise ValueError("recall needs the index's own vectors, in its order")
        k = min(k, len(x))
        if k == 0:
            return {"k": k, "queries": 0, "recall": 1.0}
        rng = np.random.default_rng(seed)
        q = np.sort(rng.choice(len(x), size=min(queries, len(x)), replace=False))
        _, got = self.index.search(x[q], k)
        hits = 0
        for s in range(0, len(q), 256):  # exact: (256, N) scores at a time
            scores = x[q[s : s + 256]] @ x.T
            exact = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            hits += sum(
                len(set(e.tolist()) & set(g.tolist()))
                for e, g in zip(exact, got[s : s + 256], strict=True)
            )
        return {"k": k, "queries": len(q), "recall": hits / (k * len(q))}

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(
        cls, data: bytes, video_ids: Sequence[str], cfg: IndexConfig | None = None
    ) -> VideoIndex:
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise UserInputError(f"cannot read FAISS index ({str(exc).splitlines()[0]})") from None
        if index.ntotal != len(video_ids):
            raise UserInputError(
                f"FAISS index holds {index.ntotal} vectors but the id map has {len(video_ids)}"
            )
        obj = cls(index.d, cfg)
        obj.index = index
        obj._apply_search_width()
        obj.video_ids = list(video_ids)
        obj.rows = {v: i for i, v in enumerate(obj.video_ids)}
        return obj
