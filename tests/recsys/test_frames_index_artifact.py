from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings.cowatch import CowatchEmbedder, EmbedderConfig
from recsys.artifact import (
    embeddings_table,
    load_embedder,
    load_embedding_artifact,
    read_embeddings,
    read_manifest,
    state_dict_bytes,
    write_artifact,
)
from recsys.dataset import VideoBatch
from recsys.errors import UserInputError
from recsys.frames import FrameStore, frames_tensor
from recsys.index import IndexConfig, VideoIndex
from recsys.metrics import auc, pair_auc


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_frame_store_batches() -> None:
    frames = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    vb = VideoBatch(["a", "b", "c"], frames, np.array([0, 1, 4, 10]))
    store = FrameStore.from_batches([vb])
    x, m = store.batch(np.array([0, 2]), max_frames=3)
    assert x.shape == (2, 3, 2)
    assert m.tolist() == [[True, False, False], [True, True, True]]
    np.testing.assert_array_equal(x[1], frames[[4, 6, 9]])  # evenly spaced, deterministic
    xr, _ = store.batch(np.array([2]), max_frames=3, rng=np.random.default_rng(0))
    assert set(map(tuple, xr[0])) <= set(map(tuple, frames[4:10]))
    with pytest.raises(UserInputError, match="unknown video"):
        store.rows(["zzz"])


@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    scattered=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_frames_tensor_dequantises_and_zeroes_padding(
    lengths: list[int], scattered: bool, seed: int
) -> None:
    """uint8 frames become dequantize's floats with every padded frame zero: padding
    as a suffix (what loaders build, filled a tail at a time) and anywhere else."""
    from recsys.dataset import dequantize

    rng = np.random.default_rng(seed)
    t, d = 6, 3
    u8 = rng.integers(0, 256, (len(lengths), t, d), dtype=np.uint8)
    mask = np.arange(t)[None, :] < np.array(lengths)[:, None]
    if scattered:
        mask = rng.random((len(lengths), t)) < 0.5
    got = frames_tensor(u8, "cpu", torch.from_numpy(mask))
    want = np.where(mask[..., None], dequantize(u8), 0.0).astype(np.float32)
    np.testing.assert_array_equal(got.numpy(), want)


def test_frame_subsampling_keeps_a_share_of_real_frames() -> None:
    frames = np.arange(40 * 2, dtype=np.float32).reshape(40, 2)
    store = FrameStore.from_batches([VideoBatch(["a", "b"], frames, np.array([0, 1, 40]))])
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(50):
        x, m = store.batch(np.array([0, 1]), max_frames=64, rng=rng, min_keep=0.5)
        assert m[0].sum() == 1  # a one-frame video keeps its frame
        n = int(m[1].sum())
        counts.append(n)
        assert 20 <= n <= 39 + 1
        rows = {tuple(r) for r in x[1, :n]}
        assert len(rows) == n and rows <= {tuple(r) for r in frames[1:40]}  # distinct, real
    assert min(counts) < 30 < max(counts)  # the share varies
    _, m_eval = store.batch(np.array([1]), max_frames=64, min_keep=0.5)  # no rng: all
    assert m_eval.sum() == 39
    with pytest.raises(ValueError, match="min_keep"):
        store.batch(np.array([1]), 8, rng, min_keep=0.0)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_search_reconstruct_and_round_trip(kind: str) -> None:
    x = _unit(500, 16)
    ids = [f"v{i}" for i in range(500)]
    idx = VideoIndex.build(ids, x, IndexConfig(kind=kind))
    got, scores = idx.search(x[:5], 10)
    # Brute force on the same vectors.
    exact = np.argsort(-(x[:5] @ x.T), axis=1)[:, :10]
    for q in range(5):
        assert got[q][0] == ids[q]
        if kind == "flat":
            assert got[q] == [ids[i] for i in exact[q]]
            np.testing.assert_allclose(scores[q], (x[q] @ x[exact[q]].T), atol=1e-5)
    np.testing.assert_allclose(idx.vector("v42"), x[42])
    again = VideoIndex.from_bytes(idx.to_bytes(), ids, IndexConfig(kind=kind))
    assert again.search(x[:5], 10)[0] == got
    np.testing.assert_allclose(again.vector("v7"), x[7])


def test_index_rejects_bad_input() -> None:
    idx = VideoIndex.build(["a", "b"], _unit(2, 4))
    with pytest.raises(UserInputError, match="duplicate"):
        idx.add(["a"], _unit(1, 4))
    with pytest.raises(UserInputError, match="L2-normalised"):
        idx.add(["c"], np.ones((1, 4), np.float32))
    with pytest.raises(UserInputError, match="NaN"):
        idx.add(["c"], np.full((1, 4), np.nan, np.float32))
    with pytest.raises(UserInputError, match="dimension 3"):
        idx.search(_unit(1, 3), 1)
    with pytest.raises(KeyError):
        idx.vector("zzz")
    with pytest.raises(UserInputError, match="holds 2 vectors"):
        VideoIndex.from_bytes(idx.to_bytes(), ["a"])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 60), seed=st.integers(0, 1000))
