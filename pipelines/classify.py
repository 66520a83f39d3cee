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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from embeddings.classifier import ClassifierConfig, VideoClassifier
from embeddings.gmm import fit_gmm
from embeddings.runtime import resolve_device
from pipelines.io import dataset_dir, iter_record_batches, write_parquet_atomic
from recsys.classification import gap_at_k, gap_from_topk, hit_at_1, mcnemar_test, top_k
from recsys.dataset import VIDEOS_FILE, decode_video_batch
from recsys.errors import UserInputError
from recsys.frames import FrameStore


@dataclass(frozen=True)
class ClassifyConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-4
    decay_rate: float = 0.8
    decay_examples: int = 4_000_000
    frames_per_video: int = 30
    clip_value: float = 1.0
    ubm_init: bool = True
    ubm_frames: int = 100_000
    seed: int = 0
    device: str = "auto"


def hash_split(video_id: str) -> str:
    """Deterministic 80/10/10 split by a hash of the id (used when there is no split column)."""
    h = int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "little") % 10
    return "train" if h < 8 else ("validation" if h == 8 else "test")


@dataclass
class LabelledSplit:
    store: FrameStore
    labels: np.ndarray  # (N, C) bool


def load_labelled_splits(data: Path, batch_size: int = 512) -> tuple[dict[str, LabelledSplit], int]:
    """Read videos with labels; split by the ``split`` column or by hash. Returns splits and C."""
    path = dataset_dir(data) / VIDEOS_FILE
    from pipelines.io import open_parquet

    names = open_parquet(path).schema_arrow.names
    if "labels" not in names:
        raise UserInputError(f"{path.name}: no labels column; classification needs labels")
    cols = ["video_id", "frames", "labels"] + (["split"] if "split" in names else [])
    parts: dict[str, list[Any]] = {"train": [], "validation": [], "test": []}
    num_classes = 0
    for batch in iter_record_batches(path, batch_size, cols):
        vb = decode_video_batch(batch)
        splits = (
            batch.column("split").to_pylist()
            if "split" in names
            else [hash_split(v) for v in vb.video_ids]
        )
        assert vb.labels is not None
        for i, s in enumerate(splits):
            s = s or hash_split(vb.video_ids[i])
            parts[s].append((vb.video_ids[i], vb.video(i), vb.labels[i]))
            if vb.labels[i]:
                num_classes = max(num_classes, max(vb.labels[i]) + 1)
    out: dict[str, LabelledSplit] = {}
    for s, items in parts.items():
        if not items:
            raise UserInputError(f"the {s} split has no videos")
        from recsys.dataset import VideoBatch

        frames = np.concatenate([it[1] for it in items])
        offsets = np.concatenate([[0], np.cumsum([len(it[1]) for it in items])])
        store = FrameStore.from_batches([VideoBatch([it[0] for it in items], frames, offsets)])
        y = np.zeros((len(items), num_classes), dtype=bool)
        for i, it in enumerate(items):
            y[i, it[2]] = True
        out[s] = LabelledSplit(store, y)
    return out, num_classes


def sample_with_replacement(
    store: FrameStore, rows: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """(B, n, D): n frames per video drawn with replacement (the paper's 30)."""
    lengths = store.lengths[rows]
    pick = (rng.random((len(rows), n)) * lengths[:, None]).astype(np.int64)
    return store.frames[store.offsets[rows][:, None] + pick]


def _bce(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), targets)


@torch.no_grad()
def predict(
    model: VideoClassifier,
    split: LabelledSplit,
    cfg: ClassifyConfig,
    device: torch.device,
    seed: int,
) -> tuple[np.ndarray, float]:
    """Probabilities (N, C) and mean BCE with a fixed frame sample (seeded: comparable across epochs)."""
    model.eval()
    rng = np.random.default_rng(seed)
    out = []
    total = 0.0
    for s in range(0, len(split.store), 256):
        rows = np.arange(s, min(s + 256, len(split.store)))
        x = torch.from_numpy(
            sample_with_replacement(split.store, rows, cfg.frames_per_video, rng)
        ).to(device)
        p = model(x)
        total += float(_bce(p, torch.from_numpy(split.labels[rows]).float().to(device))) * len(rows)
        out.append(p.cpu().numpy())
    return np.concatenate(out), total / len(split.store)


def train_classifier(
    splits: dict[str, LabelledSplit],
    model_cfg: ClassifierConfig,
    cfg: ClassifyConfig,
    progress: bool = True,
) -> tuple[VideoClassifier, list[dict[str, float]], int]:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = VideoClassifier(model_cfg)
    train = splits["train"]
    clustered = model_cfg.pooling not in ("avg",)
    if model_cfg.pooling in ("vlad", "sgmm") or (clustered and cfg.ubm_init):
        x = torch.from_numpy(train.store.sample_frames(cfg.ubm_frames, cfg.seed)).double()
        batches = lambda: (x[i : i + 8192] for i in range(0, len(x), 8192))  # noqa: E731
        ubm = fit_gmm(
            batches, model_cfg.num_clusters, "shared_full", max_iter=30, seed=cfg.seed
        ).gmm
        model.pooling.from_ubm(ubm)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, float]] = []
    best_state, best_loss, best_epoch, seen = None, math.inf, 0, 0
    for epoch in tqdm(range(cfg.epochs), desc="epochs", disable=not progress):
        model.train()
        order = rng.permutation(len(train.store))
        total, t0 = 0.0, time.perf_counter()
        for s in range(0, len(order), cfg.batch_size):
            rows = order[s : s + cfg.batch_size]
            if len(rows) < 2:  # batch norm needs two examples
                continue
            x = torch.from_numpy(
                sample_with_replacement(train.store, rows, cfg.frames_per_video, rng)
            ).to(device)
            y = torch.from_numpy(train.labels[rows]).float().to(device)
            loss = _bce(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
            for g in opt.param_groups:  # exponential decay every decay_examples examples
                g["lr"] = cfg.lr * cfg.decay_rate ** (seen / cfg.decay_examples)
            opt.step()
            seen += len(rows)
            total += float(loss.detach()) * len(rows)
        _, val_loss = predict(model, splits["validation"], cfg, device, cfg.seed + 1)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / len(order),
                "val_loss": val_loss,
                "seconds": time.perf_counter() - t0,
            }
        )
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    assert best_state is not None
    model.load_state_dict(best_state)
    return model, history, best_epoch


