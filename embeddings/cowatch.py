"""The co-watch embedding model f(g(v)) and the triplet loss (section 3.4.1, Eq. 15)."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.classical import ClassicalBase
from embeddings.gmm import GMM
from embeddings.pooling import ClusterPooling, Pooling, PoolingOptions, build_pooling_from
from embeddings.registry import POOLINGS, RUNGS


@dataclass(frozen=True)
class EmbedderConfig(PoolingOptions):
    """g(v): a pooling layer (``PoolingOptions``: name, clusters, gamma, ...);
    f: Linear -> BatchNorm -> ReLU -> Linear -> L2-normalise."""

    #: frame dimension D; 0 = not known yet (the training job takes it from the data)
    feature_dim: int = 0
    #: 32 suits catalogues of thousands of videos; the paper's 256 is for millions
    num_clusters: int = field(default=32, kw_only=True)
    hidden_dim: int = 256
    embedding_dim: int = 64
    #: dropout on the pooled vector during training (the pooled vectors are large and
    #: distinctive enough to memorise individual videos)
    dropout: float = 0.0
    #: also feed sqrt(n(k) / T), each cluster's share of the frames, to the projector
    #: (netvlad/dsgmm only): intra-normalised clusters otherwise hide how much of the
    #: video a cluster holds, which is what a bag of words captures
    occupancy: bool = False
    #: a classical rung the model starts from and learns on top of ("" = none; one of
    #: ``embeddings.registry.RUNGS``): the output is [sqrt(w) base(v), sqrt(1 - w)
    #: f(g(v))], so a cosine is w times the rung's plus (1 - w) times the learned one's
    base: str = ""
    base_words: int = 64  # the base's k-means words (bow_tfidf, vlad_kmeans)
    base_dim: int = 0  # the base's PCA size
    base_weight: float = 0.5  # w
    #: the output reduced to this many leading principal directions of the catalogue's
    #: embeddings, then L2-normalised (0 = not reduced; chosen on validation after training)
    reduced_dim: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base:
            RUNGS.check(self.base)
        if self.base and (self.base_dim < 1 or self.base_words < 1):
            raise ValueError("a base needs base_dim >= 1 and base_words >= 1")
        if not 0.0 <= self.base_weight <= 1.0:
            raise ValueError("base_weight must be in [0, 1]")
        if not 0 <= self.reduced_dim <= self.full_dim:
            raise ValueError(f"reduced_dim must be in [0, {self.full_dim}]")
        if self.feature_dim < 0:
            raise ValueError(f"feature_dim must be >= 0, got {self.feature_dim}")
        if self.hidden_dim < 1 or self.embedding_dim < 1:
            raise ValueError("hidden_dim and embedding_dim must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.occupancy and not POOLINGS[self.pooling].offers_occupancy:
            layers = POOLINGS.names(lambda cls: cls.offers_occupancy)
            raise ValueError(f"occupancy needs a cluster pooling ({' or '.join(layers)})")

    @property
    def full_dim(self) -> int:
        """The base's PCA size (when any) plus ``embedding_dim``: the output before any
        reduction."""
        return self.embedding_dim + (self.base_dim if self.base else 0)

    @property
    def output_dim(self) -> int:
        """The embedding's size."""
        return self.reduced_dim or self.full_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown embedder config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


