"""Commands that build a recommender step by step: triplets, embeddings, GLMix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.commands.options import (
    AnchorNeighbours,
    Assignment,
    BaseInSteps,
    BaseRung,
    Clusters,
    Device,
    EngineName,
    EpochTriplets,
    FinalNorm,
    Gamma,
    HiddenDim,
    HistoryFeatures,
    IndexKind,
    InferencePrecision,
    IntraNorm,
    MaxFrames,
    Overwrite,
    PoolingName,
    Precision,
    Quiet,
    SearchBudget,
    Seed,
    SparkMaster,
    TestStart,
    UserFeatures,
    VideoEffects,
    VideoFeatures,
    WatchThreshold,
    column_list,
    embedding_job_config,
    engine_from,
    fail,
    pooling_options,
    test_start_from,
)
from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S


def mine_triplets(
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    out: Annotated[
        Path, typer.Option(help="Parquet file to write (anchor, positive, negative, user_id).")
    ],
    test_start: TestStart = None,
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
    window_minutes: Annotated[float, typer.Option(help="Co-watch window in minutes.")] = 30.0,
    max_per_anchor: Annotated[
        int, typer.Option(help="Cap of triplets per (user, anchor video).")
    ] = 20,
    max_per_user: Annotated[int, typer.Option(help="Cap of triplets per user.")] = 500,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the capped sample.")] = 0,
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Mine co-watch triplets from the training period (DuckDB, or Spark SQL with --engine spark:
    the same triplets; see docs/triplets.md)."""
    from pipelines.data.impressions import impressions_connection, log_span
    from pipelines.data.io import check_job_input, dataset_dir, write_parquet_atomic
    from recsys.splits import default_test_start
    from recsys.triplets import TripletConfig

    try:
        cfg = TripletConfig(
            watch_threshold, window_minutes * 60, max_per_anchor, max_per_user, seed
        )
    except ValueError as exc:
        fail(str(exc))
    eng = engine_from(engine, spark_master)
    check_job_input(data, videos=False)  # after the flags: their errors come first
    d = dataset_dir(data)
    con = impressions_connection(d)  # validates the file on either engine
    start = test_start_from(test_start) or default_test_start(*log_span(con))
    table = eng.mine_triplets(d, cfg, start)
    write_parquet_atomic(table, out)
    typer.echo(
        f"wrote {out}: {table.num_rows} triplets from impressions before {start.isoformat()}"
    )


