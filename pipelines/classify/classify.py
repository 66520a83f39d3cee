"""``recsys classify`` / ``compare`` / ``experiment paper``: the YouTube-8M experiments (section 4.1).

Training follows section 4.1.2: Adam at 2e-4, gradients clipped to [-1, 1], the
learning rate decayed by 0.8 every ``decay_examples`` examples, 30 frames sampled
with replacement per video for training, validation and test; the checkpoint with
the lowest validation loss gives the reported test metrics. avg, vlad and sgmm
train the same head on frozen pooling (vlad/sgmm over a UBM fitted by EM on
training frames).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from embeddings.classifier import ClassifierConfig, VideoClassifier
from embeddings.runtime import autocast, native_bfloat16, resolve_device
from embeddings.ubm_start import UBMStart
from pipelines.data.io import dataset_dir, iter_record_batches, open_parquet, write_parquet_atomic
from pipelines.plots import plot_loss_curve
from recsys.auc import interval_verdict
from recsys.classification import gap_at_k, hit_at_1, mcnemar_test, top_k
from recsys.dataset import VIDEOS_FILE, decode_video_batch
from recsys.errors import UserInputError


@dataclass(frozen=True)
class ClassifyConfig:
    #: an upper bound: training stops earlier when validation GAP stalls (``patience``)
    epochs: int = 30
    batch_size: int = 64
    #: the paper's 2e-4 assumes 3.9M training videos; on thousands it under-fits within
    #: any reasonable budget (DSGMM GAP 0.88 vs 0.98 with 3e-3 on a digits world, measured)
    lr: float = 3e-3
    decay_rate: float = 0.8
    decay_examples: int = 4_000_000
    frames_per_video: int = 30
    clip_value: float = 1.0
    #: start trainable cluster layers from a UBM (Eq. 20-21), softened by its
    #: temperature: as is, UBM-initialised assignments start nearly hard and barely train
    #: (GAP 0.77 vs 0.91 for DSGMM, measured); softened, they converge in a quarter of the
    #: epochs of a random start (see docs/results.md). vlad/sgmm always use the UBM.
    ubm: UBMStart = field(default_factory=lambda: UBMStart(frames=100_000))
    #: stop when validation GAP@20 has not improved for this many epochs (0 = never)
    patience: int = 3
    #: also fit the classical baselines (pipelines.classify.baselines) on the same splits
    baselines: bool = True
    seed: int = 0
    device: str = "auto"
    #: DataLoader worker processes streaming Parquet row groups (0 = in the main process)
    workers: int = 1
    #: also score the test split with bfloat16 inference (autocast: the matrix products
    #: on the bf16 units) where the hardware multiplies it, and report its GAP and Hit@1
    #: against float32's on the same frame samples (paired); the metrics above stay float32
    bfloat16_check: bool = True


def hash_split(video_id: str) -> str:
    """Deterministic 80/10/10 split by a hash of the id (used when there is no split column)."""
    h = int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "little") % 10
    return "train" if h < 8 else ("validation" if h == 8 else "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What one metadata scan (ids, labels, split; no frames) tells about a labelled data set."""

    path: Path
    num_classes: int
    feature_dim: int
    split_sizes: dict[str, int]
    has_split_column: bool
    row_groups: int


def scan_labelled(data: str | os.PathLike[str]) -> DatasetInfo:
    path = dataset_dir(data) / VIDEOS_FILE
    pf = open_parquet(path)
    names = pf.schema_arrow.names
    if "labels" not in names:
        raise UserInputError(f"{path.name}: no labels column; classification needs labels")
    has_split = "split" in names
    sizes = {"train": 0, "validation": 0, "test": 0}
    num_classes = 0
    cols = ["video_id", "labels"] + (["split"] if has_split else [])
    for batch in iter_record_batches(path, 65536, cols):
        ids = batch.column("video_id").to_pylist()
        splits = batch.column("split").to_pylist() if has_split else [None] * len(ids)
        for v, s in zip(ids, splits, strict=True):
            if s is not None and s not in sizes:
                raise UserInputError(
                    f"{path.name}: split: video {v!r} has split {s!r} "
                    f"(one of {', '.join(sizes)}, or null)"
                )
            sizes[s or hash_split(v)] += 1
        flat = batch.column("labels").flatten()
        if len(flat):
            lo, hi = pa.compute.min_max(flat).values()
            if lo.as_py() < 0:  # a one-hot row would take it from the end
                labs = batch.column("labels").to_pylist()
                v = next(v for v, ls in zip(ids, labs, strict=True) if ls and min(ls) < 0)
                raise UserInputError(f"{path.name}: labels: video {v!r} has a negative label")
            num_classes = max(num_classes, int(hi.as_py()) + 1)
    empty = [s for s, n in sizes.items() if n == 0]
    if empty:
        raise UserInputError(f"the {empty[0]} split has no videos")
    first = next(iter_record_batches(path, 1, ["video_id", "frames"]))
    d = decode_video_batch(first).frames.shape[1]
    return DatasetInfo(path, num_classes, d, sizes, has_split, pf.metadata.num_row_groups)


