"""The training loop: recipe options train and embed; the loss terms against direct computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddings.ubm_start import UBMStart


@pytest.mark.parametrize(
    "options",
    [
        {"negatives": "semi_hard", "pretrain_epochs": 1},
        {"ubm": UBMStart(enabled=True, temperature=4.0, frames=2000), "min_keep": 0.5},
        {"ubm": UBMStart(enabled=False, frames=2000), "min_keep": 1.0},
        {"anchor_neighbours": 3},
    ],
)
def test_recipe_options_train_and_embed(small_world_dir: Path, options: dict) -> None:
    import torch

    from embeddings.cowatch import EmbedderConfig
    from pipelines.data.frame_cache import open_frame_store
    from pipelines.training.cowatch_embedding import embed_store
    from pipelines.training.cowatch_training import TrainConfig, train_embedder

    store = open_frame_store(small_world_dir)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(store), size=(300, 3))
    cfg = TrainConfig(epochs=2, batch_size=64, **{"ubm": UBMStart(frames=2000), **options})
    model_cfg = EmbedderConfig(
        feature_dim=store.feature_dim, num_clusters=4, hidden_dim=16, embedding_dim=8
    )
    res = train_embedder(store, rows[:250], rows[250:], model_cfg, cfg, progress=False)
    assert len(res.history) == 2 and 1 <= res.best_epoch <= 2
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    vectors = embed_store(res.model, store)
    assert vectors.shape == (len(store), 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    if "ubm" in options and options["ubm"].enabled:
        # Softened: posteriors of real frames are not one-hot.
        frames = torch.from_numpy(store.sample_frames(500))
        post = res.model.pooling.posteriors(frames[None])[0]  # type: ignore[operator]
        assert float(post.max(1).values.mean()) < 0.99


def test_centroid_anchor_term_matches_a_direct_computation() -> None:
    """With k partners and exactly k candidates the draw is a permutation, so the loss is
    fixed: Eq. 15 plus Eq. 15 from normalise(anchor + partners)."""
    import torch
    import torch.nn.functional as F

    from embeddings.cowatch import triplet_loss
    from pipelines.training.cowatch_data import CowatchPartners
    from pipelines.training.cowatch_training import TrainConfig, _triplet_loss, _triplet_plans
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

    model = Mean().eval()
    cpu = torch.device("cpu")

    def loss(cfg: TrainConfig, partners: CowatchPartners | None) -> float:
        ((rows, plan),) = list(_triplet_plans(store, batch, cfg, None, partners))
        frames, mask = store.gather(plan)
        got = _triplet_loss(model, rows, torch.from_numpy(frames), torch.from_numpy(mask), cfg, cpu)
        return float(got)

    cfg = TrainConfig(batch_size=2, eval_max_frames=4, margin=0.3, anchor_neighbours=2)
    got = loss(cfg, partners)
    e = F.normalize(torch.from_numpy(frames.reshape(n, 2, d).mean(1)), dim=-1)
    a, p, neg = e[batch[:, 0]], e[batch[:, 1]], e[batch[:, 2]]
    cen = F.normalize(torch.stack([e[0] + e[6] + e[7], e[3] + e[2] + e[6]]), dim=-1)
    want = triplet_loss(a, p, neg, 0.3) + triplet_loss(cen, p, neg, 0.3)
    assert got == pytest.approx(float(want), abs=1e-6)
    plain = loss(cfg, None)
    assert plain == pytest.approx(float(triplet_loss(a, p, neg, 0.3)), abs=1e-6)


def test_an_epoch_samples_at_most_epoch_triplets(
    small_world_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each epoch trains on a fresh sample of epoch_triplets (its cost stops growing with
    the log) and validation on a fixed sample of val_triplets; a cap above the counts
    changes nothing."""
    import torch

    import pipelines.training.cowatch_training as ct
    from embeddings.cowatch import EmbedderConfig
    from pipelines.data.frame_cache import open_frame_store

    store = open_frame_store(small_world_dir)
    rows = np.random.default_rng(0).integers(0, len(store), (120, 3))
    model_cfg = EmbedderConfig(
        feature_dim=store.feature_dim, num_clusters=4, hidden_dim=8, embedding_dim=4
    )
    seen: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    real_epoch, real_eval = ct._train_epoch, ct.evaluate_loss

    def spy_epoch(net, params, opt, store, rows, *rest):  # type: ignore[no-untyped-def]
        seen["train"].append(rows.copy())
        return real_epoch(net, params, opt, store, rows, *rest)

    def spy_eval(net, store, rows, *rest, **kw):  # type: ignore[no-untyped-def]
        seen["val"].append(rows.copy())
        return real_eval(net, store, rows, *rest, **kw)

    monkeypatch.setattr(ct, "_train_epoch", spy_epoch)
    monkeypatch.setattr(ct, "evaluate_loss", spy_eval)
    cfg = ct.TrainConfig(epochs=2, batch_size=16, epoch_triplets=40, val_triplets=10)
    ct.train_embedder(store, rows[:100], rows[100:], model_cfg, cfg, progress=False)
    a, b = seen["train"]
    assert len(a) == len(b) == 40 and not np.array_equal(a, b)
    assert all(len(v) == 10 for v in seen["val"]) and np.array_equal(*seen["val"])
    # Caps above the counts: the same model as no caps at all.
    weights = []
    for caps in ((0, 0), (1000, 1000)):
        cfg = ct.TrainConfig(epochs=2, batch_size=16, epoch_triplets=caps[0], val_triplets=caps[1])
        res = ct.train_embedder(store, rows[:100], rows[100:], model_cfg, cfg, progress=False)
        weights.append(res.model.state_dict())
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())


