"""Training the co-watch embedding f(g(v)) with the triplet loss (section 3.4.1, Eq. 15).

The loop over epochs keeps the epoch with the lowest validation loss; CUDA when
available, DistributedDataParallel under ``torchrun`` (``pipelines.training.distributed``).
``embed_store`` embeds a whole catalogue with the trained model.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from embeddings.cowatch import (
    CowatchEmbedder,
    EmbedderConfig,
    semi_hard_triplet_loss,
)
from embeddings.runtime import PRECISIONS, autocast, autocast_dtype, resolve_device
from embeddings.ubm_start import UBMStart
from pipelines.data.frame_loader import LoaderConfig, load_batches
from pipelines.training.cowatch_data import CowatchPartners, triplet_batches
from pipelines.training.cowatch_embedding import (
    BaseRows,
    FrameWords,
    base_rows,
    embed_frames,
    evaluate_loss,
    frame_words,
    loss_of_embeddings,
)
from pipelines.training.distributed import all_reduce_mean, dist_info
from recsys.errors import UserInputError
from recsys.frames import FramePlan, FrameStore, frames_tensor

#: what a step's loss takes for a fixed base rung (``TrainConfig.base_in_steps``)
BASE_IN_STEPS = ("sampled", "whole_video")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 128  # triplets per step (3x videos)
    lr: float = 1e-3
    #: AdamW's decoupled weight decay
    weight_decay: float = 0.0
    margin: float = 0.2
    max_frames: int = 64  # frames sampled per video per training step
    eval_max_frames: int = 300  # frames used when embedding (evenly spaced)
    #: augmentation: each training video keeps a random share of its frames in [min_keep, 1]
    min_keep: float = 0.1
    #: negatives: "given" (the triplet's own, Eq. 15) or "semi_hard" (the triplet's own
    #: plus a semi-hard negative mined among the batch's other videos, FaceNet)
    negatives: str = "given"
    #: self-supervised epochs over all videos before the co-watch triplets: two random
    #: frame subsets of one video are a positive pair, the batch's other videos negatives
    pretrain_epochs: int = 0
    #: validation: triplets naming any of this share of videos (held out from training,
    #: like cold-start uploads) choose the epoch; 0 = hold out users instead
    holdout_videos: float = 0.1
    val_fraction: float = 0.1  # users whose triplets are held out (holdout_videos = 0)
    #: start the pooling from a UBM fitted by EM (vlad/sgmm always need one), softened
    #: (Eq. 20-21 alone start nearly hard assignments that learn slowly)
    ubm: UBMStart = field(default_factory=UBMStart)
    #: centre the output on the catalogue's mean embedding after training (see
    #: CowatchEmbedder.output_mean)
    center_output: bool = True
    #: also apply Eq. 15 with the anchor replaced by the normalised sum of the anchor and
    #: this many of its co-watch partners (from the training triplets; 0 = Eq. 15 alone).
    #: Eq. 16 scores a candidate against the mean of a whole history; this term trains for
    #: that, where Eq. 15 alone only shapes pairs.
    anchor_neighbours: int = 0
    grad_clip: float = 1.0
    #: how frames reach the model (worker processes, prefetch)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    seed: int = 0
    device: str = "auto"
    max_triplets: int = 0  # 0 = all
    #: each epoch trains on a fresh random sample of at most this many training triplets
    #: (0 = all of them every epoch): an epoch's cost stops growing with the log
    epoch_triplets: int = 125_000
    #: the validation loss is measured on a fixed random sample of at most this many
    #: validation triplets (0 = all)
    val_triplets: int = 0
    #: the fixed base rung in a step's loss: "sampled" = the rung on the step's sampled
    #: frames, as the learned half sees them; "whole_video" = its rows computed once over
    #: the frames the catalogue's embedding uses (``BaseRows``): faster steps (1.3x before
    #: each frame's words were found once), AUCs 0.002-0.005 lower on the world suite's
    #: styles worlds (docs/results.md)
    base_in_steps: str = "sampled"
    #: the training forward's matrix products: "auto" = bfloat16 autocast where the
    #: hardware multiplies bf16 natively (CUDA, AVX512-BF16/AMX CPUs), else float32.
    #: Weights, optimiser, validation and every embedding written stay float32.
    precision: str = "auto"
    #: the embedding passes' (the catalogue, uploads): float32, bfloat16 or "auto"
    #: (``embeddings.runtime.inference_dtype``); recorded in the manifest so that the
    #: service embeds uploads the same way
    inference_precision: str = "float32"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.holdout_videos < 1:
            raise ValueError("val_fraction and holdout_videos must be in [0, 1)")
        if not 0 < self.min_keep <= 1:
            raise ValueError("min_keep must be in (0, 1]")
        if self.negatives not in ("given", "semi_hard"):
            raise ValueError("negatives must be 'given' or 'semi_hard'")
        if self.anchor_neighbours < 0:
            raise ValueError("anchor_neighbours must be >= 0")
        if min(self.epoch_triplets, self.val_triplets, self.max_triplets) < 0:
            raise ValueError("max_triplets, epoch_triplets and val_triplets must be >= 0")
        if self.pretrain_epochs < 0 or self.weight_decay < 0:
            raise ValueError("pretrain_epochs and weight_decay must be >= 0")
        if self.base_in_steps not in BASE_IN_STEPS:
            raise ValueError(f"base_in_steps must be one of {', '.join(BASE_IN_STEPS)}")
        if self.precision not in PRECISIONS or self.inference_precision not in PRECISIONS:
            raise ValueError(f"precisions must be one of {', '.join(PRECISIONS)}")


@dataclass
class TrainResult:
    model: CowatchEmbedder
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("nan")
    #: what the training forward ran in: "float32" or "bfloat16"
    precision: str = "float32"


class TripletBatch(NamedTuple):
    """A step's triplets and the store rows of the videos its frames hold, in order."""

    triplets: np.ndarray  # (b, 3) store rows: anchor, positive, negative
    videos: np.ndarray  # (3b + k b,) anchors, positives, negatives, then k partners each
    words: torch.Tensor | None = None  # (3b + k b, t) the frames' base words (FrameWords)