def sample_with_replacement(frames: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, D): n of one video's (T, D) frames drawn with replacement (the paper's 30)."""
    return frames[(rng.random(n) * len(frames)).astype(np.int64)]


def _video_seed(video_id: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{video_id}".encode()).digest()[:8], "little")


class VideoStream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Streams one split of ``videos.parquet`` row group by row group.

    Workers take disjoint row groups; each yields (video_id, frames (F, D), labels (C,)) with
    F frames sampled with replacement. Training shuffles row groups per epoch and videos
    through a buffer; evaluation draws each video's frames from a seed of its id, so the
    sample is the same in every epoch and with any number of workers.
    """

    def __init__(
        self, info: DatasetInfo, split: str, frames: int, train: bool, seed: int, buffer: int = 2048
    ) -> None:
        self.info, self.split, self.frames, self.train, self.seed, self.buffer = (
            info,
            split,
            frames,
            train,
            seed,
            buffer,
        )
        self.epoch = 0

    def _items(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        worker = torch.utils.data.get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, wid])
        groups = np.arange(self.info.row_groups)
        if self.train:
            groups = np.random.default_rng([self.seed, self.epoch]).permutation(groups)
        pf = pq.ParquetFile(self.info.path, memory_map=True)
        cols = ["video_id", "frames", "labels"] + (["split"] if self.info.has_split_column else [])
        for g in groups[wid::nw]:
            table = pf.read_row_group(int(g), columns=cols)
            vb = decode_video_batch(table)
            splits = (
                table.column("split").to_pylist()
                if self.info.has_split_column
                else [None] * len(vb)
            )
            assert vb.labels is not None
            for i, v in enumerate(vb.video_ids):
                if (splits[i] or hash_split(v)) != self.split:
                    continue
                r = rng if self.train else np.random.default_rng(_video_seed(v, self.seed))
                y = np.zeros(self.info.num_classes, dtype=np.float32)
                y[vb.labels[i]] = 1.0
                yield v, sample_with_replacement(vb.video(i), self.frames, r), y

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        if not self.train:
            yield from self._items()
            return
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        buf: list[tuple[str, np.ndarray, np.ndarray]] = []
        for item in self._items():
            buf.append(item)
            if len(buf) >= self.buffer:
                yield buf.pop(int(rng.integers(len(buf))))
        rng.shuffle(buf)  # type: ignore[arg-type]
        yield from buf


def _loader(stream: VideoStream, batch_size: int, workers: int) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    return torch.utils.data.DataLoader(
        stream, batch_size=batch_size, num_workers=workers, drop_last=False
    )


def _bce(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), targets)


@torch.no_grad()
def predict(
    model: VideoClassifier,
    info: DatasetInfo,
    split: str,
    cfg: ClassifyConfig,
    device: torch.device,
    precision: str = "float32",
) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """(video ids, probabilities (N, C), labels (N, C), mean BCE) with seeded frame samples
    (the same whatever the ``precision`` of the forward: "float32" or "bfloat16")."""
    model.eval()
    ids: list[str] = []
    probs, labels = [], []
    total = 0.0
    stream = VideoStream(info, split, cfg.frames_per_video, train=False, seed=cfg.seed)
    for vid, x, y in _loader(stream, 256, cfg.workers):
        with autocast(precision, device):
            p = model(x.to(device)).float()
        total += float(_bce(p, y.to(device))) * len(vid)
        ids += list(vid)
        probs.append(p.cpu().numpy())
        labels.append(y.numpy() > 0.5)
    return ids, np.concatenate(probs), np.concatenate(labels), total / max(len(ids), 1)


