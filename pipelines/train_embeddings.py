"""Train co-watch embeddings, embed every video, build the index, write the artifact.

Steps: mine triplets (DuckDB over impressions.parquet, training period only) ->
load frames -> optionally fit a UBM to initialise the pooling -> train pooling +
projector with the triplet loss (CUDA when available; DistributedDataParallel
under ``torchrun``) -> embed all videos -> FAISS index -> quality metrics ->
artifact directory (atomic).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from embeddings.cowatch import (
    CowatchEmbedder,
    EmbedderConfig,
    semi_hard_triplet_loss,
    triplet_loss,
)
from embeddings.gmm import fit_gmm
from embeddings.pooling import SoftAssignmentPooling
from embeddings.runtime import resolve_device
from pipelines.engine import LOCAL, Engine
from pipelines.io import dataset_dir, iter_video_batches, open_parquet
from recsys.artifact import embeddings_table, state_dict_bytes, write_artifact
from recsys.dataset import IMPRESSIONS_FILE
from recsys.errors import UserInputError
from recsys.frames import FrameStore
from recsys.index import IndexConfig, VideoIndex
from recsys.metrics import pair_auc
from recsys.projection import fit_projection
from recsys.splits import default_test_start
from recsys.triplets import TripletConfig, mine_cowatch_pairs


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
    #: start the pooling from a UBM fitted by EM (vlad/sgmm always need one)
    ubm_init: bool = True
    #: divide the UBM-initialised assignment logits by this (> 1 keeps them soft;
    #: Eq. 20-21 alone start nearly hard assignments that learn slowly)
    init_temperature: float = 4.0
    ubm_frames: int = 50_000
    #: centre the output on the catalogue's mean embedding after training (see
    #: CowatchEmbedder.output_mean)
    center_output: bool = True
    #: also apply Eq. 15 with the anchor replaced by the normalised sum of the anchor and
    #: this many of its co-watch partners (from the training triplets; 0 = Eq. 15 alone).
    #: Eq. 16 scores a candidate against the mean of a whole history; this term trains for
    #: that, where Eq. 15 alone only shapes pairs.
    anchor_neighbours: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    max_triplets: int = 0  # 0 = all

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
        if self.pretrain_epochs < 0 or self.weight_decay < 0 or self.init_temperature <= 0:
            raise ValueError("pretrain_epochs and weight_decay must be >= 0, init_temperature > 0")


@dataclass
class TrainResult:
    model: CowatchEmbedder
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("nan")


# --------------------------------------------------------------------------- distributed


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


# --------------------------------------------------------------------------- data


def impressions_connection(data: Path) -> duckdb.DuckDBPyConnection:
    """DuckDB with a view ``impressions`` over the data set's Parquet file (out-of-core)."""
    path = data / IMPRESSIONS_FILE
    if not path.exists():
        raise UserInputError(
            f"{path}: missing; this job needs impressions (a videos-only data set serves "
            "classification and embedding only, see docs/data.md)"
        )
    open_parquet(path)  # clear error for an unreadable file
    con = duckdb.connect()
    con.execute(f"CREATE VIEW impressions AS SELECT * FROM read_parquet('{_sql_str(path)}')")
    return con


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def log_span(con: duckdb.DuckDBPyConnection) -> tuple[datetime, datetime]:
    row = con.execute("SELECT min(shown_at), max(shown_at) FROM impressions").fetchall()[0]
    if row is None or row[0] is None:
        raise UserInputError("impressions.parquet has no impressions")
    return row[0], row[1]


def load_frame_store(data: Path, batch_size: int = 512) -> FrameStore:
    return FrameStore.from_batches(iter_video_batches(data, batch_size=batch_size))


def triplet_rows(store: FrameStore, triplets: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) store rows and the user of each triplet; triplets naming unknown videos are dropped."""
    cols = [triplets.column(c).to_pylist() for c in ("anchor", "positive", "negative")]
    idx = store.index
    keep = [i for i in range(triplets.num_rows) if all(c[i] in idx for c in cols)]
    rows = np.array([[idx[c[i]] for c in cols] for i in keep], dtype=np.int64).reshape(-1, 3)
    users = np.array(triplets.column("user_id").to_pylist(), dtype=object)[keep]
    return rows, users


def split_by_video(
    rows: np.ndarray, num_videos: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(validation mask over triplets, held-out video mask): triplets naming any held-out
    video validate; training never sees those videos, as it never sees cold-start ones."""
    rng = np.random.default_rng([seed, 1])
    held = np.zeros(num_videos, dtype=bool)
    held[rng.choice(num_videos, size=round(fraction * num_videos), replace=False)] = True
    return held[rows].any(1), held


