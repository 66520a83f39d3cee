"""End-to-end: mine -> train -> embed -> index -> artifact, on a small synthetic world."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.artifact import load_embedding_artifact, read_embeddings, read_manifest

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
    code, out, err = run_cli(
        "train-embeddings", "--data", small_world_dir, "--out", art, *FAST, "--max-frames", "24"
    )
    assert code == 0, err
    assert "held-out co-watch pair AUC" in out
    a = load_embedding_artifact(art)
    m = a.manifest
    assert m["config"]["embedder"]["pooling"] == "dsgmm"
    assert m["config"]["train"]["max_frames"] == 24
    assert m["metrics"]["triplets"]["train"] > 0 and np.isfinite(m["metrics"]["best_val_loss"])
    assert (art / "loss_curve.png").stat().st_size > 1000
    n_videos = pq.ParquetFile(small_world_dir / "videos.parquet").metadata.num_rows
    assert len(a.index) == n_videos
    # recsys embed reproduces the artifact's embeddings (same model, same frames).

    def embed(name: str, *precision: str) -> tuple[int, str]:
        args = ("--artifacts", art, "--data", small_world_dir, "--out", tmp_path / name)
        code, _, err = run_cli("embed", *args, *precision)
        return code, err

    code, err = embed("e.parquet")
    assert code == 0, err
    ids, vecs = read_embeddings(tmp_path / "e.parquet")
    ids0, vecs0 = read_embeddings(art / "embeddings.parquet")
    order = {v: i for i, v in enumerate(ids0)}
    np.testing.assert_allclose(vecs, vecs0[[order[v] for v in ids]], atol=1e-5)
    assert m["metrics"]["inference_precision"] == "float32"
    # ... and in bfloat16 (the CPU's bf16 units): the same directions to within its rounding
    code, err = embed("b.parquet", "--precision", "bfloat16")
    assert code == 0, err
    ids_b, vecs_b = read_embeddings(tmp_path / "b.parquet")
    assert ids_b == ids and vecs_b.dtype == np.float32
    cos = (vecs_b * vecs).sum(1) / np.linalg.norm(vecs_b, axis=1) / np.linalg.norm(vecs, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(vecs_b, vecs)
    code, err = embed("x.parquet", "--precision", "float16")
    assert code == 2 and "precision" in err and "Traceback" not in err
    # Existing artifact: refused without --overwrite.
    code, _, err = run_cli("train-embeddings", "--data", small_world_dir, "--out", art, *FAST)
    assert code == 2 and "already exists" in err
    # Evaluation fits nothing it was not asked to: without GLMix it says what to run.
    before = sorted(p.name for p in art.iterdir())
    code, _, err = run_cli(
        "evaluate", "--data", small_world_dir, "--artifacts", art, "--out", tmp_path / "ev"
    )
    assert code == 2 and "no GLMix model" in err and "recsys fit-glmix" in err
    assert sorted(p.name for p in art.iterdir()) == before


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
        (["--pooling", "bogus"], "a classical rung (avg_frames, bow_tfidf, vlad_kmeans) or auto"),
        (["--assignment", "full"], "assignment must be one of"),
        (["--index", "lsh"], "index kind"),
        (["--test-start", "yesterday"], "not an ISO-8601 time"),
        (["--base-in-steps", "all"], "base_in_steps must be one of sampled, whole_video"),
        (["--max-frames", "0"], "--max-frames"),
        (["--hidden-dim", "0"], "--hidden-dim"),
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


def test_the_model_starts_from_the_rung_validation_prefers(
    run_cli, small_world_dir: Path, tmp_path: Path
) -> None:
    """By default the model learns on top of a rung (chosen on validation) and keeps the
    rung's share of the cosine validation prefers; every catalogue row is what the saved
    model gives for that video's frames. ``--base none`` trains the model alone."""
    from embeddings.registry import RUNGS
    from pipelines.data.frame_cache import open_frame_store
    from pipelines.training.starting_point import WEIGHTS
    from recsys.artifact import load_frame_embedder

    art = tmp_path / "art"
    code, _, err = run_cli("train-embeddings", "--data", small_world_dir, "--out", art, *FAST)
    assert code == 0, err
    m = read_manifest(art)
    emb_cfg, start = m["config"]["embedder"], m["metrics"]["starting_point"]
    assert emb_cfg["base"] == start["chosen"] and emb_cfg["base"] in RUNGS.names()
    assert start["reference"] == "bow_tfidf"
    ahead = [
        n
        for n, c in start["versus_reference"].items()
        if (c["loss_high"] < 0 or c["auc_low"] > 0) and not (c["loss_low"] > 0 or c["auc_high"] < 0)
    ]
    assert (start["chosen"] in ahead) if ahead else (start["chosen"] == "bow_tfidf")
    assert set(start["candidates"]) == set(RUNGS.names())
    assert emb_cfg["base_weight"] == start["weight"]["weight"] and emb_cfg["base_weight"] in WEIGHTS
    assert start["weight"]["trained_weight"] == 0.5
    assert len(start["weight"]["candidates"]) == len(WEIGHTS)
    ids, vecs = read_embeddings(art / "embeddings.parquet")
    full = emb_cfg["base_dim"] + emb_cfg["embedding_dim"]
    size = start["size"]
    assert size["full_dim"] == full and set(size["candidates"]) >= {"full"}
    assert vecs.shape[1] == (emb_cfg["reduced_dim"] or full)
    assert (size["chosen"] == "full") == (emb_cfg["reduced_dim"] == 0)
    store = open_frame_store(small_world_dir)
    embedder = load_frame_embedder(art)
    for row in (0, 7):
        frames = np.asarray(store.frames[store.offsets[row] : store.offsets[row + 1]], np.float32)
        got = embedder.embed(frames)
        np.testing.assert_allclose(got, vecs[ids.index(store.video_ids[row])], atol=1e-5)
    alone = tmp_path / "alone"
    code, _, err = run_cli(
        "train-embeddings", "--data", small_world_dir, "--out", alone, "--base", "none", *FAST
    )
    assert code == 0, err
    m = read_manifest(alone)
    assert m["config"]["embedder"]["base"] == "" and "starting_point" not in m["metrics"]
    code, _, err = run_cli(
        "train-embeddings", "--data", small_world_dir, "--out", tmp_path / "x", "--base", "tf"
    )
    assert code == 2 and "unknown base 'tf'" in err


