"""The co-watch embedding without gradients: a validation loss over triplets and the
embedding of a whole catalogue, each video embedded once, a chunk of frames at a time."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from embeddings.cowatch import CowatchEmbedder, triplet_loss
from embeddings.runtime import inference_dtype, resolve_device
from pipelines.data.frame_loader import LoaderConfig, load_batches
from pipelines.training.cowatch_data import CowatchPartners, triplet_batches
from pipelines.training.distributed import all_reduce_mean, dist_info
from recsys.frames import FramePlan, FrameStore, frames_tensor


def loss_of_embeddings(emb: torch.Tensor, b: int, margin: float) -> torch.Tensor:
    """Eq. 15 over ``emb`` = (anchors, positives, negatives, then k partners per anchor);
    with partners plus Eq. 15 from the normalised sum of the anchor and its partners."""
    a, p, n = emb[: 3 * b].chunk(3)
    loss = triplet_loss(a, p, n, margin)
    if len(emb) > 3 * b:
        centroid = F.normalize(a + emb[3 * b :].reshape(b, -1, emb.shape[1]).sum(1), dim=-1)
        loss = loss + triplet_loss(centroid, p, n, margin)
    return loss


#: frame values one forward pass without gradients takes at once (validation, embedding
#: the catalogue): long videos of wide frames are embedded a few at a time
EVAL_CHUNK_VALUES = 1 << 24


def embed_frames(
    model: torch.nn.Module,
    frames: torch.Tensor,
    mask: torch.Tensor,
    device: torch.device,
    base_rows: torch.Tensor | None = None,
    base_words: torch.Tensor | None = None,
) -> torch.Tensor:
    """model(frames, mask) -> (B, E); without gradients (eval mode: every video on its
    own) in chunks of at most ``EVAL_CHUNK_VALUES`` frame values, so memory does not
    grow with the frames per video. ``base_rows (B, base_dim)``: the model's base output
    for these videos, when known (``BaseRows``); else ``base_words (B, T)``: its frames'
    nearest base words, when known (``FrameWords``)."""
    b, t, d = frames.shape
    step = b if model.training else max(1, EVAL_CHUNK_VALUES // max(t * d, 1))
    parts = []
    for i in range(0, b, step):
        x = frames_tensor(frames[i : i + step], device, mask[i : i + step])
        m = mask[i : i + step].to(device)
        if base_rows is not None:
            parts.append(model(x, m, base_rows=base_rows[i : i + step]))
        elif base_words is not None:
            parts.append(model(x, m, base_words=base_words[i : i + step]))
        else:
            parts.append(model(x, m))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass(frozen=True)
class FrameWords:
    """Each store frame's nearest word of a model's base codebook, found once before
    training: a word belongs to the frame, not to the sample a step draws, so a step's
    base (``TrainConfig.base_in_steps == "sampled"``) looks its frames' words up instead
    of measuring K distances a frame again (that product was ~15% of a pipeline-shaped
    step). A byte or two a frame, memory-mapped from a temporary file: a catalogue's
    words never have to sit in memory at once."""

    words: np.ndarray  # (sum T,) the store's frames' words, memory-mapped
    file: IO[bytes]  # the unlinked temporary file behind ``words`` (kept open)

    def batch(self, plan: FramePlan) -> torch.Tensor:
        """(videos, t) int64 words of a padded batch's frames (0 in the padding)."""
        out = np.zeros((plan.num_videos, plan.t), dtype=np.int64)
        out[plan.video, plan.slot] = self.words[plan.frame_rows]
        return torch.from_numpy(out)


@torch.no_grad()
def frame_words(
    model: CowatchEmbedder, store: FrameStore, device: torch.device, chunk: int = 1 << 14
) -> FrameWords | None:
    """``FrameWords`` of every frame of ``store`` (None: the model has no base, or its
    base reads no words)."""
    if model.base is None or not model.base.uses_words:
        return None
    base = model.base.to(device)
    k = int(base.codebook.shape[0])
    dtype = np.uint8 if k <= 256 else np.int16 if k <= 1 << 15 else np.int32
    file = tempfile.TemporaryFile()  # noqa: SIM115  (it lives as long as the words)
    words = np.memmap(file, dtype=dtype, mode="w+", shape=(max(len(store.frames), 1),))
    for a in range(0, len(store.frames), chunk):
        # a copy of the chunk: the store's frames may be a read-only memory map
        x = frames_tensor(np.array(store.frames[a : a + chunk]), device)
        words[a : a + len(x)] = base.frame_words(x).cpu().numpy().astype(dtype)
    return FrameWords(words, file)


