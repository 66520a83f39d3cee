"""Frame pooling layers and GMMs (torch only; never opens files).

``build_pooling(name, feature_dim, num_clusters, **options)`` selects a method by name.

Importing the package keeps glibc from unmapping large freed blocks (see
``embeddings.runtime.configure_cpu_allocator``: 2x faster pooling on the CPU);
``RECSYS_KEEP_MALLOC=1`` in the environment opts out.
"""

from embeddings.gmm import GMM, EMResult, fit_gmm, kmeans
from embeddings.heads import ContextGating, MixtureOfExperts, MoEConfig
from embeddings.pooling import (
    ASSIGNMENTS,
    DSGMM,
    POOLING_NAMES,
    AveragePooling,
    NetBOW,
    NetFV,
    NetRVLAD,
    NetVLAD,
    Pooling,
    PoolingConfig,
    PoolingOptions,
    UBMPooling,
    build_pooling,
)
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
    "POOLING_NAMES",
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
    "SufficientStats",
    "UBMPooling",
    "UBMStart",
    "build_pooling",
    "fit_gmm",
    "kmeans",
    "smoothed_gmm",
    "smoothed_means",
    "start_from_ubm",
    "sufficient_statistics",
    "vlad",
]
