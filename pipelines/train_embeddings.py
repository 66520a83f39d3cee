"""``recsys train-embeddings``: co-watch triplets -> trained embedder -> every video
embedded -> FAISS index -> quality metrics -> artifact directory (atomic).

The steps' logic lives apart: the triplet SQL in ``recsys.triplets`` (run by the
engine), the training data in ``pipelines.cowatch_data``, the training loop in
``pipelines.cowatch_training``, the artifact's files in ``recsys.artifact``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from embeddings.cowatch import EmbedderConfig
from pipelines.cowatch_data import split_by_user, split_by_video, triplet_rows
from pipelines.cowatch_embedding import embed_store
from pipelines.cowatch_training import TrainConfig, TrainResult, train_embedder
from pipelines.distributed import dist_info
from pipelines.engine import LOCAL, Engine
from pipelines.frame_cache import open_frame_store
from pipelines.impressions import RecRows, impressions_connection, load_rec_rows, log_span
from pipelines.io import dataset_dir
from pipelines.plots import plot_loss_curve
from pipelines.representation import (
    AUTO,
    REPRESENTATIONS,
    choose_representation,
    rung_config,
    rung_files,
    ship_rung,
)
from pipelines.starting_point import BASE_CHOICES, choose_weight, start_on_base
from recsys import artifact as art
from recsys.baselines import BASELINE_NAMES
from recsys.errors import UserInputError
from recsys.frames import FrameStore
from recsys.index import IndexConfig, VideoIndex
from recsys.metrics import pair_auc
from recsys.projection import fit_map
from recsys.splits import default_test_start
from recsys.triplets import TripletConfig, mine_cowatch_pairs


@dataclass(frozen=True)
class EmbeddingJobConfig:
    """Everything the embedding job is told: the model, its training, the triplets it
    learns from and the index it writes."""

    #: the model; ``feature_dim`` 0 = the data set's frame dimension
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    triplets: TripletConfig = field(default_factory=TripletConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    #: what the artifact ships: "learned" (the model above), a ladder rung by name (no
    #: training), or "auto" (train, then ship whichever validation prefers)
    representation: str = "learned"
    #: the rung the model starts from and learns on top of (``pipelines.starting_point``):
    #: "auto" = the one validation prefers, "none" = the model alone, or a rung's name;
    #: ignored when ``embedder.base`` already names one
    base: str = "auto"

    def __post_init__(self) -> None:
        if self.base not in BASE_CHOICES:
            raise ValueError(f"unknown base {self.base!r}; one of {', '.join(BASE_CHOICES)}")
        if self.representation not in REPRESENTATIONS:
            raise ValueError(
                f"unknown representation {self.representation!r}; one of "
                f"{', '.join(REPRESENTATIONS)}"
            )


@dataclass
class EmbeddingJobResult:
    artifact: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def _model_config(cfg: EmbedderConfig, store: FrameStore) -> EmbedderConfig:
    if cfg.feature_dim == 0:
        return replace(cfg, feature_dim=store.feature_dim)
    if cfg.feature_dim != store.feature_dim:
        raise UserInputError(
            f"model expects D = {cfg.feature_dim}, data has D = {store.feature_dim}"
        )
    return cfg


def _training_triplets(
    store: FrameStore, triplets: Any, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(triplet rows, validation mask, held-out videos, what was held out) for training."""
    rows, users = triplet_rows(store, triplets)
    if cfg.max_triplets and len(rows) > cfg.max_triplets:
        keep = np.random.default_rng(cfg.seed).choice(len(rows), cfg.max_triplets, replace=False)
        rows, users = rows[np.sort(keep)], users[np.sort(keep)]
    if len(rows) == 0:
        raise UserInputError("no co-watch triplets in the training period (too few valid watches?)")
    if cfg.holdout_videos > 0:
        val_mask, held = split_by_video(rows, len(store), cfg.holdout_videos, cfg.seed)
        return (
            rows,
            val_mask,
            held,
            f"{int(held.sum())} videos and their {int(val_mask.sum())} triplets",
        )
    val_mask = split_by_user(users, cfg.val_fraction, cfg.seed)
    held = np.zeros(len(store), dtype=bool)
    return rows, val_mask, held, f"{int(val_mask.sum())} triplets of other users"


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
    test_start = test_start or default_test_start(first, last)
    if cfg.representation in BASELINE_NAMES:
        return _run_rung(data_dir, Path(out), cfg, (first, last, test_start), overwrite, progress)
    trained = _train(data_dir, cfg, engine, test_start, progress and rank == 0)
    if rank != 0:
        return EmbeddingJobResult(artifact=None, metrics={}, history=trained.result.history)
    path, metrics = _write_trained(
        trained, data_dir, Path(out), cfg, (first, last, test_start), overwrite, progress
    )
    if cfg.representation == AUTO:
        metrics["selection"] = _auto_select(data_dir, path, cfg, test_start, progress)
    return EmbeddingJobResult(artifact=path, metrics=metrics, history=trained.result.history)