def test_auto_ships_what_the_gate_prefers_and_a_rung_embeds_like_its_artifact(
    run_cli, small_world_dir: Path, tmp_path: Path
) -> None:
    """``--pooling auto`` trains, compares on validation and ships the winner (a rung
    replaces the learned embedder's files only when ahead beyond the paired interval);
    ``recsys embed`` through a shipped rung gives the artifact's own rows."""
    art = tmp_path / "auto"
    code, out, err = run_cli(
        "train-embeddings", "--data", small_world_dir, "--out", art, "--pooling", "auto", *FAST
    )
    assert code == 0, err
    sel = read_manifest(art)["metrics"]["selection"]
    losses = sel["validation_log_loss"]
    assert set(losses) == {"dsgmm", "avg_frames", "bow_tfidf", "vlad_kmeans"}
    versus = sel["versus_reference"]
    assert set(versus) == {"avg_frames", "bow_tfidf", "vlad_kmeans"}
    ahead = [
        n
        for n, c in versus.items()
        if (c["loss_high"] < 0 or c["auc_low"] > 0) and not (c["loss_low"] > 0 or c["auc_high"] < 0)
    ]
    assert (sel["winner"] in ahead) if ahead else (sel["winner"] == "dsgmm")
    assert f"shipping {sel['winner']}" in out
    shipped = read_manifest(art)["config"]["embedder"]["pooling"]
    assert shipped == sel["winner"]
    assert (art / "classical.npz").exists() == (sel["winner"] != "dsgmm")
    assert (art / "embedder.pt").exists() == (sel["winner"] == "dsgmm")
    rung = tmp_path / "rung"
    code, out, err = run_cli(
        "train-embeddings", "--data", small_world_dir, "--out", rung, "--pooling", "vlad_kmeans"
    )
    assert code == 0 and "the vlad_kmeans rung" in out, err
    code, _, err = run_cli(
        "embed", "--artifacts", rung, "--data", small_world_dir, "--out", tmp_path / "r.parquet"
    )
    assert code == 0, err
    ids, vecs = read_embeddings(tmp_path / "r.parquet")
    ids0, vecs0 = read_embeddings(rung / "embeddings.parquet")
    assert ids == ids0
    np.testing.assert_allclose(vecs, vecs0, atol=1e-5)


def test_classification_takes_no_classical_rung(
    run_cli, small_world_dir: Path, tmp_path: Path
) -> None:
    """A rung name ships a rung for recommendation; classify must refuse it, never train
    another pooling in its place."""
    code, _, err = run_cli(
        "classify", "--data", small_world_dir, "--pooling", "bow_tfidf", "--out", tmp_path / "c"
    )
    assert code == 2 and "unknown pooling 'bow_tfidf'" in err and not (tmp_path / "c").exists()


def test_embed_reads_a_current_frame_store_and_streams_otherwise(
    pipeline_out: Path, small_world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recsys embed`` takes the frames from the data set's frame store when training
    built one (never parsing Parquet's frame lists), a chunk of videos at a time, and
    streams the Parquet file otherwise: the artifact's embeddings either way, in the
    file's order."""
    import shutil

    from pipelines.data.frame_cache import current_frame_store, open_frame_store
    from pipelines.training import embed as job

    art = pipeline_out / "artifact"
    open_frame_store(small_world_dir)  # as training leaves it
    assert current_frame_store(small_world_dir) is not None
    order = pq.read_table(small_world_dir / "videos.parquet", columns=["video_id"])
    ids = order.column("video_id").to_pylist()
    ids0, vecs0 = read_embeddings(art / "embeddings.parquet")
    want = vecs0[[{v: i for i, v in enumerate(ids0)}[v] for v in ids]]

    def streamed(*a: object, **k: object) -> None:
        raise AssertionError("streamed Parquet although the frame store is current")

    with monkeypatch.context() as m:
        m.setattr(job, "iter_video_batches", streamed)
        m.setattr(job, "STORE_CHUNK", 7)  # several chunks, the last one short
        assert job.embed_dataset(art, small_world_dir, tmp_path / "s.parquet", progress=False)
    copy = tmp_path / "copy"  # the same videos without a frame store
    copy.mkdir()
    shutil.copy(small_world_dir / "videos.parquet", copy)
    assert current_frame_store(copy) is None
    job.embed_dataset(art, copy, tmp_path / "p.parquet", progress=False)
    assert current_frame_store(copy) is None  # embedding builds none
    for name in ("s.parquet", "p.parquet"):
        got_ids, got = read_embeddings(tmp_path / name)
        assert got_ids == ids, name
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)