def train_embeddings(
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    out: Annotated[Path, typer.Option(help="Artifact directory to create.")],
    pooling: PoolingName = "dsgmm",
    base: BaseRung = "auto",
    search_budget: SearchBudget = 0.0,
    clusters: Clusters = 32,
    gamma: Gamma = 0.125,
    assignment: Assignment = "decoupled",
    intra_norm: IntraNorm = True,
    final_norm: FinalNorm = False,
    hidden_dim: HiddenDim = 256,
    embedding_dim: Annotated[int, typer.Option(help="Embedding dimension.")] = 64,
    dropout: Annotated[float, typer.Option(help="Dropout on the pooled vector.")] = 0.0,
    epochs: Annotated[
        int, typer.Option(help="Training epochs (best validation epoch is kept).")
    ] = 6,
    batch_size: Annotated[int, typer.Option(help="Triplets per step.")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    margin: Annotated[float, typer.Option(help="Triplet margin alpha (Eq. 15).")] = 0.2,
    max_triplets: Annotated[
        int, typer.Option(help="Use at most this many triplets (0 = all).")
    ] = 0,
    epoch_triplets: EpochTriplets = 125_000,
    max_frames: MaxFrames = 64,
    base_in_steps: BaseInSteps = "sampled",
    precision: Precision = "auto",
    inference_precision: InferencePrecision = "float32",
    index: IndexKind = "auto",
    test_start: TestStart = None,
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
    seed: Seed = 0,
    device: Device = "auto",
    ubm_init: Annotated[
        bool, typer.Option(help="Initialise the pooling from a UBM (Eq. 20-21).")
    ] = False,
    anchor_neighbours: AnchorNeighbours = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Train pooling + projector on co-watch triplets; write an artifact with the FAISS index.

    Runs under torchrun (DistributedDataParallel) too: torchrun --nproc_per_node N -m pipelines.cli train-embeddings ...
    """
    from embeddings.ubm_start import UBMStart
    from pipelines.data.io import check_job_input
    from pipelines.training.distributed import init_distributed_from_env
    from pipelines.training.train_embeddings import run_train_embeddings

    try:
        cfg = embedding_job_config(
            pooling,
            embedder=pooling_options(pooling, clusters, gamma, intra_norm, final_norm, assignment)
            | {"hidden_dim": hidden_dim, "embedding_dim": embedding_dim, "dropout": dropout},
            train={
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "margin": margin,
                "seed": seed,
                "device": device,
                "max_triplets": max_triplets,
                "epoch_triplets": epoch_triplets,
                "max_frames": max_frames,
                "base_in_steps": base_in_steps,
                "precision": precision,
                "inference_precision": inference_precision,
                "ubm": UBMStart(enabled=ubm_init),
                "anchor_neighbours": anchor_neighbours,
            },
            triplets={"watch_threshold_s": watch_threshold, "seed": seed},
            index=index,
            base=base,
            search_budget=search_budget,
        )
    except ValueError as exc:
        fail(str(exc))
    check_job_input(data)  # after the flags: their errors come first
    init_distributed_from_env()
    result = run_train_embeddings(
        data, out, cfg, test_start_from(test_start), overwrite=overwrite, progress=not quiet
    )
    if result.artifact is not None:
        m = result.metrics
        trained = (
            f"best epoch {m['best_epoch']}, validation loss {m['best_val_loss']:.4f}, "
            if "best_epoch" in m
            else f"the {pooling} rung (PCA {m.get('pca_dim')}), "
        )
        typer.echo(
            f"wrote {result.artifact}: {trained}"
            f"held-out co-watch pair AUC {m['heldout_pair_auc']:.4f}"
        )
        if "best_epoch" in m and "selection" in m:
            sel = m["selection"]
            loss = sel["validation_log_loss"]
            typer.echo(
                f"shipping {sel['winner']}: lowest validation criterion "
                f"({', '.join(f'{k} {v:.5f}' for k, v in sorted(loss.items(), key=lambda kv: kv[1]))})"
            )


def embed(
    artifacts: Annotated[Path, typer.Option(help="Artifact directory (from train-embeddings).")],
    data: Annotated[Path, typer.Option(help="Data set directory whose videos to embed.")],
    out: Annotated[Path, typer.Option(help="Parquet file to write (video_id, embedding).")],
    batch_size: Annotated[int, typer.Option(help="Videos per batch.")] = 256,
    device: Device = "auto",
    precision: Annotated[
        str | None,
        typer.Option(
            help="float32, bfloat16 or auto for a trained model; default: what the "
            "artifact's catalogue was embedded in (Spark always uses that)."
        ),
    ] = None,
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Embed every video of a data set with a trained model (streaming, batched; on Spark
    executors with --engine spark)."""
    from pipelines.data.io import check_job_input
    from pipelines.training.embed import embed_dataset

    eng = engine_from(engine, spark_master)
    check_job_input(data, impressions=False)  # after the flags: their errors come first
    n = eng.embed_dataset(
        artifacts,
        data,
        out,
        batch_size,
        here=lambda: embed_dataset(
            artifacts, data, out, batch_size=batch_size, device=device, precision=precision
        ),
    )
    typer.echo(f"wrote {out}: {n} embeddings")


def fit_glmix(
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    artifacts: Annotated[
        Path, typer.Option(help="Artifact directory (from train-embeddings); extended in place.")
    ],
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
    random_l2: Annotated[float, typer.Option(help="L2 strength on each user's slopes.")] = 10.0,
    random_intercept_l2: Annotated[
        float, typer.Option(help="L2 strength on each user's intercept.")
    ] = 1.0,
    fixed_l2: Annotated[
        float, typer.Option(help="L2 strength on the fixed-effect coefficients.")
    ] = 1.0,
    min_rows_per_user: Annotated[int, typer.Option(help="Fewer rows: no per-user model.")] = 1,
    max_rows_per_user: Annotated[
        int, typer.Option(help="More rows are subsampled and reweighted (0 = no cap).")
    ] = 0,
    tune: Annotated[
        bool, typer.Option(help="Choose --random-l2 on the last 10% of the training period.")
    ] = False,
    history_features: HistoryFeatures = True,
    video_effects: VideoEffects = True,
    video_features: VideoFeatures = "",
    user_features: UserFeatures = "",
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Fit GLMix (Eq. 18, plus history similarities unless --no-history-features, plus
    per-video effects unless --no-video-effects) with and without video features and add
    it and the watch histories to the artifact."""
    from pipelines.data.io import check_job_input
    from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact
    from recsys.glmix.model import GLMixConfig

    try:
        glm = GLMixConfig(
            fixed_l2=fixed_l2,
            random_l2=random_l2,
            random_intercept_l2=random_intercept_l2,
            min_rows_per_user=min_rows_per_user,
            max_rows_per_user=max_rows_per_user,
        )
    except ValueError as exc:
        fail(str(exc))
    eng = engine_from(engine, spark_master)
    check_job_input(data, videos=False)  # after the flags: their errors come first
    info = fit_glmix_into_artifact(
        data,
        artifacts,
        GLMixJobConfig(
            watch_threshold,
            glm,
            tune,
            progress=True,
            history_features=history_features,
            video_effects=video_effects,
            video_features=column_list(video_features),
            user_features=column_list(user_features),
        ),
        eng,
    )
    typer.echo(
        f"GLMix: {info['users']} users, {info['training_rows']} rows, {info['fit_seconds']:.1f} s"
    )