@dataclass
class _Trained:
    """What training produced and the rows it held out."""

    store: FrameStore
    result: TrainResult
    val_mask: np.ndarray  # (triplets,) validation triplets
    held: np.ndarray  # (V,) videos held out from training
    mining_s: float
    rec_rows: RecRows | None = None  # the impressions, when a base was chosen on them
    starting_point: dict[str, Any] = field(default_factory=dict)


def _train(
    data_dir: Path, cfg: EmbeddingJobConfig, engine: Engine, test_start: datetime, show: bool
) -> _Trained:
    """Mine the triplets, choose the starting point (``cfg.base``) and train."""
    t0 = time.perf_counter()
    _say(show, f"mining co-watch triplets ({engine.describe()}) ...")
    triplets = engine.mine_triplets(data_dir, cfg.triplets, test_start)
    mining_s = time.perf_counter() - t0
    store = open_frame_store(data_dir)
    model_cfg = _model_config(cfg.embedder, store)
    rows, val_mask, held, held_out = _training_triplets(store, triplets, cfg.train)
    _say(
        show,
        f"mined {len(rows)} triplets before {test_start:%Y-%m-%d %H:%M} ({mining_s:.1f} s); "
        f"{held_out} held out for validation; {len(store)} videos, D = {store.feature_dim}",
    )
    rec_rows, prepare = None, None
    base_report: dict[str, Any] = {}
    if cfg.base != "none" and not model_cfg.base:
        rec_rows = load_rec_rows(
            data_dir, store.video_ids, test_start, cfg.triplets.watch_threshold_s
        )
        names = BASELINE_NAMES if cfg.base == "auto" else (cfg.base,)
        _say(show, f"choosing the starting point among {', '.join(names)} on validation ...")
        model_cfg, prepare, base_report = start_on_base(
            rec_rows, store, held, model_cfg, names, cfg.train.seed, _logger(show)
        )
    result = train_embedder(
        store,
        rows[~val_mask],
        rows[val_mask],
        model_cfg,
        cfg.train,
        show,
        train_videos=np.flatnonzero(~held),
        prepare=prepare,
    )
    _say(
        show,
        f"kept epoch {result.best_epoch} of {cfg.train.epochs} "
        f"(lowest validation loss {result.best_val_loss:.4f}; "
        f"{result.precision} training steps)",
    )
    return _Trained(store, result, val_mask, held, mining_s, rec_rows, base_report)


def _write_trained(
    t: _Trained,
    data_dir: Path,
    out: Path,
    cfg: EmbeddingJobConfig,
    span: tuple[datetime, datetime, datetime],
    overwrite: bool,
    progress: bool,
) -> tuple[Path, dict[str, Any]]:
    """Embed the catalogue (the base's share chosen on validation), index it and write
    the artifact."""
    store, result, test_start = t.store, t.result, span[2]
    t1 = time.perf_counter()
    vectors = _embed_catalogue(result, store, cfg.train)
    embed_s = time.perf_counter() - t1
    starting_point = dict(t.starting_point)
    if t.rec_rows is not None and result.model.base is not None:
        _say(progress, f"choosing the {result.model.config.base} base's share on validation ...")
        vectors, weights = choose_weight(
            t.rec_rows, t.held, result.model, vectors, _logger(progress)
        )
        starting_point["weight"] = weights
        _say(
            progress,
            f"  kept w = {weights['weight']:g} (trained with {weights['trained_weight']:g})",
        )
    model_cfg = result.model.config
    index = VideoIndex.build(store.video_ids, vectors, cfg.index)
    metrics = {
        "triplets": {"train": int((~t.val_mask).sum()), "validation": int(t.val_mask.sum())},
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "train_precision": result.precision,
        **_heldout_pairs(impressions_connection(data_dir), store, vectors, cfg, test_start),
        "embed_videos_per_s": len(store) / embed_s if embed_s > 0 else None,
        "mining_seconds": t.mining_s,
        **({"starting_point": starting_point} if starting_point else {}),
    }
    manifest = _manifest(data_dir, *span, len(store), model_cfg, cfg, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        files = _artifact_files(result, model_cfg, store, vectors, index, cfg.index, Path(tmp))
        if t.held.any():
            ids = pa.table({"video_id": [store.video_ids[i] for i in np.flatnonzero(t.held)]})
            files[art.HELDOUT_VIDEOS] = lambda p: pq.write_table(ids, p)
        path = art.write_artifact(out, files, manifest, overwrite=overwrite)
    return path, metrics


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)


