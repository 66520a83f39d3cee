"""The budgeted search over the model's settings: what it tries, when it stops for time,
and that a variant replaces the default only when validation prefers it beyond noise."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from embeddings.cowatch import EmbedderConfig
from pipelines.choice.validation import CandidateScores, ValidationSet
from pipelines.training.settings_search import DEFAULT, Candidate, search, variants
from recsys.artifact import read_embeddings, read_manifest
from recsys.glmix.logistic import row_log_loss

CFG = EmbedderConfig(pooling="dsgmm", feature_dim=8, num_clusters=8, embedding_dim=16)


def _labels(cfg: EmbedderConfig, lr: float = 1e-3) -> dict[str, tuple[EmbedderConfig, float]]:
    return {label: (c, lr_) for label, c, lr_ in variants(cfg, lr)}


def test_variants_change_one_setting_each() -> None:
    got = _labels(CFG)
    assert set(got) == {
        "clusters=16",
        "clusters=4",
        "occupancy",
        "lr=0.003",
        "lr=0.000333333",
        "embedding_dim=8",
        "embedding_dim=32",
    }
    assert got["clusters=16"] == (replace(CFG, num_clusters=16), 1e-3)
    assert got["occupancy"] == (replace(CFG, occupancy=True), 1e-3)
    assert got["lr=0.003"] == (CFG, pytest.approx(3e-3))
    # occupancy needs a cluster pooling; already on, it is not tried again
    assert "occupancy" not in _labels(replace(CFG, pooling="netfv"))
    assert "occupancy" not in _labels(replace(CFG, occupancy=True))


def _vset(n: int = 800) -> ValidationSet:
    rng = np.random.default_rng(0)
    return ValidationSet(
        labels=(rng.random(n) < 0.4).astype(float),
        users=rng.integers(0, 60, n),
        videos=rng.integers(0, 50, n),
        heldout=np.zeros(n, dtype=bool),
        history={},
    )


def _cand(
    vset: ValidationSet, cfg: EmbedderConfig, sharp: float, seconds: float, lr: float = 1e-3
) -> Candidate:
    rng = np.random.default_rng(1)  # the same noise for every candidate: only sharpness differs
    p = np.clip(
        0.4 + sharp * (vset.labels - 0.4) + rng.normal(0, 0.05, len(vset.labels)), 0.01, 0.99
    )
    sim = vset.labels + rng.normal(0, 1, len(vset.labels))
    scores = CandidateScores(row_log_loss(vset.labels, p), sim)
    return Candidate(cfg, lr, np.zeros((1, 1)), scores, seconds)


def test_a_variant_wins_only_when_ahead_and_the_budget_bounds_the_tries() -> None:
    vset = _vset()
    default = _cand(vset, CFG, 0.1, seconds=10.0)
    better = {"clusters=16": 0.5}  # only this variant is sharper than the default
    calls = []

    def train(cfg: EmbedderConfig, lr: float) -> Candidate:
        label = next(k for k, c, r in variants(CFG, 1e-3) if (c, r) == (cfg, lr))
        calls.append(label)
        return _cand(vset, cfg, better.get(label, 0.1), seconds=10.0, lr=lr)

    chosen, report = search(default, train, vset, budget_s=1000)
    assert len(calls) == len(variants(CFG, 1e-3)) and report["skipped_for_time"] == []
    assert report["chosen"] == "clusters=16" and chosen.config.num_clusters == 16
    assert report["candidates"]["clusters=16"]["versus_default"]["loss_high"] < 0
    assert DEFAULT in report["candidates"]
    # Ties everywhere: the default stays.
    better.clear()
    chosen, report = search(default, train, vset, budget_s=1000)
    assert report["chosen"] == DEFAULT and chosen is default
    # Time for one more training only when the slowest so far fits in what is left.
    calls.clear()
    _, report = search(default, train, vset, budget_s=15)
    assert (
        calls == ["clusters=16"] and len(report["skipped_for_time"]) == len(variants(CFG, 1e-3)) - 1
    )
    calls.clear()
    _, report = search(default, train, vset, budget_s=5)
    assert calls == [] and report["chosen"] == DEFAULT


def test_train_embeddings_with_a_search_budget(
    run_cli, small_world_dir: Path, tmp_path: Path
) -> None:
    """The job trains variants, records each, and writes the one it keeps."""
    from tests.pipelines.training.test_train_embeddings import FAST

    art = tmp_path / "art"
    code, _, err = run_cli(
        "train-embeddings", "--data", small_world_dir, "--out", art, "--search-budget", "600", *FAST
    )
    assert code == 0, err
    m = read_manifest(art)
    found = m["metrics"]["settings_search"]
    assert set(found["candidates"]) == {DEFAULT, *_labels(_fast_cfg(m), 1e-3)}
    kept = found["candidates"][found["chosen"]]
    emb = m["config"]["embedder"]
    assert (kept["num_clusters"], kept["embedding_dim"], kept["occupancy"]) == (
        emb["num_clusters"],
        emb["embedding_dim"],
        emb["occupancy"],
    )
    assert m["config"]["train"]["lr"] == kept["lr"]
    _, vecs = read_embeddings(art / "embeddings.parquet")
    assert vecs.shape[1] == (emb["reduced_dim"] or emb["embedding_dim"] + emb["base_dim"])
    code, _, err = run_cli(
        "train-embeddings",
        "--data",
        small_world_dir,
        "--out",
        tmp_path / "x",
        "--search-budget",
        "-1",
    )
    assert code == 2 and "search_budget_s" in err


def _fast_cfg(manifest: dict) -> EmbedderConfig:
    """The default candidate's config as it was trained (clusters and size of FAST)."""
    emb = dict(manifest["config"]["embedder"])
    found = manifest["metrics"]["settings_search"]["candidates"][DEFAULT]
    emb.update(
        num_clusters=found["num_clusters"],
        embedding_dim=found["embedding_dim"],
        occupancy=found["occupancy"],
        base_weight=0.5,
        reduced_dim=0,
    )
    return EmbedderConfig.from_dict(emb)