def _triplet_plans(
    store: FrameStore,
    rows: np.ndarray,
    cfg: TrainConfig,
    rng: np.random.Generator | None,
    partners: CowatchPartners | None,
    words: FrameWords | None = None,
) -> Iterator[tuple[TripletBatch, FramePlan]]:
    """Each batch of triplet ``rows`` with the plan of its frames: anchors, positives,
    negatives, then (``cfg.anchor_neighbours`` k > 0) k co-watch partners per anchor.
    ``rng`` None = validation: every frame up to ``eval_max_frames``, partners drawn the
    same way every epoch."""
    k = cfg.anchor_neighbours if partners is not None else 0
    max_frames = cfg.max_frames if rng is not None else cfg.eval_max_frames
    min_keep = cfg.min_keep if rng is not None else 1.0
    for batch in triplet_batches(rows, cfg.batch_size, None):
        videos = batch.T.reshape(-1)
        if k:
            pick = rng if rng is not None else np.random.default_rng(0)
            extra = partners.sample(batch[:, 0], batch[:, 1], k, pick)  # type: ignore[union-attr]
            videos = np.concatenate([videos, extra.reshape(-1)])
        plan = store.plan(videos, max_frames, rng, min_keep)
        yield TripletBatch(batch, videos, None if words is None else words.batch(plan)), plan


def _triplet_loss(
    model: torch.nn.Module,
    key: TripletBatch,
    frames: torch.Tensor,
    mask: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    base: BaseRows | None = None,
) -> torch.Tensor:
    """Eq. 15 over a batch of (anchor, positive, negative) store rows whose frames
    (stored type) and mask follow ``_triplet_plans``; with ``anchor_neighbours`` k > 0,
    plus Eq. 15 with the anchor replaced by the normalised sum of the anchor and its k
    partners; with ``negatives == "semi_hard"`` plus a semi-hard negative (FaceNet).
    ``base``: the model's base rows of every video (``BaseRows``), else the base runs on
    the step's frames."""
    batch = key.triplets
    b = len(batch)
    known = None if base is None else base.take(key.videos)
    emb = embed_frames(model, frames, mask, device, known, key.words).float()
    loss = loss_of_embeddings(emb, b, cfg.margin)
    a, p, n = emb[: 3 * b].chunk(3)
    if cfg.negatives == "semi_hard" and model.training:
        # Candidates: every positive and negative of the batch that is neither the
        # anchor's video nor its positive's.
        cand = torch.from_numpy(np.concatenate([batch[:, 1], batch[:, 2]])).to(device)
        anc = torch.from_numpy(batch[:, 0]).to(device).unsqueeze(1)
        pos = torch.from_numpy(batch[:, 1]).to(device).unsqueeze(1)
        allowed = (cand.unsqueeze(0) != anc) & (cand.unsqueeze(0) != pos)
        loss = loss + semi_hard_triplet_loss(a, p, torch.cat([p, n]), allowed, cfg.margin)
    return loss


