"""The baseline ladder for recommendation: classical representations through the same GLMix.

Every representation (the learned embedding or a baseline) is scored the same way
on the same rows: GLMix (Eq. 18) fitted on the training period with ``random_l2``
chosen on its last 10% (by time), and the max/avg similarity to the training-period
watch history (Eq. 16-17). Baselines are first reduced by PCA to a size chosen on
the same validation rows (at most the embedding's size) and L2-normalised, so a
cosine means the same thing for every row of the report.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from embeddings.registry import RUNGS
from embeddings.rungs import rung
from pipelines.choice import rung_memo
from pipelines.choice.rung_memo import Reduction
from pipelines.choice.validation import (
    CandidateScores,
    ValidationSet,
    score_candidate,
    validation_predictions,
)
from pipelines.data.impressions import RecRows, video_names
from recsys.baselines import (
    PCA,
    kmeans_codebook,
    l2_rows,
    raw_features,
    store_chunks,
)
from recsys.embedders import ClassicalEmbedder
from recsys.frames import FrameStore
from recsys.glmix.design import VideoRows
from recsys.glmix.logistic import mean_log_loss
from recsys.glmix.model import GLMixConfig, fit_glmix
from recsys.glmix.tuning import fit_bytes, select_random_l2
from recsys.memory import release_free_memory
from recsys.parallel import map_independent
from recsys.scoring import history_features as _history_features
from recsys.scoring import prior_history_similarity, similarity_by_user

#: PCA sizes tried for a baseline (those above the embedding size are skipped)
PCA_DIMS: tuple[int, ...] = (8, 16, 32, 64)
#: raw representations of up to this many values (videos x features) get an exact PCA
#: of all videos (an SVD needs several float64 copies: 2^26 values took 4.4 GB); larger
#: ones (VLAD of long frames) a PCA fitted on a sample of videos through its Gram matrix
#: and applied chunk by chunk, so memory does not grow with the catalogue
EXACT_PCA_VALUES = 1 << 23
#: (1,024 videos of VLAD 64 x 1024: 256 MB of float32 rows; far more than the <= 64
#: leading directions kept need)
PCA_SAMPLE_VIDEOS = 1024
#: sampled videos whose frames are copied together while the PCA's rows are computed
_SAMPLE_BLOCK = 128


def validation_log_loss(rows: RecRows, vectors: np.ndarray, cfg: GLMixConfig) -> float:
    """GLMix fitted on the training rows before the validation cut, log-loss after it."""
    p = validation_predictions(rows, vectors, cfg)
    return mean_log_loss(rows.train_labels[rows.validation_mask], p)


def validation_summary(
    rows: RecRows, vectors: np.ndarray, heldout: np.ndarray | None
) -> dict[str, float | None]:
    """What a representation is chosen by (``pipelines.choice.validation``): GLMix's log-loss on
    the validation rows (``all``), on those of videos the learned model never trained on
    (``heldout_videos``: ``heldout`` (V,) mask), their ``criterion`` and the average
    similarity AUC."""
    vset = ValidationSet.of(rows, heldout)
    return score_candidate(rows, vectors, vset).summary(vset)


def score_representation(
    rows: RecRows,
    vectors: np.ndarray,
    base: GLMixConfig | None = None,
    tune: bool = True,
    history_features: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Test-row scores (max/avg similarity, GLMix) of an (N_videos, E) representation.
    ``history_features``: GLMix also gets the Eq. 16-17 similarities to the history, as
    the artifact's model does (``pipelines.glmix.fit_glmix.GLMixJobConfig``); ``base`` with
    ``video_effects`` gives it the per-video coordinate too."""
    base = base or GLMixConfig()
    x_train = VideoRows(vectors, rows.train_videos)
    train_names = video_names(rows, rows.train_videos, base)
    test_names = video_names(rows, rows.test_videos, base)
    v64 = vectors.astype(np.float64)
    info: dict[str, Any] = {}
    cfg = base
    g_train = rows.train_side  # side features (if any) after the history's
    if history_features:
        if rows.train_user_index is None:
            raise ValueError("history features need the training rows' user index")
        g_train = _with_side(
            _history_features(
                *prior_history_similarity(
                    rows.train_user_index,
                    rows.train_videos,
                    rows.train_times,
                    rows.train_labels > 0,
                    v64,
                )
            ),
            rows.train_side,
        )
    if tune:
        best, losses = select_random_l2(
            rows.train_users,
            x_train,
            rows.train_labels,
            rows.validation_mask,
            base=base,
            global_feats=g_train,
            videos=train_names,
        )
        cfg = replace(base, random_l2=best)
        info["random_l2"] = best
        info["validation_log_loss"] = losses[best]
    model = fit_glmix(
        rows.train_users, x_train, rows.train_labels, cfg, g_train, videos=train_names
    )
    max_s, avg_s = similarity_by_user(
        rows.test_user_index, rows.test_videos, rows.history_rows, v64
    )
    g_test = (
        _with_side(_history_features(max_s, avg_s), rows.test_side)
        if history_features
        else rows.test_side
    )
    scores = {
        "max_similarity": max_s,
        "avg_similarity": avg_s,
        "glmix": model.predict_proba(
            rows.test_users, vectors[rows.test_videos], g_test, test_names
        ),
    }
    return scores, info