class CowatchEmbedder(nn.Module):
    """frames (B, T, D), mask (B, T) -> L2-normalised embeddings (B, O).

    O = E (``embedding_dim``) alone, or base_dim + E with a ``base``: the rung's unit row
    scaled by sqrt(w) beside the learned unit row scaled by sqrt(1 - w). The base is fixed,
    so training learns what the rung misses (a residual on the starting point), and w can
    be chosen after training on validation (w = 1 is the starting point itself).

    ``output_mean (E,)`` is subtracted from the normalised projection before the final
    normalisation. It is zero while training (the map is then exactly Eq. 15's f) and
    set by :meth:`set_output_mean` to the catalogue's mean embedding afterwards: triplet
    training leaves every embedding sharing a large common direction (random pairs at
    cosine ~0.7 measured), which says nothing about a video yet dominates the average
    similarity of Eq. 16 across users. Centring removes it and keeps the neighbours.
    """

    output_mean: torch.Tensor
    reduce_mean: torch.Tensor | None
    reduce_components: torch.Tensor | None

    def __init__(self, cfg: EmbedderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.pooling: Pooling = build_pooling_from(cfg, cfg.feature_dim)
        in_dim = self.pooling.out_dim + (cfg.num_clusters if cfg.occupancy else 0)
        # Batch norm after the first layer: pooled vectors of different videos share a
        # large common part (with intra-norm, clusters a video barely visits all sit
        # at their normalised UBM mean), which otherwise starts every embedding at
        # nearly the same point (mean cosine ~0.99 measured) and stalls the triplet loss.
        self.projector = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(in_dim, cfg.hidden_dim),
            nn.BatchNorm1d(cfg.hidden_dim),
            nn.ReLU(),
            nn.Linear(cfg.hidden_dim, cfg.embedding_dim),
        )
        self.register_buffer("output_mean", torch.zeros(cfg.embedding_dim))
        self.base: ClassicalBase | None = None
        if cfg.base:
            self.base = ClassicalBase(cfg.base, cfg.feature_dim, cfg.base_words, cfg.base_dim)
        # None (not in the state dict) until a reduction is chosen (``set_reduction``)
        reduced = cfg.reduced_dim > 0
        self.register_buffer("reduce_mean", torch.zeros(cfg.full_dim) if reduced else None)
        self.register_buffer(
            "reduce_components", torch.zeros(cfg.reduced_dim, cfg.full_dim) if reduced else None
        )

    @property
    def needs_ubm(self) -> bool:
        """vlad/sgmm cannot run without a UBM; the trainable layers only start from one."""
        return POOLINGS[self.config.pooling].needs_ubm

    def from_ubm(self, ubm: GMM) -> CowatchEmbedder:
        self.pooling.from_ubm(ubm)
        return self

    def pooled(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """g(v): (B, T, D) frames -> (B, F) input of the projector."""
        if not self.config.occupancy:
            return self.pooling(frames, mask)
        assert isinstance(self.pooling, ClusterPooling)
        pooled, occupancy = self.pooling.pool_with_occupancy(frames, mask)
        # Hellinger map sqrt(share), scaled by sqrt(K) so that its norm (sqrt(K) for any
        # video with frames) matches the K intra-normalised clusters'. The small floor
        # keeps the gradient of sqrt finite for empty clusters.
        k = self.config.num_clusters
        return torch.cat([pooled, torch.sqrt(occupancy * k + 1e-6)], dim=1)

    def for_inference(self, dtype: torch.dtype) -> CowatchEmbedder:
        """This model for embedding without gradients with its pooling and projector in
        ``dtype``: bfloat16 runs their matrix products on the CPU's bf16 units (AMX,
        AVX512-BF16) or a GPU's; float32 gives the model itself. Frames go in and
        embeddings come out in float32; a base rung stays float32."""
        if dtype == torch.float32:
            return self
        low = copy.deepcopy(self).eval()
        low.pooling.to(dtype)
        low.projector.to(dtype)
        return low

    def forward(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor | None = None,
        base_rows: torch.Tensor | None = None,
        base_words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames (B, T, D), mask (B, T) -> (B, O). ``base_rows (B, base_dim)``: the base's
        output for these videos when the caller has it already (the base is fixed, so
        training computes each video's once: ``pipelines.training.cowatch_embedding.
        BaseRows``); otherwise the base runs on ``frames``, with ``base_words (B, T)``
        each frame's nearest word when the caller found them before
        (``ClassicalBase.frame_words``)."""
        last = self.projector[-1]
        assert isinstance(last, nn.Linear)
        low = last.weight.dtype  # float32, or what ``for_inference`` chose
        h = self.projector(self.pooled(frames.to(low), mask))
        z = F.normalize(h.to(frames.dtype), dim=-1)
        z = F.normalize(z - self.output_mean, dim=-1)
        if self.base is not None:
            if base_rows is None:
                # The rung's statistic in float32 whatever the autocast: its hard
                # assignment and PCA are those of the ladder, not an approximation of them.
                with torch.autocast(frames.device.type, enabled=False):
                    base_rows = self.base(frames, mask, base_words)
            z = self.combine(base_rows.float(), z.float(), self.config.base_weight)
        if self.reduce_components is None:
            return z
        assert self.reduce_mean is not None
        return F.normalize((z.float() - self.reduce_mean) @ self.reduce_components.T, dim=-1)

    @torch.no_grad()
    def set_reduction(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        """Reduce future outputs to ``components (d, full_dim)`` after centring on
        ``mean (full_dim,)``, and L2-normalise (``config.reduced_dim`` becomes d)."""
        d, full = components.shape
        if full != self.config.full_dim or mean.shape != (full,):
            raise ValueError(f"a reduction of ({self.config.full_dim},) outputs expected")
        self.config = replace(self.config, reduced_dim=d)
        self.reduce_mean = mean.float().clone()
        self.reduce_components = components.float().clone()

    @staticmethod
    def combine(base: torch.Tensor, learned: torch.Tensor, weight: float) -> torch.Tensor:
        """[sqrt(w) base, sqrt(1 - w) learned] of unit rows (N, base_dim), (N, E)."""
        return torch.cat([base * math.sqrt(weight), learned * math.sqrt(1.0 - weight)], dim=-1)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit base rows (N, base_dim) and learned rows (N, E) of outputs (N, O)
        (0 < w < 1; a part with zero weight cannot be recovered)."""
        if self.reduce_components is not None:
            raise ValueError("a reduced output cannot be split")
        w, d = self.config.base_weight, self.config.base_dim if self.base is not None else 0
        if d == 0:
            return out[:, :0], out
        if not 0.0 < w < 1.0:
            raise ValueError("split needs 0 < base_weight < 1")
        return out[:, :d] / math.sqrt(w), out[:, d:] / math.sqrt(1.0 - w)

    @torch.no_grad()
    def set_output_mean(self, uncentred: torch.Tensor) -> None:
        """Centre future outputs on the mean of ``uncentred (N, E)``, embeddings this model
        produced with a zero ``output_mean``."""
        if uncentred.ndim != 2 or uncentred.shape[1] != self.config.embedding_dim:
            raise ValueError(f"expected (N, {self.config.embedding_dim}) embeddings")
        self.output_mean.copy_(uncentred.mean(0).to(self.output_mean.dtype))


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Eq. 15 averaged over the batch: max(|a - p|^2 - |a - n|^2 + margin, 0); inputs (B, E)."""
    d_pos = (anchor - positive).square().sum(-1)
    d_neg = (anchor - negative).square().sum(-1)
    return F.relu(d_pos - d_neg + margin).mean()


def semi_hard_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    candidates: torch.Tensor,
    allowed: torch.Tensor,
    margin: float = 0.2,
) -> torch.Tensor:
    """Eq. 15 with the negative mined in the batch (FaceNet's semi-hard rule).

    anchor, positive: (B, E); candidates: (M, E); allowed: (B, M) bool, which candidates
    may serve as a negative for each anchor. For anchor i the negative is the closest
    allowed candidate farther away than the positive; when there is none, the farthest
    allowed one (FaceNet, section 3.2: the hardest negatives collapse the model early).
    Anchors without any allowed candidate are left out; with none at all the loss is 0.
    """
    if allowed.shape != (anchor.shape[0], candidates.shape[0]):
        raise ValueError(
            f"allowed must be (B, M) = {(anchor.shape[0], candidates.shape[0])}, "
            f"got {tuple(allowed.shape)}"
        )
    d_pos = (anchor - positive).square().sum(-1)  # (B,)
    d_all = torch.cdist(anchor, candidates).square()  # (B, M)
    inf = torch.full_like(d_all, math.inf)
    semi = allowed & (d_all > d_pos.unsqueeze(1))
    closest_semi = torch.where(semi, d_all, inf).min(1).values
    farthest = torch.where(allowed, d_all, -inf).max(1).values
    d_neg = torch.where(torch.isfinite(closest_semi), closest_semi, farthest)
    has = allowed.any(1)
    if not bool(has.any()):
        return anchor.sum() * 0.0
    return F.relu(d_pos[has] - d_neg[has] + margin).mean()
