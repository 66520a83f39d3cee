"""``recsys embed``: a data set's videos through a trained embedder (from its frame store
when training built one, else streamed from Parquet)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from embeddings.cowatch import CowatchEmbedder
from embeddings.runtime import inference_dtype, resolve_device
from pipelines.data.frame_cache import current_frame_store
from pipelines.data.io import iter_video_batches, parquet_stream
from pipelines.training.cowatch_embedding import embed_store
from recsys.artifact import embeddings_table, load_embedder, read_manifest
from recsys.baselines import store_chunks
from recsys.embedders import ClassicalEmbedder, GivenEmbedder, is_classical, is_given
from recsys.errors import UserInputError
from recsys.frames import FrameStore

#: videos embedded and written at a time from a frame store (the output is written a
#: chunk at a time, so memory does not grow with the catalogue)
STORE_CHUNK = 16_384


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
    """Write ``out`` (video_id, embedding) for every video, in the data set's order;
    returns the count. A trained model runs in ``precision`` (None: what the artifact's
    catalogue was embedded in).

    Where the data set's frame store is built and current (training made it), the frames
    come from it, as the catalogue's own embedding reads them (memory-mapped, batched by
    length): Parquet's nested frame lists took more than half of the pass to decode.
    Otherwise record batches are streamed (a thread decoding the next batch beside the
    model measured slower on 2 cores: both want every core). Either way the output is
    written a chunk at a time to a temporary file renamed at the end, so the data set
    never has to fit in memory.
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
    model = load_embedder(a)
    store = current_frame_store(data)
    if store is not None:
        return _embed_from_store(model, store, out, batch_size, max_frames, dev, chosen)
    net = model.to(dev).eval().for_inference(dtype)
    n = 0
    with parquet_stream(out) as write:
        for vb in tqdm(
            iter_video_batches(data, batch_size), desc="embedding", disable=not progress
        ):
            frames, mask = vb.padded(max_frames)
            _check_dim(frames.shape[-1], model.config.feature_dim)
            with torch.no_grad():
                x, m = torch.from_numpy(frames).to(dev), torch.from_numpy(mask).to(dev)
                emb = net(x, m).float().cpu().numpy()
            write(embeddings_table(vb.video_ids, emb))
            n += len(vb)
    return n


def _embed_from_store(
    model: CowatchEmbedder,
    store: FrameStore,
    out: str | os.PathLike[str],
    batch_size: int,
    max_frames: int,
    device: torch.device,
    precision: str,
) -> int:
    """``embed_dataset`` through the data set's frame store, a chunk of videos at a time."""
    _check_dim(store.frames.shape[-1], model.config.feature_dim)
    with parquet_stream(out) as write:
        for s in range(0, len(store), STORE_CHUNK):
            rows = np.arange(s, min(s + STORE_CHUNK, len(store)))
            emb = embed_store(
                model, store, batch_size, max_frames, str(device), precision=precision, rows=rows
            )
            write(embeddings_table(store.video_ids[s : s + len(rows)], emb))
    return len(store)


def _check_dim(data_dim: int, model_dim: int) -> None:
    if data_dim != model_dim:
        raise UserInputError(f"data has D = {data_dim}, model expects D = {model_dim}")


def _write_embeddings(
    a: Path, data: str | os.PathLike[str], out: str | os.PathLike[str], batch: int, progress: bool
) -> int:
    """``embed_dataset`` for an artifact that ships a classical rung (every frame of each
    video) or the data's own vectors, as the catalogue's own embeddings were made."""
    rung: ClassicalEmbedder | GivenEmbedder = (
        GivenEmbedder.load(a) if is_given(a) else ClassicalEmbedder.load(a)
    )
    store = current_frame_store(data) if isinstance(rung, ClassicalEmbedder) else None
    if store is not None:  # a rung's frames from the store too, a run of videos at a time
        _check_dim(store.feature_dim, rung.feature_dim)
        with parquet_stream(out) as write:
            for rows, frames, offsets in store_chunks(store, 1 << 24):
                write(embeddings_table(store.video_ids[rows], rung.embed_videos(frames, offsets)))
        return len(store)
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
