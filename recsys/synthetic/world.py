"""A synthetic co-watch world whose ground truth is known.

No real co-watch log can be downloaded, so we generate one that has the
structure the paper relies on:

* **Frames.** Each topic owns a few frame "components" (scene types); every
  video mixes one to three topics and, within each topic, a sparse subset of its
  components. Every video also has a *style* (one of ``num_styles``) that shifts
  each of its components in a component-specific direction, so style lives
  *within* clusters: averaging all frames blends it with the topic mixture, a
  per-cluster mean keeps it. About a third of all frames come from components
  shared by all videos (intros, credits, logos) and have a large norm, as
  near-duplicate frames do in real catalogues: they dominate a plain average of
  the frames and carry no information about the video. Frame counts are
  log-normal, from two frames to hundreds, so many clusters of a video get few
  or no frames - the regime where smoothing (Eq. 10) matters.
* **Labels.** A coarse label per topic and a fine label per prominent
  (topic, component) pair, so classification needs cluster-level detail.
* **Users.** A sparse preference over topic components and over styles, a
  propensity to watch (intercept) and a sensitivity to affinity (slope) - what
  GLMix's random effects are meant to capture. Affinity weighs style as much as
  content.
* **Impressions.** Sessions of up to 30 minutes over ``days`` days; candidates
  come from videos already uploaded (new uploads run through the whole period,
  so the last quarter has cold-start videos). ``P(watch)`` is a logistic function
  of propensity + sensitivity * affinity + video appeal and is returned as truth.
* **Appeal.** Videos differ in how much they are watched whoever sees them, strongly
  and with a long right tail (a log-normal shaped logit term, ``quality_*``), as real
  watch rates do. Half of it shows in the frames (production quality: a direction of
  frame space), half does not: only a video's own impressions reveal that part. The
  true appeal is the last column of ``video_truth``'s features.

Everything is vectorised numpy; the generator returns pyarrow tables and never
touches the file system.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.dataset import DEQUANT_BIAS, DEQUANT_SCALE, frames_to_arrow
from recsys.synthetic.config import FRAME_DTYPES, SynthConfig

__all__ = ["FRAME_DTYPES", "SynthConfig", "SyntheticWorld", "generate_world", "world_end"]

WORLD_START = datetime(2026, 1, 5, tzinfo=UTC)
SESSION_SECONDS = 30 * 60
#: frame values generated per step (a chunk's float64 temporaries stay ~32 MB each)
_CHUNK_VALUES = 1 << 22

#: ``allocate(num_frames, D, dtype)``: the array generated frames are written into
#: (``np.empty`` by default; a caller writing a catalogue larger than memory passes a
#: memory map)
Allocate = Callable[[int, int, np.dtype[Any]], np.ndarray]


def _in_memory(n: int, d: int, dtype: np.dtype[Any]) -> np.ndarray:
    return np.empty((n, d), dtype=dtype)


def quantize(frames: np.ndarray) -> np.ndarray:
    """uint8 codes whose ``dequantize`` is nearest to ``frames`` (clipped to [-2, 2])."""
    q = np.round((frames - DEQUANT_BIAS) / DEQUANT_SCALE)
    return np.clip(q, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticWorld:
    #: every column of videos.parquet but ``frames`` (see ``videos``, ``video_batches``)
    video_meta: pa.Table
    #: (sum T, D) frames in ``config.frame_dtype``, video i owning the next lengths[i] rows
    frames: np.ndarray
    lengths: np.ndarray
    impressions: pa.Table
    truth: pa.Table
    config: SynthConfig
    #: per video: the true features the watch probability depends on (component
    #: mixture and one-hot style): what a perfect content embedding would know
    video_truth: pa.Table | None = None
    #: users.parquet (``user_id``, ``device``) when the world has side signals
    users: pa.Table | None = None

    @property
    def videos(self) -> pa.Table:
        """The whole videos table, frames included (small worlds; see ``video_batches``)."""
        return self._with_frames(self.video_meta, 0, len(self.lengths))

    def video_batches(self, max_bytes: int = 16 << 20) -> Iterator[pa.Table]:
        """The videos table a run of whole videos at a time, each run about ``max_bytes``
        of frames (at most 512 videos): for writing a catalogue larger than memory."""
        per_video = max(1.0, float(self.lengths.mean()) * self.frames.shape[1]) * (
            self.frames.dtype.itemsize
        )
        step = int(np.clip(max_bytes // per_video, 1, 512))
        for start in range(0, len(self.lengths), step):
            stop = min(start + step, len(self.lengths))
            yield self._with_frames(self.video_meta.slice(start, stop - start), start, stop)

    def _with_frames(self, meta: pa.Table, start: int, stop: int) -> pa.Table:
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        frames = np.asarray(self.frames[offsets[start] : offsets[stop]])
        column = frames_to_arrow(frames, self.lengths[start:stop])
        return meta.add_column(1, "frames", column)


def _timestamps(seconds_from_start: np.ndarray) -> pa.Array:
    micros = np.int64(WORLD_START.timestamp()) * 1_000_000 + (seconds_from_start * 1e6).astype(
        np.int64
    )
    return pa.array(micros, pa.timestamp("us", tz="UTC"))


@dataclass
class _Catalogue:
    """The generated videos and what the impressions need of them."""

    table: pa.Table  # without frames
    frames: np.ndarray
    lengths: np.ndarray
    video_ids: np.ndarray
    primary: np.ndarray  # (V,) primary topic
    comp_w: np.ndarray  # (V, TC) component mixture
    created: np.ndarray  # (V,) upload time, seconds from the start
    quality: np.ndarray  # (V,)
    video_style: np.ndarray  # (V,)


def _catalogue(cfg: SynthConfig, rng: np.random.Generator, allocate: Allocate) -> _Catalogue:
    v, d, nt, nc = cfg.num_videos, cfg.feature_dim, cfg.num_topics, cfg.components_per_topic
    tc = nt * nc
    span = cfg.days * 86400.0

    # ---- frame components: topic centres, components around them, shared components
    topic_centres = rng.normal(0.0, 1.0, (nt, d))
    comp_means = (topic_centres[:, None, :] + rng.normal(0.0, 0.7, (nt, nc, d))).reshape(tc, d)
    shared_means = rng.normal(0.0, cfg.shared_scale, (max(cfg.shared_components, 1), d))

    # ---- videos: topics, component mixture, frame counts, upload times
    n_topics_v = rng.choice([1, 2, 3], size=v, p=[0.55, 0.3, 0.15])
    topic_w = np.zeros((v, nt))
    primary = rng.integers(0, nt, v)
    for i in range(v):  # tiny per-video work (<= 3 topics); kept explicit for clarity
        extra = rng.choice(nt, size=n_topics_v[i] - 1, replace=False) if n_topics_v[i] > 1 else []
        topics = np.unique(np.concatenate([[primary[i]], extra]).astype(int))
        w = rng.dirichlet(np.ones(len(topics)))
        topic_w[i, topics] = w
        topic_w[i, primary[i]] += 1.0  # the primary topic dominates
    topic_w /= topic_w.sum(1, keepdims=True)
    within = rng.dirichlet(np.full(nc, 0.4), size=(v, nt))  # sparse components per topic
    comp_w = (topic_w[:, :, None] * within).reshape(v, tc)
    f = cfg.shared_fraction
    shared_frac = (
        rng.beta(2.0, 2.0 * (1.0 - f) / f, v) if cfg.shared_components and f > 0 else np.zeros(v)
    )
    lengths = np.clip(
        np.round(np.exp(rng.normal(np.log(cfg.median_frames), 1.0, v))),
        cfg.min_frames,
        cfg.max_frames,
    ).astype(np.int64)
    hidden = rng.normal(0.0, 1.0, v)  # the part of a video's appeal no frame shows
    look = rng.normal(0.0, 0.1, (v, d))  # per-video look (lighting, camera)
    quality, visible, direction = _appeal(cfg, hidden)
    if cfg.quality_visible > 0:  # production quality: every topical frame moves along it
        look = look + cfg.quality_frame_shift * visible[:, None] * direction[None, :]
    ns = max(cfg.num_styles, 1)
    style_shift = rng.normal(0.0, cfg.style_scale, (ns, tc, d))  # style s moves component c
    video_style = rng.integers(0, ns, v)
    n_pre = round(cfg.catalogue_at_start * v)
    created = np.concatenate(
        [-rng.uniform(0, 30 * 86400.0, n_pre), rng.uniform(0, span, v - n_pre)]
    )
    created = created[rng.permutation(v)]
    frames = allocate(int(lengths.sum()), d, np.dtype(cfg.frame_dtype))
    _frames(
        rng,
        lengths,
        shared_frac,
        comp_w,
        comp_means,
        shared_means,
        look,
        style_shift,
        video_style,
        frames,
        cfg.frame_noise,
    )

    # ---- labels: coarse topic labels + fine (topic, component) labels that are prominent
    label_lists: list[list[int]] = []
    for i in range(v):
        labs = [int(t) for t in np.flatnonzero(topic_w[i] >= 0.2)]
        labs += [nt + int(c) for c in np.flatnonzero(comp_w[i] >= 0.25)]
        label_lists.append(sorted(set(labs)))
    split = rng.choice(np.array(["train", "validation", "test"]), size=v, p=[0.8, 0.1, 0.1])
    video_ids = np.array([f"v{i:06d}" for i in range(v)])
    table = pa.table(
        {
            "video_id": pa.array(video_ids, pa.string()),
            "labels": pa.array(label_lists, pa.list_(pa.int32())),
            "created_at": _timestamps(created),
            "split": pa.array(split, pa.string()),
        }
    )
    return _Catalogue(
        table, frames, lengths, video_ids, primary, comp_w, created, quality, video_style
    )


def _appeal(cfg: SynthConfig, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each video's appeal q (V,), the visible part's standard normal (V,), the frame
    direction it moves (D,)): z = sqrt(1 - f) hidden + sqrt(f) visible, q a log-normal
    shaped function of z (``SynthConfig.quality_skew``). The visible part and direction
    come from their own stream, so a world without them draws everything else as before."""
    extra = np.random.default_rng([cfg.seed, 7919])
    visible = extra.normal(0.0, 1.0, len(hidden))
    direction = extra.normal(0.0, 1.0, cfg.feature_dim)
    direction /= np.linalg.norm(direction)
    f = cfg.quality_visible
    z = np.sqrt(1.0 - f) * hidden + np.sqrt(f) * visible if f > 0 else hidden
    s = cfg.quality_skew
    if s > 0:
        quality = cfg.quality_scale * (np.exp(s * z) - np.exp(0.5 * s * s)) / s
    else:
        quality = cfg.quality_scale * z
    return quality, visible, direction


