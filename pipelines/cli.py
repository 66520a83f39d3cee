"""The ``recsys`` command line.

Every subcommand has ``--help``. Bad input (missing files, broken data sets,
wrong flags) ends with a one-line message on stderr and exit code 2, never a
traceback.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S
from recsys.errors import DatasetError, UserInputError

app = typer.Typer(
    name="recsys",
    help="Video recommendation around co-watch embeddings (SGMM/DSGMM pooling).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

WatchThreshold = Annotated[
    float,
    typer.Option(help="An impression is a valid watch when watch_seconds >= this many seconds."),
]


Seed = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
Quiet = Annotated[bool, typer.Option(help="No progress bars.")]
PoolingName = Annotated[
    str, typer.Option(help="avg, vlad, sgmm, netvlad, dsgmm, netrvlad, netfv or netbow.")
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


def _engine(name: str, master: str):  # type: ignore[no-untyped-def]
    from pipelines.engine import Engine

    if name not in ("local", "spark"):
        _fail(f"--engine must be local or spark, not {name!r}")
    return Engine(name, master)  # type: ignore[arg-type]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Directory to write the data set to.")],
    seed: Seed = 0,
    videos: Annotated[int, typer.Option(help="Number of videos.")] = 2000,
    users: Annotated[int, typer.Option(help="Number of users.")] = 1000,
    days: Annotated[int, typer.Option(help="Length of the impression log in days.")] = 28,
    feature_dim: Annotated[int, typer.Option(help="Frame feature dimension D.")] = 32,
    topics: Annotated[int, typer.Option(help="Number of topics.")] = 16,
    shared_fraction: Annotated[
        float, typer.Option(help="Mean fraction of frames from shared intro/credit components.")
    ] = 0.33,
    shared_scale: Annotated[
        float, typer.Option(help="Norm of the shared components relative to topical ones.")
    ] = 3.0,
    median_frames: Annotated[
        float, typer.Option(help="Median frames per video (log-normal, 2 to 300).")
    ] = 16.0,
) -> None:
    """Generate a synthetic world: videos.parquet, impressions.parquet and truth.parquet."""
    from pipelines.io import write_dataset
    from recsys.synthetic import SynthConfig, generate_world

    try:
        cfg = SynthConfig(
            seed=seed,
            num_videos=videos,
            num_users=users,
            days=days,
            feature_dim=feature_dim,
            num_topics=topics,
            shared_fraction=shared_fraction,
            shared_scale=shared_scale,
            median_frames=median_frames,
        )
    except ValueError as exc:
        _fail(str(exc))
    t0 = time.perf_counter()
    world = generate_world(cfg)
    write_dataset(out, world.videos, world.impressions, world.truth, world.video_truth)
    typer.echo(
        f"wrote {out}: {world.videos.num_rows} videos, {world.impressions.num_rows} impressions "
        f"({time.perf_counter() - t0:.1f} s)"
    )


@app.command("synth-digits")
def synth_digits(
    out: Annotated[Path, typer.Option(help="Directory to write videos.parquet to.")],
    seed: Seed = 0,
    videos: Annotated[int, typer.Option(help="Number of videos.")] = 1500,
    max_frames: Annotated[int, typer.Option(help="At most this many frames per video.")] = 40,
) -> None:
    """A classification set of real frames: scikit-learn's 8x8 digit scans, labels = digits shown."""
    from pipelines.io import write_parquet_atomic
    from recsys.digits import digits_videos

    try:
        table = digits_videos(videos, max_frames, seed)
    except ValueError as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(table, out / "videos.parquet", row_group_size=512)
    typer.echo(f"wrote {out}: {table.num_rows} videos of digit scans (D = 64)")


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Data set directory.")],
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
    purpose: Annotated[
        str,
        typer.Option(
            help="any: videos required, impressions checked when present; recommendation: "
            "impressions required; classification: labels required."
        ),
    ] = "any",
) -> None:
    """Check a data set against the contract (docs/data.md); exit 2 listing every violation."""
    from pipelines.io import validate_dataset

    report = validate_dataset(data, watch_threshold_s=watch_threshold, purpose=purpose)
    if not report.ok:
        for p in report.problems:
            typer.echo(f"error: {p}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{data}: valid" + (f" for {purpose}" if purpose != "any" else ""))
    if report.impressions is None:
        typer.echo("  no impressions.parquet: fine for classification and embedding only")
    for line in report.summary_lines():
        typer.echo(f"  {line}")