def split_by_user(users: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation triplets: all triplets of ~val_fraction of users."""
    uniq = sorted(set(users.tolist()))
    rng = np.random.default_rng(seed)
    n_val = round(val_fraction * len(uniq))
    val_users = set(rng.choice(len(uniq), size=n_val, replace=False).tolist()) if n_val else set()
    val_names = {uniq[i] for i in val_users}
    return np.array([u in val_names for u in users], dtype=bool)


# --------------------------------------------------------------------------- training


def _batches(
    rows: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> Iterator[np.ndarray]:
    order = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
    for s in range(0, len(order), batch_size):
        yield rows[order[s : s + batch_size]]


@dataclass(frozen=True)
class CowatchPartners:
    """Each video's co-watch partners in the training triplets (anchor-positive pairs,
    both directions), as CSR arrays: partners of video v are
    ``indices[indptr[v]:indptr[v + 1]]``, sorted and without v itself."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_triplets(cls, rows: np.ndarray, num_videos: int) -> CowatchPartners:
        pairs = np.concatenate([rows[:, [0, 1]], rows[:, [1, 0]]])
        pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)  # sorted by (v, partner)
        counts = np.bincount(pairs[:, 0], minlength=num_videos)
        return cls(np.concatenate([[0], np.cumsum(counts)]), pairs[:, 1].copy())

    def sample(
        self, anchors: np.ndarray, positives: np.ndarray, k: int, rng: np.random.Generator
    ) -> np.ndarray:
        """(B, k) partners of each anchor other than its positive, without replacement
        while there are enough; an anchor with none gets itself (its own embedding)."""
        out = np.empty((len(anchors), k), dtype=np.int64)
        for i, (a, p) in enumerate(zip(anchors.tolist(), positives.tolist(), strict=True)):
            nb = self.indices[self.indptr[a] : self.indptr[a + 1]]
            nb = nb[nb != p]
            out[i] = rng.choice(nb, k, replace=len(nb) < k) if len(nb) else a
        return out


def _triplet_step_loss(
    model: torch.nn.Module,
    store: FrameStore,
    batch: np.ndarray,
    max_frames: int,
    margin: float,
    device: torch.device,
    rng: np.random.Generator | None,
    negatives: str = "given",
    min_keep: float = 1.0,
    partners: CowatchPartners | None = None,
    anchor_neighbours: int = 0,
) -> torch.Tensor:
    """Eq. 15 over a batch of (anchor, positive, negative) store rows; with
    ``anchor_neighbours`` k > 0, plus Eq. 15 with the anchor replaced by the normalised
    sum of the anchor and k of its co-watch partners (``partners``)."""
    b, k = len(batch), anchor_neighbours if partners is not None else 0
    videos = batch.T.reshape(-1)  # anchors, positives, negatives
    if k:
        # Validation (rng None) draws its partners the same way every epoch.
        pick = rng if rng is not None else np.random.default_rng(0)
        extra = partners.sample(batch[:, 0], batch[:, 1], k, pick)  # type: ignore[union-attr]
        videos = np.concatenate([videos, extra.reshape(-1)])
    frames, mask = store.batch(videos, max_frames, rng, min_keep if rng is not None else 1.0)
    emb = model(torch.from_numpy(frames).to(device), torch.from_numpy(mask).to(device))
    a, p, n = emb[: 3 * b].chunk(3)
    loss = triplet_loss(a, p, n, margin)
    if k:
        centroid = F.normalize(a + emb[3 * b :].reshape(b, k, -1).sum(1), dim=-1)
        loss = loss + triplet_loss(centroid, p, n, margin)
    if negatives == "semi_hard":
        # Candidates: every positive and negative of the batch that is neither the
        # anchor's video nor its positive's.
        cand = torch.from_numpy(np.concatenate([batch[:, 1], batch[:, 2]])).to(device)
        anc = torch.from_numpy(batch[:, 0]).to(device).unsqueeze(1)
        pos = torch.from_numpy(batch[:, 1]).to(device).unsqueeze(1)
        allowed = (cand.unsqueeze(0) != anc) & (cand.unsqueeze(0) != pos)
        loss = loss + semi_hard_triplet_loss(a, p, torch.cat([p, n]), allowed, margin)
    return loss


