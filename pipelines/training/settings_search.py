"""Settings of the learned model chosen on the user's validation rows within a time budget.

After the default model is trained, ``search`` trains variants of it one at a time (more
or fewer clusters, the cluster occupancy as an extra input, a larger or smaller learning
rate, a smaller or larger embedding), while the time left covers another training as long as the last one took.
Each variant starts from the same rung and gets its own share w (``starting_point``);
all are scored on the same validation rows (``pipelines.choice.validation``) and a variant
replaces the default only when ahead beyond the paired interval on one score and behind
on neither. The test period is never looked at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from embeddings.cowatch import EmbedderConfig
from embeddings.registry import POOLINGS
from pipelines.choice.validation import CandidateScores, ValidationSet, gated_choice

DEFAULT = "default"


def variants(cfg: EmbedderConfig, lr: float) -> list[tuple[str, EmbedderConfig, float]]:
    """(label, model config, learning rate) of what a search tries, in order, each one
    change to (``cfg``, ``lr``)."""
    k, e = cfg.num_clusters, cfg.embedding_dim
    out = [(f"clusters={k * 2}", replace(cfg, num_clusters=k * 2), lr)]
    if POOLINGS[cfg.pooling].offers_occupancy and not cfg.occupancy:
        out.append(("occupancy", replace(cfg, occupancy=True), lr))
    out += [(f"lr={lr * 3:g}", cfg, lr * 3), (f"lr={lr / 3:g}", cfg, lr / 3)]
    if k >= 4:
        out.append((f"clusters={k // 2}", replace(cfg, num_clusters=k // 2), lr))
    if e >= 16:
        out.append((f"embedding_dim={e // 2}", replace(cfg, embedding_dim=e // 2), lr))
    out.append((f"embedding_dim={e * 2}", replace(cfg, embedding_dim=e * 2), lr))
    return out


@dataclass
class Candidate:
    """One trained model: its config and learning rate, catalogue rows (V, O), validation
    scores, cost."""

    config: EmbedderConfig
    lr: float
    vectors: np.ndarray
    scores: CandidateScores
    seconds: float
    outcome: Any = None  # whatever the caller needs to write it (its training result)
    final: dict[str, Any] = field(default_factory=dict)  # settings chosen after training


def search(
    reference: Candidate,
    train: Callable[[EmbedderConfig, float], Candidate],
    vset: ValidationSet,
    budget_s: float,
    log: Callable[[str], None] | None = None,
) -> tuple[Candidate, dict[str, Any]]:
    """Train ``variants`` of ``reference.config`` with ``train`` while ``budget_s``
    seconds allow one more (as long as the slowest so far; the candidates' own ``seconds``
    are what is spent); return the candidate the
    validation rule prefers (``reference`` unless a variant is ahead) and the report."""
    tried: dict[str, Candidate] = {DEFAULT: reference}
    start, slowest, spent = time.perf_counter(), reference.seconds, 0.0
    skipped = []
    for label, cfg, lr in variants(reference.config, reference.lr):
        if spent + slowest > budget_s:  # each candidate's own seconds add up
            skipped.append(label)
            continue
        if log is not None:
            log(f"trying {label} ...")
        cand = train(cfg, lr)
        tried[label] = cand
        slowest, spent = max(slowest, cand.seconds), spent + cand.seconds
        if log is not None:
            s = cand.scores.summary(vset)
            log(
                f"{label}: criterion {s['criterion']:.5f}, average similarity AUC "
                f"{s['avg_similarity_auc'] or float('nan'):.4f} ({cand.seconds:.0f} s)"
            )
    chosen, comparisons = gated_choice({k: c.scores for k, c in tried.items()}, DEFAULT, vset)
    report = {
        "budget_seconds": budget_s,
        "seconds": time.perf_counter() - start,
        "chosen": chosen,
        "skipped_for_time": skipped,
        "candidates": {
            label: {
                "seconds": c.seconds,
                "num_clusters": c.config.num_clusters,
                "embedding_dim": c.config.embedding_dim,
                "occupancy": c.config.occupancy,
                "lr": c.lr,
                **c.final,
                **c.scores.summary(vset),
                **(
                    {"versus_default": comparisons[label].to_json()} if label in comparisons else {}
                ),
            }
            for label, c in tried.items()
        },
    }
    return tried[chosen], report
