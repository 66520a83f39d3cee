from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipelines.data.io import write_dataset
from recsys.synthetic.world import SynthConfig, generate_world

# Two pytest workers share two cores: one thread each keeps them from fighting.
torch.set_num_threads(1)

# The service's tests post events dated in 2030 (after any artifact's training period,
# whenever they run), and the fuzzer any date: every server they start, in process or
# not, allows them all. The default allowance is tested on its own
# (tests/serving/routers/test_event_times.py).
os.environ.setdefault("RECSYS_MAX_EVENT_FUTURE_S", str(10_000 * 366 * 86_400))


@pytest.fixture(scope="session")
def small_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SynthConfig(seed=3, num_videos=200, num_users=60, days=14, feature_dim=8, num_topics=4)
    world = generate_world(cfg)
    out = tmp_path_factory.mktemp("world")
    write_dataset(out, world.videos, world.impressions, world.truth, world.video_truth)
    return out


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``recsys ARGS`` in-process through the real entry point; (exit code, out, err)."""
    from pipelines.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        old = sys.argv
        sys.argv = ["recsys", *map(str, args)]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
        finally:
            sys.argv = old
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run


@pytest.fixture(scope="session")
def pipeline_out(small_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``recsys pipeline`` on the small world with a tiny configuration (OUT/artifact is servable)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path_factory.mktemp("pipe") / "run"
    args = [
        "pipeline",
        "--data",
        str(small_world_dir),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--clusters",
        "4",
        "--max-triplets",
        "1500",
        "--bootstrap",
        "20",
        "--quiet",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def given_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small world's videos given as one vector each (their mean frames, an
    ``embedding`` column whose Parquet metadata names the model), as a platform with its
    own content model has them."""
    import pyarrow as pa

    from pipelines.data.io import as_given_vectors

    cfg = SynthConfig(seed=5, num_videos=200, num_users=60, days=14, feature_dim=8, num_topics=4)
    world = generate_world(cfg)
    tables = list(as_given_vectors(world.video_batches()))
    videos = pa.concat_tables(tables)
    field = videos.schema.field("embedding").with_metadata({"model": "mean-frame-v1"})
    videos = videos.cast(videos.schema.set(videos.schema.get_field_index("embedding"), field))
    out = tmp_path_factory.mktemp("given_world")
    write_dataset(out, videos, world.impressions, world.truth, world.video_truth)
    return out


@pytest.fixture(scope="session")
def given_pipeline_out(given_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``recsys pipeline`` on the given-vector world (nothing trained; OUT/artifact serves)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path_factory.mktemp("given_pipe") / "run"
    args = ["pipeline", "--data", str(given_world_dir), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--bootstrap", "20", "--quiet"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def side_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A given-vector world where a video's length (``length_s``) and a user's device
    (users.parquet ``device``) move the watch probability."""
    from pipelines.data.io import as_given_vectors

    cfg = SynthConfig(
        seed=6, num_videos=200, num_users=80, days=14, feature_dim=8, num_topics=4, side_signals=1.0
    )
    world = generate_world(cfg)
    out = tmp_path_factory.mktemp("side_world")
    videos = list(as_given_vectors(world.video_batches()))
    write_dataset(out, videos, world.impressions, world.truth, world.video_truth, world.users)
    return out


@pytest.fixture(scope="session")
def side_pipeline_out(side_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``recsys pipeline`` on the side-signal world with both side features."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path_factory.mktemp("side_pipe") / "run"
    args = ["pipeline", "--data", str(side_world_dir), "--out", str(out), "--bootstrap", "20"]
    features = ["--video-features", "length_s", "--user-features", "device"]
    res = CliRunner().invoke(app, [*args, *features, "--quiet"])
    assert res.exit_code == 0, res.output
    return out
