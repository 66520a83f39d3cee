"""Every job checks its input against the contract before any work: a data set of the
wrong shape stops it with exit 2 and one line per problem, never a traceback."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.io import check_job_input
from recsys.errors import DatasetError


def _frameless(d: Path, int_users: bool = False) -> Path:
    """videos.parquet with neither ``frames`` nor ``embedding`` (a vector under another
    name) and impressions whose user ids are integers."""
    d.mkdir()
    pq.write_table(
        pa.table({"video_id": ["v0", "v1"], "vector": [[0.1, 0.2], [0.3, 0.4]]}),
        d / "videos.parquet",
    )
    t = datetime(2026, 1, 1, tzinfo=UTC)
    users = pa.array([1, 2], pa.int64()) if int_users else pa.array(["u1", "u2"])
    pq.write_table(
        pa.table(
            {
                "user_id": users,
                "video_id": ["v0", "v1"],
                "shown_at": pa.array([t, t], pa.timestamp("us", tz="UTC")),
                "watch_seconds": np.array([30.0, 0.0]),
            }
        ),
        d / "impressions.parquet",
    )
    return d


JOBS = [
    ("pipeline", ["--out", "OUT"], "frames: missing column"),
    ("train-embeddings", ["--out", "OUT"], "frames: missing column"),
    ("evaluate", ["--artifacts", "OUT", "--out", "OUT"], "frames: missing column"),
    ("classify", ["--out", "OUT", "--pooling", "avg"], "frames: missing column"),
    ("mine-triplets", ["--out", "OUT/t.parquet"], "user_id: expected string, found int64"),
    ("fit-glmix", ["--artifacts", "OUT"], "user_id: expected string, found int64"),
    ("embed", ["--artifacts", "OUT", "--out", "OUT/e.parquet"], "frames: missing column"),
]


@pytest.mark.parametrize(("job", "extra", "needle"), JOBS)
def test_each_job_refuses_a_set_of_the_wrong_shape_before_any_work(
    run_cli, tmp_path: Path, job: str, extra: list[str], needle: str
) -> None:
    d = _frameless(tmp_path / "ds", int_users=True)
    out = tmp_path / "out"
    args = [a.replace("OUT", str(out)) for a in extra]
    code, _, err = run_cli(job, "--data", d, *args)
    assert code == 2, err
    assert "Traceback" not in err and needle in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())
    assert not out.exists()  # nothing was written


def test_the_check_names_every_problem_and_passes_a_good_set(
    tmp_path: Path, small_world_dir
) -> None:
    with pytest.raises(DatasetError) as got:
        check_job_input(_frameless(tmp_path / "ds", int_users=True))
    problems = got.value.problems
    assert any("frames: missing column" in p for p in problems)
    assert any("user_id: expected string" in p for p in problems)
    check_job_input(small_world_dir)  # a world of the contract's shape passes
    check_job_input("s3://bucket/world")  # left to the engine
    with pytest.raises(DatasetError, match=r"impressions\.parquet: missing"):
        empty = tmp_path / "videos-only"
        empty.mkdir()
        pq.write_table(
            pq.read_table(Path(small_world_dir) / "videos.parquet"), empty / "videos.parquet"
        )
        check_job_input(empty)
    check_job_input(empty, impressions=False)


def test_a_set_of_given_vectors_passes_and_one_with_both_shapes_does_not(
    tmp_path: Path, given_world_dir: Path, run_cli
) -> None:
    check_job_input(given_world_dir)
    code, out, _ = run_cli("validate", given_world_dir)
    assert code == 0 and "a given vector each, D = 8" in out
    both = tmp_path / "both"
    both.mkdir()
    t = pq.read_table(given_world_dir / "videos.parquet")
    frames = pa.array([[v] for v in t.column("embedding").to_pylist()])
    pq.write_table(t.append_column("frames", frames), both / "videos.parquet")
    pq.write_table(
        pq.read_table(given_world_dir / "impressions.parquet"), both / "impressions.parquet"
    )
    code, _, err = run_cli("pipeline", "--data", both, "--out", tmp_path / "o")
    assert code == 2 and "frames and embedding: a file gives videos one way" in err
    assert not (tmp_path / "o").exists()


LOG_JOBS = [
    ("pipeline", ["--out", "OUT"]),
    ("train-embeddings", ["--out", "OUT"]),
    ("evaluate", ["--artifacts", "OUT", "--out", "OUT"]),
    ("mine-triplets", ["--out", "OUT/t.parquet"]),
    ("fit-glmix", ["--artifacts", "OUT"]),
    ("fit-glmix", ["--artifacts", "OUT", "--engine", "spark"]),
    ("evaluate", ["--artifacts", "OUT", "--out", "OUT", "--engine", "spark"]),
]


@pytest.mark.parametrize(("job", "extra"), LOG_JOBS)
def test_each_job_refuses_a_bad_log_row_before_any_work_on_either_engine(
    run_cli, tmp_path: Path, given_world_dir: Path, job: str, extra: list[str]
) -> None:
    # Spark's jobs read the files themselves: they took a NaN watch time as given.
    d = tmp_path / "ds"
    d.mkdir()
    pq.write_table(pq.read_table(given_world_dir / "videos.parquet"), d / "videos.parquet")
    log = pq.read_table(given_world_dir / "impressions.parquet")
    secs = log.column("watch_seconds").to_numpy().copy()
    secs[5] = np.nan
    pq.write_table(log.set_column(3, "watch_seconds", pa.array(secs)), d / "impressions.parquet")
    out = tmp_path / "out"
    code, _, err = run_cli(job, "--data", d, *[a.replace("OUT", str(out)) for a in extra])
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: impressions.parquet: watch_seconds: nan at row 5 ")
    assert not out.exists()