@dataclass(frozen=True)
class BaseRows:
    """A model's fixed base (``CowatchEmbedder.base``) run once on each video training
    names, over the frames the catalogue's embedding uses (at most ``eval_max_frames``,
    evenly spaced). Validation takes these rows every epoch (the same loss as running
    the base there). Steps take them only with ``TrainConfig.base_in_steps ==
    "whole_video"``: faster steps (1.3x when the base was a quarter of a pipeline-shaped
    step; less since its words are found once, ``FrameWords``), but lower AUCs on some
    worlds, because the loss then sees the whole video's rung rather than the rung on the
    step's sampled frames (docs/results.md)."""

    videos: np.ndarray  # (n,) sorted distinct store rows
    rows: torch.Tensor  # (n, base_dim) float32, on the training device

    def take(self, videos: np.ndarray) -> torch.Tensor:
        """(len(videos), base_dim) the rows of store rows ``videos`` (each must be held)."""
        at = np.searchsorted(self.videos, videos)
        held = at < len(self.videos)
        if not held.all() or not np.array_equal(self.videos[at], videos):
            raise KeyError("a video without a base row")
        return self.rows[torch.from_numpy(at).to(self.rows.device)]


@torch.no_grad()
def base_rows(
    model: CowatchEmbedder,
    store: FrameStore,
    videos: np.ndarray,
    max_frames: int,
    device: torch.device,
    loader: LoaderConfig | None = None,
) -> BaseRows | None:
    """The base's output for each distinct store row in ``videos`` (None without a base)."""
    if model.base is None:
        return None
    needed = np.unique(videos)
    base = model.base.eval()
    rows = _embed_rows(base, store, needed, max_frames, device, loader)
    return BaseRows(needed, rows.float())


@torch.no_grad()
def evaluate_loss(
    net: torch.nn.Module,
    store: FrameStore,
    rows: np.ndarray,
    device: torch.device,
    *,
    batch_size: int,
    max_frames: int,
    margin: float,
    loader: LoaderConfig | None = None,
    partners: CowatchPartners | None = None,
    anchor_neighbours: int = 0,
    base: BaseRows | None = None,
) -> float:
    """Eq. 15 (and the partner term) over validation triplet ``rows`` in eval mode: every
    video a triplet names is embedded once (all frames up to ``max_frames``, evenly
    spaced), the losses then come from that table; partners are drawn as in training
    batches, the same way every epoch. ``base``: the model's base rows, when computed."""
    rank, world = dist_info()
    net.eval()
    shard = rows[rank::world]
    k = anchor_neighbours if partners is not None else 0
    batches = []
    for batch in triplet_batches(shard, batch_size, None):
        videos = batch.T.reshape(-1)
        if k:
            extra = partners.sample(  # type: ignore[union-attr]
                batch[:, 0], batch[:, 1], k, np.random.default_rng(0)
            )
            videos = np.concatenate([videos, extra.reshape(-1)])
        batches.append((len(batch), videos))
    needed = np.unique(np.concatenate([v for _, v in batches])) if batches else shard[:0, 0]
    table = _embed_rows(net, store, needed, max_frames, device, loader, base=base)
    total, count = 0.0, 0
    for b, videos in batches:
        emb = table[torch.from_numpy(np.searchsorted(needed, videos)).to(device)]
        total += float(loss_of_embeddings(emb, b, margin)) * b
        count += b
    return all_reduce_mean(total, count, device)


@torch.no_grad()
def _embed_rows(
    net: torch.nn.Module,
    store: FrameStore,
    rows: np.ndarray,
    max_frames: int,
    device: torch.device,
    loader: LoaderConfig | None,
    batch_size: int = 256,
    progress: bool = False,
    base: BaseRows | None = None,
) -> torch.Tensor:
    """(len(rows), E) embeddings on ``device`` of store ``rows`` (eval mode, at most
    ``max_frames`` evenly spaced frames each), batched by length (less padding);
    ``base``: the model's base rows, when computed."""
    order = rows[np.argsort(store.lengths[rows], kind="stable")]
    where = np.empty(len(rows), dtype=np.int64)
    where[np.argsort(store.lengths[rows], kind="stable")] = np.arange(len(rows))
    plans = (
        (
            np.arange(s, min(s + batch_size, len(order))),
            store.plan(order[s : s + batch_size], max_frames, None),
        )
        for s in range(0, len(order), batch_size)
    )
    parts: list[torch.Tensor] = []
    total = math.ceil(len(order) / batch_size)
    batches = load_batches(store, plans, device, loader)
    for at, frames, mask in tqdm(batches, total=total, desc="embedding", disable=not progress):
        known = None if base is None else base.take(order[at])
        parts.append(embed_frames(net, frames, mask, device, known))
    if not parts:
        return torch.zeros((0, 1), device=device)
    return torch.cat(parts)[torch.from_numpy(where).to(device)]


@torch.no_grad()
def embed_store(
    model: CowatchEmbedder,
    store: FrameStore,
    batch_size: int = 256,
    max_frames: int = 300,
    device: str = "auto",
    progress: bool = False,
    loader: LoaderConfig | None = None,
    precision: str = "float32",
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(N, E) L2-normalised embeddings of every video in the store (or of store ``rows``),
    in store order (at most ``max_frames`` evenly spaced frames per video); the model runs
    in ``precision`` (``embeddings.runtime.inference_dtype``)."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    rows = np.arange(len(store)) if rows is None else rows
    net = model.for_inference(inference_dtype(precision, dev))
    out = _embed_rows(net, store, rows, max_frames, dev, loader, batch_size, progress)
    model.cpu()
    return out.float().cpu().numpy()
