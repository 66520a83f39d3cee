"""``recsys glmix``: GLMix on any table (a fixed effect and a list of random-effect
coordinates, each with its entity column and features; ``recsys.glmix.table``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.commands.options import EngineName, Overwrite, Quiet, SparkMaster, engine_from

app = typer.Typer(
    help="GLMix on any table: a fixed effect plus random-effect coordinates from a TOML "
    "configuration (see docs/glmix.md).",
    no_args_is_help=True,
)


@app.command()
def fit(
    train: Annotated[Path, typer.Option(help="Parquet table of training rows.")],
    config: Annotated[Path, typer.Option(help="TOML configuration (label, [fixed], [[random]]).")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    validation: Annotated[
        Path | None,
        typer.Option(
            help="Parquet table of validation rows: each stage's AUC, and the penalties the "
            "configuration leaves out chosen on it."
        ),
    ] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    engine: EngineName = "local",
    spark_master: SparkMaster = "",
) -> None:
    """Fit stage by stage: the fixed effect, then each coordinate added in order.

    Each stage's validation AUC is printed and written to MODEL_DIR/report.json."""
    from pipelines.glmix.table_data import load_config
    from pipelines.glmix.table_job import fit_job
    from recsys.glmix.coordinate_descent import LocalBackend

    eng = engine_from(engine, spark_master)
    cfg = load_config(config)
    backend: Any = LocalBackend
    if eng.name == "spark":
        from pipelines.spark.table_glmix import spark_backend

        backend = spark_backend(eng.spark)  # type: ignore[attr-defined]
    report = fit_job(train, cfg, out, validation, overwrite, not quiet, backend)
    last = report["stages"][-1]
    auc = f", validation AUC {last['validation_auc']:.4f}" if "validation_auc" in last else ""
    typer.echo(f"wrote {out}: {len(report['stages'])} stages{auc}")


@app.command()
def score(
    model: Annotated[Path, typer.Option(help="Model directory (from recsys glmix fit).")],
    data: Annotated[Path, typer.Option(help="Parquet table to score.")],
    out: Annotated[Path, typer.Option(help="Parquet file: the data's rows and a score column.")],
) -> None:
    """Score every row (the probability of label 1), in the data's order."""
    from pipelines.glmix.table_job import score_job

    n = score_job(model, data, out)
    typer.echo(f"wrote {out}: {n} rows scored")