@app.command("convert-yt8m")
def convert_yt8m_cmd(
    files: Annotated[list[Path], typer.Argument(help="Frame-level YouTube-8M TFRecord files.")],
    out: Annotated[Path, typer.Option(help="Output data set directory.")],
    audio: Annotated[bool, typer.Option(help="Append the 128-d audio to the 1024-d rgb.")] = False,
    keep_uint8: Annotated[
        bool, typer.Option(help="Store quantised uint8 frames (readers dequantise them).")
    ] = False,
) -> None:
    """Convert YouTube-8M frame-level TFRecords into videos.parquet (no TensorFlow needed)."""
    from pipelines.yt8m import convert_yt8m

    counts = convert_yt8m(list(files), out, with_audio=audio, dequantise=not keep_uint8)
    typer.echo(
        f"wrote {out / 'videos.parquet'}: {counts['videos']} videos, {counts['frames']} frames"
        + (f", skipped {counts['skipped_empty']} without frames" if counts["skipped_empty"] else "")
    )


def _test_start(value: str | None):  # type: ignore[no-untyped-def]
    from recsys.splits import parse_time

    return parse_time(value) if value else None


TestStart = Annotated[
    str | None,
    typer.Option(help="ISO-8601 start of the test period; default: the last quarter of the log."),
]


@app.command("mine-triplets")
def mine_triplets_cmd(
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
    seed: Annotated[int, typer.Option(help="Seed of the capped sample.")] = 0,
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Mine co-watch triplets from the training period (DuckDB, or Spark SQL with --engine spark:
    the same triplets; see docs/triplets.md)."""
    from pipelines.io import dataset_dir, write_parquet_atomic
    from pipelines.train_embeddings import impressions_connection, log_span
    from recsys.splits import default_test_start
    from recsys.triplets import TripletConfig

    try:
        cfg = TripletConfig(
            watch_threshold, window_minutes * 60, max_per_anchor, max_per_user, seed
        )
    except ValueError as exc:
        _fail(str(exc))
    eng = _engine(engine, spark_master)
    d = dataset_dir(data)
    con = impressions_connection(d)  # validates the file on either engine
    start = _test_start(test_start) or default_test_start(*log_span(con))
    table = eng.mine_triplets(d, cfg, start)
    write_parquet_atomic(table, out)
    typer.echo(
        f"wrote {out}: {table.num_rows} triplets from impressions before {start.isoformat()}"
    )


@app.command("train-embeddings")
def train_embeddings_cmd(
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    out: Annotated[Path, typer.Option(help="Artifact directory to create.")],
    pooling: PoolingName = "dsgmm",
    clusters: Clusters = 32,
    gamma: Gamma = 0.125,
    assignment: Assignment = "decoupled",
    intra_norm: IntraNorm = True,
    final_norm: FinalNorm = False,
    hidden_dim: Annotated[int, typer.Option(help="Projector hidden width.")] = 256,
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
    index: Annotated[str, typer.Option(help="FAISS index kind: flat, hnsw or ivf.")] = "flat",
    test_start: TestStart = None,
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
    seed: Seed = 0,
    device: Device = "auto",
    ubm_init: Annotated[
        bool, typer.Option(help="Initialise the pooling from a UBM (Eq. 20-21).")
    ] = False,
    anchor_neighbours: AnchorNeighbours = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifact.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train pooling + projector on co-watch triplets; write an artifact with the FAISS index.

    Runs under torchrun (DistributedDataParallel) too: torchrun --nproc_per_node N -m pipelines.cli train-embeddings ...
    """
    from embeddings.cowatch import EmbedderConfig
    from pipelines.io import video_feature_dim
    from pipelines.train_embeddings import (
        TrainConfig,
        init_distributed_from_env,
        run_train_embeddings,
    )
    from recsys.index import IndexConfig
    from recsys.triplets import TripletConfig

    try:
        model_cfg = EmbedderConfig(
            feature_dim=video_feature_dim(data),
            pooling=pooling,
            num_clusters=clusters,
            gamma=gamma,
            intra_norm=intra_norm,
            final_norm=final_norm,
            assignment=assignment,
            hidden_dim=hidden_dim,
            embedding_dim=embedding_dim,
            dropout=dropout,
        )
        from embeddings.pooling import PoolingConfig

        PoolingConfig(model_cfg.feature_dim, clusters, gamma, intra_norm, final_norm, assignment)
        train_cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            margin=margin,
            seed=seed,
            device=device,
            max_triplets=max_triplets,
            ubm_init=ubm_init,
            anchor_neighbours=anchor_neighbours,
        )
        triplet_cfg = TripletConfig(watch_threshold_s=watch_threshold, seed=seed)
        index_cfg = IndexConfig(kind=index)
    except ValueError as exc:
        _fail(str(exc))
    init_distributed_from_env()
    result = run_train_embeddings(
        data,
        out,
        model_cfg,
        train_cfg,
        triplet_cfg,
        index_cfg,
        _test_start(test_start),
        overwrite=overwrite,
        progress=not quiet,
    )
    if result.artifact is not None:
        m = result.metrics
        typer.echo(
            f"wrote {result.artifact}: best epoch {m['best_epoch']}, validation loss {m['best_val_loss']:.4f}, "
            f"held-out co-watch pair AUC {m['heldout_pair_auc']:.4f}"
        )


