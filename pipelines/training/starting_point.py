"""The learned model's starting point: the best classical rung on the user's validation
rows, and how much of the final embedding it keeps (both chosen on validation).

``train-embeddings`` with ``base = "auto"`` (the default):

1. fits every rung of the ladder (``pipelines.choice.ladder.iter_rungs``) and takes the one the
   validation rule prefers (``pipelines.choice.validation``: the bag of words, ``PRIOR``, unless
   another is ahead of it beyond the paired interval);
2. trains the co-watch model on top of it (``embeddings.cowatch.CowatchEmbedder`` with a
   base: the rung's row stays fixed beside the learned one, so triplets teach what the
   rung misses);
3. chooses the rung's share w of the final cosine among ``WEIGHTS`` on the same rows:
   w = 1 is the starting point itself, w = 0 the learned part alone. The trained w stays
   unless another is ahead beyond the interval, so training cannot end behind its start
   on validation unless noise hides it;
4. chooses the embedding's size (``choose_size``): the catalogue's rows reduced to their
   leading principal directions (``SIZES``) or kept whole, on the same rows and rule. A
   sparse log supports fewer directions per user than a rich one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch

from embeddings.cowatch import CowatchEmbedder, EmbedderConfig
from embeddings.registry import RUNGS
from pipelines.choice.representation import criteria, fit_rungs, gated
from pipelines.choice.validation import CandidateScores, ValidationSet, score_candidate
from pipelines.data.impressions import RecRows
from recsys.baselines import PCA, l2_rows
from recsys.embedders import ClassicalEmbedder
from recsys.frames import FrameStore
from recsys.glmix.tuning import fit_bytes
from recsys.parallel import map_independent

#: the rung's shares of the final cosine tried after training
WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: the rung started from unless validation shows another ahead beyond the interval: the
#: bag of words, the strongest rung over the world suite's kinds of catalogue. Where
#: validation rows are few (a sparse log), their differences are noise and a choice by
#: the lowest number picked a rung the test period then ranked far behind.
PRIOR = "bow_tfidf"
#: ``base`` values: "auto", "none" or a rung's name
BASE_CHOICES: tuple[str, ...] = ("auto", "none", *RUNGS.names())


def choose_base(
    rows: RecRows,
    store: FrameStore,
    heldout: np.ndarray,
    max_dim: int,
    names: tuple[str, ...] = RUNGS.names(),
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[ClassicalEmbedder, dict[str, Any]]:
    """The rung to start from among ``names`` and what validation said of each."""
    rungs = fit_rungs(rows, store, max_dim, names, seed, log, heldout)
    vset = ValidationSet.of(rows, heldout)
    scores = {name: info["validation_scores"] for name, (_, _, info) in rungs.items()}
    summaries = {name: s.summary(vset) for name, s in scores.items()}
    reference = PRIOR if PRIOR in summaries else best_ranked(summaries)
    chosen, comparisons = gated(scores, reference, vset)
    report = {
        "candidates": summaries,
        "reference": reference,
        "versus_reference": comparisons,
        "chosen": chosen,
    }
    return rungs[chosen][1], report


def best_ranked(summaries: dict[str, dict[str, float | None]]) -> str:
    """The candidate with the best mean rank over the log-loss criterion (low first) and
    the average-similarity AUC (high first); ties go to the lower criterion. Where no
    candidate is ahead beyond the interval, one score alone (a log-loss a few thousandths
    apart) should not decide."""
    losses = criteria(summaries)
    names = sorted(losses, key=lambda k: losses[k])
    aucs = {n: summaries[n].get("avg_similarity_auc") for n in names}
    by_auc = sorted(names, key=lambda n: -(aucs[n] or 0.0))  # no AUC: last
    rank = {n: names.index(n) + by_auc.index(n) for n in names}
    return min(names, key=lambda n: (rank[n], names.index(n)))


def start_on_base(
    rows: RecRows,
    store: FrameStore,
    heldout: np.ndarray,
    cfg: EmbedderConfig,
    names: tuple[str, ...] = RUNGS.names(),
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[EmbedderConfig, Callable[[CowatchEmbedder], None], dict[str, Any]]:
    """``cfg`` set up to start from the rung validation prefers among ``names`` (PCA at
    most ``cfg.embedding_dim``), what fills a new model's base layer, and the report."""
    emb, report = choose_base(rows, store, heldout, cfg.embedding_dim, names, seed, log)
    if log is not None:
        log(f"starting from {emb.name} (PCA {emb.embedding_dim})")
    return with_base(cfg, emb), (lambda model: load_base(model, emb)), report


def with_base(cfg: EmbedderConfig, emb: ClassicalEmbedder) -> EmbedderConfig:
    """``cfg`` set up to start from the rung ``emb``."""
    words = 1 if emb.codebook is None else len(emb.codebook)
    return replace(cfg, base=emb.name, base_words=words, base_dim=emb.embedding_dim)