def _ubm_sample(info: DatasetInfo, n: int, seed: int) -> np.ndarray:
    """Up to n training frames, a few per video, streamed (never the whole data set)."""
    out, got = [], 0
    for _, x, _ in VideoStream(info, "train", 8, train=False, seed=seed):
        out.append(x)
        got += len(x)
        if got >= n:
            break
    return np.concatenate(out)


def train_classifier(
    info: DatasetInfo, model_cfg: ClassifierConfig, cfg: ClassifyConfig, progress: bool = True
) -> tuple[VideoClassifier, list[dict[str, float]], int]:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = VideoClassifier(model_cfg)
    try:
        cfg.ubm.start(model.pooling, model_cfg, lambda n: _ubm_sample(info, n, cfg.seed), cfg.seed)
    except ValueError as exc:  # too few frames for the clusters
        raise UserInputError(str(exc)) from None
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_loss: tuple[float, float] = (math.inf, math.inf)
    best_epoch, seen = 0, 0
    stream = VideoStream(info, "train", cfg.frames_per_video, train=True, seed=cfg.seed)
    steps = math.ceil(info.split_sizes["train"] / cfg.batch_size)
    for epoch in tqdm(range(cfg.epochs), desc="epochs", disable=not progress):
        model.train()
        stream.epoch = epoch  # workers get a fresh copy of the stream every epoch
        total, count, t0 = 0.0, 0, time.perf_counter()
        for _, x, y in tqdm(
            _loader(stream, cfg.batch_size, cfg.workers),
            total=steps,
            leave=False,
            disable=not progress,
        ):
            if len(x) < 2:  # batch norm needs two examples
                continue
            loss = _bce(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
            for g in opt.param_groups:  # exponential decay every decay_examples examples
                g["lr"] = cfg.lr * cfg.decay_rate ** (seen / cfg.decay_examples)
            opt.step()
            seen += len(x)
            total += float(loss.detach()) * len(x)
            count += len(x)
        _, val_pred, val_y, val_loss = predict(model, info, "validation", cfg, device)
        val_gap = gap_at_k(val_pred, val_y, 20)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / max(count, 1),
                "val_loss": val_loss,
                "val_gap": val_gap,
                "seconds": time.perf_counter() - t0,
            }
        )
        # Select by validation GAP@20, the metric reported (ties: the lower loss).
        if best_state is None or (-val_gap, val_loss) < best_loss:
            best_loss, best_epoch = (-val_gap, val_loss), epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}: train loss {total / max(count, 1):.4f}, "
                f"validation loss {val_loss:.4f}, validation GAP@20 {val_gap:.4f}"
            )
        if cfg.patience and epoch + 1 - best_epoch >= cfg.patience:
            if progress:
                tqdm.write(f"early stop: no better validation GAP for {cfg.patience} epochs")
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    return model, history, best_epoch


def run_classify(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model_cfg: ClassifierConfig | None = None,
    cfg: ClassifyConfig | None = None,
    progress: bool = True,
    info: DatasetInfo | None = None,
) -> dict[str, Any]:
    cfg = cfg or ClassifyConfig()
    info = info or scan_labelled(data)
    model_cfg = model_cfg or ClassifierConfig(
        feature_dim=info.feature_dim, num_classes=info.num_classes
    )
    model_cfg = replace(model_cfg, feature_dim=info.feature_dim, num_classes=info.num_classes)
    t0 = time.perf_counter()
    model, history, best_epoch = train_classifier(info, model_cfg, cfg, progress)
    device = resolve_device(cfg.device)
    _, val_pred, val_y, val_loss = predict(model, info, "validation", cfg, device)
    t_test = time.perf_counter()
    test_ids, test_pred, test_y, test_loss = predict(model, info, "test", cfg, device)
    t_test = time.perf_counter() - t_test
    hits = hit_at_1(test_pred, test_y)
    report = {
        "pooling": model_cfg.pooling,
        "gap": gap_at_k(test_pred, test_y, 20),
        "hit_at_1": float(hits.mean()),
        "val_loss": val_loss,
        "val_gap": gap_at_k(val_pred, val_y, 20),
        "val_hit_at_1": float(hit_at_1(val_pred, val_y).mean()),
        "test_loss": test_loss,
        "test_videos": len(test_ids),
        "best_epoch": best_epoch,
        "train_seconds": time.perf_counter() - t0,
        "config": {"model": model_cfg.to_dict(), "train": asdict(cfg)},
        "history": history,
    }
    if cfg.bfloat16_check and native_bfloat16(device):
        report["bfloat16_inference"] = _bfloat16_check(
            model, info, cfg, device, (test_pred, test_y, t_test)
        )
    if cfg.baselines:
        report.update(_baseline_ladder(info, test_ids, test_pred, test_y, cfg.seed, progress))
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    idx, sc = top_k(test_pred, 20)
    top_hits = np.take_along_axis(test_y, idx, axis=1)
    k = idx.shape[1]
    preds = pa.table(
        {
            "video_id": pa.array(test_ids, pa.string()),
            "hit_at_1": pa.array(hits),
            "num_positives": pa.array(test_y.sum(1).astype(np.int32)),
            "top_labels": pa.FixedSizeListArray.from_arrays(
                pa.array(idx.reshape(-1).astype(np.int32)), k
            ),
            "top_scores": pa.FixedSizeListArray.from_arrays(
                pa.array(sc.reshape(-1).astype(np.float32)), k
            ),
            "top_hits": pa.FixedSizeListArray.from_arrays(pa.array(top_hits.reshape(-1)), k),
        }
    )
    write_parquet_atomic(preds, o / "predictions.parquet")
    buf = io.BytesIO()
    torch.save({k2: v.detach().cpu() for k2, v in model.state_dict().items()}, buf)
    (o / "model.pt").write_bytes(buf.getvalue())
    (o / "report.json").write_text(json.dumps(report, indent=2))
    plot_loss_curve(history, o / "training_curve.png", model_cfg.pooling, "binary cross-entropy")
    return report