def test_precision_choice() -> None:
    import torch

    from embeddings.runtime import autocast_dtype, native_bfloat16
    from pipelines.training.cowatch_training import TrainConfig

    cpu = torch.device("cpu")
    assert autocast_dtype("float32", cpu) is None
    assert autocast_dtype("bfloat16", cpu) == torch.bfloat16
    want = torch.bfloat16 if native_bfloat16(cpu) else None
    assert autocast_dtype("auto", cpu) == want
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("half", cpu)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


def test_bfloat16_steps_track_float32_and_keep_float32_weights(small_world_dir: Path) -> None:
    """Mixed precision changes the rounding of the forward's products, not the model:
    the same seed's losses agree closely, and weights and embeddings stay float32."""
    import torch

    from embeddings.cowatch import EmbedderConfig
    from pipelines.data.frame_cache import open_frame_store
    from pipelines.training.cowatch_embedding import embed_store
    from pipelines.training.cowatch_training import TrainConfig, train_embedder

    store = open_frame_store(small_world_dir)
    rows = np.random.default_rng(0).integers(0, len(store), size=(300, 3))
    model_cfg = EmbedderConfig(
        feature_dim=store.feature_dim, num_clusters=4, hidden_dim=16, embedding_dim=8
    )
    runs = {
        p: train_embedder(
            store,
            rows[:250],
            rows[250:],
            model_cfg,
            TrainConfig(epochs=2, batch_size=64, precision=p),
            progress=False,
        )
        for p in ("float32", "bfloat16")
    }
    assert runs["float32"].precision == "float32" and runs["bfloat16"].precision == "bfloat16"
    low = runs["bfloat16"]
    assert all(p.dtype == torch.float32 for p in low.model.parameters())
    assert embed_store(low.model, store).dtype == np.float32
    for a, b in zip(runs["float32"].history, low.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.05)
    # Not a no-op: the rounding did change the trajectory.
    assert runs["float32"].history[-1]["train_loss"] != low.history[-1]["train_loss"]


@pytest.mark.parametrize("in_steps", ["sampled", "whole_video"])
def test_a_base_runs_once_per_video_for_validation_and_in_steps_only_when_sampled(
    small_world_dir: Path, monkeypatch: pytest.MonkeyPatch, in_steps: str
) -> None:
    """The fixed base's rows are computed once (``BaseRows``) and validation takes them;
    steps run the base on their sampled frames, or take the rows too (``whole_video``)."""
    import torch

    import pipelines.training.cowatch_training as ct
    from embeddings.classical import ClassicalBase
    from embeddings.cowatch import EmbedderConfig
    from pipelines.data.frame_cache import open_frame_store

    store = open_frame_store(small_world_dir)
    rows = np.random.default_rng(0).integers(0, len(store), (60, 3))
    model_cfg = EmbedderConfig(
        feature_dim=store.feature_dim, num_clusters=4, hidden_dim=8, embedding_dim=4,
        base="vlad_kmeans", base_words=4, base_dim=6,
    )  # fmt: skip

    def prepare(model):  # type: ignore[no-untyped-def]
        raw = model.base.pca_mean.shape[0]
        comps = torch.linalg.qr(torch.randn(raw, 6))[0].T.contiguous()
        model.base.load_arrays(torch.zeros(raw), comps, torch.randn(4, store.feature_dim))

    calls = {"base": 0, "in_epochs": 0}
    real_forward, real_epoch = ClassicalBase.forward, ct._train_epoch

    def counting(self, *args):  # type: ignore[no-untyped-def]
        calls["base"] += 1
        return real_forward(self, *args)

    def epoch(*args):  # type: ignore[no-untyped-def]
        before = calls["base"]
        out = real_epoch(*args)
        calls["in_epochs"] += calls["base"] - before
        return out

    monkeypatch.setattr(ClassicalBase, "forward", counting)
    monkeypatch.setattr(ct, "_train_epoch", epoch)
    cfg = ct.TrainConfig(epochs=2, batch_size=16, base_in_steps=in_steps)
    res = ct.train_embedder(store, rows[:45], rows[45:], model_cfg, cfg, False, prepare=prepare)
    # one batch of base rows (the world's 200 videos fit one), none in validation; in the
    # epochs one a step (45 triplets in batches of 16: 3 steps an epoch) or none
    steps = 6 if in_steps == "sampled" else 0
    assert calls["in_epochs"] == steps and calls["base"] == 1 + steps
    assert len(res.history) == 2 and all(np.isfinite(h["val_loss"]) for h in res.history)