@app.command()
def embed(
    artifacts: Annotated[Path, typer.Option(help="Artifact directory (from train-embeddings).")],
    data: Annotated[Path, typer.Option(help="Data set directory whose videos to embed.")],
    out: Annotated[Path, typer.Option(help="Parquet file to write (video_id, embedding).")],
    batch_size: Annotated[int, typer.Option(help="Videos per batch.")] = 256,
    device: Device = "auto",
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Embed every video of a data set with a trained model (streaming, batched; on Spark
    executors with --engine spark)."""
    from pipelines.embed import embed_dataset, embed_dataset_spark

    eng = _engine(engine, spark_master)
    if eng.is_spark:
        n = embed_dataset_spark(eng, artifacts, data, out, batch_size=batch_size)
    else:
        n = embed_dataset(artifacts, data, out, batch_size=batch_size, device=device)
    typer.echo(f"wrote {out}: {n} embeddings")


AnchorNeighbours = Annotated[
    int,
    typer.Option(
        help="Also train Eq. 15 with the anchor replaced by the normalised sum of the anchor "
        "and this many of its co-watch partners (shapes the space for Eq. 16's average "
        "over a history); 0 = Eq. 15 alone."
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


@app.command("fit-glmix")
def fit_glmix_cmd(
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
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Fit GLMix (Eq. 18, plus history similarities unless --no-history-features) with and without video features and add it and the watch histories to the artifact."""
    from pipelines.evaluate import GLMixJobConfig, fit_glmix_into_artifact
    from recsys.glmix import GLMixConfig

    try:
        glm = GLMixConfig(
            fixed_l2=fixed_l2,
            random_l2=random_l2,
            random_intercept_l2=random_intercept_l2,
            min_rows_per_user=min_rows_per_user,
            max_rows_per_user=max_rows_per_user,
        )
    except ValueError as exc:
        _fail(str(exc))
    eng = _engine(engine, spark_master)
    info = fit_glmix_into_artifact(
        data,
        artifacts,
        GLMixJobConfig(
            watch_threshold, glm, tune, progress=True, history_features=history_features
        ),
        eng,
    )
    typer.echo(
        f"GLMix: {info['users']} users, {info['training_rows']} rows, {info['fit_seconds']:.1f} s"
    )


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    artifacts: Annotated[Path, typer.Option(help="Artifact directory.")],
    out: Annotated[Path, typer.Option(help="Directory for report.json, report.md and ROC plots.")],
    test_start: TestStart = None,
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples over users (0 = none).")
    ] = 200,
    baseline: Annotated[
        Path | None, typer.Option(help="report.json of a baseline run (e.g. avg pooling).")
    ] = None,
    baselines: Baselines = True,
    online: Online = True,
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Offline AUC evaluation: max/avg similarity (Eq. 16-17), GLMix with and without video features."""
    from pipelines.evaluate import evaluate_artifact
    from recsys.baselines import BASELINE_NAMES
    from recsys.online import OnlineConfig

    report = evaluate_artifact(
        data,
        artifacts,
        out,
        watch_threshold,
        _test_start(test_start),
        bootstrap,
        baseline,
        baselines=BASELINE_NAMES if baselines else (),
        progress=True,
        engine=_engine(engine, spark_master),
        online=OnlineConfig() if online else None,
    )
    _print_aucs(report, out)


def _print_aucs(report: dict, out: Path) -> None:  # type: ignore[type-arg]
    for k, v in report["auc"].items():
        typer.echo(f"  AUC {k:15s} all {v:.4f}   cold start {report['auc_cold_start'][k]:.4f}")
    if "oracle_auc" in report:
        typer.echo(
            f"  oracle AUC          all {report['oracle_auc']['all']:.4f}   cold start {report['oracle_auc']['cold_start']:.4f}"
        )
    for name, b in report.get("baselines", {}).items():
        for k, v in b["auc"].items():
            cold = b["auc_cold_start"][k]
            typer.echo(f"  baseline {name:11s} {k:15s} all {v:.4f}   cold start {cold:.4f}")
    for name, b in report.get("online", {}).items():
        if isinstance(b, dict) and "online_auc" in b:
            lo, hi = b["difference_ci95"]
            typer.echo(
                f"  online GLMix ({name}): {b['online_auc']:.4f} vs frozen {b['frozen_auc']:.4f}, "
                f"difference {b['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]: {b['verdict']}"
            )
            if "history_only_auc" in b:
                lo, hi = b["difference_vs_history_only_ci95"]
                typer.echo(
                    f"    vs histories followed, effects frozen {b['history_only_auc']:.4f}: "
                    f"{b['difference_vs_history_only']:+.4f} [{lo:+.4f}, {hi:+.4f}]: "
                    f"{b['verdict_vs_history_only']}"
                )
    if "ceiling" in report:
        c = report["ceiling"]
        typer.echo(
            f"  ceiling ({c['name']}): glmix all {c['auc']['glmix']:.4f}   "
            f"cold start {c['auc_cold_start']['glmix']:.4f}"
        )
    for score, subsets in report.get("vs_best_baseline", {}).items():
        for subset, c in subsets.items():
            lo, hi = c["delong_paired_95"]
            typer.echo(
                f"  {score} ({subset}): learned {c['learned_auc']:.4f} vs {c['best_baseline']} "
                f"{c['baseline_auc']:.4f}, difference {c['difference']:+.4f} "
                f"[{lo:+.4f}, {hi:+.4f}]: {c['verdict']}"
            )
    typer.echo(f"wrote {out / 'report.json'} and {out / 'report.md'}")


@app.command()
def pipeline(
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    out: Annotated[
        Path, typer.Option(help="Output directory: OUT/artifact plus the evaluation report.")
    ],
    pooling: PoolingName = "dsgmm",
    clusters: Clusters = 32,
    gamma: Gamma = 0.125,
    epochs: Annotated[
        int, typer.Option(help="Embedding training epochs (the best validation epoch is kept).")
    ] = 3,
    max_triplets: Annotated[
        int, typer.Option(help="Use at most this many triplets (0 = all).")
    ] = 0,
    index: Annotated[str, typer.Option(help="FAISS index kind: flat, hnsw or ivf.")] = "flat",
    tune_glmix: Annotated[
        bool,
        typer.Option(
            help="Choose GLMix's random_l2 on the last 10% of the training period (validation)."
        ),
    ] = True,
    history_features: HistoryFeatures = True,
    anchor_neighbours: AnchorNeighbours = 0,
    test_start: TestStart = None,
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples over users.")] = 200,
    baseline: Annotated[
        Path | None, typer.Option(help="report.json of a baseline run (e.g. avg pooling).")
    ] = None,
    baselines: Baselines = True,
    online: Online = True,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT/artifact.")] = False,
    quiet: Quiet = False,
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Mine triplets, train embeddings, index, fit GLMix and evaluate; OUT/artifact is servable.
    With --engine spark, mining, GLMix and the AUCs run on Spark (training stays on torch)."""
    from pipelines.pipeline import PipelineConfig, run_pipeline
    from pipelines.train_embeddings import TrainConfig
    from recsys.index import IndexConfig

    try:
        cfg = PipelineConfig(
            pooling=pooling,
            num_clusters=clusters,
            gamma=gamma,
            tune_glmix=tune_glmix,
            history_features=history_features,
            train=TrainConfig(
                epochs=epochs,
                seed=seed,
                device=device,
                max_triplets=max_triplets,
                anchor_neighbours=anchor_neighbours,
            ),
            index=IndexConfig(kind=index),
            watch_threshold_s=watch_threshold,
            bootstrap=bootstrap,
            baselines=baselines,
            online=online,
        )
        from embeddings.cowatch import EmbedderConfig

        EmbedderConfig(feature_dim=1, pooling=pooling)
    except ValueError as exc:
        _fail(str(exc))
    eng = _engine(engine, spark_master)
    report = run_pipeline(
        data, out, cfg, _test_start(test_start), baseline, overwrite, not quiet, eng
    )
    if report:
        _print_aucs(report, out)
        typer.echo(f"artifact: {out / 'artifact'}")


