"""What turns a video's frames into its embedding: the learned model, a rung of the
classical ladder (``embeddings.rungs``) when that is what the artifact ships, or the
platform's own vector per video used as given (``GivenEmbedder``).

The service embeds a cold-start upload with whichever the artifact holds, through one
interface (``FrameEmbedder``); the offline embeddings of the catalogue come from the
same code, so an upload lands where the same video in the catalogue would.

A classical rung is stored as JSON plus a NumPy ``.npz`` read with
``allow_pickle=False``: arrays only, nothing executable.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from embeddings.cowatch import CowatchEmbedder
from embeddings.rungs import rung
from recsys.baselines import PCA, store_chunks
from recsys.errors import UserInputError
from recsys.frames import FrameStore

CLASSICAL_CONFIG = "classical.json"
CLASSICAL_ARRAYS = "classical.npz"
GIVEN_CONFIG = "given.json"


class FrameEmbedder(Protocol):
    """frames (T, D) float32 -> (E,) float32 embedding of one video."""

    @property
    def feature_dim(self) -> int: ...

    @property
    def embedding_dim(self) -> int: ...

    @property
    def kind(self) -> str: ...

    def embed(self, frames: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LearnedEmbedder:
    """The trained co-watch model (pooling + projector) behind ``FrameEmbedder``."""

    model: CowatchEmbedder

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.feature_dim)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.output_dim)

    @property
    def kind(self) -> str:
        return str(self.model.config.pooling)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.array(frames, dtype=np.float32))[None]  # a writable copy
            return self.model(x).numpy()[0].astype(np.float32)


@dataclass(frozen=True)
class ClassicalEmbedder:
    """A ladder rung as an embedder: raw statistic -> PCA (fitted on the catalogue, size
    chosen on validation) -> L2 normalisation.

    name: a rung of ``embeddings.registry.RUNGS``; codebook (K, D): its k-means words
    (rungs with words); idf (K,): the catalogue's inverse document frequencies (rungs that
    use them).
    """

    name: str
    pca: PCA
    codebook: np.ndarray | None = None
    idf: np.ndarray | None = None

    def __post_init__(self) -> None:
        r = rung(self.name)  # ValueError for an unknown rung
        if r.uses_words and self.codebook is None:
            raise ValueError(f"{self.name} needs a codebook")
        if r.uses_idf and (
            self.idf is None or self.codebook is None or len(self.idf) != len(self.codebook)
        ):
            raise ValueError(f"{self.name} needs one idf weight per word")
        k = 0 if self.codebook is None else len(self.codebook)
        if len(self.pca.mean) != r.raw_dim(self.feature_dim, k):
            raise ValueError("the PCA does not match the rung's raw size")

    @property
    def feature_dim(self) -> int:
        if self.codebook is not None:
            return int(self.codebook.shape[1])
        return int(self.pca.mean.shape[0])

    @property
    def embedding_dim(self) -> int:
        return self.pca.dim

    @property
    def kind(self) -> str:
        return self.name

    def raw(self, frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(N, F) the rung's raw rows of videos in the flat layout (frames, offsets)."""
        return rung(self.name).rows(frames, offsets, self.codebook, self.idf)

    def embed_videos(self, frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(N, E) float32 unit rows."""
        return self.pca.transform(self.raw(frames, offsets))

    def embed(self, frames: np.ndarray) -> np.ndarray:
        x = np.asarray(frames, dtype=np.float32)
        return self.embed_videos(x, np.array([0, len(x)]))[0]

    def embed_store(self, store: FrameStore, max_values: int = 1 << 24) -> np.ndarray:
        """(N, E) every video of ``store`` in order, a run of videos at a time."""
        out = np.empty((len(store), self.embedding_dim), dtype=np.float32)
        for sl, frames, offsets in store_chunks(store, max_values):
            out[sl] = self.embed_videos(frames, offsets)
        return out

    # ------------------------------------------------------------------ files

    def to_files(self) -> dict[str, bytes]:
        arrays = {"pca_mean": self.pca.mean, "pca_components": self.pca.components}
        if self.codebook is not None:
            arrays["codebook"] = self.codebook
        if self.idf is not None:
            arrays["idf"] = self.idf
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        config = {
            "name": self.name,
            "feature_dim": self.feature_dim,
            "embedding_dim": self.embedding_dim,
        }
        return {CLASSICAL_CONFIG: json.dumps(config).encode(), CLASSICAL_ARRAYS: buf.getvalue()}

    @classmethod
    def load(cls, directory: Path) -> ClassicalEmbedder:
        try:
            config = json.loads((directory / CLASSICAL_CONFIG).read_text())
            with np.load(directory / CLASSICAL_ARRAYS, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k]) for k in z.files}
            pca = PCA(arrays["pca_mean"], arrays["pca_components"])
            return cls(str(config["name"]), pca, arrays.get("codebook"), arrays.get("idf"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserInputError(
                f"{directory}: cannot load the classical embedder ({exc})"
            ) from None


def is_classical(directory: Path) -> bool:
    return (directory / CLASSICAL_CONFIG).exists()


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D) float32 rows of unit length (computed in float64, so the catalogue
    and an upload of the same vector get the same bits). UserInputError for a row that is
    all zeros or not finite: it has no direction."""
    x = np.asarray(vectors, dtype=np.float64)
    # scaled by the largest value first: squares of tiny (or huge) values would underflow
    # (overflow) and a real direction would pass for none
    peak = np.abs(x).max(axis=1, keepdims=True) if x.size else np.ones((len(x), 1))
    bad = ~np.isfinite(peak[:, 0]) | (peak[:, 0] == 0)
    if bad.any():
        raise UserInputError(
            f"embedding: vector {int(np.flatnonzero(bad)[0])} is all zeros or not finite "
            "(it has no direction)"
        )
    x = x / peak
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class GivenEmbedder:
    """The platform's own vector per video as the embedding: scaled to unit length (the
    index and GLMix compare directions), nothing learned. A video is one frame, its vector.

    dim: D; source: where the catalogue's vectors came from (file, column, the column's
    Parquet metadata), recorded in the manifest.
    """

    dim: int
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return self.dim

    @property
    def embedding_dim(self) -> int:
        return self.dim

    @property
    def kind(self) -> str:
        return "given"

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """frames (1, D): the vector -> (D,) its unit vector."""
        x = np.asarray(frames)
        if x.shape != (1, self.dim):
            raise UserInputError(f"embedding: expected one vector of {self.dim} values")
        return unit_rows(x)[0]

    def embed_videos(self, frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(N, D) unit rows of videos in the flat layout, each one vector (one frame)."""
        if not np.array_equal(np.diff(offsets), np.ones(len(offsets) - 1, dtype=np.int64)):
            raise UserInputError(
                "the artifact takes a vector per video (an embedding column); these videos "
                "have frames"
            )
        return unit_rows(frames)

    def config(self) -> dict[str, Any]:
        """The manifest's ``config.embedder``."""
        return {
            "pooling": "given",
            "given": True,
            "feature_dim": self.dim,
            "embedding_dim": self.dim,
            "normalisation": "l2",
            "source": self.source,
        }

    def to_files(self) -> dict[str, bytes]:
        return {GIVEN_CONFIG: json.dumps(self.config(), indent=2).encode()}

    @classmethod
    def load(cls, directory: Path) -> GivenEmbedder:
        try:
            config = json.loads((directory / GIVEN_CONFIG).read_text())
            return cls(int(config["feature_dim"]), dict(config.get("source", {})))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserInputError(
                f"{directory}: cannot load the given-vector embedder ({exc})"
            ) from None


def is_given(directory: Path) -> bool:
    """Whether the artifact ships the data's own vectors (``GivenEmbedder``)."""
    return (directory / GIVEN_CONFIG).exists()
