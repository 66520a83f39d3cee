"""The artifact format: one directory per training run, written atomically.

Layout (every name is a constant below; no other module spells one)::

    manifest.json        format version, library versions, data span, file hashes, metrics
    embedder.json        EmbedderConfig of the model
    embedder.pt          model weights (a tensor state dict; loaded with weights_only=True)
    classical.json/.npz  instead of the two above when a classical rung is shipped
                         (``recsys.embedders.ClassicalEmbedder``: arrays, no pickle)
    given.json           instead, when the data gave a vector per video (``GivenEmbedder``)
    embeddings.parquet   video_id, embedding (list<float32>), in index row order
    index.faiss          FAISS index; row i is embeddings.parquet row i
    index.json           IndexConfig
    projection.json      the explorer's 2-D map of the embedding space (t-SNE, or PCA)
    train_history.json   loss per epoch; loss_curve.png its plot
    glmix.json, glmix_users.parquet                   GLMix (fixed effect; per-user effects)
    glmix_no_video.json, glmix_no_video_users.parquet GLMix without video features
    histories.parquet    training-period valid watches (user_id, video_id, watched_at)

Later stages add files (GLMix coefficients, watch histories) through the same
writer. This module is the only reader too: serving and evaluation load through it. ``write_artifact`` assembles everything in a sibling temporary directory,
fsyncs each file and the directory, then renames it into place, so a reader sees
either the old artifact or the complete new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from embeddings.cowatch import CowatchEmbedder, EmbedderConfig
from recsys.durable import fsync_dir
from recsys.embedders import (
    CLASSICAL_ARRAYS,
    ClassicalEmbedder,
    FrameEmbedder,
    GivenEmbedder,
    LearnedEmbedder,
    is_classical,
    is_given,
)
from recsys.errors import UserInputError
from recsys.glmix.model import GLMix
from recsys.index import IndexConfig, VideoIndex
from recsys.side_features import SideFeatures
from recsys.splits import parse_time

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDER_CONFIG = "embedder.json"
EMBEDDER_WEIGHTS = "embedder.pt"
EMBEDDINGS = "embeddings.parquet"
INDEX = "index.faiss"
INDEX_CONFIG = "index.json"
PROJECTION = "projection.json"
#: the videos whose co-watch triplets training held out (validation; the cold-start
#: question when a representation is chosen)
HELDOUT_VIDEOS = "heldout_videos.parquet"
TRAIN_HISTORY = "train_history.json"
LOSS_CURVE = "loss_curve.png"
HISTORIES = "histories.parquet"
#: GLMix models by stem: STEM.json (fixed effect) and STEM_users.parquet (user effects)
GLMIX = "glmix"
GLMIX_NO_VIDEO = "glmix_no_video"
#: the shipped pair's counterparts with the per-video coordinate the other way (with it
#: when the shipped models lack it, without it when they have it): the report's Table 7
#: with and without per-video effects
GLMIX_VARIANT = "glmix_variant"
GLMIX_NO_VIDEO_VARIANT = "glmix_no_video_variant"
#: the side features every GLMix model of the artifact shares (``recsys.side_features``):
#: SIDE.json (their columns) and SIDE_videos.parquet / SIDE_users.parquet (their values)
SIDE = "glmix_side"


def glmix_file_names(stem: str) -> tuple[str, str]:
    """(fixed-effect JSON, per-user Parquet) file names of the GLMix model ``stem``."""
    return f"{stem}.json", f"{stem}_users.parquet"


def glmix_videos_file(stem: str) -> str:
    """The per-video coefficients' Parquet file of the GLMix model ``stem`` (when it has them)."""
    return f"{stem}_videos.parquet"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import duckdb
    import faiss

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "duckdb": duckdb.__version__,
    }


FileWriter = Callable[[Path], None]


def state_dict_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def embeddings_table(video_ids: list[str], vectors: np.ndarray) -> pa.Table:
    n, e = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1))
    col = (
        pa.FixedSizeListArray.from_arrays(values, e)
        if n
        else pa.array([], pa.list_(pa.float32(), e))
    )
    return pa.table({"video_id": pa.array(video_ids, pa.string()), "embedding": col})