@app.command()
def serve(
    artifacts: Annotated[
        Path, typer.Option(help="Artifact directory (OUT/artifact of recsys pipeline).")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes. Only 1: each worker would hold its own copy of the ingested "
            "state; run one process per replica instead."
        ),
    ] = 1,
    limit_concurrency: Annotated[
        int, typer.Option(help="Answer 503 beyond this many concurrent requests.")
    ] = 64,
    access_log: Annotated[
        bool, typer.Option(help="Log every request (uvicorn's access log) to stderr.")
    ] = False,
    state_url: Annotated[
        str | None,
        typer.Option(
            help="State store: sqlite:///path or postgresql://user@host:port/db (replicas "
            "share it). Default: RECSYS_STATE_URL, else a SQLite file next to the artifact."
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (FastAPI + uvicorn); settings from RECSYS_* environment variables (RECSYS_API_KEY, ...)."""
    from serving.cli import serve_artifact

    if workers != 1:
        _fail(
            f"--workers {workers}: one worker per process only (a request could miss a write "
            "another worker just made); start more processes over one --state-url "
            "postgresql://... behind a load balancer"
        )
    if state_url is not None:
        if not state_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            _fail("--state-url must start with sqlite:/// or postgresql://")
        os.environ["RECSYS_STATE_URL"] = state_url
    serve_artifact(
        artifacts,
        host,
        port,
        workers,
        limit_concurrency,
        print_examples=True,
        access_log=access_log,
    )


@app.command()
def classify(
    data: Annotated[Path, typer.Option(help="Data set directory (videos.parquet with labels).")],
    pooling: PoolingName,
    out: Annotated[
        Path, typer.Option(help="Run directory for report.json, predictions, weights, curve.")
    ],
    # 16 on data sets of thousands of videos (DSGMM GAP 0.861 vs 0.821 with 64 on the
    # default world, equal on a digits world); the paper's 256 is for millions.
    clusters: Clusters = 16,
    gamma: Gamma = 0.125,
    assignment: Assignment = "decoupled",
    intra_norm: IntraNorm = True,
    final_norm: FinalNorm = False,
    hidden_size: Annotated[int, typer.Option(help="Hidden layer with batch norm (0 = none).")] = 0,
    mixtures: Annotated[int, typer.Option(help="Experts per label in the MoE.")] = 2,
    epochs: Annotated[
        int, typer.Option(help="At most this many epochs (the best validation GAP is kept).")
    ] = 30,
    batch_size: Annotated[int, typer.Option(help="Videos per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    decay_examples: Annotated[
        int, typer.Option(help="Decay the learning rate by 0.8 every N examples.")
    ] = 4_000_000,
    frames: Annotated[int, typer.Option(help="Frames sampled with replacement per video.")] = 30,
    seed: Seed = 0,
    device: Device = "auto",
    workers: Annotated[
        int, typer.Option(help="DataLoader workers streaming Parquet row groups (0 = none).")
    ] = 1,
    ubm_init: Annotated[
        bool,
        typer.Option(
            help="Initialise trainable cluster layers from a UBM (Eq. 20-21), softened by "
            "--init-temperature."
        ),
    ] = True,
    init_temperature: Annotated[
        float,
        typer.Option(help="Divide UBM-initialised assignment logits by this (> 1: softer)."),
    ] = 4.0,
    patience: Annotated[
        int,
        typer.Option(
            help="Stop after this many epochs without a better validation GAP (0 = never)."
        ),
    ] = 3,
    baselines: Annotated[
        bool,
        typer.Option(
            help="Also fit classical baselines (average of frames, k-means bag of words with "
            "tf-idf; logistic regression) on the same splits."
        ),
    ] = True,
    quiet: Quiet = False,
) -> None:
    """Train pooling -> context gating -> MoE per label (section 4.1) and report GAP@20 / Hit@1."""
    from embeddings.classifier import ClassifierConfig
    from embeddings.pooling import PoolingConfig
    from pipelines.classify import ClassifyConfig, run_classify

    try:
        PoolingConfig(1, clusters, gamma, intra_norm, final_norm, assignment)
        from embeddings.cowatch import EmbedderConfig

        EmbedderConfig(feature_dim=1, pooling=pooling)
        model = ClassifierConfig(
            feature_dim=1,
            num_classes=1,
            pooling=pooling,
            num_clusters=clusters,
            gamma=gamma,
            intra_norm=intra_norm,
            final_norm=final_norm,
            assignment=assignment,
            hidden_size=hidden_size,
            num_mixtures=mixtures,
        )
        cfg = ClassifyConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            decay_examples=decay_examples,
            frames_per_video=frames,
            seed=seed,
            device=device,
            workers=workers,
            ubm_init=ubm_init,
            init_temperature=init_temperature,
            patience=patience,
            baselines=baselines,
        )
    except ValueError as exc:
        _fail(str(exc))
    r = run_classify(data, out, model, cfg, progress=not quiet)
    typer.echo(
        f"{pooling}: test GAP@20 {r['gap']:.4f}, Hit@1 {r['hit_at_1']:.4f} ({r['test_videos']} videos, "
        f"epoch {r['best_epoch']} kept); wrote {out}"
    )
    for name, b in r.get("baselines", {}).items():
        typer.echo(f"baseline {name}: test GAP@20 {b['gap']:.4f}, Hit@1 {b['hit_at_1']:.4f}")
    if "vs_best_baseline" in r:
        v = r["vs_best_baseline"]
        lo, hi = v["gap_difference_bootstrap_95"]
        typer.echo(
            f"{pooling} vs {v['best_baseline']}: GAP difference {v['gap_difference']:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}]: {v['verdict']}"
        )


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First classify run directory.")],
    run_b: Annotated[Path, typer.Argument(help="Second classify run directory.")],
    resamples: Annotated[
        int, typer.Option(help="Bootstrap resamples for the GAP difference.")
    ] = 1000,
) -> None:
    """McNemar's test on Hit@1 and a bootstrap 95% interval of the GAP difference."""
    from pipelines.classify import compare_runs

    r = compare_runs(run_a, run_b, resamples)
    t = r["contingency"]
    typer.echo(f"test videos: {r['videos']}")
    typer.echo("Hit@1 contingency (rows: A right/wrong, columns: B right/wrong):")
    typer.echo(f"  {t[0][0]:6d} {t[0][1]:6d}\n  {t[1][0]:6d} {t[1][1]:6d}")
    typer.echo(
        f"Hit@1 A {r['hit_at_1'][0]:.4f}  B {r['hit_at_1'][1]:.4f}  McNemar p = {r['mcnemar_p']:.4g}"
    )
    lo, hi = r["gap_diff_ci95"]
    typer.echo(
        f"GAP A {r['gap'][0]:.4f}  B {r['gap'][1]:.4f}  A - B = {r['gap_diff']:+.4f} (95% CI {lo:+.4f} .. {hi:+.4f})"
    )


experiment_app = typer.Typer(help="Reproduce the paper's experiments.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("paper")
def experiment_paper(
    data: Annotated[Path, typer.Option(help="Labelled data set directory.")],
    out: Annotated[
        Path, typer.Option(help="Output directory (report.md, report.json, plots, runs/).")
    ],
    budget: Annotated[str, typer.Option(help="small (~15 min on 2 cores) or full.")] = "small",
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Tables 2, 4, 5 and Figures 2, 3 of the paper on this data set."""
    from pipelines.experiment import BUDGETS, run_paper_experiment

    if budget not in BUDGETS:
        _fail(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    run_paper_experiment(data, out, budget, seed, progress=not quiet)
    typer.echo(f"wrote {out / 'report.md'}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working directory for the demo.")] = Path("demo"),
    seed: Seed = 0,
    pooling: PoolingName = "dsgmm",
    epochs: Annotated[
        int, typer.Option(help="Embedding training epochs (the best validation epoch is kept).")
    ] = 3,
    serve: Annotated[
        bool, typer.Option(help="Start the service on the demo artifact at the end.")
    ] = True,
    port: Annotated[int, typer.Option(help="Port for the service.")] = 8000,
) -> None:
    """The main job: synthetic world -> validate -> train, index, GLMix, evaluate -> serve."""
    data = out / "data"
    if not (data / "videos.parquet").exists():
        synth(out=data, seed=seed)
    validate(data)
    pipeline(
        data=data,
        out=out / "run",
        pooling=pooling,
        epochs=epochs,
        overwrite=True,
        clusters=32,
        gamma=0.125,
        max_triplets=0,
        index="flat",
        tune_glmix=True,
        history_features=True,
        test_start=None,
        watch_threshold=DEFAULT_WATCH_THRESHOLD_S,
        bootstrap=200,
        baseline=None,
        seed=seed,
        device="auto",
        quiet=False,
    )
    typer.echo(f"report: {out / 'run' / 'report.md'}")
    if not serve:
        typer.echo(f"to serve it: .venv/bin/recsys serve --artifacts {out / 'run' / 'artifact'}")
    if serve:
        from serving.cli import serve_artifact

        serve_artifact(
            out / "run" / "artifact", host="127.0.0.1", port=port, workers=1, print_examples=True
        )


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    from embeddings.runtime import configure_cpu_allocator

    configure_cpu_allocator()
    try:
        app()
    except DatasetError as exc:
        for p in exc.problems:
            typer.echo(f"error: {p}", err=True)
        sys.exit(2)
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        # Spark's errors (analysis errors, JVM exceptions) as one line, not a JVM trace.
        if not type(exc).__module__.startswith(("pyspark", "py4j")):
            raise
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        typer.echo(f"error: spark: {first}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