def run_classify(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model_cfg: ClassifierConfig | None = None,
    cfg: ClassifyConfig | None = None,
    progress: bool = True,
    splits: tuple[dict[str, LabelledSplit], int] | None = None,
) -> dict[str, Any]:
    cfg = cfg or ClassifyConfig()
    loaded, num_classes = splits or load_labelled_splits(Path(data))
    d = loaded["train"].store.feature_dim
    model_cfg = model_cfg or ClassifierConfig(feature_dim=d, num_classes=num_classes)
    model_cfg = replace(model_cfg, feature_dim=d, num_classes=num_classes)
    t0 = time.perf_counter()
    model, history, best_epoch = train_classifier(loaded, model_cfg, cfg, progress)
    device = (
        next(model.parameters()).device
        if any(True for _ in model.parameters())
        else torch.device("cpu")
    )
    val_pred, val_loss = predict(model, loaded["validation"], cfg, device, cfg.seed + 1)
    test = loaded["test"]
    test_pred, test_loss = predict(model, test, cfg, device, cfg.seed + 2)
    hits = hit_at_1(test_pred, test.labels)
    report = {
        "pooling": model_cfg.pooling,
        "gap": gap_at_k(test_pred, test.labels, 20),
        "hit_at_1": float(hits.mean()),
        "val_loss": val_loss,
        "val_gap": gap_at_k(val_pred, loaded["validation"].labels, 20),
        "val_hit_at_1": float(hit_at_1(val_pred, loaded["validation"].labels).mean()),
        "test_loss": test_loss,
        "test_videos": len(test.store),
        "best_epoch": best_epoch,
        "train_seconds": time.perf_counter() - t0,
        "config": {"model": model_cfg.to_dict(), "train": asdict(cfg)},
        "history": history,
    }
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    idx, sc = top_k(test_pred, 20)
    top_hits = np.take_along_axis(test.labels, idx, axis=1)
    k = idx.shape[1]
    preds = pa.table(
        {
            "video_id": pa.array(test.store.video_ids, pa.string()),
            "hit_at_1": pa.array(hits),
            "num_positives": pa.array(test.labels.sum(1).astype(np.int32)),
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
    _plot_curve(history, o / "training_curve.png", model_cfg.pooling)
    return report


def _plot_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [h["epoch"] for h in history], [h["train_loss"] for h in history], marker="o", label="train"
    )
    ax.plot(
        [h["epoch"] for h in history],
        [h["val_loss"] for h in history],
        marker="o",
        label="validation",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare_runs(
    run_a: str | os.PathLike[str],
    run_b: str | os.PathLike[str],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """McNemar on Hit@1 and a bootstrap 95% interval of GAP(A) - GAP(B) over test videos."""
    tables = []
    for r in (run_a, run_b):
        p = Path(r) / "predictions.parquet"
        if not p.exists():
            raise UserInputError(f"{r}: no predictions.parquet (not a classify run?)")
        tables.append(pq.read_table(p))
    a, b = tables
    ids_a, ids_b = a.column("video_id").to_pylist(), b.column("video_id").to_pylist()
    if ids_a != ids_b:
        common = sorted(set(ids_a) & set(ids_b))
        if not common:
            raise UserInputError("the two runs share no test videos")
        ia = {v: i for i, v in enumerate(ids_a)}
        ib = {v: i for i, v in enumerate(ids_b)}
        a = a.take(pa.array([ia[v] for v in common]))
        b = b.take(pa.array([ib[v] for v in common]))

    def arrays(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k = t.schema.field("top_scores").type.list_size
        sc = t.column("top_scores").combine_chunks().flatten().to_numpy().reshape(-1, k)
        hits = (
            t.column("top_hits")
            .combine_chunks()
            .flatten()
            .to_numpy(zero_copy_only=False)
            .reshape(-1, k)
        )
        return (
            t.column("hit_at_1").to_numpy(zero_copy_only=False),
            sc,
            hits,
            t.column("num_positives").to_numpy(),
        )

    ha, sa, ta, na = arrays(a)
    hb, sb, tb, nb = arrays(b)
    table, p_value = mcnemar_test(ha, hb)
    gap_a, gap_b = gap_from_topk(sa, ta, na), gap_from_topk(sb, tb, nb)
    rng = np.random.default_rng(seed)
    diffs = []
    n = len(ha)
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        diffs.append(gap_from_topk(sa[i], ta[i], na[i]) - gap_from_topk(sb[i], tb[i], nb[i]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {
        "videos": n,
        "hit_at_1": [float(ha.mean()), float(hb.mean())],
        "contingency": table.tolist(),
        "mcnemar_p": p_value,
        "gap": [gap_a, gap_b],
        "gap_diff": gap_a - gap_b,
        "gap_diff_ci95": [float(lo), float(hi)],
    }
