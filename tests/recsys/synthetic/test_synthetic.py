from __future__ import annotations

import itertools

import numpy as np
import pyarrow.compute as pc
import pytest

from recsys.dataset import decode_video_batch
from recsys.synthetic.world import SynthConfig, generate_world
from recsys.validation import validate_impressions, validate_videos


@pytest.fixture(scope="module")
def world():
    return generate_world(SynthConfig(seed=1, num_videos=600, num_users=200, days=21))


def test_deterministic_for_a_seed() -> None:
    cfg = SynthConfig(seed=7, num_videos=50, num_users=20, days=5)
    a, b = generate_world(cfg), generate_world(cfg)
    assert a.videos.equals(b.videos) and a.impressions.equals(b.impressions)
    c = generate_world(SynthConfig(seed=8, num_videos=50, num_users=20, days=5))
    assert not a.impressions.equals(c.impressions)


def test_world_satisfies_the_contract(world) -> None:
    vsum, vprob = validate_videos(world.videos.schema, world.videos.to_batches(100))
    assert vprob == []
    isum, iprob = validate_impressions(
        world.impressions.schema, world.impressions.to_batches(), vsum.video_ids
    )
    assert iprob == []
    assert vsum.num_videos == 600 and vsum.feature_dim == world.config.feature_dim
    assert isum.num_impressions == world.impressions.num_rows > 0


def test_frame_counts_span_short_to_long(world) -> None:
    vb = decode_video_batch(world.videos)
    t = vb.lengths
    assert t.min() >= world.config.min_frames == 2 and t.max() <= world.config.max_frames
    assert (t <= 5).mean() > 0.05, "many videos must be short so clusters get few frames"
    assert (t >= 80).mean() > 0.02, "and some long, 5x the median and more"


def test_a_third_of_frames_are_shared_and_large(world) -> None:
    """The hard traits of real catalogues: intro/credit frames shared by every video, with a
    norm far above the topical frames' (sqrt(D) * 3 vs about sqrt(2 D) here)."""
    vb = decode_video_batch(world.videos)
    norms = np.linalg.norm(vb.frames, axis=1)
    d = world.config.feature_dim
    large = norms > 2.2 * np.sqrt(d)
    assert 0.25 < large.mean() < 0.42
    calm = generate_world(
        SynthConfig(seed=1, num_videos=100, num_users=20, days=5, shared_fraction=0.0)
    )
    calm_norms = np.linalg.norm(decode_video_batch(calm.videos).frames, axis=1)
    assert (calm_norms > 2.2 * np.sqrt(d)).mean() < 0.02
    with pytest.raises(ValueError, match="shared_fraction"):
        SynthConfig(shared_fraction=1.0)


def test_cold_start_videos_in_last_quarter(world) -> None:
    imp = world.impressions
    shown = imp.column("shown_at")
    lo, hi = pc.min(shown).as_py(), pc.max(shown).as_py()
    test_start = lo + (hi - lo) * 0.75
    created = dict(
        zip(
            world.videos.column("video_id").to_pylist(),
            world.videos.column("created_at").to_pylist(),
            strict=True,
        )
    )
    late = [v for v, c in created.items() if c >= test_start]
    assert len(late) > 0.1 * len(created)
    # Some impressions show cold-start videos; none shows a video before its upload.
    vids = imp.column("video_id").to_pylist()
    times = shown.to_pylist()
    assert all(created[v] <= t for v, t in zip(vids, times, strict=True))
    assert (
        sum(1 for v, t in zip(vids, times, strict=True) if t >= test_start and v in set(late)) > 0
    )


