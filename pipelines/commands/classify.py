"""Commands for the paper's video classification (section 4.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.commands.options import (
    Assignment,
    Clusters,
    Device,
    FinalNorm,
    Gamma,
    IntraNorm,
    LearnedPoolingName,
    Quiet,
    Seed,
    fail,
    pooling_options,
)


def classify(
    data: Annotated[Path, typer.Option(help="Data set directory (videos.parquet with labels).")],
    pooling: LearnedPoolingName,
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
    bfloat16_check: Annotated[
        bool,
        typer.Option(
            help="Where the CPU (or GPU) multiplies bfloat16, score the test split again with "
            "bf16 inference and report GAP@20 / Hit@1 against float32's (paired)."
        ),
    ] = True,
    quiet: Quiet = False,
) -> None:
    """Train pooling -> context gating -> MoE per label (section 4.1) and report GAP@20 / Hit@1."""
    from embeddings.classifier import ClassifierConfig
    from embeddings.ubm_start import UBMStart
    from pipelines.classify.classify import ClassifyConfig, run_classify
    from pipelines.data.io import check_job_input

    try:
        # feature_dim and num_classes come from the data set (run_classify sets them).
        model = ClassifierConfig(
            feature_dim=1,
            num_classes=1,
            **pooling_options(pooling, clusters, gamma, intra_norm, final_norm, assignment),
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
            ubm=UBMStart(enabled=ubm_init, temperature=init_temperature, frames=100_000),
            patience=patience,
            baselines=baselines,
            bfloat16_check=bfloat16_check,
        )
    except ValueError as exc:
        fail(str(exc))
    check_job_input(data, impressions=False)  # after the flags: their errors come first
    r = run_classify(data, out, model, cfg, progress=not quiet)
    typer.echo(
        f"{pooling}: test GAP@20 {r['gap']:.4f}, Hit@1 {r['hit_at_1']:.4f} ({r['test_videos']} videos, "
        f"epoch {r['best_epoch']} kept); wrote {out}"
    )
    if "bfloat16_inference" in r:
        b16 = r["bfloat16_inference"]
        typer.echo(
            f"bfloat16 inference: test GAP@20 {b16['gap']:.4f}, against float32 "
            f"{_gap_difference(b16)}"
        )
    for name, b in r.get("baselines", {}).items():
        typer.echo(f"baseline {name}: test GAP@20 {b['gap']:.4f}, Hit@1 {b['hit_at_1']:.4f}")
    for name, why in r.get("baselines_not_applicable", {}).items():
        typer.echo(f"baseline {name}: not applicable ({why})")
    if "vs_best_baseline" in r:
        v = r["vs_best_baseline"]
        typer.echo(f"{pooling} vs {v['best_baseline']}: GAP difference {_gap_difference(v)}")


def _gap_difference(block: dict[str, Any]) -> str:
    """A report's paired GAP difference as "+d [lo, hi]: verdict"."""
    lo, hi = block["gap_difference_bootstrap_95"]
    return f"{block['gap_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]: {block['verdict']}"


def compare(
    run_a: Annotated[Path, typer.Argument(help="First classify run directory.")],
    run_b: Annotated[Path, typer.Argument(help="Second classify run directory.")],
    resamples: Annotated[
        int, typer.Option(help="Bootstrap resamples for the GAP difference.")
    ] = 1000,
) -> None:
    """McNemar's test on Hit@1 and a bootstrap 95% interval of the GAP difference."""
    from pipelines.classify.comparison import compare_runs

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
    from pipelines.classify.experiment import BUDGETS, run_paper_experiment

    if budget not in BUDGETS:
        fail(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    run_paper_experiment(data, out, budget, seed, progress=not quiet)
    typer.echo(f"wrote {out / 'report.md'}")
