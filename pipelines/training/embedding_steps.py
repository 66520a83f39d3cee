"""The steps of ``recsys train-embeddings`` before anything is written: the job's config,
the triplets and what validation holds out (``prepare``), the starting point, training
(``fit``), the catalogue's rows with the base's share and the embedding's size chosen on
validation (``finish``) and the budgeted search over the model's settings
(``search_settings``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embeddings.cowatch import CowatchEmbedder, EmbedderConfig
from embeddings.registry import RUNGS
from pipelines.choice.representation import REPRESENTATIONS
from pipelines.choice.validation import ValidationSet, score_candidate
from pipelines.data.frame_cache import open_frame_store
from pipelines.data.impressions import RecRows, load_rec_rows
from pipelines.engine import Engine
from pipelines.phases import phase
from pipelines.training.cowatch_data import split_by_user, split_by_video, triplet_rows
from pipelines.training.cowatch_embedding import embed_store
from pipelines.training.cowatch_training import TrainConfig, TrainResult, train_embedder
from pipelines.training.settings_search import Candidate, search
from pipelines.training.starting_point import (
    BASE_CHOICES,
    choose_size,
    choose_weight,
    start_on_base,
)
from recsys.errors import UserInputError
from recsys.frames import FrameStore
from recsys.index import IndexConfig
from recsys.triplets import TripletConfig


@dataclass(frozen=True)
class EmbeddingJobConfig:
    """Everything the embedding job is told: the model, its training, the triplets it
    learns from and the index it writes."""

    #: the model; ``feature_dim`` 0 = the data set's frame dimension
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    triplets: TripletConfig = field(default_factory=TripletConfig)
    #: the catalogue's index (``auto``: chosen by its size, its recall measured)
    index: IndexConfig = field(default_factory=lambda: IndexConfig(kind="auto"))
    #: what the artifact ships: "learned" (the model above), a ladder rung by name (no
    #: training), or "auto" (train, then ship whichever validation prefers)
    representation: str = "learned"
    #: the rung the model starts from and learns on top of (``pipelines.training.starting_point``):
    #: "auto" = the one validation prefers, "none" = the model alone, or a rung's name;
    #: ignored when ``embedder.base`` already names one
    base: str = "auto"
    #: seconds the job may spend training variants of the model (``settings_search``)
    #: and keeping the one validation prefers; 0 = train the configured model only
    search_budget_s: float = 0.0

    def __post_init__(self) -> None:
        if self.search_budget_s < 0:
            raise ValueError("search_budget_s must be >= 0")
        if self.base not in BASE_CHOICES:
            raise ValueError(f"unknown base {self.base!r}; one of {', '.join(BASE_CHOICES)}")
        if self.representation not in REPRESENTATIONS:
            raise ValueError(
                f"unknown representation {self.representation!r}; one of "
                f"{', '.join(REPRESENTATIONS)}"
            )


def model_config(cfg: EmbedderConfig, store: FrameStore) -> EmbedderConfig:
    if cfg.feature_dim == 0:
        return replace(cfg, feature_dim=store.feature_dim)
    if cfg.feature_dim != store.feature_dim:
        raise UserInputError(
            f"model expects D = {cfg.feature_dim}, data has D = {store.feature_dim}"
        )
    return cfg


def training_triplets(
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


@dataclass
class Split:
    """What every training of one job shares: the triplets, what validation holds out,
    the impressions validation choices are made on and the starting point."""

    store: FrameStore
    rows: np.ndarray  # (triplets, 3) store rows
    val_mask: np.ndarray  # (triplets,) validation triplets
    held: np.ndarray  # (V,) videos held out from training
    mining_s: float
    rec_rows: RecRows | None = None  # the impressions, when choices are made on them
    starting_point: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[CowatchEmbedder], None] | None = None


def prepare(
    data_dir: Path, cfg: EmbeddingJobConfig, engine: Engine, test_start: datetime, show: bool
) -> tuple[Split, EmbedderConfig]:
    """Mine the triplets and choose the starting point (``cfg.base``)."""
    t0 = time.perf_counter()
    say(show, f"mining co-watch triplets ({engine.describe()}) ...")
    with phase("mining"):
        triplets = engine.mine_triplets(data_dir, cfg.triplets, test_start)
    mining_s = time.perf_counter() - t0
    store = open_frame_store(data_dir)
    model_cfg = model_config(cfg.embedder, store)
    rows, val_mask, held, held_out = training_triplets(store, triplets, cfg.train)
    say(
        show,
        f"mined {len(rows)} triplets before {test_start:%Y-%m-%d %H:%M} ({mining_s:.1f} s); "
        f"{held_out} held out for validation; {len(store)} videos, D = {store.feature_dim}",
    )
    split = Split(store, rows, val_mask, held, mining_s)
    starts = cfg.base != "none" and not model_cfg.base
    if starts or cfg.search_budget_s > 0:
        split.rec_rows = load_rec_rows(
            data_dir, store.video_ids, test_start, cfg.triplets.watch_threshold_s
        )
    if starts:
        assert split.rec_rows is not None
        names = RUNGS.names() if cfg.base == "auto" else (cfg.base,)
        say(show, f"choosing the starting point among {', '.join(names)} on validation ...")
        with phase("starting point"):
            model_cfg, split.prepare, split.starting_point = start_on_base(
                split.rec_rows, store, held, model_cfg, names, cfg.train.seed, logger(show)
            )
    return split, model_cfg


def fit(
    split: Split, model_cfg: EmbedderConfig, cfg: EmbeddingJobConfig, show: bool
) -> TrainResult:
    """Train ``model_cfg`` as ``cfg.train`` says on the split's triplets."""
    with phase("training"):
        result = train_embedder(
            split.store,
            split.rows[~split.val_mask],
            split.rows[split.val_mask],
            model_cfg,
            cfg.train,
            show,
            train_videos=np.flatnonzero(~split.held),
            prepare=split.prepare,
        )
    say(
        show,
        f"kept epoch {result.best_epoch} of {cfg.train.epochs} "
        f"(lowest validation loss {result.best_val_loss:.4f}; "
        f"{result.precision} training steps)",
    )
    return result