def _self_supervised_step_loss(
    model: torch.nn.Module,
    store: FrameStore,
    videos: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Two random frame subsets of each video embed close; the batch's others are negatives."""
    twice = np.concatenate([videos, videos])
    frames, mask = store.batch(twice, cfg.max_frames, rng, min(cfg.min_keep, 0.5))
    emb = model(torch.from_numpy(frames).to(device), torch.from_numpy(mask).to(device))
    v1, v2 = emb.chunk(2)
    ids = torch.from_numpy(videos).to(device)
    allowed = ids.unsqueeze(1) != ids.unsqueeze(0)
    return semi_hard_triplet_loss(v1, v2, v2, allowed, cfg.margin)


def fit_ubm_for(cfg: EmbedderConfig, store: FrameStore, n_frames: int, seed: int) -> Any:
    x = torch.from_numpy(store.sample_frames(n_frames, seed)).double()
    k = min(cfg.num_clusters, len(x))
    if k < cfg.num_clusters:
        raise UserInputError(
            f"{cfg.num_clusters} clusters need at least as many frames, have {len(x)}"
        )
    # A shared full covariance makes the decoupled initialisation (Eq. 20-21) exact.
    batches = lambda: (x[i : i + 8192] for i in range(0, len(x), 8192))  # noqa: E731
    return fit_gmm(batches, cfg.num_clusters, "shared_full", max_iter=30, seed=seed).gmm


def train_embedder(
    store: FrameStore,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    model_cfg: EmbedderConfig,
    cfg: TrainConfig,
    progress: bool = True,
    train_videos: np.ndarray | None = None,
) -> TrainResult:
    """Train on ``train_rows`` (N, 3) store rows; keep the epoch with the lowest validation
    loss on ``val_rows``. ``train_videos`` (store rows) are what self-supervised
    pre-training may see (default: every video)."""
    rank, world = _dist_info()
    if train_videos is None:
        train_videos = np.arange(len(store))
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.seed)
    model = CowatchEmbedder(model_cfg)
    if (cfg.ubm_init or model.needs_ubm) and model_cfg.pooling != "avg":
        model.from_ubm(fit_ubm_for(model_cfg, store, cfg.ubm_frames, cfg.seed))
        if isinstance(model.pooling, SoftAssignmentPooling):
            model.pooling.soften_assignment(cfg.init_temperature)
    model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = TrainResult(model=model)
    show = progress and rank == 0
    if cfg.pretrain_epochs:
        _pretrain(net, params, opt, store, train_videos, cfg, device, rank, world, show)
    best_state: dict[str, torch.Tensor] | None = None
    partners = (
        CowatchPartners.from_triplets(train_rows, len(store)) if cfg.anchor_neighbours else None
    )
    rng = np.random.default_rng(cfg.seed)
    per_rank = len(train_rows) // world
    if per_rank == 0:
        raise UserInputError(
            f"not enough training triplets ({len(train_rows)}) for {world} processes"
        )
    for epoch in tqdm(range(cfg.epochs), desc="epochs", disable=not show):
        net.train()
        # Same permutation on every rank; each takes an equal share.
        perm = rng.permutation(len(train_rows))[rank::world][:per_rank]
        frame_rng = np.random.default_rng([cfg.seed, epoch, rank])
        total, count = 0.0, 0
        t0 = time.perf_counter()
        for batch in tqdm(
            _batches(train_rows[perm], cfg.batch_size, None),
            total=math.ceil(per_rank / cfg.batch_size),
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=not show,
        ):
            loss = _triplet_step_loss(
                net,
                store,
                batch,
                cfg.max_frames,
                cfg.margin,
                device,
                frame_rng,
                cfg.negatives,
                cfg.min_keep,
                partners,
                cfg.anchor_neighbours,
            )
            _step(opt, loss, params, cfg.grad_clip)
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        train_loss = _all_reduce_mean(total, count, device)
        val_loss = evaluate_loss(net, store, val_rows, cfg, device, partners)
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
        for s in range(0, len(perm) - 1, cfg.batch_size):
            batch = perm[s : s + cfg.batch_size]
            if len(batch) < 2:
                continue
            loss = _self_supervised_step_loss(net, store, batch, cfg, device, frame_rng)
            _step(opt, loss, params, cfg.grad_clip)
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        mean = _all_reduce_mean(total, count, device)
        if show:
            tqdm.write(f"pre-training epoch {epoch + 1}: self-supervised loss {mean:.4f}")