def _logger(progress: bool) -> Any:
    return (lambda line: print("  " + line, flush=True)) if progress else None


def _auto_select(
    data_dir: Path, path: Path, cfg: EmbeddingJobConfig, test_start: datetime, progress: bool
) -> dict[str, Any]:
    """``--pooling auto``: the learned embedding against every rung on validation; ship
    the winner (the learned model stays when it wins or ties)."""
    _say(progress, "choosing the representation on validation (learned vs the ladder) ...")
    sel = choose_representation(
        data_dir,
        path,
        test_start,
        cfg.triplets.watch_threshold_s,
        cfg.embedder.embedding_dim,
        seed=cfg.train.seed,
        log=(lambda line: _say(progress, "  " + line)),
    )
    if sel.winner != sel.learned:
        vectors = sel.rungs[sel.winner][0]
        con, store = impressions_connection(data_dir), open_frame_store(data_dir)
        pairs = _heldout_pairs(con, store, vectors, cfg, test_start)
        ship_rung(path, data_dir, sel, sel.winner, cfg.embedder.embedding_dim, pairs)
    else:
        art.extend_artifact(path, {}, {"metrics": {"selection": sel.to_json()}})
    lead = "ahead beyond the paired interval" if sel.winner != sel.learned else "no rung ahead"
    _say(
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
    first, last, test_start = span
    name = cfg.representation
    _say(progress, f"fitting the {name} rung (PCA size chosen on validation) ...")
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
    store = open_frame_store(data_dir)
    metrics = {
        "selection": sel.to_json(),
        "pca_dim": info["pca_dim"],
        **_heldout_pairs(impressions_connection(data_dir), store, vectors, cfg, test_start),
    }
    manifest = _manifest(data_dir, first, last, test_start, len(store), cfg.embedder, cfg, metrics)
    manifest["config"]["embedder"] = rung_config(emb, cfg.embedder.embedding_dim)
    manifest["config"].pop("train")
    path = art.write_artifact(
        out, rung_files(store, vectors, emb, cfg.index), manifest, overwrite=overwrite
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


def _embed_catalogue(result: TrainResult, store: FrameStore, cfg: TrainConfig) -> np.ndarray:
    """(N, O) embeddings of every video, the learned part centred on its mean when
    ``center_output`` (the mean is stored in the model, so later embeddings get the same
    map); a base's part is the rung's row as it is."""
    model = result.model
    vectors = embed_store(
        model, store, max_frames=cfg.eval_max_frames, device=cfg.device, loader=cfg.loader
    )
    if not cfg.center_output:
        return vectors
    # Same as embedding again with the mean set, without a second pass.
    out = torch.from_numpy(vectors)
    base, learned = model.split(out)
    model.set_output_mean(learned)
    centred = torch.nn.functional.normalize(learned - model.output_mean, dim=-1)
    if model.base is None:
        return centred.numpy()
    return model.combine(base, centred, model.config.base_weight).numpy()


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
    index_cfg: IndexConfig,
    tmp: Path,
) -> dict[str, Any]:
    png = tmp / art.LOSS_CURVE
    plot_loss_curve(result.history, png, f"{model_cfg.pooling} co-watch embedding")
    return {
        art.EMBEDDER_CONFIG: json.dumps(model_cfg.to_dict(), indent=2).encode(),
        art.EMBEDDER_WEIGHTS: art.state_dict_bytes(result.model),
        art.EMBEDDINGS: lambda p: pq.write_table(art.embeddings_table(store.video_ids, vectors), p),
        art.INDEX: index.to_bytes(),
        art.INDEX_CONFIG: json.dumps(asdict(index_cfg)).encode(),
        art.TRAIN_HISTORY: json.dumps(result.history, indent=2).encode(),
        art.LOSS_CURVE: png.read_bytes(),
        # the explorer's 2-D map (PCA), fitted once so every replica draws the same map
        art.PROJECTION: json.dumps(fit_map(vectors)).encode(),
    }