def load_base(model: CowatchEmbedder, emb: ClassicalEmbedder) -> None:
    """Copy the rung's codebook, idf and PCA into the model's fixed base layer."""
    if model.base is None:
        raise ValueError("the model has no base layer")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float64))

    model.base.load_arrays(
        t(emb.pca.mean),
        t(emb.pca.components),
        None if emb.codebook is None else t(emb.codebook),
        None if emb.idf is None else t(emb.idf),
    )


def choose_weight(
    rows: RecRows,
    heldout: np.ndarray,
    model: CowatchEmbedder,
    vectors: np.ndarray,
    log: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Set the model's ``base_weight`` to the share the validation rule prefers among
    ``WEIGHTS`` (the trained one is the reference) and return the catalogue's ``vectors``
    (V, O), in store order, recombined with it."""
    trained = model.config.base_weight
    base, learned = model.split(torch.from_numpy(vectors))
    vset = ValidationSet.of(rows, heldout)
    weights = {_name(w): w for w in sorted({*WEIGHTS, trained})}
    candidates: dict[str, Callable[[], np.ndarray]] = {
        name: partial(_combined, model, base, learned, w) for name, w in weights.items()
    }
    chosen, summaries, comparisons = _choose(
        rows, vset, candidates, _name(trained), log, vectors.nbytes
    )
    weight = weights[chosen]
    model.config = replace(model.config, base_weight=weight)
    report = {
        "trained_weight": trained,
        "weight": weight,
        "candidates": summaries,
        "versus_trained": comparisons,
    }
    return candidates[chosen](), report


def _choose(
    rows: RecRows,
    vset: ValidationSet,
    candidates: dict[str, Callable[[], np.ndarray]],
    reference: str,
    log: Callable[[str], None] | None,
    catalogue_bytes: int,
) -> tuple[str, dict[str, dict[str, float | None]], dict[str, dict[str, float]]]:
    """Score every candidate's rows (V, O) on ``vset``, each built when scored and let go
    after (a copy of the catalogue's rows per fit running, ``catalogue_bytes`` each, not
    one per candidate); the gated winner against ``reference``, each one's summary and
    comparison with the reference."""
    # side by side while two copies of the rows and two fits fit the memory allowance
    each = fit_bytes(len(rows.train_labels)) + catalogue_bytes
    found = map_independent(
        lambda build: score_candidate(rows, build(), vset), list(candidates.values()), each
    )
    scores: dict[str, CandidateScores] = dict(zip(candidates, found, strict=True))
    for name, score in scores.items():
        if log is not None:
            s = score.summary(vset)
            log(
                f"{name}: criterion {s['criterion']:.5f}, "
                f"average similarity AUC {s['avg_similarity_auc'] or float('nan'):.4f}"
            )
    chosen, comparisons = gated(scores, reference, vset)
    return chosen, {name: s.summary(vset) for name, s in scores.items()}, comparisons


#: reduced sizes tried after training (those not below the full size are skipped)
SIZES: tuple[int, ...] = (8, 16, 32)
FULL = "full"


def choose_size(
    rows: RecRows,
    heldout: np.ndarray,
    model: CowatchEmbedder,
    vectors: np.ndarray,
    log: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Reduce the model's output to the size the validation rule prefers among ``SIZES``
    (the whole output is the reference) and return the catalogue's ``vectors`` (V, O)
    reduced the same way (``CowatchEmbedder.set_reduction``)."""
    vset = ValidationSet.of(rows, heldout)
    full = vectors.shape[1]
    sizes = [d for d in SIZES if d < full]
    pca = PCA.fit_covariance(vectors, max(sizes)) if sizes else None
    candidates: dict[str, Callable[[], np.ndarray]] = {FULL: lambda: vectors}
    if pca is not None:
        z = pca.project(vectors)  # (V, max size): the sizes share it
        candidates.update({f"d={d}": partial(_leading, z, d) for d in sizes})
    chosen, summaries, comparisons = _choose(rows, vset, candidates, FULL, log, vectors.nbytes)
    if chosen != FULL:
        assert pca is not None
        d = int(chosen.removeprefix("d="))
        model.set_reduction(torch.from_numpy(pca.mean), torch.from_numpy(pca.components[:d]))
    report = {
        "full_dim": full,
        "chosen": chosen,
        "candidates": summaries,
        "versus_full": comparisons,
    }
    return candidates[chosen](), report


def _combined(
    model: CowatchEmbedder, base: torch.Tensor, learned: torch.Tensor, w: float
) -> np.ndarray:
    return model.combine(base, learned, w).numpy()


def _leading(z: np.ndarray, d: int) -> np.ndarray:
    return l2_rows(z[:, :d])


def _name(w: float) -> str:
    return f"w={w:g}"
