"""End-to-end: mine -> train -> embed -> index -> artifact, on a small synthetic world."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.artifact import load_embedding_artifact, read_embeddings

FAST = [
    "--epochs",
    "1",
    "--clusters",
    "4",
    "--hidden-dim",
    "16",
    "--embedding-dim",
    "8",
    "--max-triplets",
    "1500",
    "--quiet",
]


def test_cli_train_then_embed(run_cli, small_world_dir: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    code, out, err = run_cli("train-embeddings", "--data", small_world_dir, "--out", art, *FAST)
    assert code == 0, err
    assert "held-out co-watch pair AUC" in out
    a = load_embedding_artifact(art)
    m = a.manifest
    assert m["config"]["embedder"]["pooling"] == "dsgmm"
    assert m["metrics"]["triplets"]["train"] > 0 and np.isfinite(m["metrics"]["best_val_loss"])
    assert (art / "loss_curve.png").stat().st_size > 1000
    n_videos = pq.ParquetFile(small_world_dir / "videos.parquet").metadata.num_rows
    assert len(a.index) == n_videos
    # recsys embed reproduces the artifact's embeddings (same model, same frames).
    code, _, err = run_cli(
        "embed", "--artifacts", art, "--data", small_world_dir, "--out", tmp_path / "e.parquet"
    )
    assert code == 0, err
    ids, vecs = read_embeddings(tmp_path / "e.parquet")
    ids0, vecs0 = read_embeddings(art / "embeddings.parquet")
    order = {v: i for i, v in enumerate(ids0)}
    np.testing.assert_allclose(vecs, vecs0[[order[v] for v in ids]], atol=1e-5)
    # Existing artifact: refused without --overwrite.
    code, _, err = run_cli("train-embeddings", "--data", small_world_dir, "--out", art, *FAST)
    assert code == 2 and "already exists" in err


def test_cli_mine_triplets(run_cli, small_world_dir: Path, tmp_path: Path) -> None:
    code, out, err = run_cli(
        "mine-triplets",
        "--data",
        small_world_dir,
        "--out",
        tmp_path / "t.parquet",
        "--max-per-user",
        "5",
    )
    assert code == 0, err
    assert "triplets from impressions before" in out
    t = pq.read_table(tmp_path / "t.parquet")
    assert t.num_rows > 0 and t.column_names == ["anchor", "positive", "negative", "user_id"]
    users = t.column("user_id").to_pylist()
    assert max(users.count(u) for u in set(users)) <= 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--pooling", "bogus"], "unknown pooling"),
        (["--assignment", "full"], "assignment must be one of"),
        (["--index", "lsh"], "index kind"),
        (["--test-start", "yesterday"], "not an ISO-8601 time"),
    ],
)
def test_cli_bad_options(
    run_cli, small_world_dir: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    code, _, err = run_cli(
        "train-embeddings", "--data", small_world_dir, "--out", tmp_path / "x", *args
    )
    assert code == 2 and needle in err and "Traceback" not in err


@pytest.mark.slow
def test_torchrun_two_cpu_processes(small_world_dir: Path, tmp_path: Path) -> None:
    """DistributedDataParallel on the gloo backend with two CPU processes."""
    torchrun = Path(sys.executable).with_name("torchrun")
    art = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "pipelines.cli",
            "train-embeddings",
            "--data",
            str(small_world_dir),
            "--out",
            str(art),
            "--pooling",
            "netvlad",
            "--epochs",
            "2",
            *FAST[2:],
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_embedding_artifact(art)
    assert len(a.manifest["metrics"]) and len(a.index) > 0
    hist = a.manifest["config"]["train"]
    assert hist["epochs"] == 2


def test_split_by_video_keeps_held_out_videos_out_of_training() -> None:
    from pipelines.train_embeddings import split_by_video

    rng = np.random.default_rng(0)
    rows = rng.integers(0, 50, size=(400, 3))
    val, held = split_by_video(rows, 50, 0.2, seed=1)
    assert held.sum() == 10
    for r, v in zip(rows, val, strict=True):
        assert v == any(held[x] for x in r)  # validation = triplets naming a held-out video
    assert not held[rows[~val]].any()
    again, _ = split_by_video(rows, 50, 0.2, seed=1)
    assert (again == val).all()


@pytest.mark.parametrize(
    "options",
    [
        {"negatives": "semi_hard", "pretrain_epochs": 1},
        {"ubm_init": True, "init_temperature": 4.0, "min_keep": 0.5},
        {"ubm_init": False, "min_keep": 1.0},
        {"anchor_neighbours": 3},
    ],
)
def test_recipe_options_train_and_embed(small_world_dir: Path, options: dict) -> None:
    import torch

    from embeddings.cowatch import EmbedderConfig
    from pipelines.train_embeddings import (
        TrainConfig,
        embed_store,
        load_frame_store,
        train_embedder,
    )

    store = load_frame_store(small_world_dir)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(store), size=(300, 3))
    cfg = TrainConfig(epochs=2, batch_size=64, ubm_frames=2000, **options)
    model_cfg = EmbedderConfig(
        feature_dim=store.feature_dim, num_clusters=4, hidden_dim=16, embedding_dim=8
    )
    res = train_embedder(store, rows[:250], rows[250:], model_cfg, cfg, progress=False)
    assert len(res.history) == 2 and 1 <= res.best_epoch <= 2
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    vectors = embed_store(res.model, store)
    assert vectors.shape == (len(store), 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    if options.get("ubm_init"):
        # Softened: posteriors of real frames are not one-hot.
        frames = torch.from_numpy(store.frames[:500])
        post = res.model.pooling.posteriors(frames[None])[0]  # type: ignore[operator]
        assert float(post.max(1).values.mean()) < 0.99


def test_cowatch_partners_table_and_sampling() -> None:
    from pipelines.train_embeddings import CowatchPartners

    rows = np.array([[0, 1, 5], [1, 0, 4], [0, 2, 3], [3, 3, 1], [4, 2, 0]])
    t = CowatchPartners.from_triplets(rows, 6)
    got = {v: t.indices[t.indptr[v] : t.indptr[v + 1]].tolist() for v in range(6)}
    # anchor-positive pairs in both directions, unique, no self pairs; negatives ignored
    assert got == {0: [1, 2], 1: [0], 2: [0, 4], 3: [], 4: [2], 5: []}
    rng = np.random.default_rng(0)
    s = t.sample(np.array([0, 0, 3, 1]), np.array([1, 5, 1, 0]), 2, rng)
    assert s[0].tolist() == [2, 2]  # only partner left once the positive is excluded
    assert sorted(s[1].tolist()) == [1, 2]  # enough partners: without replacement
    assert s[2].tolist() == [3, 3] and s[3].tolist() == [1, 1]  # none: the anchor itself


def test_centroid_anchor_term_matches_a_direct_computation() -> None:
    """With k partners and exactly k candidates the draw is a permutation, so the loss is
    fixed: Eq. 15 plus Eq. 15 from normalise(anchor + partners)."""
    import torch
    import torch.nn.functional as F

    from embeddings.cowatch import triplet_loss
    from pipelines.train_embeddings import CowatchPartners, _triplet_step_loss
    from recsys.frames import FrameStore

    rng = np.random.default_rng(1)
    n, d = 8, 3
    frames = rng.normal(size=(n * 2, d)).astype(np.float32)
    store = FrameStore([f"v{i}" for i in range(n)], frames, np.arange(0, 2 * n + 1, 2))
    batch = np.array([[0, 1, 2], [3, 4, 5]])
    train = np.array([[0, 1, 7], [0, 6, 7], [0, 7, 2], [3, 4, 5], [3, 2, 5], [3, 6, 1]])
    partners = CowatchPartners.from_triplets(train, n)

    class Mean(torch.nn.Module):  # a stand-in embedder: normalised frame mean
        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            m = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            return F.normalize(m, dim=-1)

    model = Mean()
    got = _triplet_step_loss(
        model,
        store,
        batch,
        4,
        0.3,
        torch.device("cpu"),
        None,
        partners=partners,
        anchor_neighbours=2,
    )
    e = F.normalize(torch.from_numpy(frames.reshape(n, 2, d).mean(1)), dim=-1)
    a, p, neg = e[batch[:, 0]], e[batch[:, 1]], e[batch[:, 2]]
    cen = F.normalize(torch.stack([e[0] + e[6] + e[7], e[3] + e[2] + e[6]]), dim=-1)
    want = triplet_loss(a, p, neg, 0.3) + triplet_loss(cen, p, neg, 0.3)
    assert float(got) == pytest.approx(float(want), abs=1e-6)
    plain = _triplet_step_loss(model, store, batch, 4, 0.3, torch.device("cpu"), None)
    assert float(plain) == pytest.approx(float(triplet_loss(a, p, neg, 0.3)), abs=1e-6)
