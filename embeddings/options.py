"""The pooling layers' options, stated once (``PoolingOptions`` is what a model config
extends; ``PoolingConfig`` is one layer's view, with its frame dimension). The layers'
names are their registry's (``embeddings.registry.POOLINGS``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from embeddings.registry import POOLINGS

ASSIGNMENTS: tuple[str, ...] = (
    "decoupled",
    "uniform_priors",
    "shared_spherical",
    "spherical",
    "shared_diagonal",
    "diagonal",
)
NORM_EPS = 1e-12


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """The options of the cluster-and-aggregate layers, stated once: a layer's
    ``PoolingConfig`` and a model's ``PoolingOptions`` both carry them. Defaults follow
    the paper's best setting."""

    num_clusters: int = 64
    #: smoothing strength of Eq. 12 (sgmm, dsgmm); 0 = ML means, large = UBM means
    gamma: float = 0.125
    #: L2-normalise each cluster's D-vector
    intra_norm: bool = True
    #: L2-normalise the whole representation
    final_norm: bool = False
    #: "decoupled" or one of the coupled GMM variants (netvlad, dsgmm)
    assignment: str = "decoupled"

    def __post_init__(self) -> None:
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {self.num_clusters}")
        if not (self.gamma >= 0 and math.isfinite(self.gamma)):
            raise ValueError(f"gamma must be finite and >= 0, got {self.gamma}")
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}")


@dataclass(frozen=True)
class PoolingConfig(ClusterOptions):
    """One layer's configuration: the cluster options for frames of ``feature_dim``."""

    feature_dim: int

    def __post_init__(self) -> None:
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class PoolingOptions(ClusterOptions):
    """A model's pooling: the layer by name plus its options. ``EmbedderConfig`` and
    ``ClassifierConfig`` extend it, so the option set is stated here only."""

    #: a layer of ``embeddings.registry.POOLINGS``
    pooling: str = "dsgmm"

    def __post_init__(self) -> None:
        POOLINGS.check(self.pooling)
        super().__post_init__()