def finish(
    split: Split, result: TrainResult, cfg: EmbeddingJobConfig, train_s: float, progress: bool
) -> Candidate:
    """Embed the catalogue, then choose the base's share and the embedding's size on
    validation; the candidate's ``outcome`` is (training result, the choices' reports,
    embedding seconds)."""
    t1 = time.perf_counter()
    trained_cfg = result.model.config
    with phase("catalogue embedding"):
        vectors = embed_catalogue(result, split.store, cfg.train)
    embed_s = time.perf_counter() - t1
    choices: dict[str, Any] = {}
    rows, model = split.rec_rows, result.model
    if rows is not None and model.base is not None:
        say(progress, f"choosing the {model.config.base} base's share on validation ...")
        with phase("the base's share"):
            vectors, choices["weight"] = choose_weight(
                rows, split.held, model, vectors, logger(progress)
            )
        say(
            progress,
            f"  kept w = {model.config.base_weight:g} (trained with {trained_cfg.base_weight:g})",
        )
    if rows is not None and (model.base is not None or cfg.search_budget_s > 0):
        say(progress, "choosing the embedding's size on validation ...")
        with phase("the embedding's size"):
            vectors, choices["size"] = choose_size(
                rows, split.held, model, vectors, logger(progress)
            )
        say(progress, f"  kept {choices['size']['chosen']} of {choices['size']['full_dim']}")
    scores = None
    if rows is not None and cfg.search_budget_s > 0:
        scores = score_candidate(rows, vectors, ValidationSet.of(rows, split.held))
    seconds = train_s + time.perf_counter() - t1
    final = {"base_weight": model.config.base_weight, "reduced_dim": model.config.reduced_dim}
    outcome = (result, choices, embed_s)
    return Candidate(trained_cfg, cfg.train.lr, vectors, scores, seconds, outcome, final)  # type: ignore[arg-type]


def search_settings(
    split: Split, default: Candidate, cfg: EmbeddingJobConfig, progress: bool
) -> tuple[Candidate, dict[str, Any]]:
    """``settings_search.search`` from the default model within ``cfg.search_budget_s``."""
    assert split.rec_rows is not None
    say(progress, f"searching the model's settings on validation ({cfg.search_budget_s:g} s) ...")

    def train(model_cfg: EmbedderConfig, lr: float) -> Candidate:
        t0 = time.perf_counter()
        job = replace(cfg, train=replace(cfg.train, lr=lr))
        result = fit(split, model_cfg, job, False)
        return finish(split, result, job, time.perf_counter() - t0, False)

    vset = ValidationSet.of(split.rec_rows, split.held)
    chosen, report = search(default, train, vset, cfg.search_budget_s, logger(progress))
    say(progress, f"  kept {report['chosen']}")
    return chosen, report


def say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)


def logger(progress: bool) -> Any:
    return (lambda line: print("  " + line, flush=True)) if progress else None


def embed_catalogue(result: TrainResult, store: FrameStore, cfg: TrainConfig) -> np.ndarray:
    """(N, O) embeddings of every video, the learned part centred on its mean when
    ``center_output`` (the mean is stored in the model, so later embeddings get the same
    map); a base's part is the rung's row as it is."""
    model = result.model
    vectors = embed_store(
        model,
        store,
        max_frames=cfg.eval_max_frames,
        device=cfg.device,
        loader=cfg.loader,
        precision=cfg.inference_precision,
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
