"""Commands that evaluate an artifact, run the whole job, and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.commands.data import synth, validate
from pipelines.commands.options import (
    AnchorNeighbours,
    BaseInSteps,
    Baselines,
    BaseRung,
    Clusters,
    Device,
    EngineName,
    EpochTriplets,
    Gamma,
    HiddenDim,
    HistoryFeatures,
    IndexKind,
    InferencePrecision,
    MaxFrames,
    Online,
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
    test_start_from,
)
from pipelines.phases import phase_lines
from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S, VIDEOS_FILE


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
        Path | None,
        typer.Option(
            help="report.json of a baseline run (e.g. avg pooling): relative AUC changes, and "
            "paired DeLong differences when its test_scores.parquet holds the same test rows."
        ),
    ] = None,
    baselines: Baselines = True,
    online: Online = True,
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Offline AUC evaluation: max/avg similarity (Eq. 16-17), GLMix with and without video features."""
    from embeddings.registry import RUNGS
    from pipelines.data.io import check_job_input
    from pipelines.evaluation.evaluate import evaluate_artifact
    from pipelines.evaluation.inputs import EvalConfig
    from pipelines.evaluation.report import write_report
    from recsys.online.users import OnlineConfig

    eng = engine_from(engine, spark_master)
    cfg = EvalConfig(
        watch_threshold_s=watch_threshold,
        test_start=test_start_from(test_start),
        bootstrap=bootstrap,
        baselines=RUNGS.names() if baselines else (),
        online=OnlineConfig() if online else None,
        baseline_report=baseline,
        progress=True,
    )
    check_job_input(data)  # after the flags: their errors come first
    try:
        evaluation = evaluate_artifact(data, artifacts, cfg, eng)
        write_report(out, evaluation)
    finally:
        eng.stop()
    _print_summary(evaluation.report, out)


def _print_summary(report: dict[str, Any], out: Path) -> None:
    from pipelines.evaluation.report import terminal_summary

    for line in terminal_summary(report, out):
        typer.echo(line)


def pipeline(
    data: Annotated[Path, typer.Option(help="Data set directory.")],
    out: Annotated[
        Path, typer.Option(help="Output directory: OUT/artifact plus the evaluation report.")
    ],
    pooling: PoolingName = "dsgmm",
    base: BaseRung = "auto",
    search_budget: SearchBudget = 0.0,
    clusters: Clusters = 32,
    gamma: Gamma = 0.125,
    epochs: Annotated[
        int, typer.Option(help="Embedding training epochs (the best validation epoch is kept).")
    ] = 3,
    max_triplets: Annotated[
        int, typer.Option(help="Use at most this many triplets (0 = all).")
    ] = 0,
    epoch_triplets: EpochTriplets = 125_000,
    max_frames: MaxFrames = 64,
    hidden_dim: HiddenDim = 256,
    base_in_steps: BaseInSteps = "sampled",
    precision: Precision = "auto",
    inference_precision: InferencePrecision = "float32",
    index: IndexKind = "auto",
    tune_glmix: Annotated[
        bool,
        typer.Option(
            help="Choose GLMix's random_l2 on the last 10% of the training period (validation)."
        ),
    ] = True,
    history_features: HistoryFeatures = True,
    video_effects: VideoEffects = True,
    video_features: VideoFeatures = "",
    user_features: UserFeatures = "",
    anchor_neighbours: AnchorNeighbours = 0,
    test_start: TestStart = None,
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples over users.")] = 200,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="report.json of a baseline run (e.g. avg pooling): relative AUC changes, and "
            "paired DeLong differences when its test_scores.parquet holds the same test rows."
        ),
    ] = None,
    baselines: Baselines = True,
    online: Online = True,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    engine: EngineName = "local",
    spark_master: SparkMaster = "local[*]",
) -> None:
    """Mine triplets, train embeddings, index, fit GLMix and evaluate; OUT/artifact is servable.
    With --engine spark, mining and GLMix run on Spark (training stays on torch)."""
    from embeddings.registry import RUNGS
    from pipelines.data.io import check_job_input
    from pipelines.evaluation.inputs import EvalConfig
    from pipelines.glmix.fit_glmix import GLMixJobConfig
    from pipelines.pipeline import PipelineConfig, run_pipeline
    from recsys.online.users import OnlineConfig

    try:
        cfg = PipelineConfig(
            embedding=embedding_job_config(
                pooling,
                embedder={"num_clusters": clusters, "gamma": gamma, "hidden_dim": hidden_dim},
                train={
                    "epochs": epochs,
                    "device": device,
                    "max_triplets": max_triplets,
                    "epoch_triplets": epoch_triplets,
                    "max_frames": max_frames,
                    "base_in_steps": base_in_steps,
                    "precision": precision,
                    "inference_precision": inference_precision,
                    "anchor_neighbours": anchor_neighbours,
                },
                index=index,
                base=base,
                search_budget=search_budget,
            ),
            glmix=GLMixJobConfig(
                tune=tune_glmix,
                history_features=history_features,
                video_effects=video_effects,
                video_features=column_list(video_features),
                user_features=column_list(user_features),
            ),
            evaluation=EvalConfig(
                bootstrap=bootstrap,
                baselines=RUNGS.names() if baselines else (),
                online=OnlineConfig() if online else None,
                baseline_report=baseline,
            ),
        )
        cfg = cfg.with_seed(seed).with_watch_threshold(watch_threshold)
    except ValueError as exc:
        fail(str(exc))
    eng = engine_from(engine, spark_master)
    check_job_input(data)  # after the flags: their errors come first
    report = run_pipeline(data, out, cfg, test_start_from(test_start), overwrite, not quiet, eng)
    if report:
        _print_summary(report, out)
        typer.echo(f"artifact: {out / 'artifact'}")
        if not quiet:
            typer.echo("time by phase:")
            for line in phase_lines(report["phases"]):
                typer.echo(f"  {line}")


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
    if not (data / VIDEOS_FILE).exists():
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
        epoch_triplets=125_000,
        index="flat",
        tune_glmix=True,
        history_features=True,
        video_effects=True,
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
        import os

        from serving.cli import serve_artifact

        # A synthetic world on loopback: its users' histories may show in the explorer.
        os.environ.setdefault("RECSYS_PUBLIC_USER_DATA", "true")

        serve_artifact(
            out / "run" / "artifact", host="127.0.0.1", port=port, workers=1, print_examples=True
        )
