"""Commands that make, check and convert data sets."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from pipelines.commands.options import Seed, WatchThreshold, fail
from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S

if TYPE_CHECKING:
    import pyarrow as pa


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
        float, typer.Option(help="Median frames per video (log-normal, clipped to the bounds).")
    ] = 16.0,
    min_frames: Annotated[int, typer.Option(help="Fewest frames of a video.")] = 2,
    max_frames: Annotated[int, typer.Option(help="Most frames of a video.")] = 300,
    frame_dtype: Annotated[
        str,
        typer.Option(
            help="float32, or uint8: frames quantised as YouTube-8M stores them (a quarter "
            "of the bytes)."
        ),
    ] = "float32",
    content_weight: Annotated[
        float,
        typer.Option(help="Weight of what a video holds (its scene mix) in users' affinity."),
    ] = 1.0,
    style_weight: Annotated[
        float,
        typer.Option(help="Weight of how a video looks within its scenes in users' affinity."),
    ] = 1.0,
    frame_noise: Annotated[
        float, typer.Option(help="Standard deviation of every frame's noise.")
    ] = 0.5,
    quality_scale: Annotated[
        float,
        typer.Option(help="Scale of each video's appeal on the watch logit (0: none)."),
    ] = 0.8,
    quality_skew: Annotated[
        float,
        typer.Option(
            help="Right tail of the appeal (log-normal shape; 0: normal). "
            "--quality-scale 0.3 --quality-skew 0 --quality-visible 0 is the world before."
        ),
    ] = 0.5,
    quality_visible: Annotated[
        float, typer.Option(help="Share of the appeal that shows in the frames, in [0, 1].")
    ] = 0.5,
    side_signals: Annotated[
        float,
        typer.Option(
            help="A platform's other signals: each video's length (length_s) and each user's "
            "device (users.parquet), moving the watch logit by this much (0: none)."
        ),
    ] = 0.0,
    given_vectors: Annotated[
        bool,
        typer.Option(
            help="Give each video as one vector (an embedding column: its mean frame) in "
            "place of frames, as a platform with its own content model would."
        ),
    ] = False,
) -> None:
    """Generate a synthetic world: videos.parquet, impressions.parquet and truth.parquet.
    Frames are generated into a memory map beside the output and written a row group at
    a time, so a catalogue larger than memory can be made."""
    from pipelines.data.io import as_given_vectors, write_dataset
    from recsys.synthetic.world import SynthConfig, generate_world

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
            min_frames=min_frames,
            max_frames=max_frames,
            frame_dtype=frame_dtype,
            content_weight=content_weight,
            style_weight=style_weight,
            frame_noise=frame_noise,
            quality_scale=quality_scale,
            quality_skew=quality_skew,
            quality_visible=quality_visible,
            side_signals=side_signals,
        )
    except ValueError as exc:
        fail(str(exc))
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".synth-frames.", dir=out) as tmp:

        def on_disk(n: int, d: int, dtype: np.dtype[Any]) -> np.ndarray:
            if n * d == 0:
                return np.empty((n, d), dtype=dtype)
            return np.memmap(Path(tmp) / "frames.bin", dtype=dtype, mode="w+", shape=(n, d))

        world = generate_world(cfg, on_disk)
        impressions = world.impressions.num_rows
        tables: Iterator[pa.Table] = world.video_batches()
        if given_vectors:
            tables = as_given_vectors(tables)
        write_dataset(out, tables, world.impressions, world.truth, world.video_truth, world.users)
        del world  # the memory map closes before its directory goes
    typer.echo(
        f"wrote {out}: {cfg.num_videos} videos, {impressions} impressions "
        f"({time.perf_counter() - t0:.1f} s)"
    )


def synth_digits(
    out: Annotated[Path, typer.Option(help="Directory to write videos.parquet to.")],
    seed: Seed = 0,
    videos: Annotated[int, typer.Option(help="Number of videos.")] = 1500,
    max_frames: Annotated[int, typer.Option(help="At most this many frames per video.")] = 40,
) -> None:
    """A classification set of real frames: scikit-learn's 8x8 digit scans, labels = digits shown."""
    from pipelines.data.io import write_parquet_atomic
    from recsys.synthetic.digits import digits_videos

    try:
        table = digits_videos(videos, max_frames, seed)
    except ValueError as exc:
        fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(table, out / "videos.parquet", row_group_size=512)
    typer.echo(f"wrote {out}: {table.num_rows} videos of digit scans (D = 64)")


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
    from pipelines.data.io import validate_dataset

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


def convert_yt8m(
    files: Annotated[
        list[Path],
        typer.Argument(help="YouTube-8M TFRecord files, frame-level or video-level (one kind)."),
    ],
    out: Annotated[Path, typer.Option(help="Output data set directory.")],
    audio: Annotated[
        bool,
        typer.Option(help="Append the 128-d audio (mean_audio) to the 1024-d rgb (mean_rgb)."),
    ] = False,
    keep_uint8: Annotated[
        bool,
        typer.Option(
            help="Store frame-level frames quantised as uint8 (readers dequantise them); "
            "video-level means are floats and stay so."
        ),
    ] = False,
) -> None:
    """Convert YouTube-8M TFRecords into videos.parquet (no TensorFlow needed): frame-level
    records as videos of frames, video-level records (mean_rgb, mean_audio) as one-frame
    videos."""
    from pipelines.data.yt8m import convert_yt8m as convert

    counts = convert(list(files), out, with_audio=audio, dequantise=not keep_uint8)
    kind = "video-level: one frame a video" if counts["kind"] == "video" else "frame-level"
    typer.echo(
        f"wrote {out / 'videos.parquet'}: {counts['videos']} videos, {counts['frames']} frames "
        f"({kind})"
        + (f", skipped {counts['skipped_empty']} without frames" if counts["skipped_empty"] else "")
    )
