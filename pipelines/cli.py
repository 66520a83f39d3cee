"""The ``recsys`` command line: the app, its commands and the entry point.

The commands live in ``pipelines/commands/`` (data sets, the recommender's steps, the
whole job, classification, serving); their shared option types in
``pipelines/commands/options.py``. Every subcommand has ``--help``. Bad input (missing files,
broken data sets, wrong flags) ends with a one-line message on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import sys

import typer

from pipelines.commands import classify, data, glmix, pipeline, serve, train
from recsys.errors import DatasetError, UserInputError

app = typer.Typer(
    name="recsys",
    help="Video recommendation around co-watch embeddings (SGMM/DSGMM pooling).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Listed in the order ``recsys --help`` shows them: data, the recommender's steps, the
# whole job, serving, classification.
app.command()(data.synth)
app.command("synth-digits")(data.synth_digits)
app.command()(data.validate)
app.command("convert-yt8m")(data.convert_yt8m)
app.command("mine-triplets")(train.mine_triplets)
app.command("train-embeddings")(train.train_embeddings)
app.command()(train.embed)
app.command("fit-glmix")(train.fit_glmix)
app.add_typer(glmix.app, name="glmix")
app.command()(pipeline.evaluate)
app.command()(pipeline.pipeline)
app.command()(serve.serve)
app.command()(classify.classify)
app.command()(classify.compare)
experiment_app = typer.Typer(help="Reproduce the paper's experiments.", no_args_is_help=True)
experiment_app.command("paper")(classify.experiment_paper)
app.add_typer(experiment_app, name="experiment")
app.command()(pipeline.demo)


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