def _step(
    opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter], clip: float
) -> None:
    """One optimiser step on ``loss``, gradients clipped to norm ``clip`` (0 = no clipping)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def _all_reduce_mean(total: float, count: int, device: torch.device) -> float:
    _, world = _dist_info()
    if world > 1:
        t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / count if count else float("nan")


@torch.no_grad()
def evaluate_loss(
    net: torch.nn.Module,
    store: FrameStore,
    rows: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    partners: CowatchPartners | None = None,
) -> float:
    rank, world = _dist_info()
    net.eval()
    shard = rows[rank::world]
    total, count = 0.0, 0
    for batch in _batches(shard, cfg.batch_size, None):
        loss = _triplet_step_loss(
            net,
            store,
            batch,
            cfg.eval_max_frames,
            cfg.margin,
            device,
            None,
            partners=partners,
            anchor_neighbours=cfg.anchor_neighbours,
        )
        total += float(loss) * len(batch)
        count += len(batch)
    return _all_reduce_mean(total, count, device)


@torch.no_grad()
def embed_store(
    model: CowatchEmbedder,
    store: FrameStore,
    batch_size: int = 256,
    max_frames: int = 300,
    device: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """(N, E) L2-normalised embeddings of every video in the store, in store order."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    out = np.zeros((len(store), model.config.embedding_dim), dtype=np.float32)
    order = np.argsort(store.lengths, kind="stable")  # similar lengths together: less padding
    for s in tqdm(range(0, len(order), batch_size), desc="embedding", disable=not progress):
        rows = order[s : s + batch_size]
        frames, mask = store.batch(rows, max_frames, None)
        emb = model(torch.from_numpy(frames).to(dev), torch.from_numpy(mask).to(dev))
        out[rows] = emb.float().cpu().numpy()
    model.cpu()
    return out


# --------------------------------------------------------------------------- plots and the job


