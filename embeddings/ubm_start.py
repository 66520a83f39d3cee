"""Starting a pooling layer from an EM-trained UBM (Eq. 20-21), for every trainer.

Layers that need a UBM (vlad, sgmm: ``Pooling.needs_ubm``) cannot run without one; the
trainable cluster layers (netvlad, dsgmm, netrvlad, netfv, netbow: ``has_clusters``)
only start from one. As Eq. 20-21 give them, the assignments
start nearly hard and barely train; dividing the logits by a temperature > 1 keeps them
soft (measured in docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from embeddings.gmm import GMM, fit_gmm
from embeddings.pooling import Pooling, PoolingOptions, SoftAssignmentPooling, pooling_class


@dataclass(frozen=True)
class UBMStart:
    """How a trainer starts the pooling layer from a UBM."""

    #: start trainable cluster layers from the UBM (vlad/sgmm always use one)
    enabled: bool = True
    #: divide the UBM-initialised assignment logits by this (> 1 keeps them soft)
    temperature: float = 4.0
    #: frames sampled to fit the UBM
    frames: int = 50_000

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"the UBM start's temperature must be > 0, got {self.temperature}")
        if self.frames < 1:
            raise ValueError(f"the UBM start needs frames >= 1, got {self.frames}")

    def applies_to(self, pooling: str) -> bool:
        """Whether a layer of this kind starts from a UBM."""
        layer = pooling_class(pooling)
        return layer.needs_ubm or (self.enabled and layer.has_clusters)

    def start(
        self,
        layer: Pooling,
        options: PoolingOptions,
        sample: Callable[[int], np.ndarray],
        seed: int,
    ) -> GMM | None:
        """Start a model's pooling ``layer`` (of the kind ``options`` names) from a UBM
        fitted on ``sample(self.frames)`` frames (N, D), when this start applies to it;
        None when it does not. ValueError when there are fewer frames than clusters."""
        if not self.applies_to(options.pooling):
            return None
        return start_from_ubm(
            layer, sample(self.frames), options.num_clusters, self.temperature, seed
        )


def start_from_ubm(
    pooling: Pooling, frames: np.ndarray, num_clusters: int, temperature: float, seed: int
) -> GMM:
    """Fit a shared-full-covariance UBM by EM on ``frames (N, D)`` and start ``pooling``
    from it; soft-assignment layers are then softened by ``temperature``.

    A shared full covariance makes the decoupled initialisation (Eq. 20-21) exact.
    Raises ValueError when there are fewer frames than clusters.
    """
    x = torch.from_numpy(np.asarray(frames)).double()
    if len(x) < num_clusters:
        raise ValueError(f"{num_clusters} clusters need at least as many frames, have {len(x)}")
    batches = lambda: (x[i : i + 8192] for i in range(0, len(x), 8192))  # noqa: E731
    ubm = fit_gmm(batches, num_clusters, "shared_full", max_iter=30, seed=seed).gmm
    pooling.from_ubm(ubm)
    if isinstance(pooling, SoftAssignmentPooling):
        pooling.soften_assignment(temperature)
    return ubm
