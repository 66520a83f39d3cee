"""Which representation an artifact ships, chosen on the user's own validation rows.

The candidates are the learned embedding (what ``train-embeddings`` wrote) and each rung
of the classical ladder (``pipelines.choice.ladder.fit_rung``: average of frames, k-means bag of
words with tf-idf, k-means VLAD; PCA size chosen on the same rows). Each is scored the
same way on the last 10% (by time) of the training period (``pipelines.choice.validation``: GLMix
log-loss and average-similarity AUC, with paired intervals); a rung replaces the learned
model only when ahead beyond the interval. The test period is never looked at. The
learned model's triplets come from the whole training period, the validation 10%
included, so the comparison leans towards it, never against it: a rung that wins here
wins despite that.

A rung is shipped by replacing the artifact's embedder, embeddings, index and map with
the rung's (``ship_rung``); the service then embeds uploads with it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from embeddings.registry import RUNGS
from pipelines.choice.ladder import iter_rungs
from pipelines.choice.validation import (
    CandidateScores,
    ValidationSet,
    gated_choice,
    score_candidate,
)
from pipelines.data.frame_cache import open_frame_store
from pipelines.data.impressions import RecRows, embedding_rows, load_rec_rows
from recsys import artifact as art
from recsys.embedders import ClassicalEmbedder, GivenEmbedder
from recsys.errors import UserInputError
from recsys.frames import FrameStore
from recsys.index import IndexConfig, VideoIndex
from recsys.projection import fit_map

#: what ``--pooling`` may name besides a learned pooling layer
AUTO = "auto"
REPRESENTATIONS: tuple[str, ...] = ("learned", AUTO, *RUNGS.names())


@dataclass
class Selection:
    """Every candidate's validation summary and which one won (``validation.gated_choice``
    against the learned model: a rung wins only when ahead beyond the paired interval)."""

    learned: str  # the learned model's pooling name ("" when none was trained)
    losses: dict[str, float]  # each candidate's log-loss criterion
    rungs: dict[str, tuple[np.ndarray, ClassicalEmbedder, dict[str, Any]]] = field(
        default_factory=dict
    )
    details: dict[str, dict[str, float | None]] = field(default_factory=dict)
    chosen: str = ""  # the gated winner ("" = the lowest criterion)
    comparisons: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def winner(self) -> str:
        return self.chosen or min(self.losses, key=lambda k: self.losses[k])

    def to_json(self) -> dict[str, Any]:
        return {
            "criterion": CRITERION,
            "rule": RULE,
            "learned": self.learned,
            "validation_log_loss": dict(self.losses),
            "details": dict(self.details),
            "versus_reference": dict(self.comparisons),
            "winner": self.winner,
            "rungs": {
                name: {"pca_dim": info["pca_dim"], "embedding_dim": emb.embedding_dim}
                for name, (_, emb, info) in self.rungs.items()
            },
        }


CRITERION = (
    "GLMix log-loss on the last 10% of the training period: the mean of all its rows' and "
    "of the rows of videos the learned model held out (all rows alone when under 100); "
    "beside it the average-similarity AUC on the same rows"
)
RULE = (
    "a candidate replaces the shipped one only when ahead beyond the 95% paired interval "
    "on the log-loss criterion or the average-similarity AUC, and behind on neither"
)


def criteria(details: dict[str, dict[str, float | None]]) -> dict[str, float]:
    """Each candidate's criterion from its validation summary."""
    out = {}
    for name, d in details.items():
        value = d["criterion"]
        if value is None:
            raise ValueError(f"{name}: a validation summary without a criterion")
        out[name] = float(value)
    return out


def gated(
    scores: dict[str, CandidateScores], reference: str, vset: ValidationSet
) -> tuple[str, dict[str, dict[str, float]]]:
    """``validation.gated_choice`` with the comparisons as JSON."""
    chosen, comps = gated_choice(scores, reference, vset)
    return chosen, {name: c.to_json() for name, c in comps.items()}


def heldout_mask(store: FrameStore, ids: list[str] | None) -> np.ndarray | None:
    """(V,) True for the store's videos in ``ids`` (None: no held-out videos known)."""
    if not ids:
        return None
    wanted = set(ids)
    return np.array([v in wanted for v in store.video_ids], dtype=bool)


def store_order(ids: list[str], vectors: np.ndarray, store: FrameStore) -> np.ndarray:
    """``vectors`` (rows named by ``ids``) in the frame store's video order."""
    return vectors[embedding_rows(ids, store.video_ids, "catalogue videos")]


def fit_rungs(
    rows: RecRows,
    store: FrameStore,
    max_dim: int,
    names: tuple[str, ...] = RUNGS.names(),
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    heldout: np.ndarray | None = None,
) -> dict[str, tuple[np.ndarray, ClassicalEmbedder, dict[str, Any]]]:
    """Each rung's vectors (store order), embedder and choice (``ladder.iter_rungs``; its
    per-row validation scores under ``info["validation_scores"]``)."""
    out = {}
    for name, vectors, info, emb, scores in iter_rungs(
        rows, store, max_dim, names, seed=seed, heldout=heldout
    ):
        info["validation_scores"] = scores
        out[name] = (vectors, emb, info)
        if log is not None:
            log(f"{name}: PCA {info['pca_dim']}, {_summary_text(info['validation'])}")
    return out


