"""``recsys embed``: stream a data set's videos through a trained embedder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from embeddings.runtime import inference_dtype, resolve_device
from pipelines.data.io import iter_video_batches, parquet_stream
from recsys.artifact import embeddings_table, load_embedder, read_manifest
from recsys.embedders import ClassicalEmbedder, GivenEmbedder, is_classical, is_given
from recsys.errors import UserInputError


def embed_dataset(
    artifacts: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    batch_size: int = 256,
    max_frames: int = 300,
    device: str = "auto",
    progress: bool = True,
    precision: str | None = None,
) -> int:
    """Write ``out`` (video_id, embedding) for every video; returns the count.

    Streams record batches, so the data set never has to fit in memory; the output
    is written batch by batch to a temporary file that is renamed at the end. A trained
    model runs in ``precision`` (None: what the artifact's catalogue was embedded in).
    """
    a = Path(artifacts)
    manifest = read_manifest(a)
    if is_classical(a) or is_given(a):
        return _write_embeddings(a, data, out, batch_size, progress)
    dev = resolve_device(device)
    chosen = precision or manifest.get("metrics", {}).get("inference_precision", "float32")
    try:
        dtype = inference_dtype(chosen, dev)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    model = load_embedder(a).to(dev).eval().for_inference(dtype)
    n = 0
    with parquet_stream(out) as write:
        for vb in tqdm(
            iter_video_batches(data, batch_size=batch_size), desc="embedding", disable=not progress
        ):
            frames, mask = vb.padded(max_frames)
            if frames.shape[-1] != model.config.feature_dim:
                raise UserInputError(
                    f"data has D = {frames.shape[-1]}, model expects D = {model.config.feature_dim}"
                )
            with torch.no_grad():
                emb = (
                    model(torch.from_numpy(frames).to(dev), torch.from_numpy(mask).to(dev))
                    .cpu()
                    .numpy()
                )
            write(embeddings_table(vb.video_ids, emb.astype(np.float32)))
            n += len(vb)
    return n


def _write_embeddings(
    a: Path, data: str | os.PathLike[str], out: str | os.PathLike[str], batch: int, progress: bool
) -> int:
    """``embed_dataset`` for an artifact that ships a classical rung (every frame of each
    video) or the data's own vectors, as the catalogue's own embeddings were made."""
    rung: ClassicalEmbedder | GivenEmbedder = (
        GivenEmbedder.load(a) if is_given(a) else ClassicalEmbedder.load(a)
    )
    n = 0
    with parquet_stream(out) as write:
        for vb in tqdm(iter_video_batches(data, batch_size=batch), disable=not progress):
            if vb.frames.shape[-1] != rung.feature_dim:
                raise UserInputError(
                    f"data has D = {vb.frames.shape[-1]}, the {rung.kind} embedder "
                    f"expects D = {rung.feature_dim}"
                )
            write(embeddings_table(vb.video_ids, rung.embed_videos(vb.frames, vb.offsets)))
            n += len(vb)
    return n
