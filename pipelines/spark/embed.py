"""``recsys embed --engine spark``: the model run on Spark executors (``mapInArrow``),
its weights broadcast; the same output file as ``pipelines.training.embed``."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.data.io import dataset_dir, open_parquet, write_parquet_atomic
from pipelines.spark.session import has_context
from recsys.artifact import embeddings_table, load_embedder, read_manifest
from recsys.dataset import VIDEOS_FILE
from recsys.embedders import ClassicalEmbedder, is_classical, is_given
from recsys.errors import UserInputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def embed_videos_spark(
    spark: SparkSession,
    videos: str | os.PathLike[str],
    embedder_config: dict[str, Any],
    state_dict_bytes: bytes,
    batch_size: int = 256,
    max_frames: int = 300,
    bfloat16: bool = False,
) -> DataFrame:
    """(video_id, embedding) for every video of ``videos`` (a Parquet path), computed
    by ``mapInArrow`` with the embedder's weights broadcast to the executors (its pooling
    and projector in bf16 when ``bfloat16``, as ``CowatchEmbedder.for_inference``)."""
    weights = spark.sparkContext.broadcast(state_dict_bytes) if has_context(spark) else None
    local_bytes = None if weights is not None else state_dict_bytes
    dim = int(embedder_config["feature_dim"])

    def embed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        from embeddings.cowatch import CowatchEmbedder, EmbedderConfig
        from recsys.dataset import decode_video_batch

        blob = weights.value if weights is not None else local_bytes
        assert blob is not None
        model = CowatchEmbedder(EmbedderConfig.from_dict(embedder_config))
        model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
        model.eval()
        if bfloat16:
            model = model.for_inference(torch.bfloat16)
        for big in batches:
            for start in range(0, big.num_rows, batch_size):
                vb = decode_video_batch(big.slice(start, batch_size), dim)
                frames, mask = vb.padded(max_frames)
                with torch.no_grad():
                    emb = model(torch.from_numpy(frames), torch.from_numpy(mask)).numpy()
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(vb.video_ids, pa.string()),
                        pa.array(list(emb.astype(np.float32)), pa.list_(pa.float32())),
                    ],
                    names=["video_id", "embedding"],
                )

    df = spark.read.parquet(str(videos)).select("video_id", "frames")
    return df.mapInArrow(embed, "video_id string, embedding array<float>")


def embed_dataset_spark(
    spark: SparkSession,
    artifacts: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    batch_size: int = 256,
    max_frames: int = 300,
) -> int:
    """``embed_dataset`` with the model run on Spark executors (``mapInArrow``); the
    same output file, rows in the data set's order."""
    a = Path(artifacts)
    manifest = read_manifest(a)
    if is_classical(a) or is_given(a):
        what = (
            "the data's own vectors"
            if is_given(a)
            else (f"the classical {ClassicalEmbedder.load(a).name} embedder")
        )
        raise UserInputError(
            f"{a} ships {what}; embed with --engine local (it runs in one pass over the "
            "videos, no model to distribute)"
        )
    model = load_embedder(a)
    path = dataset_dir(data) / VIDEOS_FILE
    open_parquet(path)  # a clear error for an unreadable file, before Spark sees it
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    # as the artifact's catalogue was embedded
    low = manifest.get("metrics", {}).get("inference_precision") == "bfloat16"
    df = embed_videos_spark(
        spark, path, asdict(model.config), buf.getvalue(), batch_size, max_frames, low
    )
    got = df.toArrow()
    ids = got.column("video_id").to_pylist()
    position = {
        v: i for i, v in enumerate(pq.read_table(path, columns=["video_id"]).column(0).to_pylist())
    }
    rows = sorted(range(len(ids)), key=lambda i: position[ids[i]])
    vectors = got.column("embedding").to_pylist()
    emb = np.zeros((len(rows), model.config.output_dim), np.float32)
    for j, i in enumerate(rows):
        emb[j] = vectors[i]
    write_parquet_atomic(embeddings_table([ids[i] for i in rows], emb), Path(out))
    return len(rows)
