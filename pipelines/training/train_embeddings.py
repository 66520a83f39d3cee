"""``recsys train-embeddings``: co-watch triplets -> trained embedder -> every video
embedded -> FAISS index -> quality metrics -> artifact directory (atomic).

The steps' logic lives apart: the steps before writing (config, triplets, starting
point, training, the settings search) in ``pipelines.training.embedding_steps``, the triplet SQL
in ``recsys.triplets`` (run by the engine), the training data in
``pipelines.training.cowatch_data``, the training loop in ``pipelines.training.cowatch_training``, the
artifact's files in ``recsys.artifact``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.cowatch import EmbedderConfig
from embeddings.registry import RUNGS
from embeddings.runtime import inference_dtype, resolve_device
from pipelines.choice.representation import (
    AUTO,
    choose_representation,
    index_with_recall,
    rung_config,
    rung_files,
    ship_rung,
)
from pipelines.data.frame_cache import open_frame_store
from pipelines.data.impressions import impressions_connection, log_span
from pipelines.data.io import dataset_dir, vector_source, vectors_given
from pipelines.engine import LOCAL, Engine
from pipelines.phases import phase
from pipelines.plots import plot_loss_curve
from pipelines.training.cowatch_training import TrainResult
from pipelines.training.distributed import dist_info
from pipelines.training.embedding_steps import (
    EmbeddingJobConfig,
    Split,
    finish,
    fit,
    prepare,
    say,
    search_settings,
)
from pipelines.training.settings_search import Candidate
from recsys import artifact as art
from recsys.embedders import ClassicalEmbedder, GivenEmbedder, unit_rows
from recsys.errors import UserInputError
from recsys.frames import FrameStore
from recsys.index import VideoIndex
from recsys.metrics import pair_auc
from recsys.projection import fit_map
from recsys.splits import default_test_start
from recsys.triplets import mine_cowatch_pairs


@dataclass
class EmbeddingJobResult:
    artifact: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def run_train_embeddings(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cfg: EmbeddingJobConfig | None = None,
    test_start: datetime | None = None,
    overwrite: bool = False,
    progress: bool = True,
    engine: Engine | None = None,
) -> EmbeddingJobResult:
    """Train on the triplets before ``test_start`` (default: the last quarter of the log
    is the test period) and write the artifact ``out``; a non-zero torchrun rank trains
    and returns without writing."""
    cfg = cfg or EmbeddingJobConfig()
    data_dir = dataset_dir(data)
    engine = engine or LOCAL
    rank, _ = dist_info()
    if rank == 0 and Path(out).exists() and not overwrite:
        raise UserInputError(f"{out}: already exists (pass --overwrite to replace it)")
    con = impressions_connection(data_dir)
    first, last = log_span(con)
    if test_start is None and last > datetime.now(UTC) and progress and rank == 0:
        say(
            True,
            f"warning: the log runs to {last:%Y-%m-%d %H:%M}, after this machine's clock; "
            "the default test start follows it (pass --test-start to set it)",
        )
    test_start = test_start or default_test_start(first, last)
    if cfg.representation in RUNGS.names():
        return _run_rung(data_dir, Path(out), cfg, (first, last, test_start), overwrite, progress)
    if vectors_given(data_dir):  # the vectors are the embedding (a rung may still reduce them)
        return _run_given(data_dir, Path(out), cfg, (first, last, test_start), overwrite, progress)
    if cfg.search_budget_s > 0 and dist_info()[1] > 1:
        raise UserInputError("the settings search runs in one process (not under torchrun)")
    split, model_cfg = prepare(data_dir, cfg, engine, test_start, progress and rank == 0)
    t0 = time.perf_counter()
    result = fit(split, model_cfg, cfg, progress and rank == 0)
    if rank != 0:
        return EmbeddingJobResult(artifact=None, metrics={}, history=result.history)
    chosen = finish(split, result, cfg, time.perf_counter() - t0, progress)
    search_report = None
    if cfg.search_budget_s > 0:
        chosen, search_report = search_settings(split, chosen, cfg, progress)
    with phase("index and artifact"):
        path, metrics = _write_trained(
            split,
            chosen,
            search_report,
            data_dir,
            Path(out),
            cfg,
            (first, last, test_start),
            overwrite,
        )
    if cfg.representation == AUTO:
        metrics["selection"] = _auto_select(data_dir, path, cfg, test_start, progress)
    return EmbeddingJobResult(artifact=path, metrics=metrics, history=chosen.outcome[0].history)


def _write_trained(
    split: Split,
    chosen: Candidate,
    search_report: dict[str, Any] | None,
    data_dir: Path,
    out: Path,
    cfg: EmbeddingJobConfig,
    span: tuple[datetime, datetime, datetime],
    overwrite: bool,
) -> tuple[Path, dict[str, Any]]:
    """Index the chosen model's catalogue rows and write the artifact."""
    store, vectors, test_start = split.store, chosen.vectors, span[2]
    result, choices, embed_s = chosen.outcome
    starting_point = {**split.starting_point, **choices} if split.starting_point else {}
    model_cfg = result.model.config
    index, index_facts = index_with_recall(store.video_ids, vectors, cfg.index)
    metrics = {
        "index": index_facts,
        "triplets": {
            "train": int((~split.val_mask).sum()),
            "validation": int(split.val_mask.sum()),
        },
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "train_precision": result.precision,
        # what the catalogue was embedded in, resolved: the service embeds uploads so
        "inference_precision": str(
            inference_dtype(cfg.train.inference_precision, resolve_device(cfg.train.device))
        ).removeprefix("torch."),
        **_heldout_pairs(impressions_connection(data_dir), store, vectors, cfg, test_start),
        "embed_videos_per_s": len(store) / embed_s if embed_s > 0 else None,
        "mining_seconds": split.mining_s,
        **({"starting_point": starting_point} if starting_point else {}),
        **({"settings_search": search_report} if search_report else {}),
    }
    # what the kept model had, and the index kind the catalogue's size chose
    cfg = replace(cfg, train=replace(cfg.train, lr=chosen.lr), index=index.config)
    manifest = _manifest(data_dir, *span, len(store), model_cfg, cfg, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        files = _artifact_files(result, model_cfg, store, vectors, index, Path(tmp))
        if split.held.any():
            ids = pa.table({"video_id": [store.video_ids[i] for i in np.flatnonzero(split.held)]})
            files[art.HELDOUT_VIDEOS] = lambda p: pq.write_table(ids, p)
        path = art.write_artifact(out, files, manifest, overwrite=overwrite)
    return path, metrics


def _auto_select(
    data_dir: Path, path: Path, cfg: EmbeddingJobConfig, test_start: datetime, progress: bool
) -> dict[str, Any]:
    """``--pooling auto``: the learned embedding against every rung on validation; ship
    the winner (the learned model stays when it wins or ties)."""
    say(progress, "choosing the representation on validation (learned vs the ladder) ...")
    sel = choose_representation(
        data_dir,
        path,
        test_start,
        cfg.triplets.watch_threshold_s,
        cfg.embedder.embedding_dim,
        seed=cfg.train.seed,
        log=(lambda line: say(progress, "  " + line)),
    )
    if sel.winner != sel.learned:
        vectors = sel.rungs[sel.winner][0]
        con, store = impressions_connection(data_dir), open_frame_store(data_dir)
        pairs = _heldout_pairs(con, store, vectors, cfg, test_start)
        ship_rung(path, data_dir, sel, sel.winner, cfg.embedder.embedding_dim, pairs)
    else:
        art.extend_artifact(path, {}, {"metrics": {"selection": sel.to_json()}})
    lead = "ahead beyond the paired interval" if sel.winner != sel.learned else "no rung ahead"
    say(
        progress,
        f"shipping {sel.winner} ({lead}; validation criterion {sel.losses[sel.winner]:.5f}, "
        f"learned {sel.learned} {sel.losses[sel.learned]:.5f})",
    )
    return sel.to_json()


def _run_rung(
    data_dir: Path,
    out: Path,
    cfg: EmbeddingJobConfig,
    span: tuple[datetime, datetime, datetime],
    overwrite: bool,
    progress: bool,
) -> EmbeddingJobResult:
    """An artifact that ships a ladder rung (no training): its PCA size chosen on the
    validation rows, every video embedded, indexed and mapped."""
    test_start = span[2]
    name = cfg.representation
    say(progress, f"fitting the {name} rung (PCA size chosen on validation) ...")
    sel = choose_representation(
        data_dir,
        None,
        test_start,
        cfg.triplets.watch_threshold_s,
        cfg.embedder.embedding_dim,
        names=(name,),
        seed=cfg.train.seed,
    )
    vectors, emb, info = sel.rungs[name]
    metrics = {"selection": sel.to_json(), "pca_dim": info["pca_dim"]}
    config = rung_config(emb, cfg.embedder.embedding_dim)
    return _ship_untrained(
        data_dir,
        out,
        cfg,
        span,
        overwrite,
        open_frame_store(data_dir),
        vectors,
        emb,
        config,
        metrics,
    )


def _run_given(
    data_dir: Path,
    out: Path,
    cfg: EmbeddingJobConfig,
    span: tuple[datetime, datetime, datetime],
    overwrite: bool,
    progress: bool,
) -> EmbeddingJobResult:
    """An artifact that ships the data set's own vector per video (its ``embedding``
    column), each scaled to unit length: nothing is trained; indexed and mapped as a
    learned embedding is."""
    store = open_frame_store(data_dir, progress)
    say(
        progress,
        f"the data set gives a vector per video (D = {store.feature_dim}): shipping the "
        "vectors as given, at unit length; nothing is trained",
    )
    emb = GivenEmbedder(store.feature_dim, vector_source(data_dir))
    vectors = np.empty((len(store), store.feature_dim), dtype=np.float32)
    step = 1 << 16  # rows at a time: the float64 scaling never copies the whole catalogue
    for a in range(0, len(store), step):
        vectors[a : a + step] = unit_rows(store.frames[a : a + step])
    return _ship_untrained(
        data_dir, out, cfg, span, overwrite, store, vectors, emb, emb.config(), {}
    )


def _ship_untrained(
    data_dir: Path,
    out: Path,
    cfg: EmbeddingJobConfig,
    span: tuple[datetime, datetime, datetime],
    overwrite: bool,
    store: FrameStore,
    vectors: np.ndarray,
    emb: ClassicalEmbedder | GivenEmbedder,
    embedder_config: dict[str, Any],
    metrics: dict[str, Any],
) -> EmbeddingJobResult:
    """Index ``vectors`` (every video's row, nothing trained), measure them on the test
    period's co-watch pairs and write the artifact that ships ``emb``."""
    first, last, test_start = span
    index, index_facts = index_with_recall(store.video_ids, vectors, cfg.index)
    cfg = replace(cfg, index=index.config)
    metrics = {
        **metrics,
        "index": index_facts,
        **_heldout_pairs(impressions_connection(data_dir), store, vectors, cfg, test_start),
    }
    manifest = _manifest(data_dir, first, last, test_start, len(store), cfg.embedder, cfg, metrics)
    manifest["config"]["embedder"] = embedder_config
    manifest["config"].pop("train")
    path = art.write_artifact(
        out, rung_files(store, vectors, emb, index), manifest, overwrite=overwrite
    )
    return EmbeddingJobResult(artifact=path, metrics=metrics, history=[])


def _manifest(
    data_dir: Path,
    first: datetime,
    last: datetime,
    test_start: datetime,
    videos: int,
    model_cfg: EmbedderConfig,
    cfg: EmbeddingJobConfig,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "kind": "cowatch-embeddings",
        "data": {
            "path": str(data_dir.resolve()),
            "first_impression": first,
            "last_impression": last,
            "test_start": test_start,
            "videos": videos,
        },
        "config": {
            "embedder": model_cfg.to_dict(),
            "train": asdict(cfg.train),
            "triplets": asdict(cfg.triplets),
            "index": asdict(cfg.index),
        },
        "metrics": metrics,
    }


def _heldout_pairs(
    con: Any, store: FrameStore, vectors: np.ndarray, cfg: EmbeddingJobConfig, start: datetime
) -> dict[str, Any]:
    """How well the embedding ranks the test period's co-watch pairs (never trained on)."""
    pairs = mine_cowatch_pairs(
        con, cfg.triplets.watch_threshold_s, cfg.triplets.window_s, start=start
    )
    index = store.index
    pair_rows = np.array(
        [
            [index[a], index[b]]
            for a, b in zip(
                pairs.column("video_a").to_pylist(),
                pairs.column("video_b").to_pylist(),
                strict=True,
            )
            if a in index and b in index
        ],
        dtype=np.int64,
    ).reshape(-1, 2)
    return {
        "heldout_cowatch_pairs": len(pair_rows),
        "heldout_pair_auc": pair_auc(vectors, pair_rows, seed=cfg.train.seed),
    }


def _artifact_files(
    result: TrainResult,
    model_cfg: EmbedderConfig,
    store: FrameStore,
    vectors: np.ndarray,
    index: VideoIndex,
    tmp: Path,
) -> dict[str, Any]:
    png = tmp / art.LOSS_CURVE
    plot_loss_curve(result.history, png, f"{model_cfg.pooling} co-watch embedding")
    return {
        art.EMBEDDER_CONFIG: json.dumps(model_cfg.to_dict(), indent=2).encode(),
        art.EMBEDDER_WEIGHTS: art.state_dict_bytes(result.model),
        art.EMBEDDINGS: lambda p: pq.write_table(art.embeddings_table(store.video_ids, vectors), p),
        art.INDEX: index.to_bytes(),
        # The index as built: its kind resolved and its search width as tuned.
        art.INDEX_CONFIG: json.dumps(asdict(index.config)).encode(),
        art.TRAIN_HISTORY: json.dumps(result.history, indent=2).encode(),
        art.LOSS_CURVE: png.read_bytes(),
        # the explorer's 2-D map (PCA), fitted once so every replica draws the same map
        art.PROJECTION: json.dumps(fit_map(vectors)).encode(),
    }
