"""The ``recsys`` command line.

Every subcommand has ``--help``. Bad input (missing files, broken data sets,
wrong flags) ends with a one-line message on stderr and exit code 2, never a
traceback.
"""

from __future__ import annotations

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


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Directory to write the data set to.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same world.")] = 0,
    videos: Annotated[int, typer.Option(help="Number of videos.")] = 2000,
    users: Annotated[int, typer.Option(help="Number of users.")] = 1000,
    days: Annotated[int, typer.Option(help="Length of the impression log in days.")] = 28,
    feature_dim: Annotated[int, typer.Option(help="Frame feature dimension D.")] = 32,
    topics: Annotated[int, typer.Option(help="Number of topics.")] = 16,
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
        )
    except ValueError as exc:
        _fail(str(exc))
    t0 = time.perf_counter()
    world = generate_world(cfg)
    write_dataset(out, world.videos, world.impressions, world.truth)
    typer.echo(
        f"wrote {out}: {world.videos.num_rows} videos, {world.impressions.num_rows} impressions "
        f"({time.perf_counter() - t0:.1f} s)"
    )


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Data set directory.")],
    watch_threshold: WatchThreshold = DEFAULT_WATCH_THRESHOLD_S,
) -> None:
    """Check a data set against the contract (docs/data.md); exit 2 listing every violation."""
    from pipelines.io import validate_dataset

    report = validate_dataset(data, watch_threshold_s=watch_threshold)
    if not report.ok:
        for p in report.problems:
            typer.echo(f"error: {p}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{data}: valid")
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


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working directory for the demo.")] = Path("demo"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """The main job: make a synthetic world and validate it."""
    data = out / "data"
    synth(out=data, seed=seed)
    validate(data)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except DatasetError as exc:
        for p in exc.problems:
            typer.echo(f"error: {p}", err=True)
        sys.exit(2)
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
