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
from tqdm.auto import tqdm

from embeddings.cowatch import CowatchEmbedder, EmbedderConfig, triplet_loss
from embeddings.gmm import fit_gmm
from embeddings.runtime import resolve_device
from pipelines.io import dataset_dir, iter_video_batches, open_parquet
from recsys.artifact import embeddings_table, state_dict_bytes, write_artifact
from recsys.dataset import IMPRESSIONS_FILE
from recsys.errors import UserInputError
from recsys.frames import FrameStore
from recsys.index import IndexConfig, VideoIndex
from recsys.metrics import pair_auc
from recsys.splits import default_test_start
from recsys.triplets import TripletConfig, mine_cowatch_pairs, mine_triplets


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 128  # triplets per step (3x videos)
    lr: float = 1e-3
    margin: float = 0.2
    max_frames: int = 64  # frames sampled per video per training step
    eval_max_frames: int = 300  # frames used when embedding (evenly spaced)
    val_fraction: float = 0.1  # users whose triplets are held out for validation
    #: start the pooling from a UBM fitted by EM (vlad/sgmm always need one); off by default
    #: because UBM-initialised assignments start nearly hard and learn slowly
    ubm_init: bool = False
    ubm_frames: int = 50_000
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    max_triplets: int = 0  # 0 = all

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")


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
    open_parquet(path)  # clear error for a missing/unreadable file
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


def _triplet_step_loss(
    model: torch.nn.Module,
    store: FrameStore,
    batch: np.ndarray,
    max_frames: int,
    margin: float,
    device: torch.device,
    rng: np.random.Generator | None,
) -> torch.Tensor:
    videos = batch.T.reshape(-1)  # anchors, positives, negatives
    frames, mask = store.batch(videos, max_frames, rng)
    emb = model(torch.from_numpy(frames).to(device), torch.from_numpy(mask).to(device))
    a, p, n = emb.chunk(3)
    return triplet_loss(a, p, n, margin)


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
) -> TrainResult:
    rank, world = _dist_info()
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.seed)
    model = CowatchEmbedder(model_cfg)
    if (cfg.ubm_init or model.needs_ubm) and model_cfg.pooling != "avg":
        model.from_ubm(fit_ubm_for(model_cfg, store, cfg.ubm_frames, cfg.seed))
    model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    result = TrainResult(model=model)
    best_state: dict[str, torch.Tensor] | None = None
    rng = np.random.default_rng(cfg.seed)
    per_rank = len(train_rows) // world
    if per_rank == 0:
        raise UserInputError(
            f"not enough training triplets ({len(train_rows)}) for {world} processes"
        )
    show = progress and rank == 0
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
                net, store, batch, cfg.max_frames, cfg.margin, device, frame_rng
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        train_loss = _all_reduce_mean(total, count, device)
        val_loss = evaluate_loss(net, store, val_rows, cfg, device)
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
) -> float:
    rank, world = _dist_info()
    net.eval()
    shard = rows[rank::world]
    total, count = 0.0, 0
    for batch in _batches(shard, cfg.batch_size, None):
        loss = _triplet_step_loss(net, store, batch, cfg.eval_max_frames, cfg.margin, device, None)
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
    triplets = mine_triplets(con, triplet_cfg, train_end=test_start)
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
    val_mask = split_by_user(users, train_cfg.val_fraction, train_cfg.seed)
    if progress and rank == 0:
        print(
            f"mined {len(rows)} triplets before {test_start:%Y-%m-%d %H:%M} ({mining_s:.1f} s); "
            f"{int(val_mask.sum())} held out for validation; {len(store)} videos, D = {store.feature_dim}"
        )
    result = train_embedder(store, rows[~val_mask], rows[val_mask], model_cfg, train_cfg, progress)
    if rank != 0:
        return EmbeddingJobResult(artifact=None, metrics={}, history=result.history)

    t1 = time.perf_counter()
    vectors = embed_store(
        result.model, store, max_frames=train_cfg.eval_max_frames, device=train_cfg.device
    )
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