def choose_representation(
    data: Path,
    artifact: Path | None,
    test_start: datetime,
    watch_threshold_s: float,
    max_dim: int,
    names: tuple[str, ...] = RUNGS.names(),
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Selection:
    """The validation log-loss of the artifact's learned embedding (when ``artifact``)
    and of each rung in ``names``."""
    store = open_frame_store(data)
    rows = load_rec_rows(data, store.video_ids, test_start, watch_threshold_s)
    scores: dict[str, CandidateScores] = {}
    learned = ""
    heldout = None
    vset = None
    if artifact is not None:
        ids, vectors = art.load_embeddings(artifact)
        learned = str(art.read_manifest(artifact)["config"]["embedder"].get("pooling", "learned"))
        heldout = heldout_mask(store, art.load_heldout_videos(artifact))
        vset = ValidationSet.of(rows, heldout)
        scores[learned] = score_candidate(rows, store_order(ids, vectors, store), vset)
        if log is not None:
            log(f"learned {learned}: {_summary_text(scores[learned].summary(vset))}")
    rungs = fit_rungs(rows, store, max_dim, names, seed, log, heldout)
    vset = vset or ValidationSet.of(rows, heldout)
    for name, (_, _, info) in rungs.items():
        scores[name] = info["validation_scores"]
    details = {name: s.summary(vset) for name, s in scores.items()}
    losses = criteria(details)
    reference = learned or min(losses, key=lambda k: losses[k])
    chosen, comparisons = gated(scores, reference, vset)
    return Selection(learned, losses, rungs, details, chosen, comparisons)


def _summary_text(s: dict[str, float | None]) -> str:
    held, auc = s["heldout_videos"], s.get("avg_similarity_auc")
    text = f"validation log-loss {s['all']:.5f}"
    text = text if held is None else f"{text}, on held-out videos {held:.5f}"
    return text if auc is None else f"{text}, average similarity AUC {auc:.4f}"


def index_with_recall(
    video_ids: list[str], vectors: np.ndarray, cfg: IndexConfig
) -> tuple[VideoIndex, dict[str, Any]]:
    """The catalogue's index (``auto``: chosen by its size) and what the manifest says of
    it: its kind and its recall@20 against exact search on the catalogue's own rows (an
    approximate index widened until that reaches ``cfg.target_recall``)."""
    index = VideoIndex.build(video_ids, vectors, cfg)
    facts = {"kind": index.config.kind, **index.tune(vectors, k=20)}
    if not facts.get("target_reached", True):
        print(
            f"warning: the {facts['kind']} index reaches recall@20 {facts['recall']:.3f} at its "
            f"widest search ({facts['search_width']}), below the target "
            f"{index.config.target_recall}; build it finer (hnsw_m, hnsw_ef_construction) or "
            "use --index flat",
            file=sys.stderr,
        )
    return index, facts


def rung_files(
    store: FrameStore,
    vectors: np.ndarray,
    emb: ClassicalEmbedder | GivenEmbedder,
    index: VideoIndex,
) -> dict[str, Any]:
    """The artifact files of a shipped rung (or of the data's own vectors): its embedder,
    every video's row, the index over them and the explorer's map."""
    return {
        **emb.to_files(),
        art.EMBEDDINGS: lambda p: pq.write_table(art.embeddings_table(store.video_ids, vectors), p),
        art.INDEX: index.to_bytes(),
        art.INDEX_CONFIG: json.dumps(asdict(index.config)).encode(),
        art.PROJECTION: json.dumps(fit_map(vectors)).encode(),
    }


def rung_config(emb: ClassicalEmbedder, max_dim: int) -> dict[str, Any]:
    """The manifest's ``config.embedder`` of a shipped rung (``max_dim``: the largest
    PCA size it could have taken, the learned model's embedding size)."""
    return {
        "pooling": emb.name,
        "classical": True,
        "feature_dim": emb.feature_dim,
        "embedding_dim": emb.embedding_dim,
        "max_dim": max_dim,
    }


def ship_rung(
    artifact: Path,
    data: Path,
    selection: Selection,
    name: str,
    max_dim: int,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Replace the artifact's learned embedder and everything derived from it by the rung
    ``name`` of ``selection`` (before GLMix is fitted on them); the learned model's
    training record stays beside it. ``metrics``: the rung's, replacing the model's."""
    if art.glmix_file_names(art.GLMIX)[0] in art.read_manifest(artifact).get("files", {}):
        raise UserInputError(f"{artifact}: has a GLMix fitted on its embeddings; ship first")
    vectors, emb, _ = selection.rungs[name]
    manifest = art.read_manifest(artifact)
    index_cfg = IndexConfig(**manifest["config"].get("index", {}))
    store = open_frame_store(data)
    index, index_facts = index_with_recall(store.video_ids, vectors, index_cfg)
    art.extend_artifact(
        artifact,
        rung_files(store, vectors, emb, index),
        {
            "config": {"embedder": rung_config(emb, max_dim), "index": asdict(index.config)},
            "metrics": {**(metrics or {}), "selection": selection.to_json(), "index": index_facts},
        },
        drop=(art.EMBEDDER_CONFIG, art.EMBEDDER_WEIGHTS),
    )


def ship_command(data: Path | str, out: Path | str, name: str) -> str:
    return f"recsys pipeline --data {data} --out {out} --pooling {name}"