def plot_loss_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("triplet loss (Eq. 15)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class EmbeddingJobResult:
    artifact: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def run_train_embeddings(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model_cfg: EmbedderConfig | None = None,
    train_cfg: TrainConfig | None = None,
    triplet_cfg: TripletConfig | None = None,
    index_cfg: IndexConfig | None = None,
    test_start: datetime | None = None,
    overwrite: bool = False,
    progress: bool = True,
    extra_files: dict[str, Any] | None = None,
    engine: Engine | None = None,
) -> EmbeddingJobResult:
    data_dir = dataset_dir(data)
    train_cfg = train_cfg or TrainConfig()
    triplet_cfg = triplet_cfg or TripletConfig(seed=train_cfg.seed)
    index_cfg = index_cfg or IndexConfig()
    rank, _ = _dist_info()
    if rank == 0 and Path(out).exists() and not overwrite:
        raise UserInputError(f"{out}: already exists (pass --overwrite to replace it)")
    con = impressions_connection(data_dir)
    first, last = log_span(con)
    test_start = test_start or default_test_start(first, last)
    t0 = time.perf_counter()
    engine = engine or LOCAL
    if progress:
        print(f"mining co-watch triplets ({engine.describe()}) ...", flush=True)
    triplets = engine.mine_triplets(data_dir, triplet_cfg, test_start)
    mining_s = time.perf_counter() - t0
    store = load_frame_store(data_dir)
    model_cfg = model_cfg or EmbedderConfig(feature_dim=store.feature_dim)
    if model_cfg.feature_dim != store.feature_dim:
        raise UserInputError(
            f"model expects D = {model_cfg.feature_dim}, data has D = {store.feature_dim}"
        )
    rows, users = triplet_rows(store, triplets)
    if train_cfg.max_triplets and len(rows) > train_cfg.max_triplets:
        keep = np.random.default_rng(train_cfg.seed).choice(
            len(rows), train_cfg.max_triplets, replace=False
        )
        rows, users = rows[np.sort(keep)], users[np.sort(keep)]
    if len(rows) == 0:
        raise UserInputError("no co-watch triplets in the training period (too few valid watches?)")
    if train_cfg.holdout_videos > 0:
        val_mask, held = split_by_video(rows, len(store), train_cfg.holdout_videos, train_cfg.seed)
        held_out = f"{int(held.sum())} videos and their {int(val_mask.sum())} triplets"
    else:
        val_mask = split_by_user(users, train_cfg.val_fraction, train_cfg.seed)
        held = np.zeros(len(store), dtype=bool)
        held_out = f"{int(val_mask.sum())} triplets of other users"
    if progress and rank == 0:
        print(
            f"mined {len(rows)} triplets before {test_start:%Y-%m-%d %H:%M} ({mining_s:.1f} s); "
            f"{held_out} held out for validation; {len(store)} videos, D = {store.feature_dim}"
        )
    result = train_embedder(
        store,
        rows[~val_mask],
        rows[val_mask],
        model_cfg,
        train_cfg,
        progress,
        train_videos=np.flatnonzero(~held),
    )
    if progress and rank == 0:
        print(
            f"kept epoch {result.best_epoch} of {train_cfg.epochs} "
            f"(lowest validation loss {result.best_val_loss:.4f})"
        )
    if rank != 0:
        return EmbeddingJobResult(artifact=None, metrics={}, history=result.history)

    t1 = time.perf_counter()
    vectors = embed_store(
        result.model, store, max_frames=train_cfg.eval_max_frames, device=train_cfg.device
    )
    if train_cfg.center_output:
        # Same as embedding again with the mean set, without a second pass.
        result.model.set_output_mean(torch.from_numpy(vectors))
        mean = result.model.output_mean.numpy()
        vectors = vectors - mean
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    embed_s = time.perf_counter() - t1
    index = VideoIndex.build(store.video_ids, vectors, index_cfg)
    pairs = mine_cowatch_pairs(
        con, triplet_cfg.watch_threshold_s, triplet_cfg.window_s, start=test_start
    )
    pair_rows = np.array(
        [
            [store.index[a], store.index[b]]
            for a, b in zip(
                pairs.column("video_a").to_pylist(),
                pairs.column("video_b").to_pylist(),
                strict=True,
            )
            if a in store.index and b in store.index
        ],
        dtype=np.int64,
    ).reshape(-1, 2)
    metrics = {
        "triplets": {"train": int((~val_mask).sum()), "validation": int(val_mask.sum())},
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "heldout_cowatch_pairs": len(pair_rows),
        "heldout_pair_auc": pair_auc(vectors, pair_rows, seed=train_cfg.seed),
        "embed_videos_per_s": len(store) / embed_s if embed_s > 0 else None,
        "mining_seconds": mining_s,
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "loss_curve.png"
        plot_loss_curve(result.history, png, f"{model_cfg.pooling} co-watch embedding")
        files: dict[str, Any] = {
            "embedder.json": json.dumps(model_cfg.to_dict(), indent=2).encode(),
            "embedder.pt": state_dict_bytes(result.model),
            "embeddings.parquet": lambda p: pq.write_table(
                embeddings_table(store.video_ids, vectors), p
            ),
            "index.faiss": index.to_bytes(),
            "index.json": json.dumps(asdict(index_cfg)).encode(),
            "train_history.json": json.dumps(result.history, indent=2).encode(),
            "loss_curve.png": png.read_bytes(),
            # the explorer's 2-D map (PCA), fitted once so every replica draws the same map
            "projection.json": json.dumps(fit_projection(vectors)).encode(),
        }
        files.update(extra_files or {})
        manifest = {
            "kind": "cowatch-embeddings",
            "data": {
                "path": str(data_dir.resolve()),
                "first_impression": first,
                "last_impression": last,
                "test_start": test_start,
                "videos": len(store),
            },
            "config": {
                "embedder": model_cfg.to_dict(),
                "train": asdict(train_cfg),
                "triplets": asdict(triplet_cfg),
                "index": asdict(index_cfg),
            },
            "metrics": metrics,
        }
        path = write_artifact(out, files, manifest, overwrite=overwrite)
    return EmbeddingJobResult(artifact=path, metrics=metrics, history=result.history)