def _self_supervised_loss(
    model: torch.nn.Module,
    videos: np.ndarray,
    frames: torch.Tensor,
    mask: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """Two random frame subsets of each video embed close; the batch's others are negatives."""
    emb = model(frames_tensor(frames, device, mask), mask.to(device)).float()
    v1, v2 = emb.chunk(2)
    ids = torch.from_numpy(videos).to(device)
    allowed = ids.unsqueeze(1) != ids.unsqueeze(0)
    return semi_hard_triplet_loss(v1, v2, v2, allowed, cfg.margin)


def train_embedder(
    store: FrameStore,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    model_cfg: EmbedderConfig,
    cfg: TrainConfig,
    progress: bool = True,
    train_videos: np.ndarray | None = None,
    prepare: Callable[[CowatchEmbedder], None] | None = None,
) -> TrainResult:
    """Train on ``train_rows`` (N, 3) store rows; keep the epoch with the lowest validation
    loss on ``val_rows``. ``train_videos`` (store rows) are what self-supervised
    pre-training may see (default: every video). ``prepare``: called on the new model
    before training (filling a base layer's arrays)."""
    rank, world = dist_info()
    if train_videos is None:
        train_videos = np.arange(len(store))
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    model = new_embedder(model_cfg, store, cfg)
    if prepare is not None:
        prepare(model)
    model = model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel a step on the CPU and CUDA: the foreach update made ~6 passes over
    # the projector's 8M weights and took ~30% of a D = 1024 step here (equal to 1e-7).
    fused = device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    # Resolved once ("auto" -> what this device does): every step's autocast reads it.
    low = autocast_dtype(cfg.precision, device)
    cfg = replace(cfg, precision="float32" if low is None else "bfloat16")
    result = TrainResult(model=model, precision=cfg.precision)
    show = progress and rank == 0
    if cfg.pretrain_epochs:
        _pretrain(net, params, opt, store, train_videos, cfg, device, rank, world, show)
    best_state: dict[str, torch.Tensor] | None = None
    partners = (
        CowatchPartners.from_triplets(train_rows, len(store)) if cfg.anchor_neighbours else None
    )
    base = _base_rows(model, store, train_rows, val_rows, cfg, device, show)
    words = frame_words(model, store, device) if cfg.base_in_steps == "sampled" else None
    rng = np.random.default_rng(cfg.seed)
    per_epoch = min(len(train_rows), cfg.epoch_triplets or len(train_rows))
    per_rank = per_epoch // world
    if len(val_rows) > cfg.val_triplets > 0:  # its own stream: training's is unchanged
        pick = np.random.default_rng([cfg.seed, 4]).choice(len(val_rows), cfg.val_triplets, False)
        val_rows = val_rows[np.sort(pick)]
    if per_rank == 0:
        raise UserInputError(
            f"not enough training triplets ({len(train_rows)}) for {world} processes"
        )
    for epoch in tqdm(range(cfg.epochs), desc="epochs", disable=not show):
        # Same permutation on every rank; each takes an equal share.
        # The first per_epoch of a permutation: a fresh uniform sample every epoch.
        perm = rng.permutation(len(train_rows))[:per_epoch][rank::world][:per_rank]
        t0 = time.perf_counter()
        train_loss = _train_epoch(
            net,
            params,
            opt,
            store,
            train_rows[perm],
            partners,
            cfg,
            device,
            epoch,
            show,
            base if cfg.base_in_steps == "whole_video" else None,
            words,
        )
        val_loss = _validation_loss(net, store, val_rows, cfg, device, partners, base)
        entry = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "seconds": time.perf_counter() - t0,
        }
        result.history.append(entry)
        score = val_loss if not math.isnan(val_loss) else train_loss
        if best_state is None or score < result.best_val_loss:
            result.best_val_loss, result.best_epoch = score, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        if show:
            tqdm.write(
                f"epoch {epoch + 1}: train loss {train_loss:.4f}, validation loss {val_loss:.4f}"
            )
    if best_state is not None:
        model.load_state_dict(best_state)
    model.cpu().eval()
    return result


