"""Frame pooling layers and GMMs (torch only; never opens files).

``build_pooling(name, feature_dim, num_clusters, **options)`` selects a method by name.
Every pooling layer and every classical rung is declared once, registering itself in
``POOLINGS`` / ``RUNGS`` (``embeddings.registry``); importing the package imports the
modules that declare them, so the registries are full before anything asks.

Importing the package keeps glibc from unmapping large freed blocks (see
``embeddings.runtime.configure_cpu_allocator``: 2x faster pooling on the CPU);
``RECSYS_KEEP_MALLOC=1`` in the environment opts out.
"""

from embeddings.gmm import GMM, EMResult, fit_gmm, kmeans
from embeddings.heads import ContextGating, MixtureOfExperts, MoEConfig
from embeddings.pooling import (
    ASSIGNMENTS,
    DSGMM,
    POOLINGS,
    AveragePooling,
    NetVLAD,
    Pooling,
    PoolingConfig,
    PoolingOptions,
    UBMPooling,
    build_pooling,
    pooling_class,
)
from embeddings.pooling_miech import NetBOW, NetFV, NetRVLAD
from embeddings.registry import RUNGS
from embeddings.rungs import Rung, rung
from embeddings.runtime import configure_on_import
from embeddings.stats import (
    SufficientStats,
    smoothed_gmm,
    smoothed_means,
    sufficient_statistics,
    vlad,
)
from embeddings.ubm_start import UBMStart, start_from_ubm

configure_on_import()

__all__ = [
    "ASSIGNMENTS",
    "DSGMM",
    "GMM",
    "POOLINGS",
    "RUNGS",
    "AveragePooling",
    "ContextGating",
    "EMResult",
    "MixtureOfExperts",
    "MoEConfig",
    "NetBOW",
    "NetFV",
    "NetRVLAD",
    "NetVLAD",
    "Pooling",
    "PoolingConfig",
    "PoolingOptions",
    "Rung",
    "SufficientStats",
    "UBMPooling",
    "UBMStart",
    "build_pooling",
    "fit_gmm",
    "kmeans",
    "pooling_class",
    "rung",
    "smoothed_gmm",
    "smoothed_means",
    "start_from_ubm",
    "sufficient_statistics",
    "vlad",
]