def write_artifact(
    out: str | os.PathLike[str],
    files: Mapping[str, bytes | FileWriter],
    manifest: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write ``files`` (bytes, or callables that write to a path) plus ``manifest.json``."""
    dest = Path(out)
    if dest.exists() and not overwrite:
        raise UserInputError(f"{dest}: already exists (pass --overwrite to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        hashes: dict[str, str] = {}
        for name, content in files.items():
            path = tmp / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                content(path)
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
            hashes[name] = sha256_file(path)
        full = {
            "format_version": FORMAT_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": library_versions(),
            **manifest,
            "files": hashes,
        }
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(full, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def read_manifest(path: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    d = Path(path)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise UserInputError(f"{d}: not an artifact directory (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{mpath}: malformed manifest ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserInputError(
            f"{d}: artifact format {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    if verify:
        for name, digest in manifest.get("files", {}).items():
            fp = d / name
            if not fp.is_file():
                raise UserInputError(f"{d}: artifact file {name} is missing")
            if sha256_file(fp) != digest:
                raise UserInputError(
                    f"{d}: artifact file {name} does not match its hash (corrupt or modified)"
                )
    return manifest


@dataclass
class EmbeddingArtifact:
    path: Path
    manifest: dict[str, Any]
    embedder: CowatchEmbedder
    index: VideoIndex
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def embedding_dim(self) -> int:
        return self.embedder.config.output_dim


def embedder_config(path: Path) -> EmbedderConfig:
    """The trained model's config; a saved model always states its frame dimension."""
    try:
        cfg = EmbedderConfig.from_dict(json.loads((path / EMBEDDER_CONFIG).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserInputError(f"{path}: cannot read {EMBEDDER_CONFIG} ({exc})") from None
    if cfg.feature_dim < 1:
        raise UserInputError(f"{path}: {EMBEDDER_CONFIG} states no feature_dim")
    return cfg


def embedder_feature_dim(path: Path) -> int | None:
    """The frame dimension the artifact's embedder expects, or None when unreadable."""
    try:
        if is_classical(path) or is_given(path):
            return load_frame_embedder(path).feature_dim
        return embedder_config(path).feature_dim
    except UserInputError:
        return None


def load_embedder(path: Path) -> CowatchEmbedder:
    cfg = embedder_config(path)
    model = CowatchEmbedder(cfg)
    try:
        state = torch.load(path / EMBEDDER_WEIGHTS, map_location="cpu", weights_only=True)
        # Artifacts written before output centring have no output_mean: zero = uncentred.
        state.setdefault("output_mean", torch.zeros(cfg.embedding_dim))
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as exc:
        raise UserInputError(
            f"{path}: cannot load {EMBEDDER_WEIGHTS} ({str(exc).splitlines()[0]})"
        ) from None
    return model.eval()


def load_frame_embedder(path: Path) -> FrameEmbedder:
    """What embeds an upload: the data's own vectors or the classical rung the artifact
    ships, else its trained model."""
    if is_given(path):
        return GivenEmbedder.load(path)
    if is_classical(path):
        return ClassicalEmbedder.load(path)
    metrics = read_manifest(path, verify=False).get("metrics", {})
    dtype = torch.bfloat16 if metrics.get("inference_precision") == "bfloat16" else torch.float32
    return LearnedEmbedder(load_embedder(path).for_inference(dtype))


def load_embedding_artifact(path: str | os.PathLike[str], verify: bool = True) -> EmbeddingArtifact:
    d = Path(path)
    manifest = read_manifest(d, verify=verify)
    model = load_embedder(d)
    table = pq.read_table(d / EMBEDDINGS, columns=["video_id"])
    index = load_index(d, table.column("video_id").to_pylist())
    return EmbeddingArtifact(path=d, manifest=manifest, embedder=model, index=index)


def load_index(artifact: Path, video_ids: list[str]) -> VideoIndex:
    """The FAISS index; row i is ``video_ids[i]`` (the embeddings' order)."""
    try:
        icfg = IndexConfig(**json.loads((artifact / INDEX_CONFIG).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserInputError(f"{artifact}: cannot read {INDEX_CONFIG} ({exc})") from None
    return VideoIndex.from_bytes((artifact / INDEX).read_bytes(), video_ids, icfg)


def load_embeddings(artifact: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """(video ids, (N, E) float32 embeddings) of the artifact's catalogue, in index order."""
    return read_embeddings(Path(artifact) / EMBEDDINGS)


def load_histories(artifact: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """The training-period valid watches (user_id, video_id, watched_at)."""
    path = Path(artifact) / HISTORIES
    if not path.exists():
        raise UserInputError(f"{artifact}: no watch histories (run recsys fit-glmix first)")
    return pq.read_table(path, columns=columns)


def load_heldout_videos(artifact: str | os.PathLike[str]) -> list[str] | None:
    """The videos training held out, or None (a rung artifact, or an older one)."""
    path = Path(artifact) / HELDOUT_VIDEOS
    if not path.exists():
        return None
    try:
        return [str(v) for v in pq.read_table(path).column("video_id").to_pylist()]
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise UserInputError(f"{path}: cannot read ({exc})") from None


def load_projection(artifact: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The explorer's 2-D map, or None for artifacts written before it existed."""
    path = Path(artifact) / PROJECTION
    return json.loads(path.read_text()) if path.exists() else None


def training_cutoff(manifest: Mapping[str, Any]) -> datetime:
    """The start of the test period the artifact was trained before (its training cut-off)."""
    try:
        return parse_time(str(manifest["data"]["test_start"]).replace(" ", "T"))
    except KeyError:
        raise UserInputError("artifact manifest has no data.test_start") from None


def read_embeddings(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(path)
    ids = table.column("video_id").to_pylist()
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else None
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if dim is None:
        dim = len(flat) // max(len(ids), 1)
    return ids, flat.reshape(len(ids), dim)


def extend_artifact(
    path: str | os.PathLike[str],
    files: Mapping[str, bytes | FileWriter],
    manifest_updates: Mapping[str, Any],
    drop: tuple[str, ...] = (),
) -> Path:
    """Add or replace files of an existing artifact (and leave out those in ``drop``),
    atomically (a new directory is swapped in).

    Existing files are hard-linked into the new directory when possible (no copy).
    """
    d = Path(path)
    manifest = read_manifest(d, verify=True)
    kept: dict[str, bytes | FileWriter] = {}
    for name in manifest.get("files", {}):
        if name in files or name in drop:
            continue

        def link(dst: Path, src: Path = d / name) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)

        kept[name] = link
    merged = {
        k: v
        for k, v in manifest.items()
        if k not in ("files", "format_version", "created_at", "versions")
    }
    for key, value in manifest_updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return write_artifact(d, {**kept, **files}, merged, overwrite=True)


def write_json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def load_glmix(artifact: str | os.PathLike[str], stem: str = GLMIX) -> GLMix | None:
    """The GLMix model ``STEM.json`` + ``STEM_users.parquet`` of an artifact, or None."""
    a = Path(artifact)
    jname, uname = glmix_file_names(stem)
    jpath, upath = a / jname, a / uname
    if not jpath.exists():
        return None
    vpath = a / glmix_videos_file(stem)
    try:
        fixed = json.loads(jpath.read_text())
        users = pq.read_table(upath)
        videos = pq.read_table(vpath) if vpath.exists() else None
    except (OSError, json.JSONDecodeError, pa.ArrowException) as exc:
        raise UserInputError(f"{jpath}: cannot read GLMix model ({exc})") from None
    return GLMix.from_tables(fixed, users, videos)


def side_feature_files(side: SideFeatures) -> dict[str, Any]:
    """The files of ``side`` for ``extend_artifact``."""
    meta, videos, users = side.to_tables()
    return {
        f"{SIDE}.json": write_json_bytes(meta),
        f"{SIDE}_videos.parquet": lambda p, t=videos: pq.write_table(t, p),
        f"{SIDE}_users.parquet": lambda p, t=users: pq.write_table(t, p),
    }


def load_side_features(artifact: str | os.PathLike[str]) -> SideFeatures | None:
    """The artifact's GLMix side features, or None when its models have none."""
    a = Path(artifact)
    meta_path = a / f"{SIDE}.json"
    if not meta_path.exists():
        return None
    try:
        return SideFeatures.from_tables(
            json.loads(meta_path.read_text()),
            pq.read_table(a / f"{SIDE}_videos.parquet"),
            pq.read_table(a / f"{SIDE}_users.parquet"),
        )
    except (OSError, KeyError, ValueError, json.JSONDecodeError, pa.ArrowException) as exc:
        raise UserInputError(f"{meta_path}: cannot read GLMix side features ({exc})") from None


@dataclass
class RecommenderArtifact:
    """Everything a scorer needs from an artifact (what ``recsys serve`` loads)."""

    path: Path
    manifest: dict[str, Any]
    embedder: FrameEmbedder
    video_ids: list[str]
    embeddings: np.ndarray  # (N, E) float32, row i = video_ids[i]
    index: VideoIndex
    glmix: GLMix
    histories: pa.Table  # user_id, video_id
    projection: dict[str, Any] | None
    side: SideFeatures | None = None

    @property
    def version(self) -> str:
        """Creation time plus the weights' hash: changes whenever the model does."""
        files = self.manifest.get("files", {})
        weights = (
            files.get(EMBEDDER_WEIGHTS) or files.get(CLASSICAL_ARRAYS) or files.get(EMBEDDINGS, "")
        )
        return f"{self.manifest.get('created_at', '')}:{str(weights)[:12]}"


def load_recommender(path: str | os.PathLike[str]) -> RecommenderArtifact:
    """Load and verify (file hashes) a recommender artifact: the output of ``recsys
    pipeline`` or of ``train-embeddings`` followed by ``fit-glmix``."""
    d = Path(path)
    manifest = read_manifest(d, verify=True)
    embedder = load_frame_embedder(d)
    glmix = load_glmix(d, GLMIX)
    if glmix is None:
        raise UserInputError(f"{d}: no GLMix model (run recsys pipeline or recsys fit-glmix)")
    ids, emb = load_embeddings(d)
    return RecommenderArtifact(
        path=d,
        manifest=manifest,
        embedder=embedder,
        video_ids=ids,
        embeddings=emb,
        index=load_index(d, ids),
        glmix=glmix,
        histories=load_histories(d, ["user_id", "video_id"]),
        projection=load_projection(d),
        side=load_side_features(d),
    )