def _with_side(history: np.ndarray, side: np.ndarray | None) -> np.ndarray:
    return history if side is None else np.hstack([history, side])


def _pca_dims(max_dim: int, n: int, f: int) -> list[int]:
    return [d for d in PCA_DIMS if d <= max_dim and d <= min(n, f)] or [max(1, min(max_dim, n, f))]


def _choose_dim(
    rows: RecRows, candidates: dict[int, np.ndarray], base: GLMixConfig
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """The candidate size with the lowest GLMix validation log-loss: its vectors, the
    choice, and its validation probabilities (so the fit that scores it as a candidate
    is not made again)."""
    val_y = rows.train_labels[rows.validation_mask]
    found = map_independent(
        lambda v: validation_predictions(rows, v, base),
        list(candidates.values()),
        fit_bytes(len(rows.train_labels)),
    )
    predictions = dict(zip(candidates, found, strict=True))
    losses = {d: mean_log_loss(val_y, p) for d, p in predictions.items()}
    best = min(losses, key=lambda k: losses[k])
    info = {"pca_dim": best, "pca_validation_log_loss": losses}
    return candidates[best], info, predictions[best]


def _exact_candidates(raw: np.ndarray, dims: list[int]) -> tuple[PCA, dict[int, np.ndarray]]:
    """One SVD of ``raw`` at the largest size; each size keeps its leading directions."""
    full = PCA.fit(raw, max(dims))
    return full, {d: full.truncated(d).transform(raw) for d in dims}


def reduce_on_validation(
    rows: RecRows, raw: np.ndarray, max_dim: int, base: GLMixConfig | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """PCA of ``raw`` to the size in ``PCA_DIMS`` (<= max_dim) with the lowest GLMix
    validation log-loss; returns the L2-normalised reduced vectors and the choice."""
    _, candidates = _exact_candidates(raw, _pca_dims(max_dim, *raw.shape))
    vectors, info, _ = _choose_dim(rows, candidates, base or GLMixConfig())
    return vectors, info


def fit_rung(
    rows: RecRows,
    store: FrameStore,
    name: str,
    max_dim: int,
    base: GLMixConfig | None = None,
    num_words: int = 64,
    seed: int = 0,
    codebook: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any], ClassicalEmbedder]:
    """A rung's rows for every video of ``store``, PCA-reduced on validation
    (``reduce_on_validation``), and the embedder that maps a video's frames to its row.
    Raw rows are computed a chunk of videos at a time; above ``EXACT_PCA_VALUES`` the PCA
    is fitted on ``PCA_SAMPLE_VIDEOS`` videos. ``codebook``: the k-means words of
    bow_tfidf / vlad_kmeans (fitted here when None). Inside
    ``pipelines.choice.rung_memo.reusing_rungs`` the frames are read once per rung."""
    vectors, info, embedder, _ = _fit_rung_keeping(
        rows, store, name, max_dim, base, num_words, seed, codebook
    )
    return vectors, info, embedder


def _fit_rung_keeping(
    rows: RecRows,
    store: FrameStore,
    name: str,
    max_dim: int,
    base: GLMixConfig | None,
    num_words: int,
    seed: int,
    codebook: np.ndarray | None,
) -> tuple[np.ndarray, dict[str, Any], ClassicalEmbedder, np.ndarray]:
    """``fit_rung`` and the chosen size's validation probabilities."""
    red = rung_reduction(store, name, max_dim, num_words, seed, codebook)
    vectors, info, predictions = _choose_dim(rows, red.candidates, base or GLMixConfig())
    embedder = ClassicalEmbedder(name, red.pca.truncated(info["pca_dim"]), red.codebook, red.idf)
    if red.sampled_videos is not None:
        info = {**info, "pca_fitted_on_videos": red.sampled_videos}
    return vectors, info, embedder, predictions


def rung_reduction(
    store: FrameStore,
    name: str,
    max_dim: int,
    num_words: int = 64,
    seed: int = 0,
    codebook: np.ndarray | None = None,
) -> Reduction:
    """What ``fit_rung`` reads the frames for (``rung_memo.Reduction``): from the
    enclosing ``reusing_rungs`` block's memo when a fit made it already."""
    memo = rung_memo.current()
    if memo is None:
        return _reduce(store, name, max_dim, num_words, seed, codebook)
    key = {
        "store": memo.store_key(store),
        "rung": name,
        "max_dim": max_dim,
        "num_words": num_words,
        "seed": seed,
        "codebook": None if codebook is None else _digest(codebook),
        "exact_values": EXACT_PCA_VALUES,
        "sample_videos": PCA_SAMPLE_VIDEOS,
    }
    red = memo.get(key)
    if red is None:
        red = _reduce(store, name, max_dim, num_words, seed, codebook)
        memo.put(key, red)
    return red


def rung_words(store: FrameStore, num_words: int, seed: int) -> np.ndarray:
    """The k-means words the rungs with words share (``kmeans_codebook`` of the store's
    frames), from the enclosing ``reusing_rungs`` block's memo when fitted already."""
    memo = rung_memo.current()
    if memo is None:
        return kmeans_codebook(store.frames, num_words, seed=seed)
    key = {"store": memo.store_key(store), "words": num_words, "seed": seed}
    words = memo.get_words(key)
    if words is None:
        words = kmeans_codebook(store.frames, num_words, seed=seed)
        memo.put_words(key, words)
    return words


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def _reduce(
    store: FrameStore,
    name: str,
    max_dim: int,
    num_words: int,
    seed: int,
    codebook: np.ndarray | None,
) -> Reduction:
    r = rung(name)
    n, f = len(store), r.raw_dim(store.feature_dim, num_words)
    if codebook is None and r.uses_words:
        codebook = rung_words(store, num_words, seed)
    # rows that depend on the whole catalogue (the idf needs every video's words first)
    raw_all, idf = r.catalogue_rows(store_chunks(store, 1 << 24), codebook)
    dims = _pca_dims(max_dim, n, f)
    if n * f <= EXACT_PCA_VALUES:
        if raw_all is None:
            raw_all = np.empty((n, f), dtype=np.float32)
            for sl, chunk in raw_features(name, store, codebook):
                raw_all[sl] = chunk
        full, candidates = _exact_candidates(raw_all, dims)
        return Reduction(candidates, full, codebook, idf)
    rng = np.random.default_rng([seed, 3])
    sample = np.sort(rng.choice(n, size=min(n, PCA_SAMPLE_VIDEOS), replace=False))
    if raw_all is not None:
        fit_rows = raw_all[sample]
    else:
        fit_rows = _sample_rows(name, store, codebook, sample, f)
    full = PCA.fit_gram(fit_rows, max(dims))
    del fit_rows
    if raw_all is not None:
        z = full.project(raw_all)
    else:
        z = np.empty((n, full.dim))
        for sl, chunk in raw_features(name, store, codebook):
            z[sl] = full.project(chunk)
    candidates = {d: l2_rows(z[:, :d]) for d in dims if d <= full.dim}
    return Reduction(candidates, full, codebook, idf, len(sample))


def _sample_rows(
    name: str, store: FrameStore, codebook: np.ndarray | None, sample: np.ndarray, f: int
) -> np.ndarray:
    """(len(sample), f) float32 raw rows of the sampled videos (sorted rows of ``store``),
    filled in place. A video's average or VLAD depends on its frames alone, so only the
    sampled videos are read, a block at a time."""
    if rung(name).uses_idf:
        raise ValueError(f"{name}'s rows depend on the catalogue's idf")
    out = np.empty((len(sample), f), dtype=np.float32)
    for b in range(0, len(sample), _SAMPLE_BLOCK):
        block = store.subset(sample[b : b + _SAMPLE_BLOCK])
        for sl, chunk in raw_features(name, block, codebook):
            out[b + sl.start : b + sl.stop] = chunk
    return out


def iter_rungs(
    rows: RecRows,
    store: FrameStore,
    max_dim: int,
    names: tuple[str, ...] | None = None,
    base: GLMixConfig | None = None,
    num_words: int = 64,
    seed: int = 0,
    heldout: np.ndarray | None = None,
) -> Iterator[tuple[str, np.ndarray, dict[str, Any], ClassicalEmbedder, CandidateScores]]:
    """(name, vectors, choice, embedder, validation scores) of each rung in turn (``names``,
    default every rung of ``embeddings.registry.RUNGS``)
    (``fit_rung``; ``pipelines.choice.validation.score_candidate`` with ``heldout``, the videos
    the learned model held out), its summary under ``choice["validation"]``; one k-means
    serves every rung that needs words."""
    if store.video_ids != rows.video_ids:
        raise ValueError("the frame store and the rows must list the same videos in one order")
    vset = ValidationSet.of(rows, heldout)
    codebook = None
    for name in RUNGS.names() if names is None else names:
        if codebook is None and rung(name).uses_words:
            codebook = rung_words(store, num_words, seed)
        vectors, info, emb, predictions = _fit_rung_keeping(
            rows, store, name, max_dim, base, num_words, seed, codebook
        )
        # the size choice fitted GLMix on these very rows already: its scores are reused
        scores = score_candidate(rows, vectors, vset, base, predictions)
        info["validation"] = scores.summary(vset)
        yield name, vectors, info, emb, scores


def baseline_ladder(
    rows: RecRows,
    store: FrameStore,
    max_dim: int,
    names: tuple[str, ...] | None = None,
    base: GLMixConfig | None = None,
    num_words: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    history_features: bool = False,
    heldout: np.ndarray | None = None,
) -> dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Scores of each classical baseline on ``rows``; ``store`` must list ``rows.video_ids``.
    ``history_features``: their GLMix gets the history similarities too (as the model it
    is compared with does). Each rung's ``info["validation"]`` is its validation summary
    and ``info["validation_scores"]`` its per-row ``CandidateScores`` (``heldout``: the
    learned model's held-out videos)."""
    out: dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
    t0 = time.perf_counter()
    rungs = iter_rungs(rows, store, max_dim, names, base, num_words, seed, heldout)
    for name, vectors, info, _, val_scores in rungs:
        info["validation_scores"] = val_scores
        scores, fit_info = score_representation(
            rows, vectors, base, history_features=history_features
        )
        info.update(fit_info, seconds=time.perf_counter() - t0)
        out[name] = (scores, info)
        release_free_memory()  # a rung's temporaries go back before the next one starts
        if log is not None:
            log(f"baseline {name}: PCA {info['pca_dim']}, {info['seconds']:.1f} s")
        t0 = time.perf_counter()
    return out