def _frames(
    rng: np.random.Generator,
    lengths: np.ndarray,
    shared_frac: np.ndarray,
    comp_w: np.ndarray,
    comp_means: np.ndarray,
    shared_means: np.ndarray,
    look: np.ndarray,
    style_shift: np.ndarray,
    video_style: np.ndarray,
    out: np.ndarray,
    noise_sd: float = 0.5,
) -> None:
    """``out`` (sum(lengths), D): every frame a shared component (intro/credits) or a
    topical one moved by the video's look and style, plus noise; float32, or halved and
    quantised for uint8. Vectorised over a chunk of frames at a time, drawing the noise
    in the same order as one draw would (the world does not depend on the chunk size)."""
    v, d = len(lengths), comp_means.shape[1]
    owner = np.repeat(np.arange(v), lengths)
    nf = len(owner)
    is_shared = rng.random(nf) < shared_frac[owner]
    cum = np.cumsum(comp_w, axis=1)
    cum[:, -1] = 1.0
    u = rng.random(nf)
    comp = np.empty(nf, dtype=np.int64)
    for start in range(0, nf, 65536):  # chunked: (chunk, TC) booleans
        sl = slice(start, start + 65536)
        comp[sl] = (cum[owner[sl]] < u[sl, None]).sum(1)
    shared_idx = rng.integers(0, len(shared_means), nf)
    step = max(1, _CHUNK_VALUES // d)
    for start in range(0, nf, step):
        sl = slice(start, start + step)
        own, c, shared = owner[sl], comp[sl], is_shared[sl]
        means = np.where(shared[:, None], shared_means[shared_idx[sl]], comp_means[c])
        shift = style_shift[video_style[own], c]
        noise = rng.normal(0.0, noise_sd, (len(own), d))
        frames = means + (look[own] + shift) * (~shared)[:, None] + noise
        out[sl] = quantize(frames / 2.0) if out.dtype == np.uint8 else frames.astype(np.float32)
        if isinstance(out, np.memmap) and (start // step) % 16 == 15:
            out.flush()  # written-back pages can be dropped: dirty ones count against a cap


@dataclass
class _Users:
    topic: np.ndarray  # (U, T) topic preferences
    pref: np.ndarray  # (U, TC) component preferences
    style: np.ndarray  # (U, S) style preferences
    propensity: np.ndarray  # (U,) watch intercept
    sensitivity: np.ndarray  # (U,) slope on affinity
    activity: np.ndarray  # (U,) sessions per day


def _users(cfg: SynthConfig, rng: np.random.Generator) -> _Users:
    """Sparse component preferences, propensity, sensitivity, activity."""
    nu, nt, nc = cfg.num_users, cfg.num_topics, cfg.components_per_topic
    ns = max(cfg.num_styles, 1)
    user_topic = rng.dirichlet(np.full(nt, 0.25), size=nu)
    user_within = rng.dirichlet(np.full(nc, 0.6), size=(nu, nt))
    user_pref = (user_topic[:, :, None] * user_within).reshape(nu, nt * nc)
    user_style = rng.dirichlet(np.full(ns, 0.5), size=nu)
    propensity = rng.normal(-1.2, 0.8, nu)
    sensitivity = np.exp(rng.normal(np.log(1.5), 0.4, nu))
    activity = np.exp(rng.normal(0.0, 0.8, nu))
    activity *= cfg.sessions_per_user_day / activity.mean()
    return _Users(user_topic, user_pref, user_style, propensity, sensitivity, activity)


def _sessions(
    cfg: SynthConfig, rng: np.random.Generator, activity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(user, shown time) of every impression: sessions per user, impressions per session
    at sorted offsets inside it."""
    span = cfg.days * 86400.0
    n_sessions = rng.poisson(activity * cfg.days)
    s_user = np.repeat(np.arange(cfg.num_users), n_sessions)
    s_start = rng.uniform(0, span - SESSION_SECONDS, len(s_user))
    s_len = 1 + rng.poisson(cfg.impressions_per_session - 1, len(s_user))
    imp_session = np.repeat(np.arange(len(s_user)), s_len)
    imp_user = s_user[imp_session]
    # Offsets inside the session: sorted uniforms in [0, 30 min).
    offs = rng.uniform(0, SESSION_SECONDS - 1, len(imp_session))
    order = np.lexsort((offs, imp_session))
    offs = offs[order]
    return imp_user, s_start[imp_session] + offs


def _candidates(
    rng: np.random.Generator,
    nt: int,
    imp_user: np.ndarray,
    shown: np.ndarray,
    user_topic: np.ndarray,
    cat: _Catalogue,
) -> np.ndarray:
    """The video of each impression: mostly the user's topics (the feed targets interests),
    the rest anything; recent uploads are favoured; only uploaded videos."""
    n_imp = len(imp_user)
    primary, created = cat.primary, cat.created
    targeted = rng.random(n_imp) < 0.6
    ucum = np.cumsum(user_topic, axis=1)
    ucum[:, -1] = 1.0
    ut = rng.random(n_imp)
    imp_topic = np.where(
        targeted, (ucum[imp_user] < ut[:, None]).sum(1), rng.integers(0, nt, n_imp)
    )
    imp_video = np.full(n_imp, -1, dtype=np.int64)
    recency = rng.random(n_imp) ** 2
    all_order = np.argsort(created)
    all_created = created[all_order]
    for t in range(nt):
        sel = np.flatnonzero(imp_topic == t)
        vids_t = np.flatnonzero(primary == t)
        if len(vids_t) == 0 or len(sel) == 0:
            continue
        vids_t = vids_t[np.argsort(created[vids_t])]
        avail = np.searchsorted(created[vids_t], shown[sel], side="right")
        ok = avail > 0
        pick = (avail - 1 - np.floor(avail * recency[sel]).astype(np.int64)).clip(0)
        imp_video[sel[ok]] = vids_t[pick[ok]]
    rest = np.flatnonzero(imp_video < 0)
    avail = np.searchsorted(all_created, shown[rest], side="right").clip(1)
    pick = (avail - 1 - np.floor(avail * recency[rest]).astype(np.int64)).clip(0)
    imp_video[rest] = all_order[pick]
    return imp_video


#: each device's effect on the watch logit, per unit of ``side_signals``, and its share
DEVICES = {"mobile": (0.0, 0.6), "desktop": (-0.6, 0.3), "tv": (1.2, 0.1)}


def side_signals(
    cfg: SynthConfig, user_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, pa.Array, pa.Table]:
    """(each video's logit term (V,), each user's (U,), videos' length_s, users.parquet):
    a video's length (log-normal around 5 minutes; minus ``side_signals`` per standard
    deviation of its log) and a user's device (``DEVICES``). Drawn from their own stream,
    so the rest of the world is the one without them."""
    rng = np.random.default_rng([cfg.seed, 0x51DE])
    log_len = rng.normal(np.log(300.0), 0.8, cfg.num_videos)
    names = np.array(list(DEVICES))
    device = rng.choice(names, size=cfg.num_users, p=[DEVICES[n][1] for n in names])
    effect = np.array([DEVICES[str(n)][0] for n in device])
    users = pa.table(
        {"user_id": pa.array(user_ids, pa.string()), "device": pa.array(device, pa.string())}
    )
    length = pa.array(np.round(np.exp(log_len), 1), pa.float64())
    s = cfg.side_signals
    return -s * _standardise(log_len), s * effect, length, users


def _standardise(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / (a.std() + 1e-12)


def generate_world(cfg: SynthConfig, allocate: Allocate = _in_memory) -> SyntheticWorld:
    """The world of ``cfg``; its frames are written into ``allocate(...)`` (see ``Allocate``)."""
    rng = np.random.default_rng(cfg.seed)
    cat = _catalogue(cfg, rng, allocate)
    users = _users(cfg, rng)
    imp_user, shown = _sessions(cfg, rng, users.activity)
    imp_video = _candidates(rng, cfg.num_topics, imp_user, shown, users.topic, cat)
    n_imp = len(imp_user)

    # Watch probability: user intercept + user slope * standardised affinity + quality.
    content = np.einsum("ij,ij->i", users.pref[imp_user], cat.comp_w[imp_video])
    style_aff = users.style[imp_user, cat.video_style[imp_video]]
    aff = _standardise(
        cfg.content_weight * _standardise(content) + cfg.style_weight * _standardise(style_aff)
    )
    logit = users.propensity[imp_user] + users.sensitivity[imp_user] * aff + cat.quality[imp_video]
    user_ids = np.array([f"u{i:06d}" for i in range(cfg.num_users)])
    video_meta, users_table = cat.table, None
    if cfg.side_signals > 0:
        video_term, user_term, length, users_table = side_signals(cfg, user_ids)
        logit = logit + video_term[imp_video] + user_term[imp_user]
        video_meta = video_meta.append_column("length_s", length)
    p_watch = 1.0 / (1.0 + np.exp(-logit))
    watched = rng.random(n_imp) < p_watch
    watch_seconds = np.where(
        watched,
        10.0 + rng.exponential(40.0, n_imp),
        np.where(rng.random(n_imp) < 0.5, 0.0, rng.uniform(0.0, 9.99, n_imp)),
    )
    # Log order is by time, as a log would be.
    by_time = np.argsort(shown, kind="stable")
    shown_col = _timestamps(shown[by_time])
    impressions = pa.table(
        {
            "user_id": pa.array(user_ids[imp_user[by_time]], pa.string()),
            "video_id": pa.array(cat.video_ids[imp_video[by_time]], pa.string()),
            "shown_at": shown_col,
            "watch_seconds": pa.array(watch_seconds[by_time], pa.float64()),
        }
    )
    truth = pa.table(
        {
            "user_id": impressions.column("user_id"),
            "video_id": impressions.column("video_id"),
            "shown_at": shown_col,
            "watch_probability": pa.array(p_watch[by_time], pa.float64()),
            "affinity": pa.array(aff[by_time], pa.float64()),
        }
    )
    ns = max(cfg.num_styles, 1)
    # What the watch probability depends on per video: its content, its style, its appeal.
    true_features = np.concatenate(
        [cat.comp_w, np.eye(ns)[cat.video_style], cat.quality[:, None]], axis=1
    )
    video_truth = pa.table(
        {
            "video_id": pa.array(cat.video_ids, pa.string()),
            "features": pa.array(list(true_features.astype(np.float32)), pa.list_(pa.float32())),
        }
    )
    return SyntheticWorld(
        video_meta=video_meta,
        frames=cat.frames,
        lengths=cat.lengths,
        impressions=impressions,
        truth=truth,
        config=cfg,
        video_truth=video_truth,
        users=users_table,
    )


def world_end(cfg: SynthConfig) -> datetime:
    return WORLD_START + timedelta(days=cfg.days)