def test_top_k_within_catalogue(n: int, k: int, seed: int) -> None:
    x = _unit(n, 8, seed)
    ids = [f"v{i}" for i in range(n)]
    got, scores = VideoIndex.build(ids, x).search(x[:1], k)
    assert len(got[0]) == min(k, n) and len(set(got[0])) == len(got[0])
    assert set(got[0]) <= set(ids)
    assert np.all(np.diff(scores[0]) <= 1e-6)


def test_artifact_is_atomic_verified_and_loadable(tmp_path) -> None:
    cfg = EmbedderConfig(
        feature_dim=4, pooling="dsgmm", num_clusters=2, hidden_dim=8, embedding_dim=4
    )
    torch.manual_seed(0)
    model = CowatchEmbedder(cfg).eval()
    vecs = _unit(3, 4)
    ids = ["a", "b", "c"]
    idx = VideoIndex.build(ids, vecs)
    import json

    files = {
        "embedder.json": json.dumps(cfg.to_dict()).encode(),
        "embedder.pt": state_dict_bytes(model),
        "embeddings.parquet": lambda p: __import__("pyarrow.parquet").parquet.write_table(
            embeddings_table(ids, vecs), p
        ),
        "index.faiss": idx.to_bytes(),
        "index.json": json.dumps({"kind": "flat"}).encode(),
    }
    out = tmp_path / "art"
    write_artifact(out, files, {"metrics": {"x": 1}})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    art = load_embedding_artifact(out)
    assert art.manifest["metrics"] == {"x": 1} and "torch" in art.manifest["versions"]
    np.testing.assert_allclose(art.index.vector("b"), vecs[1])
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(art.embedder(x), model(x))
    got_ids, got = read_embeddings(out / "embeddings.parquet")
    assert got_ids == ids and np.allclose(got, vecs)
    with pytest.raises(UserInputError, match="already exists"):
        write_artifact(out, files, {})
    write_artifact(out, files, {"metrics": {"x": 2}}, overwrite=True)
    assert read_manifest(out)["metrics"] == {"x": 2}
    # Corruption is detected by the hashes.
    (out / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="does not match its hash"):
        load_embedding_artifact(out)
    with pytest.raises(UserInputError, match="not an artifact"):
        read_manifest(tmp_path)


def test_embedder_saved_before_output_centring_still_loads(tmp_path) -> None:
    cfg = EmbedderConfig(feature_dim=4, pooling="avg", hidden_dim=8, embedding_dim=4)
    torch.manual_seed(0)
    model = CowatchEmbedder(cfg).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "output_mean"}
    (tmp_path / "embedder.json").write_text(__import__("json").dumps(cfg.to_dict()))
    torch.save(state, tmp_path / "embedder.pt")
    loaded = load_embedder(tmp_path)
    assert not loaded.output_mean.any()
    x = torch.randn(3, 2, 4)
    torch.testing.assert_close(loaded(x), model(x))


def test_failed_write_leaves_nothing(tmp_path) -> None:
    def boom(path) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_artifact(tmp_path / "art", {"a.bin": b"1", "b.bin": boom}, {})
    assert list(tmp_path.iterdir()) == []


def test_auc_helpers() -> None:
    assert auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])) == 1.0
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))
    # Identical vectors for co-watched pairs: perfectly separated from random pairs.
    x = _unit(50, 8, 1)
    x[1] = x[0]
    x[3] = x[2]
    assert pair_auc(x, np.array([[0, 1], [2, 3]]), num_random=200) > 0.95


def test_an_embedder_config_without_feature_dim_is_refused(tmp_path) -> None:
    """A saved model must state its frame dimension (0 means "from the data" only before
    training): the service refuses the artifact instead of serving rows of length 0."""
    import json

    from recsys.artifact import EMBEDDER_CONFIG, embedder_config, embedder_feature_dim

    (tmp_path / EMBEDDER_CONFIG).write_text(json.dumps({"pooling": "avg"}))
    with pytest.raises(UserInputError, match="states no feature_dim"):
        embedder_config(tmp_path)
    assert embedder_feature_dim(tmp_path) is None
    (tmp_path / EMBEDDER_CONFIG).write_text(json.dumps({"pooling": "avg", "feature_dim": 7}))
    assert embedder_feature_dim(tmp_path) == 7