def test_truth_aligned_and_predictive(world) -> None:
    imp, truth = world.impressions, world.truth
    assert truth.num_rows == imp.num_rows
    assert truth.column("video_id").equals(imp.column("video_id"))
    p = truth.column("watch_probability").to_numpy()
    watched = imp.column("watch_seconds").to_numpy() >= 10.0
    assert p.min() > 0 and p.max() < 1
    # The empirical watch rate follows the true probability (calibration by decile).
    order = np.argsort(p)
    low, high = order[: len(p) // 10], order[-len(p) // 10 :]
    assert watched[low].mean() < p[low].mean() + 0.05
    assert watched[high].mean() > p[high].mean() - 0.05
    assert watched[high].mean() > watched[low].mean() + 0.3


def test_labels_reflect_topics(world) -> None:
    labels = world.videos.column("labels").to_pylist()
    assert all(len(lab) >= 1 for lab in labels)
    assert max(max(lab) for lab in labels) < world.config.num_labels


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_videos"):
        SynthConfig(num_videos=0)


def test_digits_videos_show_their_labels() -> None:
    from sklearn.datasets import load_digits

    from recsys.synthetic.digits import digits_videos

    table = digits_videos(num_videos=40, max_frames=6, seed=2)
    vb = decode_video_batch(table)
    assert vb.frames.shape[1] == 64 and vb.lengths.min() >= 2 and vb.lengths.max() <= 6
    data = load_digits()
    lookup = {
        tuple((img / 16.0).astype(np.float32)): int(t)
        for img, t in zip(data.data, data.target, strict=True)
    }
    for i, labels in enumerate(table.column("labels").to_pylist()):
        shown = {lookup[tuple(f)] for f in vb.video(i)}
        assert shown <= set(labels) and 1 <= len(labels) <= 3
    with pytest.raises(ValueError):
        digits_videos(num_videos=0)


def test_the_world_does_not_depend_on_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys.synthetic.world as synthetic

    cfg = SynthConfig(seed=4, num_videos=60, num_users=20, days=5)
    whole = generate_world(cfg)
    monkeypatch.setattr(synthetic, "_CHUNK_VALUES", 100)  # a few frames per step
    chunked = generate_world(cfg)
    assert whole.videos.equals(chunked.videos) and whole.impressions.equals(chunked.impressions)
    import pyarrow as pa

    parts = pa.concat_tables(list(whole.video_batches(max_bytes=3000)))
    assert parts.equals(whole.videos) and len(list(whole.video_batches(max_bytes=3000))) > 3


def test_uint8_frames_are_the_halved_world_quantised() -> None:
    from recsys.dataset import DEQUANT_SCALE, dequantize

    base = SynthConfig(seed=2, num_videos=40, num_users=10, days=3)
    flt = generate_world(base)
    q = generate_world(SynthConfig(**{**base.__dict__, "frame_dtype": "uint8"}))
    assert q.frames.dtype == np.uint8 and q.impressions.equals(flt.impressions)
    half = flt.frames / 2.0
    inside = np.abs(half) < 1.98
    err = np.abs(dequantize(q.frames) - half)
    assert err[inside].max() <= DEQUANT_SCALE / 2 + 1e-6
    assert inside.mean() > 0.8  # most values fit the [-2, 2] range; outliers clip
    with pytest.raises(ValueError, match="frame_dtype"):
        SynthConfig(frame_dtype="float16")


def test_frames_can_be_written_into_a_callers_array(tmp_path) -> None:
    cfg = SynthConfig(seed=1, num_videos=30, num_users=10, days=3)
    seen = {}

    def allocate(n: int, d: int, dtype: np.dtype) -> np.ndarray:
        seen["shape"] = (n, d)
        return np.memmap(tmp_path / "f.bin", dtype=dtype, mode="w+", shape=(n, d))

    mapped = generate_world(cfg, allocate)
    assert isinstance(mapped.frames, np.memmap) and seen["shape"] == mapped.frames.shape
    assert mapped.videos.equals(generate_world(cfg).videos)


def test_where_the_signal_lives_is_a_setting() -> None:
    """content_weight / style_weight move the affinity between what a video holds and how
    it looks (each part standardised, so only their ratio matters); frame_noise moves the
    frames alone. The frames and impressions drawn are otherwise the same."""
    small = {"num_videos": 60, "num_users": 30, "days": 4, "feature_dim": 8}

    def aff(w: SynthConfig) -> np.ndarray:
        return w.truth.column("affinity").to_numpy()

    base = generate_world(SynthConfig(**small))
    content = generate_world(SynthConfig(**small, style_weight=0.0))
    content2 = generate_world(SynthConfig(**small, style_weight=0.0, content_weight=2.0))
    style = generate_world(SynthConfig(**small, content_weight=0.0))
    np.testing.assert_allclose(aff(content), aff(content2), atol=1e-12)
    assert not np.allclose(aff(content), aff(base)) and not np.allclose(aff(style), aff(base))
    assert abs(np.corrcoef(aff(content), aff(style))[0, 1]) < 0.5
    np.testing.assert_array_equal(content.frames, base.frames)
    noisy = generate_world(SynthConfig(**small, frame_noise=1.5))
    assert noisy.frames.std() > base.frames.std()
    assert noisy.impressions.equals(base.impressions)
    for bad in ({"content_weight": 0.0, "style_weight": 0.0}, {"frame_noise": -1.0}):
        with pytest.raises(ValueError):
            SynthConfig(**bad)


def _per_video(world) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true appeal, watch rate, count) per video in video_truth order."""
    truth = world.video_truth
    ids = truth.column("video_id").to_pylist()
    appeal = np.stack(truth.column("features").to_numpy(zero_copy_only=False))[:, -1]
    imp = world.impressions
    where = {v: i for i, v in enumerate(ids)}
    rows = np.array([where[v] for v in imp.column("video_id").to_pylist()])
    watched = imp.column("watch_seconds").to_numpy() >= 10.0
    count = np.bincount(rows, minlength=len(ids))
    rate = np.bincount(rows, weights=watched, minlength=len(ids)) / np.maximum(count, 1)
    return appeal.astype(np.float64), rate, count


def test_videos_differ_in_appeal_strongly_with_a_long_right_tail() -> None:
    world = generate_world(SynthConfig(seed=2, num_videos=800, num_users=400, days=14))
    appeal, rate, count = _per_video(world)
    z = (appeal - appeal.mean()) / appeal.std()
    assert abs(appeal.mean()) < 0.1 and 0.6 < appeal.std() < 1.4
    assert float((z**3).mean()) > 1.0  # right-skewed: a few videos far above the rest
    seen = count >= 30
    lo, hi = np.quantile(rate[seen], [0.1, 0.9])
    assert hi / lo > 2.5  # watch rates differ several-fold between videos
    # The truth's appeal column is what the log says of each video.
    assert np.corrcoef(appeal[seen], rate[seen])[0, 1] > 0.6


def test_part_of_the_appeal_shows_in_the_frames_and_old_worlds_stay_as_they_were() -> None:
    from recsys.synthetic.config import OLD_QUALITY

    small = {"seed": 4, "num_videos": 600, "num_users": 60, "days": 3, "feature_dim": 16}

    def predictable(world) -> float:
        """Held-out correlation of a ridge fit from each video's mean frame to its appeal."""
        appeal = _per_video(world)[0]
        offsets = np.concatenate([[0], np.cumsum(world.lengths)])
        means = np.stack([world.frames[a:b].mean(0) for a, b in itertools.pairwise(offsets)])
        x = np.c_[np.ones(len(means)), means]
        fit, test = slice(0, 400), slice(400, None)
        w = np.linalg.solve(x[fit].T @ x[fit] + 1.0 * np.eye(x.shape[1]), x[fit].T @ appeal[fit])
        return float(np.corrcoef(x[test] @ w, appeal[test])[0, 1])

    shown = generate_world(SynthConfig(**small))
    hidden = generate_world(SynthConfig(**small, quality_visible=0.0))
    assert predictable(shown) > 0.3 and abs(predictable(hidden)) < 0.2
    # quality_visible = 0 leaves the frames as drawn before; the old settings are normal.
    old = generate_world(SynthConfig(**small, **OLD_QUALITY))
    np.testing.assert_array_equal(old.frames, hidden.frames)
    old_appeal = _per_video(old)[0]
    assert abs(float(((old_appeal / old_appeal.std()) ** 3).mean())) < 0.5
    assert 0.25 < old_appeal.std() < 0.35
    for bad in ({"quality_visible": 1.5}, {"quality_skew": -1.0}, {"quality_scale": -0.1}):
        with pytest.raises(ValueError):
            SynthConfig(**bad)
