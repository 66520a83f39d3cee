"""The command line's shared option types and helpers (every command module uses them)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from embeddings.registry import POOLINGS, RUNGS

if TYPE_CHECKING:
    from pipelines.engine import Engine
    from pipelines.training.train_embeddings import EmbeddingJobConfig


def _finite_non_negative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}")
    return value


WatchThreshold = Annotated[
    float,
    typer.Option(
        help="An impression is a valid watch when watch_seconds >= this many seconds.",
        callback=_finite_non_negative,
    ),
]


EpochTriplets = Annotated[
    int,
    typer.Option(
        help="Train each epoch on a fresh random sample of at most this many triplets "
        "(0 = all every epoch): an epoch's time stops growing with the log."
    ),
]
HiddenDim = Annotated[
    int, typer.Option(min=1, help="Projector hidden width (its first layer: pooled -> this).")
]
MaxFrames = Annotated[
    int,
    typer.Option(
        min=1,
        help="Frames sampled from each video a training step sees (at most; the catalogue's "
        "embedding reads up to 300, evenly spaced). Fewer: cheaper steps.",
    ),
]
BaseInSteps = Annotated[
    str,
    typer.Option(
        help="What a training step's loss takes for the fixed base rung: sampled (the rung "
        "on the step's sampled frames, as the learned half sees them) or whole_video (its "
        "rows computed once over the frames the catalogue's embedding uses: about 1.3x "
        "faster steps, slightly lower AUCs on some worlds; see docs/results.md)."
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        help="Training steps' matrix products: auto (bfloat16 where the CUDA GPU or CPU "
        "multiplies it natively, about 2x faster; else float32), float32 or bfloat16. "
        "Weights and the embeddings written stay float32."
    ),
]
InferencePrecision = Annotated[
    str,
    typer.Option(
        help="Embedding passes (the catalogue; uploads to the service follow the artifact): "
        "float32, bfloat16 (the pooling and projector on the CPU's or GPU's bf16 units, "
        "about 2x faster here) or auto (bfloat16 where native)."
    ),
]
Seed = Annotated[
    int, typer.Option(min=0, help="Random seed (>= 0); the same seed gives the same result.")
]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
Quiet = Annotated[bool, typer.Option(help="No progress bars.")]
PoolingName = Annotated[
    str,
    typer.Option(
        help=f"The learned pooling ({', '.join(POOLINGS)}); "
        f"a classical rung to ship instead, no training ({', '.join(RUNGS)}); "
        "or auto: train dsgmm, then ship a rung instead only when validation prefers it "
        "beyond the paired interval."
    ),
]
#: ``recsys classify``'s pooling: a learned layer only (its baselines are reported beside it)
LearnedPoolingName = Annotated[
    str,
    typer.Option(
        "--pooling",
        help=f"The learned pooling ({', '.join(POOLINGS)}); the classical baselines are "
        "reported beside it (--baselines).",
    ),
]
BaseRung = Annotated[
    str,
    typer.Option(
        help="The classical rung the learned model starts from and learns on top of: auto "
        f"(the one validation prefers), none (the model alone), {' or '.join(RUNGS)}. Its share of the final cosine is then chosen on validation."
    ),
]
SearchBudget = Annotated[
    float,
    typer.Option(
        help="Seconds to spend training variants of the model (twice or half the clusters, "
        "the cluster occupancy as input, 3x or 1/3 the learning rate, half or twice the "
        "embedding size), keeping the one "
        "validation prefers beyond the paired interval; 0 = train the configured model only."
    ),
]
Clusters = Annotated[int, typer.Option(help="Number of clusters K.")]
Baselines = Annotated[
    bool,
    typer.Option(
        help="Also score classical baselines (average of frames, k-means bag of words with "
        "tf-idf, k-means VLAD; PCA and GLMix chosen on validation) on the same rows."
    ),
]
Gamma = Annotated[float, typer.Option(help="SGMM/DSGMM smoothing gamma (Eq. 12).")]
Assignment = Annotated[
    str,
    typer.Option(
        help="decoupled, or a coupled GMM: uniform_priors, shared_spherical, spherical, "
        "shared_diagonal, diagonal."
    ),
]
IntraNorm = Annotated[bool, typer.Option(help="L2-normalise each cluster's vector.")]
FinalNorm = Annotated[bool, typer.Option(help="L2-normalise the whole pooled vector.")]


Online = Annotated[
    bool,
    typer.Option(
        help="Also replay the test period in time order through online GLMix (each impression "
        "scored before learning from it) and report its AUC against the frozen model."
    ),
]
EngineName = Annotated[
    str,
    typer.Option(
        "--engine",
        help="Where the heavy steps run: local (DuckDB and in-process) or spark "
        "(the same results on a Spark cluster; see docs/scale.md).",
    ),
]
SparkMaster = Annotated[
    str,
    typer.Option(
        help="Spark master for --engine spark, e.g. local[4] or spark://host:7077 "
        "(SPARK_REMOTE, a Spark Connect URL, wins when set)."
    ),
]


AnchorNeighbours = Annotated[
    int,
    typer.Option(
        help="Also train Eq. 15 with the anchor replaced by the normalised sum of the anchor "
        "and this many of its co-watch partners (shapes the space for Eq. 16's average "
        "over a history); 0 = Eq. 15 alone."
    ),
]


VideoEffects = Annotated[
    bool,
    typer.Option(
        help="Give GLMix per-video random effects (a video's own appeal, from its impressions) "
        "as a third coordinate; with tuning, their penalty (or none) is chosen on the last "
        "10% of the training period."
    ),
]

HistoryFeatures = Annotated[
    bool,
    typer.Option(
        help="Give GLMix the similarity of each candidate to the user's watch history "
        "(Eq. 16-17: max, average, and whether there is a history) as global features; "
        "--no-history-features fits Eq. 18 alone."
    ),
]

VideoFeatures = Annotated[
    str,
    typer.Option(
        help="Comma-separated columns of videos.parquet (numeric, or strings one-hot "
        "encoded: a video's length, category) that GLMix gets as features of every model."
    ),
]
UserFeatures = Annotated[
    str,
    typer.Option(
        help="Comma-separated columns of the data set's users.parquet (user_id plus one "
        "column per signal: a user's device, country, tenure) that GLMix gets as features."
    ),
]


def column_list(text: str) -> tuple[str, ...]:
    """ "a, b" -> ("a", "b"); "" -> ()."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


