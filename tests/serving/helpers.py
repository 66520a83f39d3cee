"""Small readers of a test artifact and a frame maker, shared by the serving tests."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from recsys.artifact import read_embeddings


def catalogue(artifact):
    ids, emb = read_embeddings(artifact / "embeddings.parquet")
    return ids, emb


def history(artifact, user):
    t = pq.read_table(artifact / "histories.parquet").to_pylist()
    return [r["video_id"] for r in t if r["user_id"] == user]


def a_user_with_history(artifact) -> str:
    return pq.read_table(artifact / "histories.parquet").column("user_id")[0].as_py()


def frames(d: int, t: int = 4, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(t, d)).round(4).tolist()