def _validation_loss(
    net: torch.nn.Module,
    store: FrameStore,
    val_rows: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    partners: CowatchPartners | None,
    base: BaseRows | None,
) -> float:
    """Eq. 15 over the validation triplets, as ``evaluate_loss`` computes it."""
    return evaluate_loss(
        net,
        store,
        val_rows,
        device,
        batch_size=cfg.batch_size,
        max_frames=cfg.eval_max_frames,
        margin=cfg.margin,
        loader=cfg.loader,
        partners=partners,
        anchor_neighbours=cfg.anchor_neighbours,
        base=base,
    )


def _base_rows(
    model: CowatchEmbedder,
    store: FrameStore,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    show: bool,
) -> BaseRows | None:
    """The model's base run once on every video the triplets name (partners are drawn
    from the training triplets), over the frames the catalogue's embedding uses."""
    if model.base is None:
        return None
    t0 = time.perf_counter()
    videos = np.concatenate([train_rows.reshape(-1), val_rows.reshape(-1)])
    base = base_rows(model, store, videos, cfg.eval_max_frames, device, cfg.loader)
    if show and base is not None:
        tqdm.write(
            f"base rows: {len(base.videos)} videos ({model.config.base}) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    return base


def new_embedder(model_cfg: EmbedderConfig, store: FrameStore, cfg: TrainConfig) -> CowatchEmbedder:
    """A fresh model (seeded), its pooling started from a UBM when ``cfg.ubm`` says so."""
    torch.manual_seed(cfg.seed)
    model = CowatchEmbedder(model_cfg)
    try:
        cfg.ubm.start(
            model.pooling, model_cfg, lambda n: store.sample_frames(n, cfg.seed), cfg.seed
        )
    except ValueError as exc:  # too few frames for the clusters
        raise UserInputError(str(exc)) from None
    return model


def _train_epoch(
    net: torch.nn.Module,
    params: list[torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    store: FrameStore,
    rows: np.ndarray,
    partners: CowatchPartners | None,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    show: bool,
    base: BaseRows | None = None,
    words: FrameWords | None = None,
) -> float:
    """One pass over this rank's share of the triplet ``rows``; the mean training loss
    over all ranks."""
    rank, _ = dist_info()
    net.train()
    frame_rng = np.random.default_rng([cfg.seed, epoch, rank])
    total, count = 0.0, 0
    plans = _triplet_plans(store, rows, cfg, frame_rng, partners, words)
    for key, frames, mask in tqdm(
        load_batches(store, plans, device, cfg.loader),
        total=math.ceil(len(rows) / cfg.batch_size),
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=not show,
    ):
        with autocast(cfg.precision, device):
            loss = _triplet_loss(net, key, frames, mask, cfg, device, base)
        _step(opt, loss, params, cfg.grad_clip)
        total += float(loss.detach()) * len(key.triplets)
        count += len(key.triplets)
    return all_reduce_mean(total, count, device)


def _pretrain(
    net: torch.nn.Module,
    params: list[torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    store: FrameStore,
    videos: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
    show: bool,
) -> None:
    """Self-supervised epochs: a video's two frame subsets against the batch's other videos."""
    rng = np.random.default_rng([cfg.seed, 2])
    per_rank = len(videos) // world
    for epoch in range(cfg.pretrain_epochs):
        net.train()
        perm = rng.permutation(videos)[rank::world][:per_rank]
        frame_rng = np.random.default_rng([cfg.seed, 2, epoch, rank])
        total, count = 0.0, 0
        plans = _pair_plans(store, perm, cfg, frame_rng)
        for batch, frames, mask in load_batches(store, plans, device, cfg.loader):
            with autocast(cfg.precision, device):
                loss = _self_supervised_loss(net, batch, frames, mask, cfg, device)
            _step(opt, loss, params, cfg.grad_clip)
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        mean = all_reduce_mean(total, count, device)
        if show:
            tqdm.write(f"pre-training epoch {epoch + 1}: self-supervised loss {mean:.4f}")


def _pair_plans(
    store: FrameStore, videos: np.ndarray, cfg: TrainConfig, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, FramePlan]]:
    """Batches of ``videos`` (at least two each), every video twice with its own subset."""
    for s in range(0, len(videos) - 1, cfg.batch_size):
        batch = videos[s : s + cfg.batch_size]
        if len(batch) >= 2:
            twice = np.concatenate([batch, batch])
            yield batch, store.plan(twice, cfg.max_frames, rng, min(cfg.min_keep, 0.5))


def _step(
    opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter], clip: float
) -> None:
    """One optimiser step on ``loss``, gradients clipped to norm ``clip`` (0 = no clipping)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
