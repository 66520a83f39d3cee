"""Classical baselines for ``recsys classify``: the same splits, a logistic regression head.

* ``avg_frames``: mean frame, standardised, one-vs-rest logistic regression.
* ``bow_tfidf``: k-means codebook (fitted on training frames), tf-idf with the
  training videos' idf, one-vs-rest logistic regression.

The codebook size and the regularisation strength are chosen by validation GAP@20,
as the learned model's epoch is; test numbers are reported once, for the choice.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from embeddings import rungs
from embeddings.rungs import idf_weights, mean_frames, tfidf, word_counts
from recsys.baselines import kmeans_codebook
from recsys.classification import gap_at_k, hit_at_1
from recsys.dataset import decode_video_batch

CODEBOOK_SIZES: tuple[int, ...] = (32, 64, 128)
C_GRID: tuple[float, ...] = (0.1, 1.0, 10.0)


@dataclass
class SplitFrames:
    video_ids: list[str]
    frames: np.ndarray  # (sum T, D)
    offsets: np.ndarray  # (N + 1,)
    labels: np.ndarray  # (N, C) {0, 1}


def load_splits(info: Any, split_of: Callable[[str], str]) -> dict[str, SplitFrames]:
    """Every video's frames and labels by split (in memory: baselines are for data sets that fit)."""
    acc: dict[str, tuple[list[str], list[np.ndarray], list[int], list[np.ndarray]]] = {
        s: ([], [], [], []) for s in ("train", "validation", "test")
    }
    pf = pq.ParquetFile(info.path, memory_map=True)
    cols = ["video_id", "frames", "labels"] + (["split"] if info.has_split_column else [])
    for g in range(pf.metadata.num_row_groups):
        table = pf.read_row_group(g, columns=cols)
        vb = decode_video_batch(table)
        splits = table.column("split").to_pylist() if info.has_split_column else [None] * len(vb)
        assert vb.labels is not None
        for i, v in enumerate(vb.video_ids):
            ids, frames, lengths, labels = acc[splits[i] or split_of(v)]
            y = np.zeros(info.num_classes, dtype=np.int8)
            y[vb.labels[i]] = 1
            ids.append(v)
            frames.append(vb.video(i))
            lengths.append(len(frames[-1]))
            labels.append(y)
    out = {}
    for s, (ids, frames, lengths, labels) in acc.items():
        out[s] = SplitFrames(
            ids,
            np.concatenate(frames).astype(np.float32)
            if frames
            else np.zeros((0, info.feature_dim)),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            np.stack(labels) if labels else np.zeros((0, info.num_classes), dtype=np.int8),
        )
    return out


def _fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: list[np.ndarray], c: float, seed: int
) -> list[np.ndarray]:
    """One-vs-rest logistic regression; labels never positive (or always) in training get a
    constant score (their training rate)."""
    from sklearn.linear_model import LogisticRegression

    outs = [np.zeros((len(x), y_train.shape[1])) for x in x_eval]
    for j in range(y_train.shape[1]):
        col = y_train[:, j]
        if col.min() == col.max():
            for o in outs:
                o[:, j] = float(col.mean())
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(C=c, max_iter=500, random_state=seed).fit(x_train, col)
        for o, x in zip(outs, x_eval, strict=True):
            o[:, j] = clf.predict_proba(x)[:, 1]
    return outs


def inapplicable(splits: dict[str, SplitFrames]) -> dict[str, str]:
    """Baselines that do not apply to these splits, with why: with one frame a video
    (video-level features) a bag of words holds one word, so ``bow_tfidf`` is left out."""
    offsets = splits["train"].offsets
    one_frame = len(offsets) > 1 and bool((np.diff(offsets) == 1).all())
    return rungs.inapplicable(["bow_tfidf"], one_frame)


def classification_baselines(
    splits: dict[str, SplitFrames], seed: int = 0, log: Callable[[str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """{name: {gap, hit_at_1, val_gap, choice, test_predictions}} on the test split."""
    tr, va, te = splits["train"], splits["validation"], splits["test"]
    results: dict[str, dict[str, Any]] = {}

    def run(
        name: str, candidates: list[tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]]
    ) -> None:
        t0 = time.perf_counter()
        best: tuple[float, dict[str, Any], np.ndarray] | None = None
        for choice, xtr, xva, xte in candidates:
            for c in C_GRID:
                pva, pte = _fit_predict(xtr, tr.labels, [xva, xte], c, seed)
                g = gap_at_k(pva, va.labels, 20)
                if best is None or g > best[0]:
                    best = (g, {**choice, "C": c}, pte)
        assert best is not None
        val_gap, choice, pte = best
        results[name] = {
            "gap": gap_at_k(pte, te.labels, 20),
            "hit_at_1": float(hit_at_1(pte, te.labels).mean()),
            "val_gap": val_gap,
            "choice": choice,
            "seconds": time.perf_counter() - t0,
            "test_predictions": pte,
        }
        if log is not None:
            log(f"baseline {name}: test GAP@20 {results[name]['gap']:.4f} ({choice})")

    avg = [mean_frames(s.frames, s.offsets) for s in (tr, va, te)]
    mu, sd = avg[0].mean(0), avg[0].std(0) + 1e-6
    run("avg_frames", [({}, (avg[0] - mu) / sd, (avg[1] - mu) / sd, (avg[2] - mu) / sd)])
    bows: list[tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]] = []
    skipped = inapplicable(splits)
    if "bow_tfidf" in skipped and log is not None:
        log(f"baseline bow_tfidf: not applicable ({skipped['bow_tfidf']})")
    for k in CODEBOOK_SIZES if "bow_tfidf" not in skipped else ():
        if len(tr.frames) < k:
            continue
        codebook = kmeans_codebook(tr.frames, k, seed=seed)
        counts = [word_counts(s.frames, s.offsets, codebook) for s in (tr, va, te)]
        idf = idf_weights(counts[0])
        x_tr, x_va, x_te = (tfidf(cnt, idf) for cnt in counts)
        bows.append(({"codebook": k}, x_tr, x_va, x_te))
    if bows:
        run("bow_tfidf", bows)
    return results


def paired_gap_bootstrap(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    labels: np.ndarray,
    resamples: int = 500,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(GAP(a) - GAP(b), 2.5%, 97.5%) resampling test videos with replacement (paired)."""
    diff = gap_at_k(pred_a, labels, 20) - gap_at_k(pred_b, labels, 20)
    rng = np.random.default_rng(seed)
    n = len(labels)
    diffs = []
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        diffs.append(gap_at_k(pred_a[i], labels[i], 20) - gap_at_k(pred_b[i], labels[i], 20))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(diff), float(lo), float(hi)