TestStart = Annotated[
    str | None,
    typer.Option(help="ISO-8601 start of the test period; default: the last quarter of the log."),
]


Overwrite = Annotated[bool, typer.Option(help="Replace an existing artifact.")]
IndexKind = Annotated[
    str,
    typer.Option(
        help="FAISS index: auto (exact search up to 100,000 videos, HNSW above; its "
        "recall@20 against exact search is measured on the catalogue and written to the "
        "manifest), flat, hnsw or ivf."
    ),
]


def representation_of(pooling: str) -> tuple[str, str]:
    """(the learned model's pooling, what the artifact ships) from ``--pooling``: a rung
    name or ``auto`` picks what is shipped; the learned candidate is then DSGMM."""
    if pooling in RUNGS or pooling == "auto":
        return "dsgmm", pooling
    if pooling not in POOLINGS:
        raise ValueError(
            f"unknown pooling {pooling!r}; choose a learned one ({', '.join(POOLINGS)}), "
            f"a classical rung ({', '.join(RUNGS)}) or auto"
        )
    return pooling, "learned"


def embedding_job_config(
    pooling: str,
    *,
    embedder: dict[str, Any],
    train: dict[str, Any],
    index: str,
    base: str,
    search_budget: float,
    triplets: dict[str, Any] | None = None,
) -> EmbeddingJobConfig:
    """The train-embeddings stage's config from its flags, for ``train-embeddings`` and
    ``pipeline`` alike: ``--pooling`` names the learned layer or what is shipped
    (``representation_of``); ``embedder``, ``train`` and ``triplets`` are the fields of
    ``EmbedderConfig``, ``TrainConfig`` and ``TripletConfig`` a command sets (the rest keep
    their defaults). ValueError for a bad value."""
    from embeddings.cowatch import EmbedderConfig
    from pipelines.training.cowatch_training import TrainConfig
    from pipelines.training.train_embeddings import EmbeddingJobConfig
    from recsys.index import IndexConfig
    from recsys.triplets import TripletConfig

    learned, shipped = representation_of(pooling)
    return EmbeddingJobConfig(
        embedder=EmbedderConfig(**{**embedder, "pooling": learned}),
        train=TrainConfig(**train),
        triplets=TripletConfig(**(triplets or {})),
        index=IndexConfig(kind=index),
        representation=shipped,
        base=base,
        search_budget_s=search_budget,
    )


def pooling_options(
    pooling: str, clusters: int, gamma: float, intra_norm: bool, final_norm: bool, assignment: str
) -> dict[str, Any]:
    """The ``PoolingOptions`` fields from their flags (each model config extends them)."""
    return {
        "pooling": pooling,
        "num_clusters": clusters,
        "gamma": gamma,
        "intra_norm": intra_norm,
        "final_norm": final_norm,
        "assignment": assignment,
    }


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def engine_from(name: str, master: str) -> Engine:
    """The engine ``--engine`` names: every job's steps run on it."""
    from pipelines.engine import ENGINES, LOCAL

    if name not in ENGINES:
        fail(f"--engine must be {' or '.join(ENGINES)}, not {name!r}")
    if name == "local":
        return LOCAL
    from pipelines.spark.engine import SparkEngine

    return SparkEngine(master)


def test_start_from(value: str | None) -> datetime | None:
    from recsys.splits import parse_time

    return parse_time(value) if value else None