def _bfloat16_check(
    model: VideoClassifier,
    info: DatasetInfo,
    cfg: ClassifyConfig,
    device: torch.device,
    float32: tuple[np.ndarray, np.ndarray, float],
) -> dict[str, Any]:
    """The test split scored again with bfloat16 inference: its GAP@20 and Hit@1, and the
    paired differences from float32's (bootstrap over test videos; McNemar on Hit@1)."""
    from pipelines.classify.baselines import paired_gap_bootstrap

    pred32, labels, seconds32 = float32
    t0 = time.perf_counter()
    _, pred16, _, _ = predict(model, info, "test", cfg, device, precision="bfloat16")
    seconds16 = time.perf_counter() - t0
    diff, lo, hi = paired_gap_bootstrap(pred16, pred32, labels, seed=cfg.seed)
    _, p_value = mcnemar_test(hit_at_1(pred16, labels), hit_at_1(pred32, labels))
    return {
        "gap": gap_at_k(pred16, labels, 20),
        "hit_at_1": float(hit_at_1(pred16, labels).mean()),
        "gap_difference": diff,
        "gap_difference_bootstrap_95": [lo, hi],
        "hit_at_1_mcnemar_p": p_value,
        "verdict": interval_verdict(lo, hi),
        "max_probability_change": float(np.abs(pred16 - pred32).max()),
        # the test pass end to end, reading and sampling frames included
        "seconds": {"float32": seconds32, "bfloat16": seconds16},
    }


def _baseline_ladder(
    info: DatasetInfo,
    test_ids: list[str],
    test_pred: np.ndarray,
    test_y: np.ndarray,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Baselines on the same splits, and the learned model against the best of them."""
    from pipelines.classify.baselines import (
        classification_baselines,
        inapplicable,
        load_splits,
        paired_gap_bootstrap,
    )

    splits = load_splits(info, hash_split)
    base = classification_baselines(splits, seed, log=tqdm.write if progress else None)
    pos = {v: i for i, v in enumerate(splits["test"].video_ids)}
    order = np.array([pos[v] for v in test_ids], dtype=np.int64)
    out: dict[str, Any] = {
        "baselines": {
            n: {k: v for k, v in b.items() if k != "test_predictions"} for n, b in base.items()
        },
        "baselines_not_applicable": inapplicable(splits),
    }
    if not base:
        return out
    best = max(base, key=lambda n: base[n]["gap"])
    other = base[best]["test_predictions"][order]
    diff, lo, hi = paired_gap_bootstrap(test_pred, other, test_y, seed=seed)
    _, p_value = mcnemar_test(hit_at_1(test_pred, test_y), hit_at_1(other, test_y))
    out["vs_best_baseline"] = {
        "best_baseline": best,
        "gap_difference": diff,
        "gap_difference_bootstrap_95": [lo, hi],
        "hit_at_1_mcnemar_p": p_value,
        "verdict": interval_verdict(lo, hi),
    }
    return out
